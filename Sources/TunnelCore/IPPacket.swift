/// Why a decrypted inner packet was dropped. Each case is a counted reason, never a reply.
public enum IPPacketError: Error, Hashable, Sendable {
    /// Shorter than the fixed header of its version (20 bytes for IPv4, 40 for IPv6), or empty.
    case truncatedHeader
    /// The version nibble is neither 4 nor 6.
    case unsupportedVersion(UInt8)
    /// IPv4 header length (IHL) below 5 words, or longer than the total length.
    case badHeaderLength
    /// The length field claims more bytes than were decrypted.
    case lengthExceedsBuffer
}

/// The facts the receive path needs from an inner IP packet, read without allocating.
public struct IPPacketHeader: Hashable, Sendable {
    /// IPv4 and IPv6 layouts: offsets and sizes from RFC 791 and RFC 8200.
    public enum Layout {
        public static let ipv4MinimumHeader = 20
        public static let ipv4TotalLengthOffset = 2
        public static let ipv4SourceOffset = 12
        public static let ipv4DestinationOffset = 16
        public static let ipv6Header = 40
        public static let ipv6PayloadLengthOffset = 4
        public static let ipv6SourceOffset = 8
        public static let ipv6DestinationOffset = 24
    }

    /// 4 or 6.
    public let version: UInt8
    /// Bytes the packet really occupies, from its own length field: the decrypted buffer may be
    /// longer because WireGuard pads plaintext to a multiple of 16; those bytes are to be trimmed.
    public let length: Int
    public let source: IPAddress
    public let destination: IPAddress

    /// Validates the header at the start of `packet` and reads its length and addresses.
    /// `packet` is the whole decrypted plaintext (padding included); nothing is retained.
    public init(parsing packet: UnsafeRawBufferPointer) throws(IPPacketError) {
        guard let first = packet.firstByte else { throw .truncatedHeader }
        let version = first >> 4
        switch version {
        case 4:
            guard packet.count >= Layout.ipv4MinimumHeader else { throw .truncatedHeader }
            let headerLength = Int(first & 0x0f) * 4
            let totalLength = Int(Self.readBE16(packet, at: Layout.ipv4TotalLengthOffset))
            guard headerLength >= Layout.ipv4MinimumHeader, headerLength <= totalLength else {
                throw .badHeaderLength
            }
            guard totalLength <= packet.count else { throw .lengthExceedsBuffer }
            self.version = 4
            self.length = totalLength
            self.source = .v4(Self.readBE32(packet, at: Layout.ipv4SourceOffset))
            self.destination = .v4(Self.readBE32(packet, at: Layout.ipv4DestinationOffset))
        case 6:
            guard packet.count >= Layout.ipv6Header else { throw .truncatedHeader }
            // A payload length of 0 would announce a jumbogram (RFC 2675); those cannot fit in a
            // WireGuard packet, so the header alone is taken as the packet, as the kernel does.
            let totalLength =
                Layout.ipv6Header + Int(Self.readBE16(packet, at: Layout.ipv6PayloadLengthOffset))
            guard totalLength <= packet.count else { throw .lengthExceedsBuffer }
            self.version = 6
            self.length = totalLength
            self.source = .v6(IPv6Bits(Self.readBE128(packet, at: Layout.ipv6SourceOffset)))
            self.destination = .v6(IPv6Bits(Self.readBE128(packet, at: Layout.ipv6DestinationOffset)))
        default:
            throw .unsupportedVersion(version)
        }
    }

    /// Convenience for tests and slow paths.
    public init(parsing packet: [UInt8]) throws(IPPacketError) {
        let result = packet.withUnsafeBytes { bytes -> Result<IPPacketHeader, IPPacketError> in
            do throws(IPPacketError) {
                return .success(try IPPacketHeader(parsing: bytes))
            } catch {
                return .failure(error)
            }
        }
        self = try result.get()
    }

    // Callers have checked that `offset + size <= buffer.count`.
    private static func readBE16(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt16 {
        UInt16(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    private static func readBE32(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt32 {
        UInt32(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    private static func readBE128(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> UInt128 {
        let high = UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        let low = UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))
        return UInt128(high) << 64 | UInt128(low)
    }
}

extension UnsafeRawBufferPointer {
    /// The first byte, or nil when empty. Per-packet code uses this, not `first`: the generic
    /// `Collection.first` allocates in unoptimised builds (caught by AllocationTests).
    @inline(__always) var firstByte: UInt8? { isEmpty ? nil : self[0] }
}
