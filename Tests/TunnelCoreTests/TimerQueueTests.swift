import Testing
import TunnelCrypto
import TunnelTestSupport

@testable import TunnelCore

/// Timers by deadline (issue 16): `tick` visits only the peers whose timers are due, and runs
/// them at the same fake-clock instants as the scan of every peer it replaced.
@Suite struct TimerQueueTests {
    /// A public key made from `n` (no private key exists; fine for peers that never handshake).
    private func numberedKey(_ n: Int) -> PublicKey {
        let digits = Array("0123456789abcdef")
        var hex = String(repeating: "0", count: 56)
        for shift in stride(from: 28, through: 0, by: -4) { hex.append(digits[(n >> shift) & 0xF]) }
        return PublicKey(hex: hex)!
    }

    private struct CountingSink: DatagramSink {
        var sent = 0
        mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) { sent += 1 }
    }

    /// Collects what A's tick sends so the test can put it on the in-memory wire itself.
    private struct CollectingSink: DatagramSink {
        let from: Endpoint
        var sent: [WireDatagram] = []
        mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
            sent.append(WireDatagram(bytes: Array(datagram), from: from, to: endpoint))
        }
    }

    private static func fields(_ peer: Peer) -> [UInt64?] {
        [
            peer.retransmitHandshakeAt, peer.sendKeepaliveAt, peer.newHandshakeAt, peer.zeroKeyMaterialAt,
            peer.persistentKeepaliveAt,
        ]
    }

    @Test func tickWithTenThousandPeersVisitsOnlyTheDueOnes() throws {
        let device = Device(privateKey: PrivateKey.generate())
        var now = Instant(monotonic: 1_000 * Protocol.nanosecondsPerSecond, unixNanoseconds: 1_700_000_000_000_000_000)
        var sink = CountingSink()
        // 10,000 quiet peers with PersistentKeepalive but no endpoint: their first keepalive falls
        // due at once, finds nowhere to go, and after that nothing is armed.
        for n in 1...10_000 {
            let peer = try #require(device.addPeer(numberedKey(n)))
            device.setPersistentKeepalive(25, for: peer, now: now)
        }
        device.tick(now: now, sink: &sink)
        #expect(device.timerVisits == 10_000, "each keepalive set at start falls due once")
        #expect(sink.sent == 0)
        for _ in 0..<100 {
            now = now.advanced(by: 100_000_000)
            device.tick(now: now, sink: &sink)
        }
        #expect(device.timerVisits == 10_000, "100 more ticks over 10 s visit nobody: nothing is armed")
        #expect(device.timerLowerBound == nil)

        // Seven peers get an endpoint and a keepalive: only they are visited, when due.
        let busy = try (1...7).map { _ in try #require(device.addPeer(PrivateKey.generate().publicKey)) }
        for (n, peer) in busy.enumerated() {
            device.setEndpoint(Endpoint(address: IPAddress.v4(0xC612_0900 | UInt32(n + 1)), port: 51820), for: peer)
            device.setPersistentKeepalive(25, for: peer, now: now)
        }
        now = now.advanced(by: 1_000_000)
        device.tick(now: now, sink: &sink)
        #expect(device.timerVisits == 10_007, "the seven new keepalives, and nobody else")
        #expect(sink.sent == 7, "each brings a session up: one initiation each")
        // Nothing answers: each retries after REKEY_TIMEOUT plus jitter (5–5.33 s), not before.
        for _ in 0..<49 {
            now = now.advanced(by: 100_000_000)
            device.tick(now: now, sink: &sink)
        }
        #expect(device.timerVisits == 10_007, "4.9 s later the retries are not due yet")
        for _ in 0..<5 {
            now = now.advanced(by: 100_000_000)
            device.tick(now: now, sink: &sink)
        }
        #expect(device.timerVisits == 10_014, "by 5.4 s each of the seven retried once")
        #expect(sink.sent == 14)
        #expect(device.timerLowerBound != nil)
        #expect(device.timerLowerBound! <= device.nextDeadline!, "the bound is never later than a scan's")
    }

    @Test func removedPeersAreNeverVisitedAndTheQueueStaysBounded() throws {
        let device = Device(privateKey: PrivateKey.generate())
        var now = Instant(monotonic: 1_000 * Protocol.nanosecondsPerSecond, unixNanoseconds: 1_700_000_000_000_000_000)
        var sink = CountingSink()
        for round in 0..<20 {
            for n in 1...1_000 {
                let peer = try #require(device.addPeer(numberedKey(round * 1_000 + n)))
                device.setPersistentKeepalive(25, for: peer, now: now.advanced(by: 1_000_000_000))
            }
            // Armed a second from now, removed before it: never visited.
            device.removeAllPeers()
            now = now.advanced(by: 2_000_000_000)
            device.tick(now: now, sink: &sink)
        }
        #expect(device.timerVisits == 0)
        #expect(device.timerLowerBound == nil, "every stale entry was dropped when it surfaced")
    }

    /// A hub with a mix of peers (a keepalive session, a traffic-only session, an unreachable peer
    /// with a staged packet, unreachable keepalive peers, 1,000 quiet keepalive peers), run for
    /// 150 fake seconds in uneven steps with traffic in between. Before each of the hub's ticks
    /// the test scans every peer itself, as the old tick did: the peers with a timer due are
    /// exactly the ones the tick runs, a peer visited without a due timer is left untouched,
    /// and after the tick no peer has a due timer left.
    @Test func timersFireAtTheSameInstantsAsAScanOfEveryPeer() throws {
        let network = InMemoryNetwork()
        let hub = network.addNode()
        let keepaliveSession = network.addNode()
        let trafficSession = network.addNode()
        let unreachable = network.addNode()
        let hubAddress = IPAddress("198.18.1.1")!
        for (n, node) in [keepaliveSession, trafficSession, unreachable].enumerated() {
            network.connect(
                hub, allowing: [IPPrefix("198.18.1.1/32")!], node,
                allowing: [IPPrefix(address: IPAddress.v4(0xC612_0102 + UInt32(n)), length: 32)!])
        }
        network.filter = { $0.to != unreachable.endpoint && $0.from != unreachable.endpoint }
        let toKeepalive = try #require(hub.device.peer(keepaliveSession.device.publicKey!))
        hub.device.setPersistentKeepalive(5, for: toKeepalive, now: network.clock.now)
        for n in 1...1_000 {
            let peer = try #require(hub.device.addPeer(numberedKey(n)))
            hub.device.setPersistentKeepalive(25, for: peer, now: network.clock.now)
        }
        for n in 1...20 {
            let peer = try #require(hub.device.addPeer(PrivateKey.generate().publicKey))
            hub.device.setEndpoint(Endpoint(address: IPAddress.v4(0xC612_0900 | UInt32(n)), port: 51820), for: peer)
            hub.device.setPersistentKeepalive(UInt16(3 + n % 4), for: peer, now: network.clock.now)
        }
        func ping(_ from: IPAddress, _ to: IPAddress, _ sequence: Int) -> [UInt8] {
            PacketBuilder.icmpEcho(
                source: from, destination: to, identifier: 7, sequence: UInt16(truncatingIfNeeded: sequence),
                payload: [UInt8](repeating: 0x61, count: 16))
        }
        network.inject(ping(hubAddress, IPAddress("198.18.1.4")!, 0), at: hub)  // staged for the unreachable peer

        let steps: [Double] = [0.05, 0.1, 0.25, 0.1, 0.6, 0.05, 0.3]
        var elapsed = 0.0
        var step = 0
        var ran = 0
        var visitedWithNothingDue = 0
        // What the hub's ticks sent (the wire's log has only what `inject` and `deliver` sent).
        var sentByTicks: [WireDatagram] = []
        while elapsed < 150 {
            let seconds = steps[step % steps.count]
            step += 1
            elapsed += seconds
            network.clock.advance(seconds: seconds)
            let time = network.clock.now.monotonic
            let peers = hub.device.peers
            // The reference: a scan of every peer, field by field, as the old tick did.
            let due = Set(
                peers.filter { Self.fields($0).contains { $0 != nil && $0! <= time } }.map(ObjectIdentifier.init))
            let before = Dictionary(uniqueKeysWithValues: peers.map { (ObjectIdentifier($0), Self.fields($0)) })

            var sink = CollectingSink(from: hub.endpoint)
            hub.device.tick(now: network.clock.now, sink: &sink)
            network.wire.append(contentsOf: sink.sent)
            sentByTicks.append(contentsOf: sink.sent)

            let visited = Set(hub.device.duePeers.map(ObjectIdentifier.init))
            let missed = due.subtracting(visited).count
            #expect(missed == 0, "\(missed) due peer(s) not visited at \(elapsed) s")
            for peer in peers where visited.contains(ObjectIdentifier(peer)) && !due.contains(ObjectIdentifier(peer)) {
                visitedWithNothingDue += 1
                #expect(Self.fields(peer) == before[ObjectIdentifier(peer)]!, "an early visit changed a timer")
            }
            let leftDue = peers.filter { Self.fields($0).contains { $0 != nil && $0! <= time } }.count
            #expect(leftDue == 0, "a timer due at \(elapsed) s is still armed after the tick")
            if let scan = hub.device.nextDeadline {
                let bound = try #require(hub.device.timerLowerBound, "armed timers but an empty queue")
                #expect(bound <= scan, "the queue's earliest is later than a scan's")
            }
            ran += due.count

            // The other nodes tick as usual; traffic now and then from the hub and back.
            for node in [keepaliveSession, trafficSession, unreachable] {
                var other = CollectingSink(from: node.endpoint)
                node.device.tick(now: network.clock.now, sink: &other)
                network.wire.append(contentsOf: other.sent)
            }
            if step % 37 == 0 { network.inject(ping(hubAddress, IPAddress("198.18.1.3")!, step), at: hub) }
            if step % 53 == 0 { network.inject(ping(IPAddress("198.18.1.3")!, hubAddress, step), at: trafficSession) }
            network.pump()
        }
        // Not vacuous: keepalives, retries, give-ups, key erasure and passive keepalives ran.
        #expect(ran > 1_000 + 100, "timers ran \(ran) times")
        #expect(hub.device.drops[.handshakeTimedOut] >= 1, "the unreachable peer's staged packet was given up")
        let keepalivesToSession = (network.log + sentByTicks).filter {
            $0.from == hub.endpoint && $0.to == keepaliveSession.endpoint && $0.bytes.count == 32
        }.count
        #expect((25...33).contains(keepalivesToSession), "a keepalive every 5 s for 150 s: \(keepalivesToSession)")
        #expect(visitedWithNothingDue < ran, "early visits stay a minority")
    }
}
