import CFuzzDriver
import Glibc

/// Runs libFuzzer with this process's arguments, calling `body` with each input; never returns.
public func runFuzzer(_ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, body))
}

/// An invariant the target checks: a breach prints `message` and aborts, which libFuzzer reports
/// as a crash and saves the input as a reproducer (`crash-…`).
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        var line = "INVARIANT BROKEN: \(message())\n"
        _ = line.withUTF8 { write(2, $0.baseAddress, $0.count) }
        abort()
    }
}

/// Reads the fuzzer's input front to back; past the end it yields zeros, so a target can take
/// what it needs without checking lengths.
public struct FuzzInput {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset = 0

    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    }

    public var remaining: Int { bytes.count - offset }
    public var isEmpty: Bool { offset >= bytes.count }

    public mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func uint16() -> UInt16 { UInt16(byte()) | UInt16(byte()) << 8 }
    public mutating func uint32() -> UInt32 { UInt32(uint16()) | UInt32(uint16()) << 16 }
    public mutating func uint64() -> UInt64 { UInt64(uint32()) | UInt64(uint32()) << 32 }

    /// Up to `count` bytes (fewer at the end of the input).
    public mutating func take(_ count: Int) -> UnsafeRawBufferPointer {
        let n = max(0, min(count, remaining))
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
    }

    /// Exactly `count` bytes, zero-padded past the end of the input.
    public mutating func array(_ count: Int) -> [UInt8] {
        var out = [UInt8](take(count))
        out.append(contentsOf: repeatElement(0, count: count - out.count))
        return out
    }

    /// Everything not read yet.
    public mutating func rest() -> UnsafeRawBufferPointer { take(remaining) }
}

/// The RFC 1071 ones' complement sum of `bytes` as big-endian 16-bit words, plus `initial`,
/// folded: the targets' own reference, independent of tunctl's InternetChecksum (in C, outside
/// the coverage instrumentation, as checks need no coverage).
public func onesSum(_ bytes: ArraySlice<UInt8>, initial: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBufferPointer { fuzz_ones_sum($0.baseAddress, $0.count, initial) }
}

/// Whether `a` and `b` hold the same bytes (compared outside the coverage instrumentation).
public func sameBytes(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    guard let first = a.baseAddress, let second = b.baseAddress else { return true }
    let (x, y) = (first.assumingMemoryBound(to: UInt8.self), second.assumingMemoryBound(to: UInt8.self))
    return fuzz_same_bytes(x, y, a.count) == 1
}

/// Whether two byte slices are equal (see `sameBytes(_:_:)` on buffers).
public func sameBytes(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Bool {
    a.withUnsafeBytes { first in b.withUnsafeBytes { second in sameBytes(first, second) } }
}
