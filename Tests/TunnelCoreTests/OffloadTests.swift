import Testing
import TunnelTestSupport

@testable import TunnelCore

// Known packets built here field by field; every checksum is checked with
// `PacketBuilder.internetChecksum` (byte pairs, no tricks), not with the code under test.

/// The IP/TCP fields a test packet varies.
private struct TCPFields {
    var isV6 = false
    var flow: UInt16 = 0  // added to the source port: different flows
    var sequence: UInt32 = 0xffff_f000  // near the wrap, so sequence arithmetic must wrap
    var acknowledgment: UInt32 = 0x0102_0304
    var flags: UInt8 = OffloadLayout.tcpACK
    var window: UInt16 = 502
    var options: [UInt8] = []
    var identification: UInt16 = 0x1234
    var timeToLive: UInt8 = 64
    var typeOfService: UInt8 = 0
    var dontFragment = true
    var flowLabel: UInt32 = 0x12345
}

private let timestamps: [UInt8] = [1, 1, 8, 10, 0, 0, 0x10, 0x01, 0xaa, 0xbb, 0xcc, 0xdd]

private func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(truncatingIfNeeded: value)] }
private func be32(_ value: UInt32) -> [UInt8] { be16(UInt16(value >> 16)) + be16(UInt16(truncatingIfNeeded: value)) }
private func readBE16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
    UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
}
private func readBE32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    UInt32(readBE16(bytes, offset)) << 16 | UInt32(readBE16(bytes, offset + 2))
}
private func store16(_ value: UInt16, into bytes: inout [UInt8], at offset: Int) {
    bytes[offset] = UInt8(value >> 8)
    bytes[offset + 1] = UInt8(truncatingIfNeeded: value)
}

private func ipHeaderLength(_ packet: [UInt8]) -> Int { packet[0] >> 4 == 6 ? 40 : Int(packet[0] & 0x0f) * 4 }

/// Unfolded pseudo-header sum for TCP (or, with 17, UDP), by the book.
private func referencePseudoSum(_ packet: [UInt8], tcpLength: Int, protocolNumber: UInt32 = 6) -> UInt32 {
    let isV6 = packet[0] >> 4 == 6
    let addresses = isV6 ? Array(packet[8..<40]) : Array(packet[12..<20])
    var sum: UInt32 = 0
    for index in stride(from: 0, to: addresses.count, by: 2) {
        sum += UInt32(addresses[index]) << 8 | UInt32(addresses[index + 1])
    }
    return sum + protocolNumber + UInt32(tcpLength >> 16) + UInt32(tcpLength & 0xffff)
}

/// The folded, uncomplemented pseudo-header sum a CHECKSUM_PARTIAL field holds.
private func referencePartial(_ packet: [UInt8], tcpLength: Int, protocolNumber: UInt32 = 6) -> UInt16 {
    ~PacketBuilder.internetChecksum(
        [], initial: referencePseudoSum(packet, tcpLength: tcpLength, protocolNumber: protocolNumber))
}

private func tcpChecksumVerifies(_ packet: [UInt8]) -> Bool {
    let tcp = ipHeaderLength(packet)
    let pseudo = referencePseudoSum(packet, tcpLength: packet.count - tcp)
    return PacketBuilder.internetChecksum(Array(packet[tcp...]), initial: pseudo) == 0
}

private func ipv4HeaderVerifies(_ packet: [UInt8]) -> Bool {
    PacketBuilder.internetChecksum(Array(packet[0..<ipHeaderLength(packet)])) == 0
}

/// A complete IPv4/IPv6 + TCP packet with correct checksums.
private func makeTCP(_ fields: TCPFields, payload: [UInt8]) -> [UInt8] {
    precondition(fields.options.count % 4 == 0)
    var tcp = be16(40000 + fields.flow) + be16(443) + be32(fields.sequence) + be32(fields.acknowledgment)
    tcp += [UInt8((20 + fields.options.count) / 4) << 4, fields.flags] + be16(fields.window) + [0, 0, 0, 0]
    tcp += fields.options + payload
    return makeIP(fields, protocolNumber: 6, transport: tcp, checksumOffset: 16)
}

/// A complete IPv4/IPv6 + UDP datagram from the same ports as `makeTCP`, with correct checksums
/// (a computed 0 sent as 0xffff).
private func makeUDP(_ fields: TCPFields, payload: [UInt8]) -> [UInt8] {
    let udp = be16(40000 + fields.flow) + be16(443) + be16(UInt16(8 + payload.count)) + [0, 0] + payload
    return makeIP(fields, protocolNumber: 17, transport: udp, checksumOffset: 6)
}

/// `transport` (its checksum field, at `checksumOffset`, zero) behind an IP header from `fields`,
/// with the transport checksum filled in.
private func makeIP(_ fields: TCPFields, protocolNumber: UInt8, transport: [UInt8], checksumOffset: Int) -> [UInt8] {
    var packet: [UInt8]
    if fields.isV6 {
        packet = [
            0x60 | UInt8(fields.typeOfService >> 4), UInt8(fields.typeOfService << 4) | UInt8(fields.flowLabel >> 16),
        ]
        packet += be16(UInt16(truncatingIfNeeded: fields.flowLabel)) + be16(UInt16(truncatingIfNeeded: transport.count))
        packet += [protocolNumber, fields.timeToLive]
        packet += [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1]
        packet += [0xfd, 0x00, 0, 1, 0, 2, 0, 3] + Array(repeating: 0, count: 6) + [0xab, 0xcd]
    } else {
        packet = [0x45, fields.typeOfService] + be16(UInt16(truncatingIfNeeded: 20 + transport.count))
        packet += be16(fields.identification) + be16(fields.dontFragment ? 0x4000 : 0)
        packet += [fields.timeToLive, protocolNumber, 0, 0]
        packet += [192, 0, 2, 1, 198, 51, 100, 77]
        store16(PacketBuilder.internetChecksum(packet), into: &packet, at: 10)
    }
    let start = packet.count
    packet += transport
    var checksum = PacketBuilder.internetChecksum(
        transport,
        initial: referencePseudoSum(packet, tcpLength: transport.count, protocolNumber: UInt32(protocolNumber)))
    if protocolNumber == 17 && checksum == 0 { checksum = 0xffff }
    store16(checksum, into: &packet, at: start + checksumOffset)
    return packet
}

private func payloadBytes(_ count: Int, seed: Int = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3 &+ seed &* 13) }
}

/// What the TUN hands us for a TSO super-packet: a virtio header and a packet whose TCP checksum
/// field holds only the pseudo-header partial sum.
private func superPacketRecord(_ fields: TCPFields, payload: [UInt8], gsoSize: UInt16) -> [UInt8] {
    var packet = makeTCP(fields, payload: payload)
    let ipLength = ipHeaderLength(packet)
    store16(referencePartial(packet, tcpLength: packet.count - ipLength), into: &packet, at: ipLength + 16)
    var gsoType = fields.isV6 ? VirtioNetHeader.GSOType.tcpV6 : VirtioNetHeader.GSOType.tcpV4
    if fields.flags & OffloadLayout.tcpCWR != 0 { gsoType |= VirtioNetHeader.GSOType.ecn }
    let header = VirtioNetHeader(
        flags: VirtioNetHeader.Flags.needsChecksum, gsoType: gsoType,
        headerLength: UInt16(ipLength + 20 + fields.options.count), gsoSize: gsoSize,
        checksumStart: UInt16(ipLength), checksumOffset: 16)
    return headerBytes(header) + packet
}

/// What the TUN hands us for a USO super-packet (an app's UDP_SEGMENT send): a virtio header and
/// one datagram whose UDP length covers the whole payload and whose checksum field holds only the
/// pseudo-header partial sum.
private func udpSuperPacketRecord(_ fields: TCPFields, payload: [UInt8], gsoSize: UInt16) -> [UInt8] {
    var packet = makeUDP(fields, payload: payload)
    let ipLength = ipHeaderLength(packet)
    store16(
        referencePartial(packet, tcpLength: packet.count - ipLength, protocolNumber: 17), into: &packet,
        at: ipLength + 6)
    let header = VirtioNetHeader(
        flags: VirtioNetHeader.Flags.needsChecksum, gsoType: VirtioNetHeader.GSOType.udpL4,
        headerLength: UInt16(ipLength + 8), gsoSize: gsoSize, checksumStart: UInt16(ipLength), checksumOffset: 6)
    return headerBytes(header) + packet
}

/// The datagrams a UDP flow sends for `payload` cut at `gsoSize`: what segmenting the super-packet
/// must give, built independently (identification counting up, as the kernel's USO leaves it).
private func udpDatagrams(_ fields: TCPFields, payload: [UInt8], gsoSize: Int) -> [[UInt8]] {
    var fields = fields
    return stride(from: 0, to: payload.count, by: gsoSize).map { start in
        defer { fields.identification &+= 1 }
        return makeUDP(fields, payload: Array(payload[start..<min(start + gsoSize, payload.count)]))
    }
}

/// One UDP datagram per size, each with its own payload, identification counting up.
private func datagrams(_ fields: TCPFields, sizes: [Int]) -> [[UInt8]] {
    var fields = fields
    return sizes.enumerated().map { index, size in
        defer { fields.identification &+= 1 }
        return makeUDP(fields, payload: payloadBytes(size, seed: index + Int(fields.flow) * 100))
    }
}

private struct UDPCase: Sendable, CustomTestStringConvertible {
    var isV6: Bool
    var payload: Int
    var gsoSize: Int
    var testDescription: String { "\(isV6 ? "v6" : "v4") payload=\(payload) gso=\(gsoSize)" }
}

private let udpCases: [UDPCase] = [false, true].flatMap { isV6 in
    [(640, 64), (4000, 1000), (3001, 1000), (100, 1372), (1372 * 3, 1372), (7, 1), (1, 1), (64 * 1000, 1000)]
        .map { UDPCase(isV6: isV6, payload: $0.0, gsoSize: $0.1) }
}

private func headerBytes(_ header: VirtioNetHeader) -> [UInt8] {
    var bytes = [UInt8](repeating: 0xee, count: VirtioNetHeader.size)
    bytes.withUnsafeMutableBytes { try! header.write(to: $0) }
    return bytes
}

/// Interprets a record and drains its segmenter; the error, if any, is returned as a value.
private func segment(
    _ record: [UInt8], destinationSize: Int = 65600, limit: Int = .max
) -> Result<
    [[UInt8]], OffloadError
> {
    var record = record
    var destination = [UInt8](repeating: 0, count: destinationSize)
    return record.withUnsafeMutableBytes { recordBytes in
        destination.withUnsafeMutableBytes { out in
            do throws(OffloadError) {
                switch try interpretTUNRead(recordBytes) {
                case .packet(let length):
                    return .success([Array(recordBytes[VirtioNetHeader.size..<VirtioNetHeader.size + length])])
                case .superPacket(var segmenter):
                    var segments: [[UInt8]] = []
                    while segments.count < limit, let length = try segmenter.next(into: out) {
                        segments.append(Array(out[0..<length]))
                    }
                    return .success(segments)
                }
            } catch {
                return .failure(error)
            }
        }
    }
}

private struct SegmentationCase: Sendable, CustomTestStringConvertible {
    var isV6: Bool
    var options: [UInt8]
    var payload: Int
    var gsoSize: Int
    var testDescription: String {
        "\(isV6 ? "v6" : "v4") options=\(options.count) payload=\(payload) gso=\(gsoSize)"
    }
}

private let segmentationCases: [SegmentationCase] = [false, true].flatMap { isV6 in
    [[], timestamps].flatMap { options in
        [(4000, 1448), (2896, 1448), (100, 1448), (1448, 1448), (7, 1), (1, 1), (65_000 - 40, 1448), (3001, 1000)]
            .map { SegmentationCase(isV6: isV6, options: options, payload: $0.0, gsoSize: $0.1) }
    }
}

/// Splits and merges TCP flows at fixed points; the slots each output should hold.
private struct Batch {
    var packets: [[UInt8]]
    var maximumFlows = 8
    var maximumSuperPackets = 8
    var trustChecksums = false
    var mergesUDP = true

    struct Outcome {
        var outputs: [GROCoalescer.Output] = []
        var records: [Int: [UInt8]] = [:]
        var merged: [Bool] = []
    }

    /// Runs one batch the way the event loop would: packets in receive slots of their own.
    func run() -> Outcome {
        // Each packet behind 16 bytes of room (the transport header's, where the virtio header goes).
        let (room, slotSize) = (16, 16 + 65536)
        let slots = UnsafeMutableRawBufferPointer.allocate(byteCount: packets.count * slotSize, alignment: 16)
        defer { slots.deallocate() }
        var coalescer = GROCoalescer(
            maximumPackets: packets.count, maximumFlows: maximumFlows, maximumSuperPackets: maximumSuperPackets,
            trustChecksums: trustChecksums, mergesUDP: mergesUDP)
        var outcome = Outcome()
        for (slot, packet) in packets.enumerated() {
            let region = UnsafeMutableRawBufferPointer(
                rebasing: slots[(slot * slotSize + room)..<(slot * slotSize + room + packet.count)])
            region.copyBytes(from: packet)
            outcome.merged.append(coalescer.add(region, slot: slot))
        }
        coalescer.finish()
        for index in 0..<coalescer.outputCount {
            let output = coalescer.output(at: index)
            outcome.outputs.append(output)
            if case .merged(let superPacket) = output {
                outcome.records[superPacket] = gather(coalescer.pieces(ofSuperPacket: superPacket))
            }
        }
        return outcome
    }
}

private func segments(
    _ fields: TCPFields, sizes: [Int], startingAt sequence: UInt32? = nil, pushLast: Bool = false
) -> [[UInt8]] {
    var fields = fields
    if let sequence { fields.sequence = sequence }
    var result: [[UInt8]] = []
    for (index, size) in sizes.enumerated() {
        var segmentFields = fields
        if pushLast && index == sizes.count - 1 { segmentFields.flags |= OffloadLayout.tcpPSH }
        result.append(makeTCP(segmentFields, payload: payloadBytes(size, seed: index + Int(fields.flow) * 100)))
        fields.sequence &+= UInt32(size)
        fields.identification &+= 1
    }
    return result
}

/// Adds `parts` as one batch, each in a 2048-byte slot of `slots` behind 16 bytes of room, and
/// finishes the batch.
private func addInSlots(_ parts: [[UInt8]], to coalescer: inout GROCoalescer, slots: UnsafeMutableRawBufferPointer) {
    for (slot, packet) in parts.enumerated() {
        let start = slot * 2048 + 16
        let region = UnsafeMutableRawBufferPointer(rebasing: slots[start..<start + packet.count])
        region.copyBytes(from: packet)
        coalescer.add(region, slot: slot)
    }
    coalescer.finish()
}

/// A super-packet's pieces, joined as `writev` would join them.
private func gather(_ pieces: GROCoalescer.Pieces) -> [UInt8] {
    var bytes: [UInt8] = []
    for piece in pieces { bytes += piece }
    return bytes
}

private func payloadOf(_ packet: [UInt8]) -> [UInt8] {
    let tcp = ipHeaderLength(packet)
    return Array(packet[(tcp + Int(packet[tcp + 12] >> 4) * 4)...])
}

/// Checks `outcome` against `expected`: each output lists the slots it carries, one slot meaning
/// "passed through as is", several "merged into one super-packet" (verified field by field).
private func expectOutputs(
    _ batch: Batch, _ expected: [[Int]], sourceLocation: SourceLocation = #_sourceLocation
) {
    let outcome = batch.run()
    #expect(outcome.outputs.count == expected.count, "outputs \(outcome.outputs)", sourceLocation: sourceLocation)
    #expect(
        outcome.merged.filter { !$0 }.count == outcome.outputs.count, "add() results agree with the outputs",
        sourceLocation: sourceLocation)
    for (output, slots) in zip(outcome.outputs, expected) {
        if slots.count == 1 {
            #expect(output == .packet(slot: slots[0]), sourceLocation: sourceLocation)
            continue
        }
        guard case .merged(let buffer) = output, let record = outcome.records[buffer] else {
            Issue.record("expected slots \(slots) merged, got \(output)", sourceLocation: sourceLocation)
            continue
        }
        let parts = slots.map { batch.packets[$0] }
        expectMerged(record, of: parts, sourceLocation: sourceLocation)
    }
}

/// `expectOutputs` for UDP: several slots must merge into exactly the super-packet the kernel's
/// USO would hand over for their payloads (then `segmentsUDPSuperPacket` covers the way back).
private func expectUDPOutputs(
    _ batch: Batch, _ expected: [[Int]], sourceLocation: SourceLocation = #_sourceLocation
) {
    let outcome = batch.run()
    #expect(outcome.outputs.count == expected.count, "outputs \(outcome.outputs)", sourceLocation: sourceLocation)
    for (output, slots) in zip(outcome.outputs, expected) {
        if slots.count == 1 {
            #expect(output == .packet(slot: slots[0]), sourceLocation: sourceLocation)
            continue
        }
        guard case .merged(let buffer) = output, let record = outcome.records[buffer] else {
            Issue.record("expected slots \(slots) merged, got \(output)", sourceLocation: sourceLocation)
            continue
        }
        let parts = slots.map { batch.packets[$0] }
        let first = parts[0]
        let ipLength = ipHeaderLength(first)
        // The super-packet's headers are the first datagram's, with lengths and checksums redone.
        var expected = Array(first[0..<ipLength + 8]) + parts.flatMap { $0[(ipLength + 8)...] }
        if ipLength == 40 {
            store16(UInt16(expected.count - 40), into: &expected, at: 4)
        } else {
            store16(UInt16(expected.count), into: &expected, at: 2)
            store16(0, into: &expected, at: 10)
            store16(PacketBuilder.internetChecksum(Array(expected[0..<20])), into: &expected, at: 10)
        }
        store16(UInt16(expected.count - ipLength), into: &expected, at: ipLength + 4)
        store16(
            referencePartial(expected, tcpLength: expected.count - ipLength, protocolNumber: 17),
            into: &expected, at: ipLength + 6)
        let header = VirtioNetHeader(
            flags: VirtioNetHeader.Flags.needsChecksum, gsoType: VirtioNetHeader.GSOType.udpL4,
            headerLength: UInt16(ipLength + 8), gsoSize: UInt16(first.count - ipLength - 8),
            checksumStart: UInt16(ipLength), checksumOffset: 6)
        #expect(record == headerBytes(header) + expected, "slots \(slots)", sourceLocation: sourceLocation)
    }
}

/// `record` must be the super-packet of `parts`: the first part's headers with lengths, PSH and
/// checksums as GRO leaves them, and all payloads in order.
private func expectMerged(_ record: [UInt8], of parts: [[UInt8]], sourceLocation: SourceLocation) {
    let header = record.withUnsafeBytes { try? VirtioNetHeader(parsing: $0) }
    let packet = Array(record[VirtioNetHeader.size...])
    let first = parts[0]
    let isV6 = first[0] >> 4 == 6
    let ipLength = ipHeaderLength(first)
    let headerLength = first.count - payloadOf(first).count
    #expect(
        header
            == VirtioNetHeader(
                flags: VirtioNetHeader.Flags.needsChecksum,
                gsoType: isV6 ? VirtioNetHeader.GSOType.tcpV6 : VirtioNetHeader.GSOType.tcpV4,
                headerLength: UInt16(headerLength), gsoSize: UInt16(payloadOf(first).count),
                checksumStart: UInt16(ipLength), checksumOffset: 16), sourceLocation: sourceLocation)
    #expect(payloadOf(packet) == parts.flatMap(payloadOf), sourceLocation: sourceLocation)
    var expectedHeaders = Array(first[0..<headerLength])
    if isV6 {
        store16(UInt16(packet.count - 40), into: &expectedHeaders, at: 4)
    } else {
        store16(UInt16(packet.count), into: &expectedHeaders, at: 2)
        store16(readBE16(packet, 10), into: &expectedHeaders, at: 10)
        #expect(ipv4HeaderVerifies(packet), sourceLocation: sourceLocation)
    }
    if parts.last![ipLength + 13] & OffloadLayout.tcpPSH != 0 { expectedHeaders[ipLength + 13] |= OffloadLayout.tcpPSH }
    store16(referencePartial(packet, tcpLength: packet.count - ipLength), into: &expectedHeaders, at: ipLength + 16)
    #expect(Array(packet[0..<headerLength]) == expectedHeaders, sourceLocation: sourceLocation)
}

// Seeded with TunnelCore's `SplitMix64`, so the fuzz runs are reproducible.
@Suite struct OffloadTests {
    // MARK: Checksums

    @Test func checksumKnownAnswerFromRFC1071() {
        // RFC 1071 §3: the sum of 00 01 f2 03 f4 f5 f6 f7 is dd f2.
        let bytes: [UInt8] = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]
        bytes.withUnsafeBytes { #expect(InternetChecksum.sum($0) == 0xddf2) }
        bytes.withUnsafeBytes { #expect(InternetChecksum.checksum($0) == ~0xddf2) }
    }

    @Test func checksumMatchesByteWiseReferenceAtEveryLengthAndAlignment() {
        var generator = SplitMix64(seed: 1071)
        let data = (0..<65_600).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for start in 0..<9 {
            for length in [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 65, 100, 255, 511, 1420, 65_535] {
                let slice = Array(data[start..<start + length])
                let initial = UInt16.random(in: 0...0xffff, using: &generator)
                let expected = PacketBuilder.internetChecksum(slice, initial: UInt32(initial))
                data.withUnsafeBytes { bytes in
                    let region = UnsafeRawBufferPointer(rebasing: bytes[start..<start + length])
                    #expect(
                        InternetChecksum.checksum(region, initial: initial) == expected,
                        "start \(start) length \(length)")
                }
            }
        }
        // All ones: the sum must stay 0xffff, never fold to 0.
        for count in [64, 65_534] {
            let ones = [UInt8](repeating: 0xff, count: count)
            ones.withUnsafeBytes { #expect(InternetChecksum.sum($0) == 0xffff, "\(count) bytes") }
        }
    }

    @Test func copyAndSumCopiesExactlyAndSumsLikeSum() {
        var generator = SplitMix64(seed: 793)
        let data = (0..<1600).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for start in 0..<5 {
            for length in [0, 1, 2, 31, 32, 33, 63, 64, 65, 1368, 1380, 1448, 1501] {
                var target = [UInt8](repeating: 0xee, count: length + 2)
                let sum = data.withUnsafeBytes { source in
                    target.withUnsafeMutableBytes { destination in
                        InternetChecksum.copyAndSum(
                            from: source.baseAddress! + start, to: destination.baseAddress! + 1, count: length)
                    }
                }
                let expected = data.withUnsafeBytes {
                    InternetChecksum.sum(UnsafeRawBufferPointer(rebasing: $0[start..<start + length]))
                }
                #expect(sum == expected, "start \(start) length \(length)")
                #expect(Array(target[1..<length + 1]) == Array(data[start..<start + length]))
                #expect(target.first == 0xee && target.last == 0xee, "wrote outside the destination")
            }
        }
    }

    @Test func pseudoHeaderSumMatchesReference() {
        for isV6 in [false, true] {
            let packet = makeTCP(TCPFields(isV6: isV6), payload: payloadBytes(77))
            let ipLength = ipHeaderLength(packet)
            let tcpLength = packet.count - ipLength
            let sum = packet.withUnsafeBytes { bytes in
                InternetChecksum.pseudoHeaderSum(
                    addresses: UnsafeRawBufferPointer(rebasing: bytes[(isV6 ? 8 : 12)..<(isV6 ? 40 : 20)]),
                    protocolNumber: 6, length: tcpLength)
            }
            #expect(sum == referencePartial(packet, tcpLength: tcpLength))
        }
    }

    // MARK: virtio-net header

    @Test func virtioHeaderKnownBytes() throws {
        // flags NEEDS_CSUM, TCPV4, hdr_len 54, gso_size 1448, csum_start 20, csum_offset 16 (little-endian).
        let bytes: [UInt8] = [0x01, 0x01, 0x36, 0x00, 0xa8, 0x05, 0x14, 0x00, 0x10, 0x00]
        let header = try bytes.withUnsafeBytes { bytes in try VirtioNetHeader(parsing: bytes) }
        #expect(
            header
                == VirtioNetHeader(
                    flags: 1, gsoType: 1, headerLength: 54, gsoSize: 1448, checksumStart: 20, checksumOffset: 16))
        #expect(header.needsChecksum)
        #expect(headerBytes(header) == bytes)
        #expect(headerBytes(.none) == [UInt8](repeating: 0, count: 10))
        #expect(VirtioNetHeader(gsoType: 0x84).gsoKind == VirtioNetHeader.GSOType.tcpV6)
        let short = [UInt8](repeating: 0, count: 9)
        #expect(throws: OffloadError.truncatedVirtioHeader) {
            try short.withUnsafeBytes { bytes in _ = try VirtioNetHeader(parsing: bytes) }
        }
        var small = [UInt8](repeating: 0, count: 9)
        #expect(throws: OffloadError.destinationTooSmall(needed: 10)) {
            try small.withUnsafeMutableBytes { bytes in try header.write(to: bytes) }
        }
    }

    // MARK: Segmentation

    @Test(arguments: segmentationCases)
    fileprivate func segmentsSuperPacket(_ testCase: SegmentationCase) throws {
        let flags = OffloadLayout.tcpACK | OffloadLayout.tcpPSH | OffloadLayout.tcpFIN | OffloadLayout.tcpCWR
        let fields = TCPFields(isV6: testCase.isV6, flags: flags, options: testCase.options)
        let payload = payloadBytes(testCase.payload)
        let record = superPacketRecord(fields, payload: payload, gsoSize: UInt16(testCase.gsoSize))
        let original = makeTCP(fields, payload: payload)
        let produced = try segment(record).get()

        let ipLength = testCase.isV6 ? 40 : 20
        let headerLength = ipLength + 20 + testCase.options.count
        let expectedCount = (testCase.payload + testCase.gsoSize - 1) / testCase.gsoSize
        #expect(produced.count == expectedCount)
        for (index, packet) in produced.enumerated() {
            let isLast = index == produced.count - 1
            let size = isLast ? testCase.payload - index * testCase.gsoSize : testCase.gsoSize
            #expect(packet.count == headerLength + size)
            #expect(tcpChecksumVerifies(packet), "segment \(index) TCP checksum")
            if testCase.isV6 {
                #expect(Int(readBE16(packet, 4)) == packet.count - 40)
                #expect(Array(packet[0..<4]) == Array(original[0..<4]))
                #expect(Array(packet[6..<40]) == Array(original[6..<40]))
            } else {
                #expect(ipv4HeaderVerifies(packet), "segment \(index) IPv4 header checksum")
                #expect(Int(readBE16(packet, 2)) == packet.count)
                #expect(readBE16(packet, 4) == fields.identification &+ UInt16(index))
                #expect(Array(packet[0..<2]) == Array(original[0..<2]))
                #expect(Array(packet[6..<10]) == Array(original[6..<10]))
                #expect(Array(packet[12..<20]) == Array(original[12..<20]))
            }
            #expect(readBE32(packet, ipLength + 4) == fields.sequence &+ UInt32(index * testCase.gsoSize))
            var expectedFlags = OffloadLayout.tcpACK
            if isLast { expectedFlags |= OffloadLayout.tcpPSH | OffloadLayout.tcpFIN }
            if index == 0 { expectedFlags |= OffloadLayout.tcpCWR }
            #expect(packet[ipLength + 13] == expectedFlags, "segment \(index) flags")
            // Ports, ACK, data offset, window, urgent pointer and options unchanged.
            #expect(Array(packet[ipLength..<ipLength + 4]) == Array(original[ipLength..<ipLength + 4]))
            #expect(Array(packet[ipLength + 8..<ipLength + 13]) == Array(original[ipLength + 8..<ipLength + 13]))
            #expect(Array(packet[ipLength + 14..<ipLength + 16]) == Array(original[ipLength + 14..<ipLength + 16]))
            #expect(
                Array(packet[ipLength + 18..<headerLength]) == Array(original[ipLength + 18..<headerLength]))
        }
        #expect(produced.flatMap { Array($0[headerLength...]) } == payload)
    }

    @Test func superPacketWithoutPayloadIsOneSegment() throws {
        let fields = TCPFields(flags: OffloadLayout.tcpACK | OffloadLayout.tcpFIN)
        let produced = try segment(superPacketRecord(fields, payload: [], gsoSize: 1448)).get()
        #expect(produced == [makeTCP(fields, payload: [])])
    }

    @Test func partialChecksumIsFinishedInPlace() throws {
        for isV6 in [false, true] {
            for size in [0, 1, 7, 1000] {
                // TCP: the field holds the pseudo-header partial sum.
                let complete = makeTCP(TCPFields(isV6: isV6), payload: payloadBytes(size))
                let ipLength = ipHeaderLength(complete)
                var partial = complete
                store16(
                    referencePartial(complete, tcpLength: complete.count - ipLength), into: &partial, at: ipLength + 16)
                let header = VirtioNetHeader(
                    flags: VirtioNetHeader.Flags.needsChecksum, checksumStart: UInt16(ipLength), checksumOffset: 16)
                #expect(try segment(headerBytes(header) + partial).get() == [complete])
                // Without NEEDS_CSUM the packet passes through untouched, even with a bad checksum.
                #expect(try segment(headerBytes(.none) + partial).get() == [partial])
            }
        }
        // UDP: offset 6; the pseudo-header sum uses protocol 17.
        let udp = PacketBuilder.udp(
            source: IPAddress("192.0.2.1")!, sourcePort: 5353, destination: IPAddress("198.51.100.77")!,
            destinationPort: 53, payload: payloadBytes(33))
        var partial = udp
        var pseudo = UInt32(17) + UInt32(udp.count - 20)
        for index in stride(from: 12, to: 20, by: 2) { pseudo += UInt32(readBE16(udp, index)) }
        store16(~PacketBuilder.internetChecksum([], initial: pseudo), into: &partial, at: 26)
        let header = VirtioNetHeader(flags: VirtioNetHeader.Flags.needsChecksum, checksumStart: 20, checksumOffset: 6)
        #expect(try segment(headerBytes(header) + partial).get() == [udp])
    }

    @Test func malformedReadsAreRefusedWithAReason() {
        let good = superPacketRecord(TCPFields(), payload: payloadBytes(3000), gsoSize: 1448)
        let good6 = superPacketRecord(TCPFields(isV6: true), payload: payloadBytes(3000), gsoSize: 1448)
        func mutated(_ record: [UInt8], _ change: (inout [UInt8]) -> Void) -> [UInt8] {
            var copy = record
            change(&copy)
            return copy
        }
        let v = VirtioNetHeader.size
        let cases: [(String, [UInt8], OffloadError)] = [
            ("empty", [], .truncatedVirtioHeader),
            ("9 bytes", Array(good[0..<9]), .truncatedVirtioHeader),
            ("UDP_L4 on TCP", mutated(good) { $0[1] = 5 }, .notUDP(6)),
            ("UDP_L4 with ECN", mutated(good) { $0[1] = 0x85 }, .unsupportedGSOType(0x85)),
            ("GSO_UDP", mutated(good) { $0[1] = 3 }, .unsupportedGSOType(3)),
            (
                "gso_size 0",
                mutated(good) {
                    $0[4] = 0; $0[5] = 0
                }, .zeroGSOSize
            ),
            ("TCPV6 on IPv4", mutated(good) { $0[1] = 4 }, .ipVersionMismatch),
            ("TCPV4 on IPv6", mutated(good6) { $0[1] = 1 }, .ipVersionMismatch),
            ("no packet", Array(good[0..<v]), .unsupportedIPVersion(0)),
            ("version 5", mutated(good) { $0[v] = 0x55 }, .unsupportedIPVersion(5)),
            ("IPv4 IHL 4", mutated(good) { $0[v] = 0x44 }, .badIPv4HeaderLength),
            ("IPv4 truncated", Array(good[0..<v + 19]), .truncatedIPHeader),
            ("IPv4 IHL past end", mutated(Array(good[0..<v + 30])) { $0[v] = 0x4f }, .truncatedIPHeader),
            ("IPv6 truncated", Array(good6[0..<v + 39]), .truncatedIPHeader),
            ("UDP in TCPV4", mutated(good) { $0[v + 9] = 17 }, .notTCP(17)),
            ("IPv6 hop-by-hop", mutated(good6) { $0[v + 6] = 0 }, .ipv6ExtensionHeaders(0)),
            ("IPv6 fragment header", mutated(good6) { $0[v + 6] = 44 }, .ipv6ExtensionHeaders(44)),
            ("IPv4 more fragments", mutated(good) { $0[v + 6] |= 0x20 }, .fragmented),
            ("IPv4 fragment offset", mutated(good) { $0[v + 7] = 1 }, .fragmented),
            ("TCP truncated", Array(good[0..<v + 20 + 19]), .truncatedTCPHeader),
            ("TCP data offset 4", mutated(good) { $0[v + 20 + 12] = 0x40 }, .badTCPHeaderLength),
            ("TCP options past end", mutated(Array(good[0..<v + 50])) { $0[v + 20 + 12] = 0xf0 }, .truncatedTCPHeader),
            (
                "hdr_len past end",
                mutated(good) {
                    $0[2] = 0xff; $0[3] = 0xff
                }, .headerLengthExceedsPacket
            ),
            ("csum_start wrong", mutated(good) { $0[6] = 21 }, .badChecksumLocation),
            ("csum_offset wrong", mutated(good) { $0[8] = 6 }, .badChecksumLocation),
            (
                "partial checksum past end",
                headerBytes(VirtioNetHeader(flags: 1, checksumStart: 20, checksumOffset: 16)) + Array(good[v..<v + 37]),
                .badChecksumLocation
            ),
        ]
        for (name, record, error) in cases {
            switch segment(record) {
            case .success: Issue.record("\(name): accepted")
            case .failure(let actual): #expect(actual == error, "\(name)")
            }
        }
        // A destination too small for the segment is refused before anything is written.
        #expect(throws: OffloadError.destinationTooSmall(needed: 40 + 1448)) {
            try segment(good, destinationSize: 100).get()
        }
    }

    @Test func segmentTooLargeForSixteenBitLengths() {
        // 40 bytes of headers + a 65500-byte first segment cannot be described by IPv4's total length.
        let record = superPacketRecord(TCPFields(), payload: payloadBytes(65_500), gsoSize: 65_500)
        #expect(throws: OffloadError.segmentTooLarge) { try segment(record).get() }
    }

    // MARK: Coalescing

    @Test(arguments: segmentationCases.filter { $0.payload > $0.gsoSize && $0.payload / $0.gsoSize < 200 })
    fileprivate func coalescingTheSegmentsGivesBackTheSuperPacket(_ testCase: SegmentationCase) throws {
        let fields = TCPFields(
            isV6: testCase.isV6, flags: OffloadLayout.tcpACK | OffloadLayout.tcpPSH, options: testCase.options)
        let payload = payloadBytes(testCase.payload)
        let record = superPacketRecord(fields, payload: payload, gsoSize: UInt16(testCase.gsoSize))
        let parts = try segment(record).get()
        let outcome = Batch(packets: parts).run()
        #expect(outcome.outputs == [.merged(superPacket: 0)])
        let merged = try #require(outcome.records[0])
        // Byte for byte what the kernel hands over for a TSO super-packet: same virtio header,
        // same IP and TCP headers (PSH from the last segment, the pseudo-header partial sum in
        // the checksum field), same payload.
        #expect(merged == record)
        expectMerged(merged, of: parts, sourceLocation: #_sourceLocation)
        // And the merged record segments back into the same packets.
        #expect(try segment(merged).get() == parts)
    }

    @Test func singleSegmentPassesThrough() {
        expectOutputs(Batch(packets: segments(TCPFields(), sizes: [1448])), [[0]])
    }

    @Test func inOrderSegmentsMergeForBothFamilies() {
        for isV6 in [false, true] {
            let fields = TCPFields(isV6: isV6, options: timestamps)
            expectOutputs(Batch(packets: segments(fields, sizes: [1448, 1448, 1448, 1448])), [[0, 1, 2, 3]])
        }
    }

    @Test func outOfOrderSegmentsBreakTheGroup() {
        let parts = segments(TCPFields(), sizes: [1000, 1000, 1000, 1000, 1000])
        expectOutputs(Batch(packets: [parts[0], parts[1], parts[3], parts[4], parts[2]]), [[0, 1], [2, 3], [4]])
        // A retransmission of an earlier segment.
        expectOutputs(Batch(packets: [parts[0], parts[1], parts[1], parts[2]]), [[0, 1], [2, 3]])
    }

    @Test func interleavedFlowsMergeSeparately() {
        let a = segments(TCPFields(flow: 0), sizes: [1000, 1000, 1000])
        let b = segments(TCPFields(flow: 1), sizes: [1000, 1000])
        let c = segments(TCPFields(isV6: true, flow: 0), sizes: [1000, 1000])
        expectOutputs(Batch(packets: [a[0], b[0], c[0], a[1], b[1], c[1], a[2]]), [[0, 3, 6], [1, 4], [2, 5]])
    }

    @Test(arguments: [
        OffloadLayout.tcpFIN, OffloadLayout.tcpSYN, OffloadLayout.tcpRST, OffloadLayout.tcpURG, OffloadLayout.tcpECE,
        OffloadLayout.tcpCWR,
    ])
    func aFlagOtherThanACKOrPSHBreaksTheGroup(flag: UInt8) {
        var parts = segments(TCPFields(), sizes: [1000, 1000, 1000, 1000])
        var fields = TCPFields(flags: OffloadLayout.tcpACK | flag)
        fields.sequence &+= 2000
        fields.identification &+= 2
        parts[2] = makeTCP(fields, payload: payloadBytes(1000, seed: 2))
        expectOutputs(Batch(packets: parts), [[0, 1], [2], [3]])
    }

    @Test func aPureACKOfTheSameFlowEndsTheGroupAndKeepsItsPlace() {
        var parts = segments(TCPFields(), sizes: [1000, 1000, 1000, 1000])
        var fields = TCPFields()
        fields.sequence &+= 2000
        parts.insert(makeTCP(fields, payload: []), at: 2)
        expectOutputs(Batch(packets: parts), [[0, 1], [2], [3, 4]])
    }

    @Test func pushEndsTheGroup() {
        let parts = segments(TCPFields(), sizes: [1000, 1000, 1000], pushLast: true)
        let more = segments(TCPFields(), sizes: [1000, 1000], startingAt: TCPFields().sequence &+ 3000)
        expectOutputs(Batch(packets: parts + more), [[0, 1, 2], [3, 4]])
        // PSH on the first segment: nothing may follow it.
        var first = TCPFields()
        first.flags |= OffloadLayout.tcpPSH
        let pushed =
            segments(first, sizes: [1000]) + segments(TCPFields(), sizes: [1000], startingAt: first.sequence &+ 1000)
        expectOutputs(Batch(packets: pushed), [[0], [1]])
    }

    @Test func segmentSizesMustBeEqualExceptAShorterLast() {
        expectOutputs(Batch(packets: segments(TCPFields(), sizes: [1448, 1448, 1000, 1448])), [[0, 1, 2], [3]])
        expectOutputs(Batch(packets: segments(TCPFields(), sizes: [1000, 1448])), [[0], [1]])
    }

    @Test func changedOptionsBreakTheGroup() {
        var parts = segments(TCPFields(options: timestamps), sizes: [1000, 1000, 1000, 1000])
        var later = timestamps
        later[7] &+= 1  // TSval ticks
        let changed = segments(
            TCPFields(options: later), sizes: [1000, 1000], startingAt: TCPFields().sequence &+ 2000)
        parts.replaceSubrange(2...3, with: changed)
        expectOutputs(Batch(packets: parts), [[0, 1], [2, 3]])
        // Different option lengths.
        let bare = segments(TCPFields(), sizes: [1000], startingAt: TCPFields().sequence &+ 1000)
        expectOutputs(Batch(packets: [parts[0], bare[0]]), [[0], [1]])
    }

    @Test func changedHeaderFieldsBreakTheGroup() {
        let changes: [(String, (inout TCPFields) -> Void)] = [
            ("ack", { $0.acknowledgment &+= 1 }),
            ("window", { $0.window &+= 1 }),
            ("ttl", { $0.timeToLive -= 1 }),
            ("tos", { $0.typeOfService = 0x10 }),
            ("df", { $0.dontFragment = false }),
        ]
        for isV6 in [false, true] {
            for (name, change) in changes where !(isV6 && name == "df") {
                var changed = TCPFields(isV6: isV6)
                change(&changed)
                let head = segments(TCPFields(isV6: isV6), sizes: [1000, 1000])
                let tail = segments(changed, sizes: [1000, 1000], startingAt: changed.sequence &+ 2000)
                expectOutputs(Batch(packets: head + tail), [[0, 1], [2, 3]])
            }
        }
        // IPv6 flow label.
        var labelled = TCPFields(isV6: true)
        labelled.flowLabel = 7
        let head = segments(TCPFields(isV6: true), sizes: [1000])
        expectOutputs(
            Batch(packets: head + segments(labelled, sizes: [1000], startingAt: labelled.sequence &+ 1000)), [[0], [1]])
    }

    @Test func withoutDFTheIdentificationMustCountUp() {
        let fields = TCPFields(dontFragment: false)
        expectOutputs(Batch(packets: segments(fields, sizes: [1000, 1000, 1000])), [[0, 1, 2]])
        var parts = segments(fields, sizes: [1000, 1000, 1000])
        var repeated = fields
        repeated.sequence &+= 2000
        parts[2] = makeTCP(repeated, payload: payloadOf(parts[2]))  // identification not advanced
        expectOutputs(Batch(packets: parts), [[0, 1], [2]])
    }

    @Test func nonTCPPacketsPassThroughWithoutBreakingAFlow() {
        let parts = segments(TCPFields(), sizes: [1000, 1000, 1000])
        let udp = PacketBuilder.udp(
            source: IPAddress("192.0.2.1")!, sourcePort: 40000, destination: IPAddress("198.51.100.77")!,
            destinationPort: 443, payload: payloadBytes(1000))
        let ping = PacketBuilder.icmpEcho(
            source: IPAddress("2001:db8::1")!, destination: IPAddress("fd00:1:2:3::abcd")!, identifier: 1, sequence: 1)
        expectOutputs(Batch(packets: [parts[0], udp, parts[1], ping, parts[2]]), [[0, 2, 4], [1], [3]])
    }

    @Test func ineligibleIPPacketsPassThrough() {
        // IPv4 options, IPv4 fragments, an IPv6 extension header, a length field that disagrees.
        var parts = segments(TCPFields(), sizes: [1000, 1000])
        var fragment = parts[1]
        fragment[6] |= 0x20
        store16(0, into: &fragment, at: 10)
        store16(PacketBuilder.internetChecksum(Array(fragment[0..<20])), into: &fragment, at: 10)
        expectOutputs(Batch(packets: [parts[0], fragment]), [[0], [1]])
        var withOptions = parts[0]
        withOptions.insert(contentsOf: [1, 1, 1, 0], at: 20)  // NOP NOP NOP EOL
        withOptions[0] = 0x46
        store16(UInt16(withOptions.count), into: &withOptions, at: 2)
        expectOutputs(Batch(packets: [withOptions, parts[1]]), [[0], [1]])
        var six = segments(TCPFields(isV6: true), sizes: [1000, 1000])
        six[1][6] = 60  // destination options header announced
        expectOutputs(Batch(packets: six), [[0], [1]])
        parts[1].append(0)  // padding the length field does not cover
        expectOutputs(Batch(packets: parts), [[0], [1]])
    }

    @Test func sizeLimitStartsANewGroup() {
        // 40 + 45 × 1448 = 65200 fits; a 46th segment would make 66648.
        let parts = segments(TCPFields(), sizes: Array(repeating: 1448, count: 50))
        expectOutputs(Batch(packets: parts), [Array(0..<45), Array(45..<50)])
    }

    /// Small segments stop at 64 per super-packet (one `writev` of at most 64 pieces), long
    /// before 64 KiB.
    @Test func segmentLimitStartsANewGroup() {
        #expect(GROCoalescer.maximumSegments == 64)
        let parts = segments(TCPFields(), sizes: Array(repeating: 100, count: 140))
        expectOutputs(Batch(packets: parts), [Array(0..<64), Array(64..<128), Array(128..<140)])
    }

    /// The first packet of a super-packet is its first piece, rewritten in the caller's slot with
    /// the virtio header in the room in front; the others are referenced, never copied.
    @Test func superPacketPiecesPointIntoTheSlots() {
        let parts = segments(TCPFields(), sizes: [1000, 1000, 700])
        let slots = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * 2048, alignment: 16)
        defer { slots.deallocate() }
        var coalescer = GROCoalescer(maximumPackets: 3)
        addInSlots(parts, to: &coalescer, slots: slots)
        let pieces = Array(coalescer.pieces(ofSuperPacket: 0))
        #expect(pieces.count == 3 && coalescer.pieces(ofSuperPacket: 0).count == 3)
        let base = UnsafeRawPointer(slots.baseAddress!)
        #expect(pieces.map { $0.baseAddress! - base } == [16 - 10, 2048 + 16 + 40, 2 * 2048 + 16 + 40])
        #expect(pieces.map(\.count) == [10 + 1040, 1000, 700])
        // The slot now holds the super-packet's IPv4 total length (40 + 2700).
        #expect(slots[16 + 2] == UInt8((2740 >> 8) & 0xff) && slots[16 + 3] == UInt8(2740 & 0xff))
    }

    @Test func badChecksumsAreNeverMerged() {
        var parts = segments(TCPFields(), sizes: [1000, 1000, 1000])
        parts[1][100] ^= 0x01
        expectOutputs(Batch(packets: parts), [[0], [1], [2]])
        var firstBad = segments(TCPFields(), sizes: [1000, 1000, 1000])
        firstBad[0][100] ^= 0x01
        expectOutputs(Batch(packets: firstBad), [[0], [1, 2]])
    }

    /// Trusted (the tunnel's packets passed their Poly1305 tag): checksums are not looked at, so
    /// the same batch merges whole, and the bad byte travels on in the payload.
    @Test func trustedChecksumsAreNotVerified() {
        var parts = segments(TCPFields(), sizes: [1000, 1000, 1000])
        parts[1][100] ^= 0x01
        expectOutputs(Batch(packets: parts, trustChecksums: true), [[0, 1, 2]])
    }

    @Test func tableAndBufferLimitsPassPacketsThrough() {
        let a = segments(TCPFields(flow: 0), sizes: [1000, 1000])
        let b = segments(TCPFields(flow: 1), sizes: [1000, 1000])
        expectOutputs(Batch(packets: [a[0], b[0], a[1], b[1]], maximumFlows: 1), [[0, 2], [1], [3]])
        expectOutputs(Batch(packets: [a[0], b[0], a[1], b[1]], maximumSuperPackets: 1), [[0, 2], [1], [3]])
    }

    @Test func resetStartsAFreshBatch() {
        let parts = segments(TCPFields(), sizes: [1000, 1000])
        let slots = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * 2048, alignment: 16)
        defer { slots.deallocate() }
        var coalescer = GROCoalescer(maximumPackets: 2)
        for _ in 0..<3 {
            coalescer.reset()
            addInSlots(parts, to: &coalescer, slots: slots)
            #expect(coalescer.outputCount == 1)
            #expect(coalescer.output(at: 0) == .merged(superPacket: 0))
            #expect(gather(coalescer.pieces(ofSuperPacket: 0)).count == 10 + 40 + 2000)
        }
    }

    // MARK: UDP (USO on read, UDP_L4 super-packets on write)

    @Test(arguments: udpCases)
    fileprivate func segmentsUDPSuperPacket(_ testCase: UDPCase) throws {
        let fields = TCPFields(isV6: testCase.isV6, identification: 0xfffe)  // wraps
        let payload = payloadBytes(testCase.payload)
        let record = udpSuperPacketRecord(fields, payload: payload, gsoSize: UInt16(testCase.gsoSize))
        let produced = try segment(record).get()
        // Byte for byte the datagrams built one by one: lengths, identification, both checksums.
        #expect(produced == udpDatagrams(fields, payload: payload, gsoSize: testCase.gsoSize))
    }

    @Test(arguments: udpCases.filter { $0.payload > $0.gsoSize && $0.payload <= 64 * $0.gsoSize })
    fileprivate func coalescingUDPGivesBackTheSuperPacket(_ testCase: UDPCase) throws {
        let fields = TCPFields(isV6: testCase.isV6)
        let payload = payloadBytes(testCase.payload)
        let parts = udpDatagrams(fields, payload: payload, gsoSize: testCase.gsoSize)
        let outcome = Batch(packets: parts).run()
        #expect(outcome.outputs == [.merged(superPacket: 0)])
        // What the kernel hands over for an app's UDP_SEGMENT send, and it segments back.
        let merged = try #require(outcome.records[0])
        #expect(merged == udpSuperPacketRecord(fields, payload: payload, gsoSize: UInt16(testCase.gsoSize)))
        #expect(try segment(merged).get() == parts)
    }

    @Test func udpGroupsStopAtTheKernelsGROLimit() {
        #expect(GROCoalescer.maximumSegments == 64)
        let parts = datagrams(TCPFields(), sizes: Array(repeating: 100, count: 150))
        expectUDPOutputs(Batch(packets: parts), [Array(0..<64), Array(64..<128), Array(128..<150)])
    }

    @Test func udpSizesMustBeEqualExceptAShorterLast() {
        let parts = datagrams(TCPFields(), sizes: [500, 500, 300, 500, 500, 600])
        // The short one ends the first group; 600 is larger than the second group's size.
        expectUDPOutputs(Batch(packets: parts), [[0, 1, 2], [3, 4], [5]])
    }

    @Test func udpMergesOnlyWhereTheKernelTakesUDPSuperPackets() {
        let parts = datagrams(TCPFields(), sizes: [500, 500, 500])
        expectUDPOutputs(Batch(packets: parts, mergesUDP: false), [[0], [1], [2]])
        // TCP still merges.
        expectOutputs(Batch(packets: segments(TCPFields(), sizes: [500, 500]), mergesUDP: false), [[0, 1]])
    }

    @Test func udpAndTCPOnTheSamePortsAreDifferentFlows() {
        let udp = datagrams(TCPFields(), sizes: [500, 500])
        let tcp = segments(TCPFields(), sizes: [500, 500])
        let outcome = Batch(packets: [tcp[0], udp[0], tcp[1], udp[1]]).run()
        #expect(outcome.outputs == [.merged(superPacket: 0), .merged(superPacket: 1)])
        #expect(outcome.records[1].map { Array($0[VirtioNetHeader.size...]) }?.count == 20 + 8 + 1000)
    }

    @Test func udpHeaderFieldsMustMatch() {
        for isV6 in [false, true] {
            var parts = datagrams(TCPFields(isV6: isV6), sizes: [500, 500, 500])
            var changed = TCPFields(isV6: isV6, timeToLive: 63)
            changed.identification &+= 2
            parts[2] = makeUDP(changed, payload: payloadBytes(500))
            expectUDPOutputs(Batch(packets: parts), [[0, 1], [2]])
        }
        // Without DF the identification must count up, as for TCP.
        var parts = datagrams(TCPFields(dontFragment: false), sizes: [500, 500, 500])
        parts[2] = makeUDP(TCPFields(dontFragment: false), payload: payloadBytes(500))
        expectUDPOutputs(Batch(packets: parts), [[0, 1], [2]])
        // With DF it does not matter (RFC 6864), as the kernel's own USO shows.
        let repeated = (0..<3).map { _ in makeUDP(TCPFields(), payload: payloadBytes(500)) }
        expectUDPOutputs(Batch(packets: repeated), [[0, 1, 2]])
    }

    @Test func udpLengthFieldMustAgree() {
        var parts = datagrams(TCPFields(), sizes: [500, 500, 500, 500])
        store16(400, into: &parts[2], at: 24)
        // The odd one passes through and ends its flow's group, so nothing overtakes it.
        expectUDPOutputs(Batch(packets: parts), [[0, 1], [2], [3]])
    }

    @Test func udpChecksumsAreVerifiedUnlessTrusted() {
        var parts = datagrams(TCPFields(), sizes: [500, 500, 500])
        parts[1][100] ^= 0x01
        expectUDPOutputs(Batch(packets: parts), [[0], [1], [2]])
        expectUDPOutputs(Batch(packets: parts, trustChecksums: true), [[0, 1, 2]])
        // IPv4's "no checksum" (0) is valid; IPv6 forbids it (RFC 8200 §8.1).
        for isV6 in [false, true] {
            var unchecked = datagrams(TCPFields(isV6: isV6), sizes: [500, 500])
            let field = (isV6 ? 40 : 20) + 6
            for index in unchecked.indices { store16(0, into: &unchecked[index], at: field) }
            expectUDPOutputs(Batch(packets: unchecked), isV6 ? [[0], [1]] : [[0, 1]])
        }
    }

    @Test func malformedUDPSuperPacketsAreRefused() {
        let good = udpSuperPacketRecord(TCPFields(), payload: payloadBytes(3000), gsoSize: 1000)
        let v = VirtioNetHeader.size
        var truncated = Array(good[0..<v + 27])
        truncated[v + 3] = 27  // IPv4 total length, though nothing reads it before the UDP check
        #expect(throws: OffloadError.truncatedUDPHeader) { try segment(truncated).get() }
        var wrongOffset = good
        wrongOffset[8] = 16
        #expect(throws: OffloadError.badChecksumLocation) { try segment(wrongOffset).get() }
        var tcpInside = good
        tcpInside[v + 9] = 6
        #expect(throws: OffloadError.notUDP(6)) { try segment(tcpInside).get() }
        var zero = good
        zero[4] = 0
        zero[5] = 0
        #expect(throws: OffloadError.zeroGSOSize) { try segment(zero).get() }
    }

    // MARK: Fuzz

    @Test func randomAndMutatedReadsNeverCrash() {
        var generator = SplitMix64(seed: 0x7475_6e63_746c)
        let bases = [
            superPacketRecord(TCPFields(options: timestamps), payload: payloadBytes(3000), gsoSize: 1448),
            superPacketRecord(TCPFields(isV6: true), payload: payloadBytes(500), gsoSize: 7),
            headerBytes(VirtioNetHeader(flags: 1, checksumStart: 20, checksumOffset: 16))
                + makeTCP(TCPFields(), payload: payloadBytes(99)),
            udpSuperPacketRecord(TCPFields(isV6: true), payload: payloadBytes(2000), gsoSize: 333),
        ]
        var accepted = 0
        for round in 0..<3000 {
            var record: [UInt8]
            if round % 4 == 0 {
                record = (0..<Int.random(in: 0...120, using: &generator)).map { _ in
                    UInt8.random(in: 0...255, using: &generator)
                }
            } else {
                record = bases[Int.random(in: 0..<bases.count, using: &generator)]
                for _ in 0..<Int.random(in: 1...6, using: &generator) {
                    let index = Int.random(in: 0..<min(record.count, 100), using: &generator)
                    record[index] = UInt8.random(in: 0...255, using: &generator)
                }
                if Bool.random(using: &generator) {
                    record.removeLast(Int.random(in: 0..<record.count, using: &generator))
                }
            }
            if case .success(let produced) = segment(record, destinationSize: 65600, limit: 64) {
                accepted += 1
                #expect(produced.allSatisfy { $0.count <= 65535 })
            }
        }
        #expect(accepted > 0)
    }

    @Test func randomBatchesNeverCrashTheCoalescer() {
        var generator = SplitMix64(seed: 0x67_726f)
        let flows =
            (0..<3).map { segments(TCPFields(isV6: $0 == 2, flow: UInt16($0)), sizes: [700, 700, 700, 700]) }
            + [datagrams(TCPFields(isV6: true), sizes: [300, 300, 300, 200])]
        for _ in 0..<500 {
            var packets: [[UInt8]] = []
            for _ in 0..<Int.random(in: 1...24, using: &generator) {
                var packet = flows.randomElement(using: &generator)!.randomElement(using: &generator)!
                if Int.random(in: 0..<3, using: &generator) == 0 {
                    let index = Int.random(in: 0..<min(packet.count, 80), using: &generator)
                    packet[index] = UInt8.random(in: 0...255, using: &generator)
                }
                if Int.random(in: 0..<5, using: &generator) == 0 {
                    packet.removeLast(Int.random(in: 0..<packet.count, using: &generator))
                }
                packets.append(packet)
            }
            let outcome = Batch(packets: packets, maximumFlows: 2, maximumSuperPackets: 2).run()
            #expect(outcome.merged.filter { !$0 }.count == outcome.outputs.count)
            for record in outcome.records.values {
                // Every merged record is a valid TSO read again.
                #expect((try? segment(record).get()) != nil)
            }
        }
    }
}
