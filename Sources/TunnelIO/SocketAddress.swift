import Glibc
import TunnelCore

/// Conversions between `Endpoint` and the kernel's `sockaddr_in` / `sockaddr_in6`.
///
/// Both directions work on caller-provided memory (a `sockaddr_storage` slot in a batch, or one
/// on the stack) and never allocate, so they can run once per datagram.
extension Endpoint {
    /// Lets `Endpoint("[fe80::1%eth0]:51820")` name the interface (the core cannot ask the
    /// kernel). Idempotent; called before configs and UAPI requests are parsed.
    public static func installInterfaceNames() {
        installZoneResolver { name in
            let index = if_nametoindex(name)
            return index == 0 ? nil : index
        }
    }

    /// The IPv4-mapped prefix `::ffff:0:0/96` as the top 96 bits of a host-order address.
    static let v4MappedPrefix: UInt128 = 0xffff << 32

    /// Reads an AF_INET or AF_INET6 socket address of `length` bytes at `pointer`.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
    /// become `.v4`. The IPv6 scope id is kept (a link-local peer's); the flow label is dropped.
    /// Returns nil for another family or a length too short for the family's structure.
    public init?(socketAddress pointer: UnsafeRawPointer, length: Int) {
        // Sound: every load below is preceded by a check that `length` covers it; loads are unaligned.
        guard length >= MemoryLayout<sa_family_t>.size else { return nil }
        let family = Int32(pointer.loadUnaligned(as: sa_family_t.self))
        switch family {
        case AF_INET:
            guard length >= MemoryLayout<sockaddr_in>.size else { return nil }
            let address = pointer.loadUnaligned(as: sockaddr_in.self)
            self.init(
                address: .v4(UInt32(bigEndian: address.sin_addr.s_addr)),
                port: UInt16(bigEndian: address.sin_port))
        case AF_INET6:
            guard length >= MemoryLayout<sockaddr_in6>.size else { return nil }
            let address = pointer.loadUnaligned(as: sockaddr_in6.self)
            // Sound: in6_addr is exactly 16 bytes, the size of the UInt128 loaded.
            let value = withUnsafeBytes(of: address.sin6_addr) { bytes in
                UInt128(bigEndian: bytes.loadUnaligned(as: UInt128.self))
            }
            let port = UInt16(bigEndian: address.sin6_port)
            if value >> 32 == Endpoint.v4MappedPrefix >> 32 {
                self.init(address: .v4(UInt32(truncatingIfNeeded: value)), port: port)
            } else {
                self.init(address: .v6(IPv6Bits(value)), port: port, scopeID: address.sin6_scope_id)
            }
        default:
            return nil
        }
    }

    /// Reads an endpoint from a `sockaddr_storage` filled in by the kernel.
    public init?(_ storage: sockaddr_storage, length: Int = MemoryLayout<sockaddr_storage>.size) {
        let decoded = withUnsafeBytes(of: storage) { bytes -> Endpoint? in
            // Sound: `bytes` covers the whole sockaddr_storage, so baseAddress is non-nil.
            guard let base = bytes.baseAddress else { return nil }
            return Endpoint(socketAddress: base, length: min(length, bytes.count))
        }
        guard let decoded else { return nil }
        self = decoded
    }

    /// Writes this endpoint at `pointer`, which must have room for a `sockaddr_storage`, and
    /// returns the address length to hand the kernel.
    ///
    /// With `mapV4ToV6` (for a dual-stack AF_INET6 socket) an IPv4 endpoint is written as the
    /// mapped address `::ffff:a.b.c.d`. An IPv6 endpoint is always written as AF_INET6; on an
    /// IPv4-only socket the kernel then refuses it with EAFNOSUPPORT.
    public func encode(into pointer: UnsafeMutableRawPointer, mapV4ToV6: Bool) -> socklen_t {
        // Sound: the caller provides sockaddr_storage room; we write at most a sockaddr_in6 (28 bytes).
        switch address {
        case .v4(let value) where !mapV4ToV6:
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = in_addr(s_addr: value.bigEndian)
            pointer.storeBytes(of: address, as: sockaddr_in.self)
            return socklen_t(MemoryLayout<sockaddr_in>.size)
        case .v4(let value):
            return Endpoint.encodeV6(Endpoint.v4MappedPrefix | UInt128(value), port: port, into: pointer)
        case .v6(let bits):
            return Endpoint.encodeV6(bits.value, port: port, scopeID: scopeID, into: pointer)
        }
    }

    /// This endpoint as a `sockaddr_storage` and its length (a stack value; no allocation).
    public func socketAddress(mapV4ToV6: Bool) -> (storage: sockaddr_storage, length: socklen_t) {
        var storage = sockaddr_storage()
        let length = withUnsafeMutableBytes(of: &storage) { bytes -> socklen_t in
            // Sound: `bytes` is the whole 128-byte storage, larger than either sockaddr, so non-nil.
            guard let base = bytes.baseAddress else { preconditionFailure("empty sockaddr_storage") }
            return encode(into: base, mapV4ToV6: mapV4ToV6)
        }
        return (storage, length)
    }

    private static func encodeV6(
        _ value: UInt128, port: UInt16, scopeID: UInt32 = 0, into pointer: UnsafeMutableRawPointer
    )
        -> socklen_t
    {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        address.sin6_scope_id = scopeID
        // Sound: in6_addr is exactly 16 bytes, the size of the UInt128 stored.
        withUnsafeMutableBytes(of: &address.sin6_addr) { bytes in
            bytes.storeBytes(of: value.bigEndian, as: UInt128.self)
        }
        pointer.storeBytes(of: address, as: sockaddr_in6.self)
        return socklen_t(MemoryLayout<sockaddr_in6>.size)
    }
}
