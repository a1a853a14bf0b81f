import Testing

@testable import TunnelCore

@Suite struct TAI64NTests {
    @Test func unixEpochEncodesAsTheTAI64Label() {
        let stamp = TAI64N(unixSeconds: 0, nanoseconds: 0)
        #expect(stamp.bytes == [0x40, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0])
    }

    /// 1_700_000_000 = 0x6553f100, so the label is 0x400000006553f10a. 123_456_789 ns rounds
    /// down to 7 · 2^24 = 117_440_512 = 0x07000000.
    @Test func knownTimestampEncoding() {
        let stamp = TAI64N(unixSeconds: 1_700_000_000, nanoseconds: 123_456_789)
        #expect(stamp.seconds == 0x4000_0000_6553_f10a)
        #expect(stamp.nanoseconds == 117_440_512)
        #expect(stamp.bytes == [0x40, 0, 0, 0, 0x65, 0x53, 0xf1, 0x0a, 0x07, 0, 0, 0])
    }

    @Test func nanosecondsRoundDownToMultiplesOf2To24() {
        #expect(TAI64N(unixSeconds: 5, nanoseconds: 16_777_215).nanoseconds == 0)
        #expect(TAI64N(unixSeconds: 5, nanoseconds: 16_777_216).nanoseconds == 16_777_216)
        // The largest valid value, 999_999_999, falls in the 59th step: 59 · 2^24 = 0x3b000000.
        #expect(TAI64N(unixSeconds: 5, nanoseconds: 999_999_999).nanoseconds == 0x3b00_0000)
        // So two readings within one 16.8 ms step are equal, hence not "newer".
        let early = TAI64N(unixSeconds: 5, nanoseconds: 100_000_000)
        let late = TAI64N(unixSeconds: 5, nanoseconds: 100_000_000 + 500_000)
        #expect(early == late)
    }

    @Test func decodeRoundTripsAndRejectsOtherLengths() {
        let stamp = TAI64N(unixSeconds: 1_234_567_890, nanoseconds: 987_654_321)
        #expect(TAI64N(bytes: stamp.bytes) == stamp)
        #expect(TAI64N(bytes: Array(stamp.bytes.dropLast())) == nil)
        #expect(TAI64N(bytes: stamp.bytes + [0]) == nil)
        #expect(TAI64N(bytes: []) == nil)
        // Decoding keeps the received nanoseconds exactly, unrounded.
        let raw: [UInt8] = [0x40, 0, 0, 0, 0, 0, 0, 0x0b, 0, 0, 0, 1]
        #expect(TAI64N(bytes: raw) == TAI64N(seconds: 0x4000_0000_0000_000b, nanoseconds: 1))
    }

    @Test func writeFillsOnlyTheFirstTwelveBytes() {
        let stamp = TAI64N(unixSeconds: 1_700_000_000, nanoseconds: 0)
        var buffer = [UInt8](repeating: 0xee, count: 14)
        buffer.withUnsafeMutableBytes { stamp.write(to: $0) }
        #expect(Array(buffer[0..<12]) == stamp.bytes)
        #expect(buffer[12] == 0xee && buffer[13] == 0xee)
    }

    @Test func orderingFollowsTheEncodedBytes() {
        let a = TAI64N(unixSeconds: 100, nanoseconds: 999_999_999)
        let b = TAI64N(unixSeconds: 101, nanoseconds: 0)
        let c = TAI64N(unixSeconds: 101, nanoseconds: 20_000_000)
        #expect(a < b && b < c && a < c)
        #expect(!(b < b))
        #expect(TAI64N.zero < a)
        for (lhs, rhs) in [(a, b), (b, c), (c, a), (b, b)] {
            #expect((lhs < rhs) == lhs.bytes.lexicographicallyPrecedes(rhs.bytes))
        }
    }

    @Test func timesBefore1970WrapBelowTheLabel() {
        let stamp = TAI64N(unixSeconds: -1, nanoseconds: 0)
        #expect(stamp.seconds == 0x4000_0000_0000_0009)
        #expect(stamp < TAI64N(unixSeconds: 0, nanoseconds: 0))
    }
}
