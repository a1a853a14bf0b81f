import TunnelIO
import XCTest

/// Each item writes only its own element, as `forEach`'s contract asks of seal and open; the
/// join at the end of `forEach` is what makes those writes visible here. (A `Mutex` would hide a
/// missing join, and the thread sanitizer cannot see its futex.)
final class CryptoWorkersTests: XCTestCase {
    /// Runs `forEach` and returns, per item, how often it ran and the last worker that ran it.
    private func record(workers: Int, items: Int) -> (runs: [Int], worker: [Int]) {
        let runs = UnsafeMutableBufferPointer<Int>.allocate(capacity: max(items, 1))
        let worker = UnsafeMutableBufferPointer<Int>.allocate(capacity: max(items, 1))
        defer {
            runs.deallocate()
            worker.deallocate()
        }
        runs.initialize(repeating: 0)
        worker.initialize(repeating: -1)
        CryptoWorkers(count: workers).forEach(items) { item, share in
            runs[item] += 1
            worker[item] = share
        }
        return (Array(runs.prefix(items)), Array(worker.prefix(items)))
    }

    /// Every item runs exactly once, on a worker below the count, for batches smaller than,
    /// equal to and larger than the workers.
    func testEveryItemRunsOnceOnAWorkerInRange() {
        for workers in [1, 2, 3, 8] {
            for items in [0, 1, 2, 7, 128] {
                let (runs, worker) = record(workers: workers, items: items)
                XCTAssertEqual(runs, [Int](repeating: 1, count: items), "workers \(workers), items \(items)")
                XCTAssertTrue(worker.allSatisfy { (0..<workers).contains($0) }, "workers \(workers), items \(items)")
            }
        }
    }

    /// A worker's items are one contiguous run, so per-worker scratch is never shared at once.
    func testAWorkersItemsAreContiguous() {
        let (_, worker) = record(workers: 3, items: 100)
        XCTAssertEqual(worker, worker.sorted(), "shares in order: \(worker)")
        XCTAssertEqual(Set(worker), [0, 1, 2])
    }

    func testCountIsAtLeastOne() {
        XCTAssertEqual(CryptoWorkers(count: 0).count, 1)
        XCTAssertGreaterThanOrEqual(CryptoWorkers.onlineCPUs, 1)
    }
}
