// UDP tunnel offload, the pure part: the extended virtio-net header a TUN uses once it is given
// TUNSETVNETHDRSZ(24) and TUNSETOFFLOAD(... | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM)
// (Linux 6.17 and later), and segmentation of the super-packets it then hands over: a VXLAN (or
// Geneve, or any UDP tunnel) datagram whose inner TCP or UDP payload is up to 64 KiB, which the
// kernel would otherwise have cut into MTU-sized datagrams before the TUN saw them, one read each.
// No syscalls and no allocation per packet: every function works on caller-owned buffers.
//
// Facts come from the kernel (`include/uapi/linux/virtio_net.h`: `virtio_net_hdr_v1_hash_tunnel`,
// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4/IPV6`, `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`;
// `include/linux/virtio_net.h`: `virtio_net_hdr_tnl_from_skb`; `drivers/net/tun_vnet.h`;
// `net/ipv4/udp_offload.c`: `skb_udp_tunnel_segment`) and from reading what a 6.18 TUN hands over
// for VXLAN; the code is our own.

// MARK: - The extended header

/// `struct virtio_net_hdr_v1_hash_tunnel` (24 bytes): the 10-byte `virtio_net_hdr` (`VirtioNetHeader`),
/// then `num_buffers` (2), `hash_value` (4), `hash_report` (2), padding (2), and the two offsets
/// that only a tunnel super-packet fills: where the outer transport (UDP) header and the inner
/// network header start, counted from the first byte of the packet (the outer IP header; a TUN
/// has no link-layer header). Little-endian, as `VirtioNetHeader`.
public enum TunnelVirtioHeader {
    public static let size = 24
    static let outerTransportOffset = 20
    static let innerNetworkOffset = 22

    /// gso_type bits: the super-packet is a UDP tunnel over IPv4 / IPv6 (the rest of gso_type is
    /// the inner packet's type, TCPV4, TCPV6 or UDP_L4, with the ECN bit for TCP).
    public static let gsoUDPTunnelIPv4: UInt8 = 0x20
    public static let gsoUDPTunnelIPv6: UInt8 = 0x40
    public static let gsoUDPTunnel: UInt8 = gsoUDPTunnelIPv4 | gsoUDPTunnelIPv6
    /// flags bit VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM: every segment's outer UDP checksum must be
    /// computed; without it, the outer UDP checksum is 0 (none), as the tunnel device chose.
    public static let udpTunnelChecksum: UInt8 = 8

    /// Zeroes the 14 bytes after the classic header in a 24-byte header at `buffer`: no tunnel
    /// offsets, no hash. What goes in front of every packet tunctl writes with the larger header.
    public static func clearExtension(_ buffer: UnsafeMutableRawPointer) {
        (buffer + VirtioNetHeader.size).initializeMemory(
            as: UInt8.self, repeating: 0, count: size - VirtioNetHeader.size)
    }
}

/// What one read from a TUN with the 24-byte header turned into.
public enum TunnelTUNRead {
    /// Not a tunnel super-packet: `record` holds the classic 10-byte header (moved up in place, so
    /// it sits right in front of the packet) and the packet, for `interpretTUNRead`.
    case classic(record: UnsafeMutableRawBufferPointer)
    /// A UDP tunnel super-packet, to cut into datagrams with the segmenter.
    case tunnelSuperPacket(UDPTunnelSegmenter)
}

/// Interprets one record read from a TUN whose virtio-net header is `TunnelVirtioHeader.size`
/// bytes: `record` is exactly the bytes read. A tunnel super-packet comes back as a segmenter that
/// reads from `record` (which must stay alive and unchanged until it is done); anything else is
/// handed back as a classic record (10-byte header and packet, a suffix of `record`, with the
/// header's first 10 bytes moved to its end: the other 14 carry nothing for such a packet).
public func interpretTunnelTUNRead(_ record: UnsafeMutableRawBufferPointer) throws(OffloadError) -> TunnelTUNRead {
    guard record.count >= TunnelVirtioHeader.size, let base = record.baseAddress else { throw .truncatedVirtioHeader }
    let header = try VirtioNetHeader(parsing: UnsafeRawBufferPointer(record))
    let packet = UnsafeRawBufferPointer(rebasing: record[TunnelVirtioHeader.size...])
    if header.gsoType & TunnelVirtioHeader.gsoUDPTunnel != 0 {
        let bytes = UnsafeRawBufferPointer(record)
        return .tunnelSuperPacket(
            try UDPTunnelSegmenter(
                header: header, outerTransport: Int(bytes.le16(TunnelVirtioHeader.outerTransportOffset)),
                innerNetwork: Int(bytes.le16(TunnelVirtioHeader.innerNetworkOffset)), packet: packet))
    }
    let shift = TunnelVirtioHeader.size - VirtioNetHeader.size
    // Sound: both ranges lie inside the first 24 bytes of `record`; memmove handles the overlap.
    (base + shift).copyMemory(from: base, byteCount: VirtioNetHeader.size)
    return .classic(record: UnsafeMutableRawBufferPointer(rebasing: record[shift...]))
}

// MARK: - Segmenting

/// What the TUN read path needs of a segmenter: the next segment into a send slot.
public protocol PacketSegmenter {
    /// Writes the next segment at the start of `destination` and returns its length, or nil when
    /// all were produced; a too-small destination is refused before anything is written.
    mutating func next(into destination: UnsafeMutableRawBufferPointer) throws(OffloadError) -> Int?
}

extension GSOSegmenter: PacketSegmenter {}

/// Cuts one UDP tunnel super-packet (outer IPv4/IPv6, outer UDP, the tunnel's own header and inner
/// Ethernet, copied as they are, then the inner IPv4/IPv6 + TCP or UDP super-packet) into complete
/// outer datagrams of at most `segmentSize` inner payload bytes each, as the kernel's
/// `skb_udp_tunnel_segment` around `tcp_gso_segment` / `__udp_gso_segment` would:
///
/// - outer IPv4: total length, identification (first + index) and header checksum rewritten;
///   outer IPv6: payload length rewritten;
/// - outer UDP: length rewritten; checksum computed over the whole datagram when the header has
///   `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`, else 0 (a result of 0 is sent as 0xffff);
/// - inner IP as the outer (IPv4 length, identification, checksum; IPv6 payload length);
/// - inner TCP: sequence advanced, FIN and PSH on the last segment only, CWR on the first only,
///   checksum computed; inner UDP: length set, checksum computed.
///
/// Borrowing: reads the super-packet through the pointer it was given and never writes to it.
public struct UDPTunnelSegmenter: PacketSegmenter {
    public let isOuterIPv6: Bool
    public let isInnerIPv6: Bool
    /// The inner packets are UDP datagrams (inner gso_type UDP_L4) rather than TCP segments.
    public let isInnerUDP: Bool
    /// Whether each segment's outer UDP checksum is computed (else it is 0).
    public let computesOuterChecksum: Bool
    /// All header bytes, outer and inner, at the front of every segment.
    public let headerLength: Int
    /// Inner payload bytes per segment (gso_size); the last segment may carry fewer.
    public let segmentSize: Int
    /// Segments this super-packet yields (at least 1).
    public let segmentCount: Int
    public private(set) var producedCount = 0

    private let packet: UnsafeRawBufferPointer
    private let outerIPHeaderLength: Int
    /// Where the outer UDP header starts (= `outerIPHeaderLength`).
    private let outerTransport: Int
    private let innerNetwork: Int
    private let innerTransport: Int
    private let firstOuterIdentification: UInt16
    private let firstInnerIdentification: UInt16
    private let firstSequence: UInt32

    /// The size of the largest segment: what a destination buffer must hold.
    public var maximumSegmentLength: Int { headerLength + min(segmentSize, packet.count - headerLength) }

    /// Validates `header` (whose gso_type has a UDP tunnel bit), the two offsets of the extended
    /// header and `packet` (the bytes after the 24-byte header).
    public init(
        header: VirtioNetHeader, outerTransport: Int, innerNetwork: Int, packet: UnsafeRawBufferPointer
    ) throws(OffloadError) {
        let tunnel = header.gsoType & TunnelVirtioHeader.gsoUDPTunnel
        let kind = header.gsoType & ~(TunnelVirtioHeader.gsoUDPTunnel | VirtioNetHeader.GSOType.ecn)
        let innerUDP = kind == VirtioNetHeader.GSOType.udpL4
        guard tunnel == TunnelVirtioHeader.gsoUDPTunnelIPv4 || tunnel == TunnelVirtioHeader.gsoUDPTunnelIPv6,
            kind == VirtioNetHeader.GSOType.tcpV4 || kind == VirtioNetHeader.GSOType.tcpV6 || innerUDP,
            !(innerUDP && header.gsoType & VirtioNetHeader.GSOType.ecn != 0)
        else { throw .unsupportedGSOType(header.gsoType) }
        guard header.gsoSize > 0 else { throw .zeroGSOSize }

        // Outer: IPv4 without fragmentation or IPv6 without extension headers, then UDP, where the
        // header says; the version must match the tunnel bit.
        let outer = try TransportHeaders(parsing: packet, udp: true)
        guard outer.isV6 == (tunnel == TunnelVirtioHeader.gsoUDPTunnelIPv6) else { throw .ipVersionMismatch }
        if !outer.isV6 {
            let fragment = packet.be16(OffloadLayout.ipv4FlagsOffset)
            guard fragment & (OffloadLayout.ipv4MoreFragments | OffloadLayout.ipv4FragmentOffsetMask) == 0 else {
                throw .fragmented
            }
        }
        guard outerTransport == outer.ipHeaderLength else { throw .badTunnelOffsets }
        guard innerNetwork >= outerTransport + OffloadLayout.udpHeader, innerNetwork < packet.count else {
            throw .badTunnelOffsets
        }

        // Inner: what `GSOSegmenter` accepts, at `innerNetwork`.
        let innerBytes = UnsafeRawBufferPointer(rebasing: packet[innerNetwork...])
        let inner = try TransportHeaders(parsing: innerBytes, udp: innerUDP)
        if !innerUDP {
            guard inner.isV6 == (kind == VirtioNetHeader.GSOType.tcpV6) else { throw .ipVersionMismatch }
        }
        if !inner.isV6 {
            let fragment = innerBytes.be16(OffloadLayout.ipv4FlagsOffset)
            guard fragment & (OffloadLayout.ipv4MoreFragments | OffloadLayout.ipv4FragmentOffsetMask) == 0 else {
                throw .fragmented
            }
        }
        let innerTransport = innerNetwork + inner.ipHeaderLength
        if header.needsChecksum {
            // The partial checksum is the inner transport's.
            guard Int(header.checksumStart) == innerTransport, Int(header.checksumOffset) == inner.checksumOffset
            else { throw .badChecksumLocation }
        }
        let headerLength = innerNetwork + inner.headerLength
        let payload = packet.count - headerLength
        let segmentSize = Int(header.gsoSize)
        guard headerLength + min(segmentSize, payload) <= OffloadLayout.maximumIPPacket else {
            throw .segmentTooLarge
        }
        self.packet = packet
        isOuterIPv6 = outer.isV6
        isInnerIPv6 = inner.isV6
        isInnerUDP = innerUDP
        computesOuterChecksum = header.flags & TunnelVirtioHeader.udpTunnelChecksum != 0
        self.headerLength = headerLength
        self.segmentSize = segmentSize
        segmentCount = payload == 0 ? 1 : (payload + segmentSize - 1) / segmentSize
        outerIPHeaderLength = outer.ipHeaderLength
        self.outerTransport = outerTransport
        self.innerNetwork = innerNetwork
        self.innerTransport = innerTransport
        firstOuterIdentification = outer.isV6 ? 0 : packet.be16(OffloadLayout.ipv4IdentificationOffset)
        firstInnerIdentification =
            inner.isV6 ? 0 : packet.be16(innerNetwork + OffloadLayout.ipv4IdentificationOffset)
        firstSequence = innerUDP ? 0 : packet.be32(innerTransport + OffloadLayout.tcpSequenceOffset)
    }

    public mutating func next(into destination: UnsafeMutableRawBufferPointer) throws(OffloadError) -> Int? {
        guard producedCount < segmentCount else { return nil }
        let index = producedCount
        let (segment, payloadSum) = try packet.copySegment(
            index, headerLength: headerLength, segmentSize: segmentSize, into: destination)
        let length = segment.count

        // Inner headers first: the outer UDP checksum covers them.
        segment.rewriteIPHeader(
            at: innerNetwork, isV6: isInnerIPv6, length: length - innerNetwork,
            identification: firstInnerIdentification &+ UInt16(truncatingIfNeeded: index))
        let checksumField: Int
        if isInnerUDP {
            segment.storeBE16(UInt16(length - innerTransport), at: innerTransport + OffloadLayout.udpLengthOffset)
            checksumField = innerTransport + OffloadLayout.udpChecksumOffset
        } else {
            segment.storeBE32(
                firstSequence &+ UInt32(truncatingIfNeeded: index * segmentSize),
                at: innerTransport + OffloadLayout.tcpSequenceOffset)
            var flags = segment[innerTransport + OffloadLayout.tcpFlagsOffset]
            if index != segmentCount - 1 { flags &= ~(OffloadLayout.tcpFIN | OffloadLayout.tcpPSH) }
            if index != 0 { flags &= ~OffloadLayout.tcpCWR }
            segment[innerTransport + OffloadLayout.tcpFlagsOffset] = flags
            checksumField = innerTransport + OffloadLayout.tcpChecksumOffset
        }
        segment.storeBE16(0, at: checksumField)
        let readable = UnsafeRawBufferPointer(segment)
        let innerAddresses =
            innerNetwork + (isInnerIPv6 ? OffloadLayout.ipv6AddressesOffset : OffloadLayout.ipv4AddressesOffset)
        let innerPseudo = InternetChecksum.pseudoHeaderSum(
            addresses: UnsafeRawBufferPointer(
                rebasing: readable[
                    innerAddresses..<innerAddresses
                        + (isInnerIPv6 ? OffloadLayout.ipv6AddressesSize : OffloadLayout.ipv4AddressesSize)]),
            protocolNumber: isInnerUDP ? OffloadLayout.protocolUDP : OffloadLayout.protocolTCP,
            length: length - innerTransport)
        // The inner transport header has an even length (TCP: words; UDP: 8), so the payload's sum
        // lines up with it.
        var innerChecksum = InternetChecksum.checksum(
            UnsafeRawBufferPointer(rebasing: readable[innerTransport..<headerLength]),
            initial: InternetChecksum.add(innerPseudo, payloadSum))
        if isInnerUDP && innerChecksum == 0 { innerChecksum = 0xffff }
        segment.storeBE16(innerChecksum, at: checksumField)

        // Outer headers.
        segment.rewriteIPHeader(
            at: 0, isV6: isOuterIPv6, length: length,
            identification: firstOuterIdentification &+ UInt16(truncatingIfNeeded: index))
        segment.storeBE16(UInt16(length - outerTransport), at: outerTransport + OffloadLayout.udpLengthOffset)
        let outerField = outerTransport + OffloadLayout.udpChecksumOffset
        segment.storeBE16(0, at: outerField)
        if computesOuterChecksum {
            let addresses = isOuterIPv6 ? OffloadLayout.ipv6AddressesOffset : OffloadLayout.ipv4AddressesOffset
            let outerPseudo = InternetChecksum.pseudoHeaderSum(
                addresses: UnsafeRawBufferPointer(
                    rebasing: readable[
                        addresses..<addresses
                            + (isOuterIPv6 ? OffloadLayout.ipv6AddressesSize : OffloadLayout.ipv4AddressesSize)]),
                protocolNumber: OffloadLayout.protocolUDP, length: length - outerTransport)
            // The payload starts `headerLength - outerTransport` bytes into the datagram; at an odd
            // distance its 16-bit words straddle the datagram's, and its sum is byte-swapped (RFC 1071 §2(B)).
            let alignedPayload = (headerLength - outerTransport) % 2 == 0 ? payloadSum : payloadSum.byteSwapped
            var checksum = InternetChecksum.checksum(
                UnsafeRawBufferPointer(rebasing: readable[outerTransport..<headerLength]),
                initial: InternetChecksum.add(outerPseudo, alignedPayload))
            if checksum == 0 { checksum = 0xffff }
            segment.storeBE16(checksum, at: outerField)
        }
        producedCount += 1
        return length
    }
}
