import TunnelCrypto

// The WireGuard wire format, declared field by field. Every multi-byte integer is little-endian.
// Sizes and offsets are those of the kernel's `drivers/net/wireguard/messages.h` and wireguard-go's
// `device/noise-protocol.go` (`MessageInitiationSize` etc.); PROTOCOL.md lists them as a table.

/// The first four bytes of every message, read as one little-endian `UInt32`. Reading all four
/// (rather than byte 0) makes a message with nonzero reserved bytes 1–3 an unknown type, as the
/// kernel does.
public enum MessageType: UInt32, Sendable, CaseIterable {
    case initiation = 1
    case response = 2
    case cookieReply = 3
    case transport = 4
}

/// Sizes shared by several messages.
public enum MessageSize {
    /// The type field (1 byte type + 3 reserved zero bytes).
    public static let type = 4
    /// A peer index (sender or receiver).
    public static let index = 4
    /// A Curve25519 public key.
    public static let key = 32
    /// A Poly1305 tag.
    public static let tag = 16
    /// mac1 and mac2.
    public static let mac = 16
    /// The handshake timestamp (TAI64N).
    public static let timestamp = 12
    /// The smallest datagram that can be any message: a keepalive (header + tag).
    public static let minimum = TransportMessage.keepaliveSize
}

/// Type 1, 148 bytes: `type ‖ sender ‖ ephemeral ‖ AEAD(static) ‖ AEAD(timestamp) ‖ mac1 ‖ mac2`.
public enum InitiationMessage {
    public static let size = 148
    public static let senderOffset = 4
    public static let ephemeralOffset = 8
    public static let encryptedStaticOffset = 40
    public static let encryptedStaticSize = MessageSize.key + MessageSize.tag  // 48
    public static let encryptedTimestampOffset = 88
    public static let encryptedTimestampSize = MessageSize.timestamp + MessageSize.tag  // 28
    public static let mac1Offset = 116
    public static let mac2Offset = 132
}

/// Type 2, 92 bytes: `type ‖ sender ‖ receiver ‖ ephemeral ‖ AEAD(empty) ‖ mac1 ‖ mac2`.
public enum ResponseMessage {
    public static let size = 92
    public static let senderOffset = 4
    public static let receiverOffset = 8
    public static let ephemeralOffset = 12
    public static let encryptedNothingOffset = 44
    public static let encryptedNothingSize = MessageSize.tag  // 16
    public static let mac1Offset = 60
    public static let mac2Offset = 76
}

/// Type 3, 64 bytes: `type ‖ receiver ‖ nonce ‖ XAEAD(cookie)`.
public enum CookieReplyMessage {
    public static let size = 64
    public static let receiverOffset = 4
    public static let nonceOffset = 8
    public static let nonceSize = 24
    public static let encryptedCookieOffset = 32
    public static let encryptedCookieSize = MessageSize.mac + MessageSize.tag  // 32
}

/// Type 4, 16 + n + 16 bytes: `type ‖ receiver ‖ counter ‖ AEAD(padded packet)`.
public enum TransportMessage {
    public static let receiverOffset = 4
    public static let counterOffset = 8
    public static let contentOffset = 16
    /// Everything before the ciphertext.
    public static let headerSize = 16
    /// Header plus tag: what a transport message adds to its padded plaintext.
    public static let overhead = headerSize + MessageSize.tag
    /// An empty plaintext: the smallest valid message of any type.
    public static let keepaliveSize = overhead  // 32
}

/// Where mac1 and mac2 sit in a handshake message (types 1 and 2), so the cookie layer can treat
/// both alike: mac1 covers the bytes before it, mac2 the bytes before it (mac1 included).
public struct MACLayout: Sendable, Equatable {
    public let size: Int
    public let mac1Offset: Int
    public let mac2Offset: Int

    public static let initiation = MACLayout(
        size: InitiationMessage.size, mac1Offset: InitiationMessage.mac1Offset,
        mac2Offset: InitiationMessage.mac2Offset)
    public static let response = MACLayout(
        size: ResponseMessage.size, mac1Offset: ResponseMessage.mac1Offset,
        mac2Offset: ResponseMessage.mac2Offset)

    /// The layout of a handshake message of exactly the right size, else nil.
    public static func of(_ message: UnsafeRawBufferPointer) -> MACLayout? {
        switch classify(message) {
        case .initiation: return .initiation
        case .response: return .response
        default: return nil
        }
    }
}

/// Explicit little-endian access to raw message bytes. Reads check the length first and return nil
/// when the field does not fit; writes are given buffers the caller sized, so an overrun there is a
/// programming error and traps.
public enum LittleEndian {
    public static func readUInt32(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt32? {
        guard offset >= 0, buffer.count - offset >= 4 else { return nil }
        return UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    public static func readUInt64(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt64? {
        guard offset >= 0, buffer.count - offset >= 8 else { return nil }
        return UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    public static func write(_ value: UInt32, to buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && buffer.count - offset >= 4, "UInt32 field out of bounds")
        buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self)
    }

    public static func write(_ value: UInt64, to buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && buffer.count - offset >= 8, "UInt64 field out of bounds")
        buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt64.self)
    }
}

/// The first receive rules of PROTOCOL.md, in order: at least 32 bytes; bytes 0–3 are one known
/// little-endian type (so nonzero reserved bytes make it unknown); types 1–3 exactly their size.
/// Transport messages need only the 32-byte minimum here. Nil means "drop silently".
public func classify(_ datagram: UnsafeRawBufferPointer) -> MessageType? {
    guard datagram.count >= MessageSize.minimum,
        let raw = LittleEndian.readUInt32(datagram, at: 0),
        let type = MessageType(rawValue: raw)
    else { return nil }
    switch type {
    case .initiation: return datagram.count == InitiationMessage.size ? type : nil
    case .response: return datagram.count == ResponseMessage.size ? type : nil
    case .cookieReply: return datagram.count == CookieReplyMessage.size ? type : nil
    case .transport: return type
    }
}

/// The index a received message is addressed to or comes from, for routing it to a peer.
/// Each returns nil unless `message` classifies as that type.
extension InitiationMessage {
    public static func senderIndex(_ message: UnsafeRawBufferPointer) -> UInt32? {
        guard classify(message) == .initiation else { return nil }
        return LittleEndian.readUInt32(message, at: senderOffset)
    }
}

extension ResponseMessage {
    public static func senderIndex(_ message: UnsafeRawBufferPointer) -> UInt32? {
        guard classify(message) == .response else { return nil }
        return LittleEndian.readUInt32(message, at: senderOffset)
    }

    public static func receiverIndex(_ message: UnsafeRawBufferPointer) -> UInt32? {
        guard classify(message) == .response else { return nil }
        return LittleEndian.readUInt32(message, at: receiverOffset)
    }
}

extension CookieReplyMessage {
    public static func receiverIndex(_ message: UnsafeRawBufferPointer) -> UInt32? {
        guard classify(message) == .cookieReply else { return nil }
        return LittleEndian.readUInt32(message, at: receiverOffset)
    }
}

extension TransportMessage {
    public static func receiverIndex(_ message: UnsafeRawBufferPointer) -> UInt32? {
        guard classify(message) == .transport else { return nil }
        return LittleEndian.readUInt32(message, at: receiverOffset)
    }

    public static func counter(_ message: UnsafeRawBufferPointer) -> UInt64? {
        guard classify(message) == .transport else { return nil }
        return LittleEndian.readUInt64(message, at: counterOffset)
    }

    /// Writes the 16-byte header (type 4, receiver, counter) at the start of `buffer`.
    public static func writeHeader(receiver: UInt32, counter: UInt64, to buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= headerSize, "transport header needs 16 bytes")
        LittleEndian.write(MessageType.transport.rawValue, to: buffer, at: 0)
        LittleEndian.write(receiver, to: buffer, at: receiverOffset)
        LittleEndian.write(counter, to: buffer, at: counterOffset)
    }
}

extension UnsafeRawBufferPointer {
    /// The `count` bytes at `offset` of a message; the caller has checked the length (by classifying it).
    func wireField(_ offset: Int, _ count: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: self[offset..<offset + count])
    }
}

extension UnsafeMutableRawBufferPointer {
    /// The `count` bytes at `offset` of a message being written; the caller sized the buffer.
    func wireField(_ offset: Int, _ count: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: self[offset..<offset + count])
    }
}
