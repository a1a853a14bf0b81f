import Glibc

/// Why a request on a control socket got no reply.
public enum ControlClientError: Error, Equatable, CustomStringConvertible {
    /// No socket file at `path`: no daemon serves that interface.
    case noSocket(path: String)
    /// The file exists but nothing accepts on it: a daemon that died without cleaning up.
    case notListening(path: String)
    /// No complete reply within the time allowed.
    case timedOut(path: String, seconds: Double)
    /// The reply grew past `ControlClient.replyLimit`.
    case replyTooLarge(path: String)
    case pathTooLong(path: String)
    case system(SystemError)

    public var description: String {
        switch self {
        case .noSocket(let path): return "no control socket at \(path)"
        case .notListening(let path):
            return "\(path) exists but no daemon answers on it (a crashed daemon left it; remove it)"
        case .timedOut(let path, let seconds): return "\(path) did not answer within \(seconds) s"
        case .replyTooLarge(let path): return "\(path) sent a reply over \(ControlClient.replyLimit) bytes"
        case .pathTooLong(let path): return "\(path): path too long for a Unix socket"
        case .system(let error): return error.description
        }
    }
}

/// The client side of the control socket (`/var/run/wireguard/<iface>.sock`): one request, one
/// reply. Blocking for the caller, bounded by a deadline; used by the CLI and by the daemon's
/// stale-socket check.
public enum ControlClient {
    /// Replies larger than this are refused: a `get` for 100,000 peers is about 31 MB, and
    /// `tunctl show --json` for as many about 25 MB.
    public static let replyLimit = 128 << 20

    /// Sends `text` (which must end in the blank line the protocol wants) and returns the reply.
    /// The reply ends when the server closes the connection or when it ends in a blank line (the
    /// protocol's terminator; wireguard-go keeps the connection open for more requests).
    public static func request(path: String, _ text: String, timeout: Double) throws(ControlClientError) -> String {
        let deadline = Deadline(seconds: timeout)
        let fd: Int32
        do {
            fd = try Syscall.check("socket(AF_UNIX)") {
                socket(
                    AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                    0)
            }
        } catch {
            throw .system(error)
        }
        defer { try? Syscall.close(fd) }
        try connect(fd, path: path, deadline: deadline, timeout: timeout)
        try send(Array(text.utf8), on: fd, path: path, deadline: deadline, timeout: timeout)
        return try receive(on: fd, path: path, deadline: deadline, timeout: timeout)
    }

    private static func connect(
        _ fd: Int32, path: String, deadline: Deadline, timeout: Double
    )
        throws(ControlClientError)
    {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        guard path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else { throw .pathTooLong(path: path) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        while true {
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if result == 0 { return }
            switch errno {
            case EINTR: continue
            // A Unix stream connect says EAGAIN when the listener's backlog is full: try again.
            case EAGAIN:
                guard deadline.remainingMilliseconds > 0 else { throw .timedOut(path: path, seconds: timeout) }
                usleep(10_000)
            case ENOENT, ENOTDIR: throw .noSocket(path: path)
            case ECONNREFUSED: throw .notListening(path: path)
            case let code: throw .system(SystemError(call: "connect(\(path))", errno: code))
            }
        }
    }

    private static func send(
        _ bytes: [UInt8], on fd: Int32, path: String, deadline: Deadline, timeout: Double
    ) throws(ControlClientError) {
        var offset = 0
        while offset < bytes.count {
            try wait(fd, for: Int16(POLLOUT), path: path, deadline: deadline, timeout: timeout)
            let result: IOResult<Int>
            do {
                // MSG_NOSIGNAL: a daemon that closes early is an error here, not SIGPIPE.
                result = try Syscall.io("send(\(path))") {
                    bytes.withUnsafeBytes {
                        Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
                    }
                }
            } catch {
                throw .system(error)
            }
            if case .done(let written) = result { offset += written }
        }
    }

    private static func receive(
        on fd: Int32, path: String, deadline: Deadline, timeout: Double
    ) throws(ControlClientError) -> String {
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            try wait(fd, for: Int16(POLLIN), path: path, deadline: deadline, timeout: timeout)
            let result: IOResult<Int>
            do {
                result = try Syscall.io("read(\(path))") {
                    chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                }
            } catch {
                // A server that closes with our request unread resets the connection: that is
                // its answer being over, not a failure, once something arrived.
                if error.errno == ECONNRESET, !reply.isEmpty { break }
                throw .system(error)
            }
            guard case .done(let count) = result else { continue }
            if count == 0 { break }
            reply.append(contentsOf: chunk[0..<count])
            guard reply.count <= replyLimit else { throw .replyTooLarge(path: path) }
            if reply.count >= 2, reply[reply.count - 1] == 10, reply[reply.count - 2] == 10 { break }
        }
        return String(decoding: reply, as: UTF8.self)
    }

    /// Polls `fd` for `events` until it is ready or the deadline passes.
    private static func wait(
        _ fd: Int32, for events: Int16, path: String, deadline: Deadline, timeout: Double
    ) throws(ControlClientError) {
        while true {
            let remaining = deadline.remainingMilliseconds
            guard remaining > 0 else { throw .timedOut(path: path, seconds: timeout) }
            var descriptor = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&descriptor, 1, Int32(clamping: remaining))
            if ready > 0 { return }  // ready, or HUP/ERR, which the next read or write reports
            if ready < 0 && errno != EINTR {
                throw .system(SystemError(call: "poll(\(path))", errno: errno))
            }
        }
    }

    /// A point on the monotonic clock, `seconds` from its creation.
    private struct Deadline {
        private let end: UInt64

        init(seconds: Double) {
            end = Deadline.nowNanoseconds() &+ UInt64(max(0, seconds) * 1e9)
        }

        var remainingMilliseconds: Int {
            let now = Deadline.nowNanoseconds()
            guard now < end else { return 0 }
            return Int((end - now + 999_999) / 1_000_000)
        }

        static func nowNanoseconds() -> UInt64 {
            var time = timespec()
            clock_gettime(CLOCK_MONOTONIC, &time)
            return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
        }
    }
}
