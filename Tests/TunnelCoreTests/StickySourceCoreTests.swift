import TunnelCore
import TunnelCrypto
import TunnelTestSupport
import XCTest

/// The core's part of sticky source addresses (issue 15): a peer's endpoint keeps the local
/// address its latest authenticated datagram was sent to, and forgets it when it vanishes.
final class StickySourceCoreTests: XCTestCase {
    let aAddress = IPAddress("198.18.1.1")!
    let bAddress = IPAddress("198.18.1.2")!

    private func ping(_ sequence: UInt16) -> [UInt8] {
        PacketBuilder.icmpEcho(
            source: aAddress, destination: bAddress, identifier: 7, sequence: sequence,
            payload: [UInt8](repeating: 1, count: 56))
    }

    /// Roaming takes the sticky source along: B's endpoint for A is A's source with the local
    /// address A's datagram arrived at, replaced by the next datagram's, and cleared only for
    /// the vanished address.
    func testEndpointLearnsKeepsAndForgetsTheStickySource() throws {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let b = network.addNode()
        network.connect(
            a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!], presharedKey: nil)
        let second = StickySource(address: IPAddress("198.18.0.3")!, interfaceIndex: 7)
        let first = StickySource(address: IPAddress("198.18.0.2")!, interfaceIndex: 7)
        // Every datagram from A reaches B as if sent to `local`; B's datagrams must name it as
        // their source (recorded, then stripped so that the in-memory wire finds A).
        var replySources: [StickySource?] = []
        func deliverFromA(arrivingAt local: StickySource) {
            var rounds = 0
            while !network.wire.isEmpty, rounds < 100 {
                var datagram = network.wire.removeFirst()
                rounds += 1
                if datagram.from == a.endpoint {
                    datagram.from.stickySource = local
                } else {
                    replySources.append(datagram.to.stickySource)
                    datagram.to = datagram.to.withoutStickySource
                }
                _ = network.deliver(datagram)
            }
        }
        _ = network.inject(ping(1), at: a)
        deliverFromA(arrivingAt: second)
        let peer = try XCTUnwrap(b.device.peer(a.device.publicKey!))
        XCTAssertEqual(b.delivered.count, 1, "the handshake and the first packet")
        XCTAssertEqual(peer.endpoint?.withoutStickySource, a.endpoint)
        XCTAssertEqual(peer.endpoint?.stickySource, second)
        XCTAssertEqual(peer.endpoint?.description, a.endpoint.description, "the description shows the remote end")
        XCTAssertFalse(replySources.isEmpty, "B answered the handshake")
        XCTAssertEqual(Set(replySources), [second], "B's replies leave from the address A talks to")

        _ = network.inject(ping(2), at: a)
        deliverFromA(arrivingAt: first)
        XCTAssertEqual(b.delivered.count, 2)
        XCTAssertEqual(peer.endpoint?.stickySource, first, "the latest datagram's local address wins")

        XCTAssertEqual(b.device.forgetStickySource(second.address), 0, "no peer uses the other address")
        XCTAssertEqual(peer.endpoint?.stickySource, first)
        XCTAssertEqual(b.device.forgetStickySource(first.address), 1)
        XCTAssertNil(peer.endpoint?.stickySource)
        XCTAssertEqual(peer.endpoint, a.endpoint, "the remote end stays")
    }

    /// A configured endpoint (config, UAPI) has no sticky source: setting one clears a learned one.
    func testSettingAnEndpointClearsTheStickySource() throws {
        let device = Device(privateKey: .generate())
        let peer = try XCTUnwrap(device.addPeer(PrivateKey.generate().publicKey))
        let remote = Endpoint("198.18.0.1:51820")!
        var learned = remote
        learned.stickySource = StickySource(address: IPAddress("198.18.0.3")!, interfaceIndex: 2)
        device.setEndpoint(learned, for: peer)
        XCTAssertNotEqual(peer.endpoint, remote, "equality includes the sticky source")
        device.setEndpoint(remote, for: peer)
        XCTAssertNil(peer.endpoint?.stickySource)
    }
}
