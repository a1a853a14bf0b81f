import CLinuxShim
import Glibc
import TunnelCore

/// The ancillary data tunctl reads and writes next to its datagrams, in caller-provided control
/// areas (a batch's, allocated once): `UDP_GRO` and `UDP_SEGMENT` segment sizes, and the packet
/// info (`IP_PKTINFO` / `IPV6_PKTINFO`) that carries a sticky source address. Nothing here allocates.
///
/// Packet info on receive: a dual-stack socket asks for `IPV6_RECVPKTINFO` and gets
/// `IPV6_PKTINFO` for both families (IPv4 destinations as `::ffff:a.b.c.d`); an IPv4 socket asks
/// for `IP_PKTINFO`. Both kinds are understood wherever they arrive. On send, an IPv4 source goes
/// as `IP_PKTINFO` (its `ipi_spec_dst`), which both socket kinds accept, and an IPv6 source as
/// `IPV6_PKTINFO`; each names the interface it was learned on, as wireguard-go's do.
enum ControlMessages {
    /// What the kernel attached to one received message.
    struct Received: Equatable {
        /// The `UDP_GRO` segment size, when the kernel joined datagrams (nil otherwise).
        var segmentSize: Int?
        /// Where the datagram was sent to, from its packet info (nil without any).
        var stickySource: StickySource?
    }

    /// `CMSG_SPACE(sizeof(struct in_pktinfo))`, 32 bytes.
    static let v4PacketInfoSpace = tunctl_cmsg_space(MemoryLayout<tunctl_in_pktinfo>.size)
    /// `CMSG_SPACE(sizeof(struct in6_pktinfo))`, 40 bytes: room for either kind.
    static let packetInfoSpace = tunctl_cmsg_space(MemoryLayout<tunctl_in6_pktinfo>.size)
    /// `CMSG_SPACE(sizeof(uint16_t))`, 24 bytes: a `UDP_SEGMENT` message.
    static let segmentSpace = tunctl_cmsg_space(MemoryLayout<UInt16>.size)

    /// Reads every control message of `message` (after a receive: `msg_control` and the
    /// `msg_controllen` the kernel set). Messages of another kind, or too short for theirs, are
    /// skipped; the CMSG helpers never step outside `msg_controllen`.
    static func parse(_ message: UnsafeMutablePointer<msghdr>) -> Received {
        var received = Received()
        var next = tunctl_cmsg_firsthdr(message)
        while let header = next {
            let level = header.pointee.cmsg_level
            let type = header.pointee.cmsg_type
            let length = Int(header.pointee.cmsg_len)
            if let data = tunctl_cmsg_data(header) {
                let bytes = UnsafeRawPointer(data)
                if level == tunctl_sol_udp, type == tunctl_udp_gro,
                    length >= tunctl_cmsg_len(MemoryLayout<Int32>.size)
                {
                    let size = Int(bytes.loadUnaligned(as: Int32.self))
                    received.segmentSize = size > 0 ? size : nil
                } else if level == tunctl_sol_ipv6, type == tunctl_ipv6_pktinfo,
                    length >= tunctl_cmsg_len(MemoryLayout<tunctl_in6_pktinfo>.size)
                {
                    received.stickySource = decodeV6(bytes.loadUnaligned(as: tunctl_in6_pktinfo.self))
                } else if level == tunctl_sol_ip, type == tunctl_ip_pktinfo,
                    length >= tunctl_cmsg_len(MemoryLayout<tunctl_in_pktinfo>.size)
                {
                    received.stickySource = decodeV4(bytes.loadUnaligned(as: tunctl_in_pktinfo.self))
                }
            }
            next = tunctl_cmsg_nxthdr(message, header)
        }
        return received
    }

    /// Writes the packet info that makes `source` the datagram's source address at `area`, which
    /// must be `cmsghdr`-aligned with `packetInfoSpace` bytes of room, and returns the bytes it
    /// used (`CMSG_SPACE` of the kind written), the offset of a following message.
    static func writePacketInfo(_ source: StickySource, at area: UnsafeMutableRawPointer) -> Int {
        let header = area.bindMemory(to: cmsghdr.self, capacity: 1)
        switch source.address {
        case .v4(let value):
            var info = tunctl_in_pktinfo()
            info.ipi_ifindex = Int32(bitPattern: source.interfaceIndex)
            info.ipi_spec_dst = value.bigEndian
            // The kernel insists on exactly CMSG_LEN(sizeof(struct in_pktinfo)) for IP_PKTINFO.
            setHeader(
                header, length: tunctl_cmsg_len(MemoryLayout<tunctl_in_pktinfo>.size), level: tunctl_sol_ip,
                type: tunctl_ip_pktinfo)
            // Sound: the header was just written, so CMSG_DATA points inside `area`'s room.
            guard let data = tunctl_cmsg_data(header) else { preconditionFailure("no room for IP_PKTINFO") }
            UnsafeMutableRawPointer(data).storeBytes(of: info, as: tunctl_in_pktinfo.self)
            return v4PacketInfoSpace
        case .v6(let bits):
            var info = tunctl_in6_pktinfo()
            info.ipi6_ifindex = source.interfaceIndex
            // Sound: ipi6_addr is exactly 16 bytes, the size of the UInt128 stored.
            withUnsafeMutableBytes(of: &info.ipi6_addr) { $0.storeBytes(of: bits.value.bigEndian, as: UInt128.self) }
            setHeader(
                header, length: tunctl_cmsg_len(MemoryLayout<tunctl_in6_pktinfo>.size), level: tunctl_sol_ipv6,
                type: tunctl_ipv6_pktinfo)
            guard let data = tunctl_cmsg_data(header) else { preconditionFailure("no room for IPV6_PKTINFO") }
            UnsafeMutableRawPointer(data).storeBytes(of: info, as: tunctl_in6_pktinfo.self)
            return packetInfoSpace
        }
    }

    /// Writes a `UDP_SEGMENT` message for `size`-byte segments at `area` (`cmsghdr`-aligned,
    /// `segmentSpace` bytes of room) and returns the bytes it used.
    static func writeSegmentSize(_ size: UInt16, at area: UnsafeMutableRawPointer) -> Int {
        let header = area.bindMemory(to: cmsghdr.self, capacity: 1)
        setHeader(
            header, length: tunctl_cmsg_len(MemoryLayout<UInt16>.size), level: tunctl_sol_udp, type: tunctl_udp_segment)
        guard let data = tunctl_cmsg_data(header) else { preconditionFailure("no room for UDP_SEGMENT") }
        UnsafeMutableRawPointer(data).storeBytes(of: size, as: UInt16.self)
        return segmentSpace
    }

    private static func setHeader(
        _ header: UnsafeMutablePointer<cmsghdr>, length: Int, level: Int32, type: Int32
    ) {
        header.pointee.cmsg_len = length
        header.pointee.cmsg_level = level
        header.pointee.cmsg_type = type
    }

    /// Whether a send that named a sticky source failed because that source is no longer ours:
    /// the kernel says EINVAL (IPv6: not a local address), ENETUNREACH (IPv4: no route from a
    /// foreign source), ENODEV (the interface is gone) or EADDRNOTAVAIL. Any of these is worth one
    /// retry without the source; a genuine routing failure then fails again and is reported.
    static func isVanishedSourceError(_ code: Int32) -> Bool {
        code == EINVAL || code == ENETUNREACH || code == ENODEV || code == EADDRNOTAVAIL
    }

    /// IPv4 packet info: `ipi_spec_dst` is the local address the kernel would answer from (the
    /// header's destination for unicast).
    private static func decodeV4(_ info: tunctl_in_pktinfo) -> StickySource? {
        let address = UInt32(bigEndian: info.ipi_spec_dst)
        guard address != 0 else { return nil }
        return StickySource(address: .v4(address), interfaceIndex: UInt32(bitPattern: info.ipi_ifindex))
    }

    /// IPv6 packet info: the header's destination; IPv4-mapped for IPv4 on a dual-stack socket.
    private static func decodeV6(_ info: tunctl_in6_pktinfo) -> StickySource? {
        // Sound: ipi6_addr is exactly 16 bytes, the size of the UInt128 loaded.
        let value = withUnsafeBytes(of: info.ipi6_addr) { UInt128(bigEndian: $0.loadUnaligned(as: UInt128.self)) }
        let address: IPAddress
        if value >> 32 == Endpoint.v4MappedPrefix >> 32 {
            let v4 = UInt32(truncatingIfNeeded: value)
            // 224.0.0.0/4 and the limited broadcast cannot be a source.
            guard v4 != 0, v4 >> 28 != 0xe, v4 != .max else { return nil }
            address = .v4(v4)
        } else {
            // The unspecified address and multicast (ff00::/8) cannot be a source.
            guard value != 0, value >> 120 != 0xff else { return nil }
            address = .v6(IPv6Bits(value))
        }
        return StickySource(address: address, interfaceIndex: info.ipi6_ifindex)
    }
}
