import Testing

@testable import TunnelCore

/// `MetricsListen =` (issue 19): loopback only, said with file, line and key otherwise, and kept
/// by SaveConfig.
@Suite struct MetricsListenConfigTests {
    private let interface = "[Interface]\nPrivateKey = \(Fixture.ourPrivate)\n"

    private func parse(_ text: String) throws(ConfigError) -> TunnelConfig {
        try TunnelConfig.parse(text, fileName: "wg0.conf")
    }

    @Test(arguments: ["127.0.0.1:9586", "127.3.2.1:1", "[::1]:9586", "[::1]:65535"])
    func loopbackIsTaken(_ value: String) throws {
        let config = try parse(interface + "MetricsListen = \(value)\n")
        #expect(config.interface.metricsListen == Endpoint(value))
        #expect(config.interface.metricsListenLocation == ConfigLocation(file: "wg0.conf", line: 3))
    }

    @Test(arguments: [
        "0.0.0.0:9586", "192.0.2.1:9586", "[::]:9586", "[2001:db8::1]:9586", "127.0.0.1:0", "localhost:9586",
        "127.0.0.1", "[::1%1]:9586", "128.0.0.1:9586", "126.255.255.255:9586",
    ])
    func anythingElseIsRefusedWithLineKeyAndAdvice(_ value: String) {
        do {
            _ = try parse(interface + "MetricsListen = \(value)\n")
            Issue.record("\(value) parsed")
        } catch {
            #expect(
                error.description
                    == "wg0.conf:3: [Interface] MetricsListen: \"\(value)\" is not a loopback address and port "
                    + "(use 127.0.0.1:PORT or [::1]:PORT, e.g. 127.0.0.1:9586; metrics are served on loopback only, "
                    + "put a proxy in front to publish them)")
        }
    }

    @Test func givenTwiceIsRefused() {
        #expect(
            throws: ConfigError.repeatedKey(
                ConfigLocation(file: "wg0.conf", line: 4), .interface, key: .metricsListen, firstLine: 3)
        ) {
            try parse(interface + "MetricsListen = 127.0.0.1:9586\nMetricsListen = 127.0.0.1:9587\n")
        }
    }

    @Test func belongsInInterface() {
        let text = interface + "\n[Peer]\nPublicKey = \(Fixture.peerA)\nMetricsListen = 127.0.0.1:9586\n"
        #expect(
            throws: ConfigError.keyInWrongSection(ConfigLocation(file: "wg0.conf", line: 6), .peer, key: .metricsListen)
        ) {
            try parse(text)
        }
    }

    @Test func listenPortLineIsKeptForErrors() throws {
        let config = try parse(interface + "Address = 198.18.1.1/24\nListenPort = 51820\n")
        #expect(config.interface.listenPortLocation == ConfigLocation(file: "wg0.conf", line: 4))
        #expect(try parse(interface).interface.listenPortLocation == nil)
    }

    @Test func saveConfigWritesItBack() throws {
        let config = try parse(interface + "MetricsListen = [::1]:9586\n")
        let again = try parse(config.text())
        #expect(again.interface.metricsListen == Endpoint("[::1]:9586"))
        #expect(config.text().contains("\nMetricsListen = [::1]:9586\n"))
        #expect(!(try parse(interface).text().contains("MetricsListen")))
    }
}
