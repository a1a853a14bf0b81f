import TunnelCrypto

/// A token bucket for synthetic "packet too big" messages, device-wide: a burst of
/// `burst`, then `perSecond` (a flow needs one to lower its MSS; the rest are dropped silently).
struct TooBigBudget {
    static let burst: UInt64 = 20
    static let perSecond: UInt64 = 50
    private var tokens: UInt64 = TooBigBudget.burst
    private var refilledAt: UInt64 = 0

    mutating func take(now: UInt64) -> Bool {
        let interval = Protocol.nanosecondsPerSecond / TooBigBudget.perSecond
        if now > refilledAt {
            let earned = (now - refilledAt) / interval
            if earned > 0 {
                tokens = min(TooBigBudget.burst, tokens + earned)
                refilledAt = earned >= TooBigBudget.burst ? now : refilledAt + earned * interval
            }
        }
        guard tokens > 0 else { return false }
        tokens -= 1
        return true
    }
}

/// Path MTU discovery (issue 17): the probes and their answers, the timer step and the refusal of
/// packets longer than the path. The state is each peer's `PathMTU`; owned as the device is.
extension Device {
    /// Whether `packet` (longer than the peer's `limit`) is refused: nil lets it go (an IPv4
    /// packet without DF, which the sender allows to be cut, or an IPv6 packet within IPv6's
    /// minimum MTU, which no host can go below), else `.tooBig` (the caller tells the sender) or,
    /// once the budget is spent, a plain drop. Counted as `pathMTUExceeded` either way.
    func refuseTooBig(_ packet: UnsafeRawBufferPointer, limit: Int, peer: Peer, now: Instant) -> OutboundAction? {
        guard let first = packet.firstByte else { return nil }
        let isV6 = first >> 4 == 6
        switch first >> 4 {
        case 4:
            guard packet.count >= 20, packet[6] & 0x40 != 0 else { return nil }
        case 6:
            guard packet.count > Protocol.minimumMTU else { return nil }
        default:
            return nil
        }
        let refused: OutboundAction = drop(.pathMTUExceeded, peer)
        guard tooBigBudget.take(now: now.monotonic) else { return refused }
        // IPv6 names no MTU below its minimum (RFC 8201 §4); the host would raise it anyway.
        return .tooBig(mtu: isV6 ? max(limit, Protocol.minimumMTU) : limit)
    }

    /// A probe or a probe's answer from `peer` (authenticated, its timers already run).
    func receivedProbe<Sink: DatagramSink>(
        _ probe: PathMTUProbe.Kind, from peer: Peer, now: Instant, sink: inout Sink
    ) {
        switch probe {
        case .ack(let size):
            // The next probe at once: the search takes round trips, not timer ticks.
            peer.pathMTU.acknowledged(size: size, now: now.monotonic)
            stepPathMTU(peer, now: now, sink: &sink)
        case .probe(let size):
            // Answer at once, with the size that arrived: the prober learns the path, and peers
            // that are not tunctl never send probes, so never get an answer they cannot read.
            guard let endpoint = peer.endpoint, let keypair = peer.sendingKeypair(at: now.monotonic) else { return }
            PathMTUProbe.writeAck(
                size: size,
                into: UnsafeMutableRawBufferPointer(
                    rebasing: scratch[Device.headroom..<(Device.headroom + PathMTUProbe.ackLength)]))
            let length = Transport.seal(scratch, plaintextLength: PathMTUProbe.ackLength, mtu: mtu, keypair: keypair)
            sink.send(UnsafeRawBufferPointer(rebasing: scratch[0..<length]), to: endpoint)
            // Counted, but no timer's event: the WireGuard timers run as if probing did not exist.
            peer.txBytes &+= UInt64(length)
        }
    }

    /// The search's timer: sends the probe `PathMTU.tick` asks for (a zero plaintext of its size)
    /// and re-arms. Without a session it stops; the next handshake re-arms it.
    func stepPathMTU<Sink: DatagramSink>(_ peer: Peer, now: Instant, sink: inout Sink) {
        guard let endpoint = peer.endpoint, let keypair = peer.sendingKeypair(at: now.monotonic) else { return }
        let ipv4 = endpoint.address.isV4
        // The interface MTU, or less where a UDP datagram cannot carry that much.
        let datagram = ipv4 ? Protocol.maximumDatagramV4 : Protocol.maximumDatagramV6
        let carriable =
            (datagram - Device.headroom - MessageSize.tag) / Protocol.paddingMultiple * Protocol.paddingMultiple
        let maximum = max(min(mtu, carriable), PathMTU.base(ipv4: ipv4))
        if peer.pathMTU.base != PathMTU.base(ipv4: ipv4) || peer.pathMTU.maximum != maximum {
            peer.pathMTU.reset(ipv4: ipv4, maximum: maximum, now: now.monotonic)
        }
        if let size = peer.pathMTU.tick(now: now.monotonic), size + Device.headroom + Device.tailroom <= scratch.count {
            let body = UnsafeMutableRawBufferPointer(rebasing: scratch[Device.headroom..<(Device.headroom + size)])
            body.initializeMemory(as: UInt8.self, repeating: 0)
            let length = Transport.seal(scratch, plaintextLength: size, mtu: mtu, keypair: keypair)
            sink.send(UnsafeRawBufferPointer(rebasing: scratch[0..<length]), to: endpoint)
            // Counted, but no timer's event: a probe may be lost by design, so it neither stands
            // for the keepalive we owe nor expects an answer that would start a handshake.
            peer.txBytes &+= UInt64(length)
        }
        armPathMTU(peer)
    }

    /// Arms the peer's path MTU timer at the search's deadline, if that is earlier than armed.
    func armPathMTU(_ peer: Peer) {
        guard let deadline = peer.pathMTU.deadline else { return }
        if let armed = peer.pathMTUAt, armed <= deadline { return }
        peer.pathMTUAt = deadline
    }
}
