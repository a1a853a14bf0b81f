import Foundation
import Glibc
import Testing

@testable import TunnelIO

private let peerA = "AVhbSh74bx/yjlT/R6YZsG4a+dGEQm2dp2wVgPVDfHI="
private let peerB = "5anRcJyCsxHFu5l/p4vfCywfu4TXWL30VpHYSTqqZjY="

private func sampleReport() -> ShowReport {
    ShowReport(
        interface: .init(
            name: "tt0", publicKey: "g0xQzQF2f14ziX9CzHzNJUrQMjjf64XDzeiO9DVyBxA=", listenPort: 51820, mtu: 1420,
            addresses: ["198.18.1.1/24"], drops: ["no_route": 2],
            peers: [
                .init(
                    publicKey: peerA, hasPresharedKey: true, endpoint: "198.18.0.2:51820",
                    allowedIPs: ["198.18.2.0/24", "fd00:2::/64"], latestHandshake: 1_700_000_000,
                    rxBytes: 1536, txBytes: 3 * 1024 * 1024, persistentKeepalive: 25,
                    drops: ["replayed": 1, "decrypt_failed": 3]),
                .init(
                    publicKey: peerB, hasPresharedKey: false, endpoint: nil, allowedIPs: [], latestHandshake: 0,
                    rxBytes: 0, txBytes: 0, persistentKeepalive: 0, drops: [:]),
            ]))
}

@Suite struct ShowReportTests {
    /// One object, sorted keys, `null` for what is unknown, base64 slashes unescaped.
    @Test func jsonShape() {
        let expected =
            #"{"addresses":["198.18.1.1/24"],"cookie_replies_sent":null,"drops":{"no_route":2},"handshakes":null,"#
            + #""interface":"tt0","listen_port":51820,"mtu":1420,"netns":null,"peers":[{"allowed_ips":["198.18.2.0/24","fd00:2::/64"],"drops":{"decrypt_failed":3,"replayed":1},"#
            + #""endpoint":"198.18.0.2:51820","latest_handshake":1700000000,"persistent_keepalive":25,"#
            + #""preshared_key":true,"public_key":"\#(peerA)","rx_bytes":1536,"tx_bytes":3145728},"#
            + #"{"allowed_ips":[],"drops":{},"endpoint":null,"latest_handshake":0,"persistent_keepalive":0,"#
            + #""preshared_key":false,"public_key":"\#(peerB)","rx_bytes":0,"tx_bytes":0}],"#
            + #""public_key":"g0xQzQF2f14ziX9CzHzNJUrQMjjf64XDzeiO9DVyBxA="}"#
        #expect(sampleReport().json == expected)
    }

    @Test func jsonRoundTripsAsTheDaemonSendsIt() throws {
        let report = sampleReport()
        #expect(try ShowReport(json: report.json + "\n\n") == report)
        var noKey = report
        noKey.interface.publicKey = nil
        #expect(noKey.json.contains(#""public_key":null"#))
        #expect(try ShowReport(json: noKey.json) == noKey)
    }

    @Test func textInTheSpiritOfWgShow() {
        let expected = """
            interface: tt0
              public key: g0xQzQF2f14ziX9CzHzNJUrQMjjf64XDzeiO9DVyBxA=
              private key: (hidden)
              listening port: 51820
              mtu: 1420
              addresses: 198.18.1.1/24
              drops: 2 no_route

            peer: \(peerA)
              preshared key: (hidden)
              endpoint: 198.18.0.2:51820
              allowed ips: 198.18.2.0/24, fd00:2::/64
              latest handshake: 1 minute, 5 seconds ago
              transfer: 1.50 KiB received, 3.00 MiB sent
              persistent keepalive: every 25 seconds
              drops: 3 decrypt_failed, 1 replayed

            peer: \(peerB)
              allowed ips: (none)

            """
        #expect(sampleReport().text(now: 1_700_000_065) == expected)
    }

    /// wireguard-tools `show.c` units and wording.
    @Test func wgFormatting() {
        #expect(ShowReport.format(bytes: 0) == "0 B")
        #expect(ShowReport.format(bytes: 1023) == "1023 B")
        #expect(ShowReport.format(bytes: 1024) == "1.00 KiB")
        #expect(ShowReport.format(bytes: 5 * 1024 * 1024 * 1024) == "5.00 GiB")
        #expect(ShowReport.ago(100, now: 100) == "Now")
        #expect(ShowReport.ago(100, now: 101) == "1 second ago")
        #expect(ShowReport.ago(0, now: 2 * 86400 + 3600) == "2 days, 1 hour ago")
        #expect(ShowReport.ago(101, now: 100).contains("clock"))
    }
}

/// A Unix stream listener in a fresh temporary directory, removed by `close`.
private final class TestListener: @unchecked Sendable {
    // Sound: both fields are set in init and only read afterwards.
    let path: String
    let fd: Int32

    init(listen: Bool = true) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "cc-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        path = directory.appendingPathComponent("t.sock").path
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path.utf8) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(bound == 0)
        if listen { #expect(Glibc.listen(fd, 4) == 0) }
    }

    /// Serves one client on a thread: reads the request up to its blank line, writes `reply`,
    /// then keeps the connection open (as wireguard-go does) or closes it.
    func serveOnce(reply: String, keepOpen: Bool) {
        let listener = fd
        Thread.detachNewThread {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            var request: [UInt8] = []
            var byte: UInt8 = 0
            while read(client, &byte, 1) == 1 {
                request.append(byte)
                if request.suffix(2) == [10, 10] { break }
            }
            _ = reply.withCString { write(client, $0, strlen($0)) }
            if keepOpen { usleep(2_000_000) }
            Glibc.close(client)
        }
    }

    func close() {
        Glibc.close(fd)
        unlink(path)
        rmdir(String(path.dropLast("/t.sock".count)))
    }
}

@Suite struct ControlClientTests {
    /// The reply ends at its blank line even when the server keeps the connection open.
    @Test func replyEndsAtBlankLine() throws {
        let listener = try TestListener()
        defer { listener.close() }
        listener.serveOnce(reply: "errno=0\n\n", keepOpen: true)
        let started = Date()
        #expect(try ControlClient.request(path: listener.path, "get=1\n\n", timeout: 5) == "errno=0\n\n")
        #expect(Date().timeIntervalSince(started) < 1.5)
    }

    @Test func replyEndsAtClose() throws {
        let listener = try TestListener()
        defer { listener.close() }
        listener.serveOnce(reply: "{\"interface\":\"tt0\"}", keepOpen: false)
        #expect(
            try ControlClient.request(path: listener.path, "tunctl-show=1\n\n", timeout: 5) == "{\"interface\":\"tt0\"}"
        )
    }

    @Test func missingSocket() {
        #expect(throws: ControlClientError.noSocket(path: "/nonexistent/tt9.sock")) {
            try ControlClient.request(path: "/nonexistent/tt9.sock", "get=1\n\n", timeout: 1)
        }
    }

    /// A socket file nobody listens on: what a daemon killed with -9 leaves behind.
    @Test func staleSocket() throws {
        let listener = try TestListener(listen: false)
        defer { listener.close() }
        #expect(throws: ControlClientError.notListening(path: listener.path)) {
            try ControlClient.request(path: listener.path, "get=1\n\n", timeout: 1)
        }
    }

    /// Listening but never answering (the backlog accepts the connection): bounded by the timeout.
    @Test func hungServerTimesOut() throws {
        let listener = try TestListener()
        defer { listener.close() }
        let started = Date()
        #expect(throws: ControlClientError.timedOut(path: listener.path, seconds: 0.3)) {
            try ControlClient.request(path: listener.path, "get=1\n\n", timeout: 0.3)
        }
        #expect(Date().timeIntervalSince(started) < 2)
    }
}
