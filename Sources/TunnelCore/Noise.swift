import Synchronization
import TunnelCrypto

// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses it (PROTOCOL.md "Handshake"):
//
//     <- s
//     ...
//     -> e, es, s, ss, {timestamp}
//     <- e, ee, se, psk, {}
//
// Pure functions: ephemeral keys, indices and timestamps are arguments; nothing here does I/O or
// reads a clock. mac1/mac2 are the cookie layer's job (Cookie.swift): these functions leave them
// zero when writing and ignore them when reading, so the caller checks mac1 before calling in.
// Every failure returns nil and changes nothing the caller holds (the functions return new values
// and never mutate their arguments). Chaining keys and DH results live only in `SecretKey`s, which
// zero themselves when dropped.

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
        self.privateKey = privateKey
        self.mac1Key = Noise.labelledKey(Noise.mac1Label, privateKey.publicKey)
        self.cookieKey = Noise.labelledKey(Noise.cookieLabel, privateKey.publicKey)
    }
}

/// What we know of a peer, precomputed once per (local key, peer) pair. Rebuild it when the local
/// private key or the preshared key changes.
public struct RemoteIdentity: Sendable {
    public let publicKey: PublicKey
    public let presharedKey: PresharedKey
    /// DH(our static, their static); nil when their key is low-order, which makes every
    /// handshake with them fail. Computed at its first use (a handshake) and kept: for 10,000
    /// peers, computing every one at start-up was most of the start-up time (0.6 s here).
    public var precomputedStaticStatic: SecretKey? { staticStatic.value }
    private let staticStatic: StaticStaticSecret
    /// HASH("mac1----" ‖ their public key): computes mac1 on messages we send them.
    public let mac1Key: Bytes32
    /// HASH("cookie--" ‖ their public key): decrypts the cookie replies they send us.
    public let cookieKey: Bytes32

    public init(publicKey: PublicKey, presharedKey: PresharedKey = .none(), local: LocalIdentity) {
        self.publicKey = publicKey
        self.presharedKey = presharedKey
        self.staticStatic = StaticStaticSecret(local: local.privateKey, remote: publicKey)
        self.mac1Key = Noise.labelledKey(Noise.mac1Label, publicKey)
        self.cookieKey = Noise.labelledKey(Noise.cookieLabel, publicKey)
    }
}

/// The static-static DH of one (local key, peer key) pair, made on first use and kept. A class, so
/// that the copies of a `RemoteIdentity` share one result; Sendable because its only mutable
/// state sits in a Mutex.
final class StaticStaticSecret: Sendable {
    private let local: PrivateKey
    private let remote: PublicKey
    /// nil: not computed yet; .some(nil): the peer's key is low-order.
    private let result = Mutex<SecretKey??>(nil)

    init(local: PrivateKey, remote: PublicKey) {
        self.local = local
        self.remote = remote
    }

    var value: SecretKey? {
        result.withLock { cached in
            if let cached { return cached }
            let computed = X25519.sharedSecret(local.secret, remote)
            cached = .some(computed)
            return computed
        }
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

    /// (C0, H0) for WireGuard, computed once (a `static let` is initialised once, thread-safely).
    static let wireGuardStart = HandshakeStart(construction: construction, prologue: Array(identifier.utf8))

    // MARK: Initiator

    /// Initiator: writes a 148-byte initiation to the start of `out` (which must hold 148 bytes)
    /// with mac1 and mac2 zero. Nil, with `out` unspecified, when the peer's key is low-order.
    public static func createInitiation(
        local: LocalIdentity, remote: RemoteIdentity, senderIndex: UInt32, timestamp: TAI64N,
        ephemeral: PrivateKey, into out: UnsafeMutableRawBufferPointer
    ) -> InitiationState? {
        precondition(out.count >= InitiationMessage.size, "an initiation needs 148 bytes")
        guard let staticStatic = remote.precomputedStaticStatic else { return nil }
        let message = UnsafeMutableRawBufferPointer(rebasing: out[0..<InitiationMessage.size])
        message.initializeMemory(as: UInt8.self, repeating: 0)
        LittleEndian.write(MessageType.initiation.rawValue, to: message, at: 0)
        LittleEndian.write(senderIndex, to: message, at: InitiationMessage.senderOffset)

        var encodedTimestamp: (UInt64, UInt32) = (0, 0)  // 12 bytes on the stack
        let result = withUnsafeMutableBytes(of: &encodedTimestamp) { timestampBytes in
            let payload = UnsafeMutableRawBufferPointer(rebasing: timestampBytes[0..<TAI64N.encodedSize])
            timestamp.write(to: payload)
            return writeInitiation(
                start: wireGuardStart, localStatic: local.privateKey, remoteStatic: remote.publicKey,
                staticStatic: staticStatic, ephemeral: ephemeral, payload: UnsafeRawBufferPointer(payload),
                ephemeralOut: message.wireField(InitiationMessage.ephemeralOffset, MessageSize.key),
                staticOut: message.wireField(
                    InitiationMessage.encryptedStaticOffset, InitiationMessage.encryptedStaticSize),
                payloadOut: message.wireField(
                    InitiationMessage.encryptedTimestampOffset, InitiationMessage.encryptedTimestampSize))
        }
        guard let (hash, chainingKey) = result else { return nil }
        return InitiationState(
            senderIndex: senderIndex, remoteStatic: remote.publicKey, hash: hash,
            chainingKey: chainingKey, ephemeral: ephemeral)
    }

    /// Initiator: checks a response against the state kept from `createInitiation` (receiver index,
    /// DH, PSK, AEAD) and returns the initiator's transport keys. Nil on any mismatch; `state`
    /// stays usable for another response.
    public static func consumeResponse(
        state: InitiationState, local: LocalIdentity, remote: RemoteIdentity,
        message: UnsafeRawBufferPointer
    ) -> TransportKeys? {
        guard classify(message) == .response, remote.publicKey == state.remoteStatic,
            let sender = LittleEndian.readUInt32(message, at: ResponseMessage.senderOffset),
            let receiver = LittleEndian.readUInt32(message, at: ResponseMessage.receiverOffset),
            receiver == state.senderIndex
        else { return nil }
        let empty = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        guard
            let (_, chainingKey) = readResponse(
                hash: state.hash, chainingKey: state.chainingKey, localEphemeral: state.ephemeral,
                localStatic: local.privateKey, presharedKey: remote.presharedKey.secret,
                ephemeral: message.wireField(ResponseMessage.ephemeralOffset, MessageSize.key),
                encryptedPayload: message.wireField(
                    ResponseMessage.encryptedNothingOffset, ResponseMessage.encryptedNothingSize),
                payloadOut: empty)
        else { return nil }
        let (initiatorSending, initiatorReceiving) = split(chainingKey)
        return TransportKeys(
            sending: initiatorSending, receiving: initiatorReceiving, localIndex: state.senderIndex,
            remoteIndex: sender, isInitiator: true)
    }

    // MARK: Responder

    /// Responder, first half: DH with the initiator's ephemeral and decryption of its static key.
    /// Nil when `message` is not a well-formed initiation or does not decrypt.
    public static func decryptInitiationIdentity(
        local: LocalIdentity, message: UnsafeRawBufferPointer
    ) -> InitiationIdentity? {
        guard classify(message) == .initiation,
            let sender = LittleEndian.readUInt32(message, at: InitiationMessage.senderOffset),
            let (remoteEphemeral, remoteStatic, hash, chainingKey) = readInitiationIdentity(
                start: wireGuardStart, localStatic: local.privateKey,
                ephemeral: message.wireField(InitiationMessage.ephemeralOffset, MessageSize.key),
                encryptedStatic: message.wireField(
                    InitiationMessage.encryptedStaticOffset, InitiationMessage.encryptedStaticSize))
        else { return nil }
        let encryptedTimestamp = Array(
            message.wireField(InitiationMessage.encryptedTimestampOffset, InitiationMessage.encryptedTimestampSize))
        return InitiationIdentity(
            remoteStatic: remoteStatic, senderIndex: sender, remoteEphemeral: remoteEphemeral,
            hash: hash, chainingKey: chainingKey, encryptedTimestamp: encryptedTimestamp)
    }

    /// Responder, second half: with the peer found by `identity.remoteStatic`, authenticates the
    /// initiation (static-static DH) and decrypts the timestamp. Nil when `remote` is not that
    /// peer or the AEAD fails.
    public static func consumeInitiation(
        _ identity: InitiationIdentity, remote: RemoteIdentity
    ) -> ConsumedInitiation? {
        guard remote.publicKey == identity.remoteStatic,
            let staticStatic = remote.precomputedStaticStatic
        else { return nil }
        var decrypted: (UInt64, UInt32) = (0, 0)  // 12 bytes on the stack
        let result: (Bytes32, SecretKey, TAI64N)? = withUnsafeMutableBytes(of: &decrypted) { raw in
            let payload = UnsafeMutableRawBufferPointer(rebasing: raw[0..<TAI64N.encodedSize])
            return identity.encryptedTimestamp.withUnsafeBytes { encrypted in
                guard
                    let (hash, chainingKey) = readInitiationPayload(
                        hash: identity.hash, chainingKey: identity.chainingKey, staticStatic: staticStatic,
                        encryptedPayload: encrypted, payloadOut: payload),
                    let timestamp = TAI64N(bytes: UnsafeRawBufferPointer(payload))
                else { return nil }
                return (hash, chainingKey, timestamp)
            }
        }
        guard let (hash, chainingKey, timestamp) = result else { return nil }
        return ConsumedInitiation(
            remoteStatic: identity.remoteStatic, remoteIndex: identity.senderIndex, timestamp: timestamp,
            remoteEphemeral: identity.remoteEphemeral, hash: hash, chainingKey: chainingKey)
    }

    /// Both halves, with `lookup` mapping the decrypted static key to a configured peer (nil: unknown).
    public static func consumeInitiation(
        local: LocalIdentity, message: UnsafeRawBufferPointer, lookup: (PublicKey) -> RemoteIdentity?
    ) -> ConsumedInitiation? {
        guard let identity = decryptInitiationIdentity(local: local, message: message),
            let remote = lookup(identity.remoteStatic)
        else { return nil }
        return consumeInitiation(identity, remote: remote)
    }

    /// Responder: writes a 92-byte response to `initiation` at the start of `out` (mac1/mac2 zero)
    /// and returns the responder's transport keys. Nil when `remote` is not the initiator or a DH
    /// result is zero.
    public static func createResponse(
        for initiation: ConsumedInitiation, remote: RemoteIdentity, senderIndex: UInt32,
        ephemeral: PrivateKey, into out: UnsafeMutableRawBufferPointer
    ) -> TransportKeys? {
        precondition(out.count >= ResponseMessage.size, "a response needs 92 bytes")
        guard remote.publicKey == initiation.remoteStatic else { return nil }
        let message = UnsafeMutableRawBufferPointer(rebasing: out[0..<ResponseMessage.size])
        message.initializeMemory(as: UInt8.self, repeating: 0)
        LittleEndian.write(MessageType.response.rawValue, to: message, at: 0)
        LittleEndian.write(senderIndex, to: message, at: ResponseMessage.senderOffset)
        LittleEndian.write(initiation.remoteIndex, to: message, at: ResponseMessage.receiverOffset)
        guard
            let (_, chainingKey) = writeResponse(
                hash: initiation.hash, chainingKey: initiation.chainingKey,
                remoteEphemeral: initiation.remoteEphemeral, remoteStatic: initiation.remoteStatic,
                presharedKey: remote.presharedKey.secret, ephemeral: ephemeral,
                payload: UnsafeRawBufferPointer(start: nil, count: 0),
                ephemeralOut: message.wireField(ResponseMessage.ephemeralOffset, MessageSize.key),
                payloadOut: message.wireField(
                    ResponseMessage.encryptedNothingOffset, ResponseMessage.encryptedNothingSize))
        else { return nil }
        let (initiatorSending, initiatorReceiving) = split(chainingKey)
        return TransportKeys(
            sending: initiatorReceiving, receiving: initiatorSending, localIndex: senderIndex,
            remoteIndex: initiation.remoteIndex, isInitiator: false)
    }

    // MARK: The pattern, parameterised (construction, prologue, payloads) so the Noise test vectors
    // drive the same code as WireGuard. Outputs are separate buffers because Noise concatenates
    // what WireGuard lays out in fields.

    /// Noise's InitializeSymmetric(name) then MixHash(prologue): h = HASH(name) (or the name
    /// zero-padded when it fits in 32 bytes), ck = h, h = HASH(h ‖ prologue).
    struct HandshakeStart: Sendable {
        let chainingKey: Bytes32
        let hash: Bytes32

        init(construction: String, prologue: [UInt8]) {
            let name = Array(construction.utf8)
            let initial: Bytes32
            if name.count <= Bytes32.count {
                initial = Bytes32 { out in out.copyBytes(from: name) }
            } else {
                initial = name.withUnsafeBytes { Blake2s.hash($0) }
            }
            chainingKey = initial
            hash = prologue.withUnsafeBytes { Blake2s.hash(initial, $0) }
        }
    }

    /// -> e, es, s, ss, {payload} (with psk mode's MixKey(e.pub)). Writes e.pub (32 bytes), the
    /// encrypted static (48) and the encrypted payload (payload.count + 16). Nil on a zero DH.
    static func writeInitiation(
        start: HandshakeStart, localStatic: PrivateKey, remoteStatic: PublicKey, staticStatic: SecretKey,
        ephemeral: PrivateKey, payload: UnsafeRawBufferPointer,
        ephemeralOut: UnsafeMutableRawBufferPointer, staticOut: UnsafeMutableRawBufferPointer,
        payloadOut: UnsafeMutableRawBufferPointer
    ) -> (hash: Bytes32, chainingKey: SecretKey)? {
        var hash = remoteStatic.withUnsafeBytes { Blake2s.hash(start.hash, $0) }  // <- s
        var chainingKey = start.chainingKey.withUnsafeBytes { SecretKey(copying: $0) }
        // e
        ephemeral.publicKey.withUnsafeBytes { ephemeralOut.copyMemory(from: $0) }
        hash = ephemeral.publicKey.withUnsafeBytes { Blake2s.hash(hash, $0) }
        chainingKey = ephemeral.publicKey.withUnsafeBytes { KDF.kdf1(chainingKey, $0) }
        // es
        guard let ephemeralStatic = X25519.sharedSecret(ephemeral.secret, remoteStatic) else { return nil }
        var key: SecretKey
        (chainingKey, key) = ephemeralStatic.withUnsafeBytes { KDF.kdf2(chainingKey, $0) }
        // s
        localStatic.publicKey.withUnsafeBytes { encryptAndHash(key: key, hash: &hash, plaintext: $0, into: staticOut) }
        // ss
        (chainingKey, key) = staticStatic.withUnsafeBytes { KDF.kdf2(chainingKey, $0) }
        encryptAndHash(key: key, hash: &hash, plaintext: payload, into: payloadOut)
        return (hash, chainingKey)
    }

    /// The responder's read of e, es, s: returns the initiator's ephemeral and static keys.
    static func readInitiationIdentity(
        start: HandshakeStart, localStatic: PrivateKey, ephemeral: UnsafeRawBufferPointer,
        encryptedStatic: UnsafeRawBufferPointer
    ) -> (remoteEphemeral: PublicKey, remoteStatic: PublicKey, hash: Bytes32, chainingKey: SecretKey)? {
        precondition(ephemeral.count == MessageSize.key && encryptedStatic.count == MessageSize.key + MessageSize.tag)
        var hash = localStatic.publicKey.withUnsafeBytes { Blake2s.hash(start.hash, $0) }  // <- s
        var chainingKey = start.chainingKey.withUnsafeBytes { SecretKey(copying: $0) }
        // e
        let remoteEphemeral = PublicKey(Bytes32(ephemeral))
        hash = Blake2s.hash(hash, ephemeral)
        chainingKey = KDF.kdf1(chainingKey, ephemeral)
        // es
        guard let ephemeralStatic = X25519.sharedSecret(localStatic.secret, remoteEphemeral) else { return nil }
        let key: SecretKey
        (chainingKey, key) = ephemeralStatic.withUnsafeBytes { KDF.kdf2(chainingKey, $0) }
        // s
        var opened = false
        let remoteStatic = Bytes32 { out in
            opened = decryptAndHash(key: key, hash: &hash, ciphertext: encryptedStatic, into: out)
        }
        guard opened else { return nil }
        return (remoteEphemeral, PublicKey(remoteStatic), hash, chainingKey)
    }

    /// The responder's read of ss, {payload}: `payloadOut` gets `encryptedPayload.count - 16` bytes.
    static func readInitiationPayload(
        hash: Bytes32, chainingKey: SecretKey, staticStatic: SecretKey,
        encryptedPayload: UnsafeRawBufferPointer, payloadOut: UnsafeMutableRawBufferPointer
    ) -> (hash: Bytes32, chainingKey: SecretKey)? {
        var hash = hash
        let (chainingKey, key) = staticStatic.withUnsafeBytes { KDF.kdf2(chainingKey, $0) }
        guard decryptAndHash(key: key, hash: &hash, ciphertext: encryptedPayload, into: payloadOut) else {
            return nil
        }
        return (hash, chainingKey)
    }

    /// <- e, ee, se, psk, {payload}. Writes e.pub (32 bytes) and the encrypted payload
    /// (payload.count + 16). Nil on a zero DH.
    static func writeResponse(
        hash: Bytes32, chainingKey: SecretKey, remoteEphemeral: PublicKey, remoteStatic: PublicKey,
        presharedKey: SecretKey, ephemeral: PrivateKey, payload: UnsafeRawBufferPointer,
        ephemeralOut: UnsafeMutableRawBufferPointer, payloadOut: UnsafeMutableRawBufferPointer
    ) -> (hash: Bytes32, chainingKey: SecretKey)? {
        var hash = hash
        var chainingKey = chainingKey
        // e
        ephemeral.publicKey.withUnsafeBytes { ephemeralOut.copyMemory(from: $0) }
        hash = ephemeral.publicKey.withUnsafeBytes { Blake2s.hash(hash, $0) }
        chainingKey = ephemeral.publicKey.withUnsafeBytes { KDF.kdf1(chainingKey, $0) }
        // ee, se
        guard let ephemeralEphemeral = X25519.sharedSecret(ephemeral.secret, remoteEphemeral),
            let staticEphemeral = X25519.sharedSecret(ephemeral.secret, remoteStatic)
        else { return nil }
        chainingKey = ephemeralEphemeral.withUnsafeBytes { KDF.kdf1(chainingKey, $0) }
        chainingKey = staticEphemeral.withUnsafeBytes { KDF.kdf1(chainingKey, $0) }
        // psk
        let (nextChainingKey, tau, key) = presharedKey.withUnsafeBytes { KDF.kdf3(chainingKey, $0) }
        chainingKey = nextChainingKey
        hash = tau.withUnsafeBytes { Blake2s.hash(hash, $0) }
        encryptAndHash(key: key, hash: &hash, plaintext: payload, into: payloadOut)
        return (hash, chainingKey)
    }

    /// The initiator's read of a response; `payloadOut` gets `encryptedPayload.count - 16` bytes.
    static func readResponse(
        hash: Bytes32, chainingKey: SecretKey, localEphemeral: PrivateKey, localStatic: PrivateKey,
        presharedKey: SecretKey, ephemeral: UnsafeRawBufferPointer, encryptedPayload: UnsafeRawBufferPointer,
        payloadOut: UnsafeMutableRawBufferPointer
    ) -> (hash: Bytes32, chainingKey: SecretKey)? {
        precondition(ephemeral.count == MessageSize.key)
        var hash = hash
        var chainingKey = chainingKey
        // e
        let remoteEphemeral = PublicKey(Bytes32(ephemeral))
        hash = Blake2s.hash(hash, ephemeral)
        chainingKey = KDF.kdf1(chainingKey, ephemeral)
        // ee, se
        guard let ephemeralEphemeral = X25519.sharedSecret(localEphemeral.secret, remoteEphemeral),
            let staticEphemeral = X25519.sharedSecret(localStatic.secret, remoteEphemeral)
        else { return nil }
        chainingKey = ephemeralEphemeral.withUnsafeBytes { KDF.kdf1(chainingKey, $0) }
        chainingKey = staticEphemeral.withUnsafeBytes { KDF.kdf1(chainingKey, $0) }
        // psk
        let (nextChainingKey, tau, key) = presharedKey.withUnsafeBytes { KDF.kdf3(chainingKey, $0) }
        chainingKey = nextChainingKey
        hash = tau.withUnsafeBytes { Blake2s.hash(hash, $0) }
        guard decryptAndHash(key: key, hash: &hash, ciphertext: encryptedPayload, into: payloadOut) else {
            return nil
        }
        return (hash, chainingKey)
    }

    /// Noise's Split(): (initiator's sending key, initiator's receiving key) = KDF2(C, ε).
    static func split(_ chainingKey: SecretKey) -> (SecretKey, SecretKey) {
        KDF.kdf2(chainingKey, UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// EncryptAndHash with a fresh key (nonce 0): out = AEAD(key, 0, plaintext, h); h = HASH(h ‖ out).
    private static func encryptAndHash(
        key: SecretKey, hash: inout Bytes32, plaintext: UnsafeRawBufferPointer,
        into out: UnsafeMutableRawBufferPointer
    ) {
        precondition(out.count == plaintext.count + ChaChaPoly.tagLength)
        let associated = hash
        associated.withUnsafeBytes { ad in
            // `out` holds plaintext.count + 16 bytes (checked above), so it has a base address.
            ChaChaPoly.seal(key: key, counter: 0, plaintext: plaintext, additionalData: ad, into: out.baseAddress!)
        }
        hash = Blake2s.hash(associated, UnsafeRawBufferPointer(out))
    }

    /// DecryptAndHash with a fresh key (nonce 0); on failure `hash` is unchanged.
    private static func decryptAndHash(
        key: SecretKey, hash: inout Bytes32, ciphertext: UnsafeRawBufferPointer,
        into out: UnsafeMutableRawBufferPointer
    ) -> Bool {
        guard ciphertext.count >= ChaChaPoly.tagLength,
            out.count == ciphertext.count - ChaChaPoly.tagLength
        else { return false }
        let associated = hash
        // An empty plaintext needs no output memory; the AEAD writes nothing through this byte.
        var scratch: UInt8 = 0
        let opened = withUnsafeMutableBytes(of: &scratch) { spare in
            associated.withUnsafeBytes { ad in
                ChaChaPoly.open(
                    key: key, counter: 0, ciphertext: ciphertext, additionalData: ad,
                    into: out.baseAddress ?? spare.baseAddress!)
            }
        }
        guard opened else { return false }
        hash = Blake2s.hash(associated, ciphertext)
        return true
    }

    /// HASH(label ‖ public key): the mac1 and cookie keys.
    static func labelledKey(_ label: String, _ publicKey: PublicKey) -> Bytes32 {
        Array(label.utf8).withUnsafeBytes { labelBytes in
            publicKey.withUnsafeBytes { Blake2s.hash(labelBytes, $0) }
        }
    }
}
