import Testing
import TunnelCrypto

/// X25519 (RFC 7748) and the key types built on it.
@Suite struct X25519Tests {
    /// RFC 7748 §5.2: two scalar/u-coordinate pairs and their outputs. The scalars are not
    /// clamped and the second u has its top bit set: X25519 itself clamps and masks.
    static let rfc7748Section5Point2: [(scalar: String, u: String, output: String)] = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"
        ),
    ]

    @Test(arguments: rfc7748Section5Point2)
    func rfc7748Section5_2Vectors(scalar: String, u: String, output: String) {
        let shared = X25519.sharedSecret(.test(hex: scalar), .test(hex: u))
        #expect(shared.map { hex($0.bytes) } == output)
        // Through PrivateKey (which clamps first) the answer is the same.
        let clamped = PrivateKey(secret: .test(hex: scalar))
        #expect(X25519.sharedSecret(clamped.secret, .test(hex: u)).map { hex($0.bytes) } == output)
    }

    /// RFC 7748 §6.1: Alice's and Bob's key pairs and their shared secret.
    @Test func rfc7748Section6_1() {
        let alice = PrivateKey(secret: .test(hex: "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
        let bob = PrivateKey(secret: .test(hex: "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
        #expect(alice.publicKey.hex == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        #expect(bob.publicKey.hex == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        #expect(X25519.sharedSecret(alice.secret, bob.publicKey).map { hex($0.bytes) } == shared)
        #expect(X25519.sharedSecret(bob.secret, alice.publicKey).map { hex($0.bytes) } == shared)
    }

    /// Points of small order give an all-zero shared secret, which the protocol rejects. The list
    /// is libsodium's `has_small_order` blacklist (`crypto_scalarmult/curve25519/ref10`), the
    /// entries that stay distinct after the top bit is masked: 0, 1, the two points of order 8,
    /// and p−1, p, p+1 (p = 2^255 − 19). Python `cryptography` (OpenSSL) refuses each of them too.
    static let lowOrderPoints = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ]

    @Test(arguments: lowOrderPoints)
    func lowOrderPublicKeyIsRejected(point: String) {
        let key = PrivateKey.generate()
        #expect(X25519.sharedSecret(key.secret, .test(hex: point)) == nil)
    }

    @Test func randomPairsAgree() {
        for _ in 0..<8 {
            let a = PrivateKey.generate()
            let b = PrivateKey.generate()
            let ab = X25519.sharedSecret(a.secret, b.publicKey)
            let ba = X25519.sharedSecret(b.secret, a.publicKey)
            #expect(ab != nil)
            #expect(ab == ba)
        }
    }

    /// RFC 7748 §5 clamping: clear bits 0–2 of byte 0 and bit 7 of byte 31, set bit 6 of byte 31.
    @Test func privateKeyClamps() {
        let key = PrivateKey(secret: SecretKey { for index in $0.indices { $0[index] = 0xff } })
        let stored = key.secret.bytes
        #expect(stored[0] == 0xf8)
        #expect(stored[1...30].allSatisfy { $0 == 0xff })
        #expect(stored[31] == 0x7f)
        let low = PrivateKey(secret: .zero())
        #expect(low.secret.bytes[31] == 0x40)
        #expect(low.secret.bytes[0..<31].allSatisfy { $0 == 0 })
        // Clamping twice changes nothing, and the public key is that of the clamped scalar.
        #expect(PrivateKey(secret: key.secret) == key)
        #expect(X25519.publicKey(of: key.secret) == key.publicKey)
    }

    /// Facts from `wg pubkey` (wireguard-tools), run once: for the private key 01 02 … 20
    /// (base64 below, which `wg` clamps before use) it printed the public key below.
    @Test func publicKeyMatchesWgPubkey() throws {
        let privateBase64 = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
        let wgPubkey = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="
        let key = try #require(PrivateKey(base64: privateBase64))
        let expected = try #require(PublicKey(base64: wgPubkey))
        #expect(key.publicKey == expected)
        #expect(key.publicKey.base64 == wgPubkey)
        #expect(expected.hex == "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c")
        #expect(PublicKey(hex: expected.hex) == expected)
        // The stored secret is the clamped form: byte 0 0x01 → 0x00, byte 31 0x20 → 0x60.
        #expect(key.secret.bytes.first == 0x00 && key.secret.bytes.last == 0x60)
    }
}
