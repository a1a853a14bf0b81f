/// Counts of protocol events worth graphing that are not drops: how many handshakes derived a
/// session, and how many cookie replies went out because the device was under load. Plain
/// counters owned by the device's owner (see `Device`), read in `tunctl show` and the metrics.
public struct DeviceEvents: Sendable, Equatable {
    /// Sessions derived from a handshake, as initiator (a response consumed) or as responder (an
    /// initiation answered): one per handshake, whichever side started it.
    public internal(set) var handshakes: UInt64 = 0
    /// Cookie replies sent instead of a handshake response (under load, wireguard's DoS defence).
    public internal(set) var cookieRepliesSent: UInt64 = 0

    public init() {}
}
