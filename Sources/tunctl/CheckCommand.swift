import ArgumentParser
import TunnelCore
import TunnelIO

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load a config file as up would, and report the first problem or a summary.",
        discussion: "Reads the key files it names and checks their permissions. Prints no secrets."
    )

    @Argument(help: "The config file, NAME.conf; NAME becomes the interface name.")
    var config: String

    func run() throws {
        try disableCoreDumps()
        let loaded = try loadConfig(config)
        let publicKey = loaded.config.privateKey.map { $0.publicKey.base64 } ?? "(unresolved)"
        let peers = loaded.config.peers.count
        print("\(loaded.interfaceName): ok, public key \(publicKey), \(peers) peer\(peers == 1 ? "" : "s")")
    }
}

/// Loads a config file as `up` does, turning a load error into the CLI's one-line error.
func loadConfig(_ path: String) throws -> LoadedConfig {
    do {
        return try ConfigLoader.load(path: path)
    } catch {
        throw CLIError.config(error)
    }
}
