import Foundation
import Testing

@testable import TunnelIO

private let peerA = "AVhbSh74bx/yjlT/R6YZsG4a+dGEQm2dp2wVgPVDfHI="
private let peerB = "5anRcJyCsxHFu5l/p4vfCywfu4TXWL30VpHYSTqqZjY="

private func report(
    name: String = "tt0", handshakes: UInt64? = 7, cookies: UInt64? = 2,
    allowed: [String] = ["198.18.2.0/24", "fd00:2::/64"]
) -> ShowReport {
    ShowReport(
        interface: .init(
            name: name, publicKey: "g0xQzQF2f14ziX9CzHzNJUrQMjjf64XDzeiO9DVyBxA=", listenPort: 51820, mtu: 1380,
            addresses: ["198.18.1.1/24"], drops: ["no_route": 2],
            peers: [
                .init(
                    publicKey: peerA, hasPresharedKey: true, endpoint: "198.18.0.2:51820", allowedIPs: allowed,
                    latestHandshake: 1_700_000_000, rxBytes: 1536, txBytes: 3_145_728, persistentKeepalive: 25,
                    drops: ["replayed": 1]),
                .init(
                    publicKey: peerB, hasPresharedKey: false, endpoint: nil, allowedIPs: [], latestHandshake: 0,
                    rxBytes: 0, txBytes: 0, persistentKeepalive: 0, drops: [:]),
            ], netns: 4_026_531_840, handshakes: handshakes, cookieRepliesSent: cookies))
}

/// The text exposition format (Prometheus "text format 0.0.4") as far as a scraper checks it.
private struct Exposition {
    var help: [String: [String]] = [:]
    var type: [String: [String]] = [:]
    /// Sample lines by metric name, in order.
    var samples: [String: [String]] = [:]
    /// Names whose first sample came before their TYPE line.
    var typedLate: Set<String> = []
    var malformed: [String] = []

    init(_ text: String) {
        // name{label="value",...} value: label values may hold \\, \" and \n escapes.
        let sample =
            #/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\\n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\\n])*")*\})? (-?[0-9.e+]+|NaN|\+Inf|-Inf)$/#
        #expect(text.hasSuffix("\n"), "the exposition ends with a newline")
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            let parts = line.split(separator: " ", maxSplits: 3)
            if line.hasPrefix("# HELP "), parts.count >= 3 {
                help[String(parts[2]), default: []].append(parts.count == 4 ? String(parts[3]) : "")
            } else if line.hasPrefix("# TYPE "), parts.count == 4 {
                type[String(parts[2]), default: []].append(String(parts[3]))
            } else if let match = line.wholeMatch(of: sample) {
                let name = String(match.1)
                if type[name] == nil { typedLate.insert(name) }
                samples[name, default: []].append(String(line))
            } else {
                malformed.append(String(line))
            }
        }
    }
}

@Suite struct MetricsExpositionTests {
    /// The three families prometheus_wireguard_exporter exports, with its names, label order,
    /// HELP texts and types, so its dashboards read tunctl unchanged.
    @Test func exporterCompatibleFamilies() {
        let text = MetricsExposition.text([report()])
        let parsed = Exposition(text)
        #expect(parsed.malformed == [])
        #expect(parsed.help["wireguard_sent_bytes_total"] == ["Bytes sent to the peer"])
        #expect(parsed.help["wireguard_received_bytes_total"] == ["Bytes received from the peer"])
        #expect(parsed.help["wireguard_latest_handshake_seconds"] == ["Seconds from the last handshake"])
        #expect(parsed.type["wireguard_sent_bytes_total"] == ["counter"])
        #expect(parsed.type["wireguard_received_bytes_total"] == ["counter"])
        #expect(parsed.type["wireguard_latest_handshake_seconds"] == ["gauge"])
        let labels = #"{interface="tt0",public_key="\#(peerA)",allowed_ips="198.18.2.0/24,fd00:2::/64"}"#
        #expect(
            parsed.samples["wireguard_sent_bytes_total"]?.contains("wireguard_sent_bytes_total\(labels) 3145728")
                == true)
        #expect(
            parsed.samples["wireguard_received_bytes_total"]?.contains("wireguard_received_bytes_total\(labels) 1536")
                == true)
        #expect(
            parsed.samples["wireguard_latest_handshake_seconds"]?.contains(
                "wireguard_latest_handshake_seconds\(labels) 1700000000.0") == true)
        // A peer with no allowed IPs and no handshake yet: an empty label, zeros.
        let empty = #"{interface="tt0",public_key="\#(peerB)",allowed_ips=""}"#
        #expect(parsed.samples["wireguard_sent_bytes_total"]?.contains("wireguard_sent_bytes_total\(empty) 0") == true)
        #expect(
            parsed.samples["wireguard_latest_handshake_seconds"]?.contains(
                "wireguard_latest_handshake_seconds\(empty) 0.0") == true)
    }

    @Test func tunctlFamilies() {
        let parsed = Exposition(MetricsExposition.text([report()]))
        #expect(parsed.samples["tunctl_drops_total"] == [#"tunctl_drops_total{interface="tt0",reason="no_route"} 2"#])
        #expect(
            parsed.samples["tunctl_peer_drops_total"] == [
                #"tunctl_peer_drops_total{interface="tt0",public_key="\#(peerA)",reason="replayed"} 1"#
            ])
        #expect(parsed.samples["tunctl_handshakes_total"] == [#"tunctl_handshakes_total{interface="tt0"} 7"#])
        #expect(
            parsed.samples["tunctl_cookie_replies_sent_total"] == [
                #"tunctl_cookie_replies_sent_total{interface="tt0"} 2"#
            ])
        #expect(parsed.samples["tunctl_mtu_bytes"] == [#"tunctl_mtu_bytes{interface="tt0"} 1380.0"#])
        #expect(parsed.samples["tunctl_peers"] == [#"tunctl_peers{interface="tt0"} 2.0"#])
        #expect(parsed.samples["tunctl_listen_port"] == [#"tunctl_listen_port{interface="tt0"} 51820.0"#])
        for name in [
            "tunctl_drops_total", "tunctl_peer_drops_total", "tunctl_handshakes_total",
            "tunctl_cookie_replies_sent_total",
        ] {
            #expect(parsed.type[name] == ["counter"], "\(name)")
        }
        for name in ["tunctl_mtu_bytes", "tunctl_peers", "tunctl_listen_port"] {
            #expect(parsed.type[name] == ["gauge"], "\(name)")
        }
        // An older daemon's report has no event counts: no sample rather than a false 0.
        let old = Exposition(MetricsExposition.text([report(handshakes: nil, cookies: nil)]))
        #expect(old.samples["tunctl_handshakes_total"] == nil && old.samples["tunctl_cookie_replies_sent_total"] == nil)
    }

    /// Every family once: one HELP and one TYPE line, before its first sample, even with two
    /// interfaces' samples in it.
    @Test func eachFamilyIsDescribedOnceBeforeItsSamples() {
        let parsed = Exposition(MetricsExposition.text([report(name: "tt0"), report(name: "tt1")]))
        #expect(parsed.malformed == [])
        #expect(parsed.typedLate == [])
        #expect(!parsed.samples.isEmpty)
        for (name, lines) in parsed.samples {
            #expect(parsed.type[name]?.count == 1, "\(name) TYPE lines")
            #expect(parsed.help[name]?.count == 1, "\(name) HELP lines")
            #expect(
                lines.contains { $0.contains(#"interface="tt0""#) }
                    && lines.contains { $0.contains(#"interface="tt1""#) }, "\(name)")
        }
        #expect(parsed.samples["wireguard_sent_bytes_total"]?.count == 4)
    }

    /// Label values escape backslash, double quote and line feed as the format requires; nothing
    /// else is touched (no label value can end a sample line early).
    @Test func labelValuesAreEscaped() {
        let text = MetricsExposition.text([report(name: "a\"b\\c\nd", allowed: ["198.18.2.0/24"])])
        let parsed = Exposition(text)
        #expect(parsed.malformed == [])
        #expect(
            parsed.samples["tunctl_peers"] == [#"tunctl_peers{interface="a\"b\\c\nd"} 2.0"#])
        #expect(!text.contains("c\nd"))
    }

    @Test func noReportsIsAnEmptyExposition() {
        #expect(MetricsExposition.text([]) == "")
    }

    /// The report's new fields decode from a daemon that does not send them (mixed versions).
    @Test func reportFromAnOlderDaemonDecodes() throws {
        let old =
            #"{"addresses":[],"drops":{},"interface":"tt0","listen_port":1,"mtu":1420,"peers":[],"public_key":null}"#
        let decoded = try ShowReport(json: old)
        #expect(decoded.interface.netns == nil && decoded.interface.handshakes == nil)
        #expect(try ShowReport(json: report().json) == report())
    }
}
