import TunnelCrypto
import TunnelTestSupport
import XCTest

@testable import TunnelCore

/// Any MTU from 1280 to 65535: packets up to the MTU cross, and a packet that cannot be carried
/// (longer than the buffer it was read into, or sealed into a datagram longer than UDP allows)
/// is dropped and counted as `packetTooLarge`, never a trap.
final class MTUTests: XCTestCase {
    let aAddress = IPAddress("198.18.1.1")!
    let bAddress = IPAddress("198.18.1.2")!

    /// Two nodes at `mtu` with a session: A's first ping completed the handshake and reached B.
    private func sessionPair(
        mtu: Int, file: StaticString = #filePath, line: UInt = #line
    ) -> (InMemoryNetwork, Node, Node) {
        let network = InMemoryNetwork()
        let a = network.addNode(mtu: mtu)
        let b = network.addNode(mtu: mtu)
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        network.inject(packet(length: 84), at: a)
        network.pump()
        XCTAssertEqual(b.delivered.count, 1, "the handshake and first packet", file: file, line: line)
        b.delivered.removeAll()
        return (network, a, b)
    }

    /// An ICMP echo request from A to B, `length` bytes in all (IPv4 header 20 + ICMP 8 + payload).
    private func packet(length: Int) -> [UInt8] {
        let bytes = PacketBuilder.icmpEcho(
            source: aAddress, destination: bAddress, identifier: 7, sequence: 1,
            payload: [UInt8](repeating: 0x5a, count: length - 28))
        precondition(bytes.count == length)
        return bytes
    }

    private func drops(_ node: Node) -> UInt64 { node.device.drops[.packetTooLarge] }

    private func peerDrops(_ node: Node) -> UInt64 { node.device.peers.first?.drops[.packetTooLarge] ?? 0 }

    // MARK: Carried up to the limits

    /// At the smallest MTU a packet of exactly the MTU crosses, unpadded past it (1280 + 32).
    func testPacketOfTheMinimumMTUCrosses() {
        XCTAssertEqual(Protocol.minimumMTU, 1280)
        let (network, a, b) = sessionPair(mtu: Protocol.minimumMTU)
        for length in [1279, 1280] {
            let action = network.inject(packet(length: length), at: a)
            XCTAssertEqual(action, .send(length: 1280 + 32, to: b.endpoint), "a \(length)-byte packet")
        }
        network.pump()
        XCTAssertEqual(b.delivered.map(\.count), [1279, 1280])
        XCTAssertEqual(drops(a), 0)
    }

    /// At MTU 65535 over IPv4 the largest packet that fits a UDP datagram (65,507 bytes) is
    /// 65,472: padded to 65,472, sealed to 65,504. One byte more pads to 65,488 and seals to
    /// 65,520: dropped and counted, for the device and the peer, with nothing on the wire.
    func testAtTheMaximumMTUTheLargestCarriablePacketCrossesAndOneByteMoreIsDropped() {
        XCTAssertEqual(Protocol.maximumMTU, 65535)
        let (network, a, b) = sessionPair(mtu: Protocol.maximumMTU)
        let sent = network.log.count
        let fits = packet(length: 65472)
        XCTAssertEqual(network.inject(fits, at: a), .send(length: 65504, to: b.endpoint))
        network.pump()
        XCTAssertEqual(b.delivered, [fits])
        let afterFit = network.log.count

        for length in [65473, 65535] {
            XCTAssertEqual(network.inject(packet(length: length), at: a), .dropped(.packetTooLarge))
        }
        XCTAssertEqual(drops(a), 2)
        XCTAssertEqual(peerDrops(a), 2)
        XCTAssertEqual(network.log.count, afterFit, "a dropped packet sends nothing")
        XCTAssertGreaterThan(afterFit, sent)
        // The tunnel still works after the drops.
        XCTAssertEqual(network.inject(packet(length: 1500), at: a), .send(length: 1536, to: b.endpoint))
        network.pump()
        XCTAssertEqual(b.delivered.count, 2)
    }

    /// Without a session a packet too large to carry is dropped before it is staged: it starts
    /// no handshake and takes no place in the staged queue.
    func testTooLargeWithoutASessionIsDroppedNotStaged() {
        let network = InMemoryNetwork()
        let a = network.addNode(mtu: Protocol.maximumMTU)
        let b = network.addNode(mtu: Protocol.maximumMTU)
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        XCTAssertEqual(network.inject(packet(length: 65535), at: a), .dropped(.packetTooLarge))
        XCTAssertTrue(network.log.isEmpty, "no handshake for a packet that cannot be carried")
        XCTAssertEqual(a.device.peers.first?.staged.count, 0)
        XCTAssertEqual(drops(a), 1)
    }

    /// The datagram limit is the endpoint's family's: 65,507 bytes of UDP over IPv4 and 65,527
    /// over IPv6 (whose payload length excludes its own header).
    func testDatagramLimitFollowsTheEndpointFamily() {
        let v4 = Endpoint(address: IPAddress("192.0.2.1")!, port: 51820)
        let v6 = Endpoint(address: IPAddress("2001:db8::1")!, port: 51820)
        let mtu = Protocol.maximumMTU
        XCTAssertTrue(Device.fitsDatagram(packetLength: 65472, mtu: mtu, to: v4))
        XCTAssertFalse(Device.fitsDatagram(packetLength: 65473, mtu: mtu, to: v4))
        XCTAssertTrue(Device.fitsDatagram(packetLength: 65488, mtu: mtu, to: v6))
        XCTAssertFalse(Device.fitsDatagram(packetLength: 65489, mtu: mtu, to: v6))
        // An MTU of 65,473 pads a 65,473-byte packet no further: 65,505 bytes, which fits.
        XCTAssertTrue(Device.fitsDatagram(packetLength: 65473, mtu: 65473, to: v4))
        // Every packet at the default and at jumbo MTUs fits.
        XCTAssertTrue(Device.fitsDatagram(packetLength: 9000, mtu: 9000, to: v4))
        XCTAssertTrue(Device.fitsDatagram(packetLength: Protocol.defaultMTU, mtu: Protocol.defaultMTU, to: v6))
    }

    // MARK: Longer than the buffer it was read into

    /// A TUN read reports a packet's whole length even when the buffer cut it short (the MTU
    /// rose before the slots were re-sized): `prepareSend` drops it as too large, no trap.
    func testPacketLongerThanItsBufferIsDroppedAndCounted() {
        let (network, a, _) = sessionPair(mtu: Protocol.defaultMTU)
        let wire = network.log.count
        let bytes = packet(length: 1400)
        var buffer = [UInt8](repeating: 0, count: Device.headroom + bytes.count + Device.tailroom)
        buffer.replaceSubrange(Device.headroom..<(Device.headroom + bytes.count), with: bytes)
        var sink = CollectingSink()
        for claimed in [1401, 8000, 65535, -1] {
            let plan = buffer.withUnsafeMutableBytes {
                a.device.prepareSend($0, packetLength: claimed, now: network.clock.now, sink: &sink)
            }
            guard case .finished(.dropped(.packetTooLarge)) = plan else {
                return XCTFail("a claimed \(claimed)-byte packet in a 1400-byte buffer: \(plan)")
            }
        }
        XCTAssertEqual(drops(a), 4)
        XCTAssertEqual(a.device.drops.total, 4)
        XCTAssertTrue(sink.sent.isEmpty)
        XCTAssertEqual(network.log.count, wire)
        XCTAssertEqual(DropReason.packetTooLarge.description, "packet_too_large")
        // The exact fit still goes.
        let plan = buffer.withUnsafeMutableBytes {
            a.device.prepareSend($0, packetLength: 1400, now: network.clock.now, sink: &sink)
        }
        guard case .seal = plan else { return XCTFail("a 1400-byte packet that fits: \(plan)") }
    }

    /// A TUN read into too small a buffer cuts the packet short and reports only what it copied;
    /// the I/O layer checks a read that filled its buffer against the IP header's length.
    func testCutShortReadIsRecognisedByItsIPHeader() {
        let v4 = packet(length: 8028)
        let v6 = PacketBuilder.icmpEcho(
            source: IPAddress("2001:db8:1::1")!, destination: IPAddress("2001:db8:1::2")!, identifier: 7,
            sequence: 1, payload: [UInt8](repeating: 0x5a, count: 8000))
        for whole in [v4, v6] {
            whole.withUnsafeBytes { XCTAssertFalse(Device.isTruncated($0), "the whole packet") }
            Array(whole[0..<1500]).withUnsafeBytes { XCTAssertTrue(Device.isTruncated($0), "its first 1500 bytes") }
        }
        // Not an IP packet at all: not taken for a truncated one (routing drops it).
        [UInt8](repeating: 0, count: 1500).withUnsafeBytes { XCTAssertFalse(Device.isTruncated($0)) }
    }

    // MARK: The I/O layer's slots at large MTUs

    /// A send slot sized by `sealingSlotSize` for MTU 65535, with `sealingRoom` in front, takes
    /// the largest carriable packet: sealed in place (the copy-free path) and opened by the peer.
    func testSlotSizedForTheMaximumMTUSealsInPlace() {
        let (network, a, b) = sessionPair(mtu: Protocol.maximumMTU)
        let bytes = packet(length: 65472)
        let slotSize = Device.sealingRoom + Device.sealingSlotSize(mtu: Protocol.maximumMTU)
        XCTAssertGreaterThanOrEqual(
            Device.sealingSlotSize(mtu: Protocol.maximumMTU), Device.headroom + 65535 + Device.tailroom)
        var slot = [UInt8](repeating: 0, count: slotSize)
        let packetStart = Device.sealingRoom + Device.headroom
        slot.replaceSubrange(packetStart..<(packetStart + bytes.count), with: bytes)
        var sink = CollectingSink()
        let datagram: [UInt8]? = slot.withUnsafeMutableBytes { region in
            let buffer = UnsafeMutableRawBufferPointer(rebasing: region[Device.sealingRoom...])
            let plan = a.device.prepareSend(buffer, packetLength: bytes.count, now: network.clock.now, sink: &sink)
            guard case .seal(let ticket) = plan else { return nil }
            let length = Device.seal(region, datagramAt: Device.sealingRoom, ticket)
            a.device.completeSend(ticket, datagramLength: length, now: network.clock.now, sink: &sink)
            return Array(region[Device.sealingRoom..<(Device.sealingRoom + length)])
        }
        guard let datagram else { return XCTFail("the packet was not sealed") }
        XCTAssertEqual(datagram.count, 65504)
        let action = network.deliver(WireDatagram(bytes: datagram, from: a.endpoint, to: b.endpoint))
        XCTAssertEqual(action, .deliver(offset: Device.headroom, length: bytes.count))
        XCTAssertEqual(b.delivered, [bytes])
    }

    /// The MTU changed at run time (what `Tunnel.linkMTUDidChange` does to the engine): packets
    /// up to the new MTU cross at once, padded for it.
    func testMTURaisedAtRunTimeCarriesJumboPackets() {
        let (network, a, b) = sessionPair(mtu: Protocol.defaultMTU)
        a.device.mtu = 9000
        b.device.mtu = 9000
        let jumbo = packet(length: 8028)
        // 8028 pads to 8032; header and tag make 8064.
        XCTAssertEqual(network.inject(jumbo, at: a), .send(length: 8064, to: b.endpoint))
        network.pump()
        XCTAssertEqual(b.delivered, [jumbo])
        XCTAssertEqual(drops(a), 0)
    }

    // MARK: The config's range

    /// `MTU =` takes 1280 through 65535; outside that, a one-line error naming file, line and
    /// field and saying what to do.
    func testConfigMTUBoundaries() throws {
        let interface = Fixture.interface
        for good in [1280, 1420, 9000, 65535] {
            let config = try TunnelConfig.parse(interface + "MTU = \(good)\n", fileName: "wg0.conf")
            XCTAssertEqual(config.interface.mtu, good)
        }
        for bad in ["1279", "576", "0", "65536", "-1", "nine"] {
            XCTAssertThrowsError(try TunnelConfig.parse(interface + "MTU = \(bad)\n", fileName: "wg0.conf")) {
                let message = String(describing: $0)
                let expected = "is not an MTU between 1280 and 65535 (1420 suits most links)"
                XCTAssertEqual(message, "wg0.conf:3: [Interface] MTU: \"\(bad)\" \(expected)")
                XCTAssertFalse(message.contains("\n"))
            }
        }
    }
}

/// Collects what the device sends on its own.
private struct CollectingSink: DatagramSink {
    var sent: [[UInt8]] = []

    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        sent.append(Array(datagram))
    }
}
