// udprelay: a UDP relay that loses, reorders and duplicates datagrams, standing in for netem in
// the network-namespace tests (netem is not available on these machines).
//
//   udprelay --listen ADDR:PORT --to ADDR:PORT [--loss P] [--reorder P] [--duplicate P]
//            [--seed N] [--hold-ms MS]
//
// Datagrams arriving on --listen are sent on to --to from a connected socket; datagrams coming
// back from --to are sent to the last client that sent to --listen. Both directions are impaired
// the same way. Every decision comes from a seeded PRNG (one per direction), so a run is
// reproducible for the same packet sequence. Reordering holds one packet per direction and releases it right after the
// next packet of that direction, or after --hold-ms (default 20) if none comes.
//
// Runs until SIGINT/SIGTERM (noticed within 100 ms), then prints its counters on stderr, exits 0.
// Single-threaded: one poll loop owns every buffer and counter. Buffers are allocated once.

import TunnelCore

#if canImport(Glibc)
    import Glibc
#else
    #error("udprelay is Linux-only")
#endif

// MARK: - Errors and arguments

struct UsageError: Error { let message: String }

/// Writes to fd 2 directly (Glibc's `stderr` is shared mutable state to Swift 6).
func printError(_ text: String) {
    var line = text + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func die(_ message: String) -> Never {
    printError("udprelay: \(message)")
    exit(2)
}

let usage = """
    usage: udprelay --listen ADDR:PORT --to ADDR:PORT [--loss P] [--reorder P] [--duplicate P] \
    [--seed N] [--hold-ms MS]
      ADDR is IPv4 (198.18.0.1) or bracketed IPv6 ([2001:db8::1]); P is a probability in [0, 1].
    """

/// A parsed IPv4 or IPv6 socket address, stored as a sockaddr_storage.
struct Endpoint: CustomStringConvertible {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    let text: String

    var family: Int32 { Int32(storage.ss_family) }
    var description: String { text }

    /// Parses "198.18.0.1:51820" or "[2001:db8::1]:51820".
    init(parsing text: String) throws(UsageError) {
        self.text = text
        let host: String
        let portText: String
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                text.index(after: close) < text.endIndex,
                text[text.index(after: close)] == ":"
            else { throw UsageError(message: "bad address '\(text)': expected [IPv6]:PORT") }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[text.index(close, offsetBy: 2)...])
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw UsageError(message: "bad address '\(text)': expected ADDR:PORT")
            }
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
        }
        guard let port = UInt16(portText) else {
            throw UsageError(message: "bad port in '\(text)'")
        }
        var ok = false
        if host.contains(":") {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            ok = inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: sin6) { dst.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            ok = inet_pton(AF_INET, host, &sin.sin_addr) == 1
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) }
            }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        }
        guard ok else { throw UsageError(message: "bad IP address '\(host)' in '\(text)'") }
    }
}

struct Options {
    var listen: Endpoint?
    var to: Endpoint?
    var loss = 0.0
    var reorder = 0.0
    var duplicate = 0.0
    var seed: UInt64 = 1
    var holdMillis: Int64 = 20

    static func parse(_ args: ArraySlice<String>) throws(UsageError) -> Options {
        var options = Options()
        var rest = args
        func probability(_ name: String, _ value: String) throws(UsageError) -> Double {
            guard let p = Double(value), p >= 0, p <= 1 else {
                throw UsageError(message: "\(name) needs a probability in [0, 1], got '\(value)'")
            }
            return p
        }
        while let flag = rest.popFirst() {
            if flag == "-h" || flag == "--help" {
                print(usage)
                exit(0)
            }
            guard let value = rest.popFirst() else {
                throw UsageError(message: "\(flag) needs a value")
            }
            switch flag {
            case "--listen": options.listen = try Endpoint(parsing: value)
            case "--to": options.to = try Endpoint(parsing: value)
            case "--loss": options.loss = try probability(flag, value)
            case "--reorder": options.reorder = try probability(flag, value)
            case "--duplicate": options.duplicate = try probability(flag, value)
            case "--seed":
                guard let seed = UInt64(value) else {
                    throw UsageError(message: "--seed needs an unsigned integer, got '\(value)'")
                }
                options.seed = seed
            case "--hold-ms":
                guard let ms = Int64(value), ms > 0, ms <= 10_000 else {
                    throw UsageError(message: "--hold-ms needs 1…10000, got '\(value)'")
                }
                options.holdMillis = ms
            default: throw UsageError(message: "unknown option '\(flag)'")
            }
        }
        guard options.listen != nil, options.to != nil else {
            throw UsageError(message: "--listen and --to are required")
        }
        return options
    }
}

// MARK: - PRNG

/// The relay's draws, from TunnelCore's SplitMix64 (one seeded generator per direction).
extension SplitMix64 {
    /// Uniform in [0, 1) from the top 53 bits.
    mutating func unit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
    /// True with probability p; draws nothing when p is 0, so a zero option never shifts the
    /// sequence of the others.
    mutating func chance(_ p: Double) -> Bool { p > 0 && unit() < p }
}

// MARK: - Sockets

func check(_ result: Int32, _ what: String) -> Int32 {
    if result < 0 { die("\(what): \(String(cString: strerror(errno)))") }
    return result
}

func withSockaddr<R>(_ endpoint: inout Endpoint, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    let length = endpoint.length
    return withUnsafePointer(to: &endpoint.storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
    }
}

func makeSocket(family: Int32) -> Int32 {
    let fd = check(
        socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0),
        "socket")
    // Large buffers so that bursts are impaired by our PRNG, not by the kernel.
    var size: Int32 = 4 << 20
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    return fd
}

func monotonicMillis() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

// MARK: - Relay

struct Counters {
    var received = 0
    var forwarded = 0
    var dropped = 0
    var duplicated = 0
    var reordered = 0
    var sendErrors = 0
    var noClient = 0
}

/// One direction of the relay: its held (delayed) packet and its counters.
/// Owns its hold buffer, allocated once and never freed (it lives as long as the process).
struct Direction {
    let name: String
    let hold: UnsafeMutableRawBufferPointer
    var heldLength = 0
    var heldSince: Int64 = 0
    var counters = Counters()

    init(name: String, capacity: Int) {
        self.name = name
        self.hold = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
    }
}

let maxDatagram = 65_536
/// Upper bound on how long a SIGTERM waits to be noticed.
let signalCheckMillis: Int64 = 100

/// The relay's whole state. One poll loop owns it; nothing else touches it.
struct Relay {
    let options: Options
    var toServer: Direction
    var toClient: Direction
    var client = sockaddr_storage()
    var clientLength: socklen_t = 0
    /// One generator per direction, so each direction's decisions depend only on its own packet
    /// sequence, not on how the two directions happen to interleave in time.
    var rngToServer: SplitMix64
    var rngToClient: SplitMix64
    let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maxDatagram, alignment: 16)
    let downFD: Int32
    let upFD: Int32
    var stopSignals = sigset_t()

    init(options: Options) {
        self.options = options
        var listenAddress = options.listen!
        var toAddress = options.to!
        // SIGINT/SIGTERM stay blocked and pending; the loop collects them with sigtimedwait after
        // each wake-up (poll never sleeps longer than signalCheckMillis). No handler, no globals.
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        _ = check(sigprocmask(SIG_BLOCK, &stopSignals, nil), "sigprocmask")

        let down = makeSocket(family: listenAddress.family)
        var one: Int32 = 1
        _ = setsockopt(down, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = check(withSockaddr(&listenAddress) { bind(down, $0, $1) }, "bind \(listenAddress)")
        let up = makeSocket(family: toAddress.family)
        _ = check(withSockaddr(&toAddress) { connect(up, $0, $1) }, "connect \(toAddress)")
        downFD = down
        upFD = up
        toServer = Direction(name: "to-server", capacity: maxDatagram)
        toClient = Direction(name: "to-client", capacity: maxDatagram)
        rngToServer = SplitMix64(seed: options.seed)
        rngToClient = SplitMix64(seed: options.seed ^ 0x5DEE_CE66_D1CE_5EED)
    }

    /// Sends bytes one way; send errors (e.g. ECONNREFUSED after an ICMP) are counted, not fatal.
    mutating func transmit(toClient: Bool, _ bytes: UnsafeRawBufferPointer) {
        let sent: Int
        if toClient {
            let length = clientLength
            let fd = downFD
            sent = withUnsafePointer(to: &client) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, 0, $0, length)
                }
            }
        } else {
            sent = send(upFD, bytes.baseAddress, bytes.count, 0)
        }
        if toClient {
            if sent < 0 { self.toClient.counters.sendErrors += 1 } else { self.toClient.counters.forwarded += 1 }
        } else {
            if sent < 0 { toServer.counters.sendErrors += 1 } else { toServer.counters.forwarded += 1 }
        }
    }

    mutating func chance(toClient: Bool, _ p: Double) -> Bool {
        toClient ? rngToClient.chance(p) : rngToServer.chance(p)
    }

    /// Forwards once, or twice when the duplicate draw says so.
    mutating func forward(toClient: Bool, _ bytes: UnsafeRawBufferPointer) {
        transmit(toClient: toClient, bytes)
        if chance(toClient: toClient, options.duplicate) {
            if toClient { self.toClient.counters.duplicated += 1 } else { toServer.counters.duplicated += 1 }
            transmit(toClient: toClient, bytes)
        }
    }

    mutating func releaseHeld(toClient: Bool) {
        let direction = toClient ? self.toClient : toServer
        guard direction.heldLength > 0 else { return }
        if toClient { self.toClient.heldLength = 0 } else { toServer.heldLength = 0 }
        forward(toClient: toClient, UnsafeRawBufferPointer(rebasing: direction.hold[0..<direction.heldLength]))
    }

    /// One received datagram: lose it, hold it back, or forward it (and then any held one).
    mutating func impair(toClient: Bool, _ bytes: UnsafeRawBufferPointer, now: Int64) {
        var direction = toClient ? self.toClient : toServer
        direction.counters.received += 1
        var held = false
        var lost = false
        if chance(toClient: toClient, options.loss) {
            direction.counters.dropped += 1
            lost = true
        } else if direction.heldLength == 0 && chance(toClient: toClient, options.reorder) {
            direction.hold.copyMemory(from: bytes)
            direction.heldLength = bytes.count
            direction.heldSince = now
            direction.counters.reordered += 1
            held = true
        }
        if toClient { self.toClient = direction } else { toServer = direction }
        if lost || held { return }
        forward(toClient: toClient, bytes)
        releaseHeld(toClient: toClient)
    }

    /// Reads every pending datagram from one socket (non-blocking) and impairs each.
    mutating func drain(fromClient: Bool) {
        let fd = fromClient ? downFD : upFD
        while true {
            var from = sockaddr_storage()
            var fromLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let buffer = receiveBuffer
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, buffer.baseAddress, buffer.count, 0, $0, &fromLength)
                }
            }
            if n < 0 {
                if errno == EINTR { continue }
                // EAGAIN: drained. ECONNREFUSED on the connected socket: the server's port was
                // closed (an ICMP came back); nothing to read, keep relaying.
                return
            }
            if fromClient {
                client = from
                clientLength = fromLength
            } else if clientLength == 0 {
                toClient.counters.noClient += 1
                continue
            }
            impair(toClient: !fromClient, UnsafeRawBufferPointer(rebasing: buffer[0..<n]), now: monotonicMillis())
        }
    }

    /// True once SIGINT or SIGTERM is pending (consumes it).
    mutating func stopRequested() -> Bool {
        var zero = timespec(tv_sec: 0, tv_nsec: 0)
        return sigtimedwait(&stopSignals, nil, &zero) > 0
    }

    /// Milliseconds until the earlier held packet is due, capped at signalCheckMillis.
    func pollTimeout(now: Int64) -> Int32 {
        // Two explicit checks rather than a loop over [toServer, toClient]: no array per wake-up.
        var timeout: Int64 = signalCheckMillis
        if toServer.heldLength > 0 {
            timeout = min(timeout, max(0, toServer.heldSince + options.holdMillis - now))
        }
        if toClient.heldLength > 0 {
            let left = max(0, toClient.heldSince + options.holdMillis - now)
            timeout = min(timeout, left)
        }
        return Int32(timeout)
    }

    mutating func run() {
        var fds = [
            pollfd(fd: downFD, events: Int16(POLLIN), revents: 0),
            pollfd(fd: upFD, events: Int16(POLLIN), revents: 0),
        ]
        while !stopRequested() {
            let timeout = pollTimeout(now: monotonicMillis())
            let ready = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeout) }
            if ready < 0 {
                if errno == EINTR { continue }
                die("poll: \(String(cString: strerror(errno)))")
            }
            if fds[0].revents != 0 { drain(fromClient: true) }
            if fds[1].revents != 0 { drain(fromClient: false) }
            let now = monotonicMillis()
            if toServer.heldLength > 0 && now - toServer.heldSince >= options.holdMillis {
                releaseHeld(toClient: false)
            }
            if toClient.heldLength > 0 && now - toClient.heldSince >= options.holdMillis {
                releaseHeld(toClient: true)
            }
        }
        releaseHeld(toClient: false)
        releaseHeld(toClient: true)
    }

    func report() {
        for direction in [toServer, toClient] {
            let c = direction.counters
            printError(
                "udprelay: \(direction.name): received \(c.received) forwarded \(c.forwarded) "
                    + "dropped \(c.dropped) duplicated \(c.duplicated) reordered \(c.reordered) "
                    + "send-errors \(c.sendErrors)" + (c.noClient > 0 ? " no-client \(c.noClient)" : "")
            )
        }
    }
}

let options: Options
do {
    options = try Options.parse(CommandLine.arguments.dropFirst())
} catch {
    printError("udprelay: \(error.message)\n\(usage)")
    exit(2)
}
var relay = Relay(options: options)
printError(
    "udprelay: \(options.listen!) -> \(options.to!) loss=\(options.loss) reorder=\(options.reorder) "
        + "duplicate=\(options.duplicate) seed=\(options.seed) hold-ms=\(options.holdMillis)")
relay.run()
relay.report()
exit(0)
