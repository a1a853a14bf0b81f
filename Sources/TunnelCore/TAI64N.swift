/// A TAI64N timestamp as carried, encrypted, in a handshake initiation: the responder accepts an
/// initiation only if its timestamp is strictly greater than the last one from that peer, which
/// stops replayed initiations.
///
/// Encoding (12 bytes, big-endian): BE64(2^62 + 10 + unix seconds) ‖ BE32(nanoseconds).
/// Nanoseconds are rounded down to a multiple of 2^24 (about 16.8 ms) when built from a clock,
/// as WireGuard does, so the timestamp does not leak fine-grained clock readings to an observer
/// who later learns the key. Decoded values are kept exactly as received.
/// Ordering is that of the encoded bytes: seconds first, then nanoseconds.
public struct TAI64N: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Bytes in the encoded form.
    public static let encodedSize = 12
    /// TAI64 label of the Unix epoch: 2^62 plus the 10 s TAI−UTC offset of 1970.
    public static let unixEpochLabel: UInt64 = 0x4000_0000_0000_000a
    /// Nanoseconds are truncated to a multiple of this (2^24).
    public static let nanosecondGranularity: UInt32 = 1 << 24

    /// The TAI64 seconds label, as encoded.
    public let seconds: UInt64
    /// The nanoseconds field, as encoded.
    public let nanoseconds: UInt32

    /// The zero timestamp: older than anything a peer sends, so it is the "nothing seen yet" value.
    public static let zero = TAI64N(seconds: 0, nanoseconds: 0)

    /// Builds the timestamp for a wall-clock reading. `nanoseconds` must be below 10^9.
    public init(unixSeconds: Int64, nanoseconds: UInt32) {
        precondition(nanoseconds < 1_000_000_000, "nanoseconds out of range")
        // Two's-complement wrap is the TAI64 definition for times before 1970.
        self.seconds = Self.unixEpochLabel &+ UInt64(bitPattern: unixSeconds)
        self.nanoseconds = nanoseconds & ~(Self.nanosecondGranularity - 1)
    }

    /// Takes the fields exactly as given (no rounding): for decoded values and tests.
    public init(seconds: UInt64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// Decodes 12 bytes; nil for any other length.
    public init?(bytes: UnsafeRawBufferPointer) {
        guard bytes.count == Self.encodedSize else { return nil }
        var seconds: UInt64 = 0
        for offset in 0..<8 { seconds = seconds << 8 | UInt64(bytes[offset]) }
        var nanoseconds: UInt32 = 0
        for offset in 8..<12 { nanoseconds = nanoseconds << 8 | UInt32(bytes[offset]) }
        self.init(seconds: seconds, nanoseconds: nanoseconds)
    }

    /// Decodes 12 bytes; nil for any other length.
    public init?(bytes: [UInt8]) {
        guard let value = bytes.withUnsafeBytes({ TAI64N(bytes: $0) }) else { return nil }
        self = value
    }

    /// Writes the 12-byte encoding at the start of `buffer`, which must hold at least 12 bytes.
    public func write(to buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.encodedSize, "TAI64N needs 12 bytes")
        for offset in 0..<8 {
            buffer[offset] = UInt8(truncatingIfNeeded: seconds >> (56 - 8 * UInt64(offset)))
        }
        for offset in 0..<4 {
            buffer[8 + offset] = UInt8(truncatingIfNeeded: nanoseconds >> (24 - 8 * UInt32(offset)))
        }
    }

    /// The 12-byte encoding.
    public var bytes: [UInt8] {
        var result = [UInt8](repeating: 0, count: Self.encodedSize)
        result.withUnsafeMutableBytes { write(to: $0) }
        return result
    }

    public static func < (lhs: TAI64N, rhs: TAI64N) -> Bool {
        (lhs.seconds, lhs.nanoseconds) < (rhs.seconds, rhs.nanoseconds)
    }

    public var description: String {
        let unix = Int64(bitPattern: seconds &- Self.unixEpochLabel)
        let fraction = String(nanoseconds)
        let padded = String(repeating: "0", count: max(0, 9 - fraction.count)) + fraction
        return "TAI64N(unix \(unix).\(padded))"
    }
}
