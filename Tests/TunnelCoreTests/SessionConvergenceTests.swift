import TunnelCore
import TunnelCrypto
import TunnelTestSupport
import XCTest

/// Sessions converge at once after the two events that used to stall them for seconds.
///
/// Crossing: both ends initiate in the same instant (each has a packet for the other and no session). Every
/// order in which the wire can deliver the crossing messages must leave both sessions usable at
/// once: no packet may wait for a retry timer. wireguard-go's rule (noise-protocol.go,
/// BeginSymmetricSession): an initiator's new keypair demotes the unconfirmed responder keypair
/// to `previous` instead of dropping it, so the peer's packets under it still open.
final class SessionConvergenceTests: XCTestCase {
    let aAddress = IPAddress("198.18.1.1")!
    let bAddress = IPAddress("198.18.1.2")!

    private func ping(_ from: IPAddress, _ to: IPAddress, _ sequence: UInt16) -> [UInt8] {
        PacketBuilder.icmpEcho(
            source: from, destination: to, identifier: 9, sequence: sequence,
            payload: [UInt8](repeating: UInt8(truncatingIfNeeded: sequence), count: 32))
    }

    /// Delivers the wire's datagrams choosing, at each step, the one `pick` names among those
    /// waiting (an index into the current wire, clamped); bounded.
    private func pump(_ network: InMemoryNetwork, order pick: (Int, [WireDatagram]) -> Int) {
        var step = 0
        while !network.wire.isEmpty && step < 1000 {
            let index = min(pick(step, network.wire), network.wire.count - 1)
            let datagram = network.wire.remove(at: index)
            network.deliver(datagram)
            step += 1
        }
    }

    /// Every interleaving of the first few deliveries, encoded as the choice at each of the
    /// first four steps (0 = oldest waiting, 1 = the next); after those, oldest first.
    func testCrossingInitiationsConvergeInEveryInterleaving() throws {
        for choices in 0..<16 {
            let network = InMemoryNetwork()
            let a = network.addNode()
            let b = network.addNode()
            network.connect(
                a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
            let fromA = ping(aAddress, bAddress, 1)
            let fromB = ping(bAddress, aAddress, 2)
            XCTAssertEqual(network.inject(fromA, at: a), .staged)
            XCTAssertEqual(network.inject(fromB, at: b), .staged)
            XCTAssertEqual(network.wire.count, 2, "both sent an initiation")
            pump(network) { step, _ in step < 4 ? (choices >> step) & 1 : 0 }

            XCTAssertEqual(b.delivered, [fromA], "interleaving \(choices): A's first packet")
            XCTAssertEqual(a.delivered, [fromB], "interleaving \(choices): B's first packet")

            // Both directions work now, with no time passing and no new handshake.
            let initiationsBefore = network.log.filter { $0.messageType == 1 }.count
            for round in UInt16(3)..<UInt16(6) {
                let next = ping(aAddress, bAddress, round)
                let back = ping(bAddress, aAddress, round + 100)
                guard case .send = network.inject(next, at: a) else {
                    return XCTFail("interleaving \(choices): A has no session to send on")
                }
                guard case .send = network.inject(back, at: b) else {
                    return XCTFail("interleaving \(choices): B has no session to send on")
                }
                network.pump()
                XCTAssertEqual(b.delivered.last, next, "interleaving \(choices), round \(round): A → B")
                XCTAssertEqual(a.delivered.last, back, "interleaving \(choices), round \(round): B → A")
            }
            XCTAssertEqual(
                network.log.filter { $0.messageType == 1 }.count, initiationsBefore,
                "interleaving \(choices): no further handshake was needed")
            XCTAssertEqual(
                a.device.drops.total + b.device.drops.total, 0,
                "interleaving \(choices): nothing dropped (A \(a.device.drops), B \(b.device.drops))")
        }
    }

    /// The outbound path reads the clock once per burst, so it may route a packet with an instant
    /// older than a keypair the inbound path derived meanwhile (seen in handshake.sh: the echo
    /// reply to the peer's first ping, read in the same burst, was staged behind a session that
    /// looked 584 years old, and waited for a handshake that never came). A stale instant sees a
    /// fresh keypair as new: the packet is sealed at once and starts no handshake.
    func testPacketRoutedWithAnOlderInstantUsesTheNewerSession() {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let b = network.addNode()
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        let stale = network.clock.now
        network.clock.advance(seconds: 0.001)
        XCTAssertEqual(network.inject(ping(aAddress, bAddress, 1), at: a), .staged)
        network.pump()
        XCTAssertEqual(b.delivered.count, 1, "the handshake completed and the first packet arrived")
        let initiations = network.log.filter { $0.messageType == 1 }.count

        let late = ping(aAddress, bAddress, 2)
        guard case .send = network.inject(late, at: a, now: stale) else {
            return XCTFail("a packet routed with an instant 1 ms older than its session was not sent")
        }
        network.pump()
        XCTAssertEqual(b.delivered.last, late)
        XCTAssertEqual(
            network.log.filter { $0.messageType == 1 }.count, initiations, "the older instant started no handshake")
        XCTAssertEqual(a.device.drops.total + b.device.drops.total, 0)
    }

    /// The same crossing with the clock running: after a keepalive interval and more, nothing
    /// has stalled and no retry was needed to get data through.
    func testCrossingInitiationsThenQuietLinkKeepsBothSessions() {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let b = network.addNode()
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        network.inject(ping(aAddress, bAddress, 1), at: a)
        network.inject(ping(bAddress, aAddress, 2), at: b)
        // Both initiations reach their peer before either response does.
        pump(network) { _, _ in 0 }
        network.run(seconds: 12)
        let late = ping(bAddress, aAddress, 50)
        guard case .send = network.inject(late, at: b) else { return XCTFail("B lost its session") }
        network.pump()
        XCTAssertEqual(a.delivered.last, late)
    }

    // MARK: Restart

    /// One end restarts (all its state gone) while the other still holds the old session. With
    /// `initiateHandshakes` at start-up the restarted end brings a new session up at once, so
    /// the other end's packets stop going to a session nobody has, in both directions, without
    /// waiting for KEEPALIVE + REKEY_TIMEOUT (15 s).
    func testRestartedEndInitiatesAtOnceAndBothDirectionsFlow() throws {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let b = network.addNode()
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        network.inject(ping(aAddress, bAddress, 1), at: a)
        network.pump()
        XCTAssertEqual(b.delivered.count, 1, "the first session")

        // B restarts: the same key and peer, nothing else.
        b.device.removeAllPeers()
        let peerOfB = try XCTUnwrap(b.device.addPeer(a.device.publicKey!))
        b.device.setEndpoint(a.endpoint, for: peerOfB)
        b.device.addAllowedIP(IPPrefix("198.18.1.1/32")!, for: peerOfB)
        XCTAssertEqual(b.device.initiateHandshakes(now: network.clock.now), 1)
        network.advance(seconds: 0.01)
        network.pump()

        let toB = ping(aAddress, bAddress, 2)
        guard case .send = network.inject(toB, at: a) else { return XCTFail("A has no session after the restart") }
        let toA = ping(bAddress, aAddress, 3)
        guard case .send = network.inject(toA, at: b) else { return XCTFail("B has no session after the restart") }
        network.pump()
        XCTAssertEqual(b.delivered.last, toB, "A → B flows within 10 ms of B's start")
        XCTAssertEqual(a.delivered.last, toA, "B → A flows within 10 ms of B's start")
    }

    /// Peers without an endpoint, or with a session already, are not armed; many are spread in
    /// steps so a start-up does not run thousands of handshakes at once.
    func testStartupInitiationsSkipPeersWithoutEndpointOrWithSessionAndAreSpread() throws {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let peers = (0..<150).map { _ in a.device.addPeer(PrivateKey.generate().publicKey)! }
        for (index, peer) in peers.enumerated() where index % 3 != 0 {
            a.device.setEndpoint(Endpoint(address: IPAddress("198.51.100.7")!, port: UInt16(1000 + index)), for: peer)
        }
        XCTAssertEqual(a.device.initiateHandshakes(now: network.clock.now), 100, "only the 100 with an endpoint")
        network.advance(seconds: 0.001)
        XCTAssertEqual(network.wire.filter { $0.messageType == 1 }.count, 64, "the first step only")
        network.advance(seconds: 0.1)
        XCTAssertEqual(network.wire.filter { $0.messageType == 1 }.count, 100, "the rest one step later")
    }
}
