import Dispatch
import Foundation
import Logging
import Synchronization
import TunnelCore
import TunnelCrypto
import TunnelIO

/// wg-quick's additions around a tunnel's life under `tunctl up`, in wg-quick's order:
///
///     up:   PreUp, (link, addresses, MTU, routes, control socket), DNS, PostUp
///     down: PreDown, SaveConfig, DNS removed, (link and socket go), PostDown
///
/// Hooks and resolvconf run on the main thread at start-up and on the tunnel's steps queue at
/// shutdown, never on the queues that run timers or packets. A failed PreUp/PostUp/DNS stops the
/// start and undoes it (wg-quick's del_if: DNS removed, link deleted; no down hooks). At
/// shutdown a failed step is logged and the rest still runs; the exit status is then 1.
///
/// `@unchecked Sendable` is sound: `config` and `startPort` are behind a Mutex, the flags atomic,
/// the rest immutable.
final class QuickLifecycle: @unchecked Sendable {
    let interface: String
    let configPath: String
    let logger: Logger
    /// The config as last loaded (start-up, then each reload), without its keys: the hooks, DNS
    /// and SaveConfig in force, and the peers' order and host names for SaveConfig.
    private let state: Mutex<State>

    private struct State {
        var config: TunnelConfig
        var startPort: UInt16 = 0
        /// The `PrivateKeyFile` of the config and the public key of the key it held: SaveConfig
        /// writes the reference back while the running key is still that one.
        var keyFile: (reference: KeyFileReference, publicKey: PublicKey)?

        init(_ config: TunnelConfig, keyFile: KeyFileReference?) {
            // Without its keys: the engine holds the one copy; SaveConfig takes them from there.
            self.config = config.withoutSecrets
            if let keyFile, let publicKey = config.privateKey?.publicKey { self.keyFile = (keyFile, publicKey) }
        }
    }
    /// resolvconf, found on PATH up front when the config has DNS (or when a reload adds DNS).
    private let resolvconf: Mutex<String?>
    /// resolvconf -a succeeded: remove the record at exit.
    private let dnsSet = Atomic<Bool>(false)
    /// PostUp finished: the down hooks and SaveConfig run at exit.
    private let started = Atomic<Bool>(false)
    /// Where DNS changes from a reload run (resolvconf may block).
    private let dnsQueue = DispatchQueue(label: "tunctl.dns")

    /// Checks up front what the start will need, before anything is created: resolvconf when the
    /// config has DNS (wg-quick would find out only after PreUp and the link).
    init(
        interface: String, config: TunnelConfig, privateKeyFile: KeyFileReference?, configPath: String,
        logger: Logger
    ) throws {
        self.interface = interface
        self.configPath = configPath
        self.logger = logger
        state = Mutex(State(config, keyFile: privateKeyFile))
        resolvconf = Mutex(nil)
        if !config.interface.dns.isEmpty { _ = try findResolvconf(for: config.interface.dns) }
        if config.interface.saveConfig {
            try QuickLifecycle.checkWritable(
                configPath, location: config.interface.saveConfigLocation ?? config.interface.location,
                interface: interface)
        }
    }

    /// SaveConfig writes a new file beside the config and renames it over: refused at start when
    /// that directory cannot be written (a read-only file system, as tunctl@.service's
    /// ProtectSystem=strict makes /etc), rather than found out at exit, when the running
    /// configuration would be lost with only a log line to say so.
    private static func checkWritable(
        _ path: String, location: ConfigLocation, interface: String
    ) throws(SaveConfigError) {
        let directory = ConfigFileWriter.placement(of: path).directory
        guard access(directory, W_OK) != 0 else { return }
        throw SaveConfigError(location: location, directory: directory, errno: errno, interface: interface)
    }

    private var config: TunnelConfig { state.withLock { $0.config } }

    // MARK: Start-up (main thread)

    func runPreUp() throws(HookError) { try run(config.interface.hooks.preUp, .preUp) }

    /// After `Tunnel.init`: shutdown steps and reloads go through here from now on.
    func attach(to tunnel: Tunnel) {
        state.withLock { $0.startPort = tunnel.listenPort }
        tunnel.setLifecycle(
            steps: ShutdownSteps(
                beforeTeardown: { [self] in beforeTeardown(tunnel) }, afterTeardown: { [self] in afterTeardown() }),
            onReload: { [self] loaded in reloaded(loaded) })
    }

    /// DNS, then PostUp; throws the first failure (the caller undoes the start).
    func finishStart() throws {
        try setDNS(config.interface.dns)
        try run(config.interface.hooks.postUp, .postUp)
        started.store(true, ordering: .releasing)
        // Until here a stop undoes the start without down hooks, as wg-quick's trap does.
        if !config.interface.hooks.isEmpty || !config.interface.dns.isEmpty {
            logger.info("\(interface): started; PreDown and PostDown will run at exit")
        }
    }

    /// After a failed start: the DNS record goes (the caller deletes the link).
    func undoStart() { _ = unsetDNS() }

    // MARK: Shutdown (steps queue)

    private func beforeTeardown(_ tunnel: Tunnel) -> Bool {
        var ok = true
        if started.load(ordering: .acquiring) {
            ok = runLogged(config.interface.hooks.preDown, .preDown)
            if config.interface.saveConfig { ok = save(tunnel) && ok }
        }
        return unsetDNS() && ok
    }

    private func afterTeardown() -> Bool {
        guard started.load(ordering: .acquiring) else { return true }
        return runLogged(config.interface.hooks.postDown, .postDown)
    }

    /// Writes the running configuration over the config file (SaveConfig = true).
    private func save(_ tunnel: Tunnel) -> Bool {
        let (base, startPort, keyFile) = state.withLock { ($0.config, $0.startPort, $0.keyFile) }
        var running = tunnel.runningConfig(base: base, startPort: startPort)
        guard let key = running.privateKey else {
            logger.error("\(interface): SaveConfig: the interface has no private key now; \(configPath) left as it was")
            return false
        }
        if let keyFile, key.publicKey == keyFile.publicKey {
            running = TunnelConfig(
                interface: running.interface.with(privateKey: .file(keyFile.reference)), peers: running.peers)
        }
        var text = running.text(header: [
            "Written by tunctl at exit (SaveConfig = true): the running configuration; comments are not kept."
        ])
        do {
            try ConfigFileWriter.write(&text, to: configPath)
            logger.info("\(interface): saved the running configuration to \(configPath)")
            return true
        } catch {
            logger.error("\(interface): SaveConfig: cannot write \(configPath): \(error)")
            return false
        }
    }

    // MARK: Reload (tunnel queue → dnsQueue)

    private func reloaded(_ loaded: LoadedConfig) {
        let new = loaded.config
        let old = state.withLock { state -> TunnelConfig in
            let old = state.config
            let startPort = state.startPort
            state = State(new, keyFile: loaded.privateKeyFile)
            state.startPort = startPort
            return old
        }
        guard old.interface.dns != new.interface.dns else { return }
        dnsQueue.async { [self] in
            do {
                if new.interface.dns.isEmpty {
                    _ = unsetDNS()
                } else {
                    try setDNS(new.interface.dns)
                }
            } catch {
                logger.error("\(interface): reload: DNS not changed: \(error)")
            }
        }
    }

    // MARK: Hooks and resolvconf

    private func run(_ hooks: [Hook], _ kind: HookError.Kind) throws(HookError) {
        for hook in hooks {
            logger.info(
                "\(interface): \(kind.rawValue): \(ProcessRunner.hidingKeys(hook.command(interface: interface)))")
            try hook.run(kind, interface: interface)
        }
    }

    /// Runs `hooks` until one fails; logs the failure. True when all succeeded.
    private func runLogged(_ hooks: [Hook], _ kind: HookError.Kind) -> Bool {
        do {
            try run(hooks, kind)
            return true
        } catch {
            logger.error("\(interface): \(error)")
            return false
        }
    }

    /// The name wg-quick gives resolvconf: the interface behind the first `NAME*` line of
    /// /etc/resolvconf/interface-order as a prefix (Debian's resolvconf: `tun.`), else bare.
    var resolvconfName: String {
        guard let order = try? String(contentsOfFile: "/etc/resolvconf/interface-order", encoding: .utf8) else {
            return interface
        }
        for line in order.split(separator: "\n") {
            let text = line.trimmingCharacters(in: .whitespaces)
            guard text.hasSuffix("*") else { continue }
            let stem = text.dropLast()
            if !stem.isEmpty, stem.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) {
                return "\(stem).\(interface)"
            }
        }
        return interface
    }

    /// resolvconf's path, looked up once; throws naming it and the DNS line when it is missing.
    private func findResolvconf(for dns: DNSSettings) throws(DNSError) -> String {
        let found = resolvconf.withLock { path -> String? in
            if path == nil { path = ProcessRunner.find("resolvconf") }
            return path
        }
        guard let found else { throw .resolvconfMissing(location: dns.location) }
        return found
    }

    private func setDNS(_ dns: DNSSettings) throws {
        guard !dns.isEmpty else { return }
        let resolvconf = try findResolvconf(for: dns)
        let name = resolvconfName
        logger.info("\(interface): DNS: resolvconf -a \(name) -m 0 -x")
        let outcome = try ProcessRunner.run(
            resolvconf, ["resolvconf", "-a", name, "-m", "0", "-x"], input: dns.resolvConfText,
            timeout: ProcessRunner.defaultTimeout)
        guard outcome.status == 0, !outcome.timedOut else {
            throw DNSError.resolvconfFailed(location: dns.location, command: "resolvconf -a \(name)", outcome: outcome)
        }
        dnsSet.store(true, ordering: .releasing)
    }

    /// `resolvconf -d NAME -f` if a record was added; true unless that failed.
    private func unsetDNS() -> Bool {
        guard dnsSet.exchange(false, ordering: .acquiringAndReleasing), let resolvconf = resolvconf.withLock({ $0 })
        else { return true }
        let name = resolvconfName
        logger.info("\(interface): DNS: resolvconf -d \(name) -f")
        do {
            let outcome = try ProcessRunner.run(
                resolvconf, ["resolvconf", "-d", name, "-f"], timeout: ProcessRunner.defaultTimeout)
            guard outcome.status == 0, !outcome.timedOut else {
                logger.error(
                    "\(interface): resolvconf -d \(name) -f failed with exit status \(outcome.status): \(outcome.stderrLine)"
                )
                return false
            }
            return true
        } catch {
            logger.error("\(interface): resolvconf -d \(name) -f: \(error)")
            return false
        }
    }
}

/// SaveConfig = true with a config directory that cannot be written.
struct SaveConfigError: Error, CustomStringConvertible {
    let location: ConfigLocation
    let directory: String
    let errno: Int32
    let interface: String

    var description: String {
        "\(location): [Interface] SaveConfig = true, but \(directory) cannot be written here "
            + "(\(String(cString: strerror(errno)))), so the running configuration could not be saved at exit: "
            + "remove SaveConfig, or let tunctl write there (under tunctl@.service: `systemctl edit tunctl@\(interface)`, "
            + "[Service] ReadWritePaths=\(directory))"
    }
}

/// Why DNS could not be set, one line from the config's DNS line on (the caller says whether it
/// was a start or a reload).
enum DNSError: Error, CustomStringConvertible {
    case resolvconfMissing(location: ConfigLocation?)
    case resolvconfFailed(location: ConfigLocation?, command: String, outcome: ProcessRunner.Outcome)

    var description: String {
        switch self {
        case .resolvconfMissing(let location):
            return "\(DNSError.lead(location)): resolvconf is not installed or not on PATH "
                + "(install resolvconf or openresolv, or remove the DNS line and set DNS another way)"
        case .resolvconfFailed(let location, let command, let outcome):
            let how =
                outcome.timedOut
                ? "did not finish within \(Int(ProcessRunner.defaultTimeout)) s and was killed"
                : "failed with exit status \(outcome.status)"
            let said = outcome.stderrLine
            return "\(DNSError.lead(location)): \(command) \(how)" + (said.isEmpty ? "" : ": \(said)")
        }
    }

    private static func lead(_ location: ConfigLocation?) -> String {
        location.map { "\($0): [Interface] DNS" } ?? "DNS"
    }
}
