import Testing

@testable import TunnelCrypto

/// HMAC-BLAKE2s-256 and the protocol's KDF1/KDF2/KDF3.
@Suite struct HMACAndKDFTests {
    static func hmac(key: [UInt8], _ parts: [UInt8]...) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { keyBytes in
            out.withUnsafeMutableBytes { outBytes in
                switch parts.count {
                case 1:
                    parts[0].withUnsafeBytes { Blake2s.hmac(key: keyBytes, $0, into: outBytes) }
                case 2:
                    parts[0].withUnsafeBytes { a in
                        parts[1].withUnsafeBytes { b in Blake2s.hmac(key: keyBytes, a, b, into: outBytes) }
                    }
                default:
                    preconditionFailure("one or two parts")
                }
            }
        }
        return out
    }

    /// Cross-checked against Python's `hmac.new(key, msg, hashlib.blake2s)` (independent code);
    /// the values were computed once and are hard-coded here as facts.
    static let hmacCrossCheck: [(key: [UInt8], message: [UInt8], mac: String)] = [
        (ascii("test-key"), ascii("test-input"), "ed378e02e152b574e0d9e01fb029a7066c3cc687917c28bf9dfe5b042769fa46"),
        ([], [], "eaf4bb25938f4d20e72656bbbc7a9bf63c0c18537333c35bdb67db1402661acd"),
        ((0..<32).map { UInt8($0) }, [0x01], "0eb5b63e94eb0ee56be66329386c25cca6d38e699ce487595a1bfa66e6968f35"),
        // A key of exactly one block (64 bytes) is used as given, not hashed first.
        ((0..<64).map { UInt8($0) }, ascii("abc"), "3a0ef09eac123871fb79852ec512086d013abff437bd68ca03630932bd6ba81f"),
    ]

    @Test(arguments: hmacCrossCheck)
    func hmacMatchesPython(key: [UInt8], message: [UInt8], expected: String) {
        #expect(hex(Self.hmac(key: key, message)) == expected)
    }

    @Test func hmacOfPartsEqualsHmacOfConcatenation() {
        let key = (0..<32).map { UInt8($0 * 7) }
        let message = (0..<200).map { UInt8(truncatingIfNeeded: $0) }
        let whole = Self.hmac(key: key, message)
        for split in [0, 1, 63, 64, 65, 199, 200] {
            #expect(Self.hmac(key: key, Array(message[..<split]), Array(message[split...])) == whole)
        }
    }

    /// wireguard-go `device/kdf_test.go` (`TestKDF`): key, input, then t0, t1, t2, which are
    /// the protocol's T1, T2, T3.
    static let wireguardGoKDF: [(key: String, input: String, t: [String])] = [
        (
            "746573742d6b6579", "746573742d696e707574",
            [
                "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
                "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
                "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
            ]
        ),
        (
            "776972656775617264", "776972656775617264",
            [
                "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
                "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
                "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
            ]
        ),
        (
            "", "",
            [
                "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
                "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
                "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
            ]
        ),
    ]

    @Test(arguments: wireguardGoKDF)
    func wireguardGoKDFVectors(key: String, input: String, expected: [String]) {
        let keyBytes = fromHex(key)
        let inputBytes = fromHex(input)
        for count in 1...3 {
            let outputs = keyBytes.withUnsafeBytes { k in
                inputBytes.withUnsafeBytes { KDF.derive(key: k, $0, count: count) }
            }
            #expect(outputs.map { hex($0.bytes) } == Array(expected.prefix(count)), "KDF\(count)")
        }
    }

    /// The public KDF1/2/3 (32-byte chaining key) against Python: `prk = hmac(ck, in)`,
    /// `t1 = hmac(prk, b"\x01")`, `t2 = hmac(prk, t1 + b"\x02")`, `t3 = hmac(prk, t2 + b"\x03")`,
    /// with ck = 00…1f and in = 20…3f; values computed once with `hmac`/`hashlib.blake2s`.
    @Test func publicKDFMatchesPython() {
        let chainingKey = SecretKey.test(hex: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
        let input = (32..<64).map { UInt8($0) }
        let t1 = "6a96444e20e8d4c1cee974416acae1c10b3c92886010e54ed94dafb2c3b80ea0"
        let t2 = "57af120b0de7acbe7907ec149c5ae870a2dbb74232b65777ba4123f1f7f888f5"
        let t3 = "0926c7caabb6e8d73beda759e6f4f0d324ce5b5000bcf8cd784b26db3049faa9"
        input.withUnsafeBytes { input in
            #expect(hex(KDF.kdf1(chainingKey, input).bytes) == t1)
            let (a, b) = KDF.kdf2(chainingKey, input)
            #expect(hex(a.bytes) == t1)
            #expect(hex(b.bytes) == t2)
            let (x, y, z) = KDF.kdf3(chainingKey, input)
            #expect([hex(x.bytes), hex(y.bytes), hex(z.bytes)] == [t1, t2, t3])
        }
    }
}
