import Testing
import TunnelCrypto

@testable import TunnelCore

/// Shared by the handshake and cookie tests: hex facts and fixed key pairs.
enum HandshakeFixture {
    static func bytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.utf8)
        precondition(digits.count % 2 == 0)
        func nibble(_ c: UInt8) -> UInt8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            default: preconditionFailure("not hex")
            }
        }
        return stride(from: 0, to: digits.count, by: 2).map { nibble(digits[$0]) << 4 | nibble(digits[$0 + 1]) }
    }

    static func privateKey(_ hex: String) -> PrivateKey {
        PrivateKey(secret: bytes(hex).withUnsafeBytes { SecretKey(copying: $0) })
    }

    static func publicKey(_ hex: String) -> PublicKey {
        PublicKey(Bytes32(bytes(hex))!)
    }

    static func secretBytes(_ key: SecretKey) -> [UInt8] { key.withUnsafeBytes { Array($0) } }

    /// Two configured peers that know each other.
    struct Pair {
        let initiator: LocalIdentity
        let responder: LocalIdentity
        /// The responder as the initiator knows it, and vice versa.
        let responderSeenByInitiator: RemoteIdentity
        let initiatorSeenByResponder: RemoteIdentity

        init(initiatorPSK: PresharedKey = .none(), responderPSK: PresharedKey? = nil) {
            initiator = LocalIdentity(privateKey: .generate())
            responder = LocalIdentity(privateKey: .generate())
            responderSeenByInitiator = RemoteIdentity(
                publicKey: responder.publicKey, presharedKey: initiatorPSK, local: initiator)
            initiatorSeenByResponder = RemoteIdentity(
                publicKey: initiator.publicKey, presharedKey: responderPSK ?? initiatorPSK, local: responder)
        }

        func initiation(
            index: UInt32 = 0x1111_1111, timestamp: TAI64N = TAI64N(unixSeconds: 1_700_000_000, nanoseconds: 0)
        ) -> ([UInt8], InitiationState) {
            var message = [UInt8](repeating: 0xaa, count: InitiationMessage.size)
            let state = message.withUnsafeMutableBytes {
                Noise.createInitiation(
                    local: initiator, remote: responderSeenByInitiator, senderIndex: index, timestamp: timestamp,
                    ephemeral: .generate(), into: $0)
            }
            return (message, state!)
        }

        func consume(_ message: [UInt8]) -> ConsumedInitiation? {
            message.withUnsafeBytes { raw in
                Noise.consumeInitiation(local: responder, message: raw) { key in
                    key == initiator.publicKey ? initiatorSeenByResponder : nil
                }
            }
        }

        func response(to consumed: ConsumedInitiation, index: UInt32 = 0x2222_2222) -> ([UInt8], TransportKeys) {
            var message = [UInt8](repeating: 0x55, count: ResponseMessage.size)
            let keys = message.withUnsafeMutableBytes {
                Noise.createResponse(
                    for: consumed, remote: initiatorSeenByResponder, senderIndex: index, ephemeral: .generate(),
                    into: $0)
            }
            return (message, keys!)
        }

        func consumeResponse(_ message: [UInt8], state: InitiationState) -> TransportKeys? {
            message.withUnsafeBytes {
                Noise.consumeResponse(state: state, local: initiator, remote: responderSeenByInitiator, message: $0)
            }
        }
    }

    /// Curve25519 points of small order (libsodium's `has_small_order` blocklist in
    /// `crypto_scalarmult/curve25519/ref10/x25519_ref10.c`): X25519 with any of them is all zero.
    static let smallOrderPoints = [
        "0000000000000000000000000000000000000000000000000000000000000000",  // 0
        "0100000000000000000000000000000000000000000000000000000000000000",  // 1
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  // order 8
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  // order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  // p - 1
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  // p
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  // p + 1
    ]
}

@Suite struct NoiseTests {
    typealias F = HandshakeFixture

    /// C0 and H0 from PROTOCOL.md (they match wireguard-go's `InitialChainKey`/`InitialHash`
    /// computed in `device/noise-protocol.go` `init()`).
    @Test func initialChainingKeyAndHash() {
        #expect(
            Noise.wireGuardStart.chainingKey.hex
                == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
        #expect(Noise.wireGuardStart.hash.hex == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")
    }

    /// The Noise test vector `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` (prologue "John Galt") from
    /// the cacophony project: haskell-cryptography/cacophony `vectors/cacophony.txt` (commit
    /// 36c1e5c3a799342b226547ce9fdb3579ab60ccd3), also shipped by snow and noise-c. The same
    /// pattern functions WireGuard uses run with the vector's construction, prologue and payloads;
    /// Noise message 1 is e ‖ enc(s) ‖ enc(payload), message 2 is e ‖ enc(payload), then four
    /// transport messages alternate initiator (nonces 0, 1) and responder (nonces 0, 1).
    @Test func cacophonyIKpsk2Vector() throws {
        let start = Noise.HandshakeStart(
            construction: "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s", prologue: F.bytes("4a6f686e2047616c74"))
        let psk = F.bytes("54686973206973206d7920417573747269616e20706572737065637469766521").withUnsafeBytes {
            SecretKey(copying: $0)
        }
        let initStatic = F.privateKey("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1")
        let initEphemeral = F.privateKey("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a")
        let respStatic = F.privateKey("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893")
        let respEphemeral = F.privateKey("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b")
        #expect(respStatic.publicKey == F.publicKey("31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62"))

        // Message 1, written by the initiator.
        let payload1 = F.bytes("4c756477696720766f6e204d69736573")
        let expected1 = F.bytes(
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
                + "001e21de9f98ddd8e2ad57527207feb56253c9c94a9e496782ecfcb2a75fbcaf1b52948cc48daefe660c62119ab500"
                + "0980c84831215f2441eba616548e832985464cf17e51ee93109008399a21f7e13f")
        let staticStatic = try #require(X25519.sharedSecret(initStatic.secret, respStatic.publicKey))
        var message1 = [UInt8](repeating: 0, count: 32 + 48 + payload1.count + 16)
        let initiatorAfter1 = try #require(
            message1.withUnsafeMutableBytes { out in
                payload1.withUnsafeBytes { payload in
                    Noise.writeInitiation(
                        start: start, localStatic: initStatic, remoteStatic: respStatic.publicKey,
                        staticStatic: staticStatic, ephemeral: initEphemeral, payload: payload,
                        ephemeralOut: out.wireField(0, 32), staticOut: out.wireField(32, 48),
                        payloadOut: out.wireField(80, payload1.count + 16))
                }
            })
        #expect(message1 == expected1)

        // Message 1, read by the responder.
        let identity = try #require(
            message1.withUnsafeBytes { raw in
                Noise.readInitiationIdentity(
                    start: start, localStatic: respStatic, ephemeral: raw.wireField(0, 32),
                    encryptedStatic: raw.wireField(32, 48))
            })
        #expect(identity.remoteStatic == initStatic.publicKey)
        #expect(identity.remoteEphemeral == initEphemeral.publicKey)
        var decrypted1 = [UInt8](repeating: 0, count: payload1.count)
        let responderStaticStatic = try #require(X25519.sharedSecret(respStatic.secret, initStatic.publicKey))
        let responderAfter1 = try #require(
            message1.withUnsafeBytes { raw in
                decrypted1.withUnsafeMutableBytes { out in
                    Noise.readInitiationPayload(
                        hash: identity.hash, chainingKey: identity.chainingKey, staticStatic: responderStaticStatic,
                        encryptedPayload: raw.wireField(80, raw.count - 80), payloadOut: out)
                }
            })
        #expect(decrypted1 == payload1)
        #expect(responderAfter1.hash == initiatorAfter1.hash)
        #expect(responderAfter1.chainingKey == initiatorAfter1.chainingKey)

        // Message 2, written by the responder.
        let payload2 = F.bytes("4d757272617920526f746862617264")
        let expected2 = F.bytes(
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
                + "cb765f2caef0751b8f007572dab0322217755c0632f365717edbf34d33e87a")
        var message2 = [UInt8](repeating: 0, count: 32 + payload2.count + 16)
        let responderAfter2 = try #require(
            message2.withUnsafeMutableBytes { out in
                payload2.withUnsafeBytes { payload in
                    Noise.writeResponse(
                        hash: responderAfter1.hash, chainingKey: responderAfter1.chainingKey,
                        remoteEphemeral: identity.remoteEphemeral, remoteStatic: identity.remoteStatic,
                        presharedKey: psk, ephemeral: respEphemeral, payload: payload,
                        ephemeralOut: out.wireField(0, 32), payloadOut: out.wireField(32, payload2.count + 16))
                }
            })
        #expect(message2 == expected2)

        // Message 2, read by the initiator.
        var decrypted2 = [UInt8](repeating: 0, count: payload2.count)
        let initiatorAfter2 = try #require(
            message2.withUnsafeBytes { raw in
                decrypted2.withUnsafeMutableBytes { out in
                    Noise.readResponse(
                        hash: initiatorAfter1.hash, chainingKey: initiatorAfter1.chainingKey,
                        localEphemeral: initEphemeral, localStatic: initStatic, presharedKey: psk,
                        ephemeral: raw.wireField(0, 32), encryptedPayload: raw.wireField(32, raw.count - 32),
                        payloadOut: out)
                }
            })
        #expect(decrypted2 == payload2)
        #expect(initiatorAfter2.hash == responderAfter2.hash)

        // Transport: Split() gives (initiator → responder, responder → initiator).
        let (initiatorToResponder, responderToInitiator) = Noise.split(initiatorAfter2.chainingKey)
        let (checkForward, checkBackward) = Noise.split(responderAfter2.chainingKey)
        #expect(initiatorToResponder == checkForward && responderToInitiator == checkBackward)
        let transport: [(key: SecretKey, counter: UInt64, payload: String, ciphertext: String)] = [
            (
                initiatorToResponder, 0, "462e20412e20486179656b",
                "8153ca9833bc3c1b91a7e66e5f4d4f5b59bf9e64c2f20d15f0bba7"
            ),
            (
                responderToInitiator, 0, "4361726c204d656e676572",
                "07af0c9c86e1b4e80f36b04ff7688d51141af3debd0332f0a705ef"
            ),
            (
                initiatorToResponder, 1, "4a65616e2d426170746973746520536179",
                "6ab1467c0448cc78394494abaaf23afce0e234315d6e2624dcbfa8a21c1c4d073d"
            ),
            (
                responderToInitiator, 1, "457567656e2042f6686d20766f6e2042617765726b",
                "dfc346c0d2296ae6cf1acf6f12b8456a1dba228cf8d8b774aacf1c47fc53aa80ebc7a4c292"
            ),
        ]
        for step in transport {
            let plaintext = F.bytes(step.payload)
            var sealed = [UInt8](repeating: 0, count: plaintext.count + 16)
            plaintext.withUnsafeBytes { input in
                sealed.withUnsafeMutableBytes {
                    ChaChaPoly.seal(key: step.key, counter: step.counter, plaintext: input, into: $0.baseAddress!)
                }
            }
            #expect(sealed == F.bytes(step.ciphertext))
        }
    }

    @Test(arguments: [false, true])
    func roundTripDerivesMatchingTransportKeys(withPSK: Bool) throws {
        let pair = F.Pair(initiatorPSK: withPSK ? .generate() : .none())
        let timestamp = TAI64N(unixSeconds: 1_700_000_123, nanoseconds: 456_000_000)
        let (initiation, state) = pair.initiation(index: 0xa1b2_c3d4, timestamp: timestamp)
        #expect(initiation.withUnsafeBytes { classify($0) } == .initiation)
        #expect(Array(initiation[InitiationMessage.mac1Offset...]) == [UInt8](repeating: 0, count: 32))
        #expect(state.senderIndex == 0xa1b2_c3d4)

        let consumed = try #require(pair.consume(initiation))
        #expect(consumed.remoteStatic == pair.initiator.publicKey)
        #expect(consumed.remoteIndex == 0xa1b2_c3d4)
        #expect(consumed.timestamp == timestamp)

        let (response, responderKeys) = pair.response(to: consumed, index: 0x0506_0708)
        #expect(response.withUnsafeBytes { classify($0) } == .response)
        #expect(response.withUnsafeBytes { ResponseMessage.receiverIndex($0) } == 0xa1b2_c3d4)
        #expect(Array(response[ResponseMessage.mac1Offset...]) == [UInt8](repeating: 0, count: 32))
        let initiatorKeys = try #require(pair.consumeResponse(response, state: state))

        #expect(initiatorKeys.isInitiator && !responderKeys.isInitiator)
        #expect(initiatorKeys.localIndex == 0xa1b2_c3d4 && initiatorKeys.remoteIndex == 0x0506_0708)
        #expect(responderKeys.localIndex == 0x0506_0708 && responderKeys.remoteIndex == 0xa1b2_c3d4)
        #expect(initiatorKeys.sending == responderKeys.receiving)
        #expect(initiatorKeys.receiving == responderKeys.sending)
        #expect(initiatorKeys.sending != initiatorKeys.receiving)

        // Seal with one side, open with the other, both ways.
        for (sender, receiver) in [
            (initiatorKeys.sending, responderKeys.receiving), (responderKeys.sending, initiatorKeys.receiving),
        ] {
            let plaintext: [UInt8] = Array("key confirmation".utf8)
            var sealed = [UInt8](repeating: 0, count: plaintext.count + 16)
            var opened = [UInt8](repeating: 0, count: plaintext.count)
            plaintext.withUnsafeBytes { input in
                sealed.withUnsafeMutableBytes {
                    ChaChaPoly.seal(key: sender, counter: 7, plaintext: input, into: $0.baseAddress!)
                }
            }
            let ok = sealed.withUnsafeBytes { input in
                opened.withUnsafeMutableBytes {
                    ChaChaPoly.open(key: receiver, counter: 7, ciphertext: input, into: $0.baseAddress!)
                }
            }
            #expect(ok && opened == plaintext)
        }
    }

    @Test func twoStepConsumeMatchesLookup() throws {
        let pair = F.Pair()
        let (initiation, _) = pair.initiation()
        let identity = try #require(
            initiation.withUnsafeBytes { Noise.decryptInitiationIdentity(local: pair.responder, message: $0) })
        #expect(identity.remoteStatic == pair.initiator.publicKey)
        #expect(identity.senderIndex == 0x1111_1111)
        #expect(Noise.consumeInitiation(identity, remote: pair.initiatorSeenByResponder) != nil)
        // A different peer's identity is refused even though it is configured.
        let stranger = RemoteIdentity(
            publicKey: PrivateKey.generate().publicKey, local: pair.responder)
        #expect(Noise.consumeInitiation(identity, remote: stranger) == nil)
        // An unknown static key fails the lookup.
        let unknown = initiation.withUnsafeBytes { raw in
            Noise.consumeInitiation(local: pair.responder, message: raw) { _ in nil }
        }
        #expect(unknown == nil)
        // Addressed to somebody else: the static key does not decrypt.
        let other = LocalIdentity(privateKey: .generate())
        #expect(initiation.withUnsafeBytes { Noise.decryptInitiationIdentity(local: other, message: $0) } == nil)
    }

    /// Every bit of the fields Noise authenticates (ephemeral, static, timestamp) is checked by
    /// the handshake itself; the type by `classify`. (The sender index is covered by mac1 only;
    /// CookieTests flips every bit before mac1.)
    @Test func flippedInitiationBitsAreRejected() {
        let pair = F.Pair()
        let (initiation, _) = pair.initiation()
        #expect(pair.consume(initiation) != nil)
        var accepted: [Int] = []
        let checked =
            Array(0..<InitiationMessage.senderOffset)
            + Array(InitiationMessage.ephemeralOffset..<InitiationMessage.mac1Offset)
        for byte in checked {
            for bit in 0..<8 {
                var corrupted = initiation
                corrupted[byte] ^= 1 << bit
                if pair.consume(corrupted) != nil { accepted.append(byte * 8 + bit) }
            }
        }
        #expect(accepted.isEmpty, "accepted flipped bits: \(accepted)")
    }

    /// Type, receiver index, ephemeral and the empty AEAD are all checked by `consumeResponse`;
    /// the state it was given stays usable after each failure.
    @Test func flippedResponseBitsAreRejected() throws {
        let pair = F.Pair(initiatorPSK: .generate())
        let (initiation, state) = pair.initiation()
        let consumed = try #require(pair.consume(initiation))
        let (response, _) = pair.response(to: consumed)
        var accepted: [Int] = []
        let checked =
            Array(0..<ResponseMessage.senderOffset)
            + Array(ResponseMessage.receiverOffset..<ResponseMessage.mac1Offset)
        for byte in checked {
            for bit in 0..<8 {
                var corrupted = response
                corrupted[byte] ^= 1 << bit
                if pair.consumeResponse(corrupted, state: state) != nil { accepted.append(byte * 8 + bit) }
            }
        }
        #expect(accepted.isEmpty, "accepted flipped bits: \(accepted)")
        #expect(pair.consumeResponse(response, state: state) != nil)
    }

    @Test func wrongPresharedKeyFailsAtTheResponse() throws {
        for (initiatorPSK, responderPSK) in [
            (PresharedKey.generate(), PresharedKey.generate()), (.generate(), .none()), (.none(), .generate()),
        ] {
            let pair = F.Pair(initiatorPSK: initiatorPSK, responderPSK: responderPSK)
            let (initiation, state) = pair.initiation()
            // The PSK enters only in the response, so the responder accepts the initiation...
            let consumed = try #require(pair.consume(initiation))
            let (response, _) = pair.response(to: consumed)
            // ...and the initiator rejects the response.
            #expect(pair.consumeResponse(response, state: state) == nil)
        }
    }

    @Test func responseForAnotherInitiationIsRejected() throws {
        let pair = F.Pair()
        let (first, firstState) = pair.initiation(index: 1)
        let (second, secondState) = pair.initiation(index: 2)
        let (response, _) = pair.response(to: try #require(pair.consume(second)))
        #expect(pair.consumeResponse(response, state: firstState) == nil)
        #expect(pair.consumeResponse(response, state: secondState) != nil)
        _ = first
    }

    @Test(arguments: HandshakeFixture.smallOrderPoints)
    func lowOrderKeysFailCleanly(point: String) throws {
        let pair = F.Pair()
        let lowOrder = F.publicKey(point)

        // A peer configured with a low-order static key: no static-static DH, no initiation.
        let bad = RemoteIdentity(publicKey: lowOrder, local: pair.initiator)
        #expect(bad.precomputedStaticStatic == nil)
        var message = [UInt8](repeating: 0, count: InitiationMessage.size)
        let state = message.withUnsafeMutableBytes {
            Noise.createInitiation(
                local: pair.initiator, remote: bad, senderIndex: 1, timestamp: .zero, ephemeral: .generate(), into: $0)
        }
        #expect(state == nil)

        // An initiation whose ephemeral is low-order: the responder's first DH fails.
        var (initiation, _) = pair.initiation()
        initiation.replaceSubrange(
            InitiationMessage.ephemeralOffset..<InitiationMessage.ephemeralOffset + 32, with: F.bytes(point))
        #expect(pair.consume(initiation) == nil)

        // A response whose ephemeral is low-order: the initiator's DH fails.
        let (good, state2) = pair.initiation()
        var (response, _) = pair.response(to: try #require(pair.consume(good)))
        response.replaceSubrange(
            ResponseMessage.ephemeralOffset..<ResponseMessage.ephemeralOffset + 32, with: F.bytes(point))
        #expect(pair.consumeResponse(response, state: state2) == nil)
    }

    @Test func messagesOfTheWrongShapeAreRejected() {
        let pair = F.Pair()
        let (initiation, state) = pair.initiation()
        let short = Array(initiation.dropLast())
        #expect(pair.consume(short) == nil)
        // An initiation is not a response.
        #expect(pair.consumeResponse(initiation, state: state) == nil)
    }
}
