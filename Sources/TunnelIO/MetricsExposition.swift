import Prometheus

/// The Prometheus text exposition of `show` reports, for `tunctl show --format prometheus`
/// (node_exporter's textfile collector) and the daemon's `MetricsListen` endpoint.
///
/// The peer metrics carry the names, labels and HELP texts of prometheus_wireguard_exporter
/// (`interface`, `public_key`, `allowed_ips` joined by commas), so dashboards made for it work
/// unchanged; tunctl's own are prefixed `tunctl_`. Made from a snapshot (`ShowReport`), never
/// from the running engine: a scrape costs the data path what `tunctl show` costs it.
/// Holds no secrets: public keys, addresses and counts only.
public enum MetricsExposition {
    /// The content type scrapers expect for this text.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The exposition of `reports`: every metric family once, with its HELP and TYPE lines.
    public static func text(_ reports: [ShowReport]) -> String {
        let registry = PrometheusCollectorRegistry()
        for report in reports { add(report.interface, to: registry) }
        return registry.emitToString()
    }

    /// A metric family's name and HELP text; the name is whole (swift-prometheus joins the parts).
    private static func family(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private static func add(_ interface: ShowReport.Interface, to registry: PrometheusCollectorRegistry) {
        let name = interface.name
        for peer in interface.peers {
            let labels = [
                ("interface", name), ("public_key", peer.publicKey),
                ("allowed_ips", peer.allowedIPs.joined(separator: ",")),
            ]
            registry.makeCounter(
                descriptor: family("wireguard_sent_bytes_total", "Bytes sent to the peer"), labels: labels
            )
            .increment(by: Int64(clamping: peer.txBytes))
            registry.makeCounter(
                descriptor: family("wireguard_received_bytes_total", "Bytes received from the peer"), labels: labels
            ).increment(by: Int64(clamping: peer.rxBytes))
            registry.makeGauge(
                descriptor: family("wireguard_latest_handshake_seconds", "Seconds from the last handshake"),
                labels: labels
            ).set(Int64(clamping: peer.latestHandshake))
            for (reason, count) in peer.drops {
                registry.makeCounter(
                    descriptor: family(
                        "tunctl_peer_drops_total",
                        "Packets from or to the peer dropped, by reason (tunctl show names the same reasons)"),
                    labels: [("interface", name), ("public_key", peer.publicKey), ("reason", reason)]
                ).increment(by: Int64(clamping: count))
            }
        }
        let device = [("interface", name)]
        for (reason, count) in interface.drops {
            registry.makeCounter(
                descriptor: family(
                    "tunctl_drops_total",
                    "Packets dropped by the interface, by reason (tunctl show names the same reasons)"),
                labels: [("interface", name), ("reason", reason)]
            ).increment(by: Int64(clamping: count))
        }
        if let handshakes = interface.handshakes {
            registry.makeCounter(
                descriptor: family(
                    "tunctl_handshakes_total", "Handshakes that derived a session, as initiator or responder"),
                labels: device
            ).increment(by: Int64(clamping: handshakes))
        }
        if let cookies = interface.cookieRepliesSent {
            registry.makeCounter(
                descriptor: family(
                    "tunctl_cookie_replies_sent_total",
                    "Cookie replies sent instead of a handshake response, under load"), labels: device
            ).increment(by: Int64(clamping: cookies))
        }
        registry.makeGauge(descriptor: family("tunctl_peers", "Peers configured on the interface"), labels: device)
            .set(Int64(interface.peers.count))
        registry.makeGauge(
            descriptor: family("tunctl_mtu_bytes", "The link's MTU as the kernel has it"), labels: device
        )
        .set(Int64(interface.mtu))
        registry.makeGauge(
            descriptor: family("tunctl_listen_port", "The UDP port the interface listens on"), labels: device
        )
        .set(Int64(interface.listenPort))
    }
}
