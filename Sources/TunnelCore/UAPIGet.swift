import TunnelCrypto

/// The `get=1` reply built from a snapshot taken in pieces, so that a device with 100,000 peers
/// answers without holding its owner (the engine lock the data path takes per packet) for long:
/// the peers' keys are copied a few thousand per hold, walking the table in place (`PeerWalk`),
/// and sorted with the lock released; then each piece of `peersPerHold` peers has its status
/// copied under the lock (a few fields and the prefixes, appended to one list: no allocation per
/// peer) and its text written (hex keys, decimal counters, prefixes) before the next hold, so
/// the holds are short and spread over the reply, with the data path's turn in between.
extension UAPI {
    /// Peers whose status is copied per hold of the device's owner: about 0.1 ms of work with
    /// 100,000 peers (0.4 µs a peer, mostly cache misses), after which packets waiting for the
    /// lock get their turn while the piece is written out.
    public static let peersPerHold = 250
    /// Keys copied per hold while listing the peers (a key is 32 bytes, a fraction of a status).
    public static let keysPerStatus = 4

    /// Writes the `get=1` reply into `reply`, reaching the device only through `locked`, which
    /// runs its argument with exclusive use of the device (the caller's lock). `locked` runs once
    /// for the device-wide fields, then once per `keysPerStatus × peersPerHold` keys to list the
    /// peers (a change to the table in between starts the list again), then once per
    /// `peersPerHold` peers; a peer removed after the list is left out, one added after it is
    /// in the next `get`.
    ///
    /// Keys: the private and preshared keys go into `reply` as hex from their `SecretKey`s (held
    /// by reference in the snapshot, never copied as text); `reply` zeroes them when cleared.
    public static func get(
        listenPort: UInt16, fwmark: UInt32 = 0, into reply: SecretBuffer, peersPerHold: Int = UAPI.peersPerHold,
        locked: ((Device) -> Void) -> Void
    ) {
        let perHold = max(1, peersPerHold)
        var privateKey: PrivateKey?
        var count = 0
        locked { device in
            privateKey = device.local?.privateKey
            count = device.peerCount
        }
        let keys = PeerWalk.keys(expected: count, perHold: perHold * keysPerStatus, locked: locked)
        if let privateKey {
            reply.append("private_key=")
            privateKey.secret.withUnsafeBytes { reply.appendHex($0) }
            reply.append(byte: newline)
        }
        // wireguard-go omits a zero port (not bound yet) and a zero fwmark (none).
        if listenPort != 0 { reply.append("listen_port=\(listenPort)\n") }
        if fwmark != 0 { reply.append("fwmark=\(fwmark)\n") }
        // Ordered by public key, as before, outside the lock; the keys are sorted as plain integers
        // (sorting 100,000 `Peer` references by key took most of a second in retains and releases).
        let order = keys.indices.map { SortKey(keys[$0], index: $0) }.sorted()
        var chunk: [PeerSnapshot] = []
        chunk.reserveCapacity(perHold)
        var prefixes: [IPPrefix] = []
        prefixes.reserveCapacity(4 * perHold)
        var start = 0
        while start < order.count {
            let end = min(start + perHold, order.count)
            chunk.removeAll(keepingCapacity: true)
            prefixes.removeAll(keepingCapacity: true)
            locked { device in
                for entry in order[start..<end] {
                    guard let peer = device.peer(keys[entry.index]) else { continue }
                    chunk.append(PeerSnapshot(peer, device, allowedIPs: &prefixes))
                }
            }
            for snapshot in chunk { snapshot.write(into: reply, allowedIPs: prefixes) }
            start = end
        }
        reply.append("errno=0\n\n")
    }
}

/// A public key as four big-endian words (comparing them is comparing the bytes), and where its
/// peer is in the list being sorted.
private struct SortKey: Comparable {
    let words: (UInt64, UInt64, UInt64, UInt64)
    let index: Int

    init(_ key: PublicKey, index: Int) {
        words = key.withUnsafeBytes { bytes in
            (
                bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self).bigEndian,
                bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self).bigEndian,
                bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self).bigEndian,
                bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self).bigEndian
            )
        }
        self.index = index
    }

    static func < (lhs: SortKey, rhs: SortKey) -> Bool { lhs.words < rhs.words }
    static func == (lhs: SortKey, rhs: SortKey) -> Bool { lhs.words == rhs.words }
}

/// What `get` reports of one peer, copied under the device's owner and written out after.
private struct PeerSnapshot {
    let publicKey: PublicKey
    /// The peer's key object itself (immutable; a replaced one stays alive while held here).
    let presharedKey: PresharedKey
    let endpoint: Endpoint?
    let lastHandshakeUnixNanoseconds: UInt64
    let txBytes: UInt64
    let rxBytes: UInt64
    let persistentKeepalive: UInt16
    /// Where this peer's prefixes are in the piece's one list of them.
    let allowedIPs: Range<Int>

    init(_ peer: Peer, _ device: Device, allowedIPs list: inout [IPPrefix]) {
        publicKey = peer.publicKey
        presharedKey = device.presharedKey(of: peer)
        endpoint = peer.endpoint
        lastHandshakeUnixNanoseconds = peer.lastHandshakeUnixNanoseconds
        txBytes = peer.txBytes
        rxBytes = peer.rxBytes
        persistentKeepalive = peer.persistentKeepalive
        let first = list.count
        device.appendAllowedIPs(of: peer, to: &list)
        allowedIPs = first..<list.count
    }

    func write(into reply: SecretBuffer, allowedIPs list: [IPPrefix]) {
        let nanosecondsPerSecond = Protocol.nanosecondsPerSecond
        reply.append("public_key=")
        publicKey.withUnsafeBytes { reply.appendHex($0) }
        // 64 zeros when there is none: the all-zero key is the protocol's "no PSK".
        reply.append("\npreshared_key=")
        presharedKey.secret.withUnsafeBytes { reply.appendHex($0) }
        reply.append("\nprotocol_version=1\n")
        if let endpoint {
            reply.append("endpoint=")
            reply.append(endpoint.description)
            reply.append(byte: UAPI.newline)
        }
        line("last_handshake_time_sec=", lastHandshakeUnixNanoseconds / nanosecondsPerSecond, reply)
        line("last_handshake_time_nsec=", lastHandshakeUnixNanoseconds % nanosecondsPerSecond, reply)
        line("tx_bytes=", txBytes, reply)
        line("rx_bytes=", rxBytes, reply)
        line("persistent_keepalive_interval=", UInt64(persistentKeepalive), reply)
        // Sorted as `Device.allowedIPs(of:)` sorts them: the order the reply always had.
        for prefix in list[allowedIPs].sorted(by: { ($0.address, $0.length) < ($1.address, $1.length) }) {
            reply.append("allowed_ip=")
            reply.append(prefix.description)
            reply.append(byte: UAPI.newline)
        }
    }

    /// `key` and `value` in decimal and a newline, without building the line as one string.
    private func line(_ key: StaticString, _ value: UInt64, _ reply: SecretBuffer) {
        reply.append(UnsafeRawBufferPointer(start: key.utf8Start, count: key.utf8CodeUnitCount))
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        withUnsafeMutableBytes(of: &digits) { buffer in
            var rest = value
            var index = buffer.count
            repeat {
                index -= 1
                buffer[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            } while rest != 0
            reply.append(UnsafeRawBufferPointer(rebasing: buffer[index...]))
        }
        reply.append(byte: UAPI.newline)
    }
}
