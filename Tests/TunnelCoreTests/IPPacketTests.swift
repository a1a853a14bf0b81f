import Testing
import TunnelTestSupport

@testable import TunnelCore

@Suite struct IPPacketTests {
    static let source4 = IPAddress("192.0.2.1")!
    static let destination4 = IPAddress("198.51.100.77")!
    static let source6 = IPAddress("2001:db8::1")!
    static let destination6 = IPAddress("fd00:1:2:3::abcd")!

    @Test(arguments: [0, 1, 7, 8, 15, 100, 1391])
    func ipv4UDPWithOddSizesAndPadding(payloadSize: Int) throws {
        let packet = PacketBuilder.udp(
            source: Self.source4, sourcePort: 5353, destination: Self.destination4,
            destinationPort: 53, payload: Array(repeating: 0xab, count: payloadSize))
        #expect(packet.count == 20 + 8 + payloadSize)
        // WireGuard pads plaintext to a multiple of 16 with zeros.
        let padded = packet + Array(repeating: 0, count: (16 - packet.count % 16) % 16)
        for buffer in [packet, padded] {
            let header = try IPPacketHeader(parsing: buffer)
            #expect(header.version == 4)
            #expect(header.length == packet.count)
            #expect(header.source == Self.source4)
            #expect(header.destination == Self.destination4)
        }
    }

    @Test(arguments: [0, 1, 13, 56, 1351])
    func ipv6ICMPWithOddSizesAndPadding(payloadSize: Int) throws {
        let packet = PacketBuilder.icmpEcho(
            source: Self.source6, destination: Self.destination6, identifier: 7, sequence: 1,
            payload: Array(repeating: 0x5a, count: payloadSize))
        #expect(packet.count == 40 + 8 + payloadSize)
        let padded = packet + Array(repeating: 0, count: 16 + (16 - packet.count % 16) % 16)
        for buffer in [packet, padded] {
            let header = try IPPacketHeader(parsing: buffer)
            #expect(header.version == 6)
            #expect(header.length == packet.count)
            #expect(header.source == Self.source6)
            #expect(header.destination == Self.destination6)
        }
    }

    @Test func ipv4WithOptionsIsAccepted() throws {
        // IHL 6: one 4-byte option word (here four NOPs); total length 24 + 8 bytes of payload.
        var packet: [UInt8] = [
            0x46, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0,
            10, 0, 0, 1, 10, 0, 0, 2,
            1, 1, 1, 1,
        ]
        packet += [0, 1, 0, 2, 0, 8, 0, 0]
        let header = try IPPacketHeader(parsing: packet + [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(header.length == 32)
        #expect(header.source == IPAddress("10.0.0.1")!)
        #expect(header.destination == IPAddress("10.0.0.2")!)
    }

    @Test func headerOnlyIPv6IsItsOwnLength() throws {
        let packet = PacketBuilder.ipPacket(
            source: Self.source6, destination: Self.destination6, protocolNumber: 59, payload: [])
        #expect(try IPPacketHeader(parsing: packet + [0, 0, 0, 0]).length == 40)
    }

    @Test func emptyAndShortBuffersAreTruncated() {
        #expect(throws: IPPacketError.truncatedHeader) { try IPPacketHeader(parsing: [UInt8]()) }
        let v4 = PacketBuilder.udp(
            source: Self.source4, sourcePort: 1, destination: Self.destination4, destinationPort: 2)
        let v6 = PacketBuilder.udp(
            source: Self.source6, sourcePort: 1, destination: Self.destination6, destinationPort: 2)
        for cut in [1, 19] {
            #expect(throws: IPPacketError.truncatedHeader) {
                try IPPacketHeader(parsing: Array(v4.prefix(cut)))
            }
        }
        for cut in [1, 20, 39] {
            #expect(throws: IPPacketError.truncatedHeader) {
                try IPPacketHeader(parsing: Array(v6.prefix(cut)))
            }
        }
    }

    @Test func lengthFieldBeyondTheBufferIsDropped() {
        let v4 = PacketBuilder.udp(
            source: Self.source4, sourcePort: 1, destination: Self.destination4, destinationPort: 2,
            payload: [1, 2, 3])
        let v6 = PacketBuilder.udp(
            source: Self.source6, sourcePort: 1, destination: Self.destination6, destinationPort: 2,
            payload: [1, 2, 3])
        // The header is complete but the payload was cut short.
        #expect(throws: IPPacketError.lengthExceedsBuffer) {
            try IPPacketHeader(parsing: Array(v4.dropLast()))
        }
        #expect(throws: IPPacketError.lengthExceedsBuffer) {
            try IPPacketHeader(parsing: Array(v6.dropLast()))
        }
        #expect(throws: IPPacketError.lengthExceedsBuffer) {
            try IPPacketHeader(parsing: Array(v6.prefix(40)))
        }
        // A lying length field.
        var lying = v4
        lying[2] = 0xff
        #expect(throws: IPPacketError.lengthExceedsBuffer) { try IPPacketHeader(parsing: lying) }
    }

    @Test func badIPv4HeaderLengthsAreDropped() {
        let good = PacketBuilder.udp(
            source: Self.source4, sourcePort: 1, destination: Self.destination4, destinationPort: 2)
        var shortIHL = good
        shortIHL[0] = 0x44  // 16-byte header: below the minimum
        #expect(throws: IPPacketError.badHeaderLength) { try IPPacketHeader(parsing: shortIHL) }
        var totalBelowHeader = good
        totalBelowHeader[2] = 0
        totalBelowHeader[3] = 19
        #expect(throws: IPPacketError.badHeaderLength) { try IPPacketHeader(parsing: totalBelowHeader) }
        var ihlBeyondTotal = good
        ihlBeyondTotal[0] = 0x4f  // 60-byte header in a 28-byte packet
        #expect(throws: IPPacketError.badHeaderLength) { try IPPacketHeader(parsing: ihlBeyondTotal) }
    }

    @Test(arguments: [UInt8(0), 1, 5, 7, 15])
    func otherVersionsAreDropped(version: UInt8) {
        var packet = PacketBuilder.udp(
            source: Self.source4, sourcePort: 1, destination: Self.destination4, destinationPort: 2)
        packet[0] = version << 4 | 5
        #expect(throws: IPPacketError.unsupportedVersion(version)) { try IPPacketHeader(parsing: packet) }
    }

    @Test func unalignedBuffersParse() throws {
        let packet = PacketBuilder.udp(
            source: Self.source6, sourcePort: 1, destination: Self.destination6, destinationPort: 2,
            payload: [9, 9, 9])
        let storage: [UInt8] = [0xff, 0xff, 0xff] + packet
        let header = try storage.withUnsafeBytes { bytes throws(IPPacketError) in
            try IPPacketHeader(parsing: UnsafeRawBufferPointer(rebasing: bytes[3...]))
        }
        #expect(header.length == packet.count)
        #expect(header.source == Self.source6)
    }
}
