import Testing
import TunnelCrypto

@testable import TunnelCore

/// Keys made with `wg genkey`/`wg pubkey`/`wg genpsk`; the hex forms are `base64 -d | xxd -p`
/// of those, so the expected text is not computed by the code under test.
private enum Keys {
    static let ourPrivate = "20cb39e0a50ecfaf7b4dcc148f9667199d71643f6ffbc7a67c4c1b5bab5e0471"
    static let ourPublic = "834c50cd01767f5e33897f42cc7ccd254ad03238dfeb85c3cde88ef435720710"
    static let ourPublicBase64 = "g0xQzQF2f14ziX9CzHzNJUrQMjjf64XDzeiO9DVyBxA="
    /// Sorts before `peerB`, so `get` lists A first.
    static let peerA = "01585b4a1ef86f1ff28e54ff47a619b06e1af9d184426d9da76c1580f5437c72"
    static let peerB = "e5a9d1709c82b311c5bb997fa78bdf0b2c1fbb84d758bdf45691d8493aaa6636"
    static let psk = "b33cf672c23edfb0948b3daf718069f3655ba6a72dccd45da279b900a5289f1c"
    static let zero = String(repeating: "0", count: 64)
    /// A key no test configures.
    static let unknown = String(repeating: "11", count: 32)
}

private let now = Instant(monotonic: 5_000_000_000, unixNanoseconds: 1_700_000_000_000_000_000)

/// Applies `body`; returns the errno and the listen ports handed to the callback.
private func set(_ body: String, on device: Device) -> (errno: Int32, ports: [UInt16]) {
    var ports: [UInt16] = []
    let errno = UAPI.set(body, device: device, now: now) { ports.append($0) }
    return (errno, ports)
}

private func peer(_ hex: String, in device: Device) -> Peer? {
    device.peer(PublicKey(hex: hex)!)
}

/// Our key, peer A with every field set, peer B bare.
private func configuredDevice() -> Device {
    let device = Device(privateKey: PrivateKey(hex: Keys.ourPrivate))
    let a = device.addPeer(PublicKey(hex: Keys.peerA)!)!
    device.setPresharedKey(PresharedKey(hex: Keys.psk)!, for: a)
    device.setEndpoint(Endpoint("198.18.0.2:51820"), for: a)
    device.setPersistentKeepalive(25, for: a, now: now)
    device.addAllowedIP(IPPrefix("198.18.2.0/24")!, for: a)
    device.addAllowedIP(IPPrefix("fd00:2::/64")!, for: a)
    let b = device.addPeer(PublicKey(hex: Keys.peerB)!)!
    device.setEndpoint(Endpoint("[fd00::2]:51821"), for: b)
    return device
}

@Suite struct UAPIGetTests {
    @Test func keysInWireguardGoOrderAndErrnoLast() {
        let expected = """
            private_key=\(Keys.ourPrivate)
            listen_port=51820
            public_key=\(Keys.peerA)
            preshared_key=\(Keys.psk)
            protocol_version=1
            endpoint=198.18.0.2:51820
            last_handshake_time_sec=0
            last_handshake_time_nsec=0
            tx_bytes=0
            rx_bytes=0
            persistent_keepalive_interval=25
            allowed_ip=198.18.2.0/24
            allowed_ip=fd00:2::/64
            public_key=\(Keys.peerB)
            preshared_key=\(Keys.zero)
            protocol_version=1
            endpoint=[fd00::2]:51821
            last_handshake_time_sec=0
            last_handshake_time_nsec=0
            tx_bytes=0
            rx_bytes=0
            persistent_keepalive_interval=0
            errno=0


            """
        #expect(UAPI.get(device: configuredDevice(), listenPort: 51820) == expected)
    }

    @Test func handshakeTimeSplitsIntoSecondsAndNanoseconds() {
        let device = configuredDevice()
        peer(Keys.peerA, in: device)!.lastHandshakeUnixNanoseconds = 1_700_000_123_456_789_012
        peer(Keys.peerA, in: device)!.rxBytes = 92
        peer(Keys.peerA, in: device)!.txBytes = 148
        let text = UAPI.get(device: device, listenPort: 51820)
        #expect(text.contains("last_handshake_time_sec=1700000123\nlast_handshake_time_nsec=456789012\n"))
        #expect(text.contains("tx_bytes=148\nrx_bytes=92\n"))
    }

    /// wireguard-go omits the private key when there is none, and the port while it is 0.
    /// The daemon's form: the reply made in a `SecretBuffer`, which clears to zeros.
    @Test func getIntoABufferWritesTheSameTextAndClearsToZeros() {
        let buffer = SecretBuffer(capacity: 64)
        UAPI.get(device: configuredDevice(), listenPort: 51820, into: buffer)
        let text = String(decoding: buffer.bytes, as: UTF8.self)
        #expect(text == UAPI.get(device: configuredDevice(), listenPort: 51820))
        #expect(text.contains("private_key=\(Keys.ourPrivate)\n"))
        let memory = UnsafeRawBufferPointer(start: buffer.bytes.baseAddress, count: buffer.capacity)
        buffer.removeAll()
        #expect(memory.allSatisfy { $0 == 0 })
    }

    @Test func emptyDeviceIsJustErrno() {
        #expect(UAPI.get(device: Device(privateKey: nil), listenPort: 0) == "errno=0\n\n")
    }

    @Test func peerWithoutEndpointHasNoEndpointLine() {
        let device = Device(privateKey: nil)
        device.addPeer(PublicKey(hex: Keys.peerA)!)
        #expect(!UAPI.get(device: device, listenPort: 1).contains("endpoint="))
    }

    /// Allowed IPs are stored and reported in network form, as wireguard-go's table does.
    @Test func allowedIPsAreMasked() {
        let device = Device(privateKey: nil)
        #expect(
            set("public_key=\(Keys.peerA)\nallowed_ip=198.18.2.77/24\nallowed_ip=fd00:2::99/64\n", on: device).errno
                == 0)
        let text = UAPI.get(device: device, listenPort: 1)
        #expect(text.contains("allowed_ip=198.18.2.0/24\nallowed_ip=fd00:2::/64\nerrno=0"))
    }
}

@Suite struct UAPISetTests {
    @Test func everyKeyOnAnEmptyDevice() {
        let device = Device(privateKey: nil)
        let body = """
            private_key=\(Keys.ourPrivate)
            listen_port=51820
            fwmark=0
            replace_peers=true
            public_key=\(Keys.peerA)
            protocol_version=1
            preshared_key=\(Keys.psk)
            endpoint=198.18.0.2:51820
            persistent_keepalive_interval=25
            replace_allowed_ips=true
            allowed_ip=198.18.2.0/24
            allowed_ip=fd00:2::/64
            public_key=\(Keys.peerB)
            endpoint=[fd00::2]:51821

            """
        let result = set(body, on: device)
        #expect(result.errno == 0)
        #expect(result.ports == [51820])
        #expect(device.publicKey?.hex == Keys.ourPublic)
        #expect(device.publicKey?.base64 == Keys.ourPublicBase64)
        // The same state built through the Device API reads back identically.
        #expect(UAPI.get(device: device, listenPort: 51820) == UAPI.get(device: configuredDevice(), listenPort: 51820))
    }

    @Test func bodyWithoutTrailingNewlineAndWithCRLF() {
        let device = Device(privateKey: nil)
        #expect(set("listen_port=1\r\npublic_key=\(Keys.peerA)\r\nallowed_ip=10.0.0.0/8", on: device).errno == 0)
        #expect(device.allowedIPs(of: peer(Keys.peerA, in: device)!) == [IPPrefix("10.0.0.0/8")!])
    }

    @Test func emptyBodyChangesNothing() {
        let device = configuredDevice()
        let before = UAPI.get(device: device, listenPort: 1)
        let result = set("", on: device)
        #expect(result.errno == 0)
        #expect(result.ports.isEmpty)
        #expect(UAPI.get(device: device, listenPort: 1) == before)
    }

    @Test func allZeroPrivateKeyRemovesIt() {
        let device = configuredDevice()
        #expect(set("private_key=\(Keys.zero)\n", on: device).errno == 0)
        #expect(device.local == nil)
        #expect(device.peers.count == 2)
        #expect(!UAPI.get(device: device, listenPort: 1).contains("private_key="))
    }

    @Test func uppercaseHexIsAccepted() {
        let device = Device(privateKey: nil)
        #expect(set("private_key=\(Keys.ourPrivate.uppercased())\n", on: device).errno == 0)
        #expect(device.publicKey?.hex == Keys.ourPublic)
    }

    @Test func replacePeersKeepsOnlyTheOnesThatFollow() {
        let device = configuredDevice()
        #expect(set("replace_peers=true\npublic_key=\(Keys.peerB)\nallowed_ip=10.0.0.0/8\n", on: device).errno == 0)
        #expect(device.peers.map(\.publicKey.hex) == [Keys.peerB])
        // B is a fresh peer: its old endpoint went with the old one.
        #expect(peer(Keys.peerB, in: device)?.endpoint == nil)
        #expect(device.local != nil)
    }

    @Test func removeDropsThePeerAndItsRoutes() {
        let device = configuredDevice()
        #expect(set("public_key=\(Keys.peerA)\nremove=true\n", on: device).errno == 0)
        #expect(peer(Keys.peerA, in: device) == nil)
        #expect(peer(Keys.peerB, in: device) != nil)
        // Removing a peer that does not exist is not an error and creates nothing.
        #expect(set("public_key=\(Keys.peerA)\nremove=true\n", on: device).errno == 0)
        #expect(device.peers.count == 1)
    }

    @Test func linesAfterRemoveAreIgnored() {
        let device = configuredDevice()
        #expect(set("public_key=\(Keys.peerA)\nremove=true\nallowed_ip=10.0.0.0/8\n", on: device).errno == 0)
        #expect(peer(Keys.peerA, in: device) == nil)
    }

    @Test func updateOnlyChangesExistingPeersButCreatesNone() {
        let device = configuredDevice()
        let body = """
            public_key=\(Keys.peerA)
            update_only=true
            endpoint=198.18.0.9:1
            public_key=\(Keys.unknown)
            update_only=true
            endpoint=198.18.0.9:1
            """
        #expect(set(body, on: device).errno == 0)
        #expect(peer(Keys.peerA, in: device)?.endpoint == Endpoint("198.18.0.9:1"))
        #expect(device.peers.count == 2)
    }

    @Test func publicKeyAloneCreatesAPeer() {
        let device = Device(privateKey: nil)
        #expect(set("public_key=\(Keys.peerA)\n", on: device).errno == 0)
        #expect(device.peers.count == 1)
    }

    @Test func replaceAllowedIPs() {
        let device = configuredDevice()
        let a = peer(Keys.peerA, in: device)!
        #expect(set("public_key=\(Keys.peerA)\nallowed_ip=10.1.0.0/16\n", on: device).errno == 0)
        #expect(device.allowedIPs(of: a).count == 3)
        #expect(
            set("public_key=\(Keys.peerA)\nreplace_allowed_ips=true\nallowed_ip=10.2.0.0/16\n", on: device).errno == 0)
        #expect(device.allowedIPs(of: a) == [IPPrefix("10.2.0.0/16")!])
        #expect(set("public_key=\(Keys.peerA)\nreplace_allowed_ips=true\n", on: device).errno == 0)
        #expect(device.allowedIPs(of: a).isEmpty)
    }

    /// Cryptokey routing: a prefix belongs to one peer; giving it to another moves it.
    @Test func allowedIPMovesBetweenPeers() {
        let device = configuredDevice()
        #expect(set("public_key=\(Keys.peerB)\nallowed_ip=198.18.2.0/24\n", on: device).errno == 0)
        #expect(device.allowedIPs(of: peer(Keys.peerA, in: device)!) == [IPPrefix("fd00:2::/64")!])
        #expect(device.allowedIPs(of: peer(Keys.peerB, in: device)!) == [IPPrefix("198.18.2.0/24")!])
    }

    @Test func allZeroPresharedKeyClearsIt() {
        let device = configuredDevice()
        #expect(set("public_key=\(Keys.peerA)\npreshared_key=\(Keys.zero)\n", on: device).errno == 0)
        #expect(device.presharedKey(of: peer(Keys.peerA, in: device)!).isNone)
    }

    /// wireguard-go ignores a section for the device's own public key (its "dummy" peer).
    @Test func ownPublicKeySectionIsIgnored() {
        let device = configuredDevice()
        let before = UAPI.get(device: device, listenPort: 1)
        #expect(set("public_key=\(Keys.ourPublic)\nallowed_ip=10.0.0.0/8\n", on: device).errno == 0)
        #expect(UAPI.get(device: device, listenPort: 1) == before)
    }

    /// Turning keepalive on sends one at once (armed for `now`); repeating the same value, as
    /// every `wg setconf` does, does not re-arm it; 0 turns it off.
    @Test func persistentKeepaliveArming() {
        let device = configuredDevice()
        let b = peer(Keys.peerB, in: device)!
        #expect(set("public_key=\(Keys.peerB)\npersistent_keepalive_interval=15\n", on: device).errno == 0)
        #expect(b.persistentKeepalive == 15)
        #expect(b.persistentKeepaliveAt == now.monotonic)
        b.persistentKeepaliveAt = now.monotonic + 15_000_000_000
        #expect(set("public_key=\(Keys.peerB)\npersistent_keepalive_interval=15\n", on: device).errno == 0)
        #expect(b.persistentKeepaliveAt == now.monotonic + 15_000_000_000)
        #expect(set("public_key=\(Keys.peerB)\npersistent_keepalive_interval=0\n", on: device).errno == 0)
        #expect(b.persistentKeepalive == 0)
        #expect(b.persistentKeepaliveAt == nil)
    }

    /// Keys and values wg sends that tunctl must take (`wg setconf` always sends `fwmark=0`).
    @Test func acceptedEdgeValues() {
        for body in [
            "fwmark=0", "listen_port=0", "listen_port=65535", "listen_port=00080",
            "public_key=\(Keys.peerA)\npersistent_keepalive_interval=65535",
            "public_key=\(Keys.peerA)\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0",
            "public_key=\(Keys.peerA)\nendpoint=[::ffff:198.18.0.1]:1",
        ] {
            #expect(set(body, on: Device(privateKey: nil)).errno == 0, "\(body)")
        }
    }
}

@Suite struct UAPIMalformedTests {
    /// Each body is refused with `errno`, and nothing of it is applied, not even its valid lines
    /// before the bad one (wireguard-go would have applied those).
    @Test(arguments: [
        // Bad hex.
        ("private_key=\(Keys.ourPrivate.dropLast())x", UAPI.Errno.invalid),
        ("private_key=\(Keys.ourPrivate)00", UAPI.Errno.invalid),
        ("private_key=", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA.dropLast(2))", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\npreshared_key=\(Keys.psk.dropLast())g", UAPI.Errno.invalid),
        // Base64 where hex is wanted (a classic mistake).
        ("public_key=AVhbSh74bx/yjlT/R6YZsG4a+dGEQm2dp2wVgPVDfHI=", UAPI.Errno.invalid),
        // Unknown keys, device and peer.
        ("listen_port=1\nmtu=1420", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nallowed_ips=10.0.0.0/8", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nlisten_port=1", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nPUBLIC_KEY=\(Keys.peerB)", UAPI.Errno.invalid),
        // Bad endpoints.
        ("public_key=\(Keys.peerA)\nendpoint=198.18.0.2", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nendpoint=198.18.0.2:65536", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nendpoint=fd00::2:51820", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nendpoint=[fd00::2]51820", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nendpoint=vpn.example.com:51820", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nendpoint=198.18.0.2:+1", UAPI.Errno.invalid),
        // Peer keys before any public_key.
        ("allowed_ip=10.0.0.0/8\npublic_key=\(Keys.peerA)", UAPI.Errno.invalid),
        ("endpoint=198.18.0.2:1", UAPI.Errno.invalid),
        // Versions, flags and numbers.
        ("public_key=\(Keys.peerA)\nprotocol_version=2", UAPI.Errno.invalid),
        ("replace_peers=false", UAPI.Errno.invalid),
        ("replace_peers=1", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nremove=yes", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nupdate_only=false", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nreplace_allowed_ips=", UAPI.Errno.invalid),
        ("listen_port=65536", UAPI.Errno.invalid),
        ("listen_port=-1", UAPI.Errno.invalid),
        ("listen_port=+1", UAPI.Errno.invalid),
        ("listen_port= 1", UAPI.Errno.invalid),
        ("fwmark=x", UAPI.Errno.invalid),
        ("fwmark=51820", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\npersistent_keepalive_interval=65536", UAPI.Errno.invalid),
        // Allowed IPs.
        ("public_key=\(Keys.peerA)\nallowed_ip=10.0.0.0/33", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nallowed_ip=10.0.0.1", UAPI.Errno.invalid),
        ("public_key=\(Keys.peerA)\nallowed_ip=10.0.0.0/8,10.1.0.0/16", UAPI.Errno.invalid),
        // Not key=value at all.
        ("listen_port", UAPI.Errno.protocolError),
        ("public_key=\(Keys.peerA)\n\nallowed_ip=10.0.0.0/8", UAPI.Errno.protocolError),
    ])
    func refusedAndNothingChanges(tail: String, errno: Int32) {
        let device = configuredDevice()
        let before = UAPI.get(device: device, listenPort: 51820)
        // Valid lines first, so a half-applied request would show.
        let body = "private_key=\(Keys.zero)\nlisten_port=9\nreplace_peers=true\n" + tail + "\n"
        let result = set(body, on: device)
        #expect(result.errno == errno)
        #expect(result.ports.isEmpty)
        #expect(UAPI.get(device: device, listenPort: 51820) == before)
    }

    @Test func errorsNameLineAndKeyButNoValue() {
        let badPSK = "public_key=\(Keys.peerA)\npreshared_key=\(Keys.psk.dropLast())x"
        let error = UAPI.validate(badPSK)
        #expect(error == .badValue(line: 2, key: "preshared_key"))
        #expect(error?.description == "UAPI set, line 2: invalid value for preshared_key")
        #expect(UAPI.validate("allowed_ip=10.0.0.0/8") == .peerKeyBeforePublicKey(line: 1, key: "\"allowed_ip\""))
        #expect(
            UAPI.validate("public_key=\(Keys.peerA)\nfoo=1")
                == .unknownKey(line: 2, key: "\"foo\"", inPeerSection: true))
        #expect(UAPI.validate("private_key=\(Keys.ourPrivate)") == nil)
        // A secret pasted as a key name is not echoed at all: only its length is told.
        let pasted = UAPI.validate(Keys.psk + "=1")?.description ?? ""
        #expect(!pasted.contains(Keys.psk.prefix(8)))
        #expect(pasted == "UAPI set, line 1: unknown device key (a 64-character name)")
    }
}
