import Synchronization

/// An IPv4 or IPv6 address held as a host-order integer, so prefix arithmetic is plain shifting.
/// Parsed once at the boundary (config, UAPI, packet header); everything inside uses this type.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible, Comparable {
    case v4(UInt32)
    case v6(IPv6Bits)

    /// Bits in an address of this family: 32 or 128.
    public var bitWidth: Int {
        switch self {
        case .v4: return 32
        case .v6: return 128
        }
    }

    public var isV4: Bool {
        if case .v4 = self { return true }
        return false
    }

    /// Parses dotted-quad IPv4 or RFC 4291 textual IPv6 (with `::` and an embedded IPv4 tail).
    /// Zone identifiers (`%eth0`) are not accepted.
    public init?(_ text: some StringProtocol) {
        if text.contains(":") {
            guard let value = IPAddress.parseV6(Substring(text)) else { return nil }
            self = .v6(IPv6Bits(value))
        } else {
            guard let value = IPAddress.parseV4(Substring(text)) else { return nil }
            self = .v4(value)
        }
    }

    /// Reads an address from network-order bytes: 4 bytes give IPv4, 16 give IPv6.
    public init?(networkBytes bytes: UnsafeRawBufferPointer) {
        switch bytes.count {
        case 4:
            var value: UInt32 = 0
            for byte in bytes { value = value << 8 | UInt32(byte) }
            self = .v4(value)
        case 16:
            var value: UInt128 = 0
            for byte in bytes { value = value << 8 | UInt128(byte) }
            self = .v6(IPv6Bits(value))
        default:
            return nil
        }
    }

    /// Network-order bytes (4 or 16).
    public var networkBytes: [UInt8] {
        switch self {
        case .v4(let value):
            return (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) }
        case .v6(let bits):
            let value = bits.value
            return (0..<16).map { UInt8(truncatingIfNeeded: value >> (120 - 8 * $0)) }
        }
    }

    public var description: String {
        switch self {
        case .v4(let value):
            return (0..<4).map { String(UInt8(truncatingIfNeeded: value >> (24 - 8 * $0))) }
                .joined(separator: ".")
        case .v6(let bits):
            return IPAddress.formatV6(bits.value)
        }
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        switch (lhs, rhs) {
        case (.v4(let a), .v4(let b)): return a < b
        case (.v6(let a), .v6(let b)): return a.value < b.value
        case (.v4, .v6): return true
        case (.v6, .v4): return false
        }
    }

    private static func parseV4(_ text: Substring) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                let octet = UInt8(part)
            else { return nil }
            // A leading zero is ambiguous (octal in some parsers): refuse it rather than guess.
            if part.count > 1 && part.first == "0" { return nil }
            value = value << 8 | UInt32(octet)
        }
        return value
    }

    private static func parseV6(_ text: Substring) -> UInt128? {
        var groups: [UInt16] = []
        var tail: [UInt16] = []
        var sawDoubleColon = false
        let halves = splitOnDoubleColon(text)
        guard halves.count <= 2 else { return nil }
        func parseGroups(_ part: Substring, allowV4Tail: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if allowV4Tail && index == pieces.count - 1 && piece.contains(".") {
                    guard let v4 = parseV4(piece) else { return nil }
                    result.append(UInt16(v4 >> 16))
                    result.append(UInt16(v4 & 0xffff))
                } else {
                    guard (1...4).contains(piece.count), let group = UInt16(piece, radix: 16) else {
                        return nil
                    }
                    result.append(group)
                }
            }
            return result
        }
        if halves.count == 2 {
            sawDoubleColon = true
            guard let head = parseGroups(halves[0], allowV4Tail: false),
                let rest = parseGroups(halves[1], allowV4Tail: true)
            else { return nil }
            groups = head
            tail = rest
            guard groups.count + tail.count <= 7 else { return nil }
        } else {
            guard let all = parseGroups(halves[0], allowV4Tail: true), all.count == 8 else {
                return nil
            }
            groups = all
        }
        if sawDoubleColon {
            groups += [UInt16](repeating: 0, count: 8 - groups.count - tail.count) + tail
        }
        var value: UInt128 = 0
        for group in groups { value = value << 16 | UInt128(group) }
        return value
    }

    /// Splits at each "::" (Foundation-free; the core does not import Foundation).
    private static func splitOnDoubleColon(_ text: Substring) -> [Substring] {
        var parts: [Substring] = []
        var start = text.startIndex
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(after: index)
            if text[index] == ":", next < text.endIndex, text[next] == ":" {
                parts.append(text[start..<index])
                start = text.index(after: next)
                index = start
            } else {
                index = next
            }
        }
        parts.append(text[start...])
        return parts
    }

    /// RFC 5952 form: lowercase, leading zeros dropped, the longest run (≥ 2) of zero groups as `::`.
    private static func formatV6(_ value: UInt128) -> String {
        let groups = (0..<8).map { UInt16(truncatingIfNeeded: value >> (112 - 16 * $0)) }
        var bestStart = -1
        var bestLength = 0
        var index = 0
        while index < 8 {
            if groups[index] == 0 {
                var end = index
                while end < 8 && groups[end] == 0 { end += 1 }
                if end - index > bestLength {
                    bestStart = index
                    bestLength = end - index
                }
                index = end
            } else {
                index += 1
            }
        }
        if bestLength < 2 { bestStart = -1 }
        var text = ""
        index = 0
        while index < 8 {
            if index == bestStart {
                text += "::"
                index += bestLength
                continue
            }
            if !text.isEmpty && !text.hasSuffix(":") { text += ":" }
            text += String(groups[index], radix: 16)
            index += 1
        }
        return text
    }
}

/// The 128 bits of an IPv6 address, host order, stored as two words.
///
/// Not a `UInt128` payload: Swift 6.3.1 at -Onone miscompiles an enum carrying a 16-byte-aligned
/// `UInt128` when a closure captures it (an aligned SSE load from a misaligned stack slot, SIGSEGV;
/// reproduced in a 15-line program). Two `UInt64`s have 8-byte alignment and avoid it; arithmetic
/// still happens on `value`.
public struct IPv6Bits: Hashable, Sendable, ExpressibleByIntegerLiteral {
    public var high: UInt64
    public var low: UInt64

    public init(_ value: UInt128) {
        high = UInt64(truncatingIfNeeded: value >> 64)
        low = UInt64(truncatingIfNeeded: value)
    }

    public init(integerLiteral value: UInt64) {
        high = 0
        low = value
    }

    public var value: UInt128 { UInt128(high) << 64 | UInt128(low) }
}

/// An address with a prefix length, as in `AllowedIPs = 198.18.0.0/15`.
/// `masked` gives the network form; the table stores prefixes masked.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let length: Int

    /// Fails when `length` exceeds the family's width.
    public init?(address: IPAddress, length: Int) {
        guard length >= 0, length <= address.bitWidth else { return nil }
        self.address = address
        self.length = length
    }

    /// Parses `ADDR/LEN`; a bare address means a host prefix (/32 or /128).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(parts[0]) else { return nil }
        var length = address.bitWidth
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 3, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                let parsed = Int(parts[1])
            else { return nil }
            length = parsed
        }
        self.init(address: address, length: length)
    }

    /// The prefix with host bits cleared.
    public var masked: IPPrefix {
        switch address {
        case .v4(let value):
            let mask: UInt32 = length == 0 ? 0 : ~UInt32(0) << (32 - length)
            return IPPrefix(unchecked: .v4(value & mask), length: length)
        case .v6(let bits):
            let mask: UInt128 = length == 0 ? 0 : ~UInt128(0) << (128 - length)
            return IPPrefix(unchecked: .v6(IPv6Bits(bits.value & mask)), length: length)
        }
    }

    /// Whether `other` falls inside this prefix (same family, same leading `length` bits).
    public func contains(_ other: IPAddress) -> Bool {
        switch (address, other) {
        case (.v4(let network), .v4(let candidate)):
            let mask: UInt32 = length == 0 ? 0 : ~UInt32(0) << (32 - length)
            return network & mask == candidate & mask
        case (.v6(let network), .v6(let candidate)):
            let mask: UInt128 = length == 0 ? 0 : ~UInt128(0) << (128 - length)
            return network.value & mask == candidate.value & mask
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(length)" }

    private init(unchecked address: IPAddress, length: Int) {
        self.address = address
        self.length = length
    }
}

/// The local end of a path to a peer, learned from a datagram the peer sent: the address it
/// was sent to and the interface it arrived on. Replies leave from it (a "sticky" source), so
/// that on a host with several addresses the peer hears back from the address it talks to.
public struct StickySource: Hashable, Sendable, CustomStringConvertible {
    /// Our address the peer's datagram was addressed to.
    public var address: IPAddress
    /// The interface it arrived on (0: any; the kernel then routes as usual).
    public var interfaceIndex: UInt32

    public init(address: IPAddress, interfaceIndex: UInt32) {
        self.address = address
        self.interfaceIndex = interfaceIndex
    }

    public var description: String { "\(address)%\(interfaceIndex)" }
}

/// A UDP endpoint: where a peer's datagrams come from and go to. IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`, as a dual-stack socket reports them) are folded to `.v4` by the I/O layer.
///
/// `stickySource` travels with the endpoint: the I/O layer sets it on every received datagram,
/// so a peer's endpoint, which follows authenticated packets (roaming), carries the local address
/// of the peer's latest one, and sends to it name that address as their source. Endpoints from a
/// config or UAPI have none (the kernel picks the source). Equality includes it, so a batch groups
/// datagrams by destination and source; `description` shows only the remote end.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16
    /// IPv6 scope id (`sin6_scope_id`, an interface index) for a link-local address such as
    /// `[fe80::1%eth0]:51820`; 0 for none (and always for IPv4). Part of the remote end.
    public var scopeID: UInt32
    public var stickySource: StickySource?

    public init(address: IPAddress, port: UInt16, scopeID: UInt32 = 0, stickySource: StickySource? = nil) {
        self.address = address
        self.port = port
        self.scopeID = address.isV4 ? 0 : scopeID
        self.stickySource = stickySource
    }

    /// The same remote end (scope id included) without a sticky source.
    public var withoutStickySource: Endpoint { Endpoint(address: address, port: port, scopeID: scopeID) }

    /// How a `%zone` that is a name becomes an interface index: installed by the I/O layer
    /// (`if_nametoindex`), as the core makes no system calls. Without one, only numeric zones parse.
    private static let zoneResolver = Mutex<(@Sendable (String) -> UInt32?)?>(nil)

    public static func installZoneResolver(_ resolver: @escaping @Sendable (String) -> UInt32?) {
        zoneResolver.withLock { $0 = resolver }
    }

    /// A zone's interface index: digits as they are, a name through the resolver; nil if neither.
    static func scopeID(zone: Substring) -> UInt32? {
        guard !zone.isEmpty, zone.utf8.count < 16 else { return nil }
        if zone.allSatisfy({ $0.isASCII && $0.isNumber }) { return UInt32(zone) }
        let resolver = zoneResolver.withLock { $0 }
        return resolver?(String(zone)).flatMap { $0 == 0 ? nil : $0 }
    }

    /// Parses `a.b.c.d:port`, `[v6]:port` or `[v6%zone]:port` (zone: an interface name or index),
    /// numeric only; host names are resolved by the caller.
    public init?(_ text: some StringProtocol) {
        let text = Substring(text)
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portPart = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        var scopeID: UInt32 = 0
        var addressPart = hostPart
        if text.hasPrefix("["), let percent = hostPart.firstIndex(of: "%") {
            guard let zone = Endpoint.scopeID(zone: hostPart[hostPart.index(after: percent)...]) else { return nil }
            scopeID = zone
            addressPart = hostPart[..<percent]
        }
        guard !portPart.isEmpty, portPart.count <= 5, portPart.allSatisfy({ $0.isASCII && $0.isNumber }),
            let port = UInt16(portPart), let address = IPAddress(addressPart), !(address.isV4 && scopeID != 0)
        else { return nil }
        self.init(address: address, port: port, scopeID: scopeID)
    }

    /// `[v6%index]:port` with a scope id: `wg` turns the index back into the interface's name.
    public var description: String {
        switch address {
        case .v4: return "\(address):\(port)"
        case .v6 where scopeID != 0: return "[\(address)%\(scopeID)]:\(port)"
        case .v6: return "[\(address)]:\(port)"
        }
    }
}
