import Testing
import TunnelTestSupport

@testable import TunnelCore

// VXLAN super-packets as a 6.18 TUN hands them over (24-byte header, gso_type inner | tunnel bit,
// outer and inner offsets), built here field by field. Every checksum of every segment is checked
// with `PacketBuilder.internetChecksum` (byte pairs, no tricks), not with the code under test.

private func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(truncatingIfNeeded: value)] }
private func be32(_ value: UInt32) -> [UInt8] { be16(UInt16(value >> 16)) + be16(UInt16(truncatingIfNeeded: value)) }
private func le16(_ value: UInt16) -> [UInt8] { [UInt8(truncatingIfNeeded: value), UInt8(value >> 8)] }
private func readBE16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
    UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
}
private func readBE32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    UInt32(readBE16(bytes, offset)) << 16 | UInt32(readBE16(bytes, offset + 2))
}

/// An IPv4 (20 bytes, DF clear so identifications matter) or IPv6 header in front of `transport`
/// bytes; the IPv4 header checksum is left wrong on purpose (0xdead): segmentation must redo it.
private func ipHeader(
    isV6: Bool, protocolNumber: UInt8, transportLength: Int, identification: UInt16, index: UInt8
)
    -> [UInt8]
{
    if isV6 {
        return [0x60, 0x01, 0x23, 0x45] + be16(UInt16(transportLength)) + [protocolNumber, 64]
            + [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [index]
            + [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [index &+ 1]
    }
    return [0x45, 0] + be16(UInt16(20 + transportLength)) + be16(identification) + [0, 0, 64, protocolNumber]
        + [0xde, 0xad] + [198, 18, 0, index] + [198, 18, 0, index &+ 1]
}

private struct TunnelCase: CustomTestStringConvertible {
    var outerV6: Bool
    var innerV6 = false
    var outerChecksum: Bool
    /// Bytes between the outer UDP header and the inner IP header: VXLAN (8) + Ethernet (14), or one
    /// more to put the inner packet at an odd distance from the outer UDP header.
    var tunnelHeaderLength = 22
    var payloadLength = 3 * 1300 + 517
    var gsoSize = 1300
    var testDescription: String {
        "outer \(outerV6 ? "v6" : "v4") inner \(innerV6 ? "v6" : "v4") csum \(outerChecksum) tunnel \(tunnelHeaderLength)"
    }
}

private let timestamps: [UInt8] = [1, 1, 8, 10, 0, 0, 0x10, 0x01, 0xaa, 0xbb, 0xcc, 0xdd]
private let firstSequence: UInt32 = 0xffff_f000  // near the wrap

/// The super-packet (no virtio header) and its offsets.
private func tunnelSuperPacket(_ testCase: TunnelCase, payload: [UInt8]) -> (packet: [UInt8], outer: Int, inner: Int) {
    // Inner TCP: ACK|PSH|CWR, options, a partial checksum as the kernel leaves it (any value will do).
    let tcp =
        be16(40000) + be16(443) + be32(firstSequence) + be32(0x0102_0304)
        + [UInt8((20 + timestamps.count) / 4) << 4, OffloadLayout.tcpACK | OffloadLayout.tcpPSH | OffloadLayout.tcpCWR]
        + be16(502) + [0x12, 0x34, 0, 0] + timestamps + payload
    let inner =
        ipHeader(
            isV6: testCase.innerV6, protocolNumber: 6, transportLength: tcp.count, identification: 0x4242, index: 10)
        + tcp
    var tunnel: [UInt8] = [0x08, 0, 0, 0, 0, 0, 42, 0]  // VXLAN, VNI 42
    tunnel += [0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1] + be16(testCase.innerV6 ? 0x86dd : 0x0800)
    tunnel += [UInt8](repeating: 0x77, count: testCase.tunnelHeaderLength - tunnel.count)
    let udp =
        be16(51000) + be16(4789) + be16(UInt16(truncatingIfNeeded: 8 + tunnel.count + inner.count)) + [0xbe, 0xef]
    let outer = ipHeader(
        isV6: testCase.outerV6, protocolNumber: 17, transportLength: udp.count + tunnel.count + inner.count,
        identification: 0xfffe, index: 1)
    return (outer + udp + tunnel + inner, outer.count, outer.count + udp.count + tunnel.count)
}

/// The 24-byte header a TUN puts in front of `superPacket`.
private func tunnelHeader(_ testCase: TunnelCase, outer: Int, inner: Int) -> [UInt8] {
    let innerTransport = inner + (testCase.innerV6 ? 40 : 20)
    let kind = testCase.innerV6 ? VirtioNetHeader.GSOType.tcpV6 : VirtioNetHeader.GSOType.tcpV4
    let tunnelBit = testCase.outerV6 ? TunnelVirtioHeader.gsoUDPTunnelIPv6 : TunnelVirtioHeader.gsoUDPTunnelIPv4
    let flags =
        VirtioNetHeader.Flags.needsChecksum | (testCase.outerChecksum ? TunnelVirtioHeader.udpTunnelChecksum : 0)
    return [flags, kind | tunnelBit] + le16(UInt16(innerTransport + 32)) + le16(UInt16(testCase.gsoSize))
        + le16(UInt16(innerTransport)) + le16(16) + [UInt8](repeating: 0, count: 10) + le16(UInt16(outer))
        + le16(UInt16(inner))
}

/// Unfolded pseudo-header sum of the IP header at `offset` of `packet`, for `length` transport bytes.
private func pseudoSum(_ packet: [UInt8], at offset: Int, protocolNumber: UInt32, length: Int) -> UInt32 {
    let isV6 = packet[offset] >> 4 == 6
    let addresses = isV6 ? Array(packet[(offset + 8)..<(offset + 40)]) : Array(packet[(offset + 12)..<(offset + 20)])
    var sum: UInt32 = 0
    for index in stride(from: 0, to: addresses.count, by: 2) {
        sum += UInt32(addresses[index]) << 8 | UInt32(addresses[index + 1])
    }
    return sum + protocolNumber + UInt32(length >> 16) + UInt32(length & 0xffff)
}

/// The segments the segmenter cuts from `record` (header included).
private func segmentRecord(_ record: [UInt8]) throws -> [[UInt8]] {
    var storage = record
    return try storage.withUnsafeMutableBytes { bytes -> [[UInt8]] in
        guard case .tunnelSuperPacket(var segmenter) = try interpretTunnelTUNRead(bytes) else {
            Issue.record("not read as a tunnel super-packet")
            return []
        }
        var output: [[UInt8]] = []
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 16)
        defer { destination.deallocate() }
        while let length = try segmenter.next(into: destination) {
            output.append(Array(destination[0..<length]))
        }
        #expect(output.count == segmenter.segmentCount)
        return output
    }
}

@Suite struct TunnelOffloadTests {
    fileprivate static let cases = [
        TunnelCase(outerV6: false, outerChecksum: true),
        TunnelCase(outerV6: false, outerChecksum: false),
        TunnelCase(outerV6: true, outerChecksum: true),
        TunnelCase(outerV6: true, innerV6: true, outerChecksum: true),
        TunnelCase(outerV6: false, outerChecksum: true, tunnelHeaderLength: 23),
        TunnelCase(outerV6: false, outerChecksum: true, payloadLength: 2600),
    ]

    /// Every segment is a complete outer datagram whose every length, identification, sequence,
    /// flag and checksum is what the kernel would have sent, and whose payloads add up to the
    /// super-packet's.
    @Test(arguments: cases)
    fileprivate func segmentsAVXLANSuperPacket(_ testCase: TunnelCase) throws {
        let payload = (0..<testCase.payloadLength).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let (packet, outer, inner) = tunnelSuperPacket(testCase, payload: payload)
        let segments = try segmentRecord(tunnelHeader(testCase, outer: outer, inner: inner) + packet)
        let expectedCount = (testCase.payloadLength + testCase.gsoSize - 1) / testCase.gsoSize
        #expect(segments.count == expectedCount)
        let innerTransport = inner + (testCase.innerV6 ? 40 : 20)
        let headerLength = innerTransport + 32
        var carried: [UInt8] = []
        for (index, segment) in segments.enumerated() {
            let last = index == segments.count - 1
            #expect(
                segment.count == headerLength + (last ? payload.count - index * testCase.gsoSize : testCase.gsoSize))
            // Outer IP.
            if testCase.outerV6 {
                #expect(Int(readBE16(segment, 4)) == segment.count - 40)
            } else {
                #expect(Int(readBE16(segment, 2)) == segment.count)
                #expect(readBE16(segment, 4) == 0xfffe &+ UInt16(index))
                #expect(PacketBuilder.internetChecksum(Array(segment[0..<20])) == 0, "outer IPv4 header checksum")
            }
            // Outer UDP.
            #expect(Int(readBE16(segment, outer + 4)) == segment.count - outer)
            let outerChecksum = readBE16(segment, outer + 6)
            if testCase.outerChecksum {
                #expect(outerChecksum != 0)
                let pseudo = pseudoSum(segment, at: 0, protocolNumber: 17, length: segment.count - outer)
                #expect(
                    PacketBuilder.internetChecksum(Array(segment[outer...]), initial: pseudo) == 0,
                    "outer UDP checksum of segment \(index)")
            } else {
                #expect(outerChecksum == 0)
            }
            // The tunnel header and inner Ethernet, as they were.
            #expect(segment[(outer + 8)..<inner] == packet[(outer + 8)..<inner])
            // Inner IP.
            if testCase.innerV6 {
                #expect(Int(readBE16(segment, inner + 4)) == segment.count - inner - 40)
            } else {
                #expect(Int(readBE16(segment, inner + 2)) == segment.count - inner)
                #expect(readBE16(segment, inner + 4) == 0x4242 &+ UInt16(index))
                #expect(
                    PacketBuilder.internetChecksum(Array(segment[inner..<(inner + 20)])) == 0, "inner IPv4 checksum")
            }
            // Inner TCP.
            #expect(readBE32(segment, innerTransport + 4) == firstSequence &+ UInt32(index * testCase.gsoSize))
            let flags = segment[innerTransport + 13]
            #expect((flags & OffloadLayout.tcpPSH != 0) == last)
            #expect((flags & OffloadLayout.tcpCWR != 0) == (index == 0))
            #expect(flags & OffloadLayout.tcpACK != 0)
            let tcpPseudo = pseudoSum(
                segment, at: inner, protocolNumber: 6, length: segment.count - innerTransport)
            #expect(
                PacketBuilder.internetChecksum(Array(segment[innerTransport...]), initial: tcpPseudo) == 0,
                "inner TCP checksum of segment \(index)")
            carried += segment[headerLength...]
        }
        #expect(carried == payload)
    }

    /// A record that is no tunnel super-packet comes back with the classic header right in front of
    /// the packet, which `interpretTUNRead` then takes as it would from a 10-byte-header TUN.
    @Test func aPlainPacketIsHandedBackAsAClassicRecord() throws {
        let packet =
            ipHeader(isV6: false, protocolNumber: 17, transportLength: 8, identification: 1, index: 3)
            + be16(1) + be16(2) + be16(8) + [0, 0]
        let header: [UInt8] = [VirtioNetHeader.Flags.dataValid, 0] + [UInt8](repeating: 0, count: 22)
        var storage = header + packet
        try storage.withUnsafeMutableBytes { bytes in
            guard case .classic(let record) = try interpretTunnelTUNRead(bytes) else {
                Issue.record("a plain packet was read as a tunnel super-packet")
                return
            }
            #expect(record.count == VirtioNetHeader.size + packet.count)
            #expect(Array(record[0..<VirtioNetHeader.size]) == Array(header[0..<VirtioNetHeader.size]))
            #expect(Array(record[VirtioNetHeader.size...]) == packet)
            guard case .packet(let length) = try interpretTUNRead(record) else {
                Issue.record("the classic record was not one packet")
                return
            }
            #expect(length == packet.count)
        }
    }

    /// Malformed tunnel reads are refused with a named reason, never trapped on.
    @Test func malformedTunnelReadsAreRefusedWithAReason() {
        let testCase = TunnelCase(outerV6: false, outerChecksum: true)
        let (packet, outer, inner) = tunnelSuperPacket(testCase, payload: [UInt8](repeating: 9, count: 3000))
        let good = tunnelHeader(testCase, outer: outer, inner: inner) + packet
        func refusal(_ change: (inout [UInt8]) -> Void) -> OffloadError? {
            var record = good
            change(&record)
            return record.withUnsafeMutableBytes { bytes -> OffloadError? in
                do throws(OffloadError) {
                    _ = try interpretTunnelTUNRead(bytes)
                    return nil
                } catch {
                    return error
                }
            }
        }
        #expect(refusal { _ in } == nil)
        #expect(refusal { $0 = Array($0[0..<20]) } == .truncatedVirtioHeader)
        #expect(refusal { $0[1] |= TunnelVirtioHeader.gsoUDPTunnelIPv6 } == .unsupportedGSOType(0x61))
        #expect(refusal { $0[1] = VirtioNetHeader.GSOType.udp | TunnelVirtioHeader.gsoUDPTunnelIPv4 } != nil)
        #expect(refusal { $0[1] ^= TunnelVirtioHeader.gsoUDPTunnel } == .ipVersionMismatch)
        #expect(
            refusal { $0[1] = VirtioNetHeader.GSOType.tcpV6 | TunnelVirtioHeader.gsoUDPTunnelIPv4 }
                == .ipVersionMismatch)
        #expect(
            refusal {
                $0[4] = 0; $0[5] = 0
            } == .zeroGSOSize)
        #expect(refusal { $0[20] = 21 } == .badTunnelOffsets)
        #expect(refusal { $0[22] = 24 } == .badTunnelOffsets)
        #expect(
            refusal {
                $0[22] = 0xff; $0[23] = 0xff
            } == .badTunnelOffsets)
        #expect(refusal { $0[6] = 0 } == .badChecksumLocation)
        #expect(refusal { $0[24 + 9] = 6 } == .notUDP(6))
        #expect(refusal { $0[24 + 6] = 0x20 } == .fragmented)
        #expect(refusal { $0[24 + inner + 9] = 17 } == .notTCP(17))
        #expect(refusal { $0 = Array($0[0..<(24 + inner + 30)]) } == .truncatedTCPHeader)
    }

    /// A destination too small for a segment is refused before anything is written, and the
    /// segment is not consumed.
    @Test func aTooSmallDestinationIsRefused() throws {
        let testCase = TunnelCase(outerV6: false, outerChecksum: false)
        let (packet, outer, inner) = tunnelSuperPacket(testCase, payload: [UInt8](repeating: 1, count: 2000))
        var storage = tunnelHeader(testCase, outer: outer, inner: inner) + packet
        try storage.withUnsafeMutableBytes { bytes in
            guard case .tunnelSuperPacket(var segmenter) = try interpretTunnelTUNRead(bytes) else {
                Issue.record("not a tunnel super-packet")
                return
            }
            let small = UnsafeMutableRawBufferPointer.allocate(byteCount: 100, alignment: 16)
            defer { small.deallocate() }
            #expect(throws: OffloadError.destinationTooSmall(needed: segmenter.maximumSegmentLength)) {
                try segmenter.next(into: small)
            }
            #expect(segmenter.producedCount == 0)
        }
    }
}
