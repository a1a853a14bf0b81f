import ArgumentParser
import Glibc
import TunnelIO

struct Down: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop the tunctl daemon serving IFACE; it removes its routes, link and socket.",
        discussion: """
            Returns once the daemon's socket is gone, or fails after \(Int(Down.stopTimeout)) s. \
            For an interface run by wireguard-go use ip link del IFACE (or wg-quick down).
            """
    )

    /// How long the daemon gets to tear down after acknowledging (routes, link, socket).
    static let stopTimeout = 10.0

    @Argument(help: "The interface to stop, e.g. tt0.")
    var interface: String

    func run() throws {
        // Never stop another namespace's interface that happens to share the name (and so the
        // socket path).
        try ControlCommand.requireSameNamespace(interface, command: "down")
        let reply = try ControlCommand.request(interface, "tunctl-down=1\n\n", command: "down")
        guard reply.hasPrefix("errno=0\n") else {
            throw ControlCommandError.refused(
                command: "down", interface: interface, reply: ControlCommand.firstLine(of: reply))
        }
        // The daemon unlinks its socket as its last clean-up step; poll for that, bounded.
        let path = controlSocketPath(interface)
        let step: useconds_t = 50_000
        var waited = 0.0
        while access(path, F_OK) == 0 {
            guard waited < Down.stopTimeout else {
                throw ControlCommandError.stillRunning(interface: interface, seconds: Int(Down.stopTimeout))
            }
            usleep(step)
            waited += Double(step) / 1e6
        }
    }
}
