import TunnelCrypto

/// The checks a handshake message passes before any Diffie-Hellman: mac1, and under load mac2 (or
/// a cookie reply) and the per-source rate limit. "Under load" is the depth of the queue of
/// handshake messages waiting for the worker, as in wireguard-go (`device/receive.go`: a queue
/// over 1/8 of its capacity, and for a second after) and the kernel (`receive.c`): a source that
/// sends many handshakes is not asked for cookies while the worker keeps up with them.
///
/// Owned by whoever runs the handshake steps (the handshake worker's queue, or the device's owner
/// for `Device.decapsulate`); not for concurrent use. Its BLAKE2s and cookie sealing run there,
/// never under a lock the data path takes.
public struct HandshakeGate: Sendable {
    /// Whose messages it checks: mac1 is keyed by this public key.
    public let publicKey: PublicKey
    private var checker: CookieChecker
    private var limiter: RateLimiter
    /// Monotonic nanoseconds until which the gate counts itself under load.
    private var underLoadUntil: UInt64 = 0

    /// How long "under load" lasts after the queue was last seen deep (wireguard-go's UnderLoadAfterTime).
    public static let underLoadAfter: UInt64 = Protocol.nanosecondsPerSecond

    public init(local: LocalIdentity, rateLimiter: RateLimiter = RateLimiter()) {
        publicKey = local.publicKey
        checker = CookieChecker(local: local)
        limiter = rateLimiter
    }

    public enum Verdict: Equatable, Sendable {
        /// Go on to the handshake itself.
        case admit
        /// Dropped and to be counted; `cookieReply`: a 64-byte cookie reply was written to the
        /// buffer given, to be sent to the message's source.
        case drop(DropReason, cookieReply: Bool)
    }

    /// Whether the queue depth means load: at least `capacity / 8` messages waiting.
    public static func isDeep(queueDepth: Int, capacity: Int) -> Bool {
        queueDepth >= max(1, capacity / 8)
    }

    /// Checks `message` (an initiation or response, classified by the caller) from `source`;
    /// `queueDepth` of `capacity` handshake messages are waiting behind it. Under load a message
    /// without a valid mac2 gets a cookie reply written into `cookieReply` (64 bytes).
    public mutating func check(
        _ message: UnsafeRawBufferPointer, from source: Endpoint, queueDepth: Int, capacity: Int, now: UInt64,
        cookieReply: UnsafeMutableRawBufferPointer
    ) -> Verdict {
        guard checker.checkMAC1(message) else { return .drop(.badMAC1, cookieReply: false) }
        guard isUnderLoad(queueDepth: queueDepth, capacity: capacity, now: now) else { return .admit }
        guard checker.checkMAC2(message, source: source, now: now) else {
            let made = checker.createReply(to: message, source: source, now: now, into: cookieReply)
            return .drop(.cookieRequired, cookieReply: made)
        }
        guard limiter.allow(source.address, now: now) else { return .drop(.rateLimited, cookieReply: false) }
        return .admit
    }

    /// Under load now: the queue is deep, or was within `underLoadAfter`.
    public mutating func isUnderLoad(queueDepth: Int, capacity: Int, now: UInt64) -> Bool {
        if HandshakeGate.isDeep(queueDepth: queueDepth, capacity: capacity) {
            underLoadUntil = now + HandshakeGate.underLoadAfter
        }
        return now < underLoadUntil
    }

    /// The rate limiter's sweep of idle sources (it also sweeps itself about once a second of
    /// `check` calls under load).
    public mutating func collectGarbage(now: UInt64) {
        limiter.collectGarbage(now: now)
    }
}
