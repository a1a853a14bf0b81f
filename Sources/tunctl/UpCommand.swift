import ArgumentParser
import Dispatch
import Foundation
import Logging
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

/// Runs a tunnel in this process until it stops; never returns.
func runTunnel(
    name: String, config: TunnelConfig?, configPath: String?, verbose: Bool, ready: (() -> Void)? = nil
) throws -> Never {
    let logger = Logger(label: "tunctl.\(name)")
    if LinkConfig.linkExists(name: name) {
        throw CLIError.interfaceExists(name)
    }
    let tunnel: Tunnel
    do {
        tunnel = try Tunnel(name: name, config: config, configPath: configPath, logger: logger)
    } catch {
        throw CLIError.startFailed(interface: name, reason: "\(error)")
    }
    do {
        try tunnel.run(controlSocketPath: controlSocketPath(name)) { status in
            SystemdNotify.send("STOPPING=1")
            exit(status)
        }
    } catch {
        tunnel.stop(status: 1)
        throw CLIError.startFailed(interface: name, reason: "\(error)")
    }
    SystemdNotify.send("READY=1")
    ready?()
    dispatchMain()
}

struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring up the tunnel described by a config file, in the foreground.",
        discussion: """
            The interface is named after the file (wg0.conf → wg0). Assigns the Addresses and MTU, \
            adds a route for every peer's AllowedIPs, and serves /var/run/wireguard/NAME.sock \
            (so `wg show NAME` and `tunctl show NAME` work). SIGTERM/SIGINT: clean up and exit; \
            SIGHUP: reload peers from the file, keeping established sessions.
            """
    )

    @Argument(help: "The config file, NAME.conf.")
    var config: String

    @Flag(name: .shortAndLong, help: "Log debug detail.")
    var verbose = false

    func run() throws {
        let loaded = try loadConfig(config)
        bootstrapLogging(verbose: verbose)
        try runTunnel(
            name: loaded.interfaceName.rawValue, config: loaded.config, configPath: loaded.path, verbose: verbose)
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
