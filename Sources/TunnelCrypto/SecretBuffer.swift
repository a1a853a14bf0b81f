import CSodium

/// A growable byte buffer for text that may carry keys: control-socket requests (`set` with
/// `private_key=`) and replies (`get`, which writes keys in hex).
///
/// No copy of the contents is ever left behind in freed memory: growing copies into a new block
/// and zeroes the old one before freeing it, `removeAll` zeroes what was written, `deinit` zeroes
/// the whole block. Text goes in as bytes (`append`, `appendHex`, `fill`) so that a key never
/// passes through a Swift `String`, whose storage is freed without being cleared.
///
/// Not thread-safe: one owner (the control queue) uses it.
public final class SecretBuffer {
    /// Owned; `capacity` bytes, the first `count` written.
    private var storage: UnsafeMutableRawPointer
    public private(set) var capacity: Int
    public private(set) var count = 0

    public init(capacity: Int = 4096) {
        self.capacity = max(capacity, 16)
        storage = UnsafeMutableRawPointer.allocate(byteCount: self.capacity, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: self.capacity)
    }

    deinit {
        sodium_memzero(storage, capacity)
        storage.deallocate()
    }

    /// The bytes written so far; valid until the next call that changes the buffer.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: storage, count: count) }

    public var isEmpty: Bool { count == 0 }

    /// Makes room for `extra` more bytes, moving the contents to a larger block if needed (the
    /// old block is zeroed before it is freed).
    public func reserve(_ extra: Int) {
        precondition(extra >= 0 && extra <= Int.max - count, "SecretBuffer.reserve: bad size")
        let needed = count + extra
        guard needed > capacity else { return }
        var grown = capacity
        while grown < needed { grown = grown > Int.max / 2 ? needed : grown * 2 }
        let replacement = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: 16)
        replacement.initializeMemory(as: UInt8.self, repeating: 0, count: grown)
        replacement.copyMemory(from: storage, byteCount: count)
        sodium_memzero(storage, capacity)
        storage.deallocate()
        storage = replacement
        capacity = grown
    }

    public func append(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        reserve(bytes.count)
        (storage + count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    /// Appends text that holds no secret (key names, numbers, addresses) as UTF-8.
    public func append(_ text: String) {
        var text = text
        text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    public func append(byte: UInt8) {
        reserve(1)
        storage.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    /// Appends `bytes` as lowercase hex, written straight into the buffer (no intermediate string).
    public func appendHex(_ bytes: UnsafeRawBufferPointer) {
        let length = bytes.count * 2
        // sodium_bin2hex writes a terminating NUL too: room for it, not counted.
        reserve(length + 1)
        _ = sodium_bin2hex(
            (storage + count).assumingMemoryBound(to: CChar.self), length + 1, bytes.cBytes, bytes.count)
        count += length
    }

    /// Lets `body` write up to `maximum` bytes at the end (e.g. a `read` straight into the
    /// buffer) and counts the bytes it says it wrote. `body` returns that count, or a negative
    /// value (nothing written), which is passed back.
    public func fill(upTo maximum: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows -> Int {
        reserve(maximum)
        let written = try body(UnsafeMutableRawBufferPointer(start: storage + count, count: maximum))
        if written > 0 {
            precondition(written <= maximum, "SecretBuffer.fill: wrote past the room it was given")
            count += written
        }
        return written
    }

    /// Zeroes what was written and empties the buffer. With `keepingCapacity` smaller than the
    /// current capacity, the block is also replaced by one of that size, so one huge reply does
    /// not pin its memory for good.
    public func removeAll(keepingCapacity limit: Int = Int.max) {
        sodium_memzero(storage, count)
        count = 0
        guard capacity > limit else { return }
        storage.deallocate()
        capacity = max(limit, 16)
        storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
    }
}
