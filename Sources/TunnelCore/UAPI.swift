import TunnelCrypto

/// The cross-platform WireGuard configuration protocol (what `wg` speaks to a userspace
/// implementation over `/var/run/wireguard/<iface>.sock`): the text of a `get=1` reply, and a
/// `set=1` body applied to a `Device`. The socket itself is the I/O layer's.
///
/// Behaviour follows wireguard-go `device/uapi.go` key by key, with one deliberate difference: a
/// `set` is parsed and validated completely before anything is applied, so a malformed request
/// changes nothing (wireguard-go applies lines as it reads them and stops at the first bad one).
///
/// Secrets: the `get` reply is the one place the private and preshared keys are written, by
/// design of the protocol. `UAPIError` never holds a value, only a line number and a key name.
public enum UAPI {
    /// Linux errno values, negated on the wire as the protocol wants (`errno=-22`). Named here
    /// because the core imports no C library.
    public enum Errno {
        /// A bad value, an unknown key, or a key in the wrong place (wireguard-go `IpcErrorInvalid`).
        public static let invalid: Int32 = -22
        /// A line that is not `key=value` (wireguard-go `IpcErrorProtocol`).
        public static let protocolError: Int32 = -71
    }

    /// The full reply to `get=1`, ending in `errno=0` and the blank line. Peers are listed in the
    /// order of their public keys (wireguard-go's order is its map's, i.e. arbitrary).
    public static func get(device: Device, listenPort: UInt16) -> String {
        var lines: [String] = []
        if let privateKey = device.local?.privateKey { lines.append("private_key=\(privateKey.hex)") }
        // wireguard-go omits a zero port (not bound yet) and a zero fwmark; tunctl never sets one.
        if listenPort != 0 { lines.append("listen_port=\(listenPort)") }
        let peers = device.peers.map { ($0.publicKey.hex, $0) }.sorted { $0.0 < $1.0 }
        for (publicHex, peer) in peers {
            let status = device.status(of: peer)
            lines.append("public_key=\(publicHex)")
            // 64 zeros when there is none: the all-zero key is the protocol's "no PSK".
            lines.append("preshared_key=\(device.presharedKey(of: peer).hex)")
            lines.append("protocol_version=1")
            if let endpoint = status.endpoint { lines.append("endpoint=\(endpoint)") }
            let nanosecondsPerSecond = Protocol.nanosecondsPerSecond
            lines.append("last_handshake_time_sec=\(status.lastHandshakeUnixNanoseconds / nanosecondsPerSecond)")
            lines.append("last_handshake_time_nsec=\(status.lastHandshakeUnixNanoseconds % nanosecondsPerSecond)")
            lines.append("tx_bytes=\(status.txBytes)")
            lines.append("rx_bytes=\(status.rxBytes)")
            lines.append("persistent_keepalive_interval=\(status.persistentKeepalive)")
            for prefix in status.allowedIPs { lines.append("allowed_ip=\(prefix)") }
        }
        lines.append("errno=0")
        return lines.joined(separator: "\n") + "\n\n"
    }

    /// Applies the body of a `set=1` request: the lines after `set=1`, without the terminating
    /// blank line (a trailing newline is fine). Returns 0, or a negative errno with the device
    /// untouched. A new listen port is handed to `setListenPort` (the I/O layer rebinds); `now`
    /// arms a persistent keepalive that was just turned on.
    public static func set(_ body: String, device: Device, now: Instant, setListenPort: (UInt16) -> Void) -> Int32 {
        let request: SetRequest
        do {
            request = try SetRequest(parsing: body)
        } catch {
            return error.errno
        }
        request.apply(to: device, now: now, setListenPort: setListenPort)
        return 0
    }

    /// Why `body` would be refused by `set`, or nil when it is well-formed. For the daemon's log:
    /// the error names a line and a key, never a value.
    public static func validate(_ body: String) -> UAPIError? {
        do {
            _ = try SetRequest(parsing: body)
            return nil
        } catch {
            return error
        }
    }
}

/// A refused `set` request. Carries line numbers (1 = the line after `set=1`) and key names
/// only: values may be keys.
public enum UAPIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The line has no `=`.
    case notKeyValue(line: Int)
    /// A known key whose value does not parse (or is not the one value allowed, e.g. `true`).
    case badValue(line: Int, key: String)
    /// A key wireguard-go does not know, or a device key inside a peer section.
    case unknownKey(line: Int, key: String, inPeerSection: Bool)
    /// A peer key before any `public_key=` line.
    case peerKeyBeforePublicKey(line: Int, key: String)
    /// A nonzero `fwmark`: tunctl does not mark its UDP socket, and pretending it did would let
    /// wg-quick's fwmark-based policy routing send the tunnel's own packets into the tunnel.
    case fwmarkUnsupported(line: Int)

    /// The negative errno the protocol reply carries.
    public var errno: Int32 {
        switch self {
        case .notKeyValue: return UAPI.Errno.protocolError
        case .badValue, .unknownKey, .peerKeyBeforePublicKey, .fwmarkUnsupported: return UAPI.Errno.invalid
        }
    }

    public var description: String {
        switch self {
        case .notKeyValue(let line):
            return "UAPI set, line \(line): not a key=value line"
        case .badValue(let line, let key):
            return "UAPI set, line \(line): invalid value for \(key)"
        case .unknownKey(let line, let key, let inPeerSection):
            return "UAPI set, line \(line): unknown \(inPeerSection ? "peer" : "device") key \(key)"
        case .peerKeyBeforePublicKey(let line, let key):
            return "UAPI set, line \(line): \(key) comes before any public_key line"
        case .fwmarkUnsupported(let line):
            return "UAPI set, line \(line): fwmark is not supported (only fwmark=0); "
                + "use Table = off or explicit routes instead of wg-quick's fwmark routing"
        }
    }
}

// MARK: - Parsing

/// A whole `set=1` body, validated: device operations, then peer sections, each in the order sent.
struct SetRequest {
    enum DeviceOperation {
        /// nil removes the key (the protocol's all-zero key).
        case privateKey(PrivateKey?)
        case listenPort(UInt16)
        case replacePeers
    }

    enum PeerOperation {
        case remove
        case updateOnly
        case presharedKey(PresharedKey)
        case endpoint(Endpoint)
        case persistentKeepalive(UInt16)
        case replaceAllowedIPs
        case allowedIP(IPPrefix)
    }

    struct PeerSection {
        let publicKey: PublicKey
        var operations: [PeerOperation] = []
    }

    var device: [DeviceOperation] = []
    var peers: [PeerSection] = []

    /// The keys that make sense only inside a peer section, to tell "too early" from "unknown".
    static let peerKeys: Set<Substring> = [
        "remove", "update_only", "preshared_key", "endpoint", "persistent_keepalive_interval",
        "replace_allowed_ips", "allowed_ip", "protocol_version",
    ]

    init(parsing body: String) throws(UAPIError) {
        // Split on scalars, not Characters: "\r\n" is one Character and would never match "\n".
        var lines = body.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        for (index, rawLine) in lines.enumerated() {
            let number = index + 1
            // As Go's bufio.ScanLines, which wireguard-go reads with: one trailing CR is dropped.
            let line = rawLine.last == "\r" ? rawLine.dropLast() : rawLine
            guard let equals = line.firstIndex(of: "=") else { throw .notKeyValue(line: number) }
            let key = Substring(line[..<equals])
            let value = Substring(line[line.index(after: equals)...])
            if key == "public_key" {
                guard let publicKey = PublicKey(hex: value) else { throw .badValue(line: number, key: "public_key") }
                peers.append(PeerSection(publicKey: publicKey))
            } else if peers.isEmpty {
                if let operation = try Self.deviceOperation(key, value, line: number) {
                    device.append(operation)
                }
            } else {
                if let operation = try Self.peerOperation(key, value, line: number) {
                    peers[peers.count - 1].operations.append(operation)
                }
            }
        }
    }

    /// nil for a key that is valid but changes nothing (`fwmark=0`).
    private static func deviceOperation(
        _ key: Substring, _ value: Substring, line: Int
    ) throws(UAPIError) -> DeviceOperation? {
        switch key {
        case "private_key":
            guard let secret = secretKey(hex: value) else { throw .badValue(line: line, key: "private_key") }
            return .privateKey(secret.isZero ? nil : PrivateKey(secret: secret))
        case "listen_port":
            guard let port: UInt16 = decimal(value) else { throw .badValue(line: line, key: "listen_port") }
            return .listenPort(port)
        case "fwmark":
            guard let mark: UInt32 = decimal(value) else { throw .badValue(line: line, key: "fwmark") }
            guard mark == 0 else { throw .fwmarkUnsupported(line: line) }
            return nil
        case "replace_peers":
            guard value == "true" else { throw .badValue(line: line, key: "replace_peers") }
            return .replacePeers
        default:
            if peerKeys.contains(key) { throw .peerKeyBeforePublicKey(line: line, key: quotedKey(key)) }
            throw .unknownKey(line: line, key: quotedKey(key), inPeerSection: false)
        }
    }

    /// nil for a key that is valid but changes nothing (`protocol_version=1`).
    private static func peerOperation(
        _ key: Substring, _ value: Substring, line: Int
    ) throws(UAPIError) -> PeerOperation? {
        let name = String(key)
        switch key {
        case "remove":
            guard value == "true" else { throw .badValue(line: line, key: name) }
            return .remove
        case "update_only":
            guard value == "true" else { throw .badValue(line: line, key: name) }
            return .updateOnly
        case "preshared_key":
            guard let psk = PresharedKey(hex: value) else { throw .badValue(line: line, key: name) }
            return .presharedKey(psk)
        case "endpoint":
            guard let endpoint = Endpoint(value) else { throw .badValue(line: line, key: name) }
            return .endpoint(endpoint)
        case "persistent_keepalive_interval":
            guard let seconds: UInt16 = decimal(value) else { throw .badValue(line: line, key: name) }
            return .persistentKeepalive(seconds)
        case "replace_allowed_ips":
            guard value == "true" else { throw .badValue(line: line, key: name) }
            return .replaceAllowedIPs
        case "allowed_ip":
            // Go's netip.ParsePrefix wants the length; IPPrefix would take a bare address.
            guard value.contains("/"), let prefix = IPPrefix(value) else { throw .badValue(line: line, key: name) }
            return .allowedIP(prefix)
        case "protocol_version":
            guard value == "1" else { throw .badValue(line: line, key: name) }
            return nil
        default:
            throw .unknownKey(line: line, key: quotedKey(key), inPeerSection: true)
        }
    }

    /// 64 hex digits into a secret (all zero allowed: it means "remove the key").
    private static func secretKey(hex: Substring) -> SecretKey? {
        var ok = false
        let secret = SecretKey { ok = Encoding.decodeHex(hex, into: $0) }
        return ok ? secret : nil
    }

    /// Plain decimal digits only (Swift's integer parsing would also take a sign), in range.
    private static func decimal<T: FixedWidthInteger & UnsignedInteger>(_ text: Substring) -> T? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return T(text, radix: 10)
    }

    /// A key name as sent, shortened and printable, for an error message (key names are not secret,
    /// but the line could be anything).
    private static func quotedKey(_ key: Substring) -> String {
        let printable = key.prefix(40).unicodeScalars.map { scalar in
            scalar.isASCII && scalar.value >= 0x20 && scalar.value < 0x7f ? String(scalar) : "?"
        }
        return "\"" + printable.joined() + (key.count > 40 ? "…" : "") + "\""
    }

    // MARK: - Applying

    /// Carries the request out in order, as wireguard-go would line by line. Cannot fail: every
    /// value was validated while parsing.
    func apply(to device: Device, now: Instant, setListenPort: (UInt16) -> Void) {
        for operation in self.device {
            switch operation {
            case .privateKey(let key): device.setPrivateKey(key)
            case .listenPort(let port): setListenPort(port)
            case .replacePeers: device.removeAllPeers()
            }
        }
        for section in peers { apply(section, to: device, now: now) }
    }

    private func apply(_ section: PeerSection, to device: Device, now: Instant) {
        // A section for our own public key is read and ignored (wireguard-go's "dummy" peer).
        guard section.publicKey != device.publicKey else { return }
        let created = device.peer(section.publicKey) == nil
        // `public_key=` alone creates the peer (`wg set tt0 peer KEY`); `update_only` undoes that.
        guard let peer = device.addPeer(section.publicKey) else { return }
        for operation in section.operations {
            switch operation {
            case .remove:
                device.removePeer(peer.publicKey)
                return
            case .updateOnly:
                if created {
                    device.removePeer(peer.publicKey)
                    return
                }
            case .presharedKey(let psk):
                device.setPresharedKey(psk, for: peer)
            case .endpoint(let endpoint):
                device.setEndpoint(endpoint, for: peer)
            case .persistentKeepalive(let seconds):
                // Only a change re-arms: `wg setconf` repeats the interval on every reload, and
                // turning it on sends a keepalive at once (wireguard-go `pkaOn`).
                if seconds != peer.persistentKeepalive {
                    device.setPersistentKeepalive(seconds, for: peer, now: now)
                }
            case .replaceAllowedIPs:
                device.removeAllowedIPs(for: peer)
            case .allowedIP(let prefix):
                device.addAllowedIP(prefix, for: peer)
            }
        }
    }
}
