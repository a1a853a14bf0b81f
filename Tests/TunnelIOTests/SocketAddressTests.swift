import Glibc
import Testing
import TunnelCore

@testable import TunnelIO

/// Endpoint ↔ sockaddr, checked against the C library's own `inet_pton` byte order.
@Suite struct SocketAddressTests {
    func endpoint(_ text: String) -> Endpoint {
        guard let endpoint = Endpoint(text) else { preconditionFailure("bad endpoint literal \(text)") }
        return endpoint
    }

    func ptonBytes(_ family: Int32, _ text: String) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 16)
        let result = buffer.withUnsafeMutableBytes { inet_pton(family, text, $0.baseAddress) }
        precondition(result == 1, "inet_pton failed for \(text)")
        return Array(buffer.prefix(family == AF_INET ? 4 : 16))
    }

    /// `[fe80::1%lo]:51820` and `[fe80::1%1]:51820`: the zone becomes sin6_scope_id (lo is index
    /// 1 in every namespace) and comes back from a kernel address; the text shows the index,
    /// which `wg` turns back into the name. A zone on IPv4, an unknown name or an empty zone is
    /// refused.
    @Test func ipv6ScopeIdRoundTrip() throws {
        Endpoint.installInterfaceNames()
        let named = try #require(Endpoint("[fe80::1%lo]:51820"))
        #expect(named.scopeID == 1)
        #expect(named == Endpoint("[fe80::1%1]:51820"))
        #expect(named.description == "[fe80::1%1]:51820")
        #expect(named != Endpoint("[fe80::1]:51820"))
        let (storage, length) = named.socketAddress(mapV4ToV6: true)
        let v6 = withUnsafeBytes(of: storage) { $0.loadUnaligned(as: sockaddr_in6.self) }
        #expect(v6.sin6_scope_id == 1)
        #expect(Endpoint(storage, length: Int(length)) == named)
        for bad in [
            "[fe80::1%]:1", "[fe80::1%nosuchlink0]:1", "[fe80::1%4294967296]:1", "1.2.3.4%1:1", "[1.2.3.4%1]:1",
        ] {
            #expect(Endpoint(bad) == nil, "\(bad)")
        }
    }

    @Test func ipv4RoundTrip() {
        let original = endpoint("192.0.2.33:51820")
        let (storage, length) = original.socketAddress(mapV4ToV6: false)
        #expect(Int(length) == MemoryLayout<sockaddr_in>.size)
        #expect(Int32(storage.ss_family) == AF_INET)
        let raw = withUnsafeBytes(of: storage) { bytes in
            bytes.load(as: sockaddr_in.self)
        }
        #expect(UInt16(bigEndian: raw.sin_port) == 51820)
        #expect(withUnsafeBytes(of: raw.sin_addr) { Array($0) } == ptonBytes(AF_INET, "192.0.2.33"))
        #expect(Endpoint(storage, length: Int(length)) == original)
    }

    @Test func ipv6RoundTrip() {
        let original = endpoint("[2001:db8::1:2]:443")
        let (storage, length) = original.socketAddress(mapV4ToV6: true)
        #expect(Int(length) == MemoryLayout<sockaddr_in6>.size)
        #expect(Int32(storage.ss_family) == AF_INET6)
        let raw = withUnsafeBytes(of: storage) { bytes in
            bytes.load(as: sockaddr_in6.self)
        }
        #expect(UInt16(bigEndian: raw.sin6_port) == 443)
        #expect(withUnsafeBytes(of: raw.sin6_addr) { Array($0) } == ptonBytes(AF_INET6, "2001:db8::1:2"))
        #expect(raw.sin6_scope_id == 0 && raw.sin6_flowinfo == 0)
        #expect(Endpoint(storage, length: Int(length)) == original)
    }

    /// On a dual-stack socket an IPv4 endpoint goes out as `::ffff:a.b.c.d` and comes back as `.v4`.
    @Test func ipv4MapsToIPv6AndFoldsBack() {
        let original = endpoint("198.51.100.7:1")
        let (storage, length) = original.socketAddress(mapV4ToV6: true)
        #expect(Int32(storage.ss_family) == AF_INET6)
        let raw = withUnsafeBytes(of: storage) { bytes in
            bytes.load(as: sockaddr_in6.self)
        }
        #expect(withUnsafeBytes(of: raw.sin6_addr) { Array($0) } == ptonBytes(AF_INET6, "::ffff:198.51.100.7"))
        let decoded = Endpoint(storage, length: Int(length))
        #expect(decoded == original)
        #expect(decoded?.address.isV4 == true)
    }

    /// Only `::ffff:0:0/96` is the mapped range; its neighbours stay IPv6.
    @Test func lookalikesOfMappedAddressesStayIPv6() {
        for text in ["[::198.51.100.7]:9", "[::fffe:c633:6407]:9", "[::1:ffff:c633:6407]:9", "[::ffff]:9"] {
            let original = endpoint(text)
            let (storage, length) = original.socketAddress(mapV4ToV6: true)
            #expect(Endpoint(storage, length: Int(length)) == original, "\(text)")
        }
    }

    @Test func boundaryAddressesAndPorts() {
        for text in ["0.0.0.0:0", "255.255.255.255:65535", "[::]:0", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"]
        {
            let original = endpoint(text)
            for map in [false, true] {
                let (storage, length) = original.socketAddress(mapV4ToV6: map)
                #expect(Endpoint(storage, length: Int(length)) == original, "\(text) map \(map)")
            }
        }
    }

    @Test func shortOrForeignAddressesAreRejected() {
        let (v6, v6Length) = endpoint("[2001:db8::1]:1").socketAddress(mapV4ToV6: false)
        #expect(Endpoint(v6, length: Int(v6Length) - 1) == nil)
        let (v4, v4Length) = endpoint("192.0.2.1:1").socketAddress(mapV4ToV6: false)
        #expect(Endpoint(v4, length: Int(v4Length) - 1) == nil)
        #expect(Endpoint(v4, length: 0) == nil)
        var unix = sockaddr_storage()
        unix.ss_family = sa_family_t(AF_UNIX)
        #expect(Endpoint(unix) == nil)
    }
}
