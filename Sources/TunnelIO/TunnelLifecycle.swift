import Glibc
import TunnelCore
import TunnelCrypto

/// What `tunctl up` runs around a shutdown, wg-quick's order: `beforeTeardown` (PreDown,
/// SaveConfig, DNS removal) while the tunnel still runs, then the link and socket go, then
/// `afterTeardown` (PostDown). Both run on `Tunnel.stepsQueue` and may block; each returns false
/// when a step failed (it has logged why), which makes the exit status 1.
public struct ShutdownSteps: Sendable {
    public var beforeTeardown: @Sendable () -> Bool
    public var afterTeardown: @Sendable () -> Bool

    public init(beforeTeardown: @escaping @Sendable () -> Bool, afterTeardown: @escaping @Sendable () -> Bool) {
        self.beforeTeardown = beforeTeardown
        self.afterTeardown = afterTeardown
    }
}

extension Tunnel {
    /// The running configuration, for SaveConfig: the engine's private key and peers (public key,
    /// preshared key, endpoint, allowed IPs, keepalive) as they are now, the socket's port, the
    /// link's MTU and the addresses this tunnel manages (never the kernel's own fe80:: address,
    /// which it did not add); DNS, hooks, SaveConfig, Table and FwMark from `base`, the config as
    /// last loaded. Peers keep `base`'s order, new ones follow by public key; a peer whose `base`
    /// endpoint is a host name keeps it while the port is the same. `startPort` is the port bound
    /// at start-up: a config without ListenPort gets one only if it changed since.
    /// Call from any queue but `queue`.
    public func runningConfig(base: TunnelConfig, startPort: UInt16) -> TunnelConfig {
        let (addresses, port) = queue.sync { (interfaceAddresses, listenPort) }
        let mtu = (try? tun.mtu()) ?? base.interface.mtu ?? Protocol.defaultMTU
        let baseOrder = Dictionary(uniqueKeysWithValues: base.peers.enumerated().map { ($1.publicKey, $0) })
        let (privateKey, peers) = withEngine { device -> (PrivateKey?, [PeerConfig]) in
            let peers = device.peers.map { peer -> PeerConfig in
                let status = device.status(of: peer)
                let psk = device.presharedKey(of: peer)
                var endpoint = status.endpoint.map(PeerEndpoint.address)
                if let index = baseOrder[peer.publicKey], case .hostName(_, let basePort)? = base.peers[index].endpoint,
                    status.endpoint == nil || status.endpoint?.port == basePort
                {
                    endpoint = base.peers[index].endpoint
                }
                return PeerConfig(
                    publicKey: peer.publicKey, presharedKey: psk == .none() ? nil : .inline(psk), endpoint: endpoint,
                    allowedIPs: status.allowedIPs,
                    persistentKeepalive: status.persistentKeepalive == 0 ? nil : status.persistentKeepalive,
                    location: base.interface.location)
            }
            return (device.local?.privateKey, peers)
        }
        let sorted = peers.sorted { a, b in
            switch (baseOrder[a.publicKey], baseOrder[b.publicKey]) {
            case (let x?, let y?): return x < y
            case (.some, nil): return true
            case (nil, .some): return false
            case (nil, nil): return a.publicKey.base64 < b.publicKey.base64
            }
        }
        let interface = base.interface
        let keepPort = (interface.listenPort ?? 0) != 0 || port != startPort
        let keepMTU = interface.mtu != nil || mtu != Protocol.defaultMTU
        return TunnelConfig(
            interface: InterfaceConfig(
                privateKey: privateKey.map { .inline($0) } ?? base.interface.privateKey, addresses: addresses,
                listenPort: keepPort ? port : nil, mtu: keepMTU ? mtu : nil, location: interface.location,
                dns: interface.dns, hooks: interface.hooks, saveConfig: interface.saveConfig, table: interface.table,
                fwMark: interface.fwMark, metricsListen: interface.metricsListen,
                saveConfigLocation: interface.saveConfigLocation),
            peers: sorted)
    }
}

/// Writes a config file the way SaveConfig needs: the whole text to a new file in the same
/// directory (mode 0600 from creation, so no moment of a readable key), fsync, rename over the
/// target (the target's symlink followed, as wg-quick's readlink -f does), fsync the directory.
/// A reader sees the old file or the new one, never half of one.
public enum ConfigFileWriter {
    /// `text` holds keys: it is zeroed afterwards, so it must be a string made at run time and
    /// held by the caller alone (e.g. `TunnelConfig.text`), never a literal.
    public static func write(_ text: inout String, to path: String) throws {
        defer { ConfigLoader.wipe(&text) }
        let (target, directory) = placement(of: path)
        let base = target.split(separator: "/").last.map(String.init) ?? target
        let temporary = "\(directory == "/" ? "" : directory)/.\(base).tmp.\(getpid())"
        let fd = try Syscall.check("open \(temporary)") {
            open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
        var done = false
        defer {
            if !done { unlink(temporary) }
        }
        do {
            try text.withUTF8 { bytes in
                var offset = 0
                while offset < bytes.count {
                    let written = try Syscall.check("write \(temporary)") {
                        Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                    }
                    offset += written
                }
            }
            _ = try Syscall.check("fchmod \(temporary)") { fchmod(fd, 0o600) }
            _ = try Syscall.check("fsync \(temporary)") { fsync(fd) }
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        _ = try Syscall.check("rename \(temporary) \(target)") { rename(temporary, target) }
        done = true
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }
}

extension ConfigFileWriter {
    /// Where `write` puts `path`'s new text: the file it names (a symlink followed, as wg-quick's
    /// readlink -f does) and the directory the new file is made in and renamed within.
    public static func placement(of path: String) -> (target: String, directory: String) {
        var target = path
        if let resolved = realpath(path, nil) {
            target = String(cString: resolved)
            free(resolved)
        }
        guard let slash = target.lastIndex(of: "/") else { return (target, ".") }
        return (target, slash == target.startIndex ? "/" : String(target[..<slash]))
    }
}

/// Which step of a reload failed, and why (`reload failed, keeping the running configuration:
/// ListenPort = 51840: bind failed: Address already in use (errno 98)`).
struct ReloadError: Error, CustomStringConvertible {
    let step: String
    let underlying: any Error

    init(step: String, _ underlying: any Error) {
        self.step = step
        self.underlying = underlying
    }

    var description: String { "\(step): \(underlying)" }
}

/// What a reload compares the file with: the [Interface] settings as last applied, without the
/// private key (its public key stands for it), so no extra copy of a key stays in memory.
struct AppliedInterface {
    let listenPort: UInt16?
    let mtu: Int?
    let publicKey: PublicKey?

    init(_ interface: InterfaceConfig) {
        listenPort = interface.listenPort
        mtu = interface.mtu
        publicKey = interface.privateKey.key?.publicKey
    }
}
