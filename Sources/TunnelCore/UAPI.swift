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
    static let newline = UInt8(ascii: "\n")

    /// Linux errno values, negated on the wire as the protocol wants (`errno=-22`). Named here
    /// because the core imports no C library.
    public enum Errno {
        /// A bad value, an unknown key, or a key in the wrong place (wireguard-go `IpcErrorInvalid`).
        public static let invalid: Int32 = -22
        /// A line that is not `key=value` (wireguard-go `IpcErrorProtocol`).
        public static let protocolError: Int32 = -71
    }

    /// Writes the full reply to `get=1` into `reply`, ending in `errno=0` and the blank line, for
    /// a caller that owns `device` outright (tests, tools). Peers are listed in the order of their
    /// public keys (wireguard-go's order is its map's, i.e. arbitrary). The daemon uses
    /// `get(listenPort:fwmark:into:locked:)` (UAPIGet.swift), which this calls.
    public static func get(device: Device, listenPort: UInt16, fwmark: UInt32 = 0, into reply: SecretBuffer) {
        get(listenPort: listenPort, fwmark: fwmark, into: reply) { body in body(device) }
    }

    /// `get(device:listenPort:into:)` as a `String`, for tests and tools. The daemon does not use
    /// it: the string holds the keys as hex and is freed without being zeroed.
    public static func get(device: Device, listenPort: UInt16, fwmark: UInt32 = 0) -> String {
        let reply = SecretBuffer()
        get(device: device, listenPort: listenPort, fwmark: fwmark, into: reply)
        return String(decoding: reply.bytes, as: UTF8.self)
    }

    /// Applies the body of a `set=1` request: the lines after `set=1`, without the terminating
    /// blank line (a trailing newline is fine), as bytes. Returns 0, or a negative errno with the
    /// device untouched. A new listen port is handed to `setListenPort` (the I/O layer rebinds),
    /// a `fwmark` to `setFwMark` (the I/O layer marks its socket; 0 is none); `now` arms a persistent keepalive that was just turned on. Keys are decoded from `body`
    /// into their `SecretKey`s directly; no text copy of them is made.
    public static func set(
        _ body: UnsafeRawBufferPointer, device: Device, now: Instant, setListenPort: (UInt16) -> Void,
        setFwMark: (UInt32) -> Void = { _ in }
    ) -> Int32 {
        let request: SetRequest
        do {
            request = try SetRequest(parsing: body)
        } catch {
            return error.errno
        }
        request.apply(to: device, now: now, setListenPort: setListenPort, setFwMark: setFwMark)
        return 0
    }

    /// `set` in two steps, for a caller that locks the device: `parseSet` outside the lock (all
    /// the text work, and a malformed request is refused without taking it), then
    /// `apply(_:to:now:setListenPort:setFwMark:)` inside.
    public static func parseSet(_ body: UnsafeRawBufferPointer) -> Result<ParsedSet, UAPIError> {
        do throws(UAPIError) {
            return .success(ParsedSet(request: try SetRequest(parsing: body)))
        } catch {
            return .failure(error)
        }
    }

    /// Applies a request `parseSet` accepted (cannot fail: it was validated).
    public static func apply(
        _ parsed: ParsedSet, to device: Device, now: Instant, setListenPort: (UInt16) -> Void,
        setFwMark: (UInt32) -> Void = { _ in }
    ) {
        parsed.request.apply(to: device, now: now, setListenPort: setListenPort, setFwMark: setFwMark)
    }

    /// A validated `set=1` request (keys decoded into `SecretKey`s; no text copy of them).
    public struct ParsedSet {
        let request: SetRequest
    }

    /// `set` for a body given as text (tests, tools).
    public static func set(
        _ body: String, device: Device, now: Instant, setListenPort: (UInt16) -> Void,
        setFwMark: (UInt32) -> Void = { _ in }
    ) -> Int32 {
        var body = body
        return body.withUTF8 {
            set(
                UnsafeRawBufferPointer($0), device: device, now: now, setListenPort: setListenPort,
                setFwMark: setFwMark)
        }
    }

    /// Why `body` would be refused by `set`, or nil when it is well-formed. For the daemon's log:
    /// the error names a line and a key, never a value.
    public static func validate(_ body: String) -> UAPIError? {
        var body = body
        return body.withUTF8 { bytes -> UAPIError? in
            do throws(UAPIError) {
                _ = try SetRequest(parsing: UnsafeRawBufferPointer(bytes))
                return nil
            } catch {
                return error
            }
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

    /// The negative errno the protocol reply carries.
    public var errno: Int32 {
        switch self {
        case .notKeyValue: return UAPI.Errno.protocolError
        case .badValue, .unknownKey, .peerKeyBeforePublicKey: return UAPI.Errno.invalid
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
        /// 0 turns the mark off.
        case fwmark(UInt32)
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
        /// `allowed_ip=-PREFIX`: removes that prefix if this peer has it (wireguard-go 0.0.20250522).
        case removeAllowedIP(IPPrefix)
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

    /// Parses from the request's bytes. Key names and values that are not secret become short
    /// strings; private and preshared keys are decoded from the bytes into `SecretKey`s.
    init(parsing body: UnsafeRawBufferPointer) throws(UAPIError) {
        var start = 0
        var number = 0
        while start < body.count {
            number += 1
            let newline = body[start...].firstIndex(of: UAPI.newline) ?? body.count
            // As Go's bufio.ScanLines, which wireguard-go reads with: one trailing CR is dropped.
            var end = newline
            if end > start, body[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            let line = UnsafeRawBufferPointer(rebasing: body[start..<end])
            start = newline + 1
            guard let equals = line.firstIndex(of: UInt8(ascii: "=")) else { throw .notKeyValue(line: number) }
            let value = UnsafeRawBufferPointer(rebasing: line[(equals + 1)...])
            // No key name is longer; a longer one (a pasted secret?) is never turned into text.
            guard equals <= Self.longestKeyName else {
                throw .unknownKey(line: number, key: "(a \(equals)-character name)", inPeerSection: !peers.isEmpty)
            }
            let key = Substring(decoding: UnsafeRawBufferPointer(rebasing: line[..<equals]), as: UTF8.self)
            if key == "public_key" {
                var ok = false
                let publicKey = PublicKey(Bytes32 { ok = Encoding.decodeHex(bytes: value, into: $0) })
                guard ok else { throw .badValue(line: number, key: "public_key") }
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

    /// "persistent_keepalive_interval", with room to spare.
    static let longestKeyName = 32

    private static func deviceOperation(
        _ key: Substring, _ value: UnsafeRawBufferPointer, line: Int
    ) throws(UAPIError) -> DeviceOperation? {
        switch key {
        case "private_key":
            guard let secret = secretKey(hex: value) else { throw .badValue(line: line, key: "private_key") }
            return .privateKey(secret.isZero ? nil : PrivateKey(secret: secret))
        case "listen_port":
            guard let port: UInt16 = decimal(value) else { throw .badValue(line: line, key: "listen_port") }
            return .listenPort(port)
        case "fwmark":
            // As Go's strconv.ParseUint(value, 10, 32): an empty value is refused (`wg` sends 0 for off).
            guard let mark: UInt32 = decimal(value) else { throw .badValue(line: line, key: "fwmark") }
            return .fwmark(mark)
        case "replace_peers":
            guard isTrue(value) else { throw .badValue(line: line, key: "replace_peers") }
            return .replacePeers
        default:
            if peerKeys.contains(key) { throw .peerKeyBeforePublicKey(line: line, key: quotedKey(key)) }
            throw .unknownKey(line: line, key: quotedKey(key), inPeerSection: false)
        }
    }

    /// nil for a key that is valid but changes nothing (`protocol_version=1`).
    private static func peerOperation(
        _ key: Substring, _ value: UnsafeRawBufferPointer, line: Int
    ) throws(UAPIError) -> PeerOperation? {
        let name = String(key)
        switch key {
        case "remove":
            guard isTrue(value) else { throw .badValue(line: line, key: name) }
            return .remove
        case "update_only":
            guard isTrue(value) else { throw .badValue(line: line, key: name) }
            return .updateOnly
        case "preshared_key":
            guard let secret = secretKey(hex: value) else { throw .badValue(line: line, key: name) }
            return .presharedKey(PresharedKey(secret: secret))
        case "endpoint":
            guard let endpoint = Endpoint(text(value)) else { throw .badValue(line: line, key: name) }
            return .endpoint(endpoint)
        case "persistent_keepalive_interval":
            guard let seconds: UInt16 = decimal(value) else { throw .badValue(line: line, key: name) }
            return .persistentKeepalive(seconds)
        case "replace_allowed_ips":
            guard isTrue(value) else { throw .badValue(line: line, key: name) }
            return .replaceAllowedIPs
        case "allowed_ip":
            // A leading '-' removes the prefix instead. Go's netip.ParsePrefix wants the length;
            // IPPrefix would take a bare address.
            var prefixText = text(value)
            let removing = prefixText.first == "-"
            if removing { prefixText = prefixText.dropFirst() }
            guard prefixText.contains("/"), let prefix = IPPrefix(prefixText) else {
                throw .badValue(line: line, key: name)
            }
            return removing ? .removeAllowedIP(prefix) : .allowedIP(prefix)
        case "protocol_version":
            guard value.elementsEqual("1".utf8) else { throw .badValue(line: line, key: name) }
            return nil
        default:
            throw .unknownKey(line: line, key: quotedKey(key), inPeerSection: true)
        }
    }

    /// A value that is not secret (an endpoint, a prefix) as text for its parser.
    private static func text(_ value: UnsafeRawBufferPointer) -> Substring {
        Substring(decoding: value, as: UTF8.self)
    }

    private static func isTrue(_ value: UnsafeRawBufferPointer) -> Bool { value.elementsEqual("true".utf8) }

    /// 64 hex digits into a secret (all zero allowed: it means "remove the key").
    private static func secretKey(hex: UnsafeRawBufferPointer) -> SecretKey? {
        var ok = false
        let secret = SecretKey { ok = Encoding.decodeHex(bytes: hex, into: $0) }
        return ok ? secret : nil
    }

    /// Plain decimal digits only (Swift's integer parsing would also take a sign), in range.
    private static func decimal<T: FixedWidthInteger & UnsignedInteger>(_ digits: UnsafeRawBufferPointer) -> T? {
        guard !digits.isEmpty else { return nil }
        var value: T = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
            let (shifted, overflowA) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflowB) = shifted.addingReportingOverflow(T(digit - UInt8(ascii: "0")))
            guard !overflowA, !overflowB else { return nil }
            value = sum
        }
        return value
    }

    /// A key name as sent, printable, for an error message (only names up to `longestKeyName`
    /// characters get here; key names are not secret, but the line could be anything).
    private static func quotedKey(_ key: Substring) -> String {
        let printable = key.unicodeScalars.map { scalar in
            scalar.isASCII && scalar.value >= 0x20 && scalar.value < 0x7f ? String(scalar) : "?"
        }
        return "\"" + printable.joined() + "\""
    }

    // MARK: - Applying

    /// Carries the request out in order, as wireguard-go would line by line. Cannot fail: every
    /// value was validated while parsing.
    func apply(
        to device: Device, now: Instant, setListenPort: (UInt16) -> Void, setFwMark: (UInt32) -> Void = { _ in }
    ) {
        for operation in self.device {
            switch operation {
            case .privateKey(let key): device.setPrivateKey(key)
            case .listenPort(let port): setListenPort(port)
            case .fwmark(let mark): setFwMark(mark)
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
            case .removeAllowedIP(let prefix):
                device.removeAllowedIP(prefix, for: peer)
            }
        }
    }
}
