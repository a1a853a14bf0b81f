/// Token-bucket limiter for handshake messages while the device is under load.
///
/// One bucket per source: an IPv4 address, or the /64 an IPv6 address is in (one host usually
/// owns a whole /64, so keying on the full address would let it dodge the limit). Each bucket
/// refills at `packetsPerSecond` up to `burst` packets. Behaviour follows the kernel's
/// `ratelimiter.c` and wireguard-go's `ratelimiter/`: a new source starts with a full bucket,
/// and a bucket idle for more than `idleTimeout` is forgotten. A bucket holding exactly one
/// packet's credit admits it (the kernel's `>=`; wireguard-go's `>` makes the fifth packet of a
/// burst depend on how many nanoseconds passed between calls).
///
/// Time is a caller-supplied monotonic clock in nanoseconds that never goes backwards (the event
/// loop passes CLOCK_MONOTONIC/BOOTTIME). Memory is bounded: the table holds at most `capacity`
/// sources and refuses new ones while full, so a flood of spoofed addresses cannot grow it.
/// The table's storage is reserved up front, so `allow` does not allocate.
/// Not safe for concurrent mutation: the handshake queue that owns it serialises access.
public struct RateLimiter: Sendable {
    public static let packetsPerSecond: UInt64 = Protocol.underLoadHandshakesPerSecond
    public static let burst: UInt64 = Protocol.underLoadHandshakeBurst
    /// Idle time after which a source's bucket is discarded (and comes back full).
    public static let idleTimeout: UInt64 = Protocol.nanosecondsPerSecond
    /// Default table bound; the kernel's default for small machines is in the same range.
    public static let defaultCapacity = 8192

    /// Nanoseconds of credit one packet costs: the bucket is measured in nanoseconds of refill.
    static let packetCost: UInt64 = Protocol.nanosecondsPerSecond / packetsPerSecond
    static let maxTokens: UInt64 = packetCost * burst

    /// A bucket key: the IPv4 address, or the upper 64 bits of the IPv6 address.
    enum Source: Hashable {
        case v4(UInt32)
        case v6(UInt64)

        init(_ address: IPAddress) {
            switch address {
            case .v4(let value): self = .v4(value)
            case .v6(let bits): self = .v6(bits.high)
            }
        }
    }

    struct Bucket {
        var lastTime: UInt64
        var tokens: UInt64
    }

    public let capacity: Int
    private var buckets: [Source: Bucket]
    /// When idle buckets were last swept; sweeping is O(capacity), so it runs at most once per
    /// `idleTimeout` of caller time rather than on every packet.
    private var lastSweep: UInt64 = 0
    /// Scratch space for `collectGarbage`, reserved once so sweeping does not allocate.
    private var staleKeys: [Source]

    public init(capacity: Int = RateLimiter.defaultCapacity) {
        precondition(capacity > 0, "a rate limiter needs room for at least one source")
        self.capacity = capacity
        self.buckets = Dictionary(minimumCapacity: capacity)
        self.staleKeys = []
        self.staleKeys.reserveCapacity(capacity)
    }

    /// Number of sources currently tracked.
    public var trackedSources: Int { buckets.count }

    /// Whether one more handshake message from `source` may be processed at time `now`.
    /// Charges the source's bucket when it returns true.
    public mutating func allow(_ source: IPAddress, now: UInt64) -> Bool {
        if now &- lastSweep >= Self.idleTimeout {
            collectGarbage(now: now)
        }
        let key = Source(source)
        if var bucket = buckets[key] {
            let elapsed = now >= bucket.lastTime ? now - bucket.lastTime : 0
            // Cap before adding so a long idle gap cannot overflow.
            bucket.tokens = min(Self.maxTokens, bucket.tokens + min(elapsed, Self.maxTokens))
            bucket.lastTime = now
            let allowed = bucket.tokens >= Self.packetCost
            if allowed { bucket.tokens -= Self.packetCost }
            buckets[key] = bucket
            return allowed
        }
        guard buckets.count < capacity else { return false }
        buckets[key] = Bucket(lastTime: now, tokens: Self.maxTokens - Self.packetCost)
        return true
    }

    /// Drops buckets idle for more than `idleTimeout`. `allow` calls this itself about once per
    /// second of caller time; a timer may call it too so an idle table empties.
    public mutating func collectGarbage(now: UInt64) {
        lastSweep = now
        guard !buckets.isEmpty else { return }
        // `filter` would build a new dictionary and drop the reserved storage; collecting the
        // stale keys into a preallocated scratch array and removing them keeps it, in O(n).
        staleKeys.removeAll(keepingCapacity: true)
        for (key, bucket) in buckets where now > bucket.lastTime && now - bucket.lastTime > Self.idleTimeout {
            staleKeys.append(key)
        }
        for key in staleKeys { buckets.removeValue(forKey: key) }
        staleKeys.removeAll(keepingCapacity: true)
    }

    /// Forgets every source.
    public mutating func reset() {
        buckets.removeAll(keepingCapacity: true)
    }
}
