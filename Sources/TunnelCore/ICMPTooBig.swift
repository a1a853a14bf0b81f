/// The inner side of path MTU discovery: a synthetic ICMPv4 "fragmentation needed" (type 3
/// code 4, RFC 1191) or ICMPv6 "packet too big" (type 2, RFC 8201) for an inner packet that does
/// not fit the peer's path, written into the TUN so the sending host lowers its path MTU (TCP its
/// MSS) and resends; and the MSS clamp for TCP handshakes crossing the tunnel, which makes the far
/// end send small enough segments even when nothing on its side knows the path.
///
/// Addresses: the message goes to the inner packet's source and comes from its destination. The
/// kernel takes an ICMP error from any source that is routed back through the interface it came
/// in on (reverse path filtering); the destination is routed through the tunnel, an address of the
/// host itself would be a martian. For TCP the kernel then checks that the quoted sequence number
/// is in its window (tcp_v4_err), which it is: the quote is the packet just refused.
public enum ICMPTooBig {
    /// Bytes of the offending packet an ICMPv4 error quotes at most: the message stays within
    /// 576 bytes (RFC 1812 §4.3.2.3).
    static let quoteV4 = 576 - 20 - 8
    /// An ICMPv6 error stays within the minimum MTU, 1280 (RFC 4443 §2.4 (c)).
    static let quoteV6 = 1280 - 40 - 8
    /// Room a message needs at most (IPv6 header, ICMPv6 header, quote).
    public static let maximumLength = 1280

    /// Writes into `out` the message telling the sender of `packet` (an IPv4 or IPv6 packet read
    /// from the TUN) that `mtu` bytes is the most the tunnel carries. Returns its length, or nil
    /// for a packet that must get none: not IP, a non-first fragment, an ICMP error itself, a
    /// source that is unspecified, multicast or broadcast; or `out` too small.
    public static func write(
        for packet: UnsafeRawBufferPointer, mtu: Int, into out: UnsafeMutableRawBufferPointer
    ) -> Int? {
        guard let first = packet.firstByte, out.count >= maximumLength else { return nil }
        switch first >> 4 {
        case 4: return writeV4(for: packet, mtu: mtu, into: out)
        case 6: return writeV6(for: packet, mtu: mtu, into: out)
        default: return nil
        }
    }

    private static func writeV4(
        for packet: UnsafeRawBufferPointer, mtu: Int, into out: UnsafeMutableRawBufferPointer
    ) -> Int? {
        guard packet.count >= 20 else { return nil }
        let headerLength = Int(packet[0] & 0x0f) * 4
        guard headerLength >= 20, packet.count >= headerLength else { return nil }
        // Only the first fragment: a later one quotes no transport header.
        guard load16(packet, 6) & 0x1fff == 0 else { return nil }
        let source = load32(packet, 12)
        // Never to 0.0.0.0, a multicast group, or the limited broadcast.
        guard source != 0, source >> 28 != 0xe, source != 0xffff_ffff else { return nil }
        if packet[9] == 1 {
            // An ICMP error gets no error (RFC 1122 §3.2.2); echo and the like do.
            guard packet.count > headerLength else { return nil }
            let type = packet[headerLength]
            guard type == 0 || type == 8 || type == 13 || type == 14 else { return nil }
        }
        let quote = min(packet.count, quoteV4)
        let total = 20 + 8 + quote
        // IPv4 header: no options, no DF (an error may be fragmented), TTL 64, ICMP.
        store16(out, 0, 0x4500)
        store16(out, 2, UInt16(total))
        store16(out, 4, 0)
        store16(out, 6, 0)
        out[8] = 64
        out[9] = 1
        store16(out, 10, 0)
        store32(out, 12, load32(packet, 16))
        store32(out, 16, source)
        store16(out, 10, ~InternetChecksum.sum(UnsafeRawBufferPointer(rebasing: out[0..<20])))
        // ICMP: destination unreachable, fragmentation needed, next-hop MTU.
        out[20] = 3
        out[21] = 4
        store16(out, 22, 0)
        store16(out, 24, 0)
        store16(out, 26, UInt16(clamping: mtu))
        UnsafeMutableRawBufferPointer(rebasing: out[28..<(28 + quote)])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: packet[0..<quote]))
        store16(out, 22, ~InternetChecksum.sum(UnsafeRawBufferPointer(rebasing: out[20..<total])))
        return total
    }

    private static func writeV6(
        for packet: UnsafeRawBufferPointer, mtu: Int, into out: UnsafeMutableRawBufferPointer
    ) -> Int? {
        guard packet.count >= 40 else { return nil }
        let source = UnsafeRawBufferPointer(rebasing: packet[8..<24])
        // Never to :: or a multicast group (ff00::/8).
        guard source[0] != 0xff, source.contains(where: { $0 != 0 }) else { return nil }
        if packet[6] == 58 {
            // An ICMPv6 error (types below 128) gets no error (RFC 4443 §2.4 (e)).
            guard packet.count > 40, packet[40] >= 128 else { return nil }
        }
        let quote = min(packet.count, quoteV6)
        let payload = 8 + quote
        store32(out, 0, 0x6000_0000)
        store16(out, 4, UInt16(payload))
        out[6] = 58
        out[7] = 64
        UnsafeMutableRawBufferPointer(rebasing: out[8..<24])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: packet[24..<40]))
        UnsafeMutableRawBufferPointer(rebasing: out[24..<40]).copyMemory(from: source)
        out[40] = 2
        out[41] = 0
        store16(out, 42, 0)
        store32(out, 44, UInt32(clamping: mtu))
        UnsafeMutableRawBufferPointer(rebasing: out[48..<(48 + quote)])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: packet[0..<quote]))
        // The pseudo-header: both addresses, the upper-layer length and next header 58.
        var sum = InternetChecksum.sum(UnsafeRawBufferPointer(rebasing: out[8..<40]))
        sum = InternetChecksum.add(sum, UInt16(truncatingIfNeeded: payload >> 16))
        sum = InternetChecksum.add(sum, UInt16(truncatingIfNeeded: payload))
        sum = InternetChecksum.add(sum, 58)
        sum = InternetChecksum.sum(UnsafeRawBufferPointer(rebasing: out[40..<(40 + payload)]), initial: sum)
        store16(out, 42, ~sum)
        return 40 + payload
    }

    // MARK: - MSS clamping

    /// The largest TCP MSS for a path that carries `mtu`-byte inner packets: less the IP and TCP
    /// headers, and for IPv6 never below what its minimum MTU gives (1220).
    public static func maximumSegment(mtu: Int, ipv6: Bool) -> Int {
        ipv6 ? max(mtu - 60, 1220) : mtu - 40
    }

    /// If `packet` is a TCP SYN (IPv4, or IPv6 with TCP as its first next header) whose MSS
    /// option exceeds what `mtu` allows, lowers it in place and updates the checksum
    /// incrementally (RFC 1624). The checksum must be complete, not a partial one. Cheap for
    /// anything else: a version, protocol and flags test. Returns whether `packet` is a SYN.
    @inline(__always) @discardableResult
    public static func clampMSS(_ packet: UnsafeMutableRawBufferPointer, mtu: Int) -> Bool {
        guard packet.count >= 40 else { return false }
        let version = packet[0] >> 4
        let tcp: Int
        if version == 4 {
            tcp = Int(packet[0] & 0x0f) * 4
            guard tcp >= 20, packet[9] == 6, load16(UnsafeRawBufferPointer(packet), 6) & 0x1fff == 0 else {
                return false
            }
        } else if version == 6 {
            tcp = 40
            guard packet[6] == 6 else { return false }
        } else {
            return false
        }
        guard packet.count >= tcp + 20, packet[tcp + 13] & 0x02 != 0 else { return false }
        lowerMSS(packet, tcp: tcp, to: maximumSegment(mtu: mtu, ipv6: version == 6))
        return true
    }

    private static func lowerMSS(_ packet: UnsafeMutableRawBufferPointer, tcp: Int, to limit: Int) {
        let bytes = UnsafeRawBufferPointer(packet)
        let end = tcp + Int(packet[tcp + 12] >> 4) * 4
        guard end <= packet.count else { return }
        var option = tcp + 20
        while option < end {
            let kind = packet[option]
            if kind == 0 { return }
            if kind == 1 {
                option += 1
                continue
            }
            guard option + 1 < end else { return }
            let length = Int(packet[option + 1])
            guard length >= 2, option + length <= end else { return }
            if kind == 2, length == 4 {
                let old = load16(bytes, option + 2)
                guard Int(old) > limit else { return }
                let new = UInt16(limit)
                store16(packet, option + 2, new)
                // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
                let field = tcp + 16
                var sum = InternetChecksum.add(~load16(bytes, field), ~old)
                sum = InternetChecksum.add(sum, new)
                store16(packet, field, ~sum)
                return
            }
            option += length
        }
    }

    // MARK: - Bytes

    @inline(__always) static func load16(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    @inline(__always) static func load32(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        UInt32(load16(bytes, offset)) << 16 | UInt32(load16(bytes, offset + 2))
    }

    @inline(__always) static func store16(_ bytes: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: UInt16) {
        bytes[offset] = UInt8(truncatingIfNeeded: value >> 8)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: value)
    }

    @inline(__always) static func store32(_ bytes: UnsafeMutableRawBufferPointer, _ offset: Int, _ value: UInt32) {
        store16(bytes, offset, UInt16(truncatingIfNeeded: value >> 16))
        store16(bytes, offset + 2, UInt16(truncatingIfNeeded: value))
    }
}
