import TunnelCrypto

/// The random part of the handshake timers (up to `Protocol.rekeyTimeoutJitterMax`), as
/// wireguard-go's `timers.go` adds it. Timing jitter is not a secret, so it comes from SplitMix64
/// seeded once from the system's generator, not from a `getrandom` call per draw: the data path
/// draws one whenever it re-arms the new-handshake timer, which under two-way traffic is after
/// nearly every received packet.
struct TimerJitter {
    private var state: UInt64

    /// Seeded from `SecureRandom`, so two devices do not jitter in step.
    init() {
        self.init(seed: UInt64(SecureRandom.uint32()) << 32 | UInt64(SecureRandom.uint32()))
    }

    init(seed: UInt64) { state = seed }

    /// The next SplitMix64 output (Steele, Lea and Flood, "Fast splittable pseudorandom number
    /// generators", OOPSLA 2014): a Weyl step, then a 64-bit finalizer.
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// Whole milliseconds in `0..<Protocol.rekeyTimeoutJitterMax`, in nanoseconds. The high half
    /// of a 64×64-bit product maps the draw onto the range (bias below 2^-50 for 334 values).
    mutating func draw() -> UInt64 {
        let milliseconds = Protocol.rekeyTimeoutJitterMax / Protocol.nanosecondsPerMillisecond
        return milliseconds.multipliedFullWidth(by: next()).high * Protocol.nanosecondsPerMillisecond
    }
}
