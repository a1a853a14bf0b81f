import Dispatch
import Glibc
import Logging
import TunnelCore

/// A request on the control socket. `get`/`set` are the cross-platform WireGuard configuration
/// protocol (what `wg` speaks); `show`/`down` are tunctl's own, which `wg` never sends.
enum ControlRequest {
    case get
    /// The lines after `set=1`, up to the blank line.
    case set(String)
    case show
    case down
}

/// The Unix stream socket `/var/run/wireguard/<iface>.sock`, owner-only, served on the tunnel's
/// queue: each client sends one request ending in a blank line and gets one reply.
///
/// Threading: created, driven and closed on `queue` (the tunnel's), like all tunnel state;
/// the `@unchecked Sendable` is sound for that reason.
final class ControlServer: @unchecked Sendable {
    let path: String
    private let queue: DispatchQueue
    private let logger: Logger
    private let handler: (ControlRequest) -> String
    private var listener: Int32 = -1
    private var acceptSource: DispatchSourceRead?
    private var clients: [Int32: Client] = [:]

    /// A request larger than this is refused (a `set` with thousands of allowed IPs still fits).
    static let requestLimit = 1 << 20

    private final class Client {
        var input: [UInt8] = []
        var source: DispatchSourceRead?
    }

    init(path: String, queue: DispatchQueue, logger: Logger, handler: @escaping (ControlRequest) -> String) throws {
        self.path = path
        self.queue = queue
        self.logger = logger
        self.handler = handler
        try listen()
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
        guard bound == 0, Glibc.listen(fd, 16) == 0 else {
            let error = SystemError(call: "bind/listen(\(path))", errno: errno)
            Glibc.close(fd)
            throw error
        }
        listener = fd
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler { [unowned self] in self.acceptClients() }
        source.resume()
        acceptSource = source
    }

    private func acceptClients() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { return }
            // accept4 is hidden from Swift's Glibc; set the same flags right after.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let client = Client()
            clients[fd] = client
            let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
            source.setEventHandler { [unowned self] in self.readClient(fd) }
            source.setCancelHandler { Glibc.close(fd) }
            client.source = source
            source.resume()
        }
    }

    private func readClient(_ fd: Int32) {
        guard let client = clients[fd] else { return }
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                client.input.append(contentsOf: chunk[0..<count])
                if client.input.count > ControlServer.requestLimit { return finish(fd, reply: "errno=-\(E2BIG)\n\n") }
                continue
            }
            if count < 0 && (errno == EAGAIN || errno == EINTR) { break }
            // EOF or error: answer what we have if it is complete, else drop the client.
            break
        }
        guard let end = requestEnd(client.input) else { return }
        let text = String(decoding: client.input[0..<end], as: UTF8.self)
        finish(fd, reply: respond(to: text))
    }

    /// Index just past the blank line that ends a request, or nil while incomplete.
    private func requestEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 2 else { return nil }
        if bytes.count == 2 && bytes[0] == 10 && bytes[1] == 10 { return 2 }
        for index in 1..<bytes.count where bytes[index] == 10 && bytes[index - 1] == 10 {
            return index + 1
        }
        return nil
    }

    private func respond(to text: String) -> String {
        let firstLineEnd = text.firstIndex(of: "\n") ?? text.endIndex
        let command = text[..<firstLineEnd]
        let rest = text[text.index(after: firstLineEnd)...]
        switch command {
        case "get=1": return handler(.get)
        case "set=1":
            // Everything up to the terminating blank line.
            var body = String(rest)
            while body.hasSuffix("\n") { body.removeLast() }
            return handler(.set(body))
        case "tunctl-show=1": return handler(.show)
        case "tunctl-down=1": return handler(.down)
        default: return "errno=-\(EINVAL)\n\n"
        }
    }

    private func finish(_ fd: Int32, reply: String) {
        var bytes = Array(reply.utf8)
        var offset = 0
        // Replies are small; the client is waiting for them. Poll briefly if its buffer is full.
        var attempts = 0
        while offset < bytes.count && attempts < 1000 {
            let written = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written > 0 {
                offset += written
            } else if errno == EAGAIN || errno == EINTR {
                attempts += 1
                var descriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&descriptor, 1, 10)
            } else {
                break
            }
        }
        if let client = clients.removeValue(forKey: fd) { client.source?.cancel() }
    }

    func close() {
        acceptSource?.cancel()
        acceptSource = nil
        for (_, client) in clients { client.source?.cancel() }
        clients.removeAll()
        if listener >= 0 {
            Glibc.close(listener)
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
