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

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        let errors = Pipe()
        process.standardError = errors
        do {
            try process.run()
        } catch {
            throw LinkConfigError(command: command, reason: .launchFailed(String(describing: error)))
        }
        // Read to end of file before waiting, so a chatty ip cannot block on a full pipe.
        let output = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let text = String(decoding: output, as: UTF8.self)
            let firstLine = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            let status = process.terminationReason == .exit ? process.terminationStatus : -1
            throw LinkConfigError(
                command: command, reason: .failed(status: status, message: firstLine.isEmpty ? "no message" : firstLine)
            )
        }
    }
}
