import Foundation
import TunnelCore
import TunnelCrypto

/// What `tunctl show` prints about one interface. The daemon builds it from the running tunnel
/// and sends only the JSON; the CLI decodes that and formats the text, so there is one source
/// of truth for the shape. Holds no secrets: keys are public, a preshared key is a yes/no.
public struct ShowReport: Sendable, Equatable {
    public var interface: Interface

    /// The JSON object, field for field. Absent values are `null`, never missing.
    public struct Interface: Codable, Sendable, Equatable {
        public var name: String
        /// Base64, as `wg` prints it; nil without a private key.
        public var publicKey: String?
        public var listenPort: UInt16
        public var mtu: Int
        public var addresses: [String]
        /// Device-wide drops by reason name (nonzero ones only).
        public var drops: [String: UInt64]
        /// Most recent handshake first, as `wg show` orders them.
        public var peers: [PeerReport]
        /// The daemon's network namespace (`NetworkNamespace`); nil from a daemon older than this field.
        public var netns: UInt64?
        /// `DeviceEvents.handshakes`; nil from an older daemon.
        public var handshakes: UInt64?
        /// `DeviceEvents.cookieRepliesSent`; nil from an older daemon.
        public var cookieRepliesSent: UInt64?
        /// Which TUN offload path runs; nil from a daemon that does not say.
        public var offload: TunOffloadReport? = nil

        enum CodingKeys: String, CodingKey {
            case name = "interface"
            case publicKey = "public_key"
            case listenPort = "listen_port"
            case mtu, addresses,
                drops, peers, netns, handshakes
            case cookieRepliesSent = "cookie_replies_sent"
            case offload
        }

        public init(
            name: String, publicKey: String?, listenPort: UInt16, mtu: Int, addresses: [String],
            drops: [String: UInt64], peers: [PeerReport], offload: TunOffloadReport? = nil, netns: UInt64? = nil,
            handshakes: UInt64? = nil, cookieRepliesSent: UInt64? = nil
        ) {
            self.name = name
            self.publicKey = publicKey
            self.listenPort = listenPort
            self.mtu = mtu
            self.addresses = addresses
            self.drops = drops
            self.peers = peers
            self.offload = offload
            self.netns = netns
            self.handshakes = handshakes
            self.cookieRepliesSent = cookieRepliesSent
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(publicKey, forKey: .publicKey)  // null when absent
            try container.encode(listenPort, forKey: .listenPort)
            try container.encode(mtu, forKey: .mtu)
            try container.encode(addresses, forKey: .addresses)
            try container.encode(drops, forKey: .drops)
            try container.encode(peers, forKey: .peers)
            try container.encode(netns, forKey: .netns)
            try container.encode(handshakes, forKey: .handshakes)
            try container.encode(cookieRepliesSent, forKey: .cookieRepliesSent)
            try container.encodeIfPresent(offload, forKey: .offload)
        }
    }

    public struct PeerReport: Codable, Sendable, Equatable {
        public var publicKey: String
        public var hasPresharedKey: Bool
        public var endpoint: String?
        public var allowedIPs: [String]
        /// Unix seconds of the latest handshake; 0 = never.
        public var latestHandshake: UInt64
        public var rxBytes: UInt64
        public var txBytes: UInt64
        /// Seconds; 0 = off.
        public var persistentKeepalive: UInt16
        public var drops: [String: UInt64]
        /// The outer path MTU probing has confirmed to the peer (issue 17); nil without a session.
        public var pathMTU: Int? = nil

        enum CodingKeys: String, CodingKey {
            case publicKey = "public_key"
            case hasPresharedKey = "preshared_key"
            case endpoint
            case
                allowedIPs = "allowed_ips"
            case latestHandshake = "latest_handshake"
            case rxBytes = "rx_bytes"
            case
                txBytes = "tx_bytes"
            case persistentKeepalive = "persistent_keepalive"
            case drops
            case pathMTU = "path_mtu"
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(publicKey, forKey: .publicKey)
            try container.encode(hasPresharedKey, forKey: .hasPresharedKey)
            try container.encode(endpoint, forKey: .endpoint)  // null when unknown
            try container.encode(allowedIPs, forKey: .allowedIPs)
            try container.encode(latestHandshake, forKey: .latestHandshake)
            try container.encode(rxBytes, forKey: .rxBytes)
            try container.encode(txBytes, forKey: .txBytes)
            try container.encode(persistentKeepalive, forKey: .persistentKeepalive)
            try container.encode(drops, forKey: .drops)
            try container.encodeIfPresent(pathMTU, forKey: .pathMTU)  // absent without an endpoint
        }
    }

    public init(interface: Interface) {
        self.interface = interface
    }

    /// A snapshot of `tunnel`, with the link's MTU as the kernel has it (not the config's). Call
    /// it on the tunnel's queue, NOT holding the engine: it takes the engine itself, once for the
    /// device's fields, then in pieces to list the peers' keys (`PeerWalk.keys`), then once per
    /// `UAPI.peersPerHold` peers to copy their status, and builds the report (base64 keys, text,
    /// sorting) with the lock released, so that 100,000 peers do not stall the data path. A peer
    /// removed after the list is left out.
    init(tunnel: Tunnel, linkMTU: Int) {
        var publicKey: PublicKey?
        var deviceDrops: [(DropReason, UInt64)] = []
        var events = DeviceEvents()
        var count = 0
        tunnel.withEngine { device in
            publicKey = device.publicKey
            deviceDrops = device.drops.nonzero
            events = device.events
            count = device.peerCount
        }
        let keys = PeerWalk.keys(expected: count, perHold: UAPI.peersPerHold * UAPI.keysPerStatus) { body in
            tunnel.withEngine(body)
        }
        var statuses: [PeerStatus] = []
        statuses.reserveCapacity(keys.count)
        var start = 0
        while start < keys.count {
            let end = min(start + UAPI.peersPerHold, keys.count)
            tunnel.withEngine { device in
                for key in keys[start..<end] {
                    if let peer = device.peer(key) { statuses.append(device.status(of: peer)) }
                }
            }
            start = end
        }
        var offload = tunnel.offloadReport
        let udp = tunnel.socket.offload
        offload.udpSegmentation = udp.contains(.segmentation)
        offload.udpCoalescing = udp.contains(.coalescing)
        let peers = statuses.map { status in
            PeerReport(
                publicKey: status.publicKey.base64, hasPresharedKey: status.hasPresharedKey,
                endpoint: status.endpoint?.description, allowedIPs: status.allowedIPs.map(\.description),
                latestHandshake: status.lastHandshakeUnixNanoseconds / 1_000_000_000,
                rxBytes: status.rxBytes, txBytes: status.txBytes,
                persistentKeepalive: status.persistentKeepalive, drops: ShowReport.dictionary(status.drops),
                pathMTU: status.pathMTU)
        }
        interface = Interface(
            name: tunnel.name, publicKey: publicKey?.base64, listenPort: tunnel.listenPort,
            mtu: linkMTU, addresses: tunnel.interfaceAddresses.map(\.description),
            drops: ShowReport.dictionary(deviceDrops),
            peers: peers.sorted { ($0.latestHandshake, $1.publicKey) > ($1.latestHandshake, $0.publicKey) },
            offload: offload, netns: NetworkNamespace.current(), handshakes: events.handshakes,
            cookieRepliesSent: events.cookieRepliesSent)
    }

    /// Decodes what the daemon sent for `tunctl-show=1` (the blank line after it may be included).
    public init(json: String) throws {
        interface = try JSONDecoder().decode(Interface.self, from: Data(json.utf8))
    }

    private static func dictionary(_ drops: [(DropReason, UInt64)]) -> [String: UInt64] {
        Dictionary(uniqueKeysWithValues: drops.map { ($0.0.description, $0.1) })
    }

    /// One line of JSON with sorted keys (stable for diffs and tests), no trailing newline.
    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding plain strings, integers and dictionaries of them cannot fail.
        guard let data = try? encoder.encode(interface) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    /// The `wg show`-like text, with times relative to the current wall clock.
    public var text: String {
        text(now: UInt64(max(0, Date().timeIntervalSince1970)))
    }

    /// The `wg show`-like text, "latest handshake" relative to `now` (Unix seconds).
    public func text(now: UInt64) -> String {
        var lines = ["interface: \(interface.name)"]
        if let publicKey = interface.publicKey {
            lines.append("  public key: \(publicKey)")
            lines.append("  private key: (hidden)")
        } else {
            lines.append("  public key: (none: no private key set)")
        }
        lines.append("  listening port: \(interface.listenPort)")
        lines.append("  mtu: \(interface.mtu)")
        if !interface.addresses.isEmpty { lines.append("  addresses: \(interface.addresses.joined(separator: ", "))") }
        if !interface.drops.isEmpty { lines.append("  drops: \(ShowReport.format(drops: interface.drops))") }
        for peer in interface.peers {
            lines.append("")
            lines.append("peer: \(peer.publicKey)")
            if peer.hasPresharedKey { lines.append("  preshared key: (hidden)") }
            if let endpoint = peer.endpoint { lines.append("  endpoint: \(endpoint)") }
            lines.append(
                "  allowed ips: \(peer.allowedIPs.isEmpty ? "(none)" : peer.allowedIPs.joined(separator: ", "))")
            if peer.latestHandshake != 0 {
                lines.append("  latest handshake: \(ShowReport.ago(peer.latestHandshake, now: now))")
            }
            if peer.rxBytes != 0 || peer.txBytes != 0 {
                lines.append(
                    "  transfer: \(ShowReport.format(bytes: peer.rxBytes)) received, "
                        + "\(ShowReport.format(bytes: peer.txBytes)) sent")
            }
            if peer.persistentKeepalive != 0 {
                lines.append(
                    "  persistent keepalive: every \(ShowReport.plural(UInt64(peer.persistentKeepalive), "second"))")
            }
            if !peer.drops.isEmpty { lines.append("  drops: \(ShowReport.format(drops: peer.drops))") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    // MARK: - Formatting as wg does (wireguard-tools src/show.c)

    /// "1 day, 2 hours, 3 minutes, 4 seconds ago"; "Now" within the same second.
    static func ago(_ then: UInt64, now: UInt64) -> String {
        guard now >= then else { return "in the future (the system clock went backwards)" }
        var left = now - then
        if left == 0 { return "Now" }
        var parts: [String] = []
        for (unit, seconds) in [
            ("year", UInt64(365 * 86400)), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1),
        ] {
            let count = left / seconds
            left %= seconds
            if count > 0 { parts.append(plural(count, unit)) }
        }
        return parts.joined(separator: ", ") + " ago"
    }

    /// "123 B", "1.50 KiB", "2.00 MiB", … (two decimals from KiB up, as wg prints).
    static func format(bytes: UInt64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB"]
        if bytes < 1024 { return "\(bytes) B" }
        var value = Double(bytes) / 1024
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return String(format: "%.2f", value) + " " + units[unit]
    }

    /// "3 decrypt_failed, 1 replayed", most frequent first, then by name.
    static func format(drops: [String: UInt64]) -> String {
        drops.sorted { ($1.value, $0.key) < ($0.value, $1.key) }.map { "\($0.value) \($0.key)" }
            .joined(separator: ", ")
    }

    static func plural(_ count: UInt64, _ unit: String) -> String {
        "\(count) \(unit)\(count == 1 ? "" : "s")"
    }
}
