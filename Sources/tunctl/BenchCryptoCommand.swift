import ArgumentParser
import Glibc
import TunnelCrypto

/// The benchmark's "ceiling" line through tunctl's own crypto layer: how fast one core seals with
/// ChaCha20-Poly1305 at a given size, the way the tunnel's send slots seal: with room in front of
/// the message and to the end of its last keystream chunk. Timed in thread CPU time, like the
/// bench's libsodium probe, so a busy machine does not halve the figure.
struct BenchCrypto: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-crypto",
        abstract: "Measure single-core ChaCha20-Poly1305 seal throughput (JSON on stdout).",
        shouldDisplay: false
    )

    @Option(help: "Plaintext bytes per seal.")
    var size = 1420

    @Option(help: "CPU seconds to spend.")
    var seconds = 1.0

    func validate() throws {
        guard (1...(1 << 20)).contains(size) else { throw ValidationError("--size must be 1 to 1048576") }
        guard seconds > 0 && seconds <= 60 else { throw ValidationError("--seconds must be in (0, 60]") }
    }

    func run() throws {
        let key = SecretKey.random()
        let room = ChaChaPoly.roomInFront
        let region = UnsafeMutableRawBufferPointer.allocate(
            byteCount: max(ChaChaPoly.roomySpan(messageLength: size), room + size + ChaChaPoly.tagLength),
            alignment: 16)
        defer { region.deallocate() }
        region.initializeMemory(as: UInt8.self, repeating: 0x5a)
        let message = room..<(room + size)
        let start = cpuSeconds()
        var counter: UInt64 = 0
        var elapsed = 0.0
        // Check the clock every 64 seals: cheap, and bounded by --seconds.
        while elapsed < seconds {
            for _ in 0..<64 {
                ChaChaPoly.sealInPlace(key: key, counter: counter, message: message, in: region)
                counter += 1
            }
            elapsed = cpuSeconds() - start
        }
        let bytesPerSecond = Double(counter) * Double(size) / elapsed
        print(
            "{\"size\":\(size),\"seals\":\(counter),\"cpu_seconds\":\(elapsed),"
                + "\"bytes_per_second\":\(bytesPerSecond),\"gbit_per_second\":\(bytesPerSecond * 8 / 1e9)}")
    }

    private func cpuSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
