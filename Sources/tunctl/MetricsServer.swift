import Dispatch
import FlyingFox
import FlyingSocks
import Foundation
import Logging
import Synchronization
import TunnelCore
import TunnelIO

/// `MetricsListen` / `--metrics-listen`: `GET /metrics` on a loopback address, answered with
/// `MetricsExposition.text` of the tunnel's `show` report. FlyingFox runs it on Swift
/// concurrency's threads, apart from the tunnel's queues; each scrape asks the tunnel for a
/// snapshot (`Tunnel.report`), which takes the engine as `tunctl show` does, so the data path
/// never waits on an HTTP client. Bound before the tunnel exists, so a port in use fails the
/// start before any link is made; until `attach`, scrapes get 503.
///
/// FlyingFox stops serving when accepting fails (e.g. a local client holds so many connections
/// that the process runs out of descriptors): the server then listens again every
/// `relistenDelay` until it can, so a flood of connections never ends the endpoint for good
/// (ops.sh). Idle connections are closed after `idleTimeout`.
final class MetricsServer: Sendable {
    /// How long `start` waits for the socket to listen (or to fail).
    static let startTimeout = 5.0
    static let relistenDelay = Duration.seconds(1)
    static let idleTimeout = 5.0

    private let server: HTTPServer
    private let tunnel = Mutex<Tunnel?>(nil)

    private init(server: HTTPServer) {
        self.server = server
    }

    /// Binds `endpoint` and starts serving; throws a one-line reason when it cannot bind.
    static func start(_ endpoint: Endpoint, logger: Logger) throws -> MetricsServer {
        // Scrapes are small and answered at once: a client idle for `idleTimeout` is dropped.
        let server: HTTPServer
        do {
            switch endpoint.address {
            case .v4:
                let address = try sockaddr_in.inet(ip4: endpoint.address.description, port: endpoint.port)
                server = HTTPServer(address: address, timeout: idleTimeout, pool: pool(), logger: .disabled)
            case .v6:
                let address = try sockaddr_in6.inet6(ip6: endpoint.address.description, port: endpoint.port)
                server = HTTPServer(address: address, timeout: idleTimeout, pool: pool(), logger: .disabled)
            }
        } catch {
            throw MetricsServerError(error)
        }
        let metrics = MetricsServer(server: server)
        let outcome = Mutex<Result<Void, any Error>?>(nil)
        let settled = DispatchSemaphore(value: 0)
        let settle: @Sendable (Result<Void, any Error>) -> Void = { result in
            let first = outcome.withLock { value -> Bool in
                guard value == nil else { return false }
                value = result
                return true
            }
            if first { settled.signal() }
        }
        Task {
            await server.appendRoute("GET /metrics") { [metrics] _ in await metrics.respond() }
            var reported = false
            while true {
                do {
                    try await server.run()
                } catch {
                    // Before it ever listened: the start fails (port in use). After: serve again.
                    guard case .success? = outcome.withLock({ $0 }) else { return settle(.failure(error)) }
                    if !reported {
                        logger.warning(
                            "metrics endpoint \(endpoint) stopped (\(MetricsServerError(error))); listening again every second"
                        )
                    }
                    reported = true
                }
                try? await Task.sleep(for: relistenDelay)
            }
        }
        Task {
            do {
                try await server.waitUntilListening(timeout: startTimeout)
                settle(.success(()))
            } catch {
                settle(.failure(error))
            }
        }
        _ = settled.wait(timeout: .now() + startTimeout + 1)
        switch outcome.withLock({ $0 }) {
        case .success?: return metrics
        case .failure(let error)?: throw MetricsServerError(error)
        case nil: throw MetricsServerError(reason: "did not start listening within \(Int(startTimeout)) s")
        }
    }

    /// FlyingFox's poll(2) pool, not its epoll one: the epoll pool leaves an eventfd open each
    /// time the server stops (FlyingSocks 0.27.1, `ePoll.stop`), so every re-listen after a flood
    /// leaked a descriptor (seen: 21, 22, 23, 24 after three floods). poll(2) holds none; it wakes
    /// every `pollInterval` while the endpoint listens (a scrape waits at most that much longer),
    /// a few system calls a second, and only when MetricsListen is set.
    static let pollInterval = 0.1

    private static func pool() -> some AsyncSocketPool {
        SocketPool<Poll>.poll(interval: .seconds(pollInterval))
    }

    /// From now on scrapes report `tunnel`.
    func attach(_ tunnel: Tunnel) {
        self.tunnel.withLock { $0 = tunnel }
    }

    private func respond() async -> HTTPResponse {
        guard let tunnel = tunnel.withLock({ $0 }) else {
            return HTTPResponse(statusCode: .serviceUnavailable, body: Data("starting\n".utf8))
        }
        let report = await withCheckedContinuation { continuation in
            tunnel.report { continuation.resume(returning: $0) }
        }
        return HTTPResponse(
            statusCode: .ok, headers: [.contentType: MetricsExposition.contentType],
            body: Data(MetricsExposition.text([report]).utf8))
    }
}

/// Why the metrics socket could not be served: EADDRINUSE and friends as the C library says them.
struct MetricsServerError: Error, CustomStringConvertible {
    let reason: String
    /// The errno, when the failure was a system call's.
    let errno: Int32?

    init(reason: String) {
        self.reason = reason
        errno = nil
    }

    init(_ error: any Error) {
        if case .failed(_, let code, let message) = error as? SocketError {
            errno = code
            reason = message
        } else {
            errno = nil
            reason = "\(error)"
        }
    }

    var description: String { reason }
}
