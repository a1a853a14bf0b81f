import ArgumentParser
import Glibc
import TunnelCore
import TunnelIO

/// The command tree. Each subcommand parses its arguments, calls into TunnelIO/TunnelCore, and
/// reports failure by throwing a `CLIError`; ArgumentParser prints it as one line
/// (`Error: ...`) on stderr and exits 1. To add a command, add its type to `subcommands`.
@main
struct Tunctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunctl",
        abstract: "A userspace WireGuard-protocol tunnel.",
        version: tunctlVersionLine,
        subcommands: [
            Keygen.self,
            Genkey.self,
            Pubkey.self,
            Genpsk.self,
            Check.self,
            Show.self,
            BenchDataplane.self,
            Down.self,
            Up.self,
            Userspace.self,
            BenchCrypto.self,
        ]
    )
}

/// tunctl's release number; `tunctl --version` prints it with the commit it was built from.
let tunctlVersion = "0.9.0"

/// "tunctl 0.9.0 (commit 1a2b3c4d5e6f)"; the commit is "unknown" when built without git.
let tunctlVersionLine = "tunctl \(tunctlVersion) (commit \(buildCommit))"

/// Everything the CLI itself can report. Each description is one line a person can act on and
/// never holds key material.
enum CLIError: Error, CustomStringConvertible {
    /// A key name that would not make a plain file name in the key directory.
    case badKeyName(String)
    /// Refusing to replace an existing file without `--force`.
    case fileExists(path: String)
    case notADirectory(path: String)
    /// A system call on `path` failed.
    case system(path: String, SystemError)
    /// stdin did not hold a base64 private key (its contents are not repeated).
    case badKeyInput
    case config(ConfigLoadError)
    case interfaceExists(String)
    case badInterfaceName(String)
    case startFailed(interface: String, reason: String)
    /// Another process still serves the interface's control socket after `previousDaemonWait`.
    case alreadyRunning(interface: String, socketPath: String)
    /// The control socket's directory cannot be made or written.
    case controlDirectoryUnusable(interface: String, path: String, errno: Int32)
    /// The control socket itself cannot be made (e.g. no inode left on that file system).
    case controlSocket(interface: String, path: String, errno: Int32)
    case hardeningFailed(SystemError)
    /// The UDP port is taken; `location` is the config's ListenPort line when it set the port.
    case portInUse(interface: String, port: UInt16, location: ConfigLocation?)
    /// Creating the TUN device was refused: not root, no CAP_NET_ADMIN.
    case notPermitted(interface: String)
    case metricsListenNotLoopback(String)
    /// The interface's control socket is served by tunctl in another network namespace.
    case otherNamespace(interface: String, socketPath: String, daemon: UInt64, caller: UInt64)
    case metricsListen(interface: String, MetricsListen, any Error)

    var description: String {
        switch self {
        case .badKeyName(let name):
            return "\(shellQuoted(name)) is not a key name (use 1-64 characters of a-z A-Z 0-9 _ = + . -, "
                + "not starting with . or -, e.g. wg0 or laptop)"
        case .fileExists(let path):
            return "\(shellQuoted(path)) already exists (use --force to replace it, or pick another name)"
        case .notADirectory(let path):
            return "\(shellQuoted(path)) is not a directory (pass --dir with a directory for the keys)"
        case .system(let path, let error):
            return "\(shellQuoted(path)): \(error)"
        case .badKeyInput:
            return "stdin is not a valid base64 private key of 32 bytes "
                + "(pipe in a key made by tunctl genkey or wg genkey, e.g. tunctl pubkey < Keys/wg0.key)"
        case .config(let error):
            return error.description
        case .interfaceExists(let name):
            return
                "interface \(name) already exists (stop it with tunctl down \(name), or delete it: ip link del \(name))"
        case .badInterfaceName(let name):
            return "\(shellQuoted(name)) is not an interface name (1-15 characters of a-z A-Z 0-9 _ = + . -)"
        case .startFailed(let name, let reason):
            return "cannot bring up \(name): \(reason)"
        case .alreadyRunning(let name, let socketPath):
            return "cannot bring up \(name): already running: another daemon (tunctl or wireguard-go) still "
                + "serves \(shellQuoted(socketPath)) after \(Int(previousDaemonWait)) s, perhaps in another network "
                + "namespace (stop it there with tunctl down \(name) or ip link del \(name), or pick another name)"
        case .controlDirectoryUnusable(let name, let path, let code):
            return "cannot bring up \(name): \(shellQuoted(path)): \(errorText(code)) "
                + "(\(CLIError.advice(forControlDirectory: path, code)))"
        case .controlSocket(let name, let path, let code):
            return "cannot bring up \(name): cannot create \(shellQuoted(path)): \(errorText(code)) "
                + "(\(CLIError.advice(forControlDirectory: controlDirectory, code)))"
        case .portInUse(let name, let port, let location?):
            return "cannot bring up \(name): UDP port \(port) is in use (\(location): ListenPort = \(port); "
                + "pick another ListenPort, or find what holds it: ss -ulpn 'sport = :\(port)')"
        case .portInUse(let name, let port, nil):
            return "cannot bring up \(name): UDP port \(port) is in use (set another ListenPort, "
                + "or find what holds it: ss -ulpn 'sport = :\(port)')"
        case .notPermitted(let name):
            return "cannot bring up \(name): creating a TUN device needs root or CAP_NET_ADMIN "
                + "(run it as root, e.g. sudo tunctl up, or under the shipped systemd unit)"
        case .otherNamespace(let name, let path, let daemon, let caller):
            return "cannot bring up \(name): already running in another network namespace "
                + "(\(NetworkNamespace.name(daemon)); this one is \(NetworkNamespace.name(caller))): \(shellQuoted(path)) "
                + "is served by tunctl there, and that directory is shared by all namespaces (pick another name, "
                + "or stop it there: ip netns exec NAME tunctl down \(name))"
        case .metricsListenNotLoopback(let text):
            return "--metrics-listen \(shellQuoted(text)): not a loopback address and port "
                + "(use 127.0.0.1:PORT or [::1]:PORT, e.g. 127.0.0.1:9586; put a proxy in front to publish metrics)"
        case .metricsListen(let name, let metrics, let error):
            var advice = "pick another port, or find what holds it: ss -ltnp 'sport = :\(metrics.endpoint.port)'"
            if let code = (error as? MetricsServerError)?.errno, code != EADDRINUSE {
                advice = "check the address is on this host's loopback, e.g. ip addr show lo"
            }
            return "cannot bring up \(name): \(metrics.origin) = \(metrics.endpoint): \(error) (\(advice))"
        case .hardeningFailed(let error):
            return
                "cannot turn off core dumps: \(error) (a core dump would hold the keys; run on Linux 2.6.13 or later)"
        }
    }
}

extension CLIError {
    /// What to do when the control socket directory refuses a new socket.
    static func advice(forControlDirectory path: String, _ code: Int32) -> String {
        switch code {
        case EROFS: return "\(path) is on a read-only file system; make it writable, e.g. mount a tmpfs there"
        case ENOSPC, EDQUOT: return "the file system holding \(path) is full; free space or inodes there"
        case EACCES, EPERM: return "run tunctl as root, or give it write access to \(path)"
        case ENOTDIR, EEXIST: return "\(path) must be a directory"
        default: return "check \(path)"
        }
    }
}

/// The C library's text for an errno value, e.g. "Read-only file system".
func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }
