import TunnelCrypto

/// The core's notion of now. `monotonic` drives every timer; `unixNanoseconds` only stamps
/// initiations (TAI64N) and reports "latest handshake". Both are passed in, so tests use a fake clock.
public struct Instant: Sendable, Hashable {
    public var monotonic: UInt64
    public var unixNanoseconds: UInt64

    public init(monotonic: UInt64, unixNanoseconds: UInt64) {
        self.monotonic = monotonic
        self.unixNanoseconds = unixNanoseconds
    }

    /// Nanoseconds from `earlier` to this instant on the monotonic clock, 0 when `earlier` is
    /// later. Threads hand the engine instants read at different moments (the outbound path
    /// reads the clock once per burst), so an instant may be older than a state change another
    /// thread made meanwhile: such an age is 0, never a wrapped-around eternity.
    public func elapsed(since earlier: UInt64) -> UInt64 {
        monotonic > earlier ? monotonic - earlier : 0
    }

    /// The same instant `nanoseconds` later on both clocks.
    public func advanced(by nanoseconds: UInt64) -> Instant {
        Instant(monotonic: monotonic + nanoseconds, unixNanoseconds: unixNanoseconds + nanoseconds)
    }

    public var tai64n: TAI64N {
        TAI64N(
            unixSeconds: Int64(unixNanoseconds / Protocol.nanosecondsPerSecond),
            nanoseconds: UInt32(unixNanoseconds % Protocol.nanosecondsPerSecond))
    }
}

/// One direction pair of transport keys from one handshake (a Noise "session").
///
/// Owned by its peer. The `let`s (keys, indices) may be read on any thread holding a reference,
/// which is how sealing and opening run outside whatever serializes the device; the `var`s are
/// touched only by the device's owner (hence `@exclusivity(unchecked)` on the two that every
/// packet touches, as on `Peer`).
final class Keypair {
    let sendingKey: SecretKey
    let receivingKey: SecretKey
    /// Our index: the receiver index the peer puts on packets for this keypair.
    let localIndex: UInt32
    /// The peer's index, put on packets we send under this keypair.
    let remoteIndex: UInt32
    /// True when we sent the initiation: only the initiator rekeys on age.
    let isInitiator: Bool
    /// Monotonic nanoseconds when the keys were derived.
    let created: UInt64
    /// The next counter to send; `rejectAfterMessages` or more means this keypair is spent.
    @exclusivity(unchecked) var sendCounter: UInt64 = 0
    @exclusivity(unchecked) var replay = ReplayWindow()

    init(keys: TransportKeys, isInitiator: Bool, created: UInt64) {
        self.sendingKey = keys.sending
        self.receivingKey = keys.receiving
        self.localIndex = keys.localIndex
        self.remoteIndex = keys.remoteIndex
        self.isInitiator = isInitiator
        self.created = created
    }

    func isExpired(at now: UInt64) -> Bool {
        now > created && now - created >= Protocol.rejectAfterTime
    }

    /// Takes the next send counter (the caller checked `canSend`).
    func reserveCounter() -> UInt64 {
        defer { sendCounter += 1 }
        return sendCounter
    }

    /// Usable for sending: young enough and counters left.
    func canSend(at now: UInt64) -> Bool {
        !isExpired(at: now) && sendCounter < Protocol.rejectAfterMessages
    }
}

/// The transport message (type 4) on caller-owned memory: seal in place, open in place.
enum Transport {
    /// Plaintext length after padding to a multiple of 16, never past the MTU (wireguard-go
    /// `calculatePaddingSize`); a packet already longer than the MTU is not padded further.
    static func paddedLength(_ length: Int, mtu: Int) -> Int {
        let rounded = (length + Protocol.paddingMultiple - 1) / Protocol.paddingMultiple * Protocol.paddingMultiple
        if mtu <= 0 { return rounded }
        if length >= mtu { return length }
        return min(rounded, mtu)
    }

    /// Seals the plaintext found at `buffer[TransportMessage.headerSize ..< +length]` in place:
    /// zero-pads it, writes the header in front and the tag behind. Returns the datagram length
    /// (datagram = `buffer[0..<result]`). `buffer` must have room for the padding and the tag.
    static func seal(
        _ buffer: UnsafeMutableRawBufferPointer, plaintextLength: Int, mtu: Int, keypair: Keypair
    ) -> Int {
        seal(buffer, plaintextLength: plaintextLength, mtu: mtu, keypair: keypair, counter: keypair.reserveCounter())
    }

    /// `seal` under a counter reserved earlier, with the datagram at `region[offset...]`. Reads
    /// only the keypair's immutable key and index, so it may run on another thread than the one
    /// that owns the device. Given `Device.sealingRoom` bytes in front of the datagram and
    /// `Device.sealingSlotSize` from its start, the encryption copies nothing (see
    /// `ChaChaPoly.sealInPlace(key:counter:message:in:)`); the region before `offset` is then
    /// left zeroed, and past the tag it holds unused keystream.
    static func seal(
        _ region: UnsafeMutableRawBufferPointer, datagramAt offset: Int = 0, plaintextLength: Int, mtu: Int,
        keypair: Keypair, counter: UInt64
    ) -> Int {
        seal(
            region, datagramAt: offset, plaintextLength: plaintextLength, mtu: mtu, key: keypair.sendingKey,
            receiver: keypair.remoteIndex, counter: counter)
    }

    /// `seal` under `key` for the peer's index `receiver` (a keypair's sending key and remote
    /// index, taken by a `SealTicket`), reading nothing else.
    static func seal(
        _ region: UnsafeMutableRawBufferPointer, datagramAt offset: Int, plaintextLength: Int, mtu: Int,
        key: SecretKey, receiver: UInt32, counter: UInt64
    ) -> Int {
        let header = TransportMessage.headerSize
        let padded = paddedLength(plaintextLength, mtu: mtu)
        let message = (offset + header)..<(offset + header + padded)
        precondition(offset >= 0 && region.count >= message.upperBound + MessageSize.tag, "transport buffer too small")
        // The region is non-empty (checked above), so its base address is non-nil.
        let base = region.baseAddress!
        if padded > plaintextLength {
            (base + message.lowerBound + plaintextLength).initializeMemory(
                as: UInt8.self, repeating: 0, count: padded - plaintextLength)
        }
        ChaChaPoly.sealInPlace(key: key, counter: counter, message: message, in: region)
        // After sealing: the header's bytes are part of the room the seal may use.
        TransportMessage.writeHeader(
            receiver: receiver, counter: counter,
            to: UnsafeMutableRawBufferPointer(rebasing: region[offset...]))
        return header + padded + MessageSize.tag
    }

    /// Opens a transport datagram in `buffer[0..<length]` in place; the plaintext lands at
    /// `TransportMessage.headerSize`. Returns its length, or nil when the tag does not verify.
    /// The replay check is the caller's, after this succeeds. Reads only `key` (a keypair's
    /// immutable receiving key), so it may run on another thread than the one that owns the device.
    static func open(
        _ buffer: UnsafeMutableRawBufferPointer, length: Int, counter: UInt64, key: SecretKey
    ) -> Int? {
        let header = TransportMessage.headerSize
        guard length >= header + MessageSize.tag, let base = buffer.baseAddress else { return nil }
        let messageLength = length - header - MessageSize.tag
        let message = UnsafeMutableRawBufferPointer(start: base + header, count: messageLength)
        guard
            ChaChaPoly.openInPlace(
                key: key, counter: counter, message: message, tag: base + header + messageLength)
        else { return nil }
        return length - header - MessageSize.tag
    }

    /// `open` for the datagram at `region[offset..<offset + length]`. Given `Device.openingRoom`
    /// readable bytes in front of it, readable bytes up to `Device.openingSpan(datagramLength:)`
    /// past its start and a `scratch` of `Device.openingScratchSize`, the decryption reads the
    /// ciphertext in one keystream call (see `ChaChaPoly.openInPlace(key:counter:message:in:scratch:)`);
    /// only the datagram's own bytes are written.
    static func open(
        _ region: UnsafeMutableRawBufferPointer, datagramAt offset: Int, length: Int, counter: UInt64,
        key: SecretKey, scratch: UnsafeMutableRawBufferPointer
    ) -> Int? {
        let header = TransportMessage.headerSize
        precondition(offset >= 0 && offset + length <= region.count, "the datagram must lie inside the region")
        guard length >= header + MessageSize.tag else { return nil }
        let messageLength = length - header - MessageSize.tag
        let message = (offset + header)..<(offset + header + messageLength)
        guard
            ChaChaPoly.openInPlace(
                key: key, counter: counter, message: message, in: region, scratch: scratch)
        else { return nil }
        return messageLength
    }
}
