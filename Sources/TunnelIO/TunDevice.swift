import CLinuxShim
import Glibc
import Synchronization

/// A Linux TUN device (layer 3, no packet-information prefix), opened non-blocking and close-on-exec.
///
/// The device owns its descriptor and closes it once, on `close()` or when released. Every method
/// may be called from any thread, but `close()` must not race with another call: the descriptor
/// number could be reused. Closing the descriptor deletes a non-persistent interface.
public final class TunDevice: Sendable {
    /// Offloads the reader accepts (`TUNSETOFFLOAD`); meaningful with a virtio-net header.
    public struct Offloads: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        public static var checksum: Offloads { Offloads(rawValue: tunctl_tun_f_csum) }
        public static var tcpSegmentationV4: Offloads { Offloads(rawValue: tunctl_tun_f_tso4) }
        public static var tcpSegmentationV6: Offloads { Offloads(rawValue: tunctl_tun_f_tso6) }
        public static var tcpSegmentationECN: Offloads { Offloads(rawValue: tunctl_tun_f_tso_ecn) }
        public static var udpSegmentationV4: Offloads { Offloads(rawValue: tunctl_tun_f_uso4) }
        public static var udpSegmentationV6: Offloads { Offloads(rawValue: tunctl_tun_f_uso6) }
    }

    /// Bytes of the virtio-net header in front of each packet when opened with `virtioHeader`.
    public static var virtioHeaderSize: Int { Int(tunctl_virtio_net_hdr_size) }

    /// The interface name the kernel gave the device (e.g. "wg0", or "tun3" for a pattern).
    public let name: String
    /// Whether every packet read or written starts with a virtio-net header (`IFF_VNET_HDR`).
    public let hasVirtioHeader: Bool

    private let descriptor: Atomic<Int32>

    /// The descriptor, for registering with epoll; -1 after `close()`. Do not close it yourself.
    public var fileDescriptor: Int32 { descriptor.load(ordering: .acquiring) }

    private init(fd: Int32, name: String, hasVirtioHeader: Bool) {
        self.descriptor = Atomic(fd)
        self.name = name
        self.hasVirtioHeader = hasVirtioHeader
    }

    deinit {
        let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { _ = try? Syscall.close(fd) }
    }

    /// Creates (or attaches to) the TUN interface `name`. An empty name lets the kernel choose;
    /// a pattern such as "wg%d" gets the next free number. Needs CAP_NET_ADMIN.
    ///
    /// - Parameters:
    ///   - multiQueue: `IFF_MULTI_QUEUE`, so more descriptors can attach to the same interface.
    ///   - virtioHeader: `IFF_VNET_HDR`, a virtio-net header before each packet (for offloads).
    /// - Throws: `SystemError` from `tunctl_tun_open`: EINVAL or ENAMETOOLONG for a bad name
    ///   (at most 15 bytes), EPERM without privilege, EBUSY when the name is a different kind of link.
    public static func open(
        name: String, multiQueue: Bool = false, virtioHeader: Bool = false
    )
        throws(SystemError) -> TunDevice
    {
        guard !name.utf8.contains(0) else { throw SystemError(call: "tunctl_tun_open", errno: EINVAL) }
        var flags: UInt32 = 0
        if multiQueue { flags |= TUNCTL_TUN_MULTI_QUEUE }
        if virtioHeader { flags |= TUNCTL_TUN_VNET_HDR }
        let chosenFlags = flags
        let (fd, chosen) = try withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(TUNCTL_IFNAMSIZ)) {
            nameBuffer throws(SystemError) -> (Int32, String) in
            // Sound: the buffer has TUNCTL_IFNAMSIZ (> 0) elements, the size the shim writes.
            guard let nameOut = nameBuffer.baseAddress else { preconditionFailure("empty name buffer") }
            nameOut.initialize(repeating: 0, count: nameBuffer.count)
            let fd = try Syscall.shimCheck("tunctl_tun_open") {
                name.withCString { tunctl_tun_open($0, chosenFlags, nameOut) }
            }
            // Sound: the shim NUL-terminates what it writes into the IFNAMSIZ buffer.
            return (fd, String(cString: nameOut))
        }
        return TunDevice(fd: fd, name: chosen, hasVirtioHeader: virtioHeader)
    }

    /// Closes the device. Later calls are a bug (they stop the process with EBADF); a second
    /// `close()` does nothing.
    public func close() throws(SystemError) {
        let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { try Syscall.close(fd) }
    }

    /// Reads one packet into `buffer` and returns its length; nil when no packet is waiting.
    ///
    /// Where in the caller's memory `buffer` starts (say 16 bytes in, leaving room for the
    /// transport header) is the caller's business. A packet longer than `buffer` is cut short.
    /// Throws EBADFD once the interface has been deleted underneath the descriptor.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
        let fd = fileDescriptor
        // Sound: the kernel writes at most buffer.count bytes; a nil baseAddress only comes with count 0.
        return try Syscall.io("read(tun)") { Glibc.read(fd, buffer.baseAddress, buffer.count) }.value
    }

    /// Writes one packet (an IPv4 or IPv6 datagram, after the virtio-net header if enabled).
    /// Returns false when the kernel would block, in which case the packet was not delivered.
    @discardableResult
    public func write(_ packet: UnsafeRawBufferPointer) throws(SystemError) -> Bool {
        let fd = fileDescriptor
        // Sound: the kernel reads packet.count bytes; a nil baseAddress only comes with count 0.
        guard let written = try Syscall.io("write(tun)", { Glibc.write(fd, packet.baseAddress, packet.count) }).value
        else { return false }
        // The TUN driver takes a packet whole or not at all; anything else is an I/O error.
        guard written == packet.count else { throw SystemError(call: "write(tun)", errno: EIO) }
        return true
    }

    /// Writes one packet gathered from `count` pieces at `vectors` (`length` bytes in all, the
    /// virtio-net header first if enabled) with one `writev`. Returns false when the kernel would
    /// block, in which case the packet was not delivered.
    @discardableResult
    public func write(vectors: UnsafePointer<iovec>, count: Int, length: Int) throws(SystemError) -> Bool {
        let fd = fileDescriptor
        // Sound: the caller's `count` iovecs each name bytes it owns.
        guard let written = try Syscall.io("writev(tun)", { Glibc.writev(fd, vectors, Int32(count)) }).value
        else { return false }
        guard written == length else { throw SystemError(call: "writev(tun)", errno: EIO) }
        return true
    }

    /// The interface MTU (`SIOCGIFMTU`).
    public func mtu() throws(SystemError) -> Int {
        let name = self.name
        return Int(try Syscall.shimCheck("tunctl_if_get_mtu(\(name))") { tunctl_if_get_mtu(name) })
    }

    /// Sets the interface MTU (`SIOCSIFMTU`). Needs CAP_NET_ADMIN.
    public func setMTU(_ mtu: Int) throws(SystemError) {
        let name = self.name
        guard let value = Int32(exactly: mtu), value > 0 else {
            throw SystemError(call: "tunctl_if_set_mtu(\(name))", errno: EINVAL)
        }
        _ = try Syscall.shimCheck("tunctl_if_set_mtu(\(name))") { tunctl_if_set_mtu(name, value) }
    }

    /// Brings the interface up (sets `IFF_UP`, keeping the other flags). Needs CAP_NET_ADMIN.
    public func setUp() throws(SystemError) {
        try changeFlags(setting: Int32(IFF_UP), clearing: 0)
    }

    /// Takes the interface down (clears `IFF_UP`). Needs CAP_NET_ADMIN.
    public func setDown() throws(SystemError) {
        try changeFlags(setting: 0, clearing: Int32(IFF_UP))
    }

    /// Whether the interface is up (`IFF_UP`).
    public func isUp() throws(SystemError) -> Bool {
        let name = self.name
        let flags = try Syscall.shimCheck("tunctl_if_get_flags(\(name))") { tunctl_if_get_flags(name) }
        return flags & Int32(IFF_UP) != 0
    }

    /// Declares which offloads this reader handles (`TUNSETOFFLOAD`).
    public func setOffloads(_ offloads: Offloads) throws(SystemError) {
        let fd = fileDescriptor
        _ = try Syscall.shimCheck("tunctl_tun_set_offload") { tunctl_tun_set_offload(fd, offloads.rawValue) }
    }

    /// Sets the virtio-net header size (`TUNSETVNETHDRSZ`); only with `hasVirtioHeader`.
    public func setVirtioHeaderSize(_ size: Int) throws(SystemError) {
        let fd = fileDescriptor
        guard let value = Int32(exactly: size) else {
            throw SystemError(call: "tunctl_tun_set_vnet_hdr_size", errno: EINVAL)
        }
        _ = try Syscall.shimCheck("tunctl_tun_set_vnet_hdr_size") { tunctl_tun_set_vnet_hdr_size(fd, value) }
    }

    private func changeFlags(setting: Int32, clearing: Int32) throws(SystemError) {
        let name = self.name
        let flags = try Syscall.shimCheck("tunctl_if_get_flags(\(name))") { tunctl_if_get_flags(name) }
        let updated = (flags | setting) & ~clearing
        guard updated != flags else { return }
        _ = try Syscall.shimCheck("tunctl_if_set_flags(\(name))") { tunctl_if_set_flags(name, updated) }
    }
}
