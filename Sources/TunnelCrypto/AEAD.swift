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
