import TunnelCore
import TunnelCrypto
import TunnelTestSupport
import XCTest

/// Proves the steady-state data path allocates nothing: seal on one device, open on the other,
/// in caller-owned buffers, counted by the process-wide allocation counter.
final class AllocationTests: XCTestCase {
    /// Drops whatever the core sends on its own; holds nothing, so sending allocates nothing.
    struct DiscardingSink: DatagramSink {
        var sent = 0
        mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) { sent += 1 }
    }

    func testTheCounterSeesSwiftAllocations() {
        final class Probe { var value = 0 }
        let before = allocationCount()
        let probe = Probe()
        probe.value = 1
        withExtendedLifetime(probe) {}
        XCTAssertGreaterThan(
            allocationCount(), before, "the counter must see allocations, or the next test proves nothing")
    }

    func testSealAndOpenAllocateNothingInSteadyState() {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let b = network.addNode()
        let aAddress = IPAddress("198.18.1.1")!
        let bAddress = IPAddress("198.18.1.2")!
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        // Handshake, and key confirmation both ways.
        let request = PacketBuilder.icmpEcho(source: aAddress, destination: bAddress, identifier: 1, sequence: 1)
        network.inject(request, at: a)
        network.pump()
        let reply = PacketBuilder.icmpEcho(
            source: bAddress, destination: aAddress, identifier: 1, sequence: 1, reply: true)
        network.inject(reply, at: b)
        network.pump()
        XCTAssertEqual(b.delivered.count, 1)
        XCTAssertEqual(a.delivered.count, 1)

        let packet = PacketBuilder.udp(
            source: aAddress, sourcePort: 5000, destination: bAddress, destinationPort: 6000,
            payload: [UInt8](repeating: 0x42, count: 1300))
        let size = Device.headroom + packet.count + Device.tailroom
        let outgoing = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        let incoming = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer {
            outgoing.deallocate()
            incoming.deallocate()
        }
        var sink = DiscardingSink()
        let now = network.clock.now
        var delivered = 0
        func roundTrip() {
            packet.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: outgoing[Device.headroom...]).copyMemory(from: $0)
            }
            let action = a.device.encapsulate(outgoing, packetLength: packet.count, now: now, sink: &sink)
            guard case .send(let length, _) = action else { return }
            incoming.copyMemory(from: UnsafeRawBufferPointer(rebasing: outgoing[0..<length]))
            let inbound = b.device.decapsulate(incoming, length: length, from: a.endpoint, now: now, sink: &sink)
            if case .deliver = inbound { delivered += 1 }
        }
        for _ in 0..<100 { roundTrip() }  // warm-up: lazily created runtime state
        let before = allocationCount()
        for _ in 0..<10_000 { roundTrip() }
        let allocations = allocationCount() - before
        XCTAssertEqual(delivered, 10_100, "every round trip must deliver, or the loop measured nothing")
        XCTAssertEqual(allocations, 0, "heap allocations on the steady-state seal/open path")
    }
}
