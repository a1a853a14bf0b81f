import ArgumentParser
import Dispatch
import Foundation
import Logging
import Synchronization
import TunnelCore
import TunnelIO

/// Where `wg` looks for userspace implementations' control sockets.
let controlDirectory = "/var/run/wireguard"

func controlSocketPath(_ interface: String) -> String { "\(controlDirectory)/\(interface).sock" }

/// Logs go to stderr (journald picks them up under systemd); `--verbose` adds debug lines.
func bootstrapLogging(verbose: Bool) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = verbose ? .debug : .info
        return handler
    }
}

/// How long a new daemon waits for one that is still exiting to let go of the interface's control
/// socket (`wg-quick down; wg-quick up` back to back), before it reports "already running".
let previousDaemonWait = 3.0

/// Runs a tunnel in this process until it stops; never returns. Every failure is thrown, so it is
/// printed (one line, by ArgumentParser) before the process exits.
func runTunnel(
    name: String, config: TunnelConfig?, configPath: String?, privateKeyFile: KeyFileReference? = nil, verbose: Bool,
    metrics: MetricsListen? = nil, ready: (() -> Void)? = nil
) throws -> Never {
    let logger = Logger(label: "tunctl.\(name)")
    let socketPath = controlSocketPath(name)
    // wg-quick's keys (hooks, DNS, SaveConfig) belong to a config file; `tunctl userspace` has none.
    var lifecycle: QuickLifecycle?
    if let config, let configPath {
        do {
            lifecycle = try QuickLifecycle(
                interface: name, config: config, privateKeyFile: privateKeyFile, configPath: configPath, logger: logger)
        } catch {
            throw CLIError.startFailed(interface: name, reason: "\(error)")
        }
    }
    try checkControlDirectory(interface: name)
    try waitForPreviousDaemon(interface: name, socketPath: socketPath)
    if LinkConfig.linkExists(name: name) {
        throw CLIError.interfaceExists(name)
    }
    // Bound before anything is made, so a port in use changes nothing.
    var metricsServer: MetricsServer?
    if let metrics {
        do {
            metricsServer = try MetricsServer.start(metrics.endpoint, logger: logger)
        } catch {
            throw CLIError.metricsListen(interface: name, metrics, error)
        }
    }
    do {
        try lifecycle?.runPreUp()
    } catch {
        throw hookFailure(interface: name, error)
    }
    let tunnel: Tunnel
    do {
        tunnel = try Tunnel(name: name, config: config, configPath: configPath, logger: logger)
    } catch {
        throw tunnelStartFailure(interface: name, config: config, error)
    }
    lifecycle?.attach(to: tunnel)
    metricsServer?.attach(tunnel)
    // Set when start-up fails after `run`: the clean-up then returns here, so the error is thrown
    // (and printed) instead of the process exiting from `onStop` first, with nothing said.
    let failedToStart = Atomic<Bool>(false)
    do {
        try tunnel.run(controlSocketPath: socketPath) { status in
            if failedToStart.load(ordering: .acquiring) { return }
            SystemdNotify.send("STOPPING=1")
            exit(status)
        }
    } catch {
        failedToStart.store(true, ordering: .releasing)
        tunnel.stop(status: 1)
        throw startFailure(interface: name, socketPath: socketPath, error)
    }
    // After the control socket: PostUp may call `wg set %i ...`, as under wg-quick.
    do {
        try lifecycle?.finishStart()
    } catch {
        failedToStart.store(true, ordering: .releasing)
        lifecycle?.undoStart()
        tunnel.stop(status: 1)
        throw hookFailure(interface: name, error)
    }
    SystemdNotify.send("READY=1")
    ready?()
    dispatchMain()
}

/// Where metrics are served and where that was said (`wg0.conf:6: MetricsListen`, `--metrics-listen`).
struct MetricsListen {
    let endpoint: Endpoint
    let origin: String
}

/// The one line for a failed `Tunnel` start: the common mistakes (a port in use, no privilege for
/// a TUN device) say their cause and what to do, not the system call that failed.
func tunnelStartFailure(interface: String, config: TunnelConfig?, _ error: any Error) -> CLIError {
    if let system = error as? SystemError {
        switch (system.call, system.errno) {
        case ("bind", EADDRINUSE):
            return .portInUse(
                interface: interface, port: config?.interface.listenPort ?? 0,
                location: config?.interface.listenPortLocation)
        case ("tunctl_tun_open", EPERM), ("tunctl_tun_open", EACCES):
            return .notPermitted(interface: interface)
        default:
            break
        }
    }
    return .startFailed(interface: interface, reason: "\(error)")
}

/// A failed PreUp/PostUp: its one line, and the command's own exit status as ours, as wg-quick
/// (whose `set -e` passes it on) does. Other failures (resolvconf) exit 1.
func hookFailure(interface: String, _ error: any Error) -> any Error {
    guard let hook = error as? HookError else { return CLIError.startFailed(interface: interface, reason: "\(error)") }
    let message = CLIError.startFailed(interface: interface, reason: "\(hook)").description
    FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
    if case .exited(let outcome) = hook.failure, outcome.status != 0 { return ExitCode(outcome.status) }
    return ExitCode(1)
}

struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring up the tunnel described by a config file, in the foreground.",
        discussion: """
            The interface is named after the file (wg0.conf → wg0). Assigns the Addresses and MTU, \
            adds a route for every peer's AllowedIPs, and serves /var/run/wireguard/NAME.sock \
            (so `wg show NAME` and `tunctl show NAME` work). wg-quick's PreUp/PostUp/PreDown/PostDown, \
            DNS (through resolvconf) and SaveConfig work as under wg-quick. SIGTERM/SIGINT: clean up \
            and exit; SIGHUP: apply the file again (addresses, MTU, ListenPort, private key, peers), \
            keeping established sessions.
            """
    )

    @Argument(help: "The config file, NAME.conf.")
    var config: String

    @Flag(name: .shortAndLong, help: "Log debug detail.")
    var verbose = false

    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://ADDRESS:PORT/metrics (loopback only, e.g. 127.0.0.1:9586).",
            discussion: "Overrides the config's MetricsListen.", valueName: "address:port"))
    var metricsListen: String?

    func run() throws {
        var flagEndpoint: Endpoint?
        if let metricsListen {
            guard let endpoint = Endpoint(loopback: metricsListen) else {
                throw CLIError.metricsListenNotLoopback(metricsListen)
            }
            flagEndpoint = endpoint
        }
        try disableCoreDumps()
        let loaded = try loadConfig(config)
        bootstrapLogging(verbose: verbose)
        let interface = loaded.config.interface
        let metrics =
            flagEndpoint.map { MetricsListen(endpoint: $0, origin: "--metrics-listen") }
            ?? interface.metricsListen.map {
                MetricsListen(
                    endpoint: $0,
                    origin: interface.metricsListenLocation.map { "\($0): MetricsListen" } ?? "MetricsListen")
            }
        try runTunnel(
            name: loaded.interfaceName.rawValue, config: loaded.config, configPath: loaded.path,
            privateKeyFile: loaded.privateKeyFile, verbose: verbose, metrics: metrics)
    }
}

/// The entry point `wg-quick` calls as `$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE` (set it to
/// "tunctl userspace"): returns once the TUN and the control socket exist, leaving the daemon
/// running in the background, configured afterwards with `wg setconf`. It exits when the link is
/// deleted (`wg-quick down`).
struct Userspace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start an unconfigured interface in the background, as wireguard-go does (for wg-quick)."
    )

    @Argument(help: "The interface name.")
    var interface: String

    @Flag(name: [.customShort("f"), .long], help: "Stay in the foreground.")
    var foreground = false

    @Flag(name: .shortAndLong, help: "Log debug detail.")
    var verbose = false

    /// Set in the background child: report readiness on stdout.
    static let readyEnvironment = "TUNCTL_READY_FD"

    func run() throws {
        guard InterfaceName(interface) != nil else { throw CLIError.badInterfaceName(interface) }
        if foreground {
            // The private key arrives later, over the control socket (`wg setconf`).
            try disableCoreDumps()
            bootstrapLogging(verbose: verbose)
            let background = ProcessInfo.processInfo.environment[Userspace.readyEnvironment] != nil
            // Detach from the caller's session so its terminal's signals do not reach the daemon.
            if background { _ = setsid() }
            try runTunnel(name: interface, config: nil, configPath: nil, verbose: verbose) {
                guard background else { return }
                // Readiness is one byte on stdout (a pipe the parent reads); then stdout is released.
                _ = write(STDOUT_FILENO, "1", 1)
                // Let go of the caller's stdout and stderr, or `$(wg-quick up X)` and pipes never
                // end; logs stay on stderr with --verbose or LOG_LEVEL set, as wireguard-go does.
                let keepStderr = verbose || ProcessInfo.processInfo.environment["LOG_LEVEL"] != nil
                let null = open("/dev/null", O_WRONLY)
                if null >= 0 {
                    dup2(null, STDOUT_FILENO)
                    if !keepStderr { dup2(null, STDERR_FILENO) }
                    close(null)
                }
            }
        }
        try startInBackground()
    }

    /// Re-runs this binary with `--foreground` in a new session, and waits (bounded) until it says
    /// it is ready or exits.
    private func startInBackground() throws {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["userspace", interface, "--foreground"] + (verbose ? ["--verbose"] : [])
        var environment = ProcessInfo.processInfo.environment
        environment[Userspace.readyEnvironment] = "stdout"
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        let readiness = Pipe()
        process.standardOutput = readiness
        // Logs: stderr is inherited, as wireguard-go's are in the foreground; in the background it
        // is whatever the caller gave (wg-quick passes its own).
        do {
            try process.run()
        } catch {
            throw CLIError.startFailed(interface: interface, reason: "\(error)")
        }
        try? readiness.fileHandleForWriting.close()
        let readEnd = readiness.fileHandleForReading.fileDescriptor
        var descriptor = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
        var byte: UInt8 = 0
        let ready = poll(&descriptor, 1, 10_000) == 1 && read(readEnd, &byte, 1) == 1
        guard ready else {
            throw CLIError.startFailed(
                interface: interface, reason: "the background daemon did not come up (see its log above)")
        }
    }
}

/// No core dump of a process that holds keys (issue 14 item 9); first thing, before any key is read.
func disableCoreDumps() throws {
    do {
        try ProcessHardening.disableCoreDumps()
    } catch {
        throw CLIError.hardeningFailed(error)
    }
}

/// The control socket's directory must exist and be writable; said up front, before the TUN and
/// the routes are set up only to be torn down again.
func checkControlDirectory(interface: String) throws {
    if mkdir(controlDirectory, 0o755) != 0 && errno != EEXIST {
        throw CLIError.controlDirectoryUnusable(interface: interface, path: controlDirectory, errno: errno)
    }
    if access(controlDirectory, W_OK | X_OK) != 0 {
        throw CLIError.controlDirectoryUnusable(interface: interface, path: controlDirectory, errno: errno)
    }
}

/// Waits, bounded by `previousDaemonWait`, while another process listens on `socketPath`: a
/// daemon still exiting (its link deleted by `wg-quick down`, its socket removed last) lets go
/// within that time; one that does not is running, perhaps in another network namespace (the
/// socket directory is shared). No socket, or a file nobody listens on (a crashed daemon's, which
/// the control server then replaces), ends the wait at once.
func waitForPreviousDaemon(interface: String, socketPath: String) throws {
    let start = DispatchTime.now().uptimeNanoseconds
    // A tunctl in another namespace holding the name is no daemon about to exit: say so at once.
    if let here = NetworkNamespace.current(), let there = ControlCommand.daemonNamespace(interface), here != there {
        throw CLIError.otherNamespace(interface: interface, socketPath: socketPath, daemon: there, caller: here)
    }
    while ControlSocketProbe.isListening(path: socketPath) {
        let waited = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        guard waited < previousDaemonWait else {
            throw CLIError.alreadyRunning(interface: interface, socketPath: socketPath)
        }
        usleep(100_000)
    }
}

/// The one-line error for a start-up that failed in `Tunnel.run` (control socket, sources).
func startFailure(interface: String, socketPath: String, _ error: any Error) -> CLIError {
    if let system = error as? SystemError, system.call.contains(socketPath) {
        return .controlSocket(interface: interface, path: socketPath, errno: system.errno)
    }
    if "\(error)".contains("served by a running daemon") {
        return .alreadyRunning(interface: interface, socketPath: socketPath)
    }
    return .startFailed(interface: interface, reason: "\(error)")
}

/// `struct ucred` of <sys/socket.h> (the kernel's, include/linux/socket.h), which Swift's Glibc
/// module leaves out (it is behind _GNU_SOURCE): what SO_PEERCRED fills in.
struct PeerCredentials {
    var pid: pid_t = 0
    var uid: uid_t = 0
    var gid: gid_t = 0
}

/// Whether some process accepts connections on a Unix socket path, without sending it anything:
/// connect succeeds (or finds the backlog full) only while a listener holds the socket.
enum ControlSocketProbe {
    static func isListening(path: String) -> Bool {
        connected(path) { _ in true } ?? false
    }

    /// The network namespace of the process listening on `path`, from its credentials as the
    /// kernel recorded them at `listen` (SO_PEERCRED) and its /proc entry; nil when nobody listens
    /// or its pid is not visible here (another pid namespace). Sends the daemon nothing, so it
    /// costs a daemon with 100,000 peers no report.
    static func listenerNamespace(path: String) -> UInt64? {
        let pid = connected(path) { fd -> pid_t? in
            var credentials = PeerCredentials()
            var length = socklen_t(MemoryLayout<PeerCredentials>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0, credentials.pid > 0 else {
                return nil
            }
            return credentials.pid
        }
        return pid.flatMap { $0 }.flatMap(NetworkNamespace.of(pid:))
    }

    /// `body` on a socket connected to `path`; nil when nothing accepts connections there.
    private static func connected<R>(_ path: String, _ body: (Int32) -> R) -> R? {
        let fd = socket(
            AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        guard path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        // EAGAIN: the backlog is full, so a listener is there (just busy).
        guard result == 0 || errno == EAGAIN || errno == EINPROGRESS else { return nil }
        return body(fd)
    }
}
