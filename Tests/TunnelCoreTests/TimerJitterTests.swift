import Testing

@testable import TunnelCore

@Suite struct TimerJitterTests {
    /// SplitMix64's published outputs for seed 0 (Vigna's reference `splitmix64.c`).
    @Test func isSplitMix64() {
        var generator = SplitMix64(seed: 0)
        #expect(generator.next() == 0xe220_a839_7b1d_cdaf)
        #expect(generator.next() == 0x6e78_9e6a_a1b9_65f4)
        #expect(generator.next() == 0x06c4_5d18_8009_454f)
    }

    @Test func drawsWholeMillisecondsBelowTheMaximumAndSpreadsOverThem() {
        let milliseconds = Int(Protocol.rekeyTimeoutJitterMax / Protocol.nanosecondsPerMillisecond)
        var jitter = TimerJitter(seed: 1)
        var seen = Set<UInt64>()
        for _ in 0..<(20 * milliseconds) {
            let draw = jitter.draw()
            #expect(draw < Protocol.rekeyTimeoutJitterMax)
            #expect(draw % Protocol.nanosecondsPerMillisecond == 0)
            seen.insert(draw)
        }
        // 20 draws per value: a uniform draw misses a given value with probability e^-20.
        #expect(seen.count == milliseconds)
    }

    @Test func twoDevicesDoNotJitterInStep() {
        var first = TimerJitter()
        var second = TimerJitter()
        let a = (0..<8).map { _ in first.draw() }
        let b = (0..<8).map { _ in second.draw() }
        // Equal only if the two seeds gave the same 8 draws of 334: about 334^-8.
        #expect(a != b)
    }
}
