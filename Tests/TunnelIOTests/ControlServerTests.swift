import Dispatch
import Foundation
import Glibc
import Logging
import Testing
import TunnelCrypto

@testable import TunnelIO

/// A control server on a socket path of its own, fed clients through socketpairs: the test holds
/// one end, the server serves the other (`serve(connected:)`), as it would an accepted one.
private final class ControlHarness: @unchecked Sendable {
    // Sound: `requests` is touched only on `queue` (by the handler) or through `queue.sync`.
    let queue = DispatchQueue(label: "control-server-test")
    let server: ControlServer
    let path: String
    private var requests: [String] = []

    /// `reply(request)` is what the handler appends for each request.
    init(limits: ControlServer.Limits = ControlServer.Limits(), reply: @escaping (ControlRequest) -> String) throws {
        path = "/tmp/tunctl-control-test-\(getpid())-\(UUID().uuidString.prefix(8)).sock"
        var recorded: ((String) -> Void)?
        server = try ControlServer(path: path, queue: queue, logger: Logger(label: "test"), limits: limits) {
            request, buffer in
            switch request {
            case .get: recorded?("get")
            case .set(let body): recorded?("set:" + String(decoding: body, as: UTF8.self))
            case .show: recorded?("show")
            case .down: recorded?("down")
            }
            buffer.append(reply(request))
        }
        recorded = { [unowned self] in self.requests.append($0) }
    }

    deinit { queue.sync { server.close() } }

    var seen: [String] { queue.sync { requests } }
    var clientCount: Int { queue.sync { server.clientCount } }

    /// A connected client: the test's end (blocking), the server's end handed over.
    func connect() throws -> Int32 {
        var ends: [Int32] = [-1, -1]
        _ = try Syscall.check("socketpair") { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) }
        _ = fcntl(ends[1], F_SETFL, O_NONBLOCK)
        queue.sync { server.serve(connected: ends[1]) }
        return ends[0]
    }

    /// Waits (5 s at most) until `condition` holds.
    func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }
}

private func send(_ fd: Int32, _ text: String) {
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let count = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, 0) }
        guard count > 0 else { return }
        offset += count
    }
}

/// Everything until EOF (or 5 s), `chunk` bytes at a time, with `pause` microseconds between reads.
private func readAll(_ fd: Int32, chunk: Int = 65536, pause: UInt32 = 0) -> [UInt8] {
    var reply: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: chunk)
    let start = DispatchTime.now().uptimeNanoseconds
    while DispatchTime.now().uptimeNanoseconds - start < 5_000_000_000 {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, 5000) > 0 else { break }
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count <= 0 { break }
        reply.append(contentsOf: buffer[0..<count])
        if pause > 0 { usleep(pause) }
    }
    return reply
}

/// True when the peer has closed (`read` sees EOF or a reset) within a second.
private func closedByServer(_ fd: Int32) -> Bool {
    var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&descriptor, 1, 1000) > 0 else { return false }
    var byte: UInt8 = 0
    return read(fd, &byte, 1) <= 0
}

@Suite(.serialized) struct ControlServerTests {
    @Test func answersARequestAndReleasesTheClient() throws {
        let harness = try ControlHarness { _ in "errno=0\n\n" }
        let fd = try harness.connect()
        defer { close(fd) }
        send(fd, "get=1\n\n")
        #expect(String(decoding: readAll(fd), as: UTF8.self) == "errno=0\n\n")
        #expect(harness.eventually { harness.clientCount == 0 })
        #expect(harness.seen == ["get"])
    }

    @Test func setBodyIsTheLinesUpToTheBlankLine() throws {
        let harness = try ControlHarness { _ in "errno=0\n\n" }
        let fd = try harness.connect()
        defer { close(fd) }
        send(fd, "set=1\nlisten_port=9\nfwmark=0\n\n")
        _ = readAll(fd)
        #expect(harness.seen == ["set:listen_port=9\nfwmark=0"])
    }

    @Test func unknownCommandIsRefusedWithEINVAL() throws {
        let harness = try ControlHarness { _ in "errno=0\n\n" }
        let fd = try harness.connect()
        defer { close(fd) }
        send(fd, "bogus=1\n\n")
        #expect(String(decoding: readAll(fd), as: UTF8.self) == "errno=-\(EINVAL)\n\n")
        #expect(harness.seen.isEmpty)
    }

    /// The leak of issue 14 item 3: a client that sends half a request and closes.
    @Test func halfARequestThenCloseReleasesTheClient() throws {
        let harness = try ControlHarness { _ in "errno=0\n\n" }
        for _ in 0..<50 {
            let fd = try harness.connect()
            send(fd, "get=1\n")
            close(fd)
        }
        #expect(harness.eventually { harness.clientCount == 0 })
        #expect(harness.seen.isEmpty)
    }

    /// Issue 14 item 4: a reader that leaves before its reply is an ordinary error, not SIGPIPE.
    /// The reply is larger than a socket buffer, so the server is still sending when it finds out.
    @Test func clientThatLeavesBeforeItsReplyIsDropped() throws {
        let harness = try ControlHarness { _ in String(repeating: "x", count: 4 << 20) + "\n\n" }
        for _ in 0..<10 {
            let fd = try harness.connect()
            send(fd, "get=1\n\n")
            close(fd)
        }
        #expect(harness.eventually { harness.clientCount == 0 })
        #expect(harness.seen.count == 10)
        // Still serving.
        let fd = try harness.connect()
        defer { close(fd) }
        send(fd, "get=1\n\n")
        #expect(readAll(fd).count == (4 << 20) + 2)
    }

    @Test func idleClientIsDroppedAfterTheTimeout() throws {
        var limits = ControlServer.Limits()
        limits.idleTimeout = .milliseconds(200)
        let harness = try ControlHarness(limits: limits) { _ in "errno=0\n\n" }
        let fd = try harness.connect()
        defer { close(fd) }
        send(fd, "get=1\n")
        #expect(harness.clientCount == 1)
        #expect(harness.eventually { harness.clientCount == 0 })
        #expect(closedByServer(fd))
    }

    @Test func oldestIdleClientIsEvictedAtTheLimit() throws {
        var limits = ControlServer.Limits()
        limits.maximumClients = 2
        let harness = try ControlHarness(limits: limits) { _ in "errno=0\n\n" }
        let oldest = try harness.connect()
        usleep(5000)
        let middle = try harness.connect()
        usleep(5000)
        // Activity makes the first the most recent: the middle one is now the oldest idle.
        send(oldest, "get=1\n")
        usleep(100_000)
        #expect(harness.seen.isEmpty && harness.clientCount == 2)
        let newest = try harness.connect()
        defer { [oldest, middle, newest].forEach { close($0) } }
        #expect(harness.clientCount == 2)
        #expect(closedByServer(middle))
        send(newest, "get=1\n\n")
        #expect(String(decoding: readAll(newest), as: UTF8.self) == "errno=0\n\n")
        send(oldest, "\n")
        #expect(String(decoding: readAll(oldest), as: UTF8.self) == "errno=0\n\n")
    }

    @Test func oversizedRequestGetsE2BIGAndNoMore() throws {
        var limits = ControlServer.Limits()
        limits.requestBytes = 1024
        let harness = try ControlHarness(limits: limits) { _ in "errno=0\n\n" }
        let fd = try harness.connect()
        defer { close(fd) }
        send(fd, "set=1\n" + String(repeating: "a", count: 2000))
        #expect(String(decoding: readAll(fd), as: UTF8.self) == "errno=-\(E2BIG)\n\n")
        #expect(harness.seen.isEmpty)
        #expect(harness.eventually { harness.clientCount == 0 })
    }

    /// A reply many times a socket buffer reaches a slow reader whole: the rest is sent as the
    /// reader makes room, and reading counts as activity (no idle timeout mid-reply).
    @Test func largeReplyReachesASlowReaderWhole() throws {
        var limits = ControlServer.Limits()
        limits.idleTimeout = .milliseconds(400)
        let body = (0..<40_000).map { "line \($0)\n" }.joined()
        let harness = try ControlHarness(limits: limits) { _ in body + "\n" }
        let fd = try harness.connect()
        defer { close(fd) }
        send(fd, "get=1\n\n")
        let reply = readAll(fd, chunk: 32768, pause: 20_000)
        #expect(reply.count == body.utf8.count + 1)
        #expect(String(decoding: reply, as: UTF8.self) == body + "\n")
        #expect(harness.eventually { harness.clientCount == 0 })
    }

    @Test func closeReleasesEveryClientAndTheSocketFile() throws {
        let harness = try ControlHarness { _ in "errno=0\n\n" }
        let fds = try (0..<5).map { _ in try harness.connect() }
        defer { fds.forEach { close($0) } }
        #expect(access(harness.path, F_OK) == 0)
        harness.queue.sync { harness.server.close() }
        #expect(harness.clientCount == 0)
        #expect(fds.allSatisfy { closedByServer($0) })
        #expect(access(harness.path, F_OK) != 0)
    }
}
