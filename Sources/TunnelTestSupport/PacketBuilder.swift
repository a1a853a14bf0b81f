import TunnelCore

/// Builds well-formed IPv4/IPv6 packets (UDP, ICMP echo) with correct checksums, for tests that
/// feed a TUN or check what comes out of one. Allocation is fine here: this is test-only code.
public enum PacketBuilder {
    public static let ipv4ProtocolICMP: UInt8 = 1
    public static let ipv4ProtocolUDP: UInt8 = 17
    public static let ipv6NextHeaderUDP: UInt8 = 17
    public static let ipv6NextHeaderICMPv6: UInt8 = 58
    public static let udpHeaderSize = 8
    public static let icmpEchoHeaderSize = 8

    /// A UDP datagram from `source`:`sourcePort` to `destination`:`destinationPort`.
    /// Both addresses must be of the same family.
    public static func udp(
        source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16,
        payload: [UInt8] = [], hopLimit: UInt8 = 64
    ) -> [UInt8] {
        let length = udpHeaderSize + payload.count
        precondition(length <= Int(UInt16.max), "UDP payload too large")
        var segment: [UInt8] = []
        segment.reserveCapacity(length)
        appendBE16(sourcePort, to: &segment)
        appendBE16(destinationPort, to: &segment)
        appendBE16(UInt16(length), to: &segment)
        appendBE16(0, to: &segment)  // checksum, filled below
        segment += payload
        var checksum = internetChecksum(
            segment,
            initial: pseudoHeaderSum(
                source: source, destination: destination, protocolNumber: ipv4ProtocolUDP,
                length: length))
        // RFC 768: a computed 0 is sent as all ones, since 0 means "no checksum".
        if checksum == 0 { checksum = 0xffff }
        storeBE16(checksum, into: &segment, at: 6)
        return ipPacket(
            source: source, destination: destination, protocolNumber: ipv4ProtocolUDP,
            hopLimit: hopLimit, payload: segment)
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) echo request, or reply when `reply` is true.
    public static func icmpEcho(
        source: IPAddress, destination: IPAddress, identifier: UInt16, sequence: UInt16,
        payload: [UInt8] = [], reply: Bool = false, hopLimit: UInt8 = 64
    ) -> [UInt8] {
        let isV4 = source.isV4
        let type: UInt8 = isV4 ? (reply ? 0 : 8) : (reply ? 129 : 128)
        var message: [UInt8] = [type, 0, 0, 0]
        appendBE16(identifier, to: &message)
        appendBE16(sequence, to: &message)
        message += payload
        // ICMPv4 sums the message alone; ICMPv6 also covers the pseudo-header (RFC 4443 §2.3).
        let initial =
            isV4
            ? 0
            : pseudoHeaderSum(
                source: source, destination: destination, protocolNumber: ipv6NextHeaderICMPv6,
                length: message.count)
        storeBE16(internetChecksum(message, initial: initial), into: &message, at: 2)
        return ipPacket(
            source: source, destination: destination,
            protocolNumber: isV4 ? ipv4ProtocolICMP : ipv6NextHeaderICMPv6,
            hopLimit: hopLimit, payload: message)
    }

    /// An IP packet carrying `payload` (a transport segment that is already complete).
    /// IPv4 gets a 20-byte header with DF set and a valid header checksum; IPv6 a 40-byte header.
    public static func ipPacket(
        source: IPAddress, destination: IPAddress, protocolNumber: UInt8, hopLimit: UInt8 = 64,
        identification: UInt16 = 0, payload: [UInt8]
    ) -> [UInt8] {
        switch (source, destination) {
        case (.v4(let from), .v4(let to)):
            let total = 20 + payload.count
            precondition(total <= Int(UInt16.max), "IPv4 packet too large")
            var header: [UInt8] = [0x45, 0]
            appendBE16(UInt16(total), to: &header)
            appendBE16(identification, to: &header)
            appendBE16(0x4000, to: &header)  // DF, fragment offset 0
            header += [hopLimit, protocolNumber, 0, 0]
            appendBE32(from, to: &header)
            appendBE32(to, to: &header)
            storeBE16(internetChecksum(header), into: &header, at: 10)
            return header + payload
        case (.v6(let from), .v6(let to)):
            precondition(payload.count <= Int(UInt16.max), "IPv6 payload too large")
            var header: [UInt8] = [0x60, 0, 0, 0]
            appendBE16(UInt16(payload.count), to: &header)
            header += [protocolNumber, hopLimit]
            header += IPAddress.v6(from).networkBytes  // `from`/`to` are IPv6Bits
            header += IPAddress.v6(to).networkBytes
            return header + payload
        default:
            preconditionFailure("source and destination must be the same address family")
        }
    }

    /// The RFC 1071 Internet checksum of `bytes` (an odd final byte is padded with zero),
    /// starting from the unfolded partial sum `initial`. Summing a region that already contains
    /// a correct checksum gives 0.
    public static func internetChecksum(_ bytes: [UInt8], initial: UInt32 = 0) -> UInt16 {
        var sum = UInt64(initial)
        var index = 0
        while index + 1 < bytes.count {
            sum += UInt64(bytes[index]) << 8 | UInt64(bytes[index + 1])
            index += 2
        }
        if index < bytes.count { sum += UInt64(bytes[index]) << 8 }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    /// Unfolded one's-complement sum of the UDP/ICMPv6 pseudo-header (RFC 768, RFC 8200 §8.1).
    static func pseudoHeaderSum(
        source: IPAddress, destination: IPAddress, protocolNumber: UInt8, length: Int
    ) -> UInt32 {
        precondition(source.isV4 == destination.isV4, "mixed address families")
        var bytes = source.networkBytes + destination.networkBytes
        if source.isV4 {
            bytes += [0, protocolNumber]
            appendBE16(UInt16(length), to: &bytes)
        } else {
            appendBE32(UInt32(length), to: &bytes)
            bytes += [0, 0, 0, protocolNumber]
        }
        var sum: UInt32 = 0
        for index in stride(from: 0, to: bytes.count, by: 2) {
            sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
        }
        return sum
    }

    static func appendBE16(_ value: UInt16, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 8), UInt8(truncatingIfNeeded: value)]
    }

    static func appendBE32(_ value: UInt32, to bytes: inout [UInt8]) {
        appendBE16(UInt16(value >> 16), to: &bytes)
        appendBE16(UInt16(truncatingIfNeeded: value), to: &bytes)
    }

    static func storeBE16(_ value: UInt16, into bytes: inout [UInt8], at offset: Int) {
        bytes[offset] = UInt8(value >> 8)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: value)
    }
}
