import Dispatch
import Glibc
import Logging
import TunnelCore
import TunnelCrypto

/// A request on the control socket. `get`/`set` are the cross-platform WireGuard configuration
/// protocol (what `wg` speaks); `show`/`down` are tunctl's own, which `wg` never sends.
enum ControlRequest {
    case get
    /// The lines after `set=1`, up to the blank line: a view of the client's request buffer,
    /// valid only during the handler's call (the buffer is zeroed right after it).
    case set(UnsafeRawBufferPointer)
    case show
    case down
}

/// The Unix stream socket `/var/run/wireguard/<iface>.sock`, owner-only, served on the tunnel's
/// queue: each client sends one request ending in a blank line, gets one reply, and is closed.
///
/// No client can wedge, block or kill it: every socket is non-blocking and driven by Dispatch
/// sources (a read source for the request, a write source while a reply does not fit the
/// socket); a client is dropped, and everything it held released, on EOF, on any error
/// (a reader that vanished is one: sends carry MSG_NOSIGNAL and SIGPIPE is ignored), when it
/// makes no progress for `Limits.idleTimeout`, and when it is the oldest idle one and a new
/// client needs its place (at most `Limits.maximumClients`). A request over
/// `Limits.requestBytes` is answered with an errno and closed. Running out of descriptors on
/// `accept` pauses accepting for a moment (logged, never fatal).
///
/// Secrets: requests (`set` carries keys) and replies (`get` writes them) live only in
/// `SecretBuffer`s, zeroed once used.
///
/// Threading: created, driven and closed on `queue` (the tunnel's), like all tunnel state, and
/// every source handler runs there; the `@unchecked Sendable` is sound for that reason.
final class ControlServer: @unchecked Sendable {
    struct Limits {
        /// Connected clients at most; a new one evicts the oldest idle one. `wg show` from a
        /// few monitoring scripts needs a handful; this leaves room and bounds descriptors.
        var maximumClients = 64
        /// A client that neither sends nor reads for this long is dropped.
        var idleTimeout: DispatchTimeInterval = .seconds(5)
        /// A request larger than this is refused: `wg setconf` of 100,000 peers with a preshared
        /// key, an endpoint and an allowed IP each is about 24 MB (issue 16); 64 MiB leaves room
        /// for more prefixes per peer and bounds what one client can make the daemon hold. One
        /// byte under 64 MiB: the buffer, doubling from 1 KiB, then stops at 64 MiB (reading one
        /// byte past 64 MiB to see the request is too long would double it to 128 MiB).
        var requestBytes = (64 << 20) - 1
        /// How long accepting pauses after accept ran out of descriptors (EMFILE/ENFILE): long
        /// enough not to spin on the pending connection, short enough that a `wg show` queued
        /// behind a burst of idle clients gets in within a second (one is let in per retry).
        var acceptRetry: DispatchTimeInterval = .milliseconds(20)
    }

    let path: String
    private let queue: DispatchQueue
    private let logger: Logger
    private let limits: Limits
    private let handler: (ControlRequest, SecretBuffer) -> Void
    private var listener: Int32 = -1
    private var acceptSource: DispatchSourceRead?
    private var acceptPaused = false
    /// When an accept failure was last logged (uptime ns): one line a minute, not one per retry.
    private var acceptFailureLoggedAt: UInt64?
    private var sweepTimer: DispatchSourceTimer?
    private var clients: [Int32: Client] = [:]
    /// Reply buffers kept for the next reply (zeroed, and trimmed to `spareCapacity`).
    private var spareReplies: [SecretBuffer] = []
    private static let spareCapacity = 64 << 10
    /// Bytes read per read event: fairness between clients, and the buffer grows in steps.
    private static let readChunk = 16 << 10
    /// Connections accepted before other work on the queue gets a turn.
    private static let acceptBurst = 256

    /// One connection. Its descriptor closes when the server and every source have let go of it
    /// (`release`), so a source never sees its number reused while it still watches it.
    private final class Client {
        let fd: Int32
        /// The request as read so far; zeroed once handled.
        let request = SecretBuffer(capacity: 1024)
        /// Request bytes already searched for the terminating blank line.
        var scanned = 0
        /// The reply, once made, and how much of it was sent.
        var reply: SecretBuffer?
        var sent = 0
        /// Uptime (ns) of the last byte read or sent: who is idle, and for how long.
        var lastActivity: UInt64
        var readSource: DispatchSourceRead?
        var writeSource: DispatchSourceWrite?
        /// The server's hold, plus one for each source not yet through its cancel handler.
        private var holds = 1

        init(fd: Int32, now: UInt64) {
            self.fd = fd
            lastActivity = now
        }

        func hold() { holds += 1 }

        func release() {
            holds -= 1
            if holds == 0 { _ = Glibc.close(fd) }
        }
    }

    init(
        path: String, queue: DispatchQueue, logger: Logger, limits: Limits = Limits(),
        handler: @escaping (ControlRequest, SecretBuffer) -> Void
    ) throws {
        self.path = path
        self.queue = queue
        self.logger = logger
        self.limits = limits
        self.handler = handler
        // Belt to MSG_NOSIGNAL's braces: no write to a closed socket anywhere in the process may
        // kill the daemon; EPIPE comes back as an ordinary error instead.
        signal(SIGPIPE, SIG_IGN)
        try listen()
        startSweeping()
    }

    private static func uptime() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    private static func nanoseconds(_ interval: DispatchTimeInterval) -> UInt64 {
        switch interval {
        case .seconds(let value): return UInt64(max(0, value)) * 1_000_000_000
        case .milliseconds(let value): return UInt64(max(0, value)) * 1_000_000
        case .microseconds(let value): return UInt64(max(0, value)) * 1_000
        case .nanoseconds(let value): return UInt64(max(0, value))
        case .never: return UInt64.max
        @unknown default: return UInt64.max
        }
    }

    private func listen() throws {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
        if !directory.isEmpty { mkdir(directory, 0o755) }
        // A socket file left by a process that died (kill -9) would block bind: remove it if
        // nothing answers on it; refuse if a live daemon does.
        if access(path, F_OK) == 0 {
            if (try? ControlClient.request(path: path, "tunctl-show=1\n\n", timeout: 1)) != nil {
                throw ControlServerError.inUse(path)
            }
            unlink(path)
        }
        let fd = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SystemError(call: "socket(AF_UNIX)", errno: errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            Glibc.close(fd)
            throw ControlServerError.pathTooLong(path)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        // Owner-only from the moment the file exists: umask during bind, not chmod after it.
        let previousMask = umask(0o077)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        umask(previousMask)
        // A backlog that holds a burst of clients while the queue is busy (a big `set`).
        guard bound == 0, Glibc.listen(fd, 128) == 0 else {
            let error = SystemError(call: "bind/listen(\(path))", errno: errno)
            Glibc.close(fd)
            throw error
        }
        listener = fd
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler { [weak self] in self?.acceptClients() }
        // Closed once Dispatch has stopped watching it, so its number is not reused under it.
        source.setCancelHandler { _ = Glibc.close(fd) }
        source.resume()
        acceptSource = source
    }

    // MARK: - Clients

    /// Accepts until the backlog is empty (Dispatch need not report it again), or a burst; then
    /// comes back for the rest after what else is queued.
    private func acceptClients() {
        guard listener >= 0, !acceptPaused else { return }
        for _ in 0..<ControlServer.acceptBurst {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                switch errno {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO: continue
                case let code:
                    acceptFailed(code)
                    return
                }
            }
            // accept4 is hidden from Swift's Glibc; set the same flags right after.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            serve(connected: fd)
        }
        queue.async { [weak self] in self?.acceptClients() }
    }

    /// Out of descriptors (or memory) on accept: not fatal, and nothing to do with the link.
    /// Frees the oldest idle client's descriptor so a waiting `wg show` gets in, and pauses
    /// accepting briefly (the pending connection keeps the source firing, which would spin).
    private func acceptFailed(_ code: Int32) {
        let now = ControlServer.uptime()
        if acceptFailureLoggedAt.map({ now - $0 > 60_000_000_000 }) ?? true {
            acceptFailureLoggedAt = now
            let message = SystemError.message(for: code)
            logger.warning(
                "\(path): cannot accept a control client: \(message) (errno \(code)); retrying (raise LimitNOFILE if this persists)"
            )
        }
        evictOldestIdle(reason: "accept failed")
        guard let source = acceptSource, !acceptPaused else { return }
        source.suspend()
        acceptPaused = true
        queue.asyncAfter(deadline: .now() + limits.acceptRetry) { [weak self] in
            guard let self, self.acceptPaused, let source = self.acceptSource else { return }
            self.acceptPaused = false
            source.resume()
            self.acceptClients()
        }
    }

    /// Starts serving a connected, non-blocking descriptor, which the server now owns (`accept`
    /// hands them here; tests hand one end of a socketpair).
    func serve(connected fd: Int32) {
        if clients.count >= limits.maximumClients { evictOldestIdle(reason: "client limit reached") }
        let client = Client(fd: fd, now: ControlServer.uptime())
        clients[fd] = client
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        client.hold()
        source.setEventHandler { [weak self, unowned client] in self?.readRequest(client) }
        source.setCancelHandler { client.release() }
        client.readSource = source
        source.resume()
    }

    /// Number of connected clients (for tests).
    var clientCount: Int { clients.count }

    /// Reads until the socket is drained (Dispatch need not report data it already reported,
    /// nor the EOF behind it), the request is complete, or it is over the limit.
    private func readRequest(_ client: Client) {
        guard clients[client.fd] === client, client.reply == nil else { return }
        let request = client.request
        while true {
            let room = min(ControlServer.readChunk, limits.requestBytes + 1 - request.count)
            let count = request.fill(upTo: room) { read(client.fd, $0.baseAddress, $0.count) }
            if count == 0 {
                // Connecting and closing at once is how `wg` checks that a socket is alive: not news.
                return drop(client, because: request.isEmpty ? nil : "closed before its request ended")
            }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK { return }
                return drop(client, because: SystemError.message(for: code))
            }
            client.lastActivity = ControlServer.uptime()
            if let end = requestEnd(request.bytes, from: client.scanned) {
                return respond(client, requestLength: end)
            }
            if request.count > limits.requestBytes {
                logger.info("\(path): refused a control request over \(limits.requestBytes) bytes")
                return reply(client) { $0.append("errno=-\(E2BIG)\n\n") }
            }
            client.scanned = request.count
        }
    }

    /// Index just past the blank line that ends a request, or nil while incomplete. `from` is
    /// where the previous search stopped, so a large request is scanned once, not per read.
    private func requestEnd(_ bytes: UnsafeRawBufferPointer, from scanned: Int) -> Int? {
        let newline = UInt8(ascii: "\n")
        var index = max(scanned, 1)
        while index < bytes.count {
            if bytes[index] == newline && bytes[index - 1] == newline { return index + 1 }
            index += 1
        }
        return nil
    }

    /// Hands the complete request (`request[0..<length]`) to the handler and sends its reply.
    private func respond(_ client: Client, requestLength length: Int) {
        let text = UnsafeRawBufferPointer(rebasing: client.request.bytes[0..<length])
        let newline = UInt8(ascii: "\n")
        let firstLineEnd = text.firstIndex(of: newline) ?? length
        let command = UnsafeRawBufferPointer(rebasing: text[0..<firstLineEnd])
        let request: ControlRequest?
        if command.elementsEqual("get=1".utf8) {
            request = .get
        } else if command.elementsEqual("set=1".utf8) {
            // The lines up to the terminating blank line, without the newlines that end them.
            var bodyEnd = length
            while bodyEnd > firstLineEnd + 1, text[bodyEnd - 1] == newline { bodyEnd -= 1 }
            request = .set(UnsafeRawBufferPointer(rebasing: text[min(firstLineEnd + 1, bodyEnd)..<bodyEnd]))
        } else if command.elementsEqual("tunctl-show=1".utf8) {
            request = .show
        } else if command.elementsEqual("tunctl-down=1".utf8) {
            request = .down
        } else {
            request = nil
        }
        reply(client) { buffer in
            if let request {
                handler(request, buffer)
            } else {
                buffer.append("errno=-\(EINVAL)\n\n")
            }
        }
    }

    /// Stops reading, makes the reply with `make`, zeroes the request and starts sending.
    private func reply(_ client: Client, _ make: (SecretBuffer) -> Void) {
        client.readSource?.cancel()
        client.readSource = nil
        let buffer = spareReplies.popLast() ?? SecretBuffer()
        make(buffer)
        client.request.removeAll(keepingCapacity: 0)
        client.reply = buffer
        client.sent = 0
        sendReply(client)
    }

    /// Sends as much of the reply as the socket takes; the rest when a write source says there
    /// is room. Done, or the reader gone: the client is dropped.
    private func sendReply(_ client: Client) {
        guard clients[client.fd] === client, let reply = client.reply else { return }
        let bytes = reply.bytes
        // nil only for an empty reply, which is sent as soon as it is made.
        guard let base = bytes.baseAddress else { return drop(client, because: nil) }
        while client.sent < bytes.count {
            let count = send(client.fd, base + client.sent, bytes.count - client.sent, Int32(MSG_NOSIGNAL))
            if count > 0 {
                client.sent += count
                client.lastActivity = ControlServer.uptime()
                continue
            }
            let code = errno
            if count < 0 && code == EINTR { continue }
            if count < 0 && (code == EAGAIN || code == EWOULDBLOCK) {
                if client.writeSource == nil { watchWritable(client) }
                return
            }
            // EPIPE, ECONNRESET: the reader left early. Ordinary; it gets nothing more.
            return drop(client, because: "left before its reply was read (\(SystemError.message(for: code)))")
        }
        drop(client, because: nil)
    }

    private func watchWritable(_ client: Client) {
        let source = DispatchSource.makeWriteSource(fileDescriptor: client.fd, queue: queue)
        client.hold()
        source.setEventHandler { [weak self, unowned client] in self?.sendReply(client) }
        source.setCancelHandler { client.release() }
        client.writeSource = source
        source.resume()
    }

    /// Forgets `client`: its sources are cancelled (they close the descriptor as they finish),
    /// its request and reply zeroed. `reason` nil is a normal end (reply sent).
    private func drop(_ client: Client, because reason: String?) {
        guard clients[client.fd] === client else { return }
        clients.removeValue(forKey: client.fd)
        if let reason { logger.debug("\(path): control client dropped: \(reason)") }
        client.readSource?.cancel()
        client.readSource = nil
        client.writeSource?.cancel()
        client.writeSource = nil
        client.request.removeAll(keepingCapacity: 0)
        if let reply = client.reply {
            reply.removeAll(keepingCapacity: ControlServer.spareCapacity)
            if spareReplies.count < 2 { spareReplies.append(reply) }
            client.reply = nil
        }
        client.release()
    }

    /// Drops the client that has been idle longest, to make room for a new one.
    private func evictOldestIdle(reason: String) {
        guard let oldest = clients.values.min(by: { $0.lastActivity < $1.lastActivity }) else { return }
        drop(oldest, because: "evicted, idle the longest (\(reason))")
    }

    private func startSweeping() {
        let timeout = ControlServer.nanoseconds(limits.idleTimeout)
        // Checked at a quarter of the timeout (at most once a second): dropped within 1.25×.
        let period = Int(min(timeout / 4, 1_000_000_000))
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(
            deadline: .now() + .nanoseconds(period), repeating: .nanoseconds(period), leeway: .nanoseconds(period / 4))
        timer.setEventHandler { [weak self] in self?.dropIdle(olderThan: timeout) }
        timer.resume()
        sweepTimer = timer
    }

    private func dropIdle(olderThan timeout: UInt64) {
        let now = ControlServer.uptime()
        for client in clients.values where now - client.lastActivity > timeout {
            drop(client, because: "idle for \(timeout / 1_000_000) ms")
        }
    }

    func close() {
        sweepTimer?.cancel()
        sweepTimer = nil
        if let source = acceptSource {
            // A suspended source never runs its cancellation (and may not be released suspended).
            if acceptPaused { source.resume() }
            acceptPaused = false
            source.cancel()
        }
        acceptSource = nil
        for client in Array(clients.values) { drop(client, because: "server closing") }
        spareReplies.removeAll()
        if listener >= 0 {
            listener = -1
            unlink(path)
        }
    }
}

enum ControlServerError: Error, CustomStringConvertible {
    case inUse(String)
    case pathTooLong(String)

    var description: String {
        switch self {
        case .inUse(let path): return "\(path) is served by a running daemon (stop it first: tunctl down IFACE)"
        case .pathTooLong(let path): return "\(path): control socket path too long"
        }
    }
}

/// Host-name resolution for `Endpoint = host:port` at start-up (as `wg setconf` does).
enum Resolver {
    static func resolve(host: String, port: UInt16) throws -> Endpoint {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let first = result else {
            throw ResolverError(host: host, message: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(result) }
        var entry: UnsafeMutablePointer<addrinfo>? = first
        var fallback: Endpoint?
        while let current = entry {
            if let address = current.pointee.ai_addr,
                let endpoint = Endpoint(
                    socketAddress: UnsafeRawPointer(address), length: Int(current.pointee.ai_addrlen))
            {
                // Prefer IPv4 like wg does when both exist.
                if endpoint.address.isV4 { return endpoint }
                fallback = fallback ?? endpoint
            }
            entry = current.pointee.ai_next
        }
        guard let fallback else { throw ResolverError(host: host, message: "no usable address") }
        return fallback
    }
}

struct ResolverError: Error, CustomStringConvertible {
    let host: String
    let message: String
    var description: String { "cannot resolve endpoint host \(host): \(message)" }
}

/// systemd's readiness protocol (sd_notify) without libsystemd: one datagram to $NOTIFY_SOCKET.
public enum SystemdNotify {
    public static func send(_ state: String) {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        // '@' names an abstract socket: a leading NUL on the wire.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        _ = state.withCString { message in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, message, strlen(message), 0, $0, length)
                }
            }
        }
    }
}
