import TunnelCrypto
import TunnelTestSupport
import XCTest

@testable import TunnelCore

/// The path MTU search (issue 17) as a pure state machine with a fake clock, and between two
/// devices over an in-memory wire whose path drops datagrams above a size.
final class PathMTUTests: XCTestCase {
    let second = Protocol.nanosecondsPerSecond

    /// Runs `search` against a path that carries inner packets up to `capacity` bytes, for up to
    /// `seconds`, in steps of 100 ms; an acknowledging peer answers every probe that fits at once.
    private func run(
        _ search: inout PathMTU, capacity: Int, acknowledging: Bool, from start: UInt64 = 0, seconds: Int
    ) -> (probes: [Int], now: UInt64) {
        var probes: [Int] = []
        var now = start
        _ = search.begin(now: start)
        let end = start + UInt64(seconds) * second
        while now < end {
            if let size = search.tick(now: now) {
                probes.append(size)
                if acknowledging, size <= capacity { search.acknowledged(size: size, now: now + 1_000_000) }
            }
            now += second / 10
        }
        return (probes, now)
    }

    func testBaseFitsA1280PathWithPaddingAndOverhead() {
        XCTAssertEqual(PathMTU.base(ipv4: true), 1216)
        XCTAssertEqual(PathMTU.base(ipv4: false), 1200)
        XCTAssertLessThanOrEqual(PathMTU.base(ipv4: true) + PathMTU.overhead(ipv4: true), 1280)
        XCTAssertLessThanOrEqual(PathMTU.base(ipv4: false) + PathMTU.overhead(ipv4: false), 1280)
        XCTAssertEqual(PathMTU.base(ipv4: true) % Protocol.paddingMultiple, 0)
    }

    func testStartsAtBaseAndProbesTheMaximumThenBase() {
        var search = PathMTU(maximum: 1420, now: 0)
        XCTAssertEqual(search.limit, 1216)
        XCTAssertNil(search.deadline, "nothing before the search begins")
        XCTAssertNil(search.tick(now: 0))
        XCTAssertTrue(search.begin(now: 0))
        XCTAssertFalse(search.begin(now: 0))
        XCTAssertEqual(search.tick(now: 0), 1420, "the maximum first")
        XCTAssertNil(search.acknowledges)
        for second in 1...3 { XCTAssertEqual(search.tick(now: UInt64(second) * self.second), second < 3 ? 1420 : 1216) }
    }

    func testAcknowledgingPeerFindsTheLargestSizeThePathCarries() {
        for capacity in [1216, 1250, 1300, 1340, 1419, 1420] {
            var search = PathMTU(maximum: 1420, now: 0)
            let (probes, _) = run(&search, capacity: capacity, acknowledging: true, seconds: 25)
            XCTAssertEqual(search.acknowledges, true)
            let expected = capacity >= 1420 ? 1420 : capacity / 16 * 16
            XCTAssertEqual(search.limit, expected, "capacity \(capacity), probes \(probes)")
            XCTAssertEqual(probes.first, 1420, "the maximum is tried first")
            if capacity < 1420 {
                XCTAssertEqual(Array(probes[0..<4]), [1420, 1420, 1420, 1216], "then base: does the peer answer?")
                XCTAssertLessThanOrEqual(search.refuseFrom ?? 0, 1420)
            } else {
                XCTAssertEqual(probes, [1420], "one round trip on a clean path")
            }
        }
    }

    func testAcknowledgingSearchRaisesAgainWhenThePathGrows() {
        var search = PathMTU(maximum: 1420, now: 0)
        var (_, now) = run(&search, capacity: 1300, acknowledging: true, seconds: 14)
        XCTAssertEqual(search.limit, 1296)
        (_, now) = run(&search, capacity: 1500, acknowledging: true, from: now, seconds: 20)
        XCTAssertEqual(search.limit, 1420, "re-probed after the raise interval")
        _ = now
    }

    func testPassivePeerIsConfirmedByItsKeepaliveAfterAQuietProbe() {
        var search = PathMTU(maximum: 1420, now: 0)
        // Three unanswered maximum probes, then three at base: the peer does not acknowledge.
        let (probes, now) = run(&search, capacity: 1500, acknowledging: false, seconds: 7)
        XCTAssertEqual(probes, [1420, 1420, 1420, 1216, 1216, 1216])
        XCTAssertEqual(search.acknowledges, false)
        XCTAssertNil(search.refuseFrom, "silence from a peer that answers nothing says nothing of the path")
        XCTAssertEqual(search.limit, 1216)
        // No passive probe before the link has been quiet long enough.
        var t = now
        var probe: Int?
        while t < 40 * second, probe == nil {
            probe = search.tick(now: t)
            if probe == nil { t += second / 10 }
        }
        XCTAssertEqual(probe, 1420)
        XCTAssertGreaterThanOrEqual(t, PathMTU.passiveQuiet)
        // An early keepalive (another timer's) does not confirm; the one 10 s later does.
        XCTAssertFalse(search.received(keepalive: true, now: t + 3 * second))
        XCTAssertEqual(search.limit, 1216)
        XCTAssertTrue(search.received(keepalive: true, now: t + 10 * second + 20_000_000))
        XCTAssertEqual(search.limit, 1420)
    }

    func testPassiveProbeSpoiledByDataIsNoVerdict() {
        var search = PathMTU(maximum: 1420, now: 0)
        var (_, t) = run(&search, capacity: 1500, acknowledging: false, seconds: 7)
        var probe: Int?
        while t < 40 * second, probe == nil {
            probe = search.tick(now: t)
            if probe == nil { t += second / 10 }
        }
        XCTAssertEqual(probe, 1420)
        // Our data after the probe could have armed the peer's keepalive as well.
        _ = search.sent(length: 100, now: t + second)
        XCTAssertFalse(search.received(keepalive: true, now: t + 10 * second))
        XCTAssertEqual(search.limit, 1216)
        // The verdict time passes: no ceiling learned, a new attempt later.
        XCTAssertNil(search.tick(now: t + 13 * second))
        XCTAssertNil(search.ceiling)
    }

    func testUnansweredPassiveProbeSetsTheCeiling() {
        var search = PathMTU(maximum: 1420, now: 0)
        var (_, t) = run(&search, capacity: 1500, acknowledging: false, seconds: 7)
        var probe: Int?
        while t < 40 * second, probe == nil {
            probe = search.tick(now: t)
            if probe == nil { t += second / 10 }
        }
        _ = search.tick(now: t + 13 * second)
        XCTAssertEqual(search.ceiling, 1420)
    }

    func testBlackHoleToAnAcknowledgingPeerDropsToBase() {
        var search = PathMTU(maximum: 1420, now: 0)
        var (_, now) = run(&search, capacity: 1500, acknowledging: true, seconds: 3)
        XCTAssertEqual(search.limit, 1420)
        // Full-size packets go out and nothing comes back: checked, then dropped.
        XCTAssertTrue(search.sent(length: 1420, now: now))
        var probes: [Int] = []
        for _ in 0..<60 {
            now += second / 10
            if let size = search.tick(now: now) { probes.append(size) }
            if search.limit == 1216 { break }
        }
        XCTAssertEqual(search.limit, 1216, "probes \(probes)")
        XCTAssertEqual(probes.prefix(3), [1420, 1420, 1420], "the confirmed size is checked first")
    }

    func testBlackHoleToAPassivePeerDropsToBaseAfterItsKeepaliveWouldHaveCome() {
        var search = PathMTU(maximum: 1420, now: 0)
        var (_, t) = run(&search, capacity: 1500, acknowledging: false, seconds: 7)
        var probe: Int?
        while t < 40 * second, probe == nil {
            probe = search.tick(now: t)
            if probe == nil { t += second / 10 }
        }
        XCTAssertTrue(search.received(keepalive: true, now: t + 10 * second))
        XCTAssertEqual(search.limit, 1420)
        // Full-size packets go out; the peer, which answers any data within 10 s, stays silent.
        var now = t + 11 * second
        _ = search.sent(length: 1420, now: now)
        let start = now
        while search.limit == 1420, now < start + 20 * second {
            now += second / 10
            _ = search.sent(length: 1420, now: now)
            _ = search.tick(now: now)
        }
        XCTAssertEqual(search.limit, 1216)
        XCTAssertGreaterThanOrEqual(now - start, PathMTU.blackHoleQuietPassive, "not before its keepalive was due")
        XCTAssertTrue(search.refuses(length: 1420), "full-size packets are now refused with a packet-too-big")
    }

    func testTrafficBothWaysIsNoBlackHole() {
        var search = PathMTU(maximum: 1420, now: 0)
        var (_, now) = run(&search, capacity: 1500, acknowledging: true, seconds: 3)
        for _ in 0..<100 {
            _ = search.sent(length: 1420, now: now)
            XCTAssertNil(search.tick(now: now))
            _ = search.received(keepalive: false, now: now + 1_000_000)
            now += second / 10
        }
        XCTAssertEqual(search.limit, 1420)
    }

    func testOnlySizesSeenToFailAreRefused() {
        var search = PathMTU(maximum: 9000, now: 0)
        XCTAssertEqual(search.limit, 1216)
        XCTAssertFalse(search.refuses(length: 8000), "nothing has failed yet: a raised link MTU is not refused")
        _ = run(&search, capacity: 4000, acknowledging: true, seconds: 30)
        XCTAssertEqual(search.limit, 4000)
        XCTAssertFalse(search.refuses(length: 4000))
        XCTAssertTrue(search.refuses(length: 8000))
        XCTAssertEqual(search.refuseFrom.map { $0 > 4000 && $0 <= 4016 }, true, "the smallest failed probe")
    }

    func testProbeAndAckWireForms() {
        var ack = [UInt8](repeating: 0xff, count: PathMTUProbe.ackLength)
        ack.withUnsafeMutableBytes { PathMTUProbe.writeAck(size: 1340, into: $0) }
        XCTAssertEqual(ack[0], 0, "no IP version: any WireGuard peer drops it")
        XCTAssertEqual(ack.withUnsafeBytes { PathMTUProbe.classify($0) }, .ack(1340))
        let probe = [UInt8](repeating: 0, count: 1296)
        XCTAssertEqual(probe.withUnsafeBytes { PathMTUProbe.classify($0) }, .probe(1296))
        let ipv4 = [UInt8(0x45)] + [UInt8](repeating: 0, count: 39)
        XCTAssertNil(ipv4.withUnsafeBytes { PathMTUProbe.classify($0) })
    }

    // MARK: - Two devices

    /// A and B with a session over a wire whose path drops datagrams longer than `pathMTU` bytes
    /// (outer, IPv4: the datagram plus 28).
    private func constrainedPair(pathMTU: Int) -> (InMemoryNetwork, Node, Node) {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let b = network.addNode()
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        network.filter = { $0.bytes.count + 28 <= pathMTU }
        let ping = PacketBuilder.icmpEcho(
            source: IPAddress("198.18.1.1")!, destination: IPAddress("198.18.1.2")!, identifier: 1, sequence: 1)
        network.inject(ping, at: a)
        network.pump()
        // A packet above the base size begins the search.
        let large = PacketBuilder.icmpEcho(
            source: IPAddress("198.18.1.1")!, destination: IPAddress("198.18.1.2")!, identifier: 1, sequence: 2,
            payload: [UInt8](repeating: 1, count: 1240))
        network.inject(large, at: a)
        network.pump()
        return (network, a, b)
    }

    func testSmallPacketsAloneSendNoProbe() throws {
        let network = InMemoryNetwork()
        let a = network.addNode()
        let b = network.addNode()
        network.connect(a, allowing: [IPPrefix("198.18.1.1/32")!], b, allowing: [IPPrefix("198.18.1.2/32")!])
        for sequence in 1...10 {
            network.inject(
                PacketBuilder.icmpEcho(
                    source: IPAddress("198.18.1.1")!, destination: IPAddress("198.18.1.2")!, identifier: 1,
                    sequence: UInt16(sequence)), at: a)
            network.run(seconds: 0.2)
        }
        network.run(seconds: 5)
        XCTAssertTrue(network.log.allSatisfy { $0.bytes.count < 200 }, "no probe on a tunnel of small packets")
        XCTAssertFalse(try XCTUnwrap(a.device.peer(b.device.publicKey!)).pathMTU.started)
    }

    func testTwoDevicesFindThePathAndRefuseLargerPackets() throws {
        let (network, a, b) = constrainedPair(pathMTU: 1400)
        network.run(seconds: 15)
        let peer = try XCTUnwrap(a.device.peer(b.device.publicKey!))
        XCTAssertEqual(peer.pathMTU.limit, 1328, "floor16(1400 - 60)")
        XCTAssertEqual(a.device.status(of: peer).pathMTU, 1388)
        XCTAssertEqual(a.device.drops[.badInnerPacket] + b.device.drops[.badInnerPacket], 0, "probes are no errors")
        let big = PacketBuilder.icmpEcho(
            source: IPAddress("198.18.1.1")!, destination: IPAddress("198.18.1.2")!, identifier: 1, sequence: 2,
            payload: [UInt8](repeating: 7, count: 1400 - 28))
        XCTAssertEqual(network.inject(big, at: a), .tooBig(mtu: 1328))
        XCTAssertEqual(a.device.drops[.pathMTUExceeded], 1)
        let fits = PacketBuilder.icmpEcho(
            source: IPAddress("198.18.1.1")!, destination: IPAddress("198.18.1.2")!, identifier: 1, sequence: 3,
            payload: [UInt8](repeating: 7, count: 1328 - 28))
        b.delivered.removeAll()
        guard case .send = network.inject(fits, at: a) else { return XCTFail("a packet of the limit is sent") }
        network.pump()
        XCTAssertEqual(b.delivered.count, 1, "and crosses the path")
    }

    func testUnconstrainedPathReachesTheInterfaceMTU() throws {
        let (network, a, b) = constrainedPair(pathMTU: 1500)
        network.run(seconds: 5)
        let peer = try XCTUnwrap(a.device.peer(b.device.publicKey!))
        XCTAssertEqual(peer.pathMTU.limit, Protocol.defaultMTU)
        XCTAssertEqual(a.device.status(of: peer).pathMTU, 1480)
    }
}
