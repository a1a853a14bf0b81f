import Foundation
import Glibc
import TunnelCore

/// A failed link configuration step: which `ip` command ran and what it said.
public struct LinkConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// No `ip` executable in /sbin, /usr/sbin, /bin, /usr/bin or PATH (install iproute2).
        case ipNotFound
        /// `ip` could not be started.
        case launchFailed(String)
        /// `ip` exited with this status; `message` is the first line it wrote to stderr.
        case failed(status: Int32, message: String)
        /// An interface name the kernel would refuse (empty, over 15 bytes, '/', ':', whitespace).
        case invalidInterfaceName
    }

    /// The command as run, e.g. `ip -4 address add 10.0.0.1/24 dev wg0`.
    public let command: String
    public let reason: Reason

    public init(command: String, reason: Reason) {
        self.command = command
        self.reason = reason
    }

    public var description: String {
        switch reason {
        case .ipNotFound:
            return "\(command): iproute2's ip not found; install iproute2"
        case .launchFailed(let why):
            return "\(command): could not start: \(why)"
        case .failed(let status, let message):
            return "\(command) failed (exit \(status)): \(message)"
        case .invalidInterfaceName:
            return "\(command): invalid interface name"
        }
    }
}

/// Interface configuration done the way wg-quick does it: by running iproute2's `ip`.
///
/// Each call blocks until `ip` exits (milliseconds); call these from setup code, not from the
/// packet path. Needs CAP_NET_ADMIN.
public enum LinkConfig {
    /// `ip address add PREFIX dev IFACE`: the address with its prefix length, e.g. 10.0.0.1/24.
    public static func addAddress(_ prefix: IPPrefix, interface: String) throws(LinkConfigError) {
        try ip(family(prefix), "address", "add", prefix.description, "dev", interface, interface: interface)
    }

    /// `ip address del PREFIX dev IFACE`.
    public static func deleteAddress(_ prefix: IPPrefix, interface: String) throws(LinkConfigError) {
        try ip(family(prefix), "address", "del", prefix.description, "dev", interface, interface: interface)
    }

    /// `ip link set dev IFACE mtu MTU`.
    public static func setMTU(_ mtu: Int, interface: String) throws(LinkConfigError) {
        try ip("link", "set", "dev", interface, "mtu", String(mtu), interface: interface)
    }

    /// `ip link set dev IFACE up`.
    public static func setUp(interface: String) throws(LinkConfigError) {
        try ip("link", "set", "dev", interface, "up", interface: interface)
    }

    /// `ip route add PREFIX dev IFACE`, with host bits cleared (ip refuses them otherwise).
    public static func addRoute(_ prefix: IPPrefix, interface: String) throws(LinkConfigError) {
        try ip(family(prefix), "route", "add", prefix.masked.description, "dev", interface, interface: interface)
    }

    /// `ip route del PREFIX dev IFACE`.
    public static func deleteRoute(_ prefix: IPPrefix, interface: String) throws(LinkConfigError) {
        try ip(family(prefix), "route", "del", prefix.masked.description, "dev", interface, interface: interface)
    }

    /// `ip link delete dev NAME`.
    public static func deleteLink(name: String) throws(LinkConfigError) {
        try ip("link", "delete", "dev", name, interface: name)
    }

    /// Whether an interface called `name` exists (`if_nametoindex`; no process is started).
    public static func linkExists(name: String) -> Bool {
        guard isValidInterfaceName(name) else { return false }
        return if_nametoindex(name) != 0
    }

    /// The kernel's rule (`dev_valid_name`) plus no leading '-', so a name is never read as an option.
    static func isValidInterfaceName(_ name: String) -> Bool {
        let bytes = name.utf8
        guard !bytes.isEmpty, bytes.count < 16, name != ".", name != "..", bytes.first != UInt8(ascii: "-")
        else { return false }
        return !bytes.contains {
            $0 == 0 || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7f
        }
    }

    private static func family(_ prefix: IPPrefix) -> String {
        prefix.address.isV4 ? "-4" : "-6"
    }

    /// Where `ip` lives: the usual sbin/bin directories first, then PATH.
    static let ipPath: String? = {
        var candidates = ["/sbin/ip", "/usr/sbin/ip", "/bin/ip", "/usr/bin/ip"]
        if let path = ProcessInfo.processInfo.environment["PATH"] {
            candidates += path.split(separator: ":").map { "\($0)/ip" }
        }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    private static func ip(_ arguments: String..., interface: String) throws(LinkConfigError) {
        let command = (["ip"] + arguments).joined(separator: " ")
        guard isValidInterfaceName(interface) else {
            throw LinkConfigError(command: command, reason: .invalidInterfaceName)
        }
        guard let executable = ipPath else { throw LinkConfigError(command: command, reason: .ipNotFound) }

        // posix_spawn and waitpid, not Foundation's Process: Process needs a CFRunLoop wake-up
        // socket pair that cannot be made in a namespace whose loopback is down, and then hangs.
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else {
            throw LinkConfigError(command: command, reason: .launchFailed("pipe: errno \(errno)"))
        }
        let (readEnd, writeEnd) = (pipeFDs[0], pipeFDs[1])
        // pipe2 is hidden from Swift's Glibc: mark both ends close-on-exec right away; the child
        // gets the write end only as its stderr (dup2 clears the flag on the copy).
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        defer { Glibc.close(readEnd) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, STDERR_FILENO)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        Glibc.close(writeEnd)
        guard spawned == 0 else {
            throw LinkConfigError(command: command, reason: .launchFailed("posix_spawn: errno \(spawned)"))
        }
        // Read to end of file before waiting, so a chatty ip cannot block on a full pipe.
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(readEnd, $0.baseAddress, $0.count) }
            if count > 0 {
                output += chunk[0..<count]
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS, which Swift does not import (they are macros).
        let exited = status & 0x7f == 0
        let exitStatus = (status >> 8) & 0xff
        guard exited, exitStatus == 0 else {
            let text = String(decoding: output, as: UTF8.self)
            let firstLine = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            throw LinkConfigError(
                command: command,
                reason: .failed(status: exited ? exitStatus : -1, message: firstLine.isEmpty ? "no message" : firstLine)
            )
        }
    }
}
