import Glibc
import Testing
import TunnelCore

@testable import TunnelIO

/// What can be checked without changing the machine: name rules and existence. Creating links and
/// routes is the network-namespace suite's job (Scripts/netns-tests/links.sh).
@Suite struct LinkConfigTests {
    @Test func loopbackExistsAndNonsenseDoesNot() {
        #expect(LinkConfig.linkExists(name: "lo"))
        #expect(!LinkConfig.linkExists(name: "tunctl-none0"))
        #expect(!LinkConfig.linkExists(name: ""))
    }

    @Test func interfaceNameRules() {
        for name in ["wg0", "tun-test_1", "a", String(repeating: "x", count: 15)] {
            #expect(LinkConfig.isValidInterfaceName(name), "\(name)")
        }
        for name in [
            "", ".", "..", "-wg0", "a/b", "a:b", "a b", "tab\t", String(repeating: "x", count: 16), "nul\u{0}",
        ] {
            #expect(!LinkConfig.isValidInterfaceName(name), "\(name)")
        }
    }
}

/// TUN devices are created by the network-namespace suite; here only the checks that happen
/// before anything is opened.
@Suite struct TunDeviceArgumentTests {
    @Test func overlongNameIsRefusedWithoutOpening() {
        let error = #expect(throws: SystemError.self) {
            _ = try TunDevice.open(name: String(repeating: "x", count: 16))
        }
        #expect(error?.errno == ENAMETOOLONG)
        #expect(error?.call == "tunctl_tun_open")
    }

    @Test func embeddedNulIsRefused() {
        let error = #expect(throws: SystemError.self) { _ = try TunDevice.open(name: "wg\u{0}x") }
        #expect(error?.errno == EINVAL)
    }

    @Test func virtioHeaderIsTenBytes() {
        #expect(TunDevice.virtioHeaderSize == 10)
    }
}
