import CLinuxShim
import Glibc
import Testing
// Results involving a noncopyable batch are bound to a local before #expect: Swift 6.3.1
// miscompiles the macro's closure capture of an inout noncopyable value (wrong results, traps).
import TunnelCore

@testable import TunnelIO

/// Sticky source addresses (issue 15): packet info encoded and parsed, learned on receive and
/// named on send over loopback (all of 127.0.0.0/8 is local, so 127.0.0.2 is a second address
/// without root), and a refused source dropped and resent without.
@Suite struct StickySourceTests {
    static let loopback4 = IPAddress.v4(0x7f00_0001)
    static let second4 = IPAddress.v4(0x7f00_0002)
    static let loopback6 = IPAddress.v6(1)
    /// Addresses no test machine has: a sticky source the kernel must refuse.
    static let foreign4 = IPAddress("198.18.255.254")!
    static let foreign6 = IPAddress("2001:db8::dead")!
    static let loopbackIndex = UInt32(if_nametoindex("lo"))

    /// A cmsghdr-aligned control area and a msghdr describing its first `length` bytes.
    final class ControlArea {
        let area = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 16)
        var header = msghdr()
        init() { area.initializeMemory(as: UInt8.self, repeating: 0, count: 256) }
        deinit { area.deallocate() }
        func parse(length: Int) -> ControlMessages.Received {
            header.msg_control = area
            header.msg_controllen = length
            return withUnsafeMutablePointer(to: &header) { ControlMessages.parse($0) }
        }
        /// Writes one raw control message at `offset`; returns the offset of the next.
        func write(level: Int32, type: Int32, data: [UInt8], at offset: Int, length: Int? = nil) -> Int {
            let cmsg = (area + offset).bindMemory(to: cmsghdr.self, capacity: 1)
            cmsg.pointee.cmsg_len = length ?? tunctl_cmsg_len(data.count)
            cmsg.pointee.cmsg_level = level
            cmsg.pointee.cmsg_type = type
            data.withUnsafeBytes {
                (area + offset + tunctl_cmsg_len(0)).copyMemory(from: $0.baseAddress!, byteCount: data.count)
            }
            return offset + tunctl_cmsg_space(data.count)
        }
    }

    // MARK: Encoding and parsing

    static let sources: [StickySource] = [
        StickySource(address: IPAddress("198.18.0.3")!, interfaceIndex: 4),
        StickySource(address: IPAddress("2001:db8::3")!, interfaceIndex: 5),
        StickySource(address: IPAddress("fe80::1")!, interfaceIndex: 2),
    ]

    /// What `writePacketInfo` writes parses back to the same source, in the kind and length
    /// the kernel checks (IP_PKTINFO exactly CMSG_LEN(12), IPV6_PKTINFO CMSG_LEN(20)).
    @Test(arguments: sources)
    func packetInfoRoundTrips(source: StickySource) {
        let control = ControlArea()
        let used = ControlMessages.writePacketInfo(source, at: control.area)
        let header = control.area.assumingMemoryBound(to: cmsghdr.self).pointee
        if source.address.isV4 {
            #expect(used == 32 && header.cmsg_level == tunctl_sol_ip && header.cmsg_type == tunctl_ip_pktinfo)
            #expect(header.cmsg_len == tunctl_cmsg_len(12))
        } else {
            #expect(used == 40 && header.cmsg_level == tunctl_sol_ipv6 && header.cmsg_type == tunctl_ipv6_pktinfo)
            #expect(header.cmsg_len == tunctl_cmsg_len(20))
        }
        #expect(control.parse(length: used) == ControlMessages.Received(segmentSize: nil, stickySource: source))
    }

    /// A run's control area: packet info, then UDP_SEGMENT; both read back from one walk, and
    /// the kernel's receive pair (UDP_GRO and packet info, either order) as well.
    @Test func segmentSizeAndPacketInfoTogether() {
        let source = StickySource(address: IPAddress("2001:db8::3")!, interfaceIndex: 9)
        let control = ControlArea()
        var used = ControlMessages.writePacketInfo(source, at: control.area)
        used += ControlMessages.writeSegmentSize(1452, at: control.area + used)
        #expect(used == 64)
        let second = (control.area + 40).assumingMemoryBound(to: cmsghdr.self).pointee
        #expect(second.cmsg_level == tunctl_sol_udp && second.cmsg_type == tunctl_udp_segment)
        #expect((control.area + 40 + tunctl_cmsg_len(0)).loadUnaligned(as: UInt16.self) == 1452)

        // What a receive with GRO brings: the segment size first, then the packet info.
        let received = ControlArea()
        var next = received.write(
            level: tunctl_sol_udp, type: tunctl_udp_gro, data: withUnsafeBytes(of: Int32(1400)) { Array($0) }, at: 0)
        next = received.write(
            level: tunctl_sol_ip, type: tunctl_ip_pktinfo,
            data: Self.inPacketInfo(index: 3, specificDestination: "198.18.0.3", destination: "198.18.0.3"), at: next)
        let parsed = received.parse(length: next)
        #expect(parsed.segmentSize == 1400)
        #expect(parsed.stickySource == StickySource(address: IPAddress("198.18.0.3")!, interfaceIndex: 3))
    }

    /// IPv4 on a dual-stack socket comes as IPV6_PKTINFO with a mapped address: a `.v4` source.
    /// IP_PKTINFO's source is `ipi_spec_dst` (the local address), not the header's destination.
    @Test func mappedAndSpecificDestinationAddresses() {
        let mapped = ControlArea()
        let end = mapped.write(
            level: tunctl_sol_ipv6, type: tunctl_ipv6_pktinfo, data: Self.in6PacketInfo("::ffff:198.18.0.3", index: 6),
            at: 0)
        #expect(
            mapped.parse(length: end).stickySource == StickySource(address: IPAddress("198.18.0.3")!, interfaceIndex: 6)
        )

        let v4 = ControlArea()
        let end4 = v4.write(
            level: tunctl_sol_ip, type: tunctl_ip_pktinfo,
            data: Self.inPacketInfo(index: 2, specificDestination: "198.18.0.2", destination: "198.18.0.255"), at: 0)
        #expect(v4.parse(length: end4).stickySource?.address == IPAddress("198.18.0.2")!)
    }

    /// Nothing usable, nothing learned: a message too short for its kind, an unspecified or
    /// multicast address, another level's message, an empty area.
    @Test func unusablePacketInfoIsIgnored() {
        let short = ControlArea()
        let data = Self.in6PacketInfo("2001:db8::3", index: 1)
        let end = short.write(
            level: tunctl_sol_ipv6, type: tunctl_ipv6_pktinfo, data: data, at: 0, length: tunctl_cmsg_len(16))
        #expect(short.parse(length: end).stickySource == nil)
        for address in ["::", "ff02::1", "::ffff:224.0.0.1", "::ffff:0.0.0.0"] {
            let area = ControlArea()
            let end = area.write(
                level: tunctl_sol_ipv6, type: tunctl_ipv6_pktinfo, data: Self.in6PacketInfo(address, index: 1), at: 0)
            #expect(area.parse(length: end).stickySource == nil, "\(address)")
        }
        let unspecified4 = ControlArea()
        let end4 = unspecified4.write(
            level: tunctl_sol_ip, type: tunctl_ip_pktinfo,
            data: Self.inPacketInfo(index: 1, specificDestination: "0.0.0.0", destination: "198.18.0.3"), at: 0)
        #expect(unspecified4.parse(length: end4).stickySource == nil)
        let other = ControlArea()
        let endOther = other.write(level: tunctl_sol_udp, type: tunctl_ip_pktinfo, data: data, at: 0)
        #expect(other.parse(length: endOther) == ControlMessages.Received())
        #expect(ControlArea().parse(length: 0) == ControlMessages.Received())
    }

    /// One GSO message has one source: a destination's datagrams with different sticky sources
    /// (or none) go in different runs, each with its own packet info in front of UDP_SEGMENT.
    @Test func runsNeverMixSources() {
        let remote = Endpoint(address: Self.loopback4, port: 1000)
        var viaSecond = remote
        viaSecond.stickySource = StickySource(address: Self.second4, interfaceIndex: 1)
        var batch = SendBatch(capacity: 16, bufferSize: 1500)
        let bytes = [UInt8](repeating: 7, count: 1000)
        for to in [remote, remote, viaSecond, viaSecond, viaSecond, remote] {
            let queued = bytes.withUnsafeBytes { batch.append($0, to: to) }
            #expect(queued)
        }
        batch.prepareForSend(mapV4ToV6: true)
        let runs = batch.planRuns(maxSegments: 64, maxBytes: 65507)
        let lengths = (0..<runs).map { batch.runLength($0) }
        #expect(lengths == [2, 3, 1])
        let controls = (0..<runs).map { batch.runMessages[$0].msg_hdr.msg_controllen }
        #expect(controls == [ControlMessages.segmentSpace, 32 + ControlMessages.segmentSpace, 0])
        // Each slot of the sticky destination carries its packet info for sends one by one.
        let slotControls = (0..<6).map { batch.messages[$0].msg_hdr.msg_controllen }
        #expect(slotControls == [0, 0, 32, 32, 32, 0])

        // Dropping the source merges the runs again.
        let dropped = batch.dropStickySource(Self.second4)
        #expect(dropped)
        let merged = batch.planRuns(maxSegments: 64, maxBytes: 65507)
        let mergedLength = batch.runLength(0)
        #expect(merged == 1 && mergedLength == 6)
    }

    // MARK: Over loopback

    /// A datagram sent to 127.0.0.2 is learned with that local address and lo's index; a reply
    /// to the learned endpoint, batched (GSO runs and one by one) or single, leaves from
    /// 127.0.0.2, where without the sticky source the kernel would pick 127.0.0.1. Both socket
    /// kinds: dual-stack (IPV6_PKTINFO, mapped) and IPv4-only (IP_PKTINFO).
    @Test(arguments: [true, false], [[UDPOffload.segmentation], []])
    func repliesLeaveFromTheAddressThePeerSentTo(dualStack: Bool, offload: UDPOffload) throws {
        let peer = try UDPSocket(port: 0, allowIPv6: dualStack)
        let us = try UDPSocket(port: 0, allowIPv6: dualStack, offload: offload)
        #expect(us.family == (dualStack ? .dualStack : .ipv4))
        let hello: [UInt8] = Array("hello".utf8)
        #expect(try hello.withUnsafeBytes { try peer.send($0, to: Endpoint(address: Self.second4, port: us.port)) })

        var incoming = ReceiveBatch(capacity: 8)
        let count = try receive(us, into: &incoming)
        #expect(count == 1)
        let source = incoming.source(at: 0)
        let learned = try #require(source)
        #expect(learned.withoutStickySource == Endpoint(address: Self.loopback4, port: peer.port))
        #expect(learned.stickySource == StickySource(address: Self.second4, interfaceIndex: Self.loopbackIndex))

        // Batched: a run of three equal datagrams and a shorter one.
        var outgoing = SendBatch(capacity: 8, bufferSize: 1500)
        for length in [1200, 1200, 1200, 300] {
            let queued = [UInt8](repeating: 1, count: length).withUnsafeBytes { outgoing.append($0, to: learned) }
            #expect(queued)
        }
        let sent = try us.send(&outgoing)
        #expect(sent == 4)
        // Single, as handshakes go.
        #expect(try hello.withUnsafeBytes { try us.send($0, to: learned) })

        var replies = ReceiveBatch(capacity: 8)
        var sources: [Endpoint] = []
        for _ in 0..<10 where sources.count < 5 {
            let received = try receive(peer, into: &replies)
            if received == 0 { break }
            replies.forEachDatagram { _, source in sources.append(source) }
        }
        #expect(sources.count == 5)
        #expect(sources.allSatisfy { $0.address == Self.second4 && $0.port == us.port }, "\(sources)")
        #expect(!us.hasVanishedSources)
    }

    /// IPv6: the learned local address is ::1 on lo, and replies naming it arrive.
    @Test func ipv6SourceIsLearnedAndNamed() throws {
        let peer = try UDPSocket(port: 0)
        let us = try UDPSocket(port: 0)
        let hello: [UInt8] = Array("hello".utf8)
        #expect(try hello.withUnsafeBytes { try peer.send($0, to: Endpoint(address: Self.loopback6, port: us.port)) })
        var incoming = ReceiveBatch(capacity: 4)
        let count = try receive(us, into: &incoming)
        #expect(count == 1)
        let source = incoming.source(at: 0)
        let learned = try #require(source)
        #expect(learned.stickySource == StickySource(address: Self.loopback6, interfaceIndex: Self.loopbackIndex))
        var outgoing = SendBatch(capacity: 4, bufferSize: 1500)
        for _ in 0..<3 {
            let queued = hello.withUnsafeBytes { outgoing.append($0, to: learned) }
            #expect(queued)
        }
        let sent = try us.send(&outgoing)
        #expect(sent == 3)
        var replies = ReceiveBatch(capacity: 4)
        let received = try receive(peer, into: &replies)
        let first = replies.source(at: 0)
        #expect(received >= 1 && first?.address == Self.loopback6)
        #expect(!us.hasVanishedSources)
    }

    /// A sticky source that is not (or no longer) ours: the kernel refuses it (IPv4 ENETUNREACH,
    /// IPv6 EINVAL), every datagram still arrives, from the kernel's choice, and the address is
    /// reported once by `takeVanishedSources`. Batched (GSO run and one by one) and single sends.
    @Test(arguments: [(loopback4, foreign4), (loopback6, foreign6)], [[UDPOffload.segmentation], []])
    func vanishedSourceIsDroppedAndTheDatagramsResent(
        addresses: (remote: IPAddress, foreign: IPAddress), offload: UDPOffload
    ) throws {
        let peer = try UDPSocket(port: 0)
        let us = try UDPSocket(port: 0, offload: offload)
        let stale = Endpoint(
            address: addresses.remote, port: peer.port,
            stickySource: StickySource(address: addresses.foreign, interfaceIndex: Self.loopbackIndex))
        var outgoing = SendBatch(capacity: 8, bufferSize: 1500)
        let other = Endpoint(address: addresses.remote, port: peer.port)
        for (length, to) in [(1000, stale), (1000, stale), (1000, stale), (400, other)] {
            let queued = [UInt8](repeating: 2, count: length).withUnsafeBytes { outgoing.append($0, to: to) }
            #expect(queued)
        }
        let sent = try us.send(&outgoing)
        #expect(sent == 4)
        #expect(try [UInt8](repeating: 3, count: 50).withUnsafeBytes { try us.send($0, to: stale) })
        #expect(us.hasVanishedSources)
        #expect(us.stickySourceResends >= 2, "the batch and the single send each retried")
        var vanished: [IPAddress] = []
        us.takeVanishedSources { vanished.append($0) }
        #expect(vanished == [addresses.foreign])
        #expect(!us.hasVanishedSources)
        us.takeVanishedSources { vanished.append($0) }
        #expect(vanished.count == 1, "reported once")

        var replies = ReceiveBatch(capacity: 8)
        var sources: [Endpoint] = []
        for _ in 0..<10 where sources.count < 5 {
            let received = try receive(peer, into: &replies)
            if received == 0 { break }
            replies.forEachDatagram { _, source in sources.append(source) }
        }
        #expect(sources.count == 5)
        #expect(sources.allSatisfy { $0.address == addresses.remote }, "\(sources)")
    }

    // MARK: Helpers

    /// Waits up to a second for a datagram, then receives what is waiting.
    func receive(_ socket: UDPSocket, into batch: inout ReceiveBatch) throws -> Int {
        var poller = pollfd(fd: socket.fileDescriptor, events: Int16(POLLIN), revents: 0)
        guard try Syscall.check("poll", { poll(&poller, 1, 1000) }) == 1 else { return 0 }
        return try socket.receive(into: &batch)
    }

    static func inPacketInfo(index: Int32, specificDestination: String, destination: String) -> [UInt8] {
        var info = tunctl_in_pktinfo()
        info.ipi_ifindex = index
        info.ipi_spec_dst = Self.v4(specificDestination).bigEndian
        info.ipi_addr = Self.v4(destination).bigEndian
        return withUnsafeBytes(of: info) { Array($0) }
    }

    static func in6PacketInfo(_ address: String, index: UInt32) -> [UInt8] {
        var info = tunctl_in6_pktinfo()
        info.ipi6_ifindex = index
        var bytes = [UInt8](repeating: 0, count: 16)
        _ = bytes.withUnsafeMutableBytes { inet_pton(AF_INET6, address, $0.baseAddress) }
        withUnsafeMutableBytes(of: &info.ipi6_addr) { $0.copyBytes(from: bytes) }
        return withUnsafeBytes(of: info) { Array($0) }
    }

    static func v4(_ text: String) -> UInt32 {
        guard case .v4(let value) = IPAddress(text)! else { preconditionFailure("not IPv4: \(text)") }
        return value
    }
}
