import CLinuxShim
import Glibc
import Synchronization
import TunnelCore

/// A non-blocking, close-on-exec UDP socket bound to one port on all addresses.
///
/// Dual-stack (AF_INET6 with `IPV6_V6ONLY` off) when the kernel has IPv6, IPv4-only otherwise.
/// IPv4 peers appear as `.v4` endpoints either way. Every method may be called from any thread,
/// but `close()` must not race with another call: the descriptor number could be reused.
public final class UDPSocket: Sendable {
    public enum Family: Sendable, Equatable {
        /// AF_INET6 socket that also carries IPv4 as mapped addresses.
        case dualStack
        /// AF_INET socket; IPv6 endpoints are refused with EAFNOSUPPORT.
        case ipv4
    }

    /// Socket buffer size asked for by default: 7 MiB, as wireguard-go does for throughput.
    public static let defaultBufferSize = 7 << 20

    public let family: Family
    /// The bound port (the kernel's choice when 0 was asked for).
    public let port: UInt16
    /// Effective buffer sizes as the kernel reports them (it doubles what was set, and
    /// `SO_RCVBUF` without privilege is capped by net.core.rmem_max / wmem_max).
    public let receiveBufferSize: Int
    public let sendBufferSize: Int

    private let descriptor: Atomic<Int32>

    /// The descriptor, for registering with epoll; -1 after `close()`. Do not close it yourself.
    public var fileDescriptor: Int32 { descriptor.load(ordering: .acquiring) }

    /// Binds to `port` (0: the kernel picks) on every local address.
    ///
    /// Buffers: `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (needs CAP_NET_ADMIN) to `bufferSize`, falling back
    /// to `SO_RCVBUF`/`SO_SNDBUF` when not permitted. `allowIPv6: false` forces an IPv4-only socket.
    public init(
        port: UInt16, bufferSize: Int = UDPSocket.defaultBufferSize, allowIPv6: Bool = true
    )
        throws(SystemError)
    {
        let type = Int32(SOCK_DGRAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue)
        var fd: Int32 = -1
        var family = Family.ipv4
        if allowIPv6 {
            do throws(SystemError) {
                fd = try Syscall.check("socket(AF_INET6)") { socket(AF_INET6, type, 0) }
                family = .dualStack
            } catch  where error.errno == EAFNOSUPPORT {
                // No IPv6 in this kernel: fall through to IPv4.
            }
        }
        if fd < 0 {
            fd = try Syscall.check("socket(AF_INET)") { socket(AF_INET, type, 0) }
        }

        do throws(SystemError) {
            if family == .dualStack {
                try UDPSocket.setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, Int32(0), "setsockopt(IPV6_V6ONLY)")
            }
            receiveBufferSize = try UDPSocket.setBuffer(
                fd, forced: SO_RCVBUFFORCE, fallback: SO_RCVBUF, size: bufferSize, name: "SO_RCVBUF")
            sendBufferSize = try UDPSocket.setBuffer(
                fd, forced: SO_SNDBUFFORCE, fallback: SO_SNDBUF, size: bufferSize, name: "SO_SNDBUF")

            let any = Endpoint(address: family == .dualStack ? .v6(0) : .v4(0), port: port)
            let (address, length) = any.socketAddress(mapV4ToV6: false)
            _ = try Syscall.check("bind") {
                // Sound: sockaddr_storage is laid out to be viewed as sockaddr; `length` bounds the read.
                withUnsafePointer(to: address) { storage in
                    storage.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
                }
            }

            var bound = sockaddr_storage()
            var boundLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = try Syscall.check("getsockname") {
                // Sound: the kernel writes at most `boundLength` (the storage's size) bytes.
                withUnsafeMutablePointer(to: &bound) { storage in
                    storage.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        getsockname(fd, $0, &boundLength)
                    }
                }
            }
            guard let local = Endpoint(bound, length: Int(boundLength)) else {
                throw SystemError(call: "getsockname", errno: EAFNOSUPPORT)
            }
            self.port = local.port
        } catch {
            _ = try? Syscall.close(fd)
            throw error
        }
        self.family = family
        self.descriptor = Atomic(fd)
    }

    deinit {
        let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { _ = try? Syscall.close(fd) }
    }

    /// Closes the socket. Later calls are a bug (they stop the process with EBADF); a second
    /// `close()` does nothing.
    public func close() throws(SystemError) {
        let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { try Syscall.close(fd) }
    }

    /// Sets `SO_MARK` (fwmark) so routing rules can keep tunnel traffic out of the tunnel.
    /// Needs CAP_NET_ADMIN.
    public func setMark(_ mark: UInt32) throws(SystemError) {
        try UDPSocket.setOption(fileDescriptor, SOL_SOCKET, SO_MARK, mark, "setsockopt(SO_MARK)")
    }

    /// Sends one datagram. Returns false when the socket buffer is full (nothing was sent).
    public func send(_ bytes: UnsafeRawBufferPointer, to endpoint: Endpoint) throws(SystemError) -> Bool {
        let fd = fileDescriptor
        let (address, length) = endpoint.socketAddress(mapV4ToV6: family == .dualStack)
        let result = try Syscall.io("sendto") {
            // Sound: the storage outlives the call; a nil baseAddress only occurs with count 0.
            withUnsafePointer(to: address) { storage in
                storage.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, 0, $0, length)
                }
            }
        }
        return result.value != nil
    }

    /// Receives one datagram into `buffer`. Nil when none is waiting. A datagram longer than the
    /// buffer is cut short (its `length` is then `buffer.count`); use `ReceiveBatch` to detect that.
    public func receive(
        into buffer: UnsafeMutableRawBufferPointer
    ) throws(SystemError)
        -> (length: Int, source: Endpoint)?
    {
        let fd = fileDescriptor
        var source = sockaddr_storage()
        var sourceLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try Syscall.io("recvfrom") {
            // Sound: the kernel writes at most `sourceLength` bytes of address and `buffer.count` of data.
            withUnsafeMutablePointer(to: &source) { storage in
                storage.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, buffer.baseAddress, buffer.count, 0, $0, &sourceLength)
                }
            }
        }
        guard let received = result.value else { return nil }
        guard let endpoint = Endpoint(source, length: Int(sourceLength)) else {
            throw SystemError(call: "recvfrom", errno: EAFNOSUPPORT)
        }
        return (min(received, buffer.count), endpoint)
    }

    /// Receives up to `batch.capacity` datagrams with one `recvmmsg`, replacing the batch's contents.
    /// Returns how many arrived (also `batch.count`); 0 means none was waiting.
    public func receive(into batch: inout ReceiveBatch) throws(SystemError) -> Int {
        batch.resetHeaders(count: batch.count)
        batch.count = 0
        let fd = fileDescriptor
        let messages = batch.messages
        let capacity = UInt32(batch.capacity)
        // Sound: the batch's headers point only at its own storage, sized in its init.
        switch try Syscall.shimIO("recvmmsg", { tunctl_recvmmsg(fd, messages, capacity, 0) }) {
        case .done(let received):
            batch.count = Int(received)
            return Int(received)
        case .wouldBlock:
            return 0
        }
    }

    /// Sends the batch's pending datagrams with `sendmmsg` until all are sent or the socket would
    /// block, and returns how many this call sent (they leave the batch; it empties itself when
    /// none remain). Check `batch.isEmpty` to tell "all sent" from "wait until writable".
    ///
    /// Throws only when the kernel refuses the first pending datagram (no route, EMSGSIZE, an IPv6
    /// destination on an IPv4 socket…); that datagram is dropped from the batch before the throw,
    /// so calling again continues with the next. Each refused datagram is reported exactly once and
    /// every sent one is counted in a return value.
    public func send(_ batch: inout SendBatch) throws(SystemError) -> Int {
        guard !batch.isEmpty else { return 0 }
        batch.prepareForSend(mapV4ToV6: family == .dualStack)
        let fd = fileDescriptor
        var total = 0
        while !batch.isEmpty {
            // Sound: firstPending < count <= capacity, so the pending headers lie inside the batch.
            let first = batch.messages + batch.firstPending
            let pending = UInt32(batch.pendingCount)
            let result: IOResult<Int32>
            do throws(SystemError) {
                result = try Syscall.shimIO("sendmmsg") { tunctl_sendmmsg(fd, first, pending, 0) }
            } catch {
                // Report it on the next call, when it is the first thing that happens.
                if total > 0 { return total }
                batch.advance(by: 1)
                throw error
            }
            guard case .done(let sent) = result, sent > 0 else { return total }
            batch.advance(by: Int(sent))
            total += Int(sent)
        }
        return total
    }

    // MARK: Socket options

    private static func setOption<Value: BitwiseCopyable>(
        _ fd: Int32, _ level: Int32, _ name: Int32, _ value: Value, _ call: String
    ) throws(SystemError) {
        _ = try Syscall.check(call) {
            // Sound: the kernel reads exactly `bytes.count` bytes of a value that lives through the call.
            withUnsafeBytes(of: value) { bytes in
                setsockopt(fd, level, name, bytes.baseAddress, socklen_t(bytes.count))
            }
        }
    }

    private static func intOption(
        _ fd: Int32, _ level: Int32, _ name: Int32, _ call: String
    )
        throws(SystemError) -> Int
    {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try Syscall.check(call) { getsockopt(fd, level, name, &value, &length) }
        return Int(value)
    }

    /// Sets a socket buffer with the privileged option, or the ordinary one when that is refused,
    /// and returns the size the kernel settled on.
    private static func setBuffer(
        _ fd: Int32, forced: Int32, fallback: Int32, size: Int, name: String
    )
        throws(SystemError) -> Int
    {
        let value = Int32(clamping: size)
        do throws(SystemError) {
            try setOption(fd, SOL_SOCKET, forced, value, "setsockopt(\(name)FORCE)")
        } catch  where error.errno == EPERM {
            try setOption(fd, SOL_SOCKET, fallback, value, "setsockopt(\(name))")
        }
        return try intOption(fd, SOL_SOCKET, fallback, "getsockopt(\(name))")
    }
}
