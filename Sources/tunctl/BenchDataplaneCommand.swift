import ArgumentParser
import Glibc
import TunnelCore
import TunnelCrypto
import TunnelIO

/// The data path without the kernel: synthetic IPv4 packets from one device to another through
/// the production steps, batch by batch: `prepareSend` (route, counter), `Device.seal` on the
/// workers, `completeSend`; then `prepareReceive`, `Device.open` on the workers, and
/// `completeReceive` (replay check, source check) in order. Every packet must come out
/// delivered and intact, or the command fails. Shows how the crypto scales with
/// `CryptoWorkers`; wall-clock time, so a busy machine lowers the figure.
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
        var packets = 0
        while elapsed < limit {
            guard pipeline.runBatch() else {
                throw ValidationError("a packet was not delivered intact after \(packets) packets")
            }
            packets += batch
            elapsed = currentInstant().monotonic - start
        }
        let wall = Double(elapsed) / 1e9
        let rate = Double(packets) / wall
        print(
            "{\"workers\":\(workers),\"size\":\(size),\"batch\":\(batch),\"packets\":\(packets),"
                + "\"seconds\":\(wall),\"packets_per_second\":\(rate),"
                + "\"gbit_per_second\":\(rate * Double(size) * 8 / 1e9)}")
    }
}

/// Two devices with a session from A to B, and one batch of send slots reused for every round.
/// Not Sendable: one thread drives it; only `CryptoWorkers.forEach` shares a batch, item by item.
private final class DataplanePipeline {
    let a: Device
    let b: Device
    let aEndpoint = Endpoint(address: IPAddress("198.18.0.1")!, port: 51820)
    let bEndpoint = Endpoint(address: IPAddress("198.18.0.2")!, port: 51820)
    let size: Int
    let batch: Int
    let workers: CryptoWorkers
    let slotSize: Int
    let slots: UnsafeMutableRawBufferPointer
    let sealTickets: UnsafeMutablePointer<SealTicket?>
    let openTickets: UnsafeMutablePointer<OpenTicket?>
    let lengths: UnsafeMutableBufferPointer<Int>
    let opened: UnsafeMutableBufferPointer<Int?>
    let scratch: [UnsafeMutableRawBufferPointer]
    var sink = HandshakeSink()

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

        slotSize = (Device.sealingRoom + Device.sealingSlotSize(mtu: mtu) + 63) & ~63
        slots = .allocate(byteCount: slotSize * batch, alignment: 64)
        slots.initializeMemory(as: UInt8.self, repeating: 0)
        sealTickets = .allocate(capacity: batch)
        sealTickets.initialize(repeating: nil, count: batch)
        openTickets = .allocate(capacity: batch)
        openTickets.initialize(repeating: nil, count: batch)
        lengths = .allocate(capacity: batch)
        lengths.initialize(repeating: 0)
        opened = .allocate(capacity: batch)
        opened.initialize(repeating: nil)
        scratch = (0..<workers.count).map { _ in
            UnsafeMutableRawBufferPointer.allocate(byteCount: Device.openingScratchSize, alignment: 64)
        }
        for item in 0..<batch { writePacket(item) }
        try handshake()
    }

    func release() {
        slots.deallocate()
        sealTickets.deinitialize(count: batch)
        sealTickets.deallocate()
        openTickets.deinitialize(count: batch)
        openTickets.deallocate()
        lengths.deallocate()
        opened.deallocate()
        for area in scratch { area.deallocate() }
    }

    private func slot(_ item: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: slots[(item * slotSize)..<((item + 1) * slotSize)])
    }

    /// The datagram's view of a slot: behind the sealing room, as the tunnel's send slots are.
    private func datagram(_ item: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: slot(item)[Device.sealingRoom...])
    }

    /// An IPv4 packet 198.18.1.1 → 198.18.1.2 (UDP, payload the item's number) at the packet's
    /// place in the slot; opening in place puts it back there, so it is written once.
    private func writePacket(_ item: Int) {
        let packet = UnsafeMutableRawBufferPointer(rebasing: datagram(item)[Device.headroom..<(Device.headroom + size)])
        packet.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: item))
        let header: [UInt8] = [
            0x45, 0, UInt8(size >> 8), UInt8(size & 0xff), 0, 0, 0x40, 0, 64, 17, 0, 0,
            198, 18, 1, 1, 198, 18, 1, 2,
        ]
        for (offset, byte) in header.enumerated() { packet[offset] = byte }
    }

    /// The packet at `item` after a round: its payload byte must still be the item's.
    private func isIntact(_ item: Int) -> Bool {
        let packet = datagram(item)
        return packet[Device.headroom + size - 1] == UInt8(truncatingIfNeeded: item)
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

    /// One batch A → B. False when any packet was not delivered intact.
    func runBatch() -> Bool {
        let now = currentInstant()
        for item in 0..<batch {
            guard case .seal(let ticket) = a.prepareSend(datagram(item), packetLength: size, now: now, sink: &sink)
            else { return false }
            sealTickets[item] = ticket
        }
        workers.forEach(batch) { item, _ in
            lengths[item] = Device.seal(slot(item), datagramAt: Device.sealingRoom, sealTickets[item]!)
        }
        for item in 0..<batch {
            a.completeSend(sealTickets[item]!, datagramLength: lengths[item], now: now, sink: &sink)
        }

        for item in 0..<batch {
            let view = UnsafeMutableRawBufferPointer(rebasing: datagram(item)[0..<lengths[item]])
            guard
                case .open(let ticket) = b.prepareReceive(
                    view, length: lengths[item], from: aEndpoint, now: now, sink: &sink)
            else { return false }
            openTickets[item] = ticket
        }
        workers.forEach(batch) { item, worker in
            opened[item] = Device.open(
                slot(item), datagramAt: Device.sealingRoom, openTickets[item]!, scratch: scratch[worker])
        }
        var intact = true
        for item in 0..<batch {
            let view = UnsafeMutableRawBufferPointer(rebasing: datagram(item)[0..<lengths[item]])
            let action = b.completeReceive(
                view, openTickets[item]!, plaintextLength: opened[item], from: aEndpoint, now: now, sink: &sink)
            guard case .deliver = action, isIntact(item) else {
                intact = false
                continue
            }
        }
        sink.sent.removeAll(keepingCapacity: true)
        return intact
    }
}

/// What the devices send on their own during the bench: the handshake, and nothing after it.
private struct HandshakeSink: DatagramSink {
    var sent: [[UInt8]] = []

    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        sent.append(Array(datagram))
    }
}
