import Testing
import TunnelCrypto

@testable import TunnelCore

/// Device keeps each peer's prefixes beside the routing table (so start-up and shutdown with
/// 10,000 peers stay linear): the index must follow every move and removal the table makes.
@Suite struct AllowedIPsIndexTests {
    private let keyA = PublicKey(hex: "01585b4a1ef86f1ff28e54ff47a619b06e1af9d184426d9da76c1580f5437c72")!
    private let keyB = PublicKey(hex: "e5a9d1709c82b311c5bb997fa78bdf0b2c1fbb84d758bdf45691d8493aaa6636")!
    private let now = Instant(monotonic: 5_000_000_000, unixNanoseconds: 1_700_000_000_000_000_000)

    /// The `allowed_ip=` lines of a UAPI get, which reads the routing table's owners.
    private func allowedLines(_ device: Device) -> [String] {
        UAPI.get(device: device, listenPort: 0).split(separator: "\n").map(String.init).filter {
            $0.hasPrefix("allowed_ip=") || $0.hasPrefix("public_key=")
        }
    }

    @Test func movedPrefixLeavesTheOldOwnerAndSurvivesItsRemoval() throws {
        let device = Device(privateKey: PrivateKey.generate())
        let a = try #require(device.addPeer(keyA))
        let b = try #require(device.addPeer(keyB))
        let shared = try #require(IPPrefix("198.18.2.9/24"))
        device.addAllowedIP(shared, for: a)
        device.addAllowedIP(try #require(IPPrefix("198.18.3.0/24")), for: a)
        device.addAllowedIP(shared, for: b)
        #expect(device.allowedIPs(of: a) == [IPPrefix("198.18.3.0/24")!])
        #expect(device.allowedIPs(of: b) == [IPPrefix("198.18.2.0/24")!])
        // A no longer owns it: removing it "for A" leaves B's route alone.
        device.removeAllowedIP(shared, for: a)
        #expect(device.allowedIPs(of: b) == [IPPrefix("198.18.2.0/24")!])
        // Removing A takes only A's prefixes out of the table.
        device.removePeer(keyA)
        #expect(
            allowedLines(device) == [
                "public_key=\(keyB.hex)", "allowed_ip=198.18.2.0/24",
            ])
        device.removeAllowedIPs(for: b)
        #expect(device.allowedIPs(of: b).isEmpty)
        #expect(allowedLines(device) == ["public_key=\(keyB.hex)"])
    }

    @Test func readdingTheSamePrefixKeepsOneEntry() throws {
        let device = Device(privateKey: PrivateKey.generate())
        let a = try #require(device.addPeer(keyA))
        for text in ["198.18.2.0/24", "198.18.2.1/24", "2001:db8::1/64", "2001:db8::/64"] {
            device.addAllowedIP(try #require(IPPrefix(text)), for: a)
        }
        #expect(device.allowedIPs(of: a) == [IPPrefix("198.18.2.0/24")!, IPPrefix("2001:db8::/64")!])
        device.removeAllPeers()
        #expect(device.peers.isEmpty)
    }
}

/// The static-static DH is made at first use instead of when a peer is added (start-up with
/// 10,000 peers): the same value, made once, nil for a low-order key.
@Suite struct LazyStaticStaticTests {
    @Test func sameValueMadeOnceAndSharedByCopies() throws {
        let local = LocalIdentity(privateKey: PrivateKey.generate())
        let peerKey = PrivateKey.generate().publicKey
        let remote = RemoteIdentity(publicKey: peerKey, local: local)
        let copy = remote
        let expected = try #require(X25519.sharedSecret(local.privateKey.secret, peerKey))
        let first = try #require(copy.precomputedStaticStatic)
        #expect(first == expected)
        #expect(remote.precomputedStaticStatic === first)
    }

    @Test func lowOrderKeyGivesNil() throws {
        let local = LocalIdentity(privateKey: PrivateKey.generate())
        let zero = try #require(PublicKey(hex: String(repeating: "00", count: 32)))
        let remote = RemoteIdentity(publicKey: zero, local: local)
        #expect(remote.precomputedStaticStatic == nil)
        #expect(remote.precomputedStaticStatic == nil)
    }
}
