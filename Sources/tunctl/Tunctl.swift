import ArgumentParser
import TunnelIO

/// The command tree. Each subcommand parses its arguments, calls into TunnelIO/TunnelCore, and
/// reports failure by throwing a `CLIError`; ArgumentParser prints it as one line
/// (`Error: ...`) on stderr and exits 1. To add a command, add its type to `subcommands`.
@main
struct Tunctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunctl",
        abstract: "A userspace WireGuard-protocol tunnel.",
        subcommands: [
            Keygen.self,
            Genkey.self,
            Pubkey.self,
            Genpsk.self,
            Check.self,
            Show.self,
            Down.self,
            Up.self,
            Userspace.self,
            BenchCrypto.self,
        ]
    )
}

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
        }
    }
}
