import TunnelCrypto

// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses it (PROTOCOL.md "Handshake").
// Pure functions: ephemeral keys, indices and timestamps are arguments; nothing here does I/O or
// reads a clock. mac1/mac2 are the cookie layer's job (Cookie.swift): these functions leave them
// zero when writing and ignore them when reading, so the caller must check mac1 first.

/// This device's static identity, with the two keys derived from its public key that peers use
/// to address mac1 and cookie replies to it.
public struct LocalIdentity: Sendable {
    public let privateKey: PrivateKey
    public var publicKey: PublicKey { privateKey.publicKey }
    /// HASH("mac1----" ‖ our public key): checks mac1 on messages sent to us.
    public let mac1Key: Bytes32
    /// HASH("cookie--" ‖ our public key): encrypts the cookie replies we send.
    public let cookieKey: Bytes32

    public init(privateKey: PrivateKey) {
        fatalError("unimplemented")
    }
}

/// What we know of a peer, precomputed once per (local key, peer) pair. Rebuild it when the local
/// private key or the preshared key changes.
public struct RemoteIdentity: Sendable {
    public let publicKey: PublicKey
    public let presharedKey: PresharedKey
    /// DH(our static, their static); nil when their key is low-order, which makes every
    /// handshake with them fail.
    public let precomputedStaticStatic: SecretKey?
    /// HASH("mac1----" ‖ their public key): computes mac1 on messages we send them.
    public let mac1Key: Bytes32
    /// HASH("cookie--" ‖ their public key): decrypts the cookie replies they send us.
    public let cookieKey: Bytes32

    public init(publicKey: PublicKey, presharedKey: PresharedKey = .none(), local: LocalIdentity) {
        fatalError("unimplemented")
    }
}

/// What the initiator keeps between sending an initiation and receiving its response.
public struct InitiationState: Sendable {
    /// The index we put in the initiation; the response's receiver field must equal it.
    public let senderIndex: UInt32
    /// The peer it was sent to.
    public let remoteStatic: PublicKey
    let hash: Bytes32
    let chainingKey: SecretKey
    let ephemeral: PrivateKey
}

/// A received initiation after its first half: the sender's static key is known (so the caller
/// can look the peer up) but nothing is authenticated yet.
public struct InitiationIdentity: Sendable {
    /// The initiator's static public key, decrypted.
    public let remoteStatic: PublicKey
    /// The initiator's sender index.
    public let senderIndex: UInt32
    let remoteEphemeral: PublicKey
    let hash: Bytes32
    let chainingKey: SecretKey
    /// The 28-byte encrypted timestamp (public ciphertext), opened in the second half.
    let encryptedTimestamp: [UInt8]
}

/// A fully authenticated initiation. The caller checks `timestamp` is newer than the last one
/// from this peer (replay) and the per-peer initiation rate before answering with `createResponse`.
public struct ConsumedInitiation: Sendable {
    public let remoteStatic: PublicKey
    /// The initiator's sender index: the receiver index of our response and of our transport messages.
    public let remoteIndex: UInt32
    public let timestamp: TAI64N
    let remoteEphemeral: PublicKey
    let hash: Bytes32
    let chainingKey: SecretKey
}

/// The result of a completed handshake, from this side's point of view.
public struct TransportKeys: Sendable {
    public let sending: SecretKey
    public let receiving: SecretKey
    /// Our index: the receiver field of transport messages sent to us.
    public let localIndex: UInt32
    /// Their index: the receiver field of transport messages we send.
    public let remoteIndex: UInt32
    /// True on the initiator side. The responder must not send on these keys until it has
    /// received a transport message under them (key confirmation).
    public let isInitiator: Bool
}

public enum Noise {
    /// The Noise protocol name; C0 = HASH(construction).
    public static let construction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    /// WireGuard's prologue; H0 = HASH(C0 ‖ identifier).
    public static let identifier = "WireGuard v1 zx2c4 Jason@zx2c4.com"
    public static let mac1Label = "mac1----"
    public static let cookieLabel = "cookie--"

    /// Initiator: writes a 148-byte initiation to the start of `out` (which must hold 148 bytes)
    /// with mac1 and mac2 zero. Nil, with `out` unspecified, when the peer's key is low-order.
    public static func createInitiation(
        local: LocalIdentity, remote: RemoteIdentity, senderIndex: UInt32, timestamp: TAI64N,
        ephemeral: PrivateKey, into out: UnsafeMutableRawBufferPointer
    ) -> InitiationState? {
        fatalError("unimplemented")
    }

    /// Responder, first half: DH with the initiator's ephemeral and decryption of its static key.
    /// Nil when `message` is not a well-formed initiation or does not decrypt.
    public static func decryptInitiationIdentity(
        local: LocalIdentity, message: UnsafeRawBufferPointer
    ) -> InitiationIdentity? {
        fatalError("unimplemented")
    }

    /// Responder, second half: with the peer found by `identity.remoteStatic`, authenticates the
    /// initiation (static-static DH) and decrypts the timestamp. Nil when `remote` is not that
    /// peer or the AEAD fails.
    public static func consumeInitiation(
        _ identity: InitiationIdentity, remote: RemoteIdentity
    ) -> ConsumedInitiation? {
        fatalError("unimplemented")
    }

    /// Both halves, with `lookup` mapping the decrypted static key to a configured peer (nil: unknown).
    public static func consumeInitiation(
        local: LocalIdentity, message: UnsafeRawBufferPointer, lookup: (PublicKey) -> RemoteIdentity?
    ) -> ConsumedInitiation? {
        fatalError("unimplemented")
    }

    /// Responder: writes a 92-byte response to `initiation` at the start of `out` (mac1/mac2 zero)
    /// and returns the responder's transport keys. Nil when a DH result is zero.
    public static func createResponse(
        for initiation: ConsumedInitiation, remote: RemoteIdentity, senderIndex: UInt32,
        ephemeral: PrivateKey, into out: UnsafeMutableRawBufferPointer
    ) -> TransportKeys? {
        fatalError("unimplemented")
    }

    /// Initiator: checks a response against the state kept from `createInitiation` (receiver index,
    /// DH, PSK, AEAD) and returns the initiator's transport keys. Nil on any mismatch; `state`
    /// stays usable for another response.
    public static func consumeResponse(
        state: InitiationState, local: LocalIdentity, remote: RemoteIdentity,
        message: UnsafeRawBufferPointer
    ) -> TransportKeys? {
        fatalError("unimplemented")
    }
}
