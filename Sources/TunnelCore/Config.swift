import TunnelCrypto

// The tunnel configuration: a wg-quick-compatible INI file parsed into a validated model.
// Pure: the text comes in as a String, key files come back in as Strings (see
// `TunnelConfig.resolvingKeyFiles`); reading files and checking their modes is TunnelIO's job.

// MARK: - Model

/// A validated tunnel configuration. `TunnelConfig.parse` is the way in from text; the memberwise
/// initialisers trust their caller (for tests and programmatic setups).
public struct TunnelConfig: Sendable {
    public let interface: InterfaceConfig
    public let peers: [PeerConfig]

    public init(interface: InterfaceConfig, peers: [PeerConfig]) {
        self.interface = interface
        self.peers = peers
    }

    /// The key files this configuration names, in file order. The loader reads each one and hands
    /// the contents to `resolvingKeyFiles`.
    public var keyFileReferences: [KeyFileReference] {
        var references: [KeyFileReference] = []
        if case .file(let reference) = interface.privateKey { references.append(reference) }
        for peer in peers {
            if case .file(let reference)? = peer.presharedKey { references.append(reference) }
        }
        return references
    }

    /// True when every key is held inline, i.e. no key file is left to read.
    public var isResolved: Bool { keyFileReferences.isEmpty }

    /// The private key, once resolved; nil while it is still a file reference.
    public var privateKey: PrivateKey? { interface.privateKey.key }
}

public struct InterfaceConfig: Sendable {
    public let privateKey: KeySource<PrivateKey>
    /// Interface addresses with their prefix length, host bits kept (`10.0.0.1/24`).
    public let addresses: [IPPrefix]
    /// nil when absent; 0 means "any free port", as for `wg`.
    public let listenPort: UInt16?
    /// nil when absent (the caller applies the default of 1420).
    public let mtu: Int?
    /// The `[Interface]` header line.
    public let location: ConfigLocation
    /// `DNS =`: name servers and search domains, for resolvconf while the interface is up.
    public let dns: DNSSettings
    /// `PreUp`, `PostUp`, `PreDown`, `PostDown`: shell commands, each kind in file order.
    public let hooks: Hooks
    /// `SaveConfig = true`: the running configuration is written back to the file on exit.
    public let saveConfig: Bool
    /// `Table =`; nil when absent (wg-quick's `auto`). Parsed and kept here; its routing effect is
    /// the policy-routing code's.
    public let table: RoutingTable?
    /// `FwMark =`; nil when absent, `off` or 0. Parsed and kept here; the socket mark is applied
    /// by the policy-routing code.
    public let fwMark: UInt32?
    /// `MetricsListen =`: a loopback address and port to serve Prometheus metrics on; nil when absent.
    public let metricsListen: Endpoint?
    /// The `ListenPort`, `MetricsListen` and `SaveConfig` lines, for errors about them at start-up
    /// (port in use, a file that cannot be written back).
    public let listenPortLocation: ConfigLocation?
    public let metricsListenLocation: ConfigLocation?
    public let saveConfigLocation: ConfigLocation?

    public init(
        privateKey: KeySource<PrivateKey>, addresses: [IPPrefix], listenPort: UInt16?, mtu: Int?,
        location: ConfigLocation, dns: DNSSettings = DNSSettings(), hooks: Hooks = Hooks(), saveConfig: Bool = false,
        table: RoutingTable? = nil, fwMark: UInt32? = nil, metricsListen: Endpoint? = nil,
        listenPortLocation: ConfigLocation? = nil, metricsListenLocation: ConfigLocation? = nil,
        saveConfigLocation: ConfigLocation? = nil
    ) {
        self.privateKey = privateKey
        self.addresses = addresses
        self.listenPort = listenPort
        self.mtu = mtu
        self.location = location
        self.dns = dns
        self.hooks = hooks
        self.saveConfig = saveConfig
        self.table = table
        self.fwMark = fwMark
        self.metricsListen = metricsListen
        self.listenPortLocation = listenPortLocation
        self.metricsListenLocation = metricsListenLocation
        self.saveConfigLocation = saveConfigLocation
    }

    /// This interface with another private key (the rest unchanged).
    public func with(privateKey: KeySource<PrivateKey>) -> InterfaceConfig {
        InterfaceConfig(
            privateKey: privateKey, addresses: addresses, listenPort: listenPort, mtu: mtu, location: location,
            dns: dns, hooks: hooks, saveConfig: saveConfig, table: table, fwMark: fwMark, metricsListen: metricsListen,
            listenPortLocation: listenPortLocation, metricsListenLocation: metricsListenLocation,
            saveConfigLocation: saveConfigLocation)
    }
}

/// What `DNS =` lines give, as wg-quick splits them: IP addresses are name servers, anything
/// else a search domain.
public struct DNSSettings: Hashable, Sendable {
    public var servers: [IPAddress]
    public var searchDomains: [String]
    /// The first `DNS` line (errors about DNS, e.g. resolvconf missing, point there); nil when none.
    public var location: ConfigLocation?

    public init(servers: [IPAddress] = [], searchDomains: [String] = [], location: ConfigLocation? = nil) {
        self.servers = servers
        self.searchDomains = searchDomains
        self.location = location
    }

    public var isEmpty: Bool { servers.isEmpty && searchDomains.isEmpty }

    /// What wg-quick pipes into `resolvconf -a`: one `nameserver` line per server, then one
    /// `search` line when there are search domains.
    public var resolvConfText: String {
        var text = servers.map { "nameserver \($0)\n" }.joined()
        if !searchDomains.isEmpty { text += "search \(searchDomains.joined(separator: " "))\n" }
        return text
    }
}

/// One `PreUp`/`PostUp`/`PreDown`/`PostDown` line: the command as written (`%i` not yet replaced).
public struct Hook: Hashable, Sendable {
    public let command: String
    public let location: ConfigLocation

    public init(command: String, location: ConfigLocation) {
        self.command = command
        self.location = location
    }
}

/// The four hook lists, each in file order.
public struct Hooks: Hashable, Sendable {
    public var preUp: [Hook] = []
    public var postUp: [Hook] = []
    public var preDown: [Hook] = []
    public var postDown: [Hook] = []

    public init(preUp: [Hook] = [], postUp: [Hook] = [], preDown: [Hook] = [], postDown: [Hook] = []) {
        self.preUp = preUp
        self.postUp = postUp
        self.preDown = preDown
        self.postDown = postDown
    }

    public var isEmpty: Bool { preUp.isEmpty && postUp.isEmpty && preDown.isEmpty && postDown.isEmpty }
}

/// `Table =`: `off` (no routes), `auto` (the main table), or a table number.
public enum RoutingTable: Hashable, Sendable, CustomStringConvertible {
    case off
    case auto
    case number(UInt32)

    public var description: String {
        switch self {
        case .off: return "off"
        case .auto: return "auto"
        case .number(let table): return String(table)
        }
    }
}

public struct PeerConfig: Sendable {
    public let publicKey: PublicKey
    public let presharedKey: KeySource<PresharedKey>?
    public let endpoint: PeerEndpoint?
    /// Masked (`10.0.0.7/24` is stored as `10.0.0.0/24`, as `wg` does), duplicates removed, file order.
    public let allowedIPs: [IPPrefix]
    /// Seconds; nil when off (`0`, `off` or absent).
    public let persistentKeepalive: UInt16?
    /// The `[Peer]` header line.
    public let location: ConfigLocation
    /// The `PublicKey` line, where errors about this peer's key point.
    public let publicKeyLocation: ConfigLocation

    /// `publicKeyLocation` defaults to `location`.
    public init(
        publicKey: PublicKey, presharedKey: KeySource<PresharedKey>?, endpoint: PeerEndpoint?,
        allowedIPs: [IPPrefix], persistentKeepalive: UInt16?, location: ConfigLocation,
        publicKeyLocation: ConfigLocation? = nil
    ) {
        self.publicKey = publicKey
        self.presharedKey = presharedKey
        self.endpoint = endpoint
        self.allowedIPs = allowedIPs
        self.persistentKeepalive = persistentKeepalive
        self.location = location
        self.publicKeyLocation = publicKeyLocation ?? location
    }
}

/// A key given inline in the config, or the file that holds it (not yet read).
public enum KeySource<Key: Sendable>: Sendable {
    case inline(Key)
    case file(KeyFileReference)

    /// The key when inline; nil while it is a file reference.
    public var key: Key? {
        if case .inline(let key) = self { return key }
        return nil
    }
}

/// Where a config names a key file: the path exactly as written (relative paths are relative to
/// the config file's directory; the loader resolves them) and the line that named it.
public struct KeyFileReference: Hashable, Sendable {
    public let path: String
    public let location: ConfigLocation
    public let section: ConfigSection
    public let key: ConfigKey

    public init(path: String, location: ConfigLocation, section: ConfigSection, key: ConfigKey) {
        self.path = path
        self.location = location
        self.section = section
        self.key = key
    }
}

/// A peer's endpoint. Host names are kept as written: the I/O layer resolves them (at start-up,
/// as `wg setconf` does), the pure core never does.
public enum PeerEndpoint: Hashable, Sendable, CustomStringConvertible {
    case address(Endpoint)
    /// A syntactically valid DNS name (RFC 1123 labels) and a port in 1–65535.
    case hostName(String, port: UInt16)

    public var description: String {
        switch self {
        case .address(let endpoint): return endpoint.description
        case .hostName(let name, let port): return "\(name):\(port)"
        }
    }
}

/// A line in a named config file, printed `wg0.conf:7`.
public struct ConfigLocation: Hashable, Sendable, CustomStringConvertible {
    public let file: String
    /// 1-based.
    public let line: Int

    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }

    public var description: String { "\(file):\(line)" }
}

public enum ConfigSection: String, Hashable, Sendable, CaseIterable {
    case interface = "Interface"
    case peer = "Peer"
}

/// Every key tunctl understands, spelled as in wg-quick (matched case-insensitively).
public enum ConfigKey: String, Hashable, Sendable, CaseIterable {
    case privateKey = "PrivateKey"
    case privateKeyFile = "PrivateKeyFile"
    case address = "Address"
    case listenPort = "ListenPort"
    case mtu = "MTU"
    case publicKey = "PublicKey"
    case presharedKey = "PresharedKey"
    case presharedKeyFile = "PresharedKeyFile"
    case endpoint = "Endpoint"
    case allowedIPs = "AllowedIPs"
    case persistentKeepalive = "PersistentKeepalive"
    case dns = "DNS"
    case table = "Table"
    case fwMark = "FwMark"
    case preUp = "PreUp"
    case postUp = "PostUp"
    case preDown = "PreDown"
    case postDown = "PostDown"
    case saveConfig = "SaveConfig"
    case metricsListen = "MetricsListen"

    public var section: ConfigSection {
        switch self {
        case .privateKey, .privateKeyFile, .address, .listenPort, .mtu, .dns, .table, .fwMark, .preUp, .postUp,
            .preDown, .postDown, .saveConfig, .metricsListen:
            return .interface
        case .publicKey, .presharedKey, .presharedKeyFile, .endpoint, .allowedIPs, .persistentKeepalive:
            return .peer
        }
    }

    /// Whether the value is secret and so never echoed in an error.
    public var isSecret: Bool { self == .privateKey || self == .presharedKey }

    /// Keys that may appear more than once in a section (values accumulate).
    var mayRepeat: Bool {
        switch self {
        case .address, .allowedIPs, .dns, .preUp, .postUp, .preDown, .postDown: return true
        default: return false
        }
    }

    static func named(_ text: Substring) -> ConfigKey? {
        allCases.first { $0.rawValue.lowercased() == text.lowercased() }
    }
}

// MARK: - Errors

/// What is wrong with a value; `ConfigError.description` turns it into words and advice.
public enum ValueProblem: Hashable, Sendable {
    case empty
    case notBase64Key
    case notAddress
    case notPrefix
    case notEndpoint
    case endpointNeedsBrackets
    case endpointPortZero
    case notPort
    case mtuOutOfRange
    case notKeepalive
    case notDNS
    case notBool
    case notTable
    case notFwMark
    case notLoopbackEndpoint
}

/// Everything that can be wrong with a config's text, each naming the file, line, section and key
/// and saying what to do. Secret values (private and preshared keys, key-file contents) are never
/// carried, so they cannot reach a message.
public enum ConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A line that is not blank, a comment, `[Section]` or `Key = Value`. `text` is nil when the
    /// line looked like it held a key and so is not repeated.
    case malformedLine(ConfigLocation, text: String?)
    case unknownSection(ConfigLocation, name: String)
    case repeatedInterfaceSection(ConfigLocation, firstLine: Int)
    case keyOutsideSection(ConfigLocation, key: String)
    case unknownKey(ConfigLocation, ConfigSection, key: String)
    /// A key that belongs to the other section (e.g. `AllowedIPs` under `[Interface]`).
    case keyInWrongSection(ConfigLocation, ConfigSection, key: ConfigKey)
    case repeatedKey(ConfigLocation, ConfigSection, key: ConfigKey, firstLine: Int)
    /// Two keys that exclude each other, e.g. `PrivateKey` and `PrivateKeyFile`.
    case conflictingKeys(ConfigLocation, ConfigSection, key: ConfigKey, other: ConfigKey, otherLine: Int)
    /// `value` is nil for secret keys and for any value that looks like a key (a run of base64 or
    /// hex characters, see `ConfigParser.showable`): those are never repeated back.
    case invalidValue(ConfigLocation, ConfigSection, key: ConfigKey, value: String?, problem: ValueProblem)
    case missingInterfaceSection(file: String)
    /// A required key is absent; the location is the section's header line.
    case missingKey(ConfigLocation, ConfigSection, key: ConfigKey)
    case duplicatePeer(ConfigLocation, publicKey: PublicKey, firstLine: Int)
    case peerIsSelf(ConfigLocation, publicKey: PublicKey)
    /// A key file whose contents are not a base64 key (the contents are not kept).
    case invalidKeyFile(KeyFileReference)

    public var description: String {
        switch self {
        case .malformedLine(let at, let text?):
            return "\(at): \(quoted(text)) is not a section or a setting "
                + "(use [Interface], [Peer] or Key = Value; start comments with #)"
        case .malformedLine(let at, nil):
            return
                "\(at): this line is not a section or a setting and is not shown because it may hold a key "
                + "(use Key = Value, e.g. PrivateKey = ...)"
        case .unknownSection(let at, let name):
            return "\(at): [\(name)] is not a known section (use [Interface] or [Peer])"
        case .repeatedInterfaceSection(let at, let first):
            return "\(at): [Interface] appears again (merge it into the [Interface] on line \(first))"
        case .keyOutsideSection(let at, let key):
            return "\(at): \(key) is outside any section (put it under [Interface] or [Peer])"
        case .unknownKey(let at, let section, let key):
            let valid = ConfigKey.allCases.filter { $0.section == section }.map(\.rawValue)
            if let guess = ConfigError.closest(to: key, among: valid) {
                return "\(at): [\(section.rawValue)] \(key): unknown key (did you mean \(guess)?)"
            }
            return "\(at): [\(section.rawValue)] \(key): unknown key (valid keys in [\(section.rawValue)]: "
                + valid.joined(separator: ", ") + ")"
        case .keyInWrongSection(let at, let section, let key):
            return "\(at): [\(section.rawValue)] \(key.rawValue): belongs in [\(key.section.rawValue)] "
                + "(move the line there)"
        case .repeatedKey(let at, let section, let key, let first):
            return "\(at): [\(section.rawValue)] \(key.rawValue): given twice in this section "
                + "(keep one; the other is on line \(first))"
        case .conflictingKeys(let at, let section, let key, let other, let otherLine):
            return "\(at): [\(section.rawValue)] \(key.rawValue): cannot be used with \(other.rawValue) "
                + "on line \(otherLine) (keep one of them)"
        case .invalidValue(let at, let section, let key, let value, let problem):
            let hidden =
                key.isSecret ? "the value (not shown, it is secret)" : "the value (not shown, it may be a key)"
            let subject = problem == .empty ? "the value" : value.map(quoted) ?? hidden
            let (what, advice) = ConfigError.explain(problem, key: key)
            return "\(at): [\(section.rawValue)] \(key.rawValue): \(subject) \(what) (\(advice))"
        case .missingInterfaceSection(let file):
            return "\(file): no [Interface] section (add one with PrivateKey = ... or PrivateKeyFile = PATH)"
        case .missingKey(let at, let section, let key):
            switch key {
            case .privateKey:
                return "\(at): [\(section.rawValue)] PrivateKey: missing "
                    + "(add PrivateKey = ... or PrivateKeyFile = PATH; make one with tunctl keygen)"
            case .publicKey:
                return
                    "\(at): [\(section.rawValue)] PublicKey: missing (every [Peer] needs the peer's PublicKey)"
            default:
                return "\(at): [\(section.rawValue)] \(key.rawValue): missing (add it to this section)"
            }
        case .duplicatePeer(let at, let publicKey, let first):
            return
                "\(at): [Peer] PublicKey: \(quoted(publicKey.base64)) already belongs to the [Peer] on line "
                + "\(first) (merge the two peers into one)"
        case .peerIsSelf(let at, let publicKey):
            return "\(at): [Peer] PublicKey: \(quoted(publicKey.base64)) is this interface's own public key "
                + "(use the other side's public key)"
        case .invalidKeyFile(let reference):
            let advice =
                reference.key == .presharedKeyFile
                ? "write one with tunctl genpsk > FILE"
                : "write one with tunctl keygen or tunctl genkey > FILE"
            return "\(reference.location): [\(reference.section.rawValue)] \(reference.key.rawValue): "
                + "\(quoted(reference.path)) does not hold a valid base64 key of 32 bytes (\(advice))"
        }
    }

    private static func explain(_ problem: ValueProblem, key: ConfigKey) -> (String, String) {
        switch problem {
        case .empty:
            return ("is empty", "give a value or remove the line")
        case .notBase64Key:
            switch key {
            case .privateKey:
                return ("is not a valid base64 key of 32 bytes", "generate one with tunctl genkey")
            case .presharedKey:
                return ("is not a valid base64 key of 32 bytes", "generate one with tunctl genpsk")
            default:
                return (
                    "is not a valid base64 key of 32 bytes",
                    "use the peer's public key as printed by tunctl pubkey or wg pubkey"
                )
            }
        case .notAddress:
            return ("is not an IP address", "use ADDRESS/LENGTH, e.g. 10.0.0.1/24 or fd00::1/64")
        case .notPrefix:
            return ("is not an IP prefix", "use ADDRESS/LENGTH, e.g. 198.18.0.0/15")
        case .notEndpoint:
            return ("is not an endpoint", "use HOST:PORT or [IPv6]:PORT, e.g. 192.0.2.1:51820")
        case .endpointNeedsBrackets:
            return ("is not an endpoint", "put an IPv6 address in brackets, e.g. [2001:db8::1]:51820")
        case .endpointPortZero:
            return ("has port 0", "use the peer's ListenPort, 1-65535")
        case .notPort:
            return ("is not a port number", "use 0-65535; 0 picks a free port")
        case .mtuOutOfRange:
            return (
                "is not an MTU between \(Protocol.minimumMTU) and \(Protocol.maximumMTU)",
                "1420 suits most links"
            )
        case .notKeepalive:
            return (
                "is not a keepalive interval",
                "use 1-65535 seconds, or 0 or off to disable; 25 suits most NATs"
            )
        case .notDNS:
            return (
                "is neither an IP address nor a search domain",
                "use name servers and search domains separated by commas, e.g. 192.0.2.53, example.com"
            )
        case .notBool:
            return ("is neither true nor false", "use true or false")
        case .notTable:
            return ("is not a routing table", "use off, auto or a table number from 1 to 4294967295")
        case .notFwMark:
            return ("is not a firewall mark", "use off, or a number from 1 to 4294967295 in decimal or 0x hex")
        case .notLoopbackEndpoint:
            return (
                "is not a loopback address and port",
                "use 127.0.0.1:PORT or [::1]:PORT, e.g. 127.0.0.1:9586; metrics are served on loopback only, "
                    + "put a proxy in front to publish them"
            )
        }
    }

    /// A valid key within edit distance 2 of `text` (case-insensitive), to suggest for a typo.
    private static func closest(to text: String, among candidates: [String]) -> String? {
        let word = Array(text.lowercased())
        var best: (String, Int)?
        for candidate in candidates {
            let distance = editDistance(word, Array(candidate.lowercased()))
            if distance <= 2, distance < (best?.1 ?? Int.max) { best = (candidate, distance) }
        }
        return best?.0
    }

    private static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/// `"text"`, with quotes and control characters escaped so the message stays one line.
func quoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7f {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

// MARK: - Parsing

extension TunnelConfig {
    /// Parses and validates a config. `fileName` is only used in error messages (`wg0.conf:7: ...`).
    /// Key files are not read: they stay `.file` references until `resolvingKeyFiles`.
    public static func parse(_ text: String, fileName: String) throws(ConfigError) -> TunnelConfig {
        var parser = ConfigParser(fileName: fileName)
        var lineNumber = 0
        var body = Substring(text)
        if body.hasPrefix("\u{FEFF}") { body = body.dropFirst() }
        // "\r\n" is one Character in Swift, so both line ends are named; a lone "\r" is not a line end.
        for rawLine in body.split(
            omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        {
            lineNumber += 1
            try parser.consume(rawLine, line: lineNumber)
        }
        return try parser.finish()
    }

    /// Replaces every key-file reference with the key read from it. `contents` maps each of
    /// `keyFileReferences` to the file's text; a missing entry is a programming error.
    /// Also checks what needed the private key: no peer may have our own public key.
    public func resolvingKeyFiles(_ contents: [KeyFileReference: String]) throws(ConfigError) -> TunnelConfig {
        func text(for reference: KeyFileReference) -> String {
            guard let text = contents[reference] else {
                preconditionFailure("resolvingKeyFiles: no contents for \(reference.location)")
            }
            return text
        }
        var privateKey = interface.privateKey
        if case .file(let reference) = privateKey {
            guard let key = PrivateKey(base64: trimmed(text(for: reference))) else {
                throw .invalidKeyFile(reference)
            }
            privateKey = .inline(key)
        }
        var resolvedPeers: [PeerConfig] = []
        for peer in peers {
            var presharedKey = peer.presharedKey
            if case .file(let reference)? = presharedKey {
                guard let key = PresharedKey(base64: trimmed(text(for: reference))) else {
                    throw .invalidKeyFile(reference)
                }
                presharedKey = .inline(key)
            }
            resolvedPeers.append(
                PeerConfig(
                    publicKey: peer.publicKey, presharedKey: presharedKey, endpoint: peer.endpoint,
                    allowedIPs: peer.allowedIPs, persistentKeepalive: peer.persistentKeepalive,
                    location: peer.location, publicKeyLocation: peer.publicKeyLocation))
        }
        let resolved = TunnelConfig(
            interface: interface.with(privateKey: privateKey), peers: resolvedPeers)
        try resolved.checkNoPeerIsSelf()
        return resolved
    }

    /// Runs once the private key is known (at parse time when inline, else after resolution).
    func checkNoPeerIsSelf() throws(ConfigError) {
        guard let ours = interface.privateKey.key?.publicKey else { return }
        for peer in peers where peer.publicKey == ours {
            throw .peerIsSelf(peer.publicKeyLocation, publicKey: ours)
        }
    }
}

private func trimmed(_ text: some StringProtocol) -> Substring {
    var text = Substring(text)
    while let first = text.first, first.isWhitespace { text.removeFirst() }
    while let last = text.last, last.isWhitespace { text.removeLast() }
    return text
}

/// Line-by-line state machine. Each section's settings are gathered, then validated as a whole
/// when the next section starts or the file ends.
struct ConfigParser {
    let fileName: String

    private enum Current {
        case none
        case interface
        case peer
    }
    private var current = Current.none

    // [Interface]
    private var interfaceLine: Int?
    private var privateKey: (source: KeySource<PrivateKey>, line: Int, key: ConfigKey)?
    private var addresses: [IPPrefix] = []
    /// `addresses` as a set, so a repeated address is found in O(1).
    private var addressSet: Set<IPPrefix> = []
    private var listenPort: (value: UInt16, line: Int)?
    private var mtu: (value: Int, line: Int)?
    private var dns = DNSSettings()
    private var hooks = Hooks()
    private var saveConfig: (value: Bool, line: Int)?
    private var table: (value: RoutingTable, line: Int)?
    private var fwMark: (value: UInt32?, line: Int)?
    private var metricsListen: (value: Endpoint, line: Int)?

    // The [Peer] being read.
    private var peer = PeerDraft(line: 0)
    private var peers: [PeerConfig] = []
    /// The `PublicKey` line of every peer read so far, so a duplicate is found in O(1).
    private var peerLines: [PublicKey: Int] = [:]

    private struct PeerDraft {
        let line: Int
        var publicKey: (value: PublicKey, line: Int)?
        var presharedKey: (source: KeySource<PresharedKey>, line: Int, key: ConfigKey)?
        var endpoint: (value: PeerEndpoint, line: Int)?
        var allowedIPs: [IPPrefix] = []
        /// `allowedIPs` as a set, so 20,000 prefixes are deduplicated in O(n), not O(n²).
        var allowedIPSet: Set<IPPrefix> = []
        var keepalive: (value: UInt16?, line: Int)?
    }

    init(fileName: String) { self.fileName = fileName }

    private func at(_ line: Int) -> ConfigLocation { ConfigLocation(file: fileName, line: line) }

    mutating func consume(_ rawLine: Substring, line: Int) throws(ConfigError) {
        var text = rawLine
        if let hash = text.firstIndex(of: "#") { text = text[..<hash] }
        text = trimmed(text)
        if text.isEmpty { return }

        if text.hasPrefix("[") {
            guard text.hasSuffix("]") else {
                throw .malformedLine(at(line), text: ConfigParser.showable(text))
            }
            let name = trimmed(text.dropFirst().dropLast())
            // A pasted key between brackets is not a section name to repeat back.
            guard ConfigParser.showableName(name), ConfigParser.showable(name) != nil else {
                throw .malformedLine(at(line), text: nil)
            }
            try finishSection()
            switch name.lowercased() {
            case "interface":
                if let first = interfaceLine { throw .repeatedInterfaceSection(at(line), firstLine: first) }
                interfaceLine = line
                current = .interface
            case "peer":
                peer = PeerDraft(line: line)
                current = .peer
            default:
                throw .unknownSection(at(line), name: String(name))
            }
            return
        }

        guard let equals = text.firstIndex(of: "=") else {
            throw .malformedLine(at(line), text: ConfigParser.showable(text))
        }
        let keyText = trimmed(text[..<equals])
        let value = trimmed(text[text.index(after: equals)...])
        // A key is a word; anything else (e.g. a pasted base64 key, whose padding is "=") is not
        // repeated back, since it may be a secret.
        guard !keyText.isEmpty, keyText.allSatisfy({ $0.isASCII && $0.isLetter }) else {
            throw .malformedLine(at(line), text: ConfigParser.showable(text))
        }
        // Letters only but longer than any key name: maybe a key whose first "=" is its padding.
        guard ConfigParser.showableName(keyText) else { throw .malformedLine(at(line), text: nil) }

        let section: ConfigSection
        switch current {
        case .none: throw .keyOutsideSection(at(line), key: String(keyText))
        case .interface: section = .interface
        case .peer: section = .peer
        }
        guard let key = ConfigKey.named(keyText) else { throw .unknownKey(at(line), section, key: String(keyText)) }
        guard key.section == section else { throw .keyInWrongSection(at(line), section, key: key) }
        if value.isEmpty && key != .allowedIPs && key != .address {
            throw .invalidValue(at(line), section, key: key, value: key.isSecret ? nil : "", problem: .empty)
        }
        // A value is repeated back only when it cannot be a key: `Address = <private key>` must
        // not put the key in a log. The line number says where it is.
        func invalid(_ problem: ValueProblem, _ shown: Substring? = nil) -> ConfigError {
            .invalidValue(
                at(line), section, key: key, value: key.isSecret ? nil : ConfigParser.showable(shown ?? value),
                problem: problem)
        }

        switch key {
        case .privateKey, .privateKeyFile:
            if let previous = privateKey {
                if previous.key == key {
                    throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
                }
                throw .conflictingKeys(
                    at(line), section, key: key, other: previous.key, otherLine: previous.line)
            }
            if key == .privateKey {
                guard let parsed = PrivateKey(base64: value) else { throw invalid(.notBase64Key) }
                privateKey = (.inline(parsed), line, key)
            } else {
                let reference = KeyFileReference(
                    path: String(value), location: at(line), section: section, key: key)
                privateKey = (.file(reference), line, key)
            }
        case .address:
            for item in ConfigParser.listItems(value) {
                guard let prefix = IPPrefix(item) else { throw invalid(.notAddress, item) }
                if addressSet.insert(prefix).inserted { addresses.append(prefix) }
            }
        case .listenPort:
            if let previous = listenPort {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            guard let port = ConfigParser.decimal(value, in: 0...65535) else { throw invalid(.notPort) }
            listenPort = (UInt16(port), line)
        case .mtu:
            if let previous = mtu {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            guard let parsed = ConfigParser.decimal(value, in: Protocol.minimumMTU...Protocol.maximumMTU) else {
                throw invalid(.mtuOutOfRange)
            }
            mtu = (parsed, line)
        case .publicKey:
            if let previous = peer.publicKey {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            guard let parsed = PublicKey(base64: value) else { throw invalid(.notBase64Key) }
            peer.publicKey = (parsed, line)
        case .presharedKey, .presharedKeyFile:
            if let previous = peer.presharedKey {
                if previous.key == key {
                    throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
                }
                throw .conflictingKeys(
                    at(line), section, key: key, other: previous.key, otherLine: previous.line)
            }
            if key == .presharedKey {
                guard let parsed = PresharedKey(base64: value) else { throw invalid(.notBase64Key) }
                peer.presharedKey = (.inline(parsed), line, key)
            } else {
                let reference = KeyFileReference(
                    path: String(value), location: at(line), section: section, key: key)
                peer.presharedKey = (.file(reference), line, key)
            }
        case .endpoint:
            if let previous = peer.endpoint {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            do {
                peer.endpoint = (try ConfigParser.parseEndpoint(value), line)
            } catch {
                throw invalid(error.problem)
            }
        case .allowedIPs:
            for item in ConfigParser.listItems(value) {
                guard let prefix = IPPrefix(item) else { throw invalid(.notPrefix, item) }
                let masked = prefix.masked
                if peer.allowedIPSet.insert(masked).inserted { peer.allowedIPs.append(masked) }
            }
        case .dns:
            if dns.location == nil { dns.location = at(line) }
            for item in ConfigParser.listItems(value) {
                if let address = IPAddress(item) {
                    if !dns.servers.contains(address) { dns.servers.append(address) }
                } else if ConfigParser.isHostName(item) {
                    if !dns.searchDomains.contains(String(item)) { dns.searchDomains.append(String(item)) }
                } else {
                    throw invalid(.notDNS, item)
                }
            }
        case .preUp, .postUp, .preDown, .postDown:
            let hook = Hook(command: String(value), location: at(line))
            switch key {
            case .preUp: hooks.preUp.append(hook)
            case .postUp: hooks.postUp.append(hook)
            case .preDown: hooks.preDown.append(hook)
            default: hooks.postDown.append(hook)
            }
        case .saveConfig:
            if let previous = saveConfig {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            // As wg-quick reads it (case-insensitively): true or false, nothing else.
            switch value.utf8.count <= 5 ? value.lowercased() : "" {
            case "true": saveConfig = (true, line)
            case "false": saveConfig = (false, line)
            default: throw invalid(.notBool)
            }
        case .table:
            if let previous = table {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            guard let parsed = ConfigParser.parseTable(value) else { throw invalid(.notTable) }
            table = (parsed, line)
        case .fwMark:
            if let previous = fwMark {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            guard let parsed = ConfigParser.parseFwMark(value) else { throw invalid(.notFwMark) }
            fwMark = (parsed == 0 ? nil : parsed, line)
        case .metricsListen:
            if let previous = metricsListen {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            guard let endpoint = Endpoint(loopback: value) else { throw invalid(.notLoopbackEndpoint) }
            metricsListen = (endpoint, line)
        case .persistentKeepalive:
            if let previous = peer.keepalive {
                throw .repeatedKey(at(line), section, key: key, firstLine: previous.line)
            }
            // Compared without a lowercased copy: the value may be a misplaced key.
            if value.utf8.count == 3, value.lowercased() == "off" {
                peer.keepalive = (nil, line)
            } else {
                guard let seconds = ConfigParser.decimal(value, in: 0...65535) else {
                    throw invalid(.notKeepalive)
                }
                peer.keepalive = (seconds == 0 ? nil : UInt16(seconds), line)
            }
        }
    }

    /// Validates the section just read and files it away.
    private mutating func finishSection() throws(ConfigError) {
        switch current {
        case .none, .interface:
            break
        case .peer:
            guard let publicKey = peer.publicKey else {
                throw .missingKey(at(peer.line), .peer, key: .publicKey)
            }
            if let first = peerLines[publicKey.value] {
                throw .duplicatePeer(at(publicKey.line), publicKey: publicKey.value, firstLine: first)
            }
            peerLines[publicKey.value] = publicKey.line
            peers.append(
                PeerConfig(
                    publicKey: publicKey.value, presharedKey: peer.presharedKey?.source,
                    endpoint: peer.endpoint?.value, allowedIPs: peer.allowedIPs,
                    persistentKeepalive: peer.keepalive?.value ?? nil, location: at(peer.line),
                    publicKeyLocation: at(publicKey.line)))
        }
        current = .none
    }

    mutating func finish() throws(ConfigError) -> TunnelConfig {
        try finishSection()
        guard let interfaceLine else { throw .missingInterfaceSection(file: fileName) }
        guard let privateKey else { throw .missingKey(at(interfaceLine), .interface, key: .privateKey) }
        let config = TunnelConfig(
            interface: InterfaceConfig(
                privateKey: privateKey.source, addresses: addresses, listenPort: listenPort?.value,
                mtu: mtu?.value, location: at(interfaceLine), dns: dns, hooks: hooks,
                saveConfig: saveConfig?.value ?? false, table: table?.value, fwMark: fwMark?.value ?? nil,
                metricsListen: metricsListen?.value, listenPortLocation: listenPort.map { at($0.line) },
                metricsListenLocation: metricsListen.map { at($0.line) },
                saveConfigLocation: saveConfig.map { at($0.line) }),
            peers: peers)
        try config.checkNoPeerIsSelf()
        return config
    }

    /// Comma-separated items, trimmed; empty items (a trailing comma) are skipped.
    static func listItems(_ value: Substring) -> [Substring] {
        value.split(separator: ",", omittingEmptySubsequences: false).map { trimmed($0) }.filter {
            !$0.isEmpty
        }
    }

    /// Plain ASCII decimal in `range` (no sign, no spaces, at most 5 digits).
    static func decimal(_ text: Substring, in range: ClosedRange<Int>) -> Int? {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy({ $0.isASCII && $0.isNumber }),
            let value = Int(text), range.contains(value)
        else { return nil }
        return value
    }

    /// `off`, `auto` or a table number 1–4294967295 (0 is not a table `ip route` takes).
    static func parseTable(_ text: Substring) -> RoutingTable? {
        guard text.utf8.count <= 10 else { return nil }
        switch text.lowercased() {
        case "off": return .off
        case "auto": return .auto
        default:
            guard text.allSatisfy({ $0.isASCII && $0.isNumber }), let table = UInt32(text), table != 0 else {
                return nil
            }
            return .number(table)
        }
    }

    /// `off` (0), or a 32-bit mark in decimal or `0x` hex, as `wg set fwmark` takes it.
    static func parseFwMark(_ text: Substring) -> UInt32? {
        guard text.utf8.count <= 10 else { return nil }
        let lower = text.lowercased()
        if lower == "off" { return 0 }
        if lower.hasPrefix("0x") {
            let digits = lower.dropFirst(2)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isHexDigit }) else { return nil }
            return UInt32(digits, radix: 16)
        }
        guard text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt32(text)
    }

    /// A numeric endpoint, or a host name kept for the I/O layer to resolve.
    static func parseEndpoint(_ text: Substring) throws(EndpointProblem) -> PeerEndpoint {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let endpoint = Endpoint(text) else { throw EndpointProblem(.notEndpoint) }
            guard endpoint.port != 0 else { throw EndpointProblem(.endpointPortZero) }
            return .address(endpoint)
        }
        guard let colon = text.lastIndex(of: ":") else { throw EndpointProblem(.notEndpoint) }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
        if host.contains(":") {
            // An unbracketed IPv6 address, with or without a port: say how to write it.
            let looksV6 = IPAddress(text) != nil || IPAddress(host) != nil
            throw EndpointProblem(looksV6 ? .endpointNeedsBrackets : .notEndpoint)
        }
        guard let port = decimal(portText, in: 0...65535) else { throw EndpointProblem(.notEndpoint) }
        guard port != 0 else { throw EndpointProblem(.endpointPortZero) }
        if let address = IPAddress(host) { return .address(Endpoint(address: address, port: UInt16(port))) }
        guard isHostName(host) else { throw EndpointProblem(.notEndpoint) }
        return .hostName(String(host), port: UInt16(port))
    }

    /// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, at most 63
    /// each and 253 in all; the last label not all digits (so `10.0.0.300` is not a name).
    static func isHostName(_ text: Substring) -> Bool {
        var name = text
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        for label in labels {
            guard (1...63).contains(label.utf8.count), label.first != "-", label.last != "-",
                label.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") })
            else { return false }
        }
        if let last = labels.last, last.allSatisfy({ $0.isNumber }) { return false }
        return true
    }

    /// Whether a section or key name may be shown: no key name is longer than 32 letters, and a
    /// longer word may be a pasted key.
    static func showableName(_ text: Substring) -> Bool { text.utf8.count <= 32 }

    /// The line as it may be shown in an error, or nil when it contains a run of 16 or more base64
    /// characters (which may be a pasted key) — then it is not repeated at all.
    static func showable(_ text: Substring) -> String? {
        var run = 0
        for character in text {
            if character.isASCII && (character.isLetter || character.isNumber || "+/=".contains(character)) {
                run += 1
                if run >= 16 { return nil }
            } else {
                run = 0
            }
        }
        return text.count > 80 ? String(text.prefix(77)) + "..." : String(text)
    }
}

/// Carries a `ValueProblem` out of `parseEndpoint`, which knows no line or key.
struct EndpointProblem: Error {
    let problem: ValueProblem
    init(_ problem: ValueProblem) { self.problem = problem }
}

extension Endpoint {
    /// A numeric loopback endpoint with a port other than 0: `127.0.0.0/8:PORT` or `[::1]:PORT`
    /// (`MetricsListen`, `--metrics-listen`). Metrics name every peer's key and traffic, so they
    /// are never served beyond the host.
    public init?(loopback text: some StringProtocol) {
        guard text.utf8.count <= 64, let endpoint = Endpoint(text), endpoint.port != 0, endpoint.scopeID == 0 else {
            return nil
        }
        switch endpoint.address {
        case .v4(let bits) where bits >> 24 == 127: self = endpoint
        case .v6 where endpoint.address == IPAddress("::1"): self = endpoint
        default: return nil
        }
    }
}
