import Testing
import TunnelCore
import TunnelTestSupport

@Suite struct PacketBuilderTests {
    /// The worked IPv4 header example from Wikipedia, "Internet checksum" / "IPv4 header
    /// checksum": 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
    @Test func ipv4HeaderChecksumKnownAnswer() {
        var header: [UInt8] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
            0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ]
        #expect(PacketBuilder.internetChecksum(header) == 0xb861)
        header[10] = 0xb8
        header[11] = 0x61
        #expect(PacketBuilder.internetChecksum(header) == 0)
    }

    /// RFC 1071 §3 example: the one's-complement sum of 0001 f203 f4f5 f6f7 is ddf2,
    /// so the checksum is its complement, 220d.
    @Test func rfc1071Example() {
        #expect(PacketBuilder.internetChecksum([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]) == 0x220d)
    }

    @Test func ipv4UDPChecksumsVerify() {
        let source = IPAddress("10.0.0.1")!
        let destination = IPAddress("10.0.0.2")!
        let packet = PacketBuilder.udp(
            source: source, sourcePort: 40000, destination: destination, destinationPort: 9,
            payload: Array("hello".utf8))
        #expect(packet.count == 33)
        #expect(Array(packet[0..<4]) == [0x45, 0, 0, 33])
        #expect(packet[9] == 17)
        #expect(PacketBuilder.internetChecksum(Array(packet[0..<20])) == 0)
        // UDP: pseudo-header + segment sums to zero when the checksum is right.
        let segment = Array(packet[20...])
        let pseudo = source.networkBytes + destination.networkBytes + [0, 17, 0, UInt8(segment.count)]
        #expect(PacketBuilder.internetChecksum(pseudo + segment) == 0)
        #expect(Array(segment[4..<6]) == [0, 13])
    }

    @Test func ipv6UDPChecksumsVerify() {
        let source = IPAddress("2001:db8::1")!
        let destination = IPAddress("2001:db8::2")!
        let packet = PacketBuilder.udp(
            source: source, sourcePort: 1234, destination: destination, destinationPort: 5678,
            payload: [1, 2, 3])
        #expect(packet.count == 51)
        #expect(packet[0] == 0x60 && packet[4] == 0 && packet[5] == 11 && packet[6] == 17)
        let segment = Array(packet[40...])
        let pseudo =
            source.networkBytes + destination.networkBytes + [0, 0, 0, UInt8(segment.count), 0, 0, 0, 17]
        #expect(PacketBuilder.internetChecksum(pseudo + segment) == 0)
    }

    @Test func icmpEchoChecksumsVerify() {
        let v4 = PacketBuilder.icmpEcho(
            source: IPAddress("10.0.0.1")!, destination: IPAddress("10.0.0.2")!, identifier: 0x1234,
            sequence: 1, payload: [0xaa, 0xbb, 0xcc])
        #expect(v4[9] == 1 && v4[20] == 8 && v4[21] == 0)
        #expect(PacketBuilder.internetChecksum(Array(v4[20...])) == 0)
        let reply = PacketBuilder.icmpEcho(
            source: IPAddress("10.0.0.2")!, destination: IPAddress("10.0.0.1")!, identifier: 0x1234,
            sequence: 1, reply: true)
        #expect(reply[20] == 0)

        let source = IPAddress("fd00::1")!
        let destination = IPAddress("fd00::2")!
        let v6 = PacketBuilder.icmpEcho(
            source: source, destination: destination, identifier: 7, sequence: 9, payload: [1])
        #expect(v6[6] == 58 && v6[40] == 128)
        let message = Array(v6[40...])
        let pseudo =
            source.networkBytes + destination.networkBytes + [0, 0, 0, UInt8(message.count), 0, 0, 0, 58]
        #expect(PacketBuilder.internetChecksum(pseudo + message) == 0)
    }
}
