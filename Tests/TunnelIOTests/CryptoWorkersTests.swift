import Synchronization
import TunnelIO
import XCTest

final class CryptoWorkersTests: XCTestCase {
    /// Every item runs exactly once, on a worker below the count, for batches smaller than,
    /// equal to and larger than the workers.
    func testEveryItemRunsOnceOnAWorkerInRange() {
        for workers in [1, 2, 3, 8] {
            for items in [0, 1, 2, 7, 128] {
                let runs = Mutex([Int](repeating: 0, count: items))
                let workersSeen = Mutex(Set<Int>())
                CryptoWorkers(count: workers).forEach(items) { item, worker in
                    runs.withLock { $0[item] += 1 }
                    workersSeen.withLock { _ = $0.insert(worker) }
                }
                XCTAssertEqual(
                    runs.withLock { $0 }, [Int](repeating: 1, count: items), "workers \(workers), items \(items)")
                XCTAssertTrue(
                    workersSeen.withLock { $0 }.allSatisfy { (0..<workers).contains($0) },
                    "workers \(workers), items \(items)")
            }
        }
    }

    /// A worker's items are one contiguous run, so per-worker scratch is never shared at once.
    func testAWorkersItemsAreContiguous() {
        let owner = Mutex([Int](repeating: -1, count: 100))
        CryptoWorkers(count: 3).forEach(100) { item, worker in owner.withLock { $0[item] = worker } }
        let sequence = owner.withLock { $0 }
        XCTAssertEqual(sequence, sequence.sorted(), "shares in order: \(sequence)")
        XCTAssertEqual(Set(sequence), [0, 1, 2])
    }

    func testCountIsAtLeastOne() {
        XCTAssertEqual(CryptoWorkers(count: 0).count, 1)
        XCTAssertGreaterThanOrEqual(CryptoWorkers.onlineCPUs, 1)
    }
}
