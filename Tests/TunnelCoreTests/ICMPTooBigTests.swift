import TunnelTestSupport
import XCTest

@testable import TunnelCore

/// The synthetic "fragmentation needed" / "packet too big" (issue 17) and the MSS clamp, checked
/// with the test support's own checksum (PacketBuilder.internetChecksum), not the code under test.
final class ICMPTooBigTests: XCTestCase {
    let a4 = IPAddress("198.18.1.1")!
    let b4 = IPAddress("198.18.1.2")!
    let a6 = IPAddress("2001:db8:1::1")!
    let b6 = IPAddress("2001:db8:1::2")!

    private func message(for packet: [UInt8], mtu: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: ICMPTooBig.maximumLength)
        let length = packet.withUnsafeBytes { packet in
            out.withUnsafeMutableBytes { ICMPTooBig.write(for: packet, mtu: mtu, into: $0) }
        }
        return length.map { Array(out[0..<$0]) }
    }

    private func be16(_ bytes: [UInt8], _ offset: Int) -> Int { Int(bytes[offset]) << 8 | Int(bytes[offset + 1]) }

    func testIPv4FragmentationNeededIsWellFormed() throws {
        let packet = PacketBuilder.udp(
            source: a4, sourcePort: 40000, destination: b4, destinationPort: 5001,
            payload: [UInt8](repeating: 0xab, count: 1400 - 28))
        let icmp = try XCTUnwrap(message(for: packet, mtu: 1216))
        XCTAssertEqual(icmp.count, 576, "IP 20 + ICMP 8 + a 548-byte quote")
        XCTAssertEqual(icmp[0], 0x45)
        XCTAssertEqual(be16(icmp, 2), icmp.count, "total length")
        XCTAssertEqual(icmp[9], 1, "ICMP")
        XCTAssertEqual(PacketBuilder.internetChecksum(Array(icmp[0..<20])), 0, "IPv4 header checksum")
        XCTAssertEqual(Array(icmp[12..<16]), b4.networkBytes, "from the packet's destination")
        XCTAssertEqual(Array(icmp[16..<20]), a4.networkBytes, "to the packet's source")
        XCTAssertEqual(icmp[20], 3, "destination unreachable")
        XCTAssertEqual(icmp[21], 4, "fragmentation needed")
        XCTAssertEqual(be16(icmp, 26), 1216, "next-hop MTU")
        XCTAssertEqual(PacketBuilder.internetChecksum(Array(icmp[20...])), 0, "ICMP checksum")
        XCTAssertEqual(Array(icmp[28...]), Array(packet[0..<548]), "the quote is the packet's start")
    }

    func testIPv6PacketTooBigIsWellFormed() throws {
        let packet = PacketBuilder.udp(
            source: a6, sourcePort: 40000, destination: b6, destinationPort: 5001,
            payload: [UInt8](repeating: 0xcd, count: 1400 - 48))
        let icmp = try XCTUnwrap(message(for: packet, mtu: 1300))
        XCTAssertEqual(icmp.count, 1280, "within the minimum MTU")
        XCTAssertEqual(icmp[0] >> 4, 6)
        XCTAssertEqual(be16(icmp, 4), icmp.count - 40, "payload length")
        XCTAssertEqual(icmp[6], 58, "ICMPv6")
        XCTAssertEqual(Array(icmp[8..<24]), b6.networkBytes)
        XCTAssertEqual(Array(icmp[24..<40]), a6.networkBytes)
        XCTAssertEqual(icmp[40], 2, "packet too big")
        XCTAssertEqual(icmp[41], 0)
        XCTAssertEqual(Int(icmp[44]) << 24 | Int(icmp[45]) << 16 | be16(icmp, 46), 1300)
        // The checksum covers the pseudo-header (RFC 4443 §2.3), summed here by hand.
        let body = Array(icmp[40...])
        var pseudo = Array(icmp[8..<40])
        pseudo += [UInt8(body.count >> 24), UInt8((body.count >> 16) & 0xff), UInt8((body.count >> 8) & 0xff)]
        pseudo += [UInt8(body.count & 0xff), 0, 0, 0, 58]
        XCTAssertEqual(PacketBuilder.internetChecksum(pseudo + body), 0, "ICMPv6 checksum")
        XCTAssertEqual(Array(icmp[48...]), Array(packet[0..<1232]))
    }

    func testNoMessageForErrorsFragmentsAndBadSources() {
        // An ICMP error (destination unreachable) about something else.
        var error = PacketBuilder.icmpEcho(source: a4, destination: b4, identifier: 1, sequence: 1)
        error[20] = 3
        XCTAssertNil(message(for: error, mtu: 1216))
        // An echo request does get one.
        XCTAssertNotNil(
            message(for: PacketBuilder.icmpEcho(source: a4, destination: b4, identifier: 1, sequence: 1), mtu: 1216))
        // A later fragment.
        var fragment = PacketBuilder.udp(source: a4, sourcePort: 1, destination: b4, destinationPort: 2)
        fragment[6] = 0x20
        fragment[7] = 0x10
        XCTAssertNil(message(for: fragment, mtu: 1216))
        // Sources that must never get an error.
        for source in ["0.0.0.0", "224.0.0.5", "255.255.255.255"] {
            let packet = PacketBuilder.udp(
                source: IPAddress(source)!, sourcePort: 1, destination: b4, destinationPort: 2)
            XCTAssertNil(message(for: packet, mtu: 1216), source)
        }
        let multicast6 = PacketBuilder.udp(
            source: IPAddress("ff02::1")!, sourcePort: 1, destination: b6, destinationPort: 2)
        XCTAssertNil(message(for: multicast6, mtu: 1300))
        var error6 = PacketBuilder.icmpEcho(source: a6, destination: b6, identifier: 1, sequence: 1)
        error6[40] = 1
        XCTAssertNil(message(for: error6, mtu: 1300))
        XCTAssertNil(message(for: [0x00, 1, 2, 3], mtu: 1300), "not IP")
    }

    // MARK: - MSS clamp

    /// A TCP segment with `flags` and the options given, checksummed with a pseudo-header.
    private func tcp(source: IPAddress, destination: IPAddress, flags: UInt8, options: [UInt8]) -> [UInt8] {
        precondition(options.count % 4 == 0)
        var segment: [UInt8] = [0x9c, 0x40, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 0]
        segment += [UInt8((20 + options.count) / 4) << 4, flags, 0xff, 0xff, 0, 0, 0, 0]
        segment += options
        var pseudo = source.networkBytes + destination.networkBytes
        if source.isV4 {
            pseudo += [0, 6, UInt8(segment.count >> 8), UInt8(segment.count & 0xff)]
        } else {
            pseudo += [0, 0, UInt8(segment.count >> 8), UInt8(segment.count & 0xff), 0, 0, 0, 6]
        }
        let checksum = PacketBuilder.internetChecksum(pseudo + segment)
        segment[16] = UInt8(checksum >> 8)
        segment[17] = UInt8(checksum & 0xff)
        return PacketBuilder.ipPacket(source: source, destination: destination, protocolNumber: 6, payload: segment)
    }

    private func checksumHolds(_ packet: [UInt8], v6: Bool) -> Bool {
        let header = v6 ? 40 : 20
        let segment = Array(packet[header...])
        var pseudo = v6 ? Array(packet[8..<40]) : Array(packet[12..<20])
        if v6 {
            pseudo += [0, 0, UInt8(segment.count >> 8), UInt8(segment.count & 0xff), 0, 0, 0, 6]
        } else {
            pseudo += [0, 6, UInt8(segment.count >> 8), UInt8(segment.count & 0xff)]
        }
        return PacketBuilder.internetChecksum(pseudo + segment) == 0
    }

    private func clamped(_ packet: [UInt8], mtu: Int) -> [UInt8] {
        var copy = packet
        copy.withUnsafeMutableBytes { _ = ICMPTooBig.clampMSS($0, mtu: mtu) }
        return copy
    }

    func testSynMSSIsLoweredWithAValidChecksum() {
        // NOP, NOP, SACK permitted, MSS 1460 (options in another order than the first).
        let syn = tcp(source: a4, destination: b4, flags: 0x02, options: [1, 1, 4, 2, 2, 4, 0x05, 0xb4])
        XCTAssertTrue(checksumHolds(syn, v6: false))
        let out = clamped(syn, mtu: 1216)
        XCTAssertEqual(be16(out, 20 + 20 + 6), 1176, "1216 - 40")
        XCTAssertTrue(checksumHolds(out, v6: false), "checksum updated incrementally")
        let synAck = tcp(source: b6, destination: a6, flags: 0x12, options: [2, 4, 0x05, 0xa0])
        let out6 = clamped(synAck, mtu: 1340)
        XCTAssertEqual(be16(out6, 40 + 20 + 2), 1280, "1340 - 60")
        XCTAssertTrue(checksumHolds(out6, v6: true))
        // IPv6 never below 1220, whatever the tunnel carries.
        XCTAssertEqual(be16(clamped(synAck, mtu: 1200), 40 + 20 + 2), 1220)
    }

    func testOtherSegmentsAndSmallMSSAreUntouched() {
        let ack = tcp(source: a4, destination: b4, flags: 0x10, options: [2, 4, 0x05, 0xb4])
        XCTAssertEqual(clamped(ack, mtu: 1216), ack, "not a SYN")
        let small = tcp(source: a4, destination: b4, flags: 0x02, options: [2, 4, 0x04, 0x00])
        XCTAssertEqual(clamped(small, mtu: 1216), small, "MSS 1024 already fits")
        let udp = PacketBuilder.udp(
            source: a4, sourcePort: 1, destination: b4, destinationPort: 2,
            payload: [2] + [UInt8](repeating: 2, count: 40))
        XCTAssertEqual(clamped(udp, mtu: 1216), udp)
        // A malformed option list (length 0) stops the walk without a trap.
        let bad = tcp(source: a4, destination: b4, flags: 0x02, options: [3, 0, 2, 4])
        XCTAssertEqual(clamped(bad, mtu: 1216), bad)
    }
}
