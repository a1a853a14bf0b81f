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
        let loaded: LoadedConfig
        do {
            loaded = try ConfigLoader.load(path: config)
        } catch {
            throw CLIError.config(error)
        }
        let publicKey = loaded.config.privateKey.map { $0.publicKey.base64 } ?? "(unresolved)"
        let peers = loaded.config.peers.count
        print("\(loaded.interfaceName): ok, public key \(publicKey), \(peers) peer\(peers == 1 ? "" : "s")")
    }
}
