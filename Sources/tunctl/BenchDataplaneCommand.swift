import ArgumentParser
import Glibc
import TunnelCore
import TunnelCrypto
import TunnelIO

/// The data path without the kernel: synthetic IPv4 packets from one device to another through
/// the production steps: `prepareSend` (route, counter), `Device.seal` on the workers,
/// `completeSend`; then `prepareReceive`, `Device.open` on the workers, and `completeReceive`
/// (replay check, source check), each device's steps in order, batch after batch. Pipelined as a
/// tunnel would be: while the workers seal one batch and open another, one of them runs the
/// devices' steps for the batches in between. Every packet must come out delivered and intact,
/// or the command fails. Shows how the data path scales with `CryptoWorkers`; wall-clock time,
/// so a busy machine lowers the figure.
struct BenchDataplane: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-dataplane",
        abstract: "Measure the in-process seal → open pipeline on N crypto workers (JSON on stdout).",
        shouldDisplay: false
    )

    @Option(help: "Crypto workers (default: online CPUs).")
    var workers = CryptoWorkers.onlineCPUs

    @Option(help: "IP packet bytes (28 to 65535).")
    var size = 1420

    @Option(help: "Packets per batch.")
    var batch = 128

    @Option(help: "Wall-clock seconds to run.")
    var seconds = 2.0

    func validate() throws {
        guard (1...256).contains(workers) else { throw ValidationError("--workers must be 1 to 256") }
        guard (28...65535).contains(size) else { throw ValidationError("--size must be 28 to 65535") }
        guard (1...4096).contains(batch) else { throw ValidationError("--batch must be 1 to 4096") }
        guard seconds > 0 && seconds <= 60 else { throw ValidationError("--seconds must be in (0, 60]") }
    }

    func run() throws {
        let pipeline = try DataplanePipeline(size: size, batch: batch, workers: CryptoWorkers(count: workers))
        defer { pipeline.release() }
        let start = currentInstant().monotonic
        let limit = UInt64(seconds * 1e9)
        var elapsed: UInt64 = 0
        var round = 0
        // Batches go in until the time is up; those in flight then finish, and count. Planned on
        // a worker between rounds, when no task runs.
        pipeline.workers.runRounds(
            plan: {
                elapsed = currentInstant().monotonic - start
                guard pipeline.failure == nil, pipeline.delivered < pipeline.issued else { return nil }
                defer { round += 1 }
                return pipeline.plan(round, issuing: elapsed < limit)
            }, pipeline.runTask)
        if let failure = pipeline.failure {
            throw ValidationError("\(failure) after \(pipeline.delivered * batch) packets")
        }
        let packets = pipeline.delivered * batch
        let wall = Double(elapsed) / 1e9
        let rate = Double(packets) / wall
        print(
            "{\"workers\":\(workers),\"size\":\(size),\"batch\":\(batch),\"packets\":\(packets),"
                + "\"seconds\":\(wall),\"packets_per_second\":\(rate),"
                + "\"gbit_per_second\":\(rate * Double(size) * 8 / 1e9)}")
    }
}

/// Two devices with a session from A to B, and the slots of `depth` batches in flight, reused
/// round after round. Batch k is prepared (A's `prepareSend`) in round k - 1, sealed in round k,
/// handed over (A's `completeSend`, B's `prepareReceive`) in round k + 1, opened in round k + 2
/// and delivered (B's `completeReceive`) in round k + 3; its slots are then those of batch k + 4,
/// prepared next in the same task. A round is one of `CryptoWorkers.runRounds`: task 0 is every
/// device step of the round, in that order; the others are chunks of the sealing and the opening
/// batch.
///
/// Not Sendable: `plan` runs between rounds, when no task runs; in a round each task touches only
/// its own batch's slots and tickets (the sealing batch, the opening batch, or the others for
/// task 0) and reads what `plan` set, and only task 0 calls the devices, so each device has one
/// caller at a time and sees its batches in order.
private final class DataplanePipeline {
    /// Batches in flight: one being prepared or delivered, one sealed, one between, one opened.
    static let depth = 4
    /// Packets per sealing or opening task: small enough that the workers end a round together
    /// (a full-size seal is about 1.2 µs), large enough that handing tasks out costs nothing.
    static let chunk = 8

    let a: Device
    let b: Device
    let aEndpoint = Endpoint(address: IPAddress("198.18.0.1")!, port: 51820)
    let bEndpoint = Endpoint(address: IPAddress("198.18.0.2")!, port: 51820)
    let size: Int
    let batch: Int
    let workers: CryptoWorkers
    let slotSize: Int
    /// Per slot, `depth * batch` of each: batch k uses those from `(k % depth) * batch`.
    let slots: UnsafeMutableRawBufferPointer
    /// Initialized up to `sealFilled` and `openFilled` (the first batches fill the slots in
    /// order), so that a worker reads a ticket in place: copying one out retains its keypair,
    /// whose cache line task 0 writes (the counter, the replay window), on every packet.
    let sealTickets: UnsafeMutablePointer<SealTicket>
    let openTickets: UnsafeMutablePointer<OpenTicket>
    private var sealFilled = 0
    private var openFilled = 0
    let lengths: UnsafeMutableBufferPointer<Int>
    let opened: UnsafeMutableBufferPointer<Int?>
    /// Whether the packet came out of `open` with its bytes intact (checked there, while hot).
    let intact: UnsafeMutableBufferPointer<Bool>
    let scratch: [UnsafeMutableRawBufferPointer]
    var sink = HandshakeSink()
    /// Batches prepared so far, and delivered: written by task 0 only, read between rounds.
    private(set) var issued = 0
    private(set) var delivered = 0
    /// What went wrong, when a packet was not carried through or not intact.
    private(set) var failure: String?

    init(size: Int, batch: Int, workers: CryptoWorkers) throws {
        self.size = size
        self.batch = batch
        self.workers = workers
        let mtu = max(size, Protocol.minimumMTU)
        a = Device(privateKey: .generate(), mtu: mtu)
        b = Device(privateKey: .generate(), mtu: mtu)
        guard let peerOfA = a.addPeer(b.publicKey!), let peerOfB = b.addPeer(a.publicKey!) else {
            throw ValidationError("could not add the peers")
        }
        a.setEndpoint(bEndpoint, for: peerOfA)
        b.setEndpoint(aEndpoint, for: peerOfB)
        a.addAllowedIP(IPPrefix("198.18.1.2/32")!, for: peerOfA)
        b.addAllowedIP(IPPrefix("198.18.1.1/32")!, for: peerOfB)

        let count = Self.depth * batch
        slotSize = (Device.sealingRoom + Device.sealingSlotSize(mtu: mtu) + 63) & ~63
        slots = .allocate(byteCount: slotSize * count, alignment: 64)
        slots.initializeMemory(as: UInt8.self, repeating: 0)
        sealTickets = .allocate(capacity: count)
        openTickets = .allocate(capacity: count)
        lengths = .allocate(capacity: count)
        lengths.initialize(repeating: 0)
        opened = .allocate(capacity: count)
        opened.initialize(repeating: nil)
        intact = .allocate(capacity: count)
        intact.initialize(repeating: false)
        scratch = (0..<workers.count).map { _ in
            UnsafeMutableRawBufferPointer.allocate(byteCount: Device.openingScratchSize, alignment: 64)
        }
        for index in 0..<count { writePacket(index) }
        try handshake()
        prepare(0, now: currentInstant())
    }

    func release() {
        slots.deallocate()
        sealTickets.deinitialize(count: sealFilled)
        sealTickets.deallocate()
        openTickets.deinitialize(count: openFilled)
        openTickets.deallocate()
        lengths.deallocate()
        opened.deallocate()
        intact.deallocate()
        for area in scratch { area.deallocate() }
    }

    private func slot(_ index: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: slots[(index * slotSize)..<((index + 1) * slotSize)])
    }

    /// The datagram's view of a slot: behind the sealing room, as the tunnel's send slots are.
    private func datagram(_ index: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: slot(index)[Device.sealingRoom...])
    }

    /// An IPv4 packet 198.18.1.1 → 198.18.1.2 (UDP, payload the slot's number) at the packet's
    /// place in the slot; opening in place puts it back there, so it is written once.
    private func writePacket(_ index: Int) {
        let packet = UnsafeMutableRawBufferPointer(
            rebasing: datagram(index)[Device.headroom..<(Device.headroom + size)])
        packet.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: index))
        let header: [UInt8] = [
            0x45, 0, UInt8(size >> 8), UInt8(size & 0xff), 0, 0, 0x40, 0, 64, 17, 0, 0,
            198, 18, 1, 1, 198, 18, 1, 2,
        ]
        for (offset, byte) in header.enumerated() { packet[offset] = byte }
    }

    /// The packet in slot `index` after a round trip: its payload byte must still be the slot's.
    private func isIntact(_ index: Int) -> Bool {
        let packet = datagram(index)
        return packet[Device.headroom + size - 1] == UInt8(truncatingIfNeeded: index)
            && packet[Device.headroom + 12] == 198 && packet[Device.headroom + 19] == 2
    }

    /// Initiation, response and the first (staged) packet through both devices' public steps.
    private func handshake() throws {
        let now = currentInstant()
        guard case .finished(.staged) = a.prepareSend(datagram(0), packetLength: size, now: now, sink: &sink)
        else { throw ValidationError("the first packet was not staged for a handshake") }
        for (device, from) in [(b, aEndpoint), (a, bEndpoint), (b, aEndpoint)] {
            guard let message = sink.sent.first else { throw ValidationError("the handshake stalled") }
            sink.sent.removeFirst()
            var buffer = message + [UInt8](repeating: 0, count: 64)
            _ = buffer.withUnsafeMutableBytes { raw in
                device.decapsulate(raw, length: message.count, from: from, now: now, sink: &sink)
            }
        }
        writePacket(0)
        guard b.peers.first?.lastHandshakeUnixNanoseconds ?? 0 > 0 else {
            throw ValidationError("the handshake did not complete")
        }
    }

    /// The first slot of batch `number`'s set.
    private func first(_ number: Int) -> Int { (number % Self.depth) * batch }

    /// Whether batch `number` was prepared and not yet delivered, so a step applies to it.
    private func inFlight(_ number: Int) -> Bool { number >= delivered && number < issued }

    /// The round being planned or run, and what its tasks do: set by `plan` between rounds,
    /// read by the tasks.
    private var round = 0
    private var issuing = false
    private var now = Instant(monotonic: 0, unixNanoseconds: 0)
    private var sealing: Int?
    private var opening: Int?
    private var kinds = 0

    /// Plans round `round`, which seals batch `round` and opens batch `round - 2` on the workers
    /// while task 0 delivers batch `round - 3`, hands over batch `round - 1` and, when `issuing`,
    /// prepares batch `round + 1` in the slots batch `round - 3` leaves. Returns its task count.
    func plan(_ round: Int, issuing: Bool) -> Int {
        (self.round, self.issuing, now) = (round, issuing, currentInstant())
        // Decided before the tasks start: task 0 changes `issued` and `delivered`.
        sealing = inFlight(round) ? first(round) : nil
        opening = inFlight(round - 2) ? first(round - 2) : nil
        // Seal and open chunks alternate, so that chunk c of a set is sealed and, two rounds
        // later, opened by the same worker (`CryptoWorkers` keeps task numbers on workers).
        kinds = (sealing == nil ? 0 : 1) + (opening == nil ? 0 : 1)
        return 1 + (batch + Self.chunk - 1) / Self.chunk * kinds
    }

    /// Task `task` of the round planned: 0 is every device call, the others a chunk of the
    /// sealing or the opening batch.
    func runTask(_ task: Int, worker: Int) {
        guard task > 0 else {
            deviceSteps(round, issuing: issuing, now: now)
            return
        }
        let chunk = (task - 1) / kinds
        if let sealing, opening == nil || (task - 1) % kinds == 0 {
            for index in span(sealing, chunk: chunk) {
                // Moved out and back, not copied: a copy retains the keypair.
                let ticket = (sealTickets + index).move()
                lengths[index] = Device.seal(slot(index), datagramAt: Device.sealingRoom, ticket)
                (sealTickets + index).initialize(to: consume ticket)
            }
        } else if let opening {
            for index in span(opening, chunk: chunk) {
                let ticket = (openTickets + index).move()
                opened[index] = Device.open(
                    slot(index), datagramAt: Device.sealingRoom, ticket, scratch: scratch[worker])
                (openTickets + index).initialize(to: consume ticket)
                intact[index] = opened[index] != nil && isIntact(index)
            }
        }
    }

    /// The slots of chunk `chunk` of the batch whose set starts at `first`.
    private func span(_ first: Int, chunk: Int) -> Range<Int> {
        (first + chunk * Self.chunk)..<(first + min(batch, (chunk + 1) * Self.chunk))
    }

    /// Task 0 of round `round`: every device call of the round, each device's in batch order.
    private func deviceSteps(_ round: Int, issuing: Bool, now: Instant) {
        if inFlight(round - 3) { deliver(round - 3, now: now) }
        if inFlight(round - 1) { handOver(round - 1, now: now) }
        if issuing && failure == nil && issued == round + 1 { prepare(round + 1, now: now) }
        sink.sent.removeAll(keepingCapacity: true)
    }

    /// A's `prepareSend` for each packet of batch `number`: route and counter.
    private func prepare(_ number: Int, now: Instant) {
        let first = first(number)
        for index in first..<(first + batch) {
            guard case .seal(let ticket) = a.prepareSend(datagram(index), packetLength: size, now: now, sink: &sink)
            else {
                failure = "a packet was not cleared to send"
                return
            }
            Self.store(ticket, at: index, in: sealTickets, filled: &sealFilled)
        }
        issued = number + 1
    }

    /// A's `completeSend` and B's `prepareReceive` for each sealed packet of batch `number`.
    private func handOver(_ number: Int, now: Instant) {
        let first = first(number)
        for index in first..<(first + batch) {
            a.completeSend(sealTickets[index], datagramLength: lengths[index], now: now, sink: &sink)
        }
        for index in first..<(first + batch) {
            let view = UnsafeMutableRawBufferPointer(rebasing: datagram(index)[0..<lengths[index]])
            guard
                case .open(let ticket) = b.prepareReceive(
                    view, length: lengths[index], from: aEndpoint, now: now, sink: &sink)
            else {
                failure = "a sealed packet was not taken for opening"
                return
            }
            Self.store(ticket, at: index, in: openTickets, filled: &openFilled)
        }
    }

    /// Puts `ticket` in `tickets[index]`, which is initialized when below `filled` (the first
    /// batches fill the slots in order).
    private static func store<Ticket>(
        _ ticket: Ticket, at index: Int, in tickets: UnsafeMutablePointer<Ticket>, filled: inout Int
    ) {
        if index < filled {
            tickets[index] = ticket
        } else {
            (tickets + index).initialize(to: ticket)
            filled = index + 1
        }
    }

    /// B's `completeReceive` for each opened packet of batch `number`: each must be delivered
    /// whole, as it was sent.
    private func deliver(_ number: Int, now: Instant) {
        let first = first(number)
        for index in first..<(first + batch) {
            let view = UnsafeMutableRawBufferPointer(rebasing: datagram(index)[0..<lengths[index]])
            let action = b.completeReceive(
                view, openTickets[index], plaintextLength: opened[index], from: aEndpoint, now: now, sink: &sink)
            guard action == .deliver(offset: Device.headroom, length: size), intact[index] else {
                failure = "a packet was not delivered intact"
                return
            }
        }
        delivered = number + 1
    }
}

/// What the devices send on their own during the bench: the handshake, and nothing after it.
private struct HandshakeSink: DatagramSink {
    var sent: [[UInt8]] = []

    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        sent.append(Array(datagram))
    }
}
