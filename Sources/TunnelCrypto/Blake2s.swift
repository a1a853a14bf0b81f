import CBlake2
import CSodium

/// BLAKE2s (RFC 7693) from libb2: the protocol's HASH (32-byte output), its MAC (keyed, 16-byte
/// output) and the base of HMAC-BLAKE2s and the KDF. The state lives on the caller's stack.
public struct Blake2s {
    private var state = blake2s_state()
    private let outputLength: Int

    /// Unkeyed, `outputLength` bytes (1...32).
    public init(outputLength: Int = 32) {
        precondition((1...32).contains(outputLength))
        self.outputLength = outputLength
        _ = blake2s_init(&state, outputLength)
    }

    /// Keyed mode (RFC 7693 §2.5), the protocol's MAC. The key is 1...32 bytes.
    public init(key: UnsafeRawBufferPointer, outputLength: Int) {
        precondition((1...32).contains(outputLength) && (1...32).contains(key.count))
        self.outputLength = outputLength
        _ = blake2s_init_key(&state, outputLength, key.baseAddress, key.count)
    }

    public mutating func update(_ data: UnsafeRawBufferPointer) {
        guard let base = data.baseAddress, data.count > 0 else { return }
        _ = blake2s_update(&state, base.assumingMemoryBound(to: UInt8.self), data.count)
    }

    public mutating func update(_ value: Bytes32) {
        value.withUnsafeBytes { update($0) }
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Writes `outputLength` bytes to `out`, then wipes the state.
    public mutating func finalize(into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= outputLength)
        _ = blake2s_final(&state, out.cBytes, outputLength)
        Swift.withUnsafeMutableBytes(of: &state) { sodium_memzero($0.baseAddress, $0.count) }
    }

    // MARK: The protocol's functions

    /// HASH(a ‖ b ‖ …) with a 32-byte output.
    public static func hash(_ parts: UnsafeRawBufferPointer...) -> Bytes32 {
        var hasher = Blake2s()
        for part in parts { hasher.update(part) }
        return Bytes32 { hasher.finalize(into: $0) }
    }

    /// HASH(a ‖ b) where a is a previous hash: the handshake's "mix hash".
    public static func hash(_ first: Bytes32, _ second: UnsafeRawBufferPointer) -> Bytes32 {
        var hasher = Blake2s()
        hasher.update(first)
        hasher.update(second)
        return Bytes32 { hasher.finalize(into: $0) }
    }

    /// MAC(key, data): keyed BLAKE2s with a 16-byte output (mac1, mac2, cookie).
    public static func mac(key: UnsafeRawBufferPointer, _ data: UnsafeRawBufferPointer) -> Bytes16 {
        var hasher = Blake2s(key: key, outputLength: 16)
        hasher.update(data)
        return Bytes16 { hasher.finalize(into: $0) }
    }

    /// HMAC-BLAKE2s-256 (RFC 2104 with a 64-byte block). Keys up to 64 bytes are used as given.
    /// `out` receives 32 bytes; intermediate key pads are wiped.
    public static func hmac(
        key: UnsafeRawBufferPointer, _ data: UnsafeRawBufferPointer..., into out: UnsafeMutableRawBufferPointer
    ) {
        precondition(key.count <= 64 && out.count >= 32)
        var pad = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        var inner = Bytes32()
        Swift.withUnsafeMutableBytes(of: &pad) { block in
            block.copyMemory(from: key)
            for index in 0..<64 { block[index] ^= 0x36 }
            var hasher = Blake2s()
            hasher.update(UnsafeRawBufferPointer(block))
            for part in data { hasher.update(part) }
            inner = Bytes32 { hasher.finalize(into: $0) }
            for index in 0..<64 { block[index] ^= 0x36 ^ 0x5c }
            var outer = Blake2s()
            outer.update(UnsafeRawBufferPointer(block))
            outer.update(inner)
            outer.finalize(into: out)
            sodium_memzero(block.baseAddress, 64)
        }
        Swift.withUnsafeMutableBytes(of: &inner) { sodium_memzero($0.baseAddress, $0.count) }
    }
}

/// The protocol's KDF (HKDF with HMAC-BLAKE2s): prk = HMAC(ck, input); T1 = HMAC(prk, 0x01);
/// T2 = HMAC(prk, T1 ‖ 0x02); T3 = HMAC(prk, T2 ‖ 0x03). Every output is a secret.
public enum KDF {
    public static func kdf1(_ chainingKey: SecretKey, _ input: UnsafeRawBufferPointer) -> SecretKey {
        derive(chainingKey, input, count: 1)[0]
    }

    public static func kdf2(_ chainingKey: SecretKey, _ input: UnsafeRawBufferPointer) -> (SecretKey, SecretKey) {
        let keys = derive(chainingKey, input, count: 2)
        return (keys[0], keys[1])
    }

    public static func kdf3(
        _ chainingKey: SecretKey, _ input: UnsafeRawBufferPointer
    ) -> (SecretKey, SecretKey, SecretKey) {
        let keys = derive(chainingKey, input, count: 3)
        return (keys[0], keys[1], keys[2])
    }

    /// Runs at handshake time only (a few small allocations are fine there).
    private static func derive(_ chainingKey: SecretKey, _ input: UnsafeRawBufferPointer, count: Int) -> [SecretKey] {
        chainingKey.withUnsafeBytes { derive(key: $0, input, count: count) }
    }

    /// The KDF with a key of any length up to 64 bytes (the protocol's is always 32). Internal so
    /// that wireguard-go's `device/kdf_test.go` vectors, whose keys are 0, 8 and 9 bytes, can be
    /// checked as given.
    static func derive(key: UnsafeRawBufferPointer, _ input: UnsafeRawBufferPointer, count: Int) -> [SecretKey] {
        precondition((1...3).contains(count))
        let prk = SecretKey { out in Blake2s.hmac(key: key, input, into: out) }
        var outputs: [SecretKey] = []
        outputs.reserveCapacity(count)
        for index in 1...count {
            var counter = UInt8(index)
            let next = SecretKey { out in
                prk.withUnsafeBytes { prkBytes in
                    Swift.withUnsafeBytes(of: &counter) { counterByte in
                        if let previous = outputs.last {
                            previous.withUnsafeBytes { Blake2s.hmac(key: prkBytes, $0, counterByte, into: out) }
                        } else {
                            Blake2s.hmac(key: prkBytes, counterByte, into: out)
                        }
                    }
                }
            }
            outputs.append(next)
        }
        return outputs
    }
}
