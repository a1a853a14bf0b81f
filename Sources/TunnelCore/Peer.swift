import TunnelCrypto

/// What the device knows about one configured peer: identity, endpoint, keypairs, handshake and
/// timer state, counters.
///
/// Owned by its `Device` and touched only on the queue that owns the device; not Sendable.
/// Timers are deadlines in monotonic nanoseconds (nil = not armed), evaluated by `Device.tick`,
/// following the events of wireguard-go `device/timers.go` and the WireGuard paper §6.
///
/// The fields every transport packet reads or writes are `@exclusivity(unchecked)`: with one
/// owner per device nothing can overlap an access to them, so the runtime's dynamic check (a
/// thread-local lookup per access) guards nothing, and it cost about 1.5% of the machine's
/// samples across Peer, Keypair and Device under full-speed TCP. Static checks still apply.
public final class Peer {
    public let publicKey: PublicKey
    var remote: RemoteIdentity
    var cookies: CookieGenerator

    /// Where to send; follows the source of any authenticated packet (roaming).
    @exclusivity(unchecked) public internal(set) var endpoint: Endpoint?
    /// Seconds between keepalives when idle; 0 = off.
    @exclusivity(unchecked) public internal(set) var persistentKeepalive: UInt16

    // Handshake state.
    /// Our pending initiation, if one is outstanding.
    var initiation: InitiationState?
    /// When the last initiation was sent (monotonic); limits initiations to one per REKEY_TIMEOUT
    /// unless it is a timer's retry.
    var lastInitiationSent: UInt64?
    /// Retries of the current handshake; reset when a handshake completes.
    var handshakeAttempts = 0
    /// The newest initiation timestamp accepted from this peer; older or equal ones are replays.
    var latestTimestamp: TAI64N?
    /// When we last accepted an initiation from this peer (flood limit of 50 per second).
    var lastInitiationConsumed: UInt64?

    // Keypairs: `next` is a responder's unconfirmed keypair, which becomes `current` on the first
    // transport packet received under it (key confirmation).
    @exclusivity(unchecked) var current: Keypair?
    var previous: Keypair?
    @exclusivity(unchecked) var next: Keypair?

    // Timers. Arming one (or moving it earlier) queues the peer in its device's `TimerQueue`;
    // clearing one or moving it later needs nothing (the queue's entries are lazy).
    var retransmitHandshakeAt: UInt64? {
        didSet { if let retransmitHandshakeAt { timerQueue?.armed(self, at: retransmitHandshakeAt) } }
    }
    @exclusivity(unchecked) var sendKeepaliveAt: UInt64? {
        didSet { if let sendKeepaliveAt { timerQueue?.armed(self, at: sendKeepaliveAt) } }
    }
    @exclusivity(unchecked) var newHandshakeAt: UInt64? {
        didSet { if let newHandshakeAt { timerQueue?.armed(self, at: newHandshakeAt) } }
    }
    var zeroKeyMaterialAt: UInt64? {
        didSet { if let zeroKeyMaterialAt { timerQueue?.armed(self, at: zeroKeyMaterialAt) } }
    }
    @exclusivity(unchecked) var persistentKeepaliveAt: UInt64? {
        didSet { if let persistentKeepaliveAt { timerQueue?.armed(self, at: persistentKeepaliveAt) } }
    }
    /// The path MTU search's next step (`PathMTU.deadline`), armed once a session is up.
    @exclusivity(unchecked) var pathMTUAt: UInt64? {
        didSet { if let pathMTUAt { timerQueue?.armed(self, at: pathMTUAt) } }
    }
    /// The largest inner packet the path to this peer carries, as far as probes have shown.
    @exclusivity(unchecked) public internal(set) var pathMTU = PathMTU(maximum: Protocol.defaultMTU, now: 0)
    /// The device's timer queue while the peer belongs to a device; nil once removed.
    @exclusivity(unchecked) var timerQueue: TimerQueue?
    /// The deadline of this peer's live entry in `timerQueue`, nil when it has none.
    @exclusivity(unchecked) var scheduledDeadline: UInt64?
    /// Bumped per push: entries with an older generation are stale.
    @exclusivity(unchecked) var timerGeneration: UInt32 = 0
    @exclusivity(unchecked) var needAnotherKeepalive = false
    @exclusivity(unchecked) var sentLastMinuteHandshake = false

    // Counters, as `wg show` reports them: whole datagrams, handshakes included.
    @exclusivity(unchecked) public internal(set) var rxBytes: UInt64 = 0
    @exclusivity(unchecked) public internal(set) var txBytes: UInt64 = 0
    /// Unix nanoseconds of the latest completed handshake; 0 = never.
    public internal(set) var lastHandshakeUnixNanoseconds: UInt64 = 0
    public internal(set) var drops = DropCounters()

    /// Packets waiting for a handshake to finish. Staging happens only while no keypair exists,
    /// so its allocations are off the steady-state path. Bounded by `stagedLimit`.
    var staged: [[UInt8]] = []
    static let stagedLimit = 128

    init(publicKey: PublicKey, remote: RemoteIdentity, endpoint: Endpoint?, persistentKeepalive: UInt16) {
        self.publicKey = publicKey
        self.remote = remote
        self.cookies = CookieGenerator(remote: remote)
        self.endpoint = endpoint
        self.persistentKeepalive = persistentKeepalive
    }

    /// The earliest armed timer of this peer, nil when none is armed.
    var earliestTimer: UInt64? {
        func earlier(_ a: UInt64?, _ b: UInt64?) -> UInt64? {
            guard let a else { return b }
            guard let b else { return a }
            return min(a, b)
        }
        return earlier(
            earlier(earlier(retransmitHandshakeAt, sendKeepaliveAt), earlier(newHandshakeAt, zeroKeyMaterialAt)),
            earlier(persistentKeepaliveAt, pathMTUAt))
    }

    /// Whether a usable sending keypair exists now.
    func sendingKeypair(at now: UInt64) -> Keypair? {
        guard let current, current.canSend(at: now) else { return nil }
        return current
    }

    /// Every keypair this peer holds, for index bookkeeping.
    var keypairs: [Keypair] { [current, previous, next].compactMap { $0 } }

    public var hasPresharedKey: Bool { !remote.presharedKey.isNone }
}

/// A peer's view for callers outside the core (`show`, UAPI).
public struct PeerStatus: Sendable {
    public let publicKey: PublicKey
    public let hasPresharedKey: Bool
    public let endpoint: Endpoint?
    public let allowedIPs: [IPPrefix]
    public let persistentKeepalive: UInt16
    public let lastHandshakeUnixNanoseconds: UInt64
    public let rxBytes: UInt64
    public let txBytes: UInt64
    public let drops: [(DropReason, UInt64)]
    /// The outer path MTU probing has confirmed (`PathMTU.pathMTU`); nil without an endpoint.
    public var pathMTU: Int? = nil
}
