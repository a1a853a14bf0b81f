// The transport AEAD, differentially: tunctl's ChaChaPoly (the plain seal/open, the chunked
// in-place pair and the roomy pair that XORs whole chunks over the bytes around the message)
// against libsodium's crypto_aead_chacha20poly1305_ietf_* for arbitrary keys, counters, lengths
// 0–65535 and room layouts. Every buffer is allocated at exactly the size the layout gives, so
// AddressSanitizer reports any byte read or written outside it; inside it, bytes the functions
// document as untouched are checked to be so.
//
// Input: key (32) ‖ counter (8) ‖ length (2) ‖ room in front (1) ‖ room behind (2) ‖ tamper (2)
// ‖ plaintext pattern (the rest, repeated to the length; zeros when empty).
import CSodium
import FuzzSupport
import Glibc
import TunnelCrypto

/// Whether `bytes[range]` all equal `value` (memcmp against itself shifted by one: no Swift loop
/// under ASan, which would dominate a 64 KiB run).
func all(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, are value: UInt8) -> Bool {
    guard !range.isEmpty, let base = bytes.baseAddress?.advanced(by: range.lowerBound) else { return true }
    return base.load(as: UInt8.self) == value && memcmp(base, base + 1, range.count - 1) == 0
}

/// Whether `bytes[at..<at + expected.count]` equals `expected`.
func equal(_ bytes: UnsafeRawBufferPointer, at offset: Int, _ expected: [UInt8]) -> Bool {
    expected.isEmpty || memcmp(bytes.baseAddress! + offset, expected, expected.count) == 0
}

/// The protocol nonce: 4 zero bytes ‖ LE64 counter.
func nonce(_ counter: UInt64) -> [UInt8] {
    [0, 0, 0, 0] + (0..<8).map { UInt8(truncatingIfNeeded: counter >> (8 * UInt64($0))) }
}

/// libsodium's own AEAD: ciphertext ‖ tag.
func referenceSeal(key: [UInt8], counter: UInt64, plaintext: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: plaintext.count + 16)
    var outLength: UInt64 = 0
    _ = crypto_aead_chacha20poly1305_ietf_encrypt(
        &out, &outLength, plaintext, UInt64(plaintext.count), nil, 0, nil, nonce(counter), key)
    require(outLength == UInt64(plaintext.count + 16), "libsodium sealed \(outLength) bytes")
    return out
}

/// libsodium's own open of ciphertext ‖ tag: whether it verifies.
func referenceOpens(key: [UInt8], counter: UInt64, sealed: UnsafeRawBufferPointer) -> Bool {
    var out = [UInt8](repeating: 0, count: max(1, sealed.count - 16))
    return crypto_aead_chacha20poly1305_ietf_decrypt(
        &out, nil, nil, sealed.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(sealed.count), nil, 0,
        nonce(counter), key) == 0
}

/// A heap region of exactly `count` bytes (ASan poisons what lies around it), filled with `fill`.
func withRegion<R>(_ count: Int, fill: UInt8, _ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
    let region = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
    defer { region.deallocate() }
    region.initializeMemory(as: UInt8.self, repeating: fill)
    return body(region)
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let keyBytes = input.array(32)
    let key = keyBytes.withUnsafeBytes { SecretKey(copying: $0) }
    let counter = input.uint64()
    // A quarter of the inputs reach all of 0–65535; the rest stay under 2048, where the chunk
    // edges are and each run is fast.
    let rawLength = Int(input.uint16())
    let length = rawLength >= 0xc000 ? rawLength : rawLength % 2048
    let front = Int(input.byte())  // 0–255, around roomInFront (64)
    let behind = Int(input.uint16()) % 1024  // 0–1023, around roomBehind (511)
    let tamper = Int(input.uint16())
    let pattern = [UInt8](input.rest())
    var plaintext = [UInt8](repeating: 0, count: length)
    if !pattern.isEmpty {
        plaintext.withUnsafeMutableBytes { out in
            var offset = 0
            while offset < length {
                let n = min(pattern.count, length - offset)
                (out.baseAddress! + offset).copyMemory(from: pattern, byteCount: n)
                offset += n
            }
        }
    }
    let expected = referenceSeal(key: keyBytes, counter: counter, plaintext: plaintext)

    // 1. The plain seal and open, out of place.
    withRegion(length + 16, fill: 0xee) { out in
        plaintext.withUnsafeBytes { ChaChaPoly.seal(key: key, counter: counter, plaintext: $0, into: out.baseAddress!) }
        require(equal(UnsafeRawBufferPointer(out), at: 0, expected), "seal differs from libsodium at length \(length)")
    }
    withRegion(max(1, length), fill: 0xee) { out in
        let opened = expected.withUnsafeBytes {
            ChaChaPoly.open(key: key, counter: counter, ciphertext: $0, into: out.baseAddress!)
        }
        require(opened && equal(UnsafeRawBufferPointer(out), at: 0, plaintext), "open failed at length \(length)")
    }

    // 2. The chunked in-place pair on message ‖ tag, nothing around it.
    withRegion(length + 16, fill: 0) { region in
        region.baseAddress!.copyMemory(from: plaintext, byteCount: length)
        ChaChaPoly.sealInPlace(
            key: key, counter: counter, message: UnsafeMutableRawBufferPointer(rebasing: region[0..<length]),
            tag: region.baseAddress! + length)
        require(equal(UnsafeRawBufferPointer(region), at: 0, expected), "sealInPlace differs at length \(length)")
        let opened = ChaChaPoly.openInPlace(
            key: key, counter: counter, message: UnsafeMutableRawBufferPointer(rebasing: region[0..<length]),
            tag: region.baseAddress! + length)
        require(opened && equal(UnsafeRawBufferPointer(region), at: 0, plaintext), "openInPlace failed at \(length)")
    }

    // 3. The roomy pair: `front` bytes before the message, `behind` after its tag.
    let total = front + length + 16 + behind
    let message = front..<(front + length)
    let tagEnd = front + length + 16
    let start = front - ChaChaPoly.roomInFront
    let span = ChaChaPoly.roomySpan(messageLength: length)
    let roomy = length >= ChaChaPoly.chunkedFrom && start >= 0 && start + span <= total
    withRegion(total, fill: 0xa5) { region in
        (region.baseAddress! + front).copyMemory(from: plaintext, byteCount: length)
        ChaChaPoly.sealInPlace(key: key, counter: counter, message: message, in: region)
        let sealed = UnsafeRawBufferPointer(region)
        require(
            equal(sealed, at: front, expected), "roomy seal differs: length \(length) front \(front) behind \(behind)")
        // Outside message and tag: the room zeroed and keystream up to the span's end, on the
        // roomy path; nothing else changed.
        if roomy {
            require(all(sealed, 0..<start, are: 0xa5), "roomy seal wrote before its room")
            require(all(sealed, start..<front, are: 0), "roomy seal left its room non-zero")
            require(all(sealed, max(start + span, tagEnd)..<total, are: 0xa5), "roomy seal wrote past its span")
        } else {
            require(all(sealed, 0..<front, are: 0xa5), "seal wrote in front of the message (length \(length))")
            require(all(sealed, tagEnd..<total, are: 0xa5), "seal wrote behind the tag (length \(length))")
        }
    }
    // Open a clean copy with the same layout, intact and with one byte flipped.
    let flip = tamper < length + 16 ? tamper : -1
    for tampered in [false, true] where !tampered || flip >= 0 {
        withRegion(total, fill: 0x5a) { region in
            (region.baseAddress! + front).copyMemory(from: expected, byteCount: length + 16)
            if tampered { region[front + flip] ^= 0x01 }
            let before = [UInt8](region)
            require(
                referenceOpens(
                    key: keyBytes, counter: counter, sealed: UnsafeRawBufferPointer(rebasing: region[front..<tagEnd]))
                    == !tampered, "libsodium disagrees about the tampered datagram")
            let scratchSize = (tamper & 1) == 0 ? ChaChaPoly.roomySpan(messageLength: 65535) : span
            let opened = withRegion(scratchSize, fill: 0x33) { scratch in
                let ok = ChaChaPoly.openInPlace(
                    key: key, counter: counter, message: message, in: region, scratch: scratch)
                let scratchBytes = UnsafeRawBufferPointer(scratch)
                if roomy {
                    let zeroed = ok ? ChaChaPoly.roomInFront : span
                    require(
                        all(scratchBytes, 0..<zeroed, are: 0), "roomy open left keystream in the scratch (ok \(ok))")
                    require(all(scratchBytes, span..<scratchSize, are: 0x33), "roomy open wrote past its span")
                } else {
                    require(all(scratchBytes, 0..<scratchSize, are: 0x33), "the fallback open wrote to the scratch")
                }
                return ok
            }
            require(opened == !tampered, "roomy open said \(opened), tampered \(tampered), length \(length)")
            let after = UnsafeRawBufferPointer(region)
            var outside = before
            outside.replaceSubrange(message, with: after[message])
            require(
                outside.withUnsafeBytes { memcmp($0.baseAddress!, after.baseAddress!, total) == 0 },
                "open wrote outside the message")
            if opened {
                require(equal(after, at: front, plaintext), "roomy open gave other plaintext at \(length)")
            } else if length >= ChaChaPoly.chunkedFrom {
                require(equal(after, at: 0, before), "a failed open changed the ciphertext")
            }
        }
    }
    return 0
}

runFuzzer { data, size in fuzzOne(data, size) }
