import Testing

@testable import TunnelCore

/// A fake monotonic clock in nanoseconds; tests move it by hand instead of sleeping.
private struct FakeClock {
    var now: UInt64 = 1_000_000_000_000

    mutating func advance(nanoseconds: UInt64) { now += nanoseconds }
}

/// Asks `limiter` about each source at `now`, in order, and returns the verdicts. (Swift
/// Testing's `#expect` cannot contain a mutating call, so verdicts are gathered first.)
private func ask(_ limiter: inout RateLimiter, _ sources: [IPAddress], at now: UInt64) -> [Bool] {
    sources.map { limiter.allow($0, now: now) }
}

private func ask(_ limiter: inout RateLimiter, _ source: IPAddress, times: Int, at now: UInt64) -> [Bool] {
    ask(&limiter, Array(repeating: source, count: times), at: now)
}

@Suite struct RateLimiterTests {
    static let packetInterval = Protocol.nanosecondsPerSecond / RateLimiter.packetsPerSecond  // 50 ms

    @Test func constantsMatchTheProtocol() {
        #expect(RateLimiter.packetsPerSecond == 20)
        #expect(RateLimiter.burst == 5)
        #expect(Self.packetInterval == 50_000_000)
    }

    /// The expected-results table of the kernel's `drivers/net/wireguard/selftest/ratelimiter.c`
    /// (`timings_test`), with the sleeps replaced by clock advances: a burst of 5, then one
    /// packet per 50 ms of credit. Unrelated sources are unaffected throughout.
    @Test func kernelSelftestTimings() {
        var limiter = RateLimiter()
        var clock = FakeClock()
        let expected: [(sleepBefore: UInt64, allowed: Bool)] = [
            (0, true), (0, true), (0, true), (0, true), (0, true),
            (0, false),
            (Self.packetInterval, true),
            (0, false),
            (Self.packetInterval * 2, true),
            (0, true),
            (0, false),
        ]
        let source4 = IPAddress.v4(8182)
        // The kernel's IPv6 source: 1212:289188 in the top 64 bits, varied low bits per step.
        let source6Network = UInt128(1212) << 96 | UInt128(289_188) << 64
        for (index, step) in expected.enumerated() {
            clock.advance(nanoseconds: step.sleepBefore)
            // A different /32 has its own bucket; IPv6 shares one bucket across the /64 (the low
            // bits change every step), and a different /64 has its own.
            let low = UInt128(index) << 32 | UInt128(index)
            let verdicts = ask(
                &limiter,
                [
                    source4, .v4(8182 + UInt32(index) + 1),
                    .v6(IPv6Bits(source6Network | low)), .v6(IPv6Bits(source6Network + (UInt128(index + 1) << 96))),
                ],
                at: clock.now)
            #expect(verdicts == [step.allowed, true, step.allowed, true], "step \(index)")
        }
    }

    @Test func creditAccumulatesOnlyUpToTheBurst() {
        var limiter = RateLimiter()
        var clock = FakeClock()
        let source = IPAddress("203.0.113.9")!
        #expect(ask(&limiter, source, times: 1, at: clock.now) == [true])
        // Half a second would be 10 packets of credit, but the bucket holds 5. (Half a second
        // keeps the source below the idle timeout, so its bucket is not simply forgotten.)
        clock.advance(nanoseconds: 500_000_000)
        #expect(ask(&limiter, source, times: 6, at: clock.now) == [true, true, true, true, true, false])
        // Partial credit is kept: 30 ms + 20 ms make one packet.
        clock.advance(nanoseconds: 30_000_000)
        #expect(ask(&limiter, source, times: 1, at: clock.now) == [false])
        clock.advance(nanoseconds: 20_000_000)
        #expect(ask(&limiter, source, times: 2, at: clock.now) == [true, false])
    }

    @Test func idleSourcesAreCollectedAndComeBackFull() {
        var limiter = RateLimiter()
        var clock = FakeClock()
        let source = IPAddress("2001:db8::1")!
        let burst = [true, true, true, true, true, false]
        #expect(ask(&limiter, source, times: 6, at: clock.now) == burst)
        #expect(limiter.trackedSources == 1)
        clock.advance(nanoseconds: RateLimiter.idleTimeout)
        limiter.collectGarbage(now: clock.now)
        #expect(limiter.trackedSources == 1, "idle for exactly the timeout: kept")
        clock.advance(nanoseconds: 1)
        limiter.collectGarbage(now: clock.now)
        #expect(limiter.trackedSources == 0)
        #expect(ask(&limiter, source, times: 6, at: clock.now) == burst)
    }

    @Test func allowSweepsByItselfAboutOncePerSecond() {
        var limiter = RateLimiter()
        var clock = FakeClock()
        _ = ask(&limiter, (0..<100).map { .v4(UInt32($0)) }, at: clock.now)
        #expect(limiter.trackedSources == 100)
        clock.advance(nanoseconds: 2 * RateLimiter.idleTimeout)
        #expect(ask(&limiter, .v4(0xffff_ffff), times: 1, at: clock.now) == [true])
        #expect(limiter.trackedSources == 1)
    }

    /// The kernel's `capacity_test`: with the table full, a new source is refused, while known
    /// sources keep their buckets.
    @Test func fullTableRefusesNewSources() {
        let capacity = 64
        var limiter = RateLimiter(capacity: capacity)
        var clock = FakeClock()
        let filling = ask(&limiter, (0..<capacity).map { .v4(UInt32($0)) }, at: clock.now)
        #expect(filling.allSatisfy { $0 })
        #expect(ask(&limiter, [.v4(UInt32(capacity)), .v6(1)], at: clock.now) == [false, false])
        #expect(ask(&limiter, .v4(0), times: 1, at: clock.now) == [true], "a known source still has credit")
        #expect(limiter.trackedSources == capacity)
        // Once the old entries go idle they are swept and room returns.
        clock.advance(nanoseconds: RateLimiter.idleTimeout + 1)
        #expect(ask(&limiter, .v4(UInt32(capacity)), times: 1, at: clock.now) == [true])
        #expect(limiter.trackedSources == 1)
    }

    @Test func defaultCapacityIsBounded() {
        var limiter = RateLimiter()
        let clock = FakeClock()
        _ = ask(&limiter, (0..<RateLimiter.defaultCapacity).map { .v4(UInt32($0)) }, at: clock.now)
        #expect(limiter.trackedSources == RateLimiter.defaultCapacity)
        #expect(ask(&limiter, .v4(0xdead_beef), times: 1, at: clock.now) == [false])
        #expect(limiter.trackedSources == RateLimiter.defaultCapacity)
    }

    @Test func resetForgetsAllSources() {
        var limiter = RateLimiter()
        let clock = FakeClock()
        let source = IPAddress("192.0.2.1")!
        #expect(ask(&limiter, source, times: 6, at: clock.now).last == false)
        limiter.reset()
        #expect(limiter.trackedSources == 0)
        #expect(ask(&limiter, source, times: 1, at: clock.now) == [true])
    }
}
