/// One peer's packetization-layer path MTU search, in the manner of RFC 8899 (DPLPMTUD): the
/// largest inner packet that crosses the path to the peer, found with padded probes instead of
/// trusting ICMP from the underlay (which may be dropped, and is never authenticated).
///
/// Sizes are inner packet (plaintext) bytes, the unit the TUN and the synthetic "packet too big"
/// speak; the outer path MTU is that plus `PathMTU.overhead`. Pure: time is an argument, and
/// `tick` says which probe to send; `Device` sends it and feeds back what the peer sent.
///
/// A probe is a transport message whose plaintext is `size` zero bytes (a keepalive padded to the
/// probe size): its first byte names no IP version, so wireguard-go and the kernel drop it
/// after authenticating it, and tunctl counts it as a probe. Confirmation, two ways:
/// - A peer that is tunctl answers each probe at once with a 16-byte `PathMTUProbe.ack` naming
///   the size it received (`acknowledged`). The first probe is the maximum: answered, the search
///   is over in one round trip. Unanswered, a probe at `base`, which every path must carry, tells
///   whether the peer answers at all; the search then takes a few round trips per step (each
///   probe is retried `maximumProbes` times, `probeTimeout` apart).
/// - A peer that never answers (wireguard-go, the kernel) still obeys WireGuard's passive
///   keepalive: after a data packet (a probe counts, its plaintext is not empty) it sends a
///   keepalive `Protocol.keepaliveTimeout` later unless it sent something meanwhile. So a probe
///   sent on a link quiet long enough that no earlier packet of ours can have armed that timer
///   (`passiveQuiet`), and followed by nothing else of ours, is confirmed by a keepalive from the
///   peer 10 s later (`received(keepalive:)`). Slow (one probe per 20–30 s, only while idle) but
///   it needs nothing from the peer. Inconclusive when either side sends data meanwhile (retried).
///
/// The search begins with the first TCP handshake or packet above `base` sent to the peer.
/// Until something is confirmed, the limit is `base` (1280 bytes outer, less overhead): a path
/// that black-holes larger packets then carries everything at once, and a larger MTU is a
/// probe's success away. `maximum` (the interface MTU) is probed first, the common case; after a
/// failure the search halves the interval; when it ends short of `maximum`, it starts over after
/// `raiseInterval` (the path may have grown). Black holes: a peer silent for `blackHoleQuiet`
/// while packets above `base` went to it is checked with a probe of the confirmed size
/// (acknowledging peers) or, for a passive peer, dropped to `base` at once.
public struct PathMTU: Sendable, Equatable {
    /// Outer bytes of a transport message over `ipv4` or not: IP header, UDP header, WireGuard
    /// header and tag (20 or 40, + 8 + 16 + 16).
    public static func overhead(ipv4: Bool) -> Int {
        (ipv4 ? 20 : 40) + 8 + TransportMessage.headerSize + MessageSize.tag
    }

    /// The inner size every path carries: a 1280-byte outer packet (IPv6's minimum link MTU)
    /// less the overhead, rounded down to the padding multiple so the padded plaintext fits too.
    public static func base(ipv4: Bool) -> Int {
        (Protocol.minimumMTU - overhead(ipv4: ipv4)) / Protocol.paddingMultiple * Protocol.paddingMultiple
    }

    static let probeTimeout: UInt64 = 1 * Protocol.nanosecondsPerSecond
    static let maximumProbes = 3
    static let raiseInterval: UInt64 = 15 * Protocol.nanosecondsPerSecond
    /// A passive probe's keepalive is expected this long after it (wireguard-go: exactly
    /// KEEPALIVE_TIMEOUT plus the two one-way delays, and timer slack).
    static let passiveEarliest: UInt64 = Protocol.keepaliveTimeout - 500_000_000
    static let passiveLatest: UInt64 = Protocol.keepaliveTimeout + 2 * Protocol.nanosecondsPerSecond
    /// No data of ours for this long before a passive probe: the peer's keepalive timer, armed by
    /// our last data and possibly re-armed once (wireguard-go's needAnotherKeepalive), has fired.
    static let passiveQuiet: UInt64 = 2 * Protocol.keepaliveTimeout + Protocol.nanosecondsPerSecond
    /// Silence that suspects a black hole while large packets go out: an acknowledging peer is
    /// asked (a probe answers in a round trip); a passive one answers any data within
    /// KEEPALIVE_TIMEOUT, so only a longer silence tells.
    static let blackHoleQuietAcknowledging: UInt64 = 1 * Protocol.nanosecondsPerSecond
    static let blackHoleQuietPassive: UInt64 = Protocol.keepaliveTimeout + 2 * Protocol.nanosecondsPerSecond
    /// While large packets go out, how often the silence is checked.
    static let watchInterval: UInt64 = 500_000_000

    struct Probe: Sendable, Equatable {
        var size: Int
        var sentAt: UInt64
        var attempts: Int
        var passive: Bool
        /// Whether something happened since a passive probe that could also explain (or prevent)
        /// the peer's keepalive.
        var spoiled = false
        /// A check of the confirmed size after silence, not a step of the search.
        var verifiesBlackHole = false
    }

    public private(set) var base: Int
    public private(set) var maximum: Int
    /// The largest inner packet known to cross (`base` until a probe confirms more).
    public private(set) var confirmed: Int
    /// The smallest size a probe failed at; nil when none has, or the search started over.
    public private(set) var ceiling: Int?
    /// The smallest size seen to fail (a probe, or `base + 1` after a black hole) and not crossed
    /// since: packets from here up are refused with a "packet too big". Below it, a packet above
    /// `limit` still goes: nothing has shown that it cannot cross (a link MTU just raised, a
    /// search still running), and a refusal would make the sender cache the low figure.
    public private(set) var refuseFrom: Int?
    /// Whether the peer answers probes: nil until the first probe's fate is known.
    public private(set) var acknowledges: Bool?
    var probe: Probe?
    /// The first probe (the maximum) went unanswered while it is unknown whether the peer answers.
    var unansweredMaximum: Int?
    var nextSearchAt: UInt64?
    /// When we last sent a data packet (not a probe, not a keepalive): passive probes need quiet.
    var lastDataSent: UInt64 = 0
    /// The first packet above `base` sent since the peer was last heard from.
    var largeUnansweredSince: UInt64?
    /// Whether the silence check is armed (`watchAt`); re-armed by the first large packet after
    /// it lapsed, so a busy link costs one comparison per packet.
    var watchAt: UInt64?

    /// Whether the search has begun (`begin`): not before the peer is sent a TCP handshake or a
    /// packet above `base`, so a tunnel that only ever carries small packets (pings, DNS, the
    /// kernel selftest's exact byte counts) sees no probe at all.
    public private(set) var started = false

    public init(ipv4: Bool = true, maximum: Int, now: UInt64) {
        base = PathMTU.base(ipv4: ipv4)
        self.maximum = max(maximum, base)
        confirmed = base
    }

    /// Starts the search now (true), unless it has started already (false).
    public mutating func begin(now: UInt64) -> Bool {
        guard !started else { return false }
        started = true
        nextSearchAt = now
        return true
    }

    /// The largest inner packet known to cross: what the MSS clamp and a "packet too big" name.
    public var limit: Int { min(confirmed, maximum) }

    /// Whether a packet of `length` inner bytes is refused: longer than `limit`, and as long as a
    /// size seen to fail (but not beyond `maximum`: what no datagram carries is `packetTooLarge`).
    /// One comparison for a packet within `limit`.
    @inline(__always)
    public func refuses(length: Int) -> Bool {
        length > limit && length <= maximum && length >= (refuseFrom ?? Int.max)
    }

    /// The outer path MTU the confirmed size stands for (`show`).
    public func pathMTU(ipv4: Bool) -> Int { limit + PathMTU.overhead(ipv4: ipv4) }

    /// The earliest instant `tick` has something to do; nil: nothing until an event re-arms it.
    public var deadline: UInt64? {
        var earliest = nextSearchAt
        func take(_ t: UInt64?) {
            guard let t else { return }
            earliest = min(earliest ?? t, t)
        }
        if let probe {
            take(probe.sentAt + (probe.passive ? PathMTU.passiveLatest : PathMTU.probeTimeout))
        }
        take(watchAt)
        return earliest
    }

    // MARK: - Events

    /// The interface MTU or the endpoint's family changed: a new search within the new bounds.
    public mutating func reset(ipv4: Bool, maximum: Int, now: UInt64) {
        let kept = acknowledges
        let failing = refuseFrom
        let wasStarted = started
        self = PathMTU(ipv4: ipv4, maximum: maximum, now: now)
        acknowledges = kept
        if let failing, failing <= maximum { refuseFrom = failing }
        if wasStarted { _ = begin(now: now) }
    }

    /// A data packet of `length` inner bytes went to the peer. True when the silence check needs
    /// arming (`deadline` moved earlier); otherwise nothing to do. Per packet: stores only.
    @inline(__always)
    public mutating func sent(length: Int, now: UInt64) -> Bool {
        lastDataSent = now
        if probe?.passive == true { probe?.spoiled = true }
        guard length > base, largeUnansweredSince == nil else { return false }
        largeUnansweredSince = now
        guard watchAt == nil else { return false }
        watchAt = now + PathMTU.watchInterval
        return true
    }

    /// An authenticated packet came from the peer (`keepalive`: an empty one). True when it
    /// confirmed a probe (`deadline` moved earlier).
    public mutating func received(keepalive: Bool, now: UInt64) -> Bool {
        largeUnansweredSince = nil
        guard let current = probe, current.passive else { return false }
        guard keepalive else {
            // The peer sent data: its keepalive timer is cancelled, so none will tell.
            probe?.spoiled = true
            return false
        }
        let age = now &- current.sentAt
        guard !current.spoiled, age >= PathMTU.passiveEarliest, age <= PathMTU.passiveLatest else { return false }
        succeed(current.size, now: now)
        return true
    }

    /// The peer (tunctl) acknowledged a probe of `size` inner bytes.
    public mutating func acknowledged(size: Int, now: UInt64) {
        if acknowledges == nil, let unanswered = unansweredMaximum, size < unanswered {
            // The peer answers, so the maximum's silence was the path's.
            noteFailure(unanswered)
        }
        unansweredMaximum = nil
        acknowledges = true
        largeUnansweredSince = nil
        guard let current = probe, current.size == size else {
            // An answer to an earlier attempt, or a size we did not ask about: it still crossed.
            if size > confirmed, size <= maximum {
                confirmed = size
                if let refuseFrom, refuseFrom <= confirmed { self.refuseFrom = nil }
            }
            return
        }
        succeed(size, now: now)
    }

    private mutating func succeed(_ size: Int, now: UInt64) {
        probe = nil
        confirmed = max(confirmed, min(size, maximum))
        if let ceiling, ceiling <= confirmed { self.ceiling = nil }
        if let refuseFrom, refuseFrom <= confirmed { self.refuseFrom = nil }
        nextSearchAt = now
    }

    /// Runs what is due at `now`; returns the size of a probe to send now, if any.
    public mutating func tick(now: UInt64) -> Int? {
        if let current = probe {
            let timeout = current.passive ? PathMTU.passiveLatest : PathMTU.probeTimeout
            guard now >= current.sentAt + timeout else { return nil }
            if !current.passive, current.attempts < PathMTU.maximumProbes {
                probe?.attempts += 1
                probe?.sentAt = now
                return current.size
            }
            fail(current, now: now)
        }
        if let watch = watchAt, now >= watch {
            watchAt = nil
            if let since = largeUnansweredSince {
                if acknowledges == true {
                    if now - since >= PathMTU.blackHoleQuietAcknowledging, confirmed > base {
                        largeUnansweredSince = nil
                        return start(
                            Probe(size: confirmed, sentAt: now, attempts: 1, passive: false, verifiesBlackHole: true))
                    }
                } else if now - since >= PathMTU.blackHoleQuietPassive, confirmed > base {
                    dropToBase(now: now)
                }
                if probe == nil { watchAt = now + PathMTU.watchInterval }
            }
        }
        guard probe == nil, let due = nextSearchAt, now >= due else { return nil }
        nextSearchAt = nil
        guard let acknowledges else {
            // First the maximum (on a clean path to tunctl the search ends in one round trip);
            // unanswered, `base` tells a small path from a peer that answers nothing.
            let size = unansweredMaximum == nil && maximum > base ? maximum : base
            return start(Probe(size: size, sentAt: now, attempts: 1, passive: false))
        }
        guard let size = nextCandidate() else {
            // Done: look again later if the path may have room above.
            if confirmed < maximum {
                nextSearchAt = now + PathMTU.raiseInterval
                ceiling = nil
            }
            return nil
        }
        if !acknowledges {
            guard now >= lastDataSent + PathMTU.passiveQuiet else {
                nextSearchAt = lastDataSent + PathMTU.passiveQuiet
                return nil
            }
            return start(Probe(size: size, sentAt: now, attempts: 1, passive: true))
        }
        return start(Probe(size: size, sentAt: now, attempts: 1, passive: false))
    }

    private mutating func start(_ next: Probe) -> Int {
        probe = next
        return next.size
    }

    /// The next size to try above `confirmed`: `maximum` first, then halving towards `ceiling`.
    func nextCandidate() -> Int? {
        guard confirmed < maximum else { return nil }
        guard let ceiling else { return maximum }
        let step = Protocol.paddingMultiple
        var middle = (confirmed + ceiling) / 2 / step * step
        // Sizes are multiples of the padding (the peer sees the padded length): the next one up
        // when halving rounds down to what is confirmed.
        if middle <= confirmed { middle = (confirmed / step + 1) * step }
        return middle < ceiling ? middle : nil
    }

    private mutating func fail(_ failed: Probe, now: UInt64) {
        probe = nil
        nextSearchAt = now
        if failed.passive {
            // A keepalive that could not tell is no verdict: ask again after the next quiet.
            if !failed.spoiled { noteFailure(failed.size) }
            return
        }
        if acknowledges == nil {
            if failed.size > base {
                unansweredMaximum = failed.size
                return
            }
            // Not even `base` was answered: the peer does not acknowledge probes, and the
            // maximum's silence said nothing about the path.
            acknowledges = false
            unansweredMaximum = nil
            return
        }
        if failed.verifiesBlackHole {
            dropToBase(now: now)
            return
        }
        noteFailure(failed.size)
    }

    private mutating func noteFailure(_ size: Int) {
        ceiling = min(ceiling ?? size, size)
        refuseFrom = min(refuseFrom ?? size, size)
    }

    private mutating func dropToBase(now: UInt64) {
        // Large packets stopped crossing: none above `base` is known to any more.
        refuseFrom = base + 1
        confirmed = base
        ceiling = nil
        probe = nil
        largeUnansweredSince = nil
        nextSearchAt = now
    }
}

/// The wire form of probes and their acknowledgements: plaintexts whose first byte (0) names no
/// IP version, so any WireGuard receiver drops them after authenticating them.
public enum PathMTUProbe {
    /// Bytes of an acknowledgement's plaintext: 0, "PMT", the acknowledged size (big-endian
    /// UInt16), zero padding to one padding multiple.
    public static let ackLength = Protocol.paddingMultiple
    static let magic: (UInt8, UInt8, UInt8) = (0x50, 0x4d, 0x54)

    public enum Kind: Equatable {
        /// A probe of this many plaintext bytes: answer it.
        case probe(Int)
        /// The peer received our probe of this many plaintext bytes.
        case ack(Int)
    }

    /// What a non-empty plaintext with first byte 0 is; nil when it is neither (an IP packet).
    public static func classify(_ plaintext: UnsafeRawBufferPointer) -> Kind? {
        guard let first = plaintext.firstByte, first == 0 else { return nil }
        if plaintext.count == ackLength, plaintext[1] == magic.0, plaintext[2] == magic.1, plaintext[3] == magic.2 {
            return .ack(Int(plaintext[4]) << 8 | Int(plaintext[5]))
        }
        return .probe(plaintext.count)
    }

    /// Writes the acknowledgement of a probe of `size` bytes at the start of `buffer`
    /// (`ackLength` bytes).
    public static func writeAck(size: Int, into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= ackLength)
        for index in 0..<ackLength { buffer[index] = 0 }
        buffer[1] = magic.0
        buffer[2] = magic.1
        buffer[3] = magic.2
        buffer[4] = UInt8(truncatingIfNeeded: size >> 8)
        buffer[5] = UInt8(truncatingIfNeeded: size)
    }
}
