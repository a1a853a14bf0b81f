// The TUN side: interpretTUNRead and the GSO segmenter on arbitrary virtio headers and packets,
// and the GRO coalescer on arbitrary decrypted packets, checked against the segmenter.
//
// Input: a selector byte. Even: one TUN read (virtio header ‖ packet) with the rest of the input
// (when bit 1 is set, the header is made plausible for the packet: GSO type from its version
// and protocol, checksum start/offset at its transport header). Every segment must be a whole
// IP packet whose length fields match its size and whose IPv4 header and transport checksums
// verify, and the segments must carry the super-packet's payload exactly once, in order.
// Odd: a batch of packets for the coalescer (see `fuzzGRO`); every packet must come out exactly
// once, and a merged super-packet cut up again by the segmenter must give back the packets that
// went in, byte for byte but for the checksum fields.
import FuzzSupport
import Glibc
import TunnelCore

func be16(_ bytes: [UInt8], _ at: Int) -> Int { Int(bytes[at]) << 8 | Int(bytes[at + 1]) }
func store16(_ value: Int, _ bytes: inout [UInt8], _ at: Int) {
    bytes[at] = UInt8(value >> 8 & 0xff)
    bytes[at + 1] = UInt8(value & 0xff)
}

/// IP header length, protocol and where the addresses are, for a packet that has them.
func layout(_ packet: [UInt8]) -> (ipHeader: Int, proto: UInt8, addresses: Range<Int>)? {
    guard let first = packet.first else { return nil }
    if first >> 4 == 4, packet.count >= 20, Int(first & 0xf) * 4 >= 20, packet.count >= Int(first & 0xf) * 4 {
        return (Int(first & 0xf) * 4, packet[9], 12..<20)
    }
    if first >> 4 == 6, packet.count >= 40 { return (40, packet[6], 8..<40) }
    return nil
}

/// Whether the transport checksum of `packet` (TCP or UDP after the IP header) verifies.
func transportVerifies(_ packet: [UInt8], ipHeader: Int, proto: UInt8, addresses: Range<Int>) -> Bool {
    let length = packet.count - ipHeader
    let pseudo = onesSum(packet[addresses], initial: UInt32(proto) + UInt32(length & 0xffff) + UInt32(length >> 16))
    return onesSum(packet[ipHeader...], initial: pseudo) == 0xffff
}

/// Fills in lengths and checksums of an IPv4/IPv6 + TCP/UDP packet (for inputs meant to merge).
func fixUp(_ packet: inout [UInt8]) {
    guard let (ipHeader, proto, addresses) = layout(packet) else { return }
    if packet[0] >> 4 == 4 {
        store16(packet.count, &packet, 2)
        store16(0, &packet, 10)
        store16(Int(0xffff - onesSum(packet[0..<ipHeader])), &packet, 10)
    } else {
        store16(packet.count - 40, &packet, 4)
    }
    let field: Int
    if proto == 17, packet.count >= ipHeader + 8 {
        store16(packet.count - ipHeader, &packet, ipHeader + 4)
        field = ipHeader + 6
    } else if proto == 6, packet.count >= ipHeader + 20 {
        field = ipHeader + 16
    } else {
        return
    }
    store16(0, &packet, field)
    let length = packet.count - ipHeader
    let pseudo = onesSum(packet[addresses], initial: UInt32(proto) + UInt32(length & 0xffff) + UInt32(length >> 16))
    var checksum = 0xffff - Int(onesSum(packet[ipHeader...], initial: pseudo))
    if proto == 17 && checksum == 0 { checksum = 0xffff }
    store16(checksum, &packet, field)
}

/// Cuts the TUN read `record` and checks every segment; returns the segments (nil when the
/// record is refused, or is one packet, then returned as the only element).
@discardableResult
func segments(of record: [UInt8]) -> [[UInt8]]? {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: record.count, alignment: 1)
    defer { buffer.deallocate() }
    buffer.copyMemory(from: record.withUnsafeBytes { $0 })
    let read: TUNRead
    do {
        read = try interpretTUNRead(buffer)
    } catch {
        return nil
    }
    switch read {
    case .packet(let length):
        require(length == record.count - VirtioNetHeader.size, "a plain packet changed length")
        return [[UInt8](buffer[VirtioNetHeader.size...])]
    case .superPacket(var segmenter):
        let packet = [UInt8](record[VirtioNetHeader.size...])
        var out: [[UInt8]] = []
        let destination = UnsafeMutableRawBufferPointer.allocate(
            byteCount: segmenter.maximumSegmentLength, alignment: 1)
        defer { destination.deallocate() }
        while true {
            let length: Int?
            do {
                length = try segmenter.next(into: destination)
            } catch {
                require(false, "next(into:) refused a destination of maximumSegmentLength: \(error)")
                return nil
            }
            guard let length else { break }
            require(out.count < segmenter.segmentCount, "more segments than segmentCount")
            require(length <= 65535 && length <= destination.count, "segment of \(length) bytes")
            let segment = [UInt8](destination[0..<length])
            let header = try? IPPacketHeader(parsing: segment)
            require(header?.length == length, "segment \(out.count): its IP length field is not its size")
            let (ipHeader, proto, addresses) = layout(segment)!
            if segment[0] >> 4 == 4 {
                require(onesSum(segment[0..<ipHeader]) == 0xffff, "segment \(out.count): IPv4 header checksum")
            }
            require(
                transportVerifies(segment, ipHeader: ipHeader, proto: proto, addresses: addresses),
                "segment \(out.count): transport checksum does not verify")
            // Headers as in the super-packet (but for lengths, IDs, sequence, flags, checksums),
            // payload the next slice of the super-packet's.
            let payloadStart = segmenter.headerLength + out.count * segmenter.segmentSize
            require(
                sameBytes(
                    segment[segmenter.headerLength...],
                    packet[payloadStart..<min(payloadStart + segmenter.segmentSize, packet.count)]),
                "segment \(out.count) carries other payload")
            require(segment[addresses] == packet[addresses], "segment \(out.count) has other addresses")
            out.append(segment)
        }
        require(out.count == segmenter.segmentCount, "\(out.count) segments of \(segmenter.segmentCount)")
        return out
    }
}

func fuzzRead(_ selector: UInt8, _ input: inout FuzzInput) {
    var header = [UInt8](input.array(VirtioNetHeader.size))
    var packet = [UInt8](input.rest())
    if selector & 2 != 0, let (ipHeader, proto, _) = layout(packet) {
        let v6 = packet[0] >> 4 == 6
        header[0] |= 1  // NEEDS_CSUM
        header[1] = proto == 17 ? 5 : (v6 ? 4 : 1) | (header[1] & 0x80)
        let transport = proto == 17 ? 8 : (packet.count >= ipHeader + 13 ? Int(packet[ipHeader + 12] >> 4) * 4 : 20)
        header[2] = UInt8((ipHeader + transport) & 0xff)
        header[3] = UInt8((ipHeader + transport) >> 8)
        header[6] = UInt8(ipHeader)
        header[7] = 0
        header[8] = proto == 17 ? 6 : 16
        header[9] = 0
        if selector & 4 != 0 { header[4] = max(header[4] % 64, 1); header[5] = 0 }  // small gso_size
        if selector & 8 != 0, packet[0] >> 4 == 4 { packet[6] &= 0x40; packet[7] = 0 }  // not fragmented
    }
    segments(of: header + packet)
}

/// A batch for the coalescer: each packet an opcode byte and fields. Structured packets (most)
/// are IPv4/IPv6 TCP/UDP of one of four flows with lengths and checksums filled in, sequence
/// numbers continuing the flow's unless told otherwise; raw ones are bytes as given.
func fuzzGRO(_ selector: UInt8, _ input: inout FuzzInput) {
    var packets: [[UInt8]] = []
    var nextSequence: [UInt32] = [1000, 2000, 3000, 4000]
    while !input.isEmpty && packets.count < 64 {
        let op = input.byte()
        if op & 0xf0 == 0xf0 {
            packets.append([UInt8](input.take(Int(input.byte()))))
            continue
        }
        let v6 = op & 1 != 0
        let udp = op & 2 != 0
        let flow = Int(op >> 2 & 3)
        let payloadLength = Int(input.byte()) % 48
        let flags = input.byte()
        let tweak = input.byte()
        var packet: [UInt8]
        if v6 {
            packet = [0x60, 0, 0, 0, 0, 0, udp ? 17 : 6, 64] + [UInt8](repeating: 0, count: 32)
            packet[23] = 1
            packet[39] = UInt8(2 + flow)
        } else {
            packet = [0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, udp ? 17 : 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, UInt8(2 + flow)]
        }
        packet += [0x30, 0x39, 0x01, UInt8(0xbb &+ UInt8(flow))]  // ports
        if udp {
            packet += [0, 0, 0, 0]
        } else {
            var sequence = nextSequence[flow]
            if tweak & 0x80 != 0 { sequence &+= UInt32(tweak & 0x7f) }
            packet += [
                UInt8(sequence >> 24), UInt8(sequence >> 16 & 0xff), UInt8(sequence >> 8 & 0xff),
                UInt8(sequence & 0xff),
                0, 0, 0, 1, 0x50, tweak & 0x40 != 0 ? flags : 0x10 | (flags & 0x08), 0xff, 0xff, 0, 0, 0, 0,
            ]
            nextSequence[flow] = sequence &+ UInt32(payloadLength)
        }
        packet += (0..<payloadLength).map { UInt8(truncatingIfNeeded: $0 &+ packets.count &* 7) }
        if tweak & 0x20 != 0 { packet[Int(tweak & 0x1f) % packet.count] ^= input.byte() }  // a header field changed
        if tweak & 0x10 == 0 { fixUp(&packet) }
        packets.append(packet)
    }
    guard !packets.isEmpty else { return }

    // Slots with VirtioNetHeader.size bytes of headroom, each exactly as large (ASan sees overruns).
    let slots = packets.map { packet -> UnsafeMutableRawBufferPointer in
        let slot = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioNetHeader.size + packet.count, alignment: 1)
        slot.initializeMemory(as: UInt8.self, repeating: 0xcc)
        UnsafeMutableRawBufferPointer(rebasing: slot[VirtioNetHeader.size...]).copyMemory(
            from: packet.withUnsafeBytes { $0 })
        return slot
    }
    defer { for slot in slots { slot.deallocate() } }
    var coalescer = GROCoalescer(
        maximumPackets: packets.count, maximumFlows: Int(selector >> 1 & 3) + 1,
        maximumSuperPackets: Int(selector >> 3 & 3) + 1, trustChecksums: selector & 0x20 != 0,
        mergesUDP: selector & 0x40 != 0)
    var merged = [Bool](repeating: false, count: packets.count)
    for (index, slot) in slots.enumerated() {
        merged[index] = coalescer.add(
            UnsafeMutableRawBufferPointer(rebasing: slot[VirtioNetHeader.size...]), slot: index)
    }
    coalescer.finish()

    // Every packet exactly once, in order within a flow: as itself, or inside a super-packet.
    var seen = [Int](repeating: 0, count: packets.count)
    var lastSlot = -1
    for output in 0..<coalescer.outputCount {
        switch coalescer.output(at: output) {
        case .packet(let slot):
            require(!merged[slot], "slot \(slot) merged yet written alone")
            seen[slot] += 1
            require(slot > lastSlot, "outputs out of order: slot \(slot) after \(lastSlot)")
            lastSlot = slot
            require(
                packets[slot].withUnsafeBytes {
                    sameBytes(UnsafeRawBufferPointer(rebasing: slots[slot][VirtioNetHeader.size...]), $0)
                },
                "an unmerged packet was changed")
        case .merged(let superPacket):
            var record: [UInt8] = []
            for piece in coalescer.pieces(ofSuperPacket: superPacket) { record += piece }
            // The first piece starts in some slot's headroom: find whose.
            let first = slots.firstIndex { slot in
                var iterator = coalescer.pieces(ofSuperPacket: superPacket).makeIterator()
                return iterator.next()?.baseAddress == UnsafeRawPointer(slot.baseAddress!)
            }
            guard let first else { return require(false, "a super-packet does not start in a slot's headroom") }
            require(
                !merged[first] && first > lastSlot, "super-packet \(superPacket) starts at a merged or earlier slot")
            lastSlot = first
            seen[first] += 1
            guard let cut = segments(of: record), cut.count >= 2 else {
                return require(false, "the segmenter refuses super-packet \(superPacket) or finds one packet in it")
            }
            // The packets that went in: the first, then the following merged ones of its flow, in order.
            var members = [first]
            var candidate = first + 1
            while members.count < cut.count && candidate < packets.count {
                if merged[candidate] && sameFlow(packets[candidate], packets[first]) {
                    members.append(candidate)
                    seen[candidate] += 1
                }
                candidate += 1
            }
            require(
                members.count == cut.count,
                "super-packet \(superPacket): \(cut.count) segments, \(members.count) packets")
            for (segment, member) in zip(cut, members) {
                require(
                    equalButChecksums(segment, packets[member]),
                    "super-packet \(superPacket) gives back slot \(member) changed")
            }
        }
    }
    for index in packets.indices {
        require(seen[index] == 1, "slot \(index) came out \(seen[index]) times (merged: \(merged[index]))")
    }
}

/// Same addresses, protocol and ports.
func sameFlow(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard let (ia, pa, aa) = layout(a), let (ib, pb, ab) = layout(b), pa == pb, ia == ib, a[aa] == b[ab],
        a.count >= ia + 4, b.count >= ib + 4
    else { return false }
    return a[ia..<ia + 4] == b[ib..<ib + 4]
}

/// Equal bytes but for the IPv4 header checksum and the transport checksum (the coalescer may
/// merge packets whose checksums it trusts without checking them; the segmenter recomputes), and
/// the IPv4 identification under DF (GRO takes a fixed one; the segmenter counts up from it).
func equalButChecksums(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count, let (ipHeader, proto, _) = layout(b) else { return false }
    var skip: [Int] = []
    if b[0] >> 4 == 4 { skip += [10, 11] }
    if b[0] >> 4 == 4 && b[6] & 0x40 != 0 { skip += [4, 5] }
    let field = ipHeader + (proto == 17 ? 6 : 16)
    skip += [field, field + 1]
    var (first, second) = (a, b)
    for index in skip where index < first.count {
        first[index] = 0
        second[index] = 0
    }
    return sameBytes(first[...], second[...])
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let selector = input.byte()
    if selector & 1 == 0 {
        fuzzRead(selector, &input)
    } else {
        fuzzGRO(selector, &input)
    }
    return 0
}

runFuzzer { data, size in fuzzOne(data, size) }
