import TunnelCrypto

// A config back to wg-quick's text, for SaveConfig. The output parses back to the same model
// (ConfigTests checks the round trip). Comments are not kept, as wg-quick keeps none.

extension TunnelConfig {
    /// The config as text: `[Interface]` (keys in the order wg-quick's save_config writes them,
    /// hooks last), then each `[Peer]`. Holds the private and preshared keys when they are inline
    /// (a key file stays a `...File =` line): write it only to a file of mode 0600, and wipe it.
    public func text(header: [String] = []) -> String {
        var lines = header.map { "# \($0)" }
        lines.append("[Interface]")
        switch interface.privateKey {
        case .inline(let key): lines.append("PrivateKey = \(key.base64)")
        case .file(let reference): lines.append("PrivateKeyFile = \(reference.path)")
        }
        for address in interface.addresses { lines.append("Address = \(address)") }
        if let port = interface.listenPort { lines.append("ListenPort = \(port)") }
        if let mtu = interface.mtu { lines.append("MTU = \(mtu)") }
        let dns = interface.dns.servers.map(\.description) + interface.dns.searchDomains
        if !dns.isEmpty { lines.append("DNS = \(dns.joined(separator: ", "))") }
        if let table = interface.table { lines.append("Table = \(table)") }
        if let mark = interface.fwMark { lines.append("FwMark = 0x\(String(mark, radix: 16))") }
        if interface.saveConfig { lines.append("SaveConfig = true") }
        if let metrics = interface.metricsListen { lines.append("MetricsListen = \(metrics)") }
        let hooks = interface.hooks
        for (key, list) in [("PreUp", hooks.preUp), ("PostUp", hooks.postUp), ("PreDown", hooks.preDown)] {
            for hook in list { lines.append("\(key) = \(hook.command)") }
        }
        for hook in hooks.postDown { lines.append("PostDown = \(hook.command)") }
        for peer in peers {
            lines.append("")
            lines.append("[Peer]")
            lines.append("PublicKey = \(peer.publicKey.base64)")
            switch peer.presharedKey {
            case .inline(let key)?: lines.append("PresharedKey = \(key.base64)")
            case .file(let reference)?: lines.append("PresharedKeyFile = \(reference.path)")
            case nil: break
            }
            if let endpoint = peer.endpoint { lines.append("Endpoint = \(endpoint)") }
            if !peer.allowedIPs.isEmpty {
                lines.append("AllowedIPs = \(peer.allowedIPs.map(\.description).joined(separator: ", "))")
            }
            if let keepalive = peer.persistentKeepalive { lines.append("PersistentKeepalive = \(keepalive)") }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

extension TunnelConfig {
    /// This config without its keys: no preshared keys, and the private key replaced by a
    /// reference to a file named `(not kept)` that is never read. For code that keeps a config
    /// for its other settings (hooks, DNS, the peers' order) and must not hold another copy of
    /// a key in memory.
    public var withoutSecrets: TunnelConfig {
        let placeholder = KeyFileReference(
            path: "(not kept)", location: interface.location, section: .interface, key: .privateKeyFile)
        return TunnelConfig(
            interface: interface.with(privateKey: .file(placeholder)),
            peers: peers.map { peer in
                PeerConfig(
                    publicKey: peer.publicKey, presharedKey: nil, endpoint: peer.endpoint, allowedIPs: peer.allowedIPs,
                    persistentKeepalive: peer.persistentKeepalive, location: peer.location,
                    publicKeyLocation: peer.publicKeyLocation)
            })
    }
}
