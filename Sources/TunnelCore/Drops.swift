/// Why a packet was dropped. Every drop is silent on the wire and counted here; the names are
/// what `tunctl show` prints.
public enum DropReason: Int, CaseIterable, Sendable, CustomStringConvertible {
    // Datagrams from the network, in the order the receive rules check them.
    case tooShort
    case unknownType
    case badMessageLength
    case badMAC1
    case cookieRequired
    case rateLimited
    /// A handshake message that found the handshake worker's queue full.
    case handshakeQueueFull
    case handshakeFailed
    case staleTimestamp
    case initiationFlood
    case badCookieReply
    case unknownReceiver
    case expiredKeypair
    case decryptFailed
    case replayed
    case badInnerPacket
    case sourceNotAllowed
    // Packets from the TUN.
    case noRoute
    case noEndpoint
    case stagedQueueFull
    case noPrivateKey
    case handshakeTimedOut
    /// A TUN read whose virtio-net header or TCP super-packet could not be segmented.
    case badOffloadPacket
    /// A packet that cannot be carried: longer than the send slot it was read into (the link MTU
    /// rose before the slots were re-sized), or sealed into a datagram longer than UDP allows.
    case packetTooLarge
    /// A packet longer than the peer's path carries (issue 17): the sender was told with a
    /// synthetic ICMP "fragmentation needed" / "packet too big" (rate-limited).
    case pathMTUExceeded
    /// A sealed datagram the UDP socket did not take: its buffer was full, or the kernel refused
    /// the send (a firewall's reject, no route to the peer): dropped as a full link would.
    case udpSendRefused
    // Packets to the TUN.
    /// A decrypted packet (or coalesced super-packet, counted once) the TUN would not take: its
    /// queue was full, as a full link's would be.
    case tunWriteRefused

    public var description: String {
        switch self {
        case .tooShort: return "too_short"
        case .unknownType: return "unknown_type"
        case .badMessageLength: return "bad_message_length"
        case .badMAC1: return "bad_mac1"
        case .cookieRequired: return "cookie_required"
        case .rateLimited: return "rate_limited"
        case .handshakeQueueFull: return "handshake_queue_full"
        case .handshakeFailed: return "handshake_failed"
        case .staleTimestamp: return "stale_timestamp"
        case .initiationFlood: return "initiation_flood"
        case .badCookieReply: return "bad_cookie_reply"
        case .unknownReceiver: return "unknown_receiver"
        case .expiredKeypair: return "expired_keypair"
        case .decryptFailed: return "decrypt_failed"
        case .replayed: return "replayed"
        case .badInnerPacket: return "bad_inner_packet"
        case .sourceNotAllowed: return "source_not_allowed"
        case .noRoute: return "no_route"
        case .noEndpoint: return "no_endpoint"
        case .stagedQueueFull: return "staged_queue_full"
        case .noPrivateKey: return "no_private_key"
        case .handshakeTimedOut: return "handshake_timed_out"
        case .badOffloadPacket: return "bad_offload_packet"
        case .packetTooLarge: return "packet_too_large"
        case .pathMTUExceeded: return "path_mtu_exceeded"
        case .udpSendRefused: return "udp_send_refused"
        case .tunWriteRefused: return "tun_write_refused"
        }
    }
}

/// A counter per drop reason, in fixed storage (counting a drop never allocates).
public struct DropCounters: Sendable, Equatable {
    private var counts = [UInt64](repeating: 0, count: DropReason.allCases.count)

    public init() {}

    public mutating func count(_ reason: DropReason, times: UInt64 = 1) {
        counts[reason.rawValue] &+= times
    }

    public subscript(reason: DropReason) -> UInt64 { counts[reason.rawValue] }

    public var total: UInt64 { counts.reduce(0, &+) }

    /// The reasons with a nonzero count, in declaration order.
    public var nonzero: [(DropReason, UInt64)] {
        DropReason.allCases.compactMap { counts[$0.rawValue] == 0 ? nil : ($0, counts[$0.rawValue]) }
    }
}
