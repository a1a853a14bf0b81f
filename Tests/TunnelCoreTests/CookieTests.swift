import Testing
import TunnelCrypto

@testable import TunnelCore

/// mac1/mac2 and cookie replies, following wireguard-go `device/cookie.go` (and its
/// `cookie_test.go` scenario: mac1 check, reply, mac2 check) with a fake clock in nanoseconds.
@Suite struct CookieTests {
    typealias F = HandshakeFixture
    static let second = Protocol.nanosecondsPerSecond
    static let t0: UInt64 = 1_000 * second
    static let source = Endpoint(address: IPAddress("192.0.2.7")!, port: 51820)

    /// A fresh initiation from the pair's initiator with macs added by `generator`.
    private func signedInitiation(_ pair: F.Pair, _ generator: inout CookieGenerator, now: UInt64) -> [UInt8] {
        var (message, _) = pair.initiation()
        message.withUnsafeMutableBytes { _ = generator.addMACs(to: $0, now: now) }
        return message
    }

    @Test func mac1VerifiesAndEveryFlippedBitFails() {
        let pair = F.Pair()
        var generator = CookieGenerator(remote: pair.responderSeenByInitiator)
        let checker = CookieChecker(local: pair.responder)
        let message = signedInitiation(pair, &generator, now: Self.t0)
        #expect(message.withUnsafeBytes { checker.checkMAC1($0) })
        // mac2 is zero without a cookie.
        #expect(Array(message[InitiationMessage.mac2Offset...]) == [UInt8](repeating: 0, count: 16))

        var accepted: [Int] = []
        for byte in 0..<InitiationMessage.mac2Offset {
            for bit in 0..<8 {
                var corrupted = message
                corrupted[byte] ^= 1 << bit
                if corrupted.withUnsafeBytes({ checker.checkMAC1($0) }) { accepted.append(byte * 8 + bit) }
            }
        }
        #expect(accepted.isEmpty, "mac1 accepted flipped bits: \(accepted)")

        // mac2 is not covered by mac1.
        var mac2Flipped = message
        mac2Flipped[InitiationMessage.mac2Offset] ^= 1
        #expect(mac2Flipped.withUnsafeBytes { checker.checkMAC1($0) })

        // Addressed to another device: its mac1 key differs.
        let other = CookieChecker(local: LocalIdentity(privateKey: .generate()))
        #expect(!message.withUnsafeBytes { other.checkMAC1($0) })
    }

    @Test func mac1OnResponses() throws {
        let pair = F.Pair()
        let (initiation, _) = pair.initiation()
        var (response, _) = pair.response(to: try #require(pair.consume(initiation)))
        var generator = CookieGenerator(remote: pair.initiatorSeenByResponder)
        response.withUnsafeMutableBytes { _ = generator.addMACs(to: $0, now: Self.t0) }
        #expect(response.withUnsafeBytes { CookieChecker(local: pair.initiator).checkMAC1($0) })
        #expect(!response.withUnsafeBytes { CookieChecker(local: pair.responder).checkMAC1($0) })
        response[ResponseMessage.senderOffset] ^= 0x80
        #expect(!response.withUnsafeBytes { CookieChecker(local: pair.initiator).checkMAC1($0) })
    }

    @Test func cookieReplyRoundTripMakesMAC2Valid() throws {
        let pair = F.Pair()
        var generator = CookieGenerator(remote: pair.responderSeenByInitiator)
        var checker = CookieChecker(local: pair.responder)

        let first = signedInitiation(pair, &generator, now: Self.t0)
        #expect(!first.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: Self.t0) })

        var reply = [UInt8](repeating: 0, count: CookieReplyMessage.size)
        let made = first.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: Self.t0, into: $0)
            }
        }
        #expect(made)
        reply.withUnsafeBytes { raw in
            #expect(classify(raw) == .cookieReply)
            #expect(CookieReplyMessage.receiverIndex(raw) == 0x1111_1111)  // the initiation's sender
        }
        #expect(reply.withUnsafeBytes { generator.consumeReply($0, now: Self.t0) })

        let second = signedInitiation(pair, &generator, now: Self.t0 + Self.second)
        #expect(Array(second[InitiationMessage.mac2Offset...]) != [UInt8](repeating: 0, count: 16))
        #expect(second.withUnsafeBytes { checker.checkMAC1($0) })
        #expect(second.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: Self.t0 + Self.second) })

        // The cookie is bound to the source address and port.
        let otherPort = Endpoint(address: Self.source.address, port: 51821)
        let otherHost = Endpoint(address: IPAddress("192.0.2.8")!, port: 51820)
        let v6 = Endpoint(address: IPAddress("2001:db8::7")!, port: 51820)
        for wrong in [otherPort, otherHost, v6] {
            #expect(!second.withUnsafeBytes { checker.checkMAC2($0, source: wrong, now: Self.t0 + Self.second) })
        }
        // Every flipped bit before or in mac2 breaks it.
        var accepted: [Int] = []
        for byte in 0..<InitiationMessage.size {
            for bit in 0..<8 {
                var corrupted = second
                corrupted[byte] ^= 1 << bit
                if corrupted.withUnsafeBytes({ checker.checkMAC2($0, source: Self.source, now: Self.t0 + Self.second) })
                {
                    accepted.append(byte * 8 + bit)
                }
            }
        }
        #expect(accepted.isEmpty, "mac2 accepted flipped bits: \(accepted)")
    }

    @Test func cookieReplyIsBoundToTheLastMAC1Sent() {
        let pair = F.Pair()
        var generator = CookieGenerator(remote: pair.responderSeenByInitiator)
        var checker = CookieChecker(local: pair.responder)

        // No message sent yet: nothing to match a reply against.
        var otherGenerator = CookieGenerator(remote: pair.responderSeenByInitiator)
        let early = signedInitiation(pair, &otherGenerator, now: Self.t0)
        var reply = [UInt8](repeating: 0, count: CookieReplyMessage.size)
        _ = early.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: Self.t0, into: $0)
            }
        }
        #expect(!reply.withUnsafeBytes { generator.consumeReply($0, now: Self.t0) })

        // A reply to an older message (different mac1) does not open.
        let answered = signedInitiation(pair, &generator, now: Self.t0)
        _ = answered.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: Self.t0, into: $0)
            }
        }
        _ = signedInitiation(pair, &generator, now: Self.t0)
        #expect(!reply.withUnsafeBytes { generator.consumeReply($0, now: Self.t0) })

        // A tampered reply does not open; the untampered one for the latest message does.
        let latest = signedInitiation(pair, &generator, now: Self.t0)
        _ = latest.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: Self.t0, into: $0)
            }
        }
        for byte in CookieReplyMessage.nonceOffset..<CookieReplyMessage.size {
            var corrupted = reply
            corrupted[byte] ^= 0x01
            #expect(!corrupted.withUnsafeBytes { generator.consumeReply($0, now: Self.t0) })
        }
        #expect(reply.withUnsafeBytes { generator.consumeReply($0, now: Self.t0) })
        // The same reply again (a replay) is refused: it answered a mac1 already used up.
        #expect(!reply.withUnsafeBytes { generator.consumeReply($0, now: Self.t0 + Self.second) })
        // Not a cookie reply at all.
        #expect(!latest.withUnsafeBytes { generator.consumeReply($0, now: Self.t0) })
    }

    @Test func mac2ExpiresWithTheSecretAndTheCookie() {
        let pair = F.Pair()
        var generator = CookieGenerator(remote: pair.responderSeenByInitiator)
        var checker = CookieChecker(local: pair.responder)
        let refresh = Protocol.cookieRefreshTime

        let first = signedInitiation(pair, &generator, now: Self.t0)
        var reply = [UInt8](repeating: 0, count: CookieReplyMessage.size)
        _ = first.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: Self.t0, into: $0)
            }
        }
        #expect(reply.withUnsafeBytes { generator.consumeReply($0, now: Self.t0) })

        // Just inside the lifetime: the generator still adds mac2 and the checker accepts it.
        let late = Self.t0 + refresh - 1
        let stillValid = signedInitiation(pair, &generator, now: late)
        #expect(stillValid.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: late) })
        // The checker's secret is stale at 120 s: the same message no longer passes.
        #expect(!stillValid.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: Self.t0 + refresh) })
        // The generator's cookie has expired too: it sends zeros.
        let expired = signedInitiation(pair, &generator, now: Self.t0 + refresh)
        #expect(Array(expired[InitiationMessage.mac2Offset...]) == [UInt8](repeating: 0, count: 16))

        // A reply after expiry rotates the secret: a mac2 made with the old cookie stays invalid,
        // and the new cookie works.
        let rotatedAt = Self.t0 + refresh + Self.second
        let needsCookie = signedInitiation(pair, &generator, now: rotatedAt)
        _ = needsCookie.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: rotatedAt, into: $0)
            }
        }
        #expect(!stillValid.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: rotatedAt) })
        #expect(reply.withUnsafeBytes { generator.consumeReply($0, now: rotatedAt) })
        let fresh = signedInitiation(pair, &generator, now: rotatedAt)
        #expect(fresh.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: rotatedAt) })

        // And after a second rotation the first rotated cookie is dead as well.
        let secondRotation = rotatedAt + refresh
        _ = needsCookie.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: secondRotation, into: $0)
            }
        }
        #expect(!fresh.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: secondRotation) })
    }

    @Test func repliesOnlyToHandshakeMessages() {
        var checker = CookieChecker(local: LocalIdentity(privateKey: .generate()))
        var transport = [UInt8](repeating: 0, count: 64)
        transport.withUnsafeMutableBytes { TransportMessage.writeHeader(receiver: 1, counter: 0, to: $0) }
        var reply = [UInt8](repeating: 0, count: CookieReplyMessage.size)
        let made = transport.withUnsafeBytes { message in
            reply.withUnsafeMutableBytes {
                checker.createReply(to: message, source: Self.source, now: Self.t0, into: $0)
            }
        }
        #expect(!made)
        #expect(!transport.withUnsafeBytes { checker.checkMAC1($0) })
        #expect(!transport.withUnsafeBytes { checker.checkMAC2($0, source: Self.source, now: Self.t0) })
    }
}
