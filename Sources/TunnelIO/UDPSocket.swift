import CLinuxShim
import Glibc
import Synchronization
import TunnelCore

/// UDP offloads a socket may use; each is probed when the socket is made and left off if the
/// kernel refuses it.
public struct UDPOffload: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// UDP GSO (`UDP_SEGMENT`, Linux 4.18): `send(_: inout SendBatch)` hands the kernel a run of
    /// equal-size datagrams to one destination as one message, which it splits back into datagrams
    /// on the wire. Invisible to the receiver.
    public static let segmentation = UDPOffload(rawValue: 1 << 0)
    /// UDP GRO (`UDP_GRO`, Linux 5.0): the kernel may join datagrams from one source into one
    /// received message. A socket with it must be read with `ReceiveBatch` slots of
    /// `ReceiveBatch.coalescingBufferSize` and `forEachDatagram`, which splits them again.
    public static let coalescing = UDPOffload(rawValue: 1 << 1)

    public var description: String {
        let names = [(UDPOffload.segmentation, "gso"), (.coalescing, "gro")].filter { contains($0.0) }.map(\.1)
        return names.isEmpty ? "none" : names.joined(separator: "+")
    }
}

/// A non-blocking, close-on-exec UDP socket bound to one port on all addresses.
///
/// Dual-stack (AF_INET6 with `IPV6_V6ONLY` off) when the kernel has IPv6, IPv4-only otherwise.
/// IPv4 peers appear as `.v4` endpoints either way. Every method may be called from any thread,
/// but `close()` must not race with another call: the descriptor number could be reused.
///
/// Sticky sources: a received datagram's endpoint carries the address it was sent to
/// (`Endpoint.stickySource`, from the packet info the socket asks for), and a send to an
/// endpoint with one names it as the source, so that a multi-homed host answers from the
/// address a peer talks to. When the kernel refuses that source (the address went away), the
/// datagram is sent again without it, and the address is kept for `takeVanishedSources`, so the
/// owner of the endpoints can forget it.
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
    /// `UDPOffload` bits in use; segmentation may be dropped at run time (see `send(_:)`).
    private let activeOffload: Atomic<UInt8>
    /// Sticky source addresses the kernel refused since the last `takeVanishedSources`, at most
    /// `vanishedLimit` (room reserved in `init`: nothing allocates on the error path either).
    /// Any thread appends; the owner of the endpoints takes them.
    private let vanished: Mutex<[IPAddress]>
    /// Whether `vanished` holds anything: one relaxed load tells the owner there is work.
    private let hasVanished = Atomic<Bool>(false)
    /// Datagrams sent again without their sticky source, since the socket was made.
    private let vanishedResends = Atomic<UInt64>(0)
    static let vanishedLimit = 8

    /// Most datagrams in one GSO message: the kernel's UDP_MAX_SEGMENTS, 64 since 4.18 (raised
    /// later), so 64 is accepted by every kernel that has UDP_SEGMENT.
    static let maximumSegments = 64
    /// Most payload bytes in one GSO message: 65535 less the IPv4 and UDP headers (20 + 8), the
    /// limit for IPv4 destinations and a safe one for IPv6.
    static let maximumSegmentedBytes = 65507

    /// The descriptor, for registering with epoll; -1 after `close()`. Do not close it yourself.
    public var fileDescriptor: Int32 { descriptor.load(ordering: .acquiring) }

    /// Binds to `port` (0: the kernel picks) on every local address.
    ///
    /// Buffers: `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (needs CAP_NET_ADMIN) to `bufferSize`, falling back
    /// to `SO_RCVBUF`/`SO_SNDBUF` when not permitted. `allowIPv6: false` forces an IPv4-only socket.
    /// `offload` asks for UDP offloads; `self.offload` says which the kernel accepted. GSO is
    /// asked for by default because it is invisible to every reader; GRO changes what a receive
    /// returns, so only a caller that splits with `forEachDatagram` should ask for it.
    public init(
        port: UInt16, bufferSize: Int = UDPSocket.defaultBufferSize, allowIPv6: Bool = true,
        offload: UDPOffload = .segmentation
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
                // IPV6_PKTINFO for both families: the kernel reports an IPv4 destination mapped.
                try UDPSocket.setOption(
                    fd, tunctl_sol_ipv6, tunctl_ipv6_recvpktinfo, Int32(1), "setsockopt(IPV6_RECVPKTINFO)")
            } else {
                try UDPSocket.setOption(fd, tunctl_sol_ip, tunctl_ip_pktinfo, Int32(1), "setsockopt(IP_PKTINFO)")
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
        var vanished: [IPAddress] = []
        vanished.reserveCapacity(UDPSocket.vanishedLimit)
        self.vanished = Mutex(vanished)
        self.activeOffload = Atomic(UDPSocket.probeOffload(fd, offload).rawValue)
    }

    /// Turns on what the kernel accepts of `requested`. A refusal (ENOPROTOOPT on kernels without
    /// the option) just leaves that offload off.
    private static func probeOffload(_ fd: Int32, _ requested: UDPOffload) -> UDPOffload {
        var accepted: UDPOffload = []
        // A per-socket UDP_SEGMENT of 0 means "no default segment size": it changes nothing and
        // succeeds exactly where the per-message cmsg is understood.
        if requested.contains(.segmentation),
            (try? setOption(fd, tunctl_sol_udp, tunctl_udp_segment, Int32(0), "setsockopt(UDP_SEGMENT)")) != nil
        {
            accepted.insert(.segmentation)
        }
        if requested.contains(.coalescing),
            (try? setOption(fd, tunctl_sol_udp, tunctl_udp_gro, Int32(1), "setsockopt(UDP_GRO)")) != nil
        {
            accepted.insert(.coalescing)
        }
        return accepted
    }

    /// The offloads in use now. Segmentation can drop out after `init` (see `send(_:)`).
    public var offload: UDPOffload { UDPOffload(rawValue: activeOffload.load(ordering: .relaxed)) }

    /// Stops using UDP GSO for good; later batches go out one message per datagram.
    public func disableSegmentation() {
        activeOffload.bitwiseAnd(~UDPOffload.segmentation.rawValue, ordering: .relaxed)
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

    // MARK: Vanished sticky sources

    /// Whether a sticky source was refused since the last `takeVanishedSources` (a relaxed load,
    /// cheap enough to check whenever the endpoints' owner is entered).
    public var hasVanishedSources: Bool { hasVanished.load(ordering: .relaxed) }

    /// Calls `body` with each sticky source address the kernel refused since the last call, and
    /// forgets them. Endpoints that still name one cost a failed send and a resend each.
    public func takeVanishedSources(_ body: (IPAddress) -> Void) {
        guard hasVanished.exchange(false, ordering: .acquiring) else { return }
        // Taken out under the lock, handed out after it: `body` may take other locks. (The copy
        // allocates; this runs once per vanished address, never per datagram.)
        let taken = vanished.withLock { list -> [IPAddress] in
            let copy = list
            list.removeAll(keepingCapacity: true)
            return copy
        }
        for address in taken { body(address) }
    }

    /// Datagrams sent again without their sticky source since the socket was made.
    public var stickySourceResends: UInt64 { vanishedResends.load(ordering: .relaxed) }

    /// Notes that the kernel refused `address` as a source.
    private func noteVanished(_ address: IPAddress) {
        vanishedResends.add(1, ordering: .relaxed)
        vanished.withLock { list in
            if !list.contains(address), list.count < UDPSocket.vanishedLimit { list.append(address) }
        }
        hasVanished.store(true, ordering: .releasing)
    }

    /// Sends one datagram. Returns false when the socket buffer is full (nothing was sent). An
    /// endpoint's sticky source goes with it as packet info (`sendmsg`); if the kernel refuses
    /// that source, the datagram goes again without it (see `takeVanishedSources`).
    public func send(_ bytes: UnsafeRawBufferPointer, to endpoint: Endpoint) throws(SystemError) -> Bool {
        if let source = endpoint.stickySource {
            do throws(SystemError) {
                return try send(bytes, to: endpoint, from: source)
            } catch  where ControlMessages.isVanishedSourceError(error.errno) {
                noteVanished(source.address)
            }
        }
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

    /// `send(_:to:)` with packet info naming `source`: one `sendmsg`, control area on the stack.
    private func send(
        _ bytes: UnsafeRawBufferPointer, to endpoint: Endpoint, from source: StickySource
    ) throws(SystemError) -> Bool {
        let fd = fileDescriptor
        let (storage, length) = endpoint.socketAddress(mapV4ToV6: family == .dualStack)
        var address = storage
        var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        // Sound: every pointer in the header (address, vector, control area) outlives the call;
        // the control area has packetInfoSpace bytes, cmsghdr-aligned, the most writePacketInfo uses.
        let result = try withUnsafeTemporaryAllocation(
            byteCount: ControlMessages.packetInfoSpace, alignment: MemoryLayout<cmsghdr>.alignment
        ) { (control) throws(SystemError) -> IOResult<Int> in
            guard let area = control.baseAddress else { preconditionFailure("empty control area") }
            let used = ControlMessages.writePacketInfo(source, at: area)
            return try withUnsafeMutablePointer(to: &address) { (name) throws(SystemError) -> IOResult<Int> in
                try withUnsafeMutablePointer(to: &vector) { (vectorPointer) throws(SystemError) -> IOResult<Int> in
                    var message = msghdr()
                    message.msg_name = UnsafeMutableRawPointer(name)
                    message.msg_namelen = length
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    message.msg_control = area
                    message.msg_controllen = used
                    return try Syscall.io("sendmsg") { sendmsg(fd, &message, 0) }
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

    /// Receives up to `batch.capacity` messages with one `recvmmsg`, replacing the batch's contents.
    /// Returns how many arrived (also `batch.count`); 0 means none was waiting.
    ///
    /// With `UDPOffload.coalescing` a message may hold several datagrams: read them with
    /// `batch.forEachDatagram`, which is also right without it. Such a socket needs slots of
    /// `ReceiveBatch.coalescingBufferSize`, or coalesced messages would arrive truncated.
    public func receive(into batch: inout ReceiveBatch) throws(SystemError) -> Int {
        precondition(
            !offload.contains(.coalescing) || batch.bufferSize >= ReceiveBatch.coalescingBufferSize,
            "a UDP_GRO socket needs ReceiveBatch slots of coalescingBufferSize bytes")
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
    ///
    /// With `UDPOffload.segmentation`, runs of equal-size datagrams to one destination go out as
    /// one message each (UDP GSO), straight from the slots. A run the kernel refuses is resent
    /// datagram by datagram in the same call, so the contract above holds unchanged; EIO (the
    /// route's device cannot checksum a GSO send) also turns segmentation off for this socket.
    public func send(_ batch: inout SendBatch) throws(SystemError) -> Int {
        guard !batch.isEmpty else { return 0 }
        batch.prepareForSend(mapV4ToV6: family == .dualStack)
        var total = 0
        if offload.contains(.segmentation) {
            guard try sendRuns(&batch, total: &total) else { return total }
        }
        _ = try sendEach(&batch, upTo: batch.count, total: &total)
        return total
    }

    /// Sends pending slots up to (not including) `end` one message per datagram, adding what was
    /// sent to `total`. Returns true when all of them went, false when the socket would block or
    /// a refusal is left for the next call (because this call already sent something).
    private func sendEach(_ batch: inout SendBatch, upTo end: Int, total: inout Int) throws(SystemError) -> Bool {
        let fd = fileDescriptor
        while batch.firstPending < end {
            // Sound: firstPending < end <= count <= capacity, so the headers lie inside the batch.
            let first = batch.messages + batch.firstPending
            let pending = UInt32(end - batch.firstPending)
            let result: IOResult<Int32>
            do throws(SystemError) {
                result = try Syscall.shimIO("sendmmsg") { tunctl_sendmmsg(fd, first, pending, 0) }
            } catch {
                if retryWithoutVanishedSource(&batch, error) { continue }
                // Report it on the next call, when it is the first thing that happens.
                if total > 0 { return false }
                batch.advance(by: 1)
                throw error
            }
            guard case .done(let sent) = result, sent > 0 else { return false }
            // Advancing may empty the batch (firstPending back to 0) only when end == count.
            let finished = batch.firstPending + Int(sent) == end
            batch.advance(by: Int(sent))
            total += Int(sent)
            if finished { return true }
        }
        return true
    }

    /// Sends the pending slots as GSO runs, adding the datagrams sent to `total`. Returns true
    /// when the batch is empty or segmentation was turned off and the rest should go one by one;
    /// false when the socket would block or a refusal is left for the next call.
    private func sendRuns(_ batch: inout SendBatch, total: inout Int) throws(SystemError) -> Bool {
        let fd = fileDescriptor
        var runCount = batch.planRuns(
            maxSegments: UDPSocket.maximumSegments, maxBytes: UDPSocket.maximumSegmentedBytes)
        var run = 0
        while run < runCount {
            // Sound: run < runCount <= capacity, so the run headers lie inside the batch.
            let first = batch.runMessages + run
            let pending = UInt32(runCount - run)
            let result: IOResult<Int32>
            do throws(SystemError) {
                result = try Syscall.shimIO("sendmmsg(UDP_SEGMENT)") { tunctl_sendmmsg(fd, first, pending, 0) }
            } catch {
                // The kernel refused run `run`, the first message of that call; its first
                // datagram is the batch's first pending one.
                if retryWithoutVanishedSource(&batch, error) {
                    // Runs never mix sources, so the ones left are planned again without it.
                    runCount = batch.planRuns(
                        maxSegments: UDPSocket.maximumSegments, maxBytes: UDPSocket.maximumSegmentedBytes)
                    run = 0
                    continue
                }
                let length = batch.runLength(run)
                if length == 1 {
                    if total > 0 { return false }
                    batch.advance(by: 1)
                    throw SystemError(call: "sendmmsg", errno: error.errno)
                }
                if error.errno == EIO { disableSegmentation() }
                guard try sendEach(&batch, upTo: batch.firstPending + length, total: &total) else { return false }
                run += 1
                if !offload.contains(.segmentation) { return true }
                continue
            }
            guard case .done(let sent) = result, sent > 0 else { return false }
            var datagrams = 0
            for done in run..<(run + Int(sent)) { datagrams += batch.runLength(done) }
            run += Int(sent)
            batch.advance(by: datagrams)
            total += datagrams
        }
        return true
    }

    /// After the kernel refused the batch's first pending datagram with `error`: when that
    /// datagram named a sticky source and the error says the source is not ours any more, every
    /// pending datagram with that source loses it, the address is noted for
    /// `takeVanishedSources`, and the caller sends again (true). Each retry removes one source
    /// address from the batch, so retries end.
    private func retryWithoutVanishedSource(_ batch: inout SendBatch, _ error: SystemError) -> Bool {
        guard ControlMessages.isVanishedSourceError(error.errno), !batch.isEmpty,
            let source = batch.destination(at: batch.firstPending).stickySource
        else { return false }
        noteVanished(source.address)
        return batch.dropStickySource(source.address)
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
