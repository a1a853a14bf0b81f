import TunnelCrypto

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA
/// 2014): a Weyl step, then a 64-bit finalizer. Small, fast and fully determined by its seed; not
/// for secrets. It draws the timers' jitter, udprelay's impairments and the randomised tests' inputs.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// The random part of the handshake timers (up to `Protocol.rekeyTimeoutJitterMax`), as
/// wireguard-go's `timers.go` adds it. Timing jitter is not a secret, so it comes from SplitMix64
/// seeded once from the system's generator, not from a `getrandom` call per draw: the data path
/// draws one whenever it re-arms the new-handshake timer, which under two-way traffic is after
/// nearly every received burst.
struct TimerJitter {
    private var generator: SplitMix64

    /// Seeded from `SecureRandom`, so two devices do not jitter in step.
    init() {
        self.init(seed: UInt64(SecureRandom.uint32()) << 32 | UInt64(SecureRandom.uint32()))
    }

    init(seed: UInt64) { generator = SplitMix64(seed: seed) }

    /// Whole milliseconds in `0..<Protocol.rekeyTimeoutJitterMax`, in nanoseconds. The high half
    /// of a 64×64-bit product maps the draw onto the range (bias below 2^-50 for 334 values).
    mutating func draw() -> UInt64 {
        let milliseconds = Protocol.rekeyTimeoutJitterMax / Protocol.nanosecondsPerMillisecond
        return milliseconds.multipliedFullWidth(by: generator.next()).high * Protocol.nanosecondsPerMillisecond
    }
}
