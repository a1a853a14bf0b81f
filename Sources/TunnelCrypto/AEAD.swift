import CSodium

/// ChaCha20-Poly1305, IETF variant (RFC 8439), with the protocol's nonce: 4 zero bytes ‖ LE64 counter.
///
/// Both directions work on caller-owned memory and may run in place (`out` equal to the input's
/// base address), so the per-packet path allocates nothing.
public enum ChaChaPoly {
    public static let tagLength = 16

    /// Seals `plaintext` into `out`, which must hold `plaintext.count + 16` bytes (ciphertext ‖ tag).
    public static func seal(
        key: SecretKey, counter: UInt64, plaintext: UnsafeRawBufferPointer,
        additionalData: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        into out: UnsafeMutableRawPointer
    ) {
        _ = Sodium.ready
        withNonce(counter) { nonce in
            _ = crypto_aead_chacha20poly1305_ietf_encrypt_detached(
                out.assumingMemoryBound(to: UInt8.self),
                out.advanced(by: plaintext.count).assumingMemoryBound(to: UInt8.self), nil,
                plaintext.cBytes, UInt64(plaintext.count),
                additionalData.cBytes, UInt64(additionalData.count),
                nil, nonce, key.storage.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Opens `ciphertext` (which ends with the 16-byte tag) into `out` (`ciphertext.count - 16`
    /// bytes). Returns false, with `out` unspecified, when the tag does not verify.
    public static func open(
        key: SecretKey, counter: UInt64, ciphertext: UnsafeRawBufferPointer,
        additionalData: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        into out: UnsafeMutableRawPointer
    ) -> Bool {
        _ = Sodium.ready
        guard ciphertext.count >= tagLength, let base = ciphertext.baseAddress else { return false }
        let messageLength = ciphertext.count - tagLength
        return withNonce(counter) { nonce in
            crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                out.assumingMemoryBound(to: UInt8.self), nil,
                base.assumingMemoryBound(to: UInt8.self), UInt64(messageLength),
                base.advanced(by: messageLength).assumingMemoryBound(to: UInt8.self),
                additionalData.cBytes, UInt64(additionalData.count),
                nonce, key.storage.assumingMemoryBound(to: UInt8.self)) == 0
        }
    }

    // MARK: Transport data: the same construction, keystream in whole 8-block chunks

    /// Bytes of keystream per libsodium call on the transport path: libsodium's AVX2 ChaCha20
    /// works 8 blocks (512 bytes) at a time and finishes a shorter remainder through slower
    /// 4-block and 1-block code, plus one more call for the Poly1305 key. Measured here with
    /// libsodium 1.0.18: a 1420-byte seal takes 1.66 µs through `..._encrypt_detached` and 1.36 µs
    /// when the remainder goes through a whole chunk; block 0 alone costs 0.15 µs.
    static let chunkLength = 512
    static let blockLength = 64
    /// Plaintext bytes that share the first chunk with block 0 (the Poly1305 key).
    static let firstChunkText = chunkLength - blockLength
    /// Below this many bytes libsodium's own AEAD is as fast or faster (measured: 358 vs 469 ns at
    /// 64 bytes, even at 128), so short messages (keepalives, TCP ACKs) go through it.
    public static let chunkedFrom = 128
    /// Scratch on the stack: one chunk, then the Poly1305 state (256 bytes, 16-aligned).
    private static let scratchLength = chunkLength + 256

    /// Seals `message` in place and writes the 16-byte tag at `tag`: exactly what `seal` computes
    /// with no additional data (RFC 8439 §2.8, checked against libsodium's AEAD for every length
    /// up to 3000 bytes), built from libsodium's ChaCha20 and Poly1305 so that all keystream comes
    /// in whole chunks: block 0 and the first 448 bytes from one chunk, the rest in place, a
    /// remainder through a stack chunk. No allocation; the scratch is zeroed before returning.
    public static func sealInPlace(
        key: SecretKey, counter: UInt64, message: UnsafeMutableRawBufferPointer, tag: UnsafeMutableRawPointer
    ) {
        _ = Sodium.ready
        guard message.count >= chunkedFrom else {
            return withNonce(counter) { nonce in
                _ = crypto_aead_chacha20poly1305_ietf_encrypt_detached(
                    message.cBytes, tag.assumingMemoryBound(to: UInt8.self), nil, message.cBytes,
                    UInt64(message.count), nil, 0, nil, nonce, key.storage.assumingMemoryBound(to: UInt8.self))
            }
        }
        withTransportScratch(counter: counter) { nonce, scratch in
            let key = key.storage.assumingMemoryBound(to: UInt8.self)
            let head = firstChunk(message, nonce: nonce, key: key, scratch: scratch)
            if head > 0, let base = message.baseAddress {
                base.copyMemory(from: scratch + blockLength, byteCount: head)
            }
            // The remainder below reuses the chunk that holds the Poly1305 key: the state keeps it.
            let state = polyState(scratch)
            applyKeystream(message, from: head, nonce: nonce, key: key, scratch: scratch)
            authenticate(UnsafeRawBufferPointer(message), state: state, tag: tag)
        }
    }

    /// Bytes the roomy seal (`sealInPlace(key:counter:message:in:)`) takes in front of the
    /// message: keystream block 0, the Poly1305 key, is made there by the same libsodium call.
    public static let roomInFront = blockLength

    /// Most bytes past a message's end that `roomySpan` reaches (the rest of its last chunk).
    public static let roomBehind = chunkLength - 1

    /// Bytes, from `roomInFront` before a message of `length` bytes, that the roomy seal XORs
    /// with keystream: the room and the message, rounded up to whole chunks.
    public static func roomySpan(messageLength length: Int) -> Int {
        (roomInFront + length + chunkLength - 1) / chunkLength * chunkLength
    }

    /// Seals `region[message]` in place and writes its tag at `message.upperBound`: the same
    /// bytes as `sealInPlace(key:counter:message:tag:)`, without its copies, when the region gives
    /// the message room: `roomInFront` bytes before it and `roomySpan` bytes from there. Then one
    /// libsodium call XORs whole chunks from block 0 (over zeroed room) through the message and
    /// past its end, in place; the Poly1305 key is read from the room, which is zeroed again
    /// before returning. Past the tag, up to the span's end, the region is left holding keystream
    /// of blocks no message uses (never plaintext, never sent). Without the room, or for a
    /// message shorter than `chunkedFrom`, it falls back to the other `sealInPlace`, which
    /// touches only the message and its tag.
    public static func sealInPlace(
        key: SecretKey, counter: UInt64, message: Range<Int>, in region: UnsafeMutableRawBufferPointer
    ) {
        precondition(
            message.lowerBound >= 0 && message.upperBound + tagLength <= region.count,
            "sealInPlace: the message and its tag must lie inside the region")
        // Inside the region (checked above), so the base address is non-nil.
        let base = region.baseAddress!
        let start = message.lowerBound - roomInFront
        guard message.count >= chunkedFrom, start >= 0,
            start + roomySpan(messageLength: message.count) <= region.count
        else {
            return sealInPlace(
                key: key, counter: counter, message: UnsafeMutableRawBufferPointer(rebasing: region[message]),
                tag: base + message.upperBound)
        }
        _ = Sodium.ready
        withNonce(counter) { nonce in
            let room = (base + start).assumingMemoryBound(to: UInt8.self)
            room.initialize(repeating: 0, count: roomInFront)
            _ = crypto_stream_chacha20_ietf_xor_ic(
                room, room, UInt64(roomySpan(messageLength: message.count)), nonce, 0,
                key.storage.assumingMemoryBound(to: UInt8.self))
            withPolyState(key: room) { poly in
                authenticate(
                    UnsafeRawBufferPointer(rebasing: region[message]), state: poly, tag: base + message.upperBound)
            }
            sodium_memzero(room, roomInFront)
        }
    }

    /// libsodium's Poly1305 state: 256 bytes, 16-aligned (SIMD64 aligns it).
    private struct PolyState {
        var bytes = (SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>())
    }

    /// Runs `body` with a Poly1305 state on the stack keyed with the 32 bytes at `key`, zeroed
    /// after use.
    private static func withPolyState<R>(
        key: UnsafePointer<UInt8>, _ body: (UnsafeMutablePointer<crypto_onetimeauth_poly1305_state>) -> R
    ) -> R {
        var state = PolyState()
        return withUnsafeMutableBytes(of: &state) { state in
            // 256 bytes, 16-aligned: exactly libsodium's state, so the base address is non-nil.
            let poly = state.baseAddress!.bindMemory(to: crypto_onetimeauth_poly1305_state.self, capacity: 1)
            defer { sodium_memzero(state.baseAddress!, state.count) }
            _ = crypto_onetimeauth_poly1305_init(poly, key)
            return body(poly)
        }
    }

    /// Opens `message` (ciphertext without its tag) in place when `tag` verifies; otherwise
    /// returns false, with `message` unspecified (libsodium zeroes a short one) but never any
    /// unauthenticated plaintext. The inverse of `sealInPlace`.
    public static func openInPlace(
        key: SecretKey, counter: UInt64, message: UnsafeMutableRawBufferPointer, tag: UnsafeRawPointer
    ) -> Bool {
        _ = Sodium.ready
        guard message.count >= chunkedFrom else {
            return withNonce(counter) { nonce in
                crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                    message.cBytes, nil, message.cBytes, UInt64(message.count), tag.assumingMemoryBound(to: UInt8.self),
                    nil, 0, nonce, key.storage.assumingMemoryBound(to: UInt8.self)) == 0
            }
        }
        return withTransportScratch(counter: counter) { nonce, scratch in
            let key = key.storage.assumingMemoryBound(to: UInt8.self)
            let head = firstChunk(message, nonce: nonce, key: key, scratch: scratch)
            guard verifies(UnsafeRawBufferPointer(message), state: polyState(scratch), tag: tag) else { return false }
            if head > 0, let base = message.baseAddress {
                base.copyMemory(from: scratch + blockLength, byteCount: head)
            }
            applyKeystream(message, from: head, nonce: nonce, key: key, scratch: scratch)
            return true
        }
    }

    /// Opens `region[message]` in place when the tag at `message.upperBound` verifies, as
    /// `openInPlace(key:counter:message:tag:)` does, but with one keystream call and no copy in:
    /// given `roomInFront` readable bytes before the message, `roomySpan` readable bytes from
    /// there, and a `scratch` that long, libsodium XORs the whole span, block 0 first, out of
    /// place into `scratch`. The bytes in front are only read, so block 0 (the Poly1305 key) is
    /// the scratch XOR those bytes. The tag is checked over the ciphertext still in the region,
    /// and only then is the plaintext copied over it. Nothing outside `region[message]` is
    /// written but the scratch, whose first block (the key) is zeroed before returning, and all
    /// of it when the tag fails; the rest holds this message's plaintext and unused keystream.
    /// Without the room or the scratch, or below `chunkedFrom`, it is the other `openInPlace`.
    public static func openInPlace(
        key: SecretKey, counter: UInt64, message: Range<Int>, in region: UnsafeMutableRawBufferPointer,
        scratch: UnsafeMutableRawBufferPointer
    ) -> Bool {
        precondition(
            message.lowerBound >= 0 && message.upperBound + tagLength <= region.count,
            "openInPlace: the message and its tag must lie inside the region")
        // Inside the region (checked above), so the base address is non-nil.
        let base = region.baseAddress!
        let start = message.lowerBound - roomInFront
        let span = roomySpan(messageLength: message.count)
        guard message.count >= chunkedFrom, start >= 0, start + span <= region.count, span <= scratch.count,
            let out = scratch.baseAddress
        else {
            return openInPlace(
                key: key, counter: counter, message: UnsafeMutableRawBufferPointer(rebasing: region[message]),
                tag: base + message.upperBound)
        }
        _ = Sodium.ready
        let input = base + start
        let verified = withNonce(counter) { nonce in
            _ = crypto_stream_chacha20_ietf_xor_ic(
                out.assumingMemoryBound(to: UInt8.self), input.assumingMemoryBound(to: UInt8.self), UInt64(span),
                nonce, 0, key.storage.assumingMemoryBound(to: UInt8.self))
            // Block 0's first half, the Poly1305 key: what the XOR added to the bytes in front.
            for index in 0..<(blockLength / 2) {
                out.storeBytes(
                    of: out.load(fromByteOffset: index, as: UInt8.self)
                        ^ input.load(fromByteOffset: index, as: UInt8.self),
                    toByteOffset: index, as: UInt8.self)
            }
            return withPolyState(key: out.assumingMemoryBound(to: UInt8.self)) { poly in
                verifies(UnsafeRawBufferPointer(rebasing: region[message]), state: poly, tag: base + message.upperBound)
            }
        }
        guard verified else {
            sodium_memzero(out, span)
            return false
        }
        (base + message.lowerBound).copyMemory(from: out + roomInFront, byteCount: message.count)
        sodium_memzero(out, roomInFront)
        return true
    }

    /// Runs `body` with the transport nonce and a stack scratch of `scratchLength` bytes, zeroed
    /// after use. A fixed-size local rather than `withUnsafeTemporaryAllocation`, which goes to the
    /// heap in debug builds (the allocation test caught it).
    @inline(__always)
    private static func withTransportScratch<R>(
        counter: UInt64, _ body: (UnsafePointer<UInt8>, UnsafeMutableRawPointer) -> R
    ) -> R {
        withNonce(counter) { nonce in
            var scratch = TransportScratch()
            return withUnsafeMutableBytes(of: &scratch) { scratch in
                // A 768-byte local, so its base address is non-nil; SIMD64 aligns it to 16.
                let base = scratch.baseAddress!
                defer { sodium_memzero(base, scratchLength) }
                return body(nonce, base)
            }
        }
    }

    /// `scratchLength` bytes, 16-aligned (the Poly1305 state's alignment).
    private struct TransportScratch {
        var chunk = (
            SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>(),
            SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>()
        )
        var state = (SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>(), SIMD64<UInt8>())
    }

    /// Keystream blocks 0–7 into `scratch`: block 0 (the Poly1305 key) at 0..<64, and the first
    /// `firstChunkText` bytes of `message` XORed at 64... Returns how many message bytes that covers.
    private static func firstChunk(
        _ message: UnsafeMutableRawBufferPointer, nonce: UnsafePointer<UInt8>, key: UnsafePointer<UInt8>,
        scratch: UnsafeMutableRawPointer
    ) -> Int {
        let head = min(message.count, firstChunkText)
        scratch.initializeMemory(as: UInt8.self, repeating: 0, count: blockLength)
        if head > 0, let base = message.baseAddress {
            (scratch + blockLength).copyMemory(from: base, byteCount: head)
        }
        let bytes = scratch.assumingMemoryBound(to: UInt8.self)
        _ = crypto_stream_chacha20_ietf_xor_ic(bytes, bytes, UInt64(chunkLength), nonce, 0, key)
        return head
    }

    /// XORs keystream into `message[offset...]`, where `offset` is a whole number of blocks past
    /// block 1: whole chunks in place, the remainder through `scratch`.
    private static func applyKeystream(
        _ message: UnsafeMutableRawBufferPointer, from offset: Int, nonce: UnsafePointer<UInt8>,
        key: UnsafePointer<UInt8>, scratch: UnsafeMutableRawPointer
    ) {
        guard offset < message.count, let base = message.baseAddress else { return }
        let whole = (message.count - offset) / chunkLength * chunkLength
        let firstBlock = UInt32(1 + offset / blockLength)
        let text = (base + offset).assumingMemoryBound(to: UInt8.self)
        if whole > 0 {
            _ = crypto_stream_chacha20_ietf_xor_ic(text, text, UInt64(whole), nonce, firstBlock, key)
        }
        let remainder = message.count - offset - whole
        guard remainder > 0 else { return }
        if remainder <= blockLength {
            // One block: libsodium's single-block path (0.12 µs) beats a whole chunk (0.25 µs).
            _ = crypto_stream_chacha20_ietf_xor_ic(
                text + whole, text + whole, UInt64(remainder), nonce, firstBlock + UInt32(whole / blockLength), key)
            return
        }
        let bytes = scratch.assumingMemoryBound(to: UInt8.self)
        scratch.copyMemory(from: text + whole, byteCount: remainder)
        _ = crypto_stream_chacha20_ietf_xor_ic(
            bytes, bytes, UInt64(chunkLength), nonce, firstBlock + UInt32(whole / blockLength), key)
        UnsafeMutableRawPointer(text + whole).copyMemory(from: scratch, byteCount: remainder)
    }

    /// The Poly1305 state behind the chunk in `scratch`, keyed with block 0's first 32 bytes.
    private static func polyState(
        _ scratch: UnsafeMutableRawPointer
    ) -> UnsafeMutablePointer<crypto_onetimeauth_poly1305_state> {
        let state = (scratch + chunkLength).bindMemory(to: crypto_onetimeauth_poly1305_state.self, capacity: 1)
        _ = crypto_onetimeauth_poly1305_init(state, scratch.assumingMemoryBound(to: UInt8.self))
        return state
    }

    /// Poly1305 over `ciphertext ‖ zero padding to 16 ‖ LE64(0) ‖ LE64(length)` (RFC 8439 §2.8,
    /// no additional data) with a keyed `state`; the tag goes to `tag`.
    private static func authenticate(
        _ ciphertext: UnsafeRawBufferPointer, state: UnsafeMutablePointer<crypto_onetimeauth_poly1305_state>,
        tag: UnsafeMutableRawPointer
    ) {
        if let base = ciphertext.baseAddress, ciphertext.count > 0 {
            _ = crypto_onetimeauth_poly1305_update(
                state, base.assumingMemoryBound(to: UInt8.self), UInt64(ciphertext.count))
        }
        var trailer: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, UInt64(ciphertext.count).littleEndian)
        withUnsafeBytes(of: &trailer) { trailer in
            // 32 bytes: up to 15 of zero padding are taken from the front, then the two lengths.
            let padding = (16 - ciphertext.count % 16) % 16
            let start = trailer.baseAddress!.assumingMemoryBound(to: UInt8.self) + (16 - padding)
            _ = crypto_onetimeauth_poly1305_update(state, start, UInt64(padding + 16))
        }
        _ = crypto_onetimeauth_poly1305_final(state, tag.assumingMemoryBound(to: UInt8.self))
    }

    /// Whether the 16-byte `tag` is the Poly1305 tag of `ciphertext` under the keyed `state`
    /// (compared in constant time).
    private static func verifies(
        _ ciphertext: UnsafeRawBufferPointer, state: UnsafeMutablePointer<crypto_onetimeauth_poly1305_state>,
        tag: UnsafeRawPointer
    ) -> Bool {
        var computed: (UInt64, UInt64) = (0, 0)
        return withUnsafeMutableBytes(of: &computed) { expected in
            // The 16-byte tuple, so its base address is non-nil.
            authenticate(ciphertext, state: state, tag: expected.baseAddress!)
            return crypto_verify_16(
                expected.baseAddress!.assumingMemoryBound(to: UInt8.self), tag.assumingMemoryBound(to: UInt8.self)) == 0
        }
    }

    /// The 12-byte IETF nonce on the stack: 4 zero bytes, then the counter little-endian.
    @inline(__always)
    private static func withNonce<R>(_ counter: UInt64, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        var nonce: (UInt32, UInt32, UInt32) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &nonce) { bytes in
            bytes.storeBytes(of: counter.littleEndian, toByteOffset: 4, as: UInt64.self)
            // The tuple is 12 bytes, so the rebound pointer covers exactly the nonce.
            return body(UnsafePointer(bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)))
        }
    }
}

/// XChaCha20-Poly1305 (24-byte nonce): the cookie reply's AEAD.
public enum XChaChaPoly {
    public static let tagLength = 16
    public static let nonceLength = 24

    /// Seals into `out` (`plaintext.count + 16` bytes). `key` is 32 bytes.
    public static func seal(
        key: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer,
        additionalData: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer
    ) {
        _ = Sodium.ready
        precondition(key.count == 32 && nonce.count == nonceLength)
        _ = crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
            out.assumingMemoryBound(to: UInt8.self),
            out.advanced(by: plaintext.count).assumingMemoryBound(to: UInt8.self), nil,
            plaintext.cBytes, UInt64(plaintext.count),
            additionalData.cBytes, UInt64(additionalData.count),
            nil, nonce.cBytes,
            key.cBytes)
    }

    /// Opens into `out` (`ciphertext.count - 16` bytes); false when the tag does not verify.
    public static func open(
        key: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer,
        additionalData: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer
    ) -> Bool {
        _ = Sodium.ready
        precondition(key.count == 32 && nonce.count == nonceLength)
        guard ciphertext.count >= tagLength, let base = ciphertext.baseAddress else { return false }
        let messageLength = ciphertext.count - tagLength
        return crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
            out.assumingMemoryBound(to: UInt8.self), nil,
            base.assumingMemoryBound(to: UInt8.self), UInt64(messageLength),
            base.advanced(by: messageLength).assumingMemoryBound(to: UInt8.self),
            additionalData.cBytes, UInt64(additionalData.count),
            nonce.cBytes,
            key.cBytes) == 0
    }
}
