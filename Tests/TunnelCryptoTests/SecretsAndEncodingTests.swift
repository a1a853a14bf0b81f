import Testing
import TunnelCrypto

/// Secret types (equality by value, redaction) and the base64/hex boundary encodings.
@Suite struct SecretsAndEncodingTests {
    static let sampleBytes = (0..<32).map { UInt8(truncatingIfNeeded: 0xa0 + $0 * 5) }
    static var sample: SecretKey { sampleBytes.withUnsafeBytes { SecretKey(copying: $0) } }
    static let sampleBase64 = sampleBytes.withUnsafeBytes { Encoding.base64($0) }
    static let sampleHex = hex(sampleBytes)

    @Test func secretKeyEqualityIsByValue() {
        let a = Self.sample
        let b = Self.sample
        #expect(a !== b)
        #expect(a == b)
        var other = Self.sampleBytes
        other[31] ^= 0x01
        #expect(a != other.withUnsafeBytes { SecretKey(copying: $0) })
        #expect(SecretKey.zero() == SecretKey.zero())
        #expect(SecretKey.zero().isZero)
        #expect(!a.isZero)
        #expect(SecretKey.random() != SecretKey.random())
    }

    /// Every way a value can reach a log line: `description`, `debugDescription`, interpolation,
    /// `String(describing:)`, `String(reflecting:)` and `dump` (which walks stored properties).
    static func renderings(_ value: Any) -> [String] {
        var dumped = ""
        dump(value, to: &dumped)
        var renderings = ["\(value)", String(describing: value), String(reflecting: value), dumped]
        if let value = value as? CustomStringConvertible { renderings.append(value.description) }
        if let value = value as? CustomDebugStringConvertible { renderings.append(value.debugDescription) }
        return renderings
    }

    static func expectRedacted(_ value: Any, secret: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        let base64 = secret.withUnsafeBytes { Encoding.base64($0) }
        let hexLower = hex(secret)
        for text in renderings(value) {
            #expect(!text.contains(base64), "base64 leaked: \(text)", sourceLocation: sourceLocation)
            #expect(!text.lowercased().contains(hexLower), "hex leaked: \(text)", sourceLocation: sourceLocation)
            // Nor a recognisable piece of either (8 bytes' worth).
            #expect(!text.contains(base64.prefix(11)), "base64 prefix leaked: \(text)", sourceLocation: sourceLocation)
            #expect(
                !text.lowercased().contains(hexLower.prefix(16)), "hex prefix leaked: \(text)",
                sourceLocation: sourceLocation)
        }
    }

    @Test func secretsAreRedacted() throws {
        let secret = Self.sample
        Self.expectRedacted(secret, secret: Self.sampleBytes)

        let psk = PresharedKey(secret: Self.sample)
        Self.expectRedacted(psk, secret: Self.sampleBytes)
        #expect(!psk.isNone)
        #expect(PresharedKey.none().isNone)
        #expect("\(PresharedKey.none())" == "PresharedKey(none)")

        let privateKey = PrivateKey(secret: Self.sample)
        Self.expectRedacted(privateKey, secret: privateKey.secret.bytes)
        // Its description names the public key, which is not a secret.
        #expect("\(privateKey)".contains(privateKey.publicKey.base64))

        // Inside containers too.
        Self.expectRedacted([secret], secret: Self.sampleBytes)
        Self.expectRedacted(Optional(privateKey) as Any, secret: privateKey.secret.bytes)
    }

    @Test func base64RoundTrip() throws {
        let psk = try #require(PresharedKey(base64: Self.sampleBase64))
        #expect(psk.base64 == Self.sampleBase64)
        #expect(psk.secret == Self.sample)
        #expect(Self.sampleBase64.count == 44)
        // As read from a key file: a trailing newline and surrounding blanks are ignored.
        #expect(PresharedKey(base64: " \(Self.sampleBase64)\n") == psk)
        let key = PrivateKey.generate()
        #expect(PrivateKey(base64: key.base64) == key)
        #expect(PublicKey(base64: key.publicKey.base64) == key.publicKey)
    }

    static var rejectedBase64: [String] {
        let good = sampleBase64
        var badCharacter = Array(good)
        badCharacter[10] = "*"
        let urlSafe = PublicKey(hex: "fb" + String(repeating: "ff", count: 31))!.base64
        return [
            "",
            String(good.dropLast()),  // 43 characters: padding missing
            good + "A",  // 45 characters
            good + "=",  // 45 characters
            "A" + good,  // 45 characters
            String(badCharacter),
            String(good.dropLast(2)) + "B=",  // non-zero trailing bits: not canonical
            (0..<31).map { UInt8($0) }.withUnsafeBytes { Encoding.base64($0) },  // 31 bytes
            (0..<33).map { UInt8($0) }.withUnsafeBytes { Encoding.base64($0) },  // 33 bytes
            String(repeating: "A", count: 44),  // 33 bytes' worth, no padding
            String(urlSafe.map { $0 == "+" ? "-" : $0 == "/" ? "_" : $0 }),  // URL-safe alphabet
            String(good.prefix(20)) + " " + String(good.dropFirst(20)),  // space inside
        ]
    }

    @Test(arguments: rejectedBase64)
    func base64DecodeRejects(text: String) {
        #expect(PublicKey(base64: text) == nil, "\(text)")
        #expect(PrivateKey(base64: text) == nil, "\(text)")
        #expect(PresharedKey(base64: text) == nil, "\(text)")
        var out = [UInt8](repeating: 0x55, count: 32)
        let ok = out.withUnsafeMutableBytes { Encoding.decodeBase64(text, into: $0) }
        #expect(!ok)
        #expect(out.allSatisfy { $0 == 0 }, "output zeroed on failure")
    }

    @Test func hexRoundTrip() throws {
        let psk = try #require(PresharedKey(hex: Self.sampleHex))
        #expect(psk.hex == Self.sampleHex)
        #expect(psk.secret == Self.sample)
        #expect(PresharedKey(hex: Self.sampleHex.uppercased()) == psk)
        let key = PrivateKey.generate()
        #expect(PrivateKey(hex: key.hex) == key)
        #expect(key.hex == key.hex.lowercased() && key.hex.count == 64)
        #expect(PublicKey(hex: key.publicKey.hex) == key.publicKey)
        #expect(PublicKey(hex: key.publicKey.hex)?.base64 == key.publicKey.base64)
    }

    static var rejectedHex: [String] {
        let good = sampleHex
        return [
            "",
            String(good.dropLast()),  // 63
            good + "0",  // 65
            good + "00",  // 33 bytes
            String(good.dropLast(2)) + "zz",
            "g" + String(good.dropFirst()),
            String(good.dropLast(1)) + " ",
            " " + String(good.dropLast(1)),
        ]
    }

    @Test(arguments: rejectedHex)
    func hexDecodeRejects(text: String) {
        #expect(PublicKey(hex: text) == nil, "\(text)")
        #expect(PrivateKey(hex: text) == nil, "\(text)")
        #expect(PresharedKey(hex: text) == nil, "\(text)")
    }

    @Test func bytesTypes() {
        let value = Bytes32(Self.sampleBytes)
        #expect(value?.bytes == Self.sampleBytes)
        #expect(value?.hex == Self.sampleHex)
        #expect(Bytes32([UInt8](repeating: 0, count: 31)) == nil)
        #expect(Bytes32().isZero)
        let other = Bytes32(Self.sampleBytes.reversed())!
        #expect(value!.constantTimeEquals(value!))
        #expect(!value!.constantTimeEquals(other))
        let mac = Bytes16 { $0[15] = 1 }
        #expect(!mac.isZero && Bytes16().isZero)
        #expect(mac.constantTimeEquals(Bytes16 { $0[15] = 1 }))
        #expect(!mac.constantTimeEquals(Bytes16()))
    }

    struct Failure: Error {}

    /// A filling closure that throws must leave no key behind and free the storage exactly once.
    @Test func secretKeyFillThatThrows() {
        for _ in 0..<100 {
            #expect(throws: Failure.self) {
                _ = try SecretKey { bytes in
                    bytes[0] = 1
                    throw Failure()
                }
            }
        }
        // The allocator is still sound afterwards.
        #expect(SecretKey.random() != SecretKey.zero())
    }
}
