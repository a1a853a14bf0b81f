import Testing
import TunnelCrypto

/// ChaCha20-Poly1305 (IETF, protocol nonce) and XChaCha20-Poly1305.
@Suite struct AEADTests {
    static func seal(key: SecretKey, counter: UInt64, _ plaintext: [UInt8], ad: [UInt8] = []) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + ChaChaPoly.tagLength)
        plaintext.withUnsafeBytes { p in
            ad.withUnsafeBytes { a in
                out.withUnsafeMutableBytes { o in
                    ChaChaPoly.seal(key: key, counter: counter, plaintext: p, additionalData: a, into: o.baseAddress!)
                }
            }
        }
        return out
    }

    static func open(key: SecretKey, counter: UInt64, _ sealed: [UInt8], ad: [UInt8] = []) -> [UInt8]? {
        guard sealed.count >= ChaChaPoly.tagLength else { return nil }
        // One spare byte so the output pointer exists even for an empty plaintext.
        var out = [UInt8](repeating: 0, count: sealed.count - ChaChaPoly.tagLength + 1)
        let ok = sealed.withUnsafeBytes { c in
            ad.withUnsafeBytes { a in
                out.withUnsafeMutableBytes { o in
                    ChaChaPoly.open(key: key, counter: counter, ciphertext: c, additionalData: a, into: o.baseAddress!)
                }
            }
        }
        return ok ? Array(out.dropLast()) : nil
    }

    // MARK: RFC 8439 §A.5

    /// RFC 8439 Appendix A.5 (ChaCha20-Poly1305 AEAD decryption). Its nonce 00000000 01020304
    /// 05060708 is the protocol's layout (4 zero bytes ‖ LE64 counter) with counter
    /// 0x0807060504030201, so the public API expresses it as given. (§2.8.2's nonce 07000000 …
    /// does not start with 4 zero bytes, so it cannot be expressed; A.5 stands in for it.)
    enum RFC8439A5 {
        static let key = "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0"
        static let counter: UInt64 = 0x0807_0605_0403_0201
        static let ad = "f33388860000000000004e91"
        static let plaintext = """
            496e7465726e65742d4472616674732061726520647261667420646f63756d65
            6e74732076616c696420666f722061206d6178696d756d206f6620736978206d
            6f6e74687320616e64206d617920626520757064617465642c207265706c6163
            65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65
            6e747320617420616e792074696d652e20497420697320696e617070726f7072
            6961746520746f2075736520496e7465726e65742d4472616674732061732072
            65666572656e6365206d6174657269616c206f7220746f206369746520746865
            6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67
            726573732e2fe2809d
            """
        static let ciphertext = """
            64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
            4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
            332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
            9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
            b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
            af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
            0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
            49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
            a6ad5cb4022b02709b
            """
        static let tag = "eead9d67890cbb22392336fea1851f38"
    }

    @Test func rfc8439AppendixA5() {
        let key = SecretKey.test(hex: RFC8439A5.key)
        let plaintext = fromHex(RFC8439A5.plaintext)
        let sealed = fromHex(RFC8439A5.ciphertext) + fromHex(RFC8439A5.tag)
        let ad = fromHex(RFC8439A5.ad)
        #expect(plaintext.count == 265)
        #expect(Self.open(key: key, counter: RFC8439A5.counter, sealed, ad: ad) == plaintext)
        #expect(Self.seal(key: key, counter: RFC8439A5.counter, plaintext, ad: ad) == sealed)
    }

    // MARK: The protocol nonce, cross-checked

    /// Cross-checked against Python `cryptography`'s `ChaCha20Poly1305` (OpenSSL, independent of
    /// libsodium), computed once as `ChaCha20Poly1305(key).encrypt(b"\0"*4 + counter.to_bytes(8,
    /// "little"), plaintext, ad)` with key = 80 81 … 9f, and hard-coded here as facts.
    static let protocolNonceCrossCheck: [(counter: UInt64, plaintext: [UInt8], ad: [UInt8], sealed: String)] = [
        // A keepalive: empty plaintext, 16-byte tag only.
        (0, [], [], "3ae5d3f2a376d317eaea5aef0215ba54"),
        (1, ascii("hello, tunnel"), [], "8b74186111530792176bb473e6863bba42a4a05f4bc3713da12907363b"),
        (
            0x0102_0304_0506_0708, (0..<64).map { UInt8($0) }, ascii("ad"),
            "f4b0ecb854df5dda2bb87b80027a6bd0e36246f8263f85b9132962857956977d"
                + "a447169699db524b54b62be11649da70e2e2a9c2c64fbcc2f6f3925b7997ba4a"
                + "746efe82821d06459b86576b9c71c721"
        ),
        (
            UInt64.max, [UInt8](repeating: 0x78, count: 17), [],
            "4e9c1870937b7f3c762b407a2a8770d4967f20dd45085b0bdb437985910c809083"
        ),
    ]

    static let crossCheckKey = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"

    @Test(arguments: protocolNonceCrossCheck)
    func protocolNonceMatchesPython(counter: UInt64, plaintext: [UInt8], ad: [UInt8], expected: String) {
        let key = SecretKey.test(hex: Self.crossCheckKey)
        let sealed = Self.seal(key: key, counter: counter, plaintext, ad: ad)
        #expect(hex(sealed) == expected)
        #expect(Self.open(key: key, counter: counter, sealed, ad: ad) == plaintext)
    }

    // MARK: In place, and tampering

    @Test func sealAndOpenInPlace() {
        let key = SecretKey.random()
        let plaintext = (0..<1420).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let expected = Self.seal(key: key, counter: 42, plaintext)
        // One buffer: plaintext at the front, room for the tag after it.
        var buffer = plaintext + [UInt8](repeating: 0, count: 16)
        buffer.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress!
            ChaChaPoly.seal(
                key: key, counter: 42, plaintext: UnsafeRawBufferPointer(start: base, count: plaintext.count),
                into: base)
        }
        #expect(buffer == expected)
        let ok = buffer.withUnsafeMutableBytes { raw in
            ChaChaPoly.open(key: key, counter: 42, ciphertext: UnsafeRawBufferPointer(raw), into: raw.baseAddress!)
        }
        #expect(ok)
        #expect(Array(buffer.prefix(plaintext.count)) == plaintext)
    }

    @Test func tamperingIsDetected() {
        let key = SecretKey.random()
        let plaintext = ascii("a packet that must arrive intact")
        let ad = ascii("header")
        let sealed = Self.seal(key: key, counter: 7, plaintext, ad: ad)
        #expect(Self.open(key: key, counter: 7, sealed, ad: ad) == plaintext)
        // Every single-bit flip in ciphertext or tag fails.
        for index in sealed.indices {
            for bit in 0..<8 {
                var bad = sealed
                bad[index] ^= 1 << bit
                #expect(Self.open(key: key, counter: 7, bad, ad: ad) == nil, "byte \(index) bit \(bit)")
            }
        }
        for index in ad.indices {
            var badAD = ad
            badAD[index] ^= 0x01
            #expect(Self.open(key: key, counter: 7, sealed, ad: badAD) == nil)
        }
        #expect(Self.open(key: key, counter: 7, sealed, ad: []) == nil)
        #expect(Self.open(key: key, counter: 8, sealed, ad: ad) == nil)
        #expect(Self.open(key: SecretKey.random(), counter: 7, sealed, ad: ad) == nil)
        // Shorter than a tag: refused without reading.
        var out = [UInt8](repeating: 0, count: 16)
        let short = [UInt8](repeating: 0, count: 15)
        let ok = short.withUnsafeBytes { c in
            out.withUnsafeMutableBytes { ChaChaPoly.open(key: key, counter: 0, ciphertext: c, into: $0.baseAddress!) }
        }
        #expect(!ok)
    }

    // MARK: The transport path (sealInPlace / openInPlace)

    /// `sealInPlace` on a copy of `plaintext` with `before` and `after` guard bytes around it:
    /// returns ciphertext ‖ tag, and checks the guards were not touched.
    static func sealTransport(key: SecretKey, counter: UInt64, _ plaintext: [UInt8]) -> [UInt8] {
        let guardBytes = [UInt8](repeating: 0xa5, count: 600)
        var buffer = guardBytes + plaintext + [UInt8](repeating: 0, count: 16) + guardBytes
        buffer.withUnsafeMutableBytes { raw in
            let message = UnsafeMutableRawBufferPointer(rebasing: raw[600..<(600 + plaintext.count)])
            ChaChaPoly.sealInPlace(
                key: key, counter: counter, message: message, tag: raw.baseAddress! + 600 + plaintext.count)
        }
        #expect(Array(buffer.prefix(600)) == guardBytes)
        #expect(Array(buffer.suffix(600)) == guardBytes)
        return Array(buffer[600..<(600 + plaintext.count + 16)])
    }

    /// `openInPlace` on ciphertext ‖ tag between guard bytes: the plaintext, or nil (on the
    /// chunked path with the ciphertext left exactly as it was).
    static func openTransport(key: SecretKey, counter: UInt64, _ sealed: [UInt8]) -> [UInt8]? {
        let guardBytes = [UInt8](repeating: 0x5a, count: 600)
        let length = sealed.count - 16
        var buffer = guardBytes + sealed + guardBytes
        let ok = buffer.withUnsafeMutableBytes { raw in
            ChaChaPoly.openInPlace(
                key: key, counter: counter, message: UnsafeMutableRawBufferPointer(rebasing: raw[600..<(600 + length)]),
                tag: raw.baseAddress! + 600 + length)
        }
        #expect(Array(buffer.prefix(600)) == guardBytes)
        #expect(Array(buffer.suffix(600)) == guardBytes)
        if !ok, length >= ChaChaPoly.chunkedFrom {
            // The chunked path verifies before it decrypts anything (libsodium's zeroes a short message).
            #expect(Array(buffer[600..<(600 + sealed.count)]) == sealed, "a failed open changed the buffer")
        }
        return ok ? Array(buffer[600..<(600 + length)]) : nil
    }

    /// Differential: every length from 0 to 3000 (all remainders against the 512-byte chunks and
    /// the 448-byte first chunk) gives exactly libsodium's AEAD output, and opens back; so does
    /// the roomy seal, with room and without.
    @Test func transportPathMatchesLibsodiumAEADAtEveryLength() {
        let key = SecretKey.random()
        var generator = SystemRandomNumberGenerator()
        let data = (0..<3000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for length in 0...3000 {
            let plaintext = Array(data.prefix(length))
            let counter = UInt64(length) &* 0x9e37_79b9_7f4a_7c15
            let expected = Self.seal(key: key, counter: counter, plaintext)
            let sealed = Self.sealTransport(key: key, counter: counter, plaintext)
            #expect(sealed == expected, "length \(length)")
            #expect(Self.openTransport(key: key, counter: counter, sealed) == plaintext, "length \(length)")
            Self.checkRoomySeal(key: key, counter: counter, plaintext, expected: expected)
            Self.checkRoomyOpen(key: key, counter: counter, expected, plaintext: plaintext)
        }
    }

    /// What the out-of-place open did: the plaintext (nil when refused), the region's bytes
    /// (neighbours included) and the scratch afterwards.
    struct RoomyOpen {
        var plaintext: [UInt8]?
        var region: [UInt8]
        var scratch: [UInt8]
    }

    /// The out-of-place open of `sealed` (ciphertext ‖ tag) placed `front` bytes into a region
    /// with `back` bytes behind the tag, filled around it with bytes a neighbour might hold, and
    /// itself between guard bytes, which it checks were not touched.
    static func openWithRoom(
        key: SecretKey, counter: UInt64, _ sealed: [UInt8], front: Int, back: Int, scratchSize: Int
    ) -> RoomyOpen {
        let guardBytes = [UInt8](repeating: 0x5a, count: 600)
        let neighbours = (0..<(front + back)).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }
        let region = Array(neighbours.prefix(front)) + sealed + Array(neighbours.suffix(back))
        var buffer = guardBytes + region + guardBytes
        var scratch = [UInt8](repeating: 0xc3, count: scratchSize)
        let length = sealed.count - 16
        let ok = buffer.withUnsafeMutableBytes { raw in
            scratch.withUnsafeMutableBytes { scratch in
                ChaChaPoly.openInPlace(
                    key: key, counter: counter, message: front..<(front + length),
                    in: UnsafeMutableRawBufferPointer(rebasing: raw[600..<(600 + region.count)]), scratch: scratch)
            }
        }
        #expect(Array(buffer.prefix(600)) == guardBytes)
        #expect(Array(buffer.suffix(600)) == guardBytes)
        let after = Array(buffer[600..<(600 + region.count)])
        return RoomyOpen(
            plaintext: ok ? Array(after[front..<(front + length)]) : nil, region: after, scratch: scratch)
    }

    /// The out-of-place open of libsodium's `sealed` output: with exactly the room and scratch it
    /// asks for it gives `plaintext`, writes nothing but the message, and leaves block 0 of the
    /// scratch zeroed; one byte short of room or scratch, the fallback opens it as well.
    static func checkRoomyOpen(key: SecretKey, counter: UInt64, _ sealed: [UInt8], plaintext: [UInt8]) {
        let length = plaintext.count
        let span = ChaChaPoly.roomySpan(messageLength: length)
        let back = max(span - ChaChaPoly.roomInFront - length - 16, 0)
        #expect(back <= ChaChaPoly.roomBehind - 16, "length \(length)")
        let roomy = openWithRoom(key: key, counter: counter, sealed, front: 64, back: back, scratchSize: span)
        #expect(roomy.plaintext == plaintext, "length \(length)")
        var expectedRegion = roomy.region
        expectedRegion.replaceSubrange(64..<(64 + length), with: plaintext)
        #expect(roomy.region == expectedRegion, "length \(length): a neighbour changed")
        if length >= ChaChaPoly.chunkedFrom {
            #expect(roomy.scratch.prefix(64).allSatisfy { $0 == 0 }, "length \(length): the Poly1305 key was left")
        } else {
            #expect(roomy.scratch.allSatisfy { $0 == 0xc3 }, "length \(length): short messages use no scratch")
        }
        for (front, back, scratch) in [(63, back, span), (64, back - 1, span), (64, back, span - 1)] where back >= 0 {
            let short = openWithRoom(key: key, counter: counter, sealed, front: front, back: back, scratchSize: scratch)
            #expect(short.plaintext == plaintext, "length \(length), room \(front)/\(back), scratch \(scratch)")
            #expect(short.scratch.allSatisfy { $0 == 0xc3 }, "length \(length): the fallback uses no scratch")
        }
    }

    /// A flipped bit anywhere, a wrong counter or key: the out-of-place open refuses, leaves the
    /// region exactly as it was and the scratch zeroed (the unauthenticated plaintext it made).
    @Test func outOfPlaceOpenRejectsTamperingAndKeepsNothing() {
        let key = SecretKey.random()
        let plaintext = (0..<1420).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let sealed = Self.seal(key: key, counter: 9, plaintext)
        let span = ChaChaPoly.roomySpan(messageLength: 1420)
        let back = span - ChaChaPoly.roomInFront - 1420 - 16
        func attempt(_ sealed: [UInt8], counter: UInt64 = 9, key: SecretKey = key) -> RoomyOpen {
            Self.openWithRoom(key: key, counter: counter, sealed, front: 64, back: back, scratchSize: span)
        }
        for index in [0, 1, 447, 448, 960, 1419, 1420, 1435] {
            var bad = sealed
            bad[index] ^= 0x80
            let refused = attempt(bad)
            #expect(refused.plaintext == nil, "byte \(index)")
            #expect(Array(refused.region[64..<(64 + 1436)]) == bad, "byte \(index): the region changed")
            #expect(refused.scratch.allSatisfy { $0 == 0 }, "byte \(index): plaintext left in the scratch")
        }
        #expect(attempt(sealed, counter: 10).plaintext == nil)
        #expect(attempt(sealed, key: SecretKey.random()).plaintext == nil)
        #expect(attempt(sealed).plaintext == plaintext)
    }

    /// The roomy seal on `plaintext` placed `front` bytes into a region of `front + length +
    /// back` bytes, itself between guard bytes: returns ciphertext ‖ tag and the region's bytes
    /// before the message, and checks the guards were not touched.
    static func sealWithRoom(
        key: SecretKey, counter: UInt64, _ plaintext: [UInt8], front: Int, back: Int
    ) -> (sealed: [UInt8], before: [UInt8]) {
        let guardBytes = [UInt8](repeating: 0xa5, count: 600)
        let stale = [UInt8](repeating: 0xee, count: front)  // whatever the slot held before
        var buffer = guardBytes + stale + plaintext + [UInt8](repeating: 0xee, count: back) + guardBytes
        buffer.withUnsafeMutableBytes { raw in
            let region = UnsafeMutableRawBufferPointer(rebasing: raw[600..<(600 + front + plaintext.count + back)])
            ChaChaPoly.sealInPlace(
                key: key, counter: counter, message: front..<(front + plaintext.count), in: region)
        }
        #expect(Array(buffer.prefix(600)) == guardBytes)
        #expect(Array(buffer.suffix(600)) == guardBytes)
        let start = 600 + front
        return (Array(buffer[start..<(start + plaintext.count + 16)]), Array(buffer[600..<start]))
    }

    /// The roomy seal of `plaintext` against libsodium's AEAD output `expected`: with exactly
    /// the room it asks for, the room is left zeroed; one byte short in front or behind, the
    /// fallback leaves the bytes in front as they were.
    static func checkRoomySeal(key: SecretKey, counter: UInt64, _ plaintext: [UInt8], expected: [UInt8]) {
        let length = plaintext.count
        let span = ChaChaPoly.roomySpan(messageLength: length)
        #expect(span % 512 == 0 && span >= ChaChaPoly.roomInFront + length, "length \(length)")
        let back = max(span - ChaChaPoly.roomInFront - length, 16)
        let roomy = sealWithRoom(key: key, counter: counter, plaintext, front: 64, back: back)
        #expect(roomy.sealed == expected, "length \(length)")
        let room: UInt8 = length >= ChaChaPoly.chunkedFrom ? 0 : 0xee
        #expect(roomy.before == Array(repeating: room, count: 64), "length \(length)")
        for (front, back) in [(63, back), (64, span - ChaChaPoly.roomInFront - length - 1)] where back >= 16 {
            let short = sealWithRoom(key: key, counter: counter, plaintext, front: front, back: back)
            #expect(short.sealed == expected, "length \(length), room \(front)/\(back)")
            #expect(short.before == Array(repeating: 0xee, count: front), "length \(length): fallback")
        }
    }

    @Test(arguments: protocolNonceCrossCheck.filter { $0.ad.isEmpty })
    func transportPathMatchesPython(counter: UInt64, plaintext: [UInt8], ad: [UInt8], expected: String) {
        let key = SecretKey.test(hex: Self.crossCheckKey)
        let sealed = Self.sealTransport(key: key, counter: counter, plaintext)
        #expect(hex(sealed) == expected)
        #expect(Self.openTransport(key: key, counter: counter, sealed) == plaintext)
    }

    /// A flipped bit anywhere (first chunk, whole chunks, remainder, tag), the wrong counter or the
    /// wrong key: refused, buffer unchanged.
    @Test(arguments: [(1420, [0, 1, 447, 448, 449, 959, 960, 1419, 1420, 1435]), (64, [0, 63, 64, 79])])
    func transportPathRejectsTampering(length: Int, flipped: [Int]) {
        let key = SecretKey.random()
        let plaintext = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let sealed = Self.sealTransport(key: key, counter: 9, plaintext)
        for index in flipped {
            for bit in [0, 7] {
                var bad = sealed
                bad[index] ^= 1 << bit
                #expect(Self.openTransport(key: key, counter: 9, bad) == nil, "byte \(index) bit \(bit)")
            }
        }
        #expect(Self.openTransport(key: key, counter: 10, sealed) == nil)
        #expect(Self.openTransport(key: SecretKey.random(), counter: 9, sealed) == nil)
        #expect(Self.openTransport(key: key, counter: 9, sealed) == plaintext)
    }

    // MARK: XChaCha20-Poly1305

    /// draft-irtf-cfrg-xchacha-03, Appendix A.3.1 (the same vector is in libsodium's
    /// `test/default/aead_xchacha20poly1305.c`).
    enum XChaChaA3_1 {
        static let key = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
        static let nonce = "404142434445464748494a4b4c4d4e4f5051525354555657"
        static let ad = "50515253c0c1c2c3c4c5c6c7"
        static let plaintext =
            "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."
        static let ciphertext = """
            bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
            731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
            2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
            21f9664c97637da9768812f615c68b13b52e
            """
        static let tag = "c0875924c1c7987947deafd8780acf49"
    }

    static func xseal(key: [UInt8], nonce: [UInt8], _ plaintext: [UInt8], ad: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + XChaChaPoly.tagLength)
        key.withUnsafeBytes { k in
            nonce.withUnsafeBytes { n in
                plaintext.withUnsafeBytes { p in
                    ad.withUnsafeBytes { a in
                        out.withUnsafeMutableBytes { o in
                            XChaChaPoly.seal(key: k, nonce: n, plaintext: p, additionalData: a, into: o.baseAddress!)
                        }
                    }
                }
            }
        }
        return out
    }

    static func xopen(key: [UInt8], nonce: [UInt8], _ sealed: [UInt8], ad: [UInt8]) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: max(sealed.count - XChaChaPoly.tagLength, 0) + 1)
        let ok = key.withUnsafeBytes { k in
            nonce.withUnsafeBytes { n in
                sealed.withUnsafeBytes { c in
                    ad.withUnsafeBytes { a in
                        out.withUnsafeMutableBytes { o in
                            XChaChaPoly.open(key: k, nonce: n, ciphertext: c, additionalData: a, into: o.baseAddress!)
                        }
                    }
                }
            }
        }
        return ok ? Array(out.dropLast()) : nil
    }

    @Test func xchachaDraftA3_1() {
        let key = fromHex(XChaChaA3_1.key)
        let nonce = fromHex(XChaChaA3_1.nonce)
        let ad = fromHex(XChaChaA3_1.ad)
        let plaintext = ascii(XChaChaA3_1.plaintext)
        let sealed = fromHex(XChaChaA3_1.ciphertext) + fromHex(XChaChaA3_1.tag)
        #expect(Self.xseal(key: key, nonce: nonce, plaintext, ad: ad) == sealed)
        #expect(Self.xopen(key: key, nonce: nonce, sealed, ad: ad) == plaintext)
        for index in [0, plaintext.count - 1, plaintext.count, sealed.count - 1] {
            var bad = sealed
            bad[index] ^= 0x80
            #expect(Self.xopen(key: key, nonce: nonce, bad, ad: ad) == nil)
        }
        var badAD = ad
        badAD[0] ^= 0x01
        #expect(Self.xopen(key: key, nonce: nonce, sealed, ad: badAD) == nil)
        var badNonce = nonce
        badNonce[23] ^= 0x01
        #expect(Self.xopen(key: key, nonce: badNonce, sealed, ad: ad) == nil)
    }

    /// The cookie reply's shape: a 16-byte cookie sealed in place under a 24-byte nonce, with the
    /// mac1 being answered as associated data.
    @Test func xchachaInPlace() {
        let key = fromHex(XChaChaA3_1.key)
        let nonce = fromHex(XChaChaA3_1.nonce)
        let cookie = (0..<16).map { UInt8($0) }
        let mac1 = [UInt8](repeating: 0xaa, count: 16)
        let expected = Self.xseal(key: key, nonce: nonce, cookie, ad: mac1)
        var buffer = cookie + [UInt8](repeating: 0, count: 16)
        key.withUnsafeBytes { k in
            nonce.withUnsafeBytes { n in
                mac1.withUnsafeBytes { a in
                    buffer.withUnsafeMutableBytes { raw in
                        XChaChaPoly.seal(
                            key: k, nonce: n, plaintext: UnsafeRawBufferPointer(start: raw.baseAddress, count: 16),
                            additionalData: a, into: raw.baseAddress!)
                    }
                }
            }
        }
        #expect(buffer == expected)
        let ok = key.withUnsafeBytes { k in
            nonce.withUnsafeBytes { n in
                mac1.withUnsafeBytes { a in
                    buffer.withUnsafeMutableBytes { raw in
                        XChaChaPoly.open(
                            key: k, nonce: n, ciphertext: UnsafeRawBufferPointer(raw), additionalData: a,
                            into: raw.baseAddress!)
                    }
                }
            }
        }
        #expect(ok)
        #expect(Array(buffer.prefix(16)) == cookie)
    }
}
