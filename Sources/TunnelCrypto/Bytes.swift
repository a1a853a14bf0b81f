import CSodium

/// libsodium must be initialised once before use; every entry point that needs it reads this.
/// A `static let` is initialised exactly once, thread-safely, by the Swift runtime.
enum Sodium {
    static let ready: Bool = {
        let status = sodium_init()
        precondition(status >= 0, "libsodium failed to initialise")
        // libb2 picks its implementation on first use by writing a shared pointer without a lock;
        // one hash here, under the once-only initialiser, settles it before any thread races.
        _ = Blake2s.hash(UnsafeRawBufferPointer(start: nil, count: 0))
        return true
    }()
}

/// 32 public bytes held inline (no heap): public keys, handshake hashes, mac keys.
/// Stored as four words in memory order, so `withUnsafeBytes` sees the bytes as given.
public struct Bytes32: Hashable, Sendable {
    private var w0: UInt64 = 0
    private var w1: UInt64 = 0
    private var w2: UInt64 = 0
    private var w3: UInt64 = 0

    public static let count = 32

    /// All zero.
    public init() {}

    /// Copies exactly 32 bytes; any other length is a programming error.
    public init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == Bytes32.count, "Bytes32 needs 32 bytes, got \(bytes.count)")
        Swift.withUnsafeMutableBytes(of: &self) { $0.copyMemory(from: bytes) }
    }

    /// Copies exactly 32 bytes, or fails.
    public init?(_ bytes: some Collection<UInt8>) {
        guard bytes.count == Bytes32.count else { return nil }
        self.init()
        Swift.withUnsafeMutableBytes(of: &self) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
    }

    /// Fills the value through a pointer to its 32 bytes (used to receive C outputs in place).
    public init(filling body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        self.init()
        try Swift.withUnsafeMutableBytes(of: &self) { try body($0) }
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try Swift.withUnsafeBytes(of: self) { try body($0) }
    }

    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    public var isZero: Bool { w0 | w1 | w2 | w3 == 0 }

    public var hex: String { withUnsafeBytes { Encoding.hex($0) } }

    /// Constant-time comparison, for when the bytes are a MAC or derived from a secret.
    public func constantTimeEquals(_ other: Bytes32) -> Bool {
        withUnsafeBytes { lhs in
            other.withUnsafeBytes { rhs in
                // Both buffers are 32 bytes by construction.
                sodium_memcmp(lhs.baseAddress, rhs.baseAddress, 32) == 0
            }
        }
    }
}

/// 16 bytes held inline: MACs (mac1, mac2) and cookies.
public struct Bytes16: Hashable, Sendable {
    private var w0: UInt64 = 0
    private var w1: UInt64 = 0

    public static let count = 16

    public init() {}

    public init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == Bytes16.count, "Bytes16 needs 16 bytes, got \(bytes.count)")
        Swift.withUnsafeMutableBytes(of: &self) { $0.copyMemory(from: bytes) }
    }

    public init(filling body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        self.init()
        try Swift.withUnsafeMutableBytes(of: &self) { try body($0) }
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try Swift.withUnsafeBytes(of: self) { try body($0) }
    }

    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    public var isZero: Bool { w0 | w1 == 0 }

    /// Constant-time comparison: MACs are checked with this, never with `==`.
    public func constantTimeEquals(_ other: Bytes16) -> Bool {
        withUnsafeBytes { lhs in
            other.withUnsafeBytes { rhs in
                sodium_memcmp(lhs.baseAddress, rhs.baseAddress, 16) == 0
            }
        }
    }
}

/// Base64 and hex through libsodium: strict, constant-time, and decoding into caller memory so a
/// secret never passes through an intermediate `Data` or `[UInt8]` that outlives it.
public enum Encoding {
    /// Standard base64 with padding, as `wg genkey` prints (44 characters for 32 bytes).
    public static func base64(_ bytes: UnsafeRawBufferPointer) -> String {
        _ = Sodium.ready
        let length = sodium_base64_encoded_len(bytes.count, sodium_base64_VARIANT_ORIGINAL)
        return String(unsafeUninitializedCapacity: length) { out in
            // `length` ≥ 1 (room for the NUL), so the buffer has a base address.
            out.withMemoryRebound(to: CChar.self) { chars in
                _ = sodium_bin2base64(
                    chars.baseAddress!, length, bytes.cBytes,
                    bytes.count, sodium_base64_VARIANT_ORIGINAL)
            }
            return length - 1  // drop the terminating NUL
        }
    }

    /// Decodes base64 of exactly `out.count` bytes; whitespace around it is ignored.
    /// Returns false (leaving `out` zeroed) on any other length or a bad character.
    public static func decodeBase64(_ text: some StringProtocol, into out: UnsafeMutableRawBufferPointer) -> Bool {
        _ = Sodium.ready
        var trimmed = Substring(text)
        while let first = trimmed.first, first.isWhitespace { trimmed.removeFirst() }
        while let last = trimmed.last, last.isWhitespace { trimmed.removeLast() }
        var utf8 = Array(trimmed.utf8)
        defer { sodium_memzero(&utf8, utf8.count) }
        var decodedLength = 0
        var end: UnsafePointer<CChar>? = nil
        let status = utf8.withUnsafeBufferPointer { input in
            input.withMemoryRebound(to: CChar.self) { chars in
                sodium_base642bin(
                    out.cBytes, out.count,
                    chars.baseAddress, chars.count, nil, &decodedLength, &end,
                    sodium_base64_VARIANT_ORIGINAL)
            }
        }
        let consumedAll = utf8.withUnsafeBufferPointer { input in
            input.withMemoryRebound(to: CChar.self) { chars in
                end.map { $0 == chars.baseAddress.map { $0 + chars.count } } ?? false
            }
        }
        guard status == 0, decodedLength == out.count, consumedAll else {
            sodium_memzero(out.baseAddress, out.count)
            return false
        }
        return true
    }

    /// Lowercase hex, as the UAPI wants keys.
    public static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        let length = bytes.count * 2 + 1
        return String(unsafeUninitializedCapacity: length) { out in
            // `length` ≥ 1 (room for the NUL), so the buffer has a base address.
            out.withMemoryRebound(to: CChar.self) { chars in
                _ = sodium_bin2hex(
                    chars.baseAddress!, length, bytes.cBytes,
                    bytes.count)
            }
            return length - 1
        }
    }

    /// `decodeHex` for text given as bytes (a control request read into a `SecretBuffer`):
    /// decodes straight from them, with no intermediate copy.
    public static func decodeHex(bytes: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Bool {
        guard bytes.count == out.count * 2 else { return false }
        var decodedLength = 0
        let status = bytes.withMemoryRebound(to: CChar.self) { chars in
            sodium_hex2bin(out.cBytes, out.count, chars.baseAddress, chars.count, nil, &decodedLength, nil)
        }
        guard status == 0, decodedLength == out.count else {
            sodium_memzero(out.baseAddress, out.count)
            return false
        }
        return true
    }

    /// Decodes hex of exactly `out.count` bytes (either case); false on anything else.
    public static func decodeHex(_ text: some StringProtocol, into out: UnsafeMutableRawBufferPointer) -> Bool {
        var utf8 = Array(text.utf8)
        defer { sodium_memzero(&utf8, utf8.count) }
        guard utf8.count == out.count * 2 else { return false }
        var decodedLength = 0
        var end: UnsafePointer<CChar>? = nil
        let status = utf8.withUnsafeBufferPointer { input in
            input.withMemoryRebound(to: CChar.self) { chars in
                sodium_hex2bin(
                    out.cBytes, out.count,
                    chars.baseAddress, chars.count, nil, &decodedLength, &end)
            }
        }
        guard status == 0, decodedLength == out.count else {
            sodium_memzero(out.baseAddress, out.count)
            return false
        }
        return true
    }
}

/// Fills memory with cryptographically secure random bytes (libsodium's `randombytes_buf`).
public enum SecureRandom {
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        _ = Sodium.ready
        guard let base = buffer.baseAddress else { return }
        randombytes_buf(base, buffer.count)
    }

    public static func uint32() -> UInt32 {
        _ = Sodium.ready
        return randombytes_random()
    }
}

/// One byte of storage that stands in for the base address of an empty buffer: libsodium and libb2
/// declare their pointers non-null, but read nothing through them when the length is zero.
/// `nonisolated(unsafe)` is sound: nothing ever writes through it.
nonisolated(unsafe) private let emptyByte = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)

extension UnsafeRawBufferPointer {
    /// The bytes as a non-null C pointer (see `emptyByte`).
    var cBytes: UnsafePointer<UInt8> {
        baseAddress.map { $0.assumingMemoryBound(to: UInt8.self) } ?? UnsafePointer(emptyByte)
    }
}

extension UnsafeMutableRawBufferPointer {
    /// The bytes as a non-null C pointer (see `emptyByte`).
    var cBytes: UnsafeMutablePointer<UInt8> {
        baseAddress.map { $0.assumingMemoryBound(to: UInt8.self) } ?? emptyByte
    }
}
