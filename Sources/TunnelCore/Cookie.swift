import TunnelCrypto

// mac1, mac2 and cookie replies (PROTOCOL.md "Messages"; wireguard-go `device/cookie.go`, the
// kernel's `cookie.c`). Both handshake messages end in mac1 ‖ mac2:
//   mac1 = MAC(HASH("mac1----" ‖ receiver's static public key), bytes before mac1): proves the
//          sender knows whom it is talking to; always checked, before any DH.
//   mac2 = MAC(cookie, bytes before mac2), or 16 zero bytes without a cookie: proves, under load,
//          that the sender owns its source address.
// cookie = MAC(checker secret, source IP bytes ‖ source port big-endian), sent back encrypted
// in a type-3 reply. Time is the core's monotonic clock in nanoseconds, passed in.

/// Per peer, on the sending side: adds mac1/mac2 to our handshake messages and takes in the
/// cookie replies that peer sends us. Not for concurrent use; the peer's owner serialises it.
public struct CookieGenerator: Sendable {
    /// HASH("mac1----" ‖ peer's public key).
    private let mac1Key: Bytes32
    /// HASH("cookie--" ‖ peer's public key): the key its cookie replies are sealed under.
    private let cookieKey: Bytes32
    /// mac1 of the last handshake message we sent: the associated data of the reply it may provoke.
    private var lastMAC1: Bytes16?
    /// The last cookie received, and when (monotonic nanoseconds).
    private var cookie: (value: Bytes16, receivedAt: UInt64)?

    public init(remote: RemoteIdentity) {
        mac1Key = remote.mac1Key
        cookieKey = remote.cookieKey
    }

    /// Writes mac1, and mac2 when we hold a cookie younger than `Protocol.cookieRefreshTime`
    /// (zeros otherwise), into a complete initiation or response. Anything else traps: the
    /// caller built the message.
    /// Returns mac1, which `recordSent(mac1:)` takes when the MACs were added to a copy of the
    /// generator (the handshake worker adds them outside the engine lock).
    @discardableResult
    public mutating func addMACs(to message: UnsafeMutableRawBufferPointer, now: UInt64) -> Bytes16 {
        guard let layout = MACLayout.of(UnsafeRawBufferPointer(message)) else {
            preconditionFailure("addMACs needs a complete initiation or response")
        }
        let readable = UnsafeRawBufferPointer(message)
        let mac1 = mac1Key.withUnsafeBytes { Blake2s.mac(key: $0, readable.wireField(0, layout.mac1Offset)) }
        mac1.withUnsafeBytes { message.wireField(layout.mac1Offset, MessageSize.mac).copyMemory(from: $0) }
        lastMAC1 = mac1

        let mac2Field = message.wireField(layout.mac2Offset, MessageSize.mac)
        if let cookie, now >= cookie.receivedAt, now - cookie.receivedAt < Protocol.cookieRefreshTime {
            let mac2 = cookie.value.withUnsafeBytes {
                Blake2s.mac(key: $0, readable.wireField(0, layout.mac2Offset))
            }
            mac2.withUnsafeBytes { mac2Field.copyMemory(from: $0) }
        } else {
            mac2Field.initializeMemory(as: UInt8.self, repeating: 0)
        }
        return mac1
    }

    /// The message whose mac1 this is was sent: a cookie reply to it may be taken in.
    public mutating func recordSent(mac1: Bytes16) {
        lastMAC1 = mac1
    }

    /// Takes in a cookie reply (the caller routed it to this peer by its receiver index).
    /// True when it decrypts under the peer's cookie key with our last mac1 as associated data;
    /// then the cookie is used for mac2 from now on, and the reply cannot be used again. False
    /// changes nothing.
    public mutating func consumeReply(_ message: UnsafeRawBufferPointer, now: UInt64) -> Bool {
        guard classify(message) == .cookieReply, let lastMAC1 else { return false }
        var opened = false
        let value = Bytes16 { out in
            cookieKey.withUnsafeBytes { key in
                lastMAC1.withUnsafeBytes { associated in
                    // `out` is the 16-byte Bytes16, so it has a base address.
                    opened = XChaChaPoly.open(
                        key: key,
                        nonce: message.wireField(CookieReplyMessage.nonceOffset, CookieReplyMessage.nonceSize),
                        ciphertext: message.wireField(
                            CookieReplyMessage.encryptedCookieOffset, CookieReplyMessage.encryptedCookieSize),
                        additionalData: associated, into: out.baseAddress!)
                }
            }
        }
        guard opened else { return false }
        cookie = (value, now)
        // One reply per message sent, as the kernel's `wg_cookie_message_consume` does: a replayed
        // reply cannot restart the cookie's lifetime.
        self.lastMAC1 = nil
        return true
    }
}

/// Per device, on the receiving side: checks mac1 and mac2 of incoming handshake messages and
/// makes cookie replies. Not for concurrent use; the device's owner serialises it.
public struct CookieChecker: Sendable {
    /// HASH("mac1----" ‖ our public key).
    private let mac1Key: Bytes32
    /// HASH("cookie--" ‖ our public key): seals our cookie replies.
    private let cookieKey: Bytes32
    /// The secret cookies are made from, and when it was made. Nil until the first reply; a
    /// secret older than `Protocol.cookieRefreshTime` validates nothing and is replaced by the
    /// next reply, so a cookie lives at most that long.
    private var secret: (key: SecretKey, createdAt: UInt64)?

    public init(local: LocalIdentity) {
        mac1Key = local.mac1Key
        cookieKey = local.cookieKey
    }

    /// True when `message` is an initiation or response whose mac1 is right for us. Compared in
    /// constant time.
    public func checkMAC1(_ message: UnsafeRawBufferPointer) -> Bool {
        guard let layout = MACLayout.of(message) else { return false }
        let expected = mac1Key.withUnsafeBytes { Blake2s.mac(key: $0, message.wireField(0, layout.mac1Offset)) }
        let received = Bytes16(message.wireField(layout.mac1Offset, MessageSize.mac))
        return expected.constantTimeEquals(received)
    }

    /// True when mac2 is the MAC of a cookie we would give `source` now. False without a live
    /// secret (none made yet, or older than `Protocol.cookieRefreshTime`). Constant-time compare.
    public func checkMAC2(_ message: UnsafeRawBufferPointer, source: Endpoint, now: UInt64) -> Bool {
        guard let layout = MACLayout.of(message), let secret, isLive(secret.createdAt, now: now) else {
            return false
        }
        let cookie = Self.cookie(secret: secret.key, source: source)
        let expected = cookie.withUnsafeBytes { Blake2s.mac(key: $0, message.wireField(0, layout.mac2Offset)) }
        let received = Bytes16(message.wireField(layout.mac2Offset, MessageSize.mac))
        return expected.constantTimeEquals(received)
    }

    /// Writes a 64-byte cookie reply to `message` (from `source`) into the start of `out`: receiver
    /// = the message's sender index, a random nonce, the cookie sealed under our cookie key with
    /// the message's mac1 as associated data. Makes a fresh secret first when the current one is
    /// missing or stale. False, writing nothing, when `message` is not an initiation or response.
    public mutating func createReply(
        to message: UnsafeRawBufferPointer, source: Endpoint, now: UInt64, into out: UnsafeMutableRawBufferPointer
    ) -> Bool {
        precondition(out.count >= CookieReplyMessage.size, "a cookie reply needs 64 bytes")
        // Both handshake messages carry the sender index at offset 4.
        guard let layout = MACLayout.of(message),
            let sender = LittleEndian.readUInt32(message, at: InitiationMessage.senderOffset)
        else { return false }
        if secret == nil || !isLive(secret!.createdAt, now: now) {
            secret = (SecretKey.random(), now)
        }
        let cookie = Self.cookie(secret: secret!.key, source: source)

        let reply = out.wireField(0, CookieReplyMessage.size)
        reply.initializeMemory(as: UInt8.self, repeating: 0)
        LittleEndian.write(MessageType.cookieReply.rawValue, to: reply, at: 0)
        LittleEndian.write(sender, to: reply, at: CookieReplyMessage.receiverOffset)
        let nonce = reply.wireField(CookieReplyMessage.nonceOffset, CookieReplyMessage.nonceSize)
        SecureRandom.fill(nonce)
        let sealed = reply.wireField(CookieReplyMessage.encryptedCookieOffset, CookieReplyMessage.encryptedCookieSize)
        cookieKey.withUnsafeBytes { key in
            cookie.withUnsafeBytes { plaintext in
                // `sealed` is 32 bytes inside `reply`, so it has a base address.
                XChaChaPoly.seal(
                    key: key, nonce: UnsafeRawBufferPointer(nonce), plaintext: plaintext,
                    additionalData: message.wireField(layout.mac1Offset, MessageSize.mac),
                    into: sealed.baseAddress!)
            }
        }
        return true
    }

    /// A secret is live for `Protocol.cookieRefreshTime` after it was made. A clock reading
    /// before `createdAt` (impossible for a monotonic clock) counts as stale.
    private func isLive(_ createdAt: UInt64, now: UInt64) -> Bool {
        now >= createdAt && now - createdAt < Protocol.cookieRefreshTime
    }

    /// MAC(secret, source address in network order ‖ port big-endian), as the kernel's
    /// `make_cookie` does. Only this checker verifies it, so the exact encoding is ours to pick.
    static func cookie(secret: SecretKey, source: Endpoint) -> Bytes16 {
        var bytes = source.address.networkBytes
        bytes.append(UInt8(truncatingIfNeeded: source.port >> 8))
        bytes.append(UInt8(truncatingIfNeeded: source.port))
        return secret.withUnsafeBytes { key in bytes.withUnsafeBytes { Blake2s.mac(key: key, $0) } }
    }
}
