import Testing
import TunnelCrypto

/// HASH and MAC: BLAKE2s-256 and keyed BLAKE2s with a 16-byte output.
@Suite struct Blake2sTests {
    static func hash(_ message: [UInt8], outputLength: Int = 32) -> [UInt8] {
        var hasher = Blake2s(outputLength: outputLength)
        hasher.update(message)
        var out = [UInt8](repeating: 0, count: outputLength)
        out.withUnsafeMutableBytes { hasher.finalize(into: $0) }
        return out
    }

    static func keyedHash(_ message: [UInt8], key: [UInt8], outputLength: Int) -> [UInt8] {
        var hasher = key.withUnsafeBytes { Blake2s(key: $0, outputLength: outputLength) }
        hasher.update(message)
        var out = [UInt8](repeating: 0, count: outputLength)
        out.withUnsafeMutableBytes { hasher.finalize(into: $0) }
        return out
    }

    /// RFC 7693 Appendix B: BLAKE2s-256("abc").
    @Test func rfc7693AppendixB() {
        let expected = "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
        #expect(hex(Self.hash(ascii("abc"))) == expected)
        #expect(ascii("abc").withUnsafeBytes { Blake2s.hash($0) }.hex == expected)
    }

    /// BLAKE2 reference package, `testvectors/blake2s-test.txt` (the keyed KAT, also in
    /// `blake2-kat.h` as `blake2s_keyed_kat`): key = 00 01 … 1f, input = 00 01 … (n−1).
    static let keyedKAT: [(length: Int, hash: String)] = [
        (0, "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"),
        (1, "40d15fee7c328830166ac3f918650f807e7e01e177258cdc0a39b11f598066f1"),
        (2, "6bb71300644cd3991b26ccd4d274acd1adeab8b1d7914546c1198bbe9fc9d803"),
        (64, "8975b0577fd35566d750b362b0897a26c399136df07bababbde6203ff2954ed4"),
        (255, "3fb735061abc519dfe979e54c1ee5bfad0a9d858b3315bad34bde999efd724dd"),
    ]

    @Test(arguments: keyedKAT)
    func keyedKnownAnswer(length: Int, expected: String) {
        let key = (0..<32).map { UInt8($0) }
        let message = (0..<length).map { UInt8($0) }
        #expect(hex(Self.keyedHash(message, key: key, outputLength: 32)) == expected)
    }

    /// Feeding the input in pieces of any size gives the one-shot hash, including pieces that end
    /// exactly on the 64-byte block boundary (BLAKE2 must hold back the last full block).
    @Test func incrementalEqualsOneShot() {
        let key = (0..<32).map { UInt8($0) }
        let message = (0..<255).map { UInt8($0) }
        let expected = Self.keyedKAT[4].hash
        for pieceLength in [1, 3, 63, 64, 65, 128, 254] {
            var hasher = key.withUnsafeBytes { Blake2s(key: $0, outputLength: 32) }
            var start = 0
            while start < message.count {
                let end = min(start + pieceLength, message.count)
                message[start..<end].withUnsafeBytes { hasher.update($0) }
                // Empty updates anywhere change nothing.
                hasher.update([])
                start = end
            }
            var out = [UInt8](repeating: 0, count: 32)
            out.withUnsafeMutableBytes { hasher.finalize(into: $0) }
            #expect(hex(out) == expected, "pieces of \(pieceLength)")
        }
        for split in 0...message.count {
            var hasher = Blake2s()
            message[..<split].withUnsafeBytes { hasher.update($0) }
            message[split...].withUnsafeBytes { hasher.update($0) }
            var out = [UInt8](repeating: 0, count: 32)
            out.withUnsafeMutableBytes { hasher.finalize(into: $0) }
            #expect(out == Self.hash(message), "split at \(split)")
        }
    }

    /// The variadic `hash` and the mix-hash form agree with hashing the concatenation.
    @Test func hashPartsEqualsConcatenation() {
        let first = ascii("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
        let second = (0..<100).map { UInt8($0) }
        let whole = Self.hash(first + second)
        let parts = first.withUnsafeBytes { a in second.withUnsafeBytes { b in Blake2s.hash(a, b) } }
        #expect(parts.bytes == whole)
        let chained = Bytes32(first.withUnsafeBytes { Blake2s.hash($0) }.bytes)!
        let mixed = second.withUnsafeBytes { Blake2s.hash(chained, $0) }
        #expect(mixed.bytes == Self.hash(chained.bytes + second))
    }

    /// Cross-checked against Python's `hashlib.blake2s` (an independent implementation): the
    /// values were computed once with `hashlib.blake2s(data, key=key, digest_size=16)` and are
    /// hard-coded here as facts.
    static let macCrossCheck: [(key: [UInt8], message: [UInt8], mac: String)] = [
        ((0..<32).map { UInt8($0) }, [], "9536f9b267655743dee97b8a670f9f53"),
        ((0..<32).map { UInt8($0) }, ascii("abc"), "61ba5f165c194692e09d12520cc4c74a"),
        ((0..<32).map { UInt8($0) }, (0..<116).map { UInt8($0) }, "072e94ffbfc684bd8ab2a1b9dade2fd5"),
    ]

    @Test(arguments: macCrossCheck)
    func macMatchesPythonHashlib(key: [UInt8], message: [UInt8], expected: String) {
        let mac = key.withUnsafeBytes { k in message.withUnsafeBytes { Blake2s.mac(key: k, $0) } }
        #expect(hex(mac.bytes) == expected)
        #expect(hex(Self.keyedHash(message, key: key, outputLength: 16)) == expected)
    }

    /// mac1 as the protocol uses it: key = HASH("mac1----" ‖ receiver static public key), MAC over
    /// the bytes before mac1 (116 of them in an initiation). Python `hashlib` facts:
    /// `k = blake2s(b"mac1----" + bytes([0x42]*32)).digest()`,
    /// `blake2s(bytes(range(116)), key=k, digest_size=16)`.
    @Test func mac1ShapedInputMatchesPythonHashlib() {
        let label = ascii("mac1----")
        let publicKey = [UInt8](repeating: 0x42, count: 32)
        let key = label.withUnsafeBytes { l in publicKey.withUnsafeBytes { Blake2s.hash(l, $0) } }
        #expect(key.hex == "172c34d6807bd7acef1a2471f20e928626c23ce0b9f90b326cf5f82d12480a4e")
        let message = (0..<116).map { UInt8($0) }
        let mac = key.withUnsafeBytes { k in message.withUnsafeBytes { Blake2s.mac(key: k, $0) } }
        #expect(hex(mac.bytes) == "5f482220eac57889e922c176d202190b")
    }

    /// Unkeyed with a 16-byte output: Python `hashlib.blake2s(b"abc", digest_size=16)`.
    @Test func unkeyedShortOutputMatchesPythonHashlib() {
        #expect(hex(Self.hash(ascii("abc"), outputLength: 16)) == "aa4938119b1dc7b87cbad0ffd200d0ae")
    }

    /// PROTOCOL.md ("Handshake"): C0 = HASH(construction), H0 = HASH(C0 ‖ identifier); the same
    /// values are wireguard-go's `InitialChainKey`/`InitialHash` (`device/noise-protocol.go`).
    @Test func protocolInitialChainingKeyAndHash() {
        let construction = ascii("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
        let identifier = ascii("WireGuard v1 zx2c4 Jason@zx2c4.com")
        let c0 = construction.withUnsafeBytes { Blake2s.hash($0) }
        #expect(c0.hex == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
        let h0 = identifier.withUnsafeBytes { Blake2s.hash(c0, $0) }
        #expect(h0.hex == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")
    }
}
