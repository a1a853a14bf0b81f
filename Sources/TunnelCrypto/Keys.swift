import CSodium

/// 32 secret bytes: private keys, preshared keys, chaining keys, transport keys.
///
/// Lives in its own heap block (so copies of the reference never copy the secret), is immutable
/// after `init`, compared in constant time, zeroed in `deinit`, and never printed.
/// `@unchecked Sendable` is sound: the bytes are written only during initialisation.
public final class SecretKey: @unchecked Sendable, Equatable, CustomStringConvertible,
    CustomDebugStringConvertible
{
    public static let count = 32
    /// Owned; 32 bytes; zeroed and freed in deinit.
    let storage: UnsafeMutableRawPointer

    /// Fills a fresh key through `body`, which must write all 32 bytes.
    ///
    /// If `body` throws, the object is already fully initialised, so Swift runs `deinit`, which
    /// zeroes and frees `storage`: nothing here may free it too.
    public init(filling body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        storage = UnsafeMutableRawPointer.allocate(byteCount: SecretKey.count, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: SecretKey.count)
        try body(UnsafeMutableRawBufferPointer(start: storage, count: SecretKey.count))
    }

    /// Copies exactly 32 bytes.
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == SecretKey.count, "a key is 32 bytes")
        self.init { $0.copyMemory(from: bytes) }
    }

    /// Decodes exactly 32 bytes of standard base64 (as `wg genkey` prints); nil otherwise.
    public convenience init?(base64: some StringProtocol) {
        var ok = false
        self.init { ok = Encoding.decodeBase64(base64, into: $0) }
        guard ok else { return nil }
    }

    /// Decodes exactly 32 bytes of hex (as the UAPI sends keys); nil otherwise.
    public convenience init?(hex: some StringProtocol) {
        var ok = false
        self.init { ok = Encoding.decodeHex(hex, into: $0) }
        guard ok else { return nil }
    }

    /// 32 zero bytes (the "no preshared key" value of the protocol).
    public static func zero() -> SecretKey { SecretKey { _ in } }

    public static func random() -> SecretKey { SecretKey { SecureRandom.fill($0) } }

    deinit {
        sodium_memzero(storage, SecretKey.count)
        storage.deallocate()
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: storage, count: SecretKey.count))
    }

    public var isZero: Bool { sodium_is_zero(storage, SecretKey.count) == 1 }

    public static func == (lhs: SecretKey, rhs: SecretKey) -> Bool {
        sodium_memcmp(lhs.storage, rhs.storage, SecretKey.count) == 0
    }

    public var description: String { "SecretKey(redacted)" }
    public var debugDescription: String { description }
}

/// An X25519 public key (as printed by `wg pubkey`).
public struct PublicKey: Hashable, Sendable, CustomStringConvertible {
    public let bytes32: Bytes32

    public init(_ bytes: Bytes32) { self.bytes32 = bytes }

    public init?(base64: some StringProtocol) {
        var ok = false
        let value = Bytes32 { ok = Encoding.decodeBase64(base64, into: $0) }
        guard ok else { return nil }
        self.bytes32 = value
    }

    public init?(hex: some StringProtocol) {
        var ok = false
        let value = Bytes32 { ok = Encoding.decodeHex(hex, into: $0) }
        guard ok else { return nil }
        self.bytes32 = value
    }

    public var base64: String { bytes32.withUnsafeBytes { Encoding.base64($0) } }
    public var hex: String { bytes32.hex }
    public var description: String { base64 }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try bytes32.withUnsafeBytes(body)
    }
}

/// An X25519 private key, clamped, with its public key computed once.
public final class PrivateKey: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public let secret: SecretKey
    public let publicKey: PublicKey

    /// Takes ownership of `secret`, clamping it as RFC 7748 §5 does (so the stored form matches
    /// what `wg genkey` prints).
    public init(secret: SecretKey) {
        let clamped = SecretKey { out in
            secret.withUnsafeBytes { out.copyMemory(from: $0) }
            out[0] &= 248
            out[31] = (out[31] & 127) | 64
        }
        self.secret = clamped
        self.publicKey = X25519.publicKey(of: clamped)
    }

    public static func generate() -> PrivateKey { PrivateKey(secret: .random()) }

    public convenience init?(base64: some StringProtocol) {
        guard let secret = SecretKey(base64: base64) else { return nil }
        self.init(secret: secret)
    }

    public convenience init?(hex: some StringProtocol) {
        guard let secret = SecretKey(hex: hex) else { return nil }
        self.init(secret: secret)
    }

    /// The secret in `wg genkey` form, for writing a key file or answering the UAPI. Never log it.
    public var base64: String { secret.withUnsafeBytes { Encoding.base64($0) } }
    /// The secret in UAPI hex form. Never log it.
    public var hex: String { secret.withUnsafeBytes { Encoding.hex($0) } }

    public static func == (lhs: PrivateKey, rhs: PrivateKey) -> Bool { lhs.secret == rhs.secret }

    public var description: String { "PrivateKey(public: \(publicKey.base64))" }
    public var debugDescription: String { description }
}

/// A WireGuard preshared key (`wg genpsk`). All-zero means "none", as in the protocol.
public final class PresharedKey: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public let secret: SecretKey

    public init(secret: SecretKey) { self.secret = secret }

    public static func generate() -> PresharedKey { PresharedKey(secret: .random()) }
    public static func none() -> PresharedKey { PresharedKey(secret: .zero()) }

    public convenience init?(base64: some StringProtocol) {
        guard let secret = SecretKey(base64: base64) else { return nil }
        self.init(secret: secret)
    }

    public convenience init?(hex: some StringProtocol) {
        guard let secret = SecretKey(hex: hex) else { return nil }
        self.init(secret: secret)
    }

    public var isNone: Bool { secret.isZero }
    /// Never log it.
    public var base64: String { secret.withUnsafeBytes { Encoding.base64($0) } }
    /// Never log it.
    public var hex: String { secret.withUnsafeBytes { Encoding.hex($0) } }

    public static func == (lhs: PresharedKey, rhs: PresharedKey) -> Bool { lhs.secret == rhs.secret }

    public var description: String { isNone ? "PresharedKey(none)" : "PresharedKey(redacted)" }
    public var debugDescription: String { description }
}

/// X25519 Diffie-Hellman (RFC 7748) through libsodium.
public enum X25519 {
    public static func publicKey(of secret: SecretKey) -> PublicKey {
        _ = Sodium.ready
        let value = Bytes32 { out in
            secret.withUnsafeBytes { scalar in
                _ = crypto_scalarmult_base(
                    out.cBytes,
                    scalar.cBytes)
            }
        }
        return PublicKey(value)
    }

    /// The shared secret, or nil when it is all zero (a low-order public key): the protocol
    /// rejects that handshake.
    public static func sharedSecret(_ secret: SecretKey, _ peer: PublicKey) -> SecretKey? {
        _ = Sodium.ready
        var status: Int32 = 0
        let shared = SecretKey { out in
            secret.withUnsafeBytes { scalar in
                peer.withUnsafeBytes { point in
                    status = crypto_scalarmult(
                        out.cBytes,
                        scalar.cBytes,
                        point.cBytes)
                }
            }
        }
        // libsodium returns -1 exactly when the result is all zero; check both to be safe.
        guard status == 0, !shared.isZero else { return nil }
        return shared
    }
}
