/// Every protocol constant in one place. Values are those of the WireGuard paper §6 and
/// wireguard-go `device/constants.go` / the kernel's `messages.h`; times are nanoseconds, the unit
/// of the core's clock.
public enum Protocol {
    public static let nanosecondsPerSecond: UInt64 = 1_000_000_000
    public static let nanosecondsPerMillisecond: UInt64 = 1_000_000

    /// Send a new initiation after this many messages on one keypair.
    public static let rekeyAfterMessages: UInt64 = 1 << 60
    /// Refuse to use a keypair for more than this many messages (2^64 − 2^13 − 1).
    public static let rejectAfterMessages: UInt64 = UInt64.max - (1 << 13)
    /// The initiator rekeys a keypair this old when it next sends.
    public static let rekeyAfterTime: UInt64 = 120 * nanosecondsPerSecond
    /// A keypair this old is neither used nor accepted.
    public static let rejectAfterTime: UInt64 = 180 * nanosecondsPerSecond
    /// Give up retrying a handshake after this long.
    public static let rekeyAttemptTime: UInt64 = 90 * nanosecondsPerSecond
    /// Retry an unanswered initiation after this long (plus jitter).
    public static let rekeyTimeout: UInt64 = 5 * nanosecondsPerSecond
    /// Upper bound of the jitter added to `rekeyTimeout`.
    public static let rekeyTimeoutJitterMax: UInt64 = 334 * nanosecondsPerMillisecond
    /// Send a keepalive when we received data but sent nothing for this long.
    public static let keepaliveTimeout: UInt64 = 10 * nanosecondsPerSecond
    /// Erase all keys after this long without a new handshake (3 × REJECT_AFTER_TIME).
    public static let zeroKeysAfter: UInt64 = 3 * rejectAfterTime
    /// Minimum spacing of initiations to one peer: at most 50 per second.
    public static let rekeyInitiationMinimumInterval: UInt64 = nanosecondsPerSecond / 50
    /// The initiator rekeys on receive when the current keypair is this old (REJECT − KEEPALIVE − REKEY_TIMEOUT).
    public static let rekeyOnReceiveAfterTime: UInt64 = rejectAfterTime - keepaliveTimeout - rekeyTimeout
    /// Cookie secrets rotate, and received cookies expire, after this long.
    public static let cookieRefreshTime: UInt64 = 120 * nanosecondsPerSecond

    /// Handshakes accepted per second from one source while under load, and the burst.
    public static let underLoadHandshakesPerSecond: UInt64 = 20
    public static let underLoadHandshakeBurst: UInt64 = 5

    /// Replay window: 8192 bits in 64-bit blocks, of which 8128 are usable.
    public static let replayWindowBits = 8192
    public static let replayWindowSize: UInt64 = 8192 - 64

    /// Default tunnel MTU: a 1500-byte route less 80 (IPv6 40 + UDP 8 + WireGuard 32).
    public static let defaultMTU = 1420
    /// Smallest tunnel MTU a config may set: the IPv6 minimum (RFC 8200), which every tunnel
    /// carrying IPv6 needs.
    public static let minimumMTU = 1280
    /// Largest tunnel MTU: the most an IP length field (and the kernel's TUN) allows.
    public static let maximumMTU = 65535
    /// Largest UDP payload over IPv4 (65535 less the 20-byte IP and 8-byte UDP headers) and over
    /// IPv6 (65535 less the UDP header: the IPv6 payload length excludes its own header). A
    /// transport datagram longer than this cannot be sent at all.
    public static let maximumDatagramV4 = 65507
    public static let maximumDatagramV6 = 65527
    /// Plaintext is padded to a multiple of this.
    public static let paddingMultiple = 16
}
