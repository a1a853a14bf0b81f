import Testing
import TunnelCrypto

/// The buffer control requests and replies are made in: contents as given, and nothing left
/// behind once cleared.
@Suite struct SecretBufferTests {
    static let keyBytes = (0..<32).map { UInt8(truncatingIfNeeded: 0x5c + $0 * 7) }

    @Test func appendHexWritesWhatEncodingHexWould() {
        let buffer = SecretBuffer(capacity: 16)
        buffer.append("private_key=")
        Self.keyBytes.withUnsafeBytes { buffer.appendHex($0) }
        buffer.append(byte: 10)
        let expected = "private_key=" + Self.keyBytes.withUnsafeBytes { Encoding.hex($0) } + "\n"
        #expect(String(decoding: buffer.bytes, as: UTF8.self) == expected)
    }

    @Test func growingKeepsTheContents() {
        let buffer = SecretBuffer(capacity: 16)
        var expected: [UInt8] = []
        for index in 0..<5000 {
            let byte = UInt8(truncatingIfNeeded: index)
            buffer.append(byte: byte)
            expected.append(byte)
        }
        #expect(buffer.capacity >= 5000)
        #expect(Array(buffer.bytes) == expected)
    }

    @Test func fillCountsOnlyWhatWasWritten() {
        let buffer = SecretBuffer(capacity: 16)
        let written = buffer.fill(upTo: 100) { room in
            guard room.count >= 100 else { return -1 }
            for index in 0..<3 { room[index] = 7 }
            return 3
        }
        #expect(written == 3)
        #expect(Array(buffer.bytes) == [7, 7, 7])
        #expect(buffer.fill(upTo: 10) { _ in -1 } == -1)
        #expect(buffer.count == 3)
    }

    /// The memory that held a key is zero after `removeAll`, whether kept or given back.
    @Test func removeAllZeroesWhatWasWritten() {
        let buffer = SecretBuffer(capacity: 128)
        Self.keyBytes.withUnsafeBytes { buffer.appendHex($0) }
        let storage = UnsafeRawBufferPointer(start: buffer.bytes.baseAddress, count: buffer.capacity)
        #expect(storage.contains { $0 != 0 })
        buffer.removeAll()
        #expect(buffer.isEmpty)
        // Still this buffer's memory (capacity kept), so reading it is sound.
        #expect(storage.allSatisfy { $0 == 0 })
    }
}
