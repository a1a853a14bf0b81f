import TunnelCore
import TunnelCrypto
import TunnelTestSupport
import XCTest

/// Proves the steady-state data path allocates nothing: seal on one device, open on the other,
/// in caller-owned buffers, counted by the process-wide allocation counter; both through
/// `encapsulate`/`decapsulate` and through the three steps the tunnel runs, with its rooms.
final class AllocationTests: XCTestCase {
    /// Drops whatever the core sends on its own; holds nothing, so sending allocates nothing.
    struct DiscardingSink: DatagramSink {
        var sent = 0
        mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) { sent += 1 }
    }

    override func setUpWithError() throws {
        try XCTSkipUnless(
            allocationCountingAvailable, "a sanitizer owns the allocator; the plain `swift test` counts allocations")
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
        // The tunnel's own three steps each way: a send slot with the sealing room, a receive
        // region with the opening room around the datagram, and one scratch for the open.
        let slot = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Device.sealingRoom + Device.sealingSlotSize(mtu: a.device.mtu), alignment: 16)
        let region = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Device.openingRoom + size + Device.openingTailRoom, alignment: 16)
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Device.openingScratchSize, alignment: 16)
        defer {
            slot.deallocate()
            region.deallocate()
            scratch.deallocate()
        }
        region.initializeMemory(as: UInt8.self, repeating: 0)
        func roundTripInSteps() {
            let datagram = UnsafeMutableRawBufferPointer(rebasing: slot[Device.sealingRoom...])
            packet.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: datagram[Device.headroom...]).copyMemory(from: $0)
            }
            guard
                case .seal(let ticket) = a.device.prepareSend(
                    datagram, packetLength: packet.count, now: now, sink: &sink)
            else { return }
            let length = Device.seal(slot, datagramAt: Device.sealingRoom, ticket)
            a.device.completeSend(ticket, datagramLength: length, now: now, sink: &sink)
            let offset = Device.openingRoom
            let received = UnsafeMutableRawBufferPointer(rebasing: region[offset..<(offset + length)])
            received.copyMemory(from: UnsafeRawBufferPointer(rebasing: datagram[0..<length]))
            let plan = b.device.prepareReceive(received, length: length, from: a.endpoint, now: now, sink: &sink)
            guard case .open(let opening) = plan else { return }
            let opened = Device.open(region, datagramAt: offset, opening, scratch: scratch)
            let inbound = b.device.completeReceive(
                received, opening, plaintextLength: opened, from: a.endpoint, now: now, sink: &sink)
            if case .deliver = inbound { delivered += 1 }
        }
        for _ in 0..<100 {  // warm-up: lazily created runtime state
            roundTrip()
            roundTripInSteps()
        }
        let before = allocationCount()
        for _ in 0..<10_000 {
            roundTrip()
            roundTripInSteps()
        }
        let allocations = allocationCount() - before
        XCTAssertEqual(delivered, 20_200, "every round trip must deliver, or the loop measured nothing")
        XCTAssertEqual(allocations, 0, "heap allocations on the steady-state seal/open paths")
    }
}
