import Testing

@testable import TunnelCore

/// The wire format against the kernel's `drivers/net/wireguard/messages.h` and wireguard-go's
/// `device/noise-protocol.go` (sizes 148/92/64, transport header 16) and PROTOCOL.md's receive rules.
@Suite struct MessagesTests {
    @Test func fieldsTileEachMessageExactly() {
        // Initiation: type, sender, ephemeral, static+tag, timestamp+tag, mac1, mac2.
        #expect(InitiationMessage.senderOffset == MessageSize.type)
        #expect(InitiationMessage.ephemeralOffset == InitiationMessage.senderOffset + MessageSize.index)
        #expect(InitiationMessage.encryptedStaticOffset == InitiationMessage.ephemeralOffset + MessageSize.key)
        #expect(
            InitiationMessage.encryptedTimestampOffset
                == InitiationMessage.encryptedStaticOffset + InitiationMessage.encryptedStaticSize)
        #expect(
            InitiationMessage.mac1Offset
                == InitiationMessage.encryptedTimestampOffset + InitiationMessage.encryptedTimestampSize)
        #expect(InitiationMessage.mac2Offset == InitiationMessage.mac1Offset + MessageSize.mac)
        #expect(InitiationMessage.size == InitiationMessage.mac2Offset + MessageSize.mac)
        #expect(InitiationMessage.size == 148)
        // Response: type, sender, receiver, ephemeral, empty+tag, mac1, mac2.
        #expect(ResponseMessage.receiverOffset == ResponseMessage.senderOffset + MessageSize.index)
        #expect(ResponseMessage.ephemeralOffset == ResponseMessage.receiverOffset + MessageSize.index)
        #expect(ResponseMessage.encryptedNothingOffset == ResponseMessage.ephemeralOffset + MessageSize.key)
        #expect(
            ResponseMessage.mac1Offset == ResponseMessage.encryptedNothingOffset + ResponseMessage.encryptedNothingSize)
        #expect(ResponseMessage.mac2Offset == ResponseMessage.mac1Offset + MessageSize.mac)
        #expect(ResponseMessage.size == ResponseMessage.mac2Offset + MessageSize.mac)
        #expect(ResponseMessage.size == 92)
        // Cookie reply: type, receiver, nonce, cookie+tag.
        #expect(CookieReplyMessage.nonceOffset == CookieReplyMessage.receiverOffset + MessageSize.index)
        #expect(
            CookieReplyMessage.encryptedCookieOffset == CookieReplyMessage.nonceOffset + CookieReplyMessage.nonceSize)
        #expect(
            CookieReplyMessage.size == CookieReplyMessage.encryptedCookieOffset + CookieReplyMessage.encryptedCookieSize
        )
        #expect(CookieReplyMessage.size == 64)
        // Transport: type, receiver, counter, then ciphertext; a keepalive is 32 bytes.
        #expect(TransportMessage.contentOffset == TransportMessage.counterOffset + 8)
        #expect(TransportMessage.headerSize == 16)
        #expect(TransportMessage.keepaliveSize == 32)
        #expect(MessageSize.minimum == 32)
    }

    private func classify(_ bytes: [UInt8]) -> MessageType? {
        bytes.withUnsafeBytes { TunnelCore.classify($0) }
    }

    private func message(type: UInt32, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { LittleEndian.write(type, to: $0, at: 0) }
        return bytes
    }

    @Test func classifiesEachTypeAtItsSize() {
        #expect(classify(message(type: 1, count: 148)) == .initiation)
        #expect(classify(message(type: 2, count: 92)) == .response)
        #expect(classify(message(type: 3, count: 64)) == .cookieReply)
        #expect(classify(message(type: 4, count: 32)) == .transport)
        #expect(classify(message(type: 4, count: 1500)) == .transport)
    }

    @Test func handshakeTypesMustBeExactlyTheirSize() {
        for (type, size) in [(UInt32(1), 148), (2, 92), (3, 64)] {
            #expect(classify(message(type: type, count: size - 1)) == nil)
            #expect(classify(message(type: type, count: size + 1)) == nil)
        }
    }

    @Test func dropsShortDatagramsAndUnknownTypes() {
        #expect(classify([]) == nil)
        #expect(classify(message(type: 4, count: 31)) == nil)
        #expect(classify(message(type: 0, count: 148)) == nil)
        #expect(classify(message(type: 5, count: 148)) == nil)
        // Nonzero reserved bytes make the four-byte type unknown (the kernel reads one LE u32).
        for reservedByte in 1...3 {
            for type: UInt8 in 1...4 {
                var bytes = message(type: UInt32(type), count: [148, 92, 64, 32][Int(type) - 1])
                bytes[reservedByte] = 1
                #expect(classify(bytes) == nil)
            }
        }
    }

    @Test func littleEndianByteOrderAndBoundsChecks() {
        var bytes = [UInt8](repeating: 0, count: 12)
        bytes.withUnsafeMutableBytes {
            LittleEndian.write(UInt32(0x0403_0201), to: $0, at: 0)
            LittleEndian.write(UInt64(0x0c0b_0a09_0807_0605), to: $0, at: 4)
        }
        #expect(bytes == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        bytes.withUnsafeBytes { raw in
            #expect(LittleEndian.readUInt32(raw, at: 0) == 0x0403_0201)
            #expect(LittleEndian.readUInt32(raw, at: 8) == 0x0c0b_0a09)
            #expect(LittleEndian.readUInt32(raw, at: 9) == nil)
            #expect(LittleEndian.readUInt32(raw, at: -1) == nil)
            #expect(LittleEndian.readUInt64(raw, at: 4) == 0x0c0b_0a09_0807_0605)
            #expect(LittleEndian.readUInt64(raw, at: 5) == nil)
        }
        #expect([UInt8]().withUnsafeBytes { LittleEndian.readUInt32($0, at: 0) } == nil)
    }

    @Test func transportHeaderRoundTrip() {
        var bytes = [UInt8](repeating: 0xff, count: 48)
        bytes.withUnsafeMutableBytes {
            TransportMessage.writeHeader(receiver: 0xdead_beef, counter: 0x0102_0304_0506_0708, to: $0)
        }
        #expect(Array(bytes[0..<16]) == [4, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 8, 7, 6, 5, 4, 3, 2, 1])
        bytes.withUnsafeBytes { raw in
            #expect(TunnelCore.classify(raw) == .transport)
            #expect(TransportMessage.receiverIndex(raw) == 0xdead_beef)
            #expect(TransportMessage.counter(raw) == 0x0102_0304_0506_0708)
            #expect(InitiationMessage.senderIndex(raw) == nil)
        }
    }

    @Test func indexAccessorsRequireTheirType() {
        var response = message(type: 2, count: 92)
        response.withUnsafeMutableBytes {
            LittleEndian.write(UInt32(7), to: $0, at: ResponseMessage.senderOffset)
            LittleEndian.write(UInt32(9), to: $0, at: ResponseMessage.receiverOffset)
        }
        response.withUnsafeBytes { raw in
            #expect(ResponseMessage.senderIndex(raw) == 7)
            #expect(ResponseMessage.receiverIndex(raw) == 9)
            #expect(CookieReplyMessage.receiverIndex(raw) == nil)
            #expect(MACLayout.of(raw) == .response)
        }
        message(type: 1, count: 148).withUnsafeBytes { #expect(MACLayout.of($0) == .initiation) }
        message(type: 3, count: 64).withUnsafeBytes { #expect(MACLayout.of($0) == nil) }
    }
}
