import ArgumentParser
import Glibc
import TunnelIO

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show running interfaces: keys, endpoints, handshakes, transfer and drops.",
        discussion: """
            Asks the daemon over /var/run/wireguard/IFACE.sock. Without IFACE, shows every \
            interface in this network namespace whose socket there answers (interfaces run by \
            wireguard-go are skipped: use wg show for those; the socket directory is shared by all \
            namespaces, and those of other namespaces are left out, as wg show leaves them out). \
            The MTU is the link's, as the kernel has it. Prints no secrets. --format json prints \
            one object for IFACE, or an array of them without it; --format prometheus prints the \
            Prometheus text exposition (for node_exporter's textfile collector).
            """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case text, json, prometheus
    }

    @Argument(help: "The interface, e.g. tt0. Default: all interfaces run by tunctl in this network namespace.")
    var interface: String?

    @Option(help: "text, json (the same object the daemon sends) or prometheus.")
    var format: Format = .text

    @Flag(help: "The same as --format json.")
    var json = false

    func run() throws {
        let format = json ? .json : format
        let reports: [ShowReport]
        if let interface {
            reports = [try ControlCommand.show(interface, command: "show")]
        } else {
            let here = NetworkNamespace.current()
            // Another namespace's daemons are left out before they are asked for a report (their
            // socket's credentials say where they run); the report's own netns decides the rest.
            let local = ControlCommand.runningInterfaces().filter { name in
                guard let here, let there = ControlSocketProbe.listenerNamespace(path: controlSocketPath(name)) else {
                    return true
                }
                return here == there
            }
            reports = local.compactMap {
                try? ControlCommand.show($0, command: "show", anyNamespace: true)
            }.filter { report in
                guard let here, let there = report.interface.netns else { return true }
                return here == there
            }
        }
        switch format {
        case .json where interface != nil:
            print(reports[0].json)
        case .json:
            print("[" + reports.map(\.json).joined(separator: ",") + "]")
        case .text:
            print(reports.map(\.text).joined(separator: "\n"), terminator: "")
        case .prometheus:
            print(MetricsExposition.text(reports), terminator: "")
        }
    }
}

/// What `show` and `down` share: finding a daemon's socket and asking it one thing.
enum ControlCommand {
    /// Seconds to wait for a reply. A daemon answers from its packet queue, so even under load
    /// this is generous; it only bounds a hung one.
    static let replyTimeout = 5.0

    /// Interface names with a socket in the control directory, sorted (any implementation's).
    static func runningInterfaces() -> [String] {
        guard let directory = opendir(controlDirectory) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasSuffix(".sock"), name.count > 5 { names.append(String(name.dropLast(5))) }
        }
        return names.sorted()
    }

    /// The daemon's report for `interface`; `command` names the subcommand in error messages.
    /// Unless `anyNamespace`, a daemon in another network namespace is an error: its socket is in
    /// the shared directory, but the interface is not this namespace's.
    static func show(
        _ interface: String, command: String, anyNamespace: Bool = false
    ) throws(ControlCommandError) -> ShowReport {
        let reply = try request(interface, "tunctl-show=1\n\n", command: command)
        if reply.hasPrefix("errno=") {
            throw .refused(command: command, interface: interface, reply: firstLine(of: reply))
        }
        let report: ShowReport
        do {
            report = try ShowReport(json: reply)
        } catch {
            throw .badReply(command: command, interface: interface)
        }
        if !anyNamespace, let here = NetworkNamespace.current(), let there = report.interface.netns, here != there {
            throw .otherNamespace(command: command, interface: interface, daemon: there, caller: here)
        }
        return report
    }

    /// The network namespace of the daemon serving `interface`: from the socket's credentials, or
    /// failing that (its pid not visible here) from its report. nil when that cannot be told.
    static func daemonNamespace(_ interface: String) -> UInt64? {
        guard isInterfaceName(interface) else { return nil }
        if let namespace = ControlSocketProbe.listenerNamespace(path: controlSocketPath(interface)) {
            return namespace
        }
        return (try? show(interface, command: "show", anyNamespace: true))?.interface.netns
    }

    /// Refuses, in one line, a daemon of `interface` that runs in another network namespace.
    static func requireSameNamespace(_ interface: String, command: String) throws(ControlCommandError) {
        if let here = NetworkNamespace.current(), let there = daemonNamespace(interface), here != there {
            throw .otherNamespace(command: command, interface: interface, daemon: there, caller: here)
        }
    }

    /// Sends `text` to the daemon of `interface` and returns its reply, failing with a message
    /// that says what to do when there is no such daemon or it is not tunctl.
    static func request(_ interface: String, _ text: String, command: String) throws(ControlCommandError) -> String {
        guard isInterfaceName(interface) else { throw .badName(command: command, interface) }
        let path = controlSocketPath(interface)
        let reply: String
        do {
            reply = try ControlClient.request(path: path, text, timeout: replyTimeout)
        } catch {
            throw .unreachable(command: command, interface: interface, error)
        }
        // wireguard-go closes the connection on an operation it does not know: not a tunctl daemon.
        guard !reply.isEmpty else { throw .notTunctl(command: command, interface: interface) }
        return reply
    }

    /// What the kernel takes as a link name (at most 15 bytes, no '/', no whitespace) and so
    /// also a plain file name in the control directory.
    static func isInterfaceName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 15 && name != "." && name != ".."
            && name.unicodeScalars.allSatisfy {
                $0.isASCII && $0.value > 0x20 && $0.value < 0x7f && $0 != "/" && $0 != ":"
            }
    }

    static func firstLine(of text: String) -> String {
        String(text.prefix { $0 != "\n" && $0 != "\r\n" })
    }
}

/// Failures of `show` and `down`: one line each, saying what to do.
enum ControlCommandError: Error, CustomStringConvertible {
    case badName(command: String, String)
    case unreachable(command: String, interface: String, ControlClientError)
    /// The socket answered with nothing: another implementation (wireguard-go) serves it.
    case notTunctl(command: String, interface: String)
    /// The daemon answered with an errno line instead.
    case refused(command: String, interface: String, reply: String)
    case badReply(command: String, interface: String)
    /// The socket's daemon runs in another network namespace than the caller.
    case otherNamespace(command: String, interface: String, daemon: UInt64, caller: UInt64)
    /// `down` was acknowledged but the daemon is still there.
    case stillRunning(interface: String, seconds: Int)

    var description: String {
        switch self {
        case .badName(let command, let name):
            return "tunctl \(command): \(shellQuoted(name)) is not an interface name (1-15 characters, no / or spaces)"
        case .unreachable(let command, let interface, let error):
            let path = controlSocketPath(interface)
            switch error {
            case .noSocket:
                return "tunctl \(command) \(interface): no such interface (no \(path); is tunctl up running?)"
            case .notListening:
                return "tunctl \(command) \(interface): \(path) exists but no daemon answers "
                    + "(one that crashed left it behind; remove it with rm \(path))"
            case .timedOut(_, let seconds):
                return "tunctl \(command) \(interface): the daemon did not answer within \(Int(seconds)) s "
                    + "(check its log, e.g. journalctl -u tunctl@\(interface))"
            default:
                return "tunctl \(command) \(interface): \(error)"
            }
        case .notTunctl(let command, let interface):
            return "tunctl \(command) \(interface): the interface is not run by tunctl "
                + "(its socket does not speak tunctl's requests; use wg show \(interface) or ip link del \(interface))"
        case .refused(let command, let interface, let reply):
            return "tunctl \(command) \(interface): the daemon refused the request (\(reply))"
        case .badReply(let command, let interface):
            return "tunctl \(command) \(interface): the daemon's reply is not a tunctl report "
                + "(is this tunctl version the same as the daemon's?)"
        case .otherNamespace(let command, let interface, let daemon, let caller):
            return "tunctl \(command) \(interface): \(interface) is run by tunctl in another network namespace "
                + "(\(NetworkNamespace.name(daemon)); this one is \(NetworkNamespace.name(caller))): run the command "
                + "there, e.g. ip netns exec NAME tunctl \(command) \(interface) (\(controlDirectory) is shared "
                + "by all namespaces)"
        case .stillRunning(let interface, let seconds):
            return "tunctl down \(interface): the daemon acknowledged but was still running after \(seconds) s "
                + "(check its log; ip link del \(interface) also stops it)"
        }
    }
}
