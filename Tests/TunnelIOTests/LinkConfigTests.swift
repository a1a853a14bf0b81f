import Glibc
import Testing
import TunnelCore

@testable import TunnelIO

/// What can be checked without changing the machine: name rules, existence, and how a failing
/// `ip` is reported. Creating links and routes is the network-namespace suite's job.
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

    @Test func invalidNameIsRefusedBeforeRunningIp() {
        let error = #expect(throws: LinkConfigError.self) { try LinkConfig.setUp(interface: "-rf") }
        #expect(error?.reason == .invalidInterfaceName)
        #expect(error?.command == "ip link set dev -rf up")
    }

    /// Deleting a link that does not exist changes nothing and shows how ip's complaint is carried.
    @Test(.enabled(if: LinkConfig.ipPath != nil, "needs iproute2"))
    func failingIpReportsCommandAndStderr() {
        let error = #expect(throws: LinkConfigError.self) { try LinkConfig.deleteLink(name: "tunctl-none0") }
        #expect(error?.command == "ip link delete dev tunctl-none0")
        guard case .failed(let status, let message)? = error?.reason else {
            Issue.record("expected an exit status, got \(String(describing: error))")
            return
        }
        #expect(status != 0)
        #expect(message.contains("tunctl-none0") || message.lowercased().contains("cannot find"))
        #expect(error?.description.hasPrefix("ip link delete dev tunctl-none0 failed (exit ") == true)
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
