import TunnelCore
import TunnelCrypto

/// A fake clock for the core: both clocks advance together, only when told to.
public struct FakeClock: Sendable {
    public private(set) var now: Instant

    public init(unixSeconds: UInt64 = 1_700_000_000) {
        now = Instant(
            monotonic: 1_000 * Protocol.nanosecondsPerSecond,
            unixNanoseconds: unixSeconds * Protocol.nanosecondsPerSecond)
    }

    public mutating func advance(seconds: Double) {
        now = now.advanced(by: UInt64(seconds * Double(Protocol.nanosecondsPerSecond)))
    }
}

/// One datagram on the in-memory wire.
public struct WireDatagram: Sendable {
    public var bytes: [UInt8]
    public var from: Endpoint
    public var to: Endpoint

    public init(bytes: [UInt8], from: Endpoint, to: Endpoint) {
        self.bytes = bytes
        self.from = from
        self.to = to
    }

    public var messageType: UInt32? {
        bytes.count >= 4
            ? UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24 : nil
    }
}

/// Collects what a device sends on its own (handshakes, keepalives, flushed packets).
struct WireSink: DatagramSink {
    let from: Endpoint
    var sent: [WireDatagram] = []

    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        sent.append(WireDatagram(bytes: Array(datagram), from: from, to: endpoint))
    }
}

/// A node: a Device plus what reached its TUN.
public final class Node {
    public let device: Device
    public let endpoint: Endpoint
    public var delivered: [[UInt8]] = []

    init(device: Device, endpoint: Endpoint) {
        self.device = device
        self.endpoint = endpoint
    }
}

/// Devices joined by an in-memory UDP wire, driven by a fake clock: no root, no sockets, no sleeps.
/// Two peers over this are the seam test of the protocol core (anchor: wireguard-go `tun/tuntest`).
public final class InMemoryNetwork {
    public var clock = FakeClock()
    public private(set) var nodes: [Node] = []
    /// Datagrams sent and not yet delivered, in order.
    public var wire: [WireDatagram] = []
    /// Every datagram ever put on the wire, for assertions.
    public private(set) var log: [WireDatagram] = []
    /// Decides per datagram whether it is delivered (true) or lost (false).
    public var filter: (WireDatagram) -> Bool = { _ in true }

    public init() {}

    /// Adds a device with a fresh key at `198.18.0.N:51820`.
    @discardableResult
    public func addNode(privateKey: PrivateKey = .generate(), mtu: Int = Protocol.defaultMTU) -> Node {
        let address = IPAddress.v4(0xC612_0000 | UInt32(nodes.count + 1))  // 198.18.0.N
        let node = Node(
            device: Device(privateKey: privateKey, mtu: mtu), endpoint: Endpoint(address: address, port: 51820))
        nodes.append(node)
        return node
    }

    /// Makes `a` and `b` peers of each other with the given AllowedIPs (and optional PSK).
    public func connect(
        _ a: Node, allowing aAllowed: [IPPrefix], _ b: Node, allowing bAllowed: [IPPrefix],
        presharedKey: PresharedKey? = nil
    ) {
        let aPub = a.device.publicKey!
        let bPub = b.device.publicKey!
        let peerOfA = a.device.addPeer(bPub)!
        let peerOfB = b.device.addPeer(aPub)!
        a.device.setEndpoint(b.endpoint, for: peerOfA)
        b.device.setEndpoint(a.endpoint, for: peerOfB)
        for prefix in bAllowed { a.device.addAllowedIP(prefix, for: peerOfA) }
        for prefix in aAllowed { b.device.addAllowedIP(prefix, for: peerOfB) }
        if let presharedKey {
            a.device.setPresharedKey(presharedKey, for: peerOfA)
            b.device.setPresharedKey(presharedKey, for: peerOfB)
        }
    }

    /// The packet `packet` enters `node`'s TUN: encapsulated; the datagram (if any) goes on the wire.
    /// `now` (the clock's by default) may be an instant read earlier, as a batching thread's is.
    @discardableResult
    public func inject(_ packet: [UInt8], at node: Node, now: Instant? = nil) -> OutboundAction {
        var buffer = [UInt8](repeating: 0, count: Device.headroom + packet.count + Device.tailroom)
        buffer.replaceSubrange(Device.headroom..<(Device.headroom + packet.count), with: packet)
        var sink = WireSink(from: node.endpoint)
        let action = buffer.withUnsafeMutableBytes { raw in
            let action = node.device.encapsulate(raw, packetLength: packet.count, now: now ?? clock.now, sink: &sink)
            if case .send(let length, let endpoint) = action {
                sink.sent.append(WireDatagram(bytes: Array(raw[0..<length]), from: node.endpoint, to: endpoint))
            }
            return action
        }
        put(sink.sent)
        return action
    }

    /// Delivers one datagram to whichever node owns its destination; returns the node's action.
    @discardableResult
    public func deliver(_ datagram: WireDatagram) -> InboundAction? {
        guard let node = nodes.first(where: { $0.endpoint == datagram.to }) else { return nil }
        var buffer = datagram.bytes + [UInt8](repeating: 0, count: 64)
        var sink = WireSink(from: node.endpoint)
        let action = buffer.withUnsafeMutableBytes { raw in
            let action = node.device.decapsulate(
                raw, length: datagram.bytes.count, from: datagram.from, now: clock.now, sink: &sink)
            if case .deliver(let offset, let length) = action {
                node.delivered.append(Array(raw[offset..<(offset + length)]))
            }
            return action
        }
        put(sink.sent)
        return action
    }

    /// Delivers everything on the wire, including replies, until it is quiet (bounded).
    public func pump(limit: Int = 10_000) {
        var steps = 0
        while !wire.isEmpty && steps < limit {
            let next = wire.removeFirst()
            steps += 1
            if filter(next) { deliver(next) }
        }
    }

    /// Advances the clock and runs every node's timers; what they send goes on the wire.
    public func advance(seconds: Double) {
        clock.advance(seconds: seconds)
        for node in nodes {
            var sink = WireSink(from: node.endpoint)
            node.device.tick(now: clock.now, sink: &sink)
            put(sink.sent)
        }
    }

    /// Advances in steps of `step` seconds, pumping the wire after each, for `seconds` in all.
    public func run(seconds: Double, step: Double = 0.1) {
        var elapsed = 0.0
        while elapsed < seconds {
            advance(seconds: step)
            pump()
            elapsed += step
        }
    }

    private func put(_ datagrams: [WireDatagram]) {
        wire.append(contentsOf: datagrams)
        log.append(contentsOf: datagrams)
    }
}
