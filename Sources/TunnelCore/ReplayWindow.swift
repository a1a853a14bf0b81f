/// Sliding-window replay filter for transport-data counters (RFC 6479, as WireGuard uses it).
///
/// The bitmap is 8192 bits in 128 blocks of 64. One block is always being recycled as the window
/// slides, so the usable window is W = 8192 − 64 = 8128: a counter exactly W below the highest
/// accepted one is still checked against the bitmap, one further back is rejected outright.
///
/// Storage is inline and fixed-size; `validate` never allocates. It mutates, so it is not safe to
/// call concurrently on one value: the session that owns the receiving keypair serialises it.
/// Call it only after the AEAD has verified the packet, or a forger could advance the window.
public struct ReplayWindow: Sendable {
    /// Bits per bitmap block.
    static let blockBits = 64
    /// Number of blocks (Protocol.replayWindowBits / 64); a power of two so an index wraps with a mask.
    static let blockCount = 128
    /// Furthest a counter may lag the highest accepted one and still be accepted (8128).
    public static let windowSize: UInt64 = Protocol.replayWindowSize
    /// Counters at or above this are never accepted (REJECT_AFTER_MESSAGES, 2^64 − 2^13 − 1);
    /// being below UInt64.max, it also keeps `counter + 1` below from overflowing.
    public static let rejectAfterMessages: UInt64 = Protocol.rejectAfterMessages

    /// Highest accepted counter plus one; 0 means nothing accepted yet. Keeping it one ahead lets
    /// counter 0 be a real, first-time counter without a separate "empty" flag.
    private var next: UInt64 = 0
    private var blocks = InlineArray<128, UInt64>(repeating: 0)

    public init() {}

    /// Forgets every counter, as for a freshly derived keypair.
    public mutating func reset() {
        next = 0
        for index in blocks.indices { blocks[index] = 0 }
    }

    /// The highest counter accepted so far, or nil if none has been.
    public var highestAccepted: UInt64? { next == 0 ? nil : next - 1 }

    /// Accepts `counter` and records it if it is below REJECT_AFTER_MESSAGES and either newer than
    /// every counter seen, or at most `windowSize` behind the newest and not seen before.
    /// Returns false (recording nothing) otherwise.
    public mutating func validate(_ counter: UInt64) -> Bool {
        guard counter < Self.rejectAfterMessages else { return false }
        let position = counter + 1  // cannot overflow: counter < rejectAfterMessages
        if position <= next {
            // Old counter: `next - position` is how far it lags the newest accepted one.
            guard next - position <= Self.windowSize else { return false }
        } else {
            // New high: clear the blocks the window slides over. Clearing more than all of them
            // would be wasted work, hence the cap.
            let currentBlock = next >> 6
            let targetBlock = position >> 6
            let toClear = min(targetBlock - currentBlock, UInt64(Self.blockCount))
            var step: UInt64 = 1
            while step <= toClear {
                blocks[Int((currentBlock + step) & UInt64(Self.blockCount - 1))] = 0
                step += 1
            }
            next = position
        }
        let blockIndex = Int((position >> 6) & UInt64(Self.blockCount - 1))
        let bit: UInt64 = 1 << (position & 63)
        let seen = blocks[blockIndex] & bit != 0
        blocks[blockIndex] |= bit
        return !seen
    }
}
