import CLinuxShim
import Glibc
import Testing
// Results involving a noncopyable batch are bound to a local before #expect: Swift 6.3.1
// miscompiles the macro's closure capture of an inout noncopyable value (wrong results, traps).
import TunnelCore

@testable import TunnelIO

/// UDP GSO on send and GRO on receive, over loopback only (127.0.0.1 and ::1); no root needed.
///
/// Loopback carries a GSO message unsplit to a socket with UDP_GRO on, and splits it for one
/// without, so both offloads are observable here. Where the kernel refuses an offload, the same
/// tests check the fallback instead: every datagram still arrives intact, one message each.
@Suite struct UDPOffloadTests {
    static let loopback4 = IPAddress.v4(0x7f00_0001)
    static let loopback6 = IPAddress.v6(1)

    /// One received datagram as the iterator yielded it.
    struct Received: Equatable {
        var bytes: [UInt8]
        var source: Endpoint
    }

    /// What one receive slot held: how the kernel packed it.
    struct SlotShape: Equatable {
        var length: Int
        var segmentSize: Int
        var datagramCount: Int
    }

    /// Datagram `index` of `length` bytes, distinct per index so order and splitting are checked.
    func payload(_ index: Int, length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ index &* 101 &+ 1) }
    }

    func queue(_ batch: inout SendBatch, _ items: [(index: Int, length: Int, to: Endpoint)]) {
        for item in items {
            let queued = payload(item.index, length: item.length).withUnsafeBytes { batch.append($0, to: item.to) }
            #expect(queued)
        }
    }

    /// Sends the whole batch, which loopback takes in one go.
    func sendAll(_ socket: UDPSocket, _ batch: inout SendBatch) throws -> Int {
        let sent = try socket.send(&batch)
        let empty = batch.isEmpty
        #expect(empty, "loopback should take the whole batch")
        return sent
    }

    /// Receives until `expected` datagrams have been yielded (waiting up to a second each time),
    /// then checks nothing more is waiting. Returns the datagrams and the shape of every slot.
    func receive(
        _ socket: UDPSocket, into batch: inout ReceiveBatch, expecting expected: Int
    ) throws -> (datagrams: [Received], slots: [SlotShape]) {
        var datagrams: [Received] = []
        var slots: [SlotShape] = []
        while datagrams.count < expected {
            var poller = pollfd(fd: socket.fileDescriptor, events: Int16(POLLIN), revents: 0)
            guard try Syscall.check("poll", { poll(&poller, 1, 1000) }) == 1 else { break }
            let count = try socket.receive(into: &batch)
            for slot in 0..<count {
                slots.append(
                    SlotShape(
                        length: batch.length(at: slot), segmentSize: batch.segmentSize(at: slot),
                        datagramCount: batch.datagramCount(at: slot)))
            }
            batch.forEachDatagram { datagram, source in
                // The local end (the sticky source) has its own tests, StickySourceTests.
                datagrams.append(Received(bytes: Array(datagram), source: source.withoutStickySource))
            }
        }
        let extra = try socket.receive(into: &batch)
        #expect(extra == 0, "more datagrams arrived than were sent")
        return (datagrams, slots)
    }

    // MARK: Planning runs

    /// Runs break on a destination change, a longer datagram, after a shorter one, at an empty one,
    /// at 64 segments and at 65507 bytes.
    @Test func pendingSlotsAreGroupedIntoRuns() {
        let a = Endpoint(address: Self.loopback4, port: 1000)
        let b = Endpoint(address: Self.loopback4, port: 1001)
        var batch = SendBatch(capacity: 256, bufferSize: 1500)
        var items: [(index: Int, length: Int, to: Endpoint)] = []
        let lengths: [(Int, Endpoint)] = [
            (1000, a), (1000, a), (1000, a), (500, a),  // run: 3 full and a shorter last
            (1000, a), (1000, a),  // run: ends at the destination change
            (1000, b), (1000, b),  // run
            (1200, a), (1200, a),  // run: longer than the one before, so a new run
            (0, a),  // an empty datagram is always alone
            (1200, a),  // alone: the batch moves on
        ]
        for (index, (length, to)) in lengths.enumerated() { items.append((index, length, to)) }
        items += (0..<70).map { (100 + $0, 100, b) }  // 64 + 6 by the segment limit
        items += (0..<50).map { (200 + $0, 1452, a) }  // 45 + 5 by the byte limit (45 × 1452 = 65340)
        queue(&batch, items)
        batch.prepareForSend(mapV4ToV6: false)
        let runs = batch.planRuns(
            maxSegments: UDPSocket.maximumSegments, maxBytes: UDPSocket.maximumSegmentedBytes)
        let shape = (0..<runs).map { (batch.runLength($0), batch.runSegmentSize($0)) }
        let expected = [
            (4, 1000), (2, 1000), (2, 1000), (2, 1200), (1, 0), (1, 1200), (64, 100), (6, 100), (45, 1452), (5, 1452),
        ]
        #expect(shape.map(\.0) == expected.map(\.0))
        #expect(shape.map(\.1) == expected.map(\.1))
        let starts = (0..<runs).map { batch.runStarts[$0] }
        #expect(starts == [0, 4, 6, 8, 10, 11, 12, 76, 82, 127])
        // A run of one carries no UDP_SEGMENT cmsg; a longer run does.
        let controls = (0..<runs).map { batch.runMessages[$0].msg_hdr.msg_controllen }
        #expect(controls[4] == 0 && controls[5] == 0 && controls[0] == ControlMessages.segmentSpace)
    }

    /// Planning starts at the first pending slot, so a batch left half sent is replanned correctly.
    @Test func planningStartsAtTheFirstPendingSlot() {
        let a = Endpoint(address: Self.loopback4, port: 1000)
        var batch = SendBatch(capacity: 8, bufferSize: 256)
        queue(&batch, (0..<6).map { ($0, 200, a) })
        batch.advance(by: 2)
        batch.prepareForSend(mapV4ToV6: false)
        let runs = batch.planRuns(maxSegments: 64, maxBytes: 65507)
        let (length, start) = (batch.runLength(0), batch.runStarts[0])
        #expect(runs == 1 && length == 4 && start == 2)
    }

    // MARK: Send

    /// A run of equal datagrams sent with GSO arrives at an ordinary socket as separate datagrams.
    @Test(arguments: [loopback4, loopback6])
    func segmentedRunArrivesAsSeparateDatagrams(address: IPAddress) throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0, offload: [])
        let destination = Endpoint(address: address, port: receiver.port)
        let items = (0..<10).map { ($0, 1452, destination) } + [(10, 700, destination)]
        var outgoing = SendBatch(capacity: 16, bufferSize: 1500)
        queue(&outgoing, items)
        let sent = try sendAll(sender, &outgoing)
        #expect(sent == items.count)
        // Segmentation is on (or, on a kernel without it, visibly off and the batch still went).
        #expect(sender.offload.contains(.segmentation) == UDPOffloadTests.kernelHasSegmentation())

        var incoming = ReceiveBatch(capacity: 32, bufferSize: 2048)
        let (datagrams, slots) = try receive(receiver, into: &incoming, expecting: items.count)
        let source = Endpoint(address: address, port: sender.port)
        #expect(datagrams == items.map { Received(bytes: payload($0.0, length: $0.1), source: source) })
        #expect(slots.allSatisfy { $0.datagramCount == 1 && $0.segmentSize == $0.length })
    }

    /// With room in front of each slot, `appendRouted` hands over room and slot together and
    /// only the datagram behind the room is sent, whether the run goes as one GSO message or not.
    @Test func roomInFrontOfSlotsIsNeverSent() throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0, offload: [])
        let destination = Endpoint(address: Self.loopback4, port: receiver.port)
        let room = 48
        var outgoing = SendBatch(capacity: 8, bufferSize: 1500, leadingRoom: room)
        let lengths = [1400, 1400, 1400, 600, 1500]
        for (index, length) in lengths.enumerated() {
            let queued = outgoing.appendRouted { region -> (length: Int, destination: Endpoint)? in
                #expect(region.count == room + 1500)
                region.initializeMemory(as: UInt8.self, repeating: 0xee)
                payload(index, length: length).withUnsafeBytes {
                    UnsafeMutableRawBufferPointer(rebasing: region[room...]).copyMemory(from: $0)
                }
                return (length, destination)
            }
            #expect(queued)
        }
        let sent = try sendAll(sender, &outgoing)
        #expect(sent == lengths.count)
        var incoming = ReceiveBatch(capacity: 16, bufferSize: 2048)
        let (datagrams, _) = try receive(receiver, into: &incoming, expecting: lengths.count)
        let source = Endpoint(address: Self.loopback4, port: sender.port)
        #expect(
            datagrams
                == lengths.enumerated().map { Received(bytes: payload($0.offset, length: $0.element), source: source) })
    }

    /// Mixed sizes and destinations: every receiver gets its own datagrams, in order, intact.
    @Test func mixedBatchReachesEachDestinationInOrder() throws {
        let sender = try UDPSocket(port: 0)
        let first = try UDPSocket(port: 0, offload: [])
        let second = try UDPSocket(port: 0, offload: [])
        let a = Endpoint(address: Self.loopback4, port: first.port)
        let b = Endpoint(address: Self.loopback6, port: second.port)
        var items: [(index: Int, length: Int, to: Endpoint)] = []
        for (length, to) in [(900, a), (900, a), (900, a), (300, a), (900, b), (900, b), (1400, a), (0, a), (1400, a)] {
            items.append((items.count, length, to))
        }
        items += (0..<70).map { (100 + $0, 64, b) }
        var outgoing = SendBatch(capacity: 128, bufferSize: 1500)
        queue(&outgoing, items)
        let sent = try sendAll(sender, &outgoing)
        #expect(sent == items.count)

        for (socket, endpoint, address) in [(first, a, Self.loopback4), (second, b, Self.loopback6)] {
            let mine = items.filter { $0.to == endpoint }
            var incoming = ReceiveBatch(capacity: 128, bufferSize: 2048)
            let (datagrams, _) = try receive(socket, into: &incoming, expecting: mine.count)
            let source = Endpoint(address: address, port: sender.port)
            #expect(datagrams == mine.map { Received(bytes: payload($0.index, length: $0.length), source: source) })
        }
    }

    /// With segmentation off (asked for none, or turned off) a batch goes one message per datagram:
    /// even a GRO receiver then sees each datagram in a slot of its own.
    @Test(arguments: [false, true])
    func withoutSegmentationEachDatagramIsItsOwnMessage(turnedOffLater: Bool) throws {
        let sender = try UDPSocket(port: 0, offload: turnedOffLater ? .segmentation : [])
        if turnedOffLater { sender.disableSegmentation() }
        #expect(!sender.offload.contains(.segmentation))
        let receiver = try UDPSocket(port: 0, offload: .coalescing)
        let destination = Endpoint(address: Self.loopback6, port: receiver.port)
        let items = (0..<12).map { ($0, 1452, destination) }
        var outgoing = SendBatch(capacity: 16, bufferSize: 1500)
        queue(&outgoing, items)
        let sent = try sendAll(sender, &outgoing)
        #expect(sent == items.count)

        var incoming = ReceiveBatch(capacity: 32, bufferSize: ReceiveBatch.coalescingBufferSize)
        let (datagrams, slots) = try receive(receiver, into: &incoming, expecting: items.count)
        let source = Endpoint(address: Self.loopback6, port: sender.port)
        #expect(datagrams == items.map { Received(bytes: payload($0.0, length: $0.1), source: source) })
        #expect(slots == Array(repeating: SlotShape(length: 1452, segmentSize: 1452, datagramCount: 1), count: 12))
    }

    /// A run the kernel refuses is resent datagram by datagram in the same call. SO_NO_CHECK makes
    /// every GSO send fail with EINVAL (the kernel will not segment without checksums) while plain
    /// sends work; EINVAL does not turn segmentation off, only EIO does.
    @Test func refusedRunIsResentOneByOne() throws {
        let sender = try UDPSocket(port: 0, allowIPv6: false)
        _ = try Syscall.check("setsockopt(SO_NO_CHECK)") {
            var on: Int32 = 1
            return setsockopt(sender.fileDescriptor, SOL_SOCKET, SO_NO_CHECK, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        let receiver = try UDPSocket(port: 0, offload: .coalescing)
        let destination = Endpoint(address: Self.loopback4, port: receiver.port)
        let items =
            (0..<8).map { ($0, 1000, destination) } + [(8, 10, destination)] + (9..<13).map { ($0, 500, destination) }
        var outgoing = SendBatch(capacity: 16, bufferSize: 1500)
        queue(&outgoing, items)
        let sent = try sendAll(sender, &outgoing)
        #expect(sent == items.count)
        #expect(sender.offload.contains(.segmentation) == UDPOffloadTests.kernelHasSegmentation())

        var incoming = ReceiveBatch(capacity: 32, bufferSize: ReceiveBatch.coalescingBufferSize)
        let (datagrams, slots) = try receive(receiver, into: &incoming, expecting: items.count)
        let source = Endpoint(address: Self.loopback4, port: sender.port)
        #expect(datagrams == items.map { Received(bytes: payload($0.0, length: $0.1), source: source) })
        #expect(slots.allSatisfy { $0.datagramCount == 1 }, "a refused run must go out unsegmented")
    }

    // MARK: Receive

    /// A GRO receiver gets each GSO run as one coalesced message; the iterator gives back the
    /// original datagrams in order, with their lengths and the sender as source.
    @Test(arguments: [loopback4, loopback6])
    func coalescedMessagesSplitIntoTheOriginalDatagrams(address: IPAddress) throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0, offload: .coalescing)
        let destination = Endpoint(address: address, port: receiver.port)
        let items =
            (0..<20).map { ($0, 1452, destination) } + [(20, 800, destination)]
            + (21..<26).map { ($0, 300, destination) }
        var outgoing = SendBatch(capacity: 32, bufferSize: 1500)
        queue(&outgoing, items)
        let sent = try sendAll(sender, &outgoing)
        #expect(sent == items.count)

        var incoming = ReceiveBatch(capacity: 32, bufferSize: ReceiveBatch.coalescingBufferSize)
        let (datagrams, slots) = try receive(receiver, into: &incoming, expecting: items.count)
        let source = Endpoint(address: address, port: sender.port)
        #expect(datagrams == items.map { Received(bytes: payload($0.0, length: $0.1), source: source) })

        let gso = UDPOffloadTests.kernelHasSegmentation()
        let gro = UDPOffloadTests.kernelHasCoalescing()
        #expect(sender.offload.contains(.segmentation) == gso)
        #expect(receiver.offload.contains(.coalescing) == gro)
        if gso && gro {
            #expect(
                slots == [
                    SlotShape(length: 20 * 1452 + 800, segmentSize: 1452, datagramCount: 21),
                    SlotShape(length: 5 * 300, segmentSize: 300, datagramCount: 5),
                ])
        } else {
            // Fallback: nothing is joined, one datagram per slot.
            #expect(slots.count == items.count && slots.allSatisfy { $0.datagramCount == 1 })
        }
    }

    /// Each yielded datagram is writable in place and only its own bytes are exposed: writing all
    /// of one leaves its neighbours in the same coalesced slot untouched. With room around the
    /// slots (as the tunnel's open needs), the datagrams given as ranges of the whole storage are
    /// the same bytes, the first slot starts behind the (16-aligned) leading room, and the rooms
    /// read as zeros.
    @Test func datagramsAreMutableInPlace() throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0, offload: .coalescing)
        let destination = Endpoint(address: Self.loopback4, port: receiver.port)
        let items = (0..<4).map { ($0, 1000, destination) } + [(4, 400, destination)]
        var outgoing = SendBatch(capacity: 8, bufferSize: 1500)
        queue(&outgoing, items)
        _ = try sendAll(sender, &outgoing)

        var incoming = ReceiveBatch(
            capacity: 8, bufferSize: ReceiveBatch.coalescingBufferSize, leadingRoom: 40, trailingRoom: 495)
        #expect(incoming.leadingRoom == 48)
        // Loopback queues everything during the send, so one receive (capacity 8) gets it all.
        var poller = pollfd(fd: receiver.fileDescriptor, events: Int16(POLLIN), revents: 0)
        _ = try Syscall.check("poll") { poll(&poller, 1, 1000) }
        let slots = try receiver.receive(into: &incoming)
        #expect(slots == (UDPOffloadTests.kernelHasCoalescing() ? 1 : items.count))
        // Invert every byte of every odd datagram, then read everything back.
        var position = 0
        incoming.forEachDatagram { datagram, _ in
            if position % 2 == 1 {
                for offset in datagram.indices { datagram[offset] = ~datagram[offset] }
            }
            position += 1
        }
        var seen: [[UInt8]] = []
        incoming.forEachDatagram { datagram, _ in seen.append(Array(datagram)) }
        let expected = items.enumerated().map { position, item in
            let bytes = payload(item.0, length: item.1)
            return position % 2 == 1 ? bytes.map { ~$0 } : bytes
        }
        #expect(seen == expected)

        var ranged: [[UInt8]] = []
        var starts: [Int] = []
        var whole = 0
        var rooms: [UInt8] = []
        incoming.forEachDatagramInStorage { storage, datagram, _ in
            ranged.append(Array(storage[datagram]))
            starts.append(datagram.lowerBound)
            whole = storage.count
            rooms = Array(storage[..<48]) + Array(storage[(storage.count - 495)...])
        }
        #expect(ranged == seen)
        #expect(starts.first == 48)
        #expect(whole == 48 + 8 * ReceiveBatch.coalescingBufferSize + 495)
        #expect(rooms == [UInt8](repeating: 0, count: 48 + 495))
    }

    /// A slot without a UDP_GRO cmsg is one datagram, empty ones included.
    @Test func plainSlotsAreOneDatagramEach() throws {
        let sender = try UDPSocket(port: 0, offload: [])
        let receiver = try UDPSocket(port: 0, offload: .coalescing)
        let destination = Endpoint(address: Self.loopback4, port: receiver.port)
        let items = [(0, 0, destination), (1, 33, destination), (2, 0, destination)]
        var outgoing = SendBatch(capacity: 4, bufferSize: 64)
        queue(&outgoing, items)
        _ = try sendAll(sender, &outgoing)
        var incoming = ReceiveBatch(capacity: 4, bufferSize: ReceiveBatch.coalescingBufferSize)
        let (datagrams, slots) = try receive(receiver, into: &incoming, expecting: 3)
        #expect(datagrams.map(\.bytes.count) == [0, 33, 0])
        #expect(slots.map(\.datagramCount) == [1, 1, 1])
        #expect(slots.map(\.segmentSize) == [0, 33, 0])
    }

    // MARK: What the kernel offers, found independently of UDPSocket

    /// Whether this kernel takes UDP_SEGMENT, probed on a throwaway socket.
    static func kernelHasSegmentation() -> Bool { kernelAccepts(tunctl_udp_segment, value: 0) }

    /// Whether this kernel takes UDP_GRO, probed on a throwaway socket.
    static func kernelHasCoalescing() -> Bool { kernelAccepts(tunctl_udp_gro, value: 1) }

    private static func kernelAccepts(_ option: Int32, value: Int32) -> Bool {
        guard let fd = try? Syscall.check("socket", { socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0) }) else {
            return false
        }
        defer { _ = try? Syscall.close(fd) }
        var value = value
        return setsockopt(fd, tunctl_sol_udp, option, &value, socklen_t(MemoryLayout<Int32>.size)) == 0
    }
}
