import Testing
import TunnelCrypto

@testable import TunnelCore

/// Fixed keys made with `wg genkey`, `wg pubkey` and `wg genpsk` (wireguard-tools), so the
/// expected public keys are wg's answers, not ours.
enum Fixture {
    static let ourPrivate = "IMs54KUOz697TcwUj5ZnGZ1xZD9v+8emfEwbW6teBHE="
    static let ourPublic = "g0xQzQF2f14ziX9CzHzNJUrQMjjf64XDzeiO9DVyBxA="
    static let peerA = "AVhbSh74bx/yjlT/R6YZsG4a+dGEQm2dp2wVgPVDfHI="
    static let peerB = "5anRcJyCsxHFu5l/p4vfCywfu4TXWL30VpHYSTqqZjY="
    static let psk = "szz2csI+37CUiz2vcYBp82VbpqctzNRdonm5AKUonxw="

    /// A minimal valid [Interface] on lines 1–2, so errors in a test body start at line 3.
    static let interface = "[Interface]\nPrivateKey = \(ourPrivate)\n"
}

private func parse(_ text: String) throws(ConfigError) -> TunnelConfig {
    try TunnelConfig.parse(text, fileName: "wg0.conf")
}

/// The error `text` fails with; records a test failure when it parses.
private func failure(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
    do {
        _ = try parse(text)
        Issue.record("parsed, expected an error", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

extension Hooks {
    /// The same commands with `other`'s locations (a written file has other line numbers).
    fileprivate func relocated(like other: Hooks) -> Hooks {
        func move(_ list: [Hook], _ to: [Hook]) -> [Hook] {
            zip(list, to).map { Hook(command: $0.command, location: $1.location) }
        }
        return Hooks(
            preUp: move(preUp, other.preUp), postUp: move(postUp, other.postUp), preDown: move(preDown, other.preDown),
            postDown: move(postDown, other.postDown))
    }
}

private func prefix(_ text: String) -> IPPrefix {
    guard let prefix = IPPrefix(text) else { preconditionFailure("bad test prefix \(text)") }
    return prefix
}

@Suite struct ConfigTests {
    // MARK: good configs

    @Test func parsesSeveralPeersWithCommentsCaseAndWhitespace() throws {
        let text = """
            # tunnel to the lab
            [Interface]
            PrivateKey = \(Fixture.ourPrivate)   # not shown anywhere
            address=10.0.0.1/24,fd00::1/64
            ADDRESS   =   10.0.1.1/24
            ListenPort = 51820
            mtu = 1420

            [peer]
            PublicKey = \(Fixture.peerA)
            PresharedKey = \(Fixture.psk)
            Endpoint = 192.0.2.7:51820
            AllowedIPs = 10.0.0.7/24, 198.18.0.0/15 ,
            AllowedIPs = fd00::/64, 10.0.0.0/24
            PersistentKeepalive = 25

            [ PEER ]
            publickey = \(Fixture.peerB)
            endpoint = [2001:db8::9]:4500
            allowedips = 0.0.0.0/0, ::/0
            persistentkeepalive = off
            """
        let config = try parse(text)

        #expect(config.isResolved)
        #expect(config.privateKey?.publicKey.base64 == Fixture.ourPublic)
        #expect(
            config.interface.addresses == [
                prefix("10.0.0.1/24"), prefix("fd00::1/64"), prefix("10.0.1.1/24"),
            ])
        #expect(config.interface.listenPort == 51820)
        #expect(config.interface.mtu == 1420)
        #expect(config.interface.location == ConfigLocation(file: "wg0.conf", line: 2))

        #expect(config.peers.count == 2)
        let first = config.peers[0]
        #expect(first.publicKey.base64 == Fixture.peerA)
        #expect(first.presharedKey?.key?.base64 == Fixture.psk)
        #expect(first.endpoint == .address(Endpoint("192.0.2.7:51820")!))
        // Masked as wg does, duplicates dropped, the empty item after a trailing comma skipped.
        #expect(first.allowedIPs == [prefix("10.0.0.0/24"), prefix("198.18.0.0/15"), prefix("fd00::/64")])
        #expect(first.persistentKeepalive == 25)
        #expect(first.location.line == 9)
        #expect(first.publicKeyLocation.line == 10)

        let second = config.peers[1]
        #expect(second.publicKey.base64 == Fixture.peerB)
        #expect(second.presharedKey == nil)
        #expect(second.endpoint == .address(Endpoint("[2001:db8::9]:4500")!))
        #expect(second.allowedIPs == [prefix("0.0.0.0/0"), prefix("::/0")])
        #expect(second.persistentKeepalive == nil)
    }

    @Test func minimalConfigHasNoOptionalSettings() throws {
        let config = try parse(Fixture.interface)
        #expect(config.interface.addresses.isEmpty)
        #expect(config.interface.listenPort == nil)
        #expect(config.interface.mtu == nil)
        #expect(config.peers.isEmpty)
    }

    @Test func acceptsCRLFAndByteOrderMarkWithoutShiftingLines() {
        let text = "\u{FEFF}[Interface]\r\nPrivateKey = \(Fixture.ourPrivate)\r\nBogus = 1\r\n"
        #expect(failure(text)?.description.hasPrefix("wg0.conf:3: [Interface] Bogus:") == true)
    }

    @Test func keepsHostNameEndpointsForTheCallerToResolve() throws {
        let config = try parse(
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nEndpoint = vpn.example.com:51820\n")
        #expect(config.peers[0].endpoint == .hostName("vpn.example.com", port: 51820))
        #expect(config.peers[0].endpoint?.description == "vpn.example.com:51820")
    }

    @Test func keepaliveZeroMeansOffAndListenPortZeroMeansAny() throws {
        let config = try parse(
            Fixture.interface
                + "ListenPort = 0\n[Peer]\nPublicKey = \(Fixture.peerA)\nPersistentKeepalive = 0\n")
        #expect(config.interface.listenPort == 0)
        #expect(config.peers[0].persistentKeepalive == nil)
    }

    @Test func emptyAllowedIPsIsAllowed() throws {
        let config = try parse(Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nAllowedIPs =\n")
        #expect(config.peers[0].allowedIPs.isEmpty)
    }

    // MARK: key files

    @Test func keyFilesStayReferencesUntilResolved() throws {
        let text = """
            [Interface]
            PrivateKeyFile = keys/wg0.key
            [Peer]
            PublicKey = \(Fixture.peerA)
            PresharedKeyFile = /etc/tunctl/a.psk
            """
        let config = try parse(text)
        #expect(!config.isResolved)
        #expect(config.privateKey == nil)
        let references = config.keyFileReferences
        #expect(references.map(\.path) == ["keys/wg0.key", "/etc/tunctl/a.psk"])
        #expect(references.map(\.location.line) == [2, 5])
        #expect(references.map(\.key) == [.privateKeyFile, .presharedKeyFile])

        let resolved = try config.resolvingKeyFiles([
            references[0]: Fixture.ourPrivate + "\n",
            references[1]: "  \(Fixture.psk)\n",
        ])
        #expect(resolved.isResolved)
        #expect(resolved.privateKey?.publicKey.base64 == Fixture.ourPublic)
        #expect(resolved.peers[0].presharedKey?.key?.base64 == Fixture.psk)
        #expect(resolved.peers[0].publicKeyLocation.line == 4)
    }

    @Test func badKeyFileContentsNameTheReferenceNotTheContents() throws {
        let config = try parse("[Interface]\nPrivateKeyFile = wg0.key\n")
        let secretLooking = "c2VjcmV0LWJ1dC1ub3QtMzItYnl0ZXM="
        #expect(throws: ConfigError.invalidKeyFile(config.keyFileReferences[0])) {
            try config.resolvingKeyFiles([config.keyFileReferences[0]: secretLooking])
        }
        do {
            _ = try config.resolvingKeyFiles([config.keyFileReferences[0]: secretLooking])
        } catch {
            #expect(
                error.description
                    == "wg0.conf:2: [Interface] PrivateKeyFile: \"wg0.key\" does not hold a valid base64 key "
                    + "of 32 bytes (write one with tunctl keygen or tunctl genkey > FILE)")
            #expect(!error.description.contains(secretLooking))
        }
    }

    @Test func peerWithOurKeyIsCaughtAfterResolvingTheKeyFile() throws {
        let config = try parse(
            "[Interface]\nPrivateKeyFile = wg0.key\n[Peer]\nPublicKey = \(Fixture.ourPublic)\n")
        #expect(throws: ConfigError.self) {
            try config.resolvingKeyFiles([config.keyFileReferences[0]: Fixture.ourPrivate])
        }
        do {
            _ = try config.resolvingKeyFiles([config.keyFileReferences[0]: Fixture.ourPrivate])
        } catch {
            #expect(
                error.description.hasPrefix("wg0.conf:4: [Peer] PublicKey: \"\(Fixture.ourPublic)\" is this"))
        }
    }

    // MARK: error messages, exactly

    /// (config text, the exact message). Each names file, line, section and key, the offending
    /// text (unless secret) and what to do.
    static let errorCases: [(String, String)] = [
        (
            Fixture.interface
                + "[Peer]\nPublicKey = \(Fixture.peerA)\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 198.18.0.0/33\n",
            "wg0.conf:6: [Peer] AllowedIPs: \"198.18.0.0/33\" is not an IP prefix (use ADDRESS/LENGTH, e.g. 198.18.0.0/15)"
        ),
        (
            Fixture.interface
                + "[Peer]\nPublicKey = \(Fixture.peerA)\nAllowedIPs = 10.0.0.0/8, 10.1.0.0.0/16\n",
            "wg0.conf:5: [Peer] AllowedIPs: \"10.1.0.0.0/16\" is not an IP prefix (use ADDRESS/LENGTH, e.g. 198.18.0.0/15)"
        ),
        (
            Fixture.interface + "Address = 10.0.0.1/24, 10.0.0.256/24\n",
            "wg0.conf:3: [Interface] Address: \"10.0.0.256/24\" is not an IP address (use ADDRESS/LENGTH, e.g. 10.0.0.1/24 or fd00::1/64)"
        ),
        (
            Fixture.interface + "Address 10.0.0.1\n",
            "wg0.conf:3: \"Address 10.0.0.1\" is not a section or a setting (use [Interface], [Peer] or Key = Value; start comments with #)"
        ),
        (
            Fixture.interface + "[Interface\n",
            "wg0.conf:3: \"[Interface\" is not a section or a setting (use [Interface], [Peer] or Key = Value; start comments with #)"
        ),
        (
            Fixture.interface + "[Peers]\n",
            "wg0.conf:3: [Peers] is not a known section (use [Interface] or [Peer])"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\n[interface]\n",
            "wg0.conf:5: [Interface] appears again (merge it into the [Interface] on line 1)"
        ),
        (
            "Address = 10.0.0.1/24\n" + Fixture.interface,
            "wg0.conf:1: Address is outside any section (put it under [Interface] or [Peer])"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nAllowedIP = 10.0.0.0/8\n",
            "wg0.conf:5: [Peer] AllowedIP: unknown key (did you mean AllowedIPs?)"
        ),
        (
            Fixture.interface + "Colour = blue\n",
            "wg0.conf:3: [Interface] Colour: unknown key (valid keys in [Interface]: PrivateKey, PrivateKeyFile, Address, ListenPort, MTU, DNS, Table, FwMark, PreUp, PostUp, PreDown, PostDown, SaveConfig, MetricsListen)"
        ),
        (
            Fixture.interface + "AllowedIPs = 10.0.0.0/8\n",
            "wg0.conf:3: [Interface] AllowedIPs: belongs in [Peer] (move the line there)"
        ),
        (
            Fixture.interface + "DNS = 192.0.2.53, 192.0.2.999\n",
            "wg0.conf:3: [Interface] DNS: \"192.0.2.999\" is neither an IP address nor a search domain (use name servers and search domains separated by commas, e.g. 192.0.2.53, example.com)"
        ),
        (
            Fixture.interface + "table = main\n",
            "wg0.conf:3: [Interface] Table: \"main\" is not a routing table (use off, auto or a table number from 1 to 4294967295)"
        ),
        (
            Fixture.interface + "SaveConfig = yes\n",
            "wg0.conf:3: [Interface] SaveConfig: \"yes\" is neither true nor false (use true or false)"
        ),
        (
            Fixture.interface + "FwMark = 0xg\n",
            "wg0.conf:3: [Interface] FwMark: \"0xg\" is not a firewall mark (use off, or a number from 1 to 4294967295 in decimal or 0x hex)"
        ),
        (
            Fixture.interface + "ListenPort = 1\nListenPort = 2\n",
            "wg0.conf:4: [Interface] ListenPort: given twice in this section (keep one; the other is on line 3)"
        ),
        (
            Fixture.interface + "PrivateKeyFile = wg0.key\n",
            "wg0.conf:3: [Interface] PrivateKeyFile: cannot be used with PrivateKey on line 2 (keep one of them)"
        ),
        (
            Fixture.interface
                + "[Peer]\nPublicKey = \(Fixture.peerA)\nPresharedKeyFile = a.psk\nPresharedKey = \(Fixture.psk)\n",
            "wg0.conf:6: [Peer] PresharedKey: cannot be used with PresharedKeyFile on line 5 (keep one of them)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = not-a-key\n",
            "wg0.conf:4: [Peer] PublicKey: \"not-a-key\" is not a valid base64 key of 32 bytes (use the peer's public key as printed by tunctl pubkey or wg pubkey)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nEndpoint = 192.0.2.1\n",
            "wg0.conf:5: [Peer] Endpoint: \"192.0.2.1\" is not an endpoint (use HOST:PORT or [IPv6]:PORT, e.g. 192.0.2.1:51820)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nEndpoint = bad_host!:51820\n",
            "wg0.conf:5: [Peer] Endpoint: \"bad_host!:51820\" is not an endpoint (use HOST:PORT or [IPv6]:PORT, e.g. 192.0.2.1:51820)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nEndpoint = 192.0.2.300:51820\n",
            "wg0.conf:5: [Peer] Endpoint: \"192.0.2.300:51820\" is not an endpoint (use HOST:PORT or [IPv6]:PORT, e.g. 192.0.2.1:51820)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nEndpoint = 2001:db8::1:51820\n",
            "wg0.conf:5: [Peer] Endpoint: \"2001:db8::1:51820\" is not an endpoint (put an IPv6 address in brackets, e.g. [2001:db8::1]:51820)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nEndpoint = 192.0.2.1:0\n",
            "wg0.conf:5: [Peer] Endpoint: \"192.0.2.1:0\" has port 0 (use the peer's ListenPort, 1-65535)"
        ),
        (
            Fixture.interface + "ListenPort = 65536\n",
            "wg0.conf:3: [Interface] ListenPort: \"65536\" is not a port number (use 0-65535; 0 picks a free port)"
        ),
        (
            Fixture.interface + "MTU = 9x\n",
            "wg0.conf:3: [Interface] MTU: \"9x\" is not an MTU between 1280 and 65535 (1420 suits most links)"
        ),
        (
            Fixture.interface + "MTU = 1279\n",
            "wg0.conf:3: [Interface] MTU: \"1279\" is not an MTU between 1280 and 65535 (1420 suits most links)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nPersistentKeepalive = -1\n",
            "wg0.conf:5: [Peer] PersistentKeepalive: \"-1\" is not a keepalive interval (use 1-65535 seconds, or 0 or off to disable; 25 suits most NATs)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nPersistentKeepalive = 65536\n",
            "wg0.conf:5: [Peer] PersistentKeepalive: \"65536\" is not a keepalive interval (use 1-65535 seconds, or 0 or off to disable; 25 suits most NATs)"
        ),
        (
            Fixture.interface + "ListenPort =\n",
            "wg0.conf:3: [Interface] ListenPort: the value is empty (give a value or remove the line)"
        ),
        (
            "",
            "wg0.conf: no [Interface] section (add one with PrivateKey = ... or PrivateKeyFile = PATH)"
        ),
        (
            "# nothing but\n[Interface]\nAddress = 10.0.0.1/24\n",
            "wg0.conf:2: [Interface] PrivateKey: missing (add PrivateKey = ... or PrivateKeyFile = PATH; make one with tunctl keygen)"
        ),
        (
            Fixture.interface + "[Peer]\nAllowedIPs = 10.0.0.0/8\n[Peer]\nPublicKey = \(Fixture.peerA)\n",
            "wg0.conf:3: [Peer] PublicKey: missing (every [Peer] needs the peer's PublicKey)"
        ),
        (
            Fixture.interface
                + "[Peer]\nPublicKey = \(Fixture.peerA)\n\n[Peer]\nAllowedIPs = 10.0.0.0/8\nPublicKey = \(Fixture.peerA)\n",
            "wg0.conf:8: [Peer] PublicKey: \"\(Fixture.peerA)\" already belongs to the [Peer] on line 4 (merge the two peers into one)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.ourPublic)\n",
            "wg0.conf:4: [Peer] PublicKey: \"\(Fixture.ourPublic)\" is this interface's own public key (use the other side's public key)"
        ),
    ]

    @Test(arguments: errorCases)
    func errorMessagesNameFileLineKeyTextAndFix(text: String, expected: String) {
        let message = failure(text)?.description
        #expect(message == expected)
        #expect(message?.contains("\n") == false)
    }

    // MARK: secrets never appear

    static let secretCases: [(String, String)] = [
        (
            "[Interface]\nPrivateKey = \(Fixture.ourPrivate.dropLast(2))\n",
            "wg0.conf:2: [Interface] PrivateKey: the value (not shown, it is secret) is not a valid base64 key of 32 bytes (generate one with tunctl genkey)"
        ),
        (
            Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nPresharedKey = \(Fixture.psk)x\n",
            "wg0.conf:5: [Peer] PresharedKey: the value (not shown, it is secret) is not a valid base64 key of 32 bytes (generate one with tunctl genpsk)"
        ),
        (
            // A key pasted on its own line: its "=" padding makes it look like "KEY = VALUE".
            Fixture.interface + "\(Fixture.psk)\n",
            "wg0.conf:3: this line is not a section or a setting and is not shown because it may hold a key (use Key = Value, e.g. PrivateKey = ...)"
        ),
        (
            "[Interface]\nPrivateKey \(Fixture.ourPrivate)\n",
            "wg0.conf:2: this line is not a section or a setting and is not shown because it may hold a key (use Key = Value, e.g. PrivateKey = ...)"
        ),
        (
            "[Interface]\nPrivateKey =\n",
            "wg0.conf:2: [Interface] PrivateKey: the value is empty (give a value or remove the line)"
        ),
    ]

    @Test(arguments: secretCases)
    func secretsAreNeverEchoed(text: String, expected: String) {
        let error = failure(text)
        #expect(error?.description == expected)
        for secret in [
            Fixture.ourPrivate, Fixture.psk, String(Fixture.ourPrivate.dropLast(2)),
            String(Fixture.psk.prefix(20)),
        ] {
            #expect(error?.description.contains(secret) == false)
            #expect(error.map { String(reflecting: $0) }?.contains(secret) == false)
        }
    }

    /// A key pasted on the wrong line: each field's error names file, line and field, and repeats
    /// no part of the key (base64 or hex), since the value may be the private key itself.
    static let misplacedKeyCases: [(line: String, at: String)] = {
        let hex = "20cb39e0a50ecfaf7b4dcc148f9667199d71643f6ffbc7a67c4c1b5bab5e0471"
        let peer = Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\n"
        return [
            (Fixture.interface + "Address = \(Fixture.ourPrivate)\n", "wg0.conf:3: [Interface] Address:"),
            (Fixture.interface + "Address = 10.0.0.1/24, \(Fixture.psk)\n", "wg0.conf:3: [Interface] Address:"),
            (Fixture.interface + "Address = \(hex)\n", "wg0.conf:3: [Interface] Address:"),
            (Fixture.interface + "ListenPort = \(Fixture.ourPrivate)\n", "wg0.conf:3: [Interface] ListenPort:"),
            (Fixture.interface + "MTU = \(Fixture.psk)\n", "wg0.conf:3: [Interface] MTU:"),
            (Fixture.interface + "DNS = \(Fixture.ourPrivate)\n", "wg0.conf:3: [Interface] DNS:"),
            (Fixture.interface + "Table = \(Fixture.ourPrivate)\n", "wg0.conf:3: [Interface] Table:"),
            (Fixture.interface + "Adress = \(Fixture.ourPrivate)\n", "wg0.conf:3: [Interface] Adress:"),
            (peer + "Endpoint = \(Fixture.ourPrivate)\n", "wg0.conf:5: [Peer] Endpoint:"),
            (peer + "Endpoint = \(Fixture.psk):51820\n", "wg0.conf:5: [Peer] Endpoint:"),
            (peer + "Endpoint = [\(Fixture.psk)]:51820\n", "wg0.conf:5: [Peer] Endpoint:"),
            (peer + "AllowedIPs = \(Fixture.ourPrivate)\n", "wg0.conf:5: [Peer] AllowedIPs:"),
            (peer + "AllowedIPs = 10.0.0.0/8,\(Fixture.psk)\n", "wg0.conf:5: [Peer] AllowedIPs:"),
            (peer + "PersistentKeepalive = \(Fixture.psk)\n", "wg0.conf:5: [Peer] PersistentKeepalive:"),
            (Fixture.interface + "[Peer]\nPublicKey = \(hex)\n", "wg0.conf:4: [Peer] PublicKey:"),
            (peer + "Foo = \(Fixture.psk)\n", "wg0.conf:5: [Peer] Foo:"),
            (Fixture.interface + "[\(Fixture.psk.dropLast())]\n", "wg0.conf:3:"),
            (Fixture.interface + "\(Fixture.ourPrivate.dropLast()) = 1\n", "wg0.conf:3:"),
        ]
    }()

    @Test(arguments: misplacedKeyCases)
    func misplacedKeysAreReportedByPositionNotEchoed(text: String, at: String) {
        let message = failure(text)?.description ?? ""
        #expect(message.hasPrefix(at), "\(message)")
        #expect(!message.contains("\n"))
        let hex = "20cb39e0a50ecfaf7b4dcc148f9667199d71643f6ffbc7a67c4c1b5bab5e0471"
        for secret in [Fixture.ourPrivate, Fixture.psk, hex] {
            for start in stride(from: 0, to: secret.count - 12, by: 6) {
                let piece = String(secret.dropFirst(start).prefix(12))
                #expect(!message.contains(piece), "\(message) holds \(piece)")
            }
        }
    }

    /// Short values that cannot be keys are still repeated back: they help find the typo.
    @Test func shortValuesAreStillShown() {
        #expect(
            failure(Fixture.interface + "Address = 10.0.0.300/24\n")?.description.contains("\"10.0.0.300/24\"") == true)
        #expect(failure(Fixture.interface + "ListenPort = 70000\n")?.description.contains("\"70000\"") == true)
    }

    /// Duplicate peers are found with a table, not by scanning every earlier peer: 5,000 peers
    /// with the duplicate last still name the first one's line.
    @Test func duplicatePeerAmongManyNamesTheFirstLine() throws {
        var text = Fixture.interface
        var keys: [String] = []
        for index in 0..<5_000 {
            // Distinct 32-byte public keys without 5,000 X25519 operations.
            var bytes = [UInt8](repeating: 0x42, count: 32)
            bytes[0] = UInt8(index & 0xff)
            bytes[1] = UInt8(index >> 8)
            let key = bytes.withUnsafeBytes { Encoding.base64($0) }
            keys.append(key)
            text += "[Peer]\nPublicKey = \(key)\nAllowedIPs = 10.\(index / 256 % 256).\(index % 256).0/24\n"
        }
        let parsed = try parse(text)
        #expect(parsed.peers.count == 5_000)
        text += "[Peer]\nPublicKey = \(keys[7])\n"
        let error = failure(text)
        #expect(error?.description.contains("already belongs to the [Peer] on line \(3 + 7 * 3 + 1)") == true)
    }

    // MARK: wg-quick's own keys

    @Test func wgQuickKeysAreParsedInOrder() throws {
        let text =
            Fixture.interface + """
                DNS = 192.0.2.53, 2001:db8::53
                dns = example.com,198.51.100.53
                PreUp = echo pre %i > /tmp/x
                PostUp = iptables -A FORWARD -i %i -j ACCEPT; echo "a=b"
                PostUp = echo second
                PreDown = echo down
                PostDown = echo post-down
                PostDown = echo post-down-2
                SaveConfig = True
                Table = 1234
                FwMark = 0xca6c
                """
        let config = try parse(text)
        let interface = config.interface
        #expect(interface.dns.servers.map(\.description) == ["192.0.2.53", "2001:db8::53", "198.51.100.53"])
        #expect(interface.dns.searchDomains == ["example.com"])
        #expect(interface.dns.location == ConfigLocation(file: "wg0.conf", line: 3))
        #expect(
            interface.dns.resolvConfText
                == "nameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver 198.51.100.53\nsearch example.com\n")
        #expect(interface.hooks.preUp.map(\.command) == ["echo pre %i > /tmp/x"])
        // Everything after the first "=" is the command, "=" and quotes included.
        #expect(
            interface.hooks.postUp.map(\.command) == [
                "iptables -A FORWARD -i %i -j ACCEPT; echo \"a=b\"", "echo second",
            ])
        #expect(interface.hooks.postUp.map(\.location.line) == [6, 7])
        #expect(interface.hooks.preDown.map(\.command) == ["echo down"])
        #expect(interface.hooks.postDown.map(\.command) == ["echo post-down", "echo post-down-2"])
        #expect(interface.saveConfig)
        #expect(interface.saveConfigLocation == ConfigLocation(file: "wg0.conf", line: 11))
        #expect(interface.table == .number(1234))
        #expect(interface.fwMark == 0xca6c)
    }

    @Test func wgQuickKeysDefaultToOff() throws {
        let interface = try parse(Fixture.interface).interface
        #expect(interface.dns.isEmpty && interface.hooks.isEmpty)
        #expect(!interface.saveConfig && interface.table == nil && interface.fwMark == nil)
        #expect(interface.saveConfigLocation == nil)
        #expect(try parse(Fixture.interface + "SaveConfig = false\n").interface.saveConfig == false)
        #expect(try parse(Fixture.interface + "Table = off\n").interface.table == .off)
        #expect(try parse(Fixture.interface + "Table = Auto\n").interface.table == .auto)
        #expect(try parse(Fixture.interface + "FwMark = off\n").interface.fwMark == nil)
        #expect(try parse(Fixture.interface + "FwMark = 0\n").interface.fwMark == nil)
        #expect(try parse(Fixture.interface + "FwMark = 4294967295\n").interface.fwMark == UInt32.max)
    }

    @Test func wgQuickKeysRejectBadValuesInOneLine() {
        let at = ConfigLocation(file: "wg0.conf", line: 3)
        let cases: [(String, ConfigKey, String?, ValueProblem)] = [
            ("DNS = 192.0.2.300", .dns, "192.0.2.300", .notDNS),
            ("DNS = 192.0.2.1, bad_name!", .dns, "bad_name!", .notDNS),
            ("SaveConfig = yes", .saveConfig, "yes", .notBool),
            ("Table = main", .table, "main", .notTable),
            ("Table = 0", .table, "0", .notTable),
            ("Table = 4294967296", .table, "4294967296", .notTable),
            ("FwMark = -1", .fwMark, "-1", .notFwMark),
            ("FwMark = 0x100000000", .fwMark, "0x100000000", .notFwMark),
        ]
        for (line, key, shown, problem) in cases {
            let error = failure(Fixture.interface + line + "\n")
            #expect(error == .invalidValue(at, .interface, key: key, value: shown, problem: problem), "\(line)")
            #expect(error?.description.contains("\n") == false)
            #expect(error?.description.hasPrefix("wg0.conf:3: [Interface] \(key.rawValue): ") == true)
        }
        #expect(
            failure(Fixture.interface + "PostUp =\n")
                == .invalidValue(at, .interface, key: .postUp, value: "", problem: .empty))
        #expect(
            failure(Fixture.interface + "SaveConfig = true\nSaveConfig = false\n")
                == .repeatedKey(ConfigLocation(file: "wg0.conf", line: 4), .interface, key: .saveConfig, firstLine: 3))
        #expect(
            failure(Fixture.interface + "[Peer]\nPublicKey = \(Fixture.peerA)\nPostUp = true\n")
                == .keyInWrongSection(ConfigLocation(file: "wg0.conf", line: 5), .peer, key: .postUp))
    }

    @Test func writtenConfigParsesBackToTheSameConfig() throws {
        let text =
            Fixture.interface + """
                Address = 198.18.1.1/24, 2001:db8:1::1/64
                ListenPort = 51820
                MTU = 1400
                DNS = 192.0.2.53, example.com
                Table = off
                FwMark = 51820
                SaveConfig = true
                PreUp = echo a %i
                PostUp = echo "b=c" %i
                PreDown = echo d
                PostDown = echo e
                [Peer]
                PublicKey = \(Fixture.peerA)
                PresharedKey = \(Fixture.psk)
                Endpoint = vpn.example.com:51820
                AllowedIPs = 198.18.2.0/24, 2001:db8:2::/64
                PersistentKeepalive = 25
                [Peer]
                PublicKey = \(Fixture.peerB)
                Endpoint = [2001:db8::2]:51821
                """
        let config = try parse(text)
        let written = config.text(header: ["saved"])
        #expect(written.hasPrefix("# saved\n[Interface]\n"))
        let again = try parse(written)
        #expect(again.text(header: ["saved"]) == written)
        #expect(again.interface.hooks == config.interface.hooks.relocated(like: again.interface.hooks))
        #expect(again.interface.dns.servers == config.interface.dns.servers)
        #expect(again.interface.fwMark == 51820 && again.interface.table == .off && again.interface.saveConfig)
        #expect(again.interface.mtu == 1400 && again.interface.listenPort == 51820)
        #expect(again.peers.map(\.publicKey) == config.peers.map(\.publicKey))
        #expect(again.peers[0].endpoint == .hostName("vpn.example.com", port: 51820))
        #expect(again.peers[0].presharedKey?.key == config.peers[0].presharedKey?.key)
        #expect(again.peers[1].endpoint?.description == "[2001:db8::2]:51821")
        #expect(again.peers[0].persistentKeepalive == 25)
    }

    @Test func aKeyPastedAsDNSIsNotEchoed() {
        let error = failure(Fixture.interface + "DNS = \(Fixture.psk)\n")
        #expect(
            error
                == .invalidValue(
                    ConfigLocation(file: "wg0.conf", line: 3), .interface, key: .dns, value: nil, problem: .notDNS))
        #expect(error?.description.contains(String(Fixture.psk.prefix(12))) == false)
    }

    @Test func errorsAreTypedCases() {
        #expect(
            failure(Fixture.interface + "MTU = 1\n")
                == .invalidValue(
                    ConfigLocation(file: "wg0.conf", line: 3), .interface, key: .mtu, value: "1",
                    problem: .mtuOutOfRange))
        #expect(
            failure("[Interface]\nPrivateKey = nope\n")
                == .invalidValue(
                    ConfigLocation(file: "wg0.conf", line: 2), .interface, key: .privateKey, value: nil,
                    problem: .notBase64Key))
    }

    @Test func hostNameRules() {
        #expect(ConfigParser.isHostName("vpn.example.com"))
        #expect(ConfigParser.isHostName("localhost"))
        #expect(ConfigParser.isHostName("a-b.example."))
        #expect(!ConfigParser.isHostName("-a.example"))
        #expect(!ConfigParser.isHostName("a..example"))
        #expect(!ConfigParser.isHostName("10.0.0.300"))
        #expect(!ConfigParser.isHostName(Substring(String(repeating: "a", count: 64) + ".com")))
    }
}
