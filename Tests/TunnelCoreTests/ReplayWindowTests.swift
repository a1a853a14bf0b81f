import Testing

@testable import TunnelCore

/// Known answers from the Linux kernel's `drivers/net/wireguard/selftest/counter.c`
/// (the same sequence is in wireguard-go `replay/replay_test.go`). Numbered as in the source.
@Suite struct ReplayWindowTests {
    static let window = ReplayWindow.windowSize
    static let reject = ReplayWindow.rejectAfterMessages

    @Test func constantsMatchTheProtocol() {
        #expect(ReplayWindow.windowSize == 8128)
        #expect(ReplayWindow.rejectAfterMessages == UInt64.max - 8192)  // 2^64 − 2^13 − 1
        #expect(ReplayWindow.blockCount * ReplayWindow.blockBits == Protocol.replayWindowBits)
    }

    @Test func kernelSelftestSequence() {
        let limit = Self.window + 1  // T_LIM
        let reject = Self.reject
        let sequence: [(UInt64, Bool)] = [
            (0, true),  // 1
            (1, true),  // 2
            (1, false),  // 3
            (9, true),  // 4
            (8, true),  // 5
            (7, true),  // 6
            (7, false),  // 7
            (limit, true),  // 8
            (limit - 1, true),  // 9
            (limit - 1, false),  // 10
            (limit - 2, true),  // 11
            (2, true),  // 12
            (2, false),  // 13
            (limit + 16, true),  // 14
            (3, false),  // 15
            (limit + 16, false),  // 16
            (limit * 4, true),  // 17
            (limit * 4 - (limit - 1), true),  // 18
            (10, false),  // 19
            (limit * 4 - limit, false),  // 20
            (limit * 4 - (limit + 1), false),  // 21
            (limit * 4 - (limit - 2), true),  // 22
            (limit * 4 + 1 - limit, false),  // 23
            (0, false),  // 24
            (reject, false),  // 25
            (reject - 1, true),  // 26
            (reject, false),  // 27
            (reject - 1, false),  // 28
            (reject - 2, true),  // 29
            (reject + 1, false),  // 30
            (reject + 2, false),  // 31
            (reject - 2, false),  // 32
            (reject - 3, true),  // 33
            (0, false),  // 34
        ]
        run(sequence, label: "kernel counter self-test")
    }

    /// Feeds `steps` to a fresh filter (the kernel's T_INIT) and checks each verdict, numbering
    /// steps from 1 as the kernel's `T(n, v)` macro does.
    private func run(_ steps: [(counter: UInt64, accepted: Bool)], label: String) {
        var filter = ReplayWindow()
        for (number, step) in zip(1..., steps) {
            let accepted = filter.validate(step.counter)
            #expect(accepted == step.accepted, "\(label) \(number): counter \(step.counter)")
        }
    }

    private static func all(
        _ counters: some Sequence<UInt64>, _ accepted: Bool
    ) -> [(counter: UInt64, accepted: Bool)] {
        counters.map { ($0, accepted) }
    }

    @Test func bulkAscendingThenZeroIsExactlyWindowBehind() {
        run(Self.all(1...Self.window, true) + [(0, true), (0, false)], label: "bulk 1")
    }

    @Test func bulkAscendingFromTwoThenOneAcceptedZeroRejected() {
        // 1 is exactly W behind W + 1; 0 is W + 1 behind.
        run(Self.all(2...(Self.window + 1), true) + [(1, true), (0, false)], label: "bulk 2")
    }

    @Test func bulkDescendingFromWindow() {
        run(Self.all((0...Self.window).reversed(), true), label: "bulk 3")
    }

    @Test func bulkDescendingFromWindowPlusOneRejectsZero() {
        run(Self.all((1...(Self.window + 1)).reversed(), true) + [(0, false)], label: "bulk 4")
    }

    @Test func bulkDescendingThenNewHighThenZero() {
        run(
            Self.all((1...Self.window).reversed(), true) + [(Self.window + 1, true), (0, false)],
            label: "bulk 5")
    }

    @Test func bulkDescendingThenZeroThenNewHigh() {
        run(
            Self.all((1...Self.window).reversed(), true) + [(0, true), (Self.window + 1, true)],
            label: "bulk 6")
    }

    @Test func resetForgetsEverything() {
        var filter = ReplayWindow()
        let first = [filter.validate(5), filter.validate(100_000)]
        #expect(first == [true, true])
        #expect(filter.highestAccepted == 100_000)
        filter.reset()
        #expect(filter.highestAccepted == nil)
        let again = [filter.validate(5), filter.validate(0)]
        #expect(again == [true, true])
    }

    /// The bitmap is a ring: after the window wraps many times, stale bits must not make a fresh
    /// counter look seen. Checked against a set-based reference on a seeded random walk.
    @Test func randomWalkMatchesReference() {
        var random = SplitMix64(seed: 0x5eed_0001)
        var filter = ReplayWindow()
        var seen = Set<UInt64>()
        var highest: UInt64? = nil
        var base: UInt64 = 0
        for _ in 0..<100_000 {
            // Mostly forward with jitter; sometimes a jump of several windows.
            let roll = random.next() % 100
            if roll < 2 {
                base += Self.window * (1 + random.next() % 3)
            } else {
                base += random.next() % 64
            }
            let jitter = random.next() % (Self.window + 200)
            let counter = base >= jitter ? base - jitter : base
            let expected: Bool
            if let top = highest, counter <= top {
                expected = top - counter <= Self.window && !seen.contains(counter)
            } else {
                expected = true
            }
            if expected {
                seen.insert(counter)
                highest = max(highest ?? counter, counter)
            }
            let accepted = filter.validate(counter)
            if accepted != expected {
                Issue.record("counter \(counter): filter \(accepted), reference \(expected)")
                return
            }
        }
    }
}
