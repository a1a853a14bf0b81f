import Testing
import TunnelCrypto

@testable import TunnelCore

/// `UAPI.get` as the daemon calls it: the device reached only through `locked`, in pieces of
/// `peersPerHold` peers (issue 16: `wg show dump` of 100,000 peers must not hold the engine lock).
@Suite struct UAPIGetSnapshotTests {
    /// A key whose bytes are `prefix` then `fill`: keys that differ only late, or only in the high
    /// bit of the first byte, catch a sort that compares words in the wrong byte order or signed.
    private static func key(_ prefix: [UInt8], fill: UInt8 = 0x42) -> PublicKey {
        let bytes = prefix + [UInt8](repeating: fill, count: 32 - prefix.count)
        return PublicKey(hex: hex(bytes))!
    }

    private static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    private static let keys: [PublicKey] = [
        key([0x80]), key([0x7f]), key([0x00, 0x01]), key([0x00, 0x00], fill: 0xff),
        key([0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x43]), key([0xff]),
    ]

    private static func device() -> Device {
        let device = Device(privateKey: PrivateKey.generate())
        for (number, key) in keys.enumerated() {
            let peer = device.addPeer(key)!
            device.addAllowedIP(IPPrefix("198.18.\(number).0/24")!, for: peer)
            device.addAllowedIP(IPPrefix("2001:db8:\(number)::/48")!, for: peer)
            device.addAllowedIP(IPPrefix("198.19.\(number).0/24")!, for: peer)
            device.setEndpoint(Endpoint("203.0.113.\(number + 1):51820"), for: peer)
            peer.txBytes = UInt64(number) * 1_000_000_007
            peer.rxBytes = UInt64.max - UInt64(number)
        }
        return device
    }

    private static func publicKeys(in reply: String) -> [String] {
        reply.split(separator: "\n").filter { $0.hasPrefix("public_key=") }.map { String($0.dropFirst(11)) }
    }

    @Test func onePeerPerHoldGivesTheSameReplyInKeyOrder() {
        let device = Self.device()
        let whole = UAPI.get(device: device, listenPort: 51820)
        let reply = SecretBuffer(capacity: 16)
        var holds = 0
        UAPI.get(listenPort: 51820, into: reply, peersPerHold: 1) { body in
            holds += 1
            body(device)
        }
        #expect(String(decoding: reply.bytes, as: UTF8.self) == whole)
        // One hold for the device's fields, two for the list (four keys a hold), one per peer.
        #expect(holds == 1 + 2 + Self.keys.count)
        let expected = Self.keys.map { $0.withUnsafeBytes { Array($0) } }.sorted { $0.lexicographicallyPrecedes($1) }
            .map(Self.hex)
        #expect(Self.publicKeys(in: whole) == expected)
        #expect(whole.contains("rx_bytes=18446744073709551615\n"))
        #expect(whole.contains("tx_bytes=5000000035\n"))
        // Prefixes per peer in address order, v4 before v6, as `Device.allowedIPs(of:)` sorts them.
        #expect(whole.contains("allowed_ip=198.18.0.0/24\nallowed_ip=198.19.0.0/24\nallowed_ip=2001:db8::/48\n"))
    }

    /// A peer removed between two holds is left out, and the reply stays well-formed.
    @Test func aPeerRemovedBetweenHoldsIsLeftOut() {
        let device = Self.device()
        let reply = SecretBuffer(capacity: 16)
        var holds = 0
        let removed = Self.keys[0]
        UAPI.get(listenPort: 51820, into: reply, peersPerHold: 2) { body in
            holds += 1
            if holds == 2 { device.removePeer(removed) }
            body(device)
        }
        let text = String(decoding: reply.bytes, as: UTF8.self)
        #expect(text == UAPI.get(device: device, listenPort: 51820))
        #expect(Self.publicKeys(in: text).count == Self.keys.count - 1)
        #expect(text.hasSuffix("errno=0\n\n"))
    }

    /// A change to the table while its keys are being listed (pieces of `keysPerStatus` keys
    /// at one peer per hold) starts the list again: the reply is that of the table as changed,
    /// each peer once.
    @Test func aChangeWhileListingStartsTheListAgain() {
        let device = Self.device()
        let reply = SecretBuffer(capacity: 16)
        var holds = 0
        let added = Self.key([0x01, 0x02, 0x03])
        UAPI.get(listenPort: 51820, into: reply, peersPerHold: 1) { body in
            holds += 1
            if holds == 3 {
                device.removePeer(Self.keys[5])
                device.addPeer(added)
            }
            body(device)
        }
        let text = String(decoding: reply.bytes, as: UTF8.self)
        #expect(text == UAPI.get(device: device, listenPort: 51820))
        let listed = Self.publicKeys(in: text)
        #expect(listed.count == Self.keys.count)
        #expect(Set(listed).count == listed.count)
        #expect(listed.contains(Self.hex(added.withUnsafeBytes { Array($0) })))
        // Fields; four keys; the list begun again (four, two); one hold per peer.
        #expect(holds == 1 + 1 + 2 + Self.keys.count)
    }

    /// A table that changes before every hold cannot keep the list from ending: after two
    /// restarts the rest is listed in one hold. Peers added after the list are left out, and
    /// every peer listed appears once.
    @Test func aTableThatKeepsChangingStillEndsTheList() {
        let device = Self.device()
        let reply = SecretBuffer(capacity: 16)
        var holds = 0
        UAPI.get(listenPort: 51820, into: reply, peersPerHold: 1) { body in
            holds += 1
            device.addPeer(Self.key([0x10, UInt8(holds)]))
            body(device)
        }
        let listed = Self.publicKeys(in: String(decoding: reply.bytes, as: UTF8.self))
        #expect(Set(listed).count == listed.count)
        // Fields, a first piece, two restarts, then the whole list (11 peers by then) in one.
        #expect(listed.count == Self.keys.count + 5)
        #expect(holds == 5 + listed.count)
        for key in Self.keys { #expect(listed.contains(Self.hex(key.withUnsafeBytes { Array($0) }))) }
    }
}
