import Dispatch
import Glibc
import Synchronization
import TunnelIO
import XCTest

/// Each item writes only its own element, as `forEach`'s contract asks of seal and open; the
/// join at the end of `forEach` is what makes those writes visible here. (A `Mutex` would hide a
/// missing join, and the thread sanitizer cannot see its futex.)
final class CryptoWorkersTests: XCTestCase {
    /// Runs `forEach` (or `run`, with `tasks`) and returns, per item, how often it ran and the
    /// last worker that ran it.
    private func record(workers: Int, items: Int, tasks: Bool = false) -> (runs: [Int], worker: [Int]) {
        let runs = UnsafeMutableBufferPointer<Int>.allocate(capacity: max(items, 1))
        let worker = UnsafeMutableBufferPointer<Int>.allocate(capacity: max(items, 1))
        defer {
            runs.deallocate()
            worker.deallocate()
        }
        runs.initialize(repeating: 0)
        worker.initialize(repeating: -1)
        let body = { (item: Int, share: Int) in
            runs[item] += 1
            worker[item] = share
        }
        if tasks {
            CryptoWorkers(count: workers).run(tasks: items, body)
        } else {
            CryptoWorkers(count: workers).forEach(items, body)
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

    /// Every task runs exactly once, on a worker below the count, for fewer, as many and more
    /// tasks than workers; repeated, so that the workers also race to steal from each other.
    func testEveryTaskRunsOnceOnAWorkerInRange() {
        for _ in 0..<50 {
            for workers in [1, 2, 3, 8] {
                for tasks in [0, 1, 2, 7, 33, 129] {
                    let (runs, worker) = record(workers: workers, items: tasks, tasks: true)
                    XCTAssertEqual(runs, [Int](repeating: 1, count: tasks), "workers \(workers), tasks \(tasks)")
                    XCTAssertTrue(
                        worker.allSatisfy { (0..<workers).contains($0) }, "workers \(workers), tasks \(tasks)")
                }
            }
        }
    }

    /// Round after round, each round's tasks run exactly once, and `plan` comes only after every
    /// task of the round before has finished (it sees all of them counted), for fewer, as many
    /// and more workers than cores; the plan's count is what runs, and nil stops.
    func testRoundsRunEveryTaskBeforeTheNextPlan() {
        let sizes = [1, 5, 33, 2, 129, 7]
        for workers in [1, 2, 3, 8] {
            let runs = UnsafeMutableBufferPointer<Int>.allocate(capacity: 129)
            defer { runs.deallocate() }
            runs.initialize(repeating: 0)
            var round = 0
            var complete = true
            CryptoWorkers(count: workers).runRounds(
                plan: {
                    if round > 0 {
                        complete = complete && runs.prefix(sizes[round - 1]).allSatisfy { $0 == 1 }
                        complete = complete && runs.dropFirst(sizes[round - 1]).allSatisfy { $0 == 0 }
                    }
                    runs.update(repeating: 0)
                    defer { round += 1 }
                    return round < sizes.count ? sizes[round] : nil
                },
                { task, worker in
                    XCTAssertLessThan(worker, workers)
                    runs[task] += 1
                })
            XCTAssertEqual(round, sizes.count + 1, "workers \(workers): every round planned, then the stop")
            XCTAssertTrue(complete, "workers \(workers): a round was planned before the last had run once each")
        }
    }

    /// One worker runs the tasks in order on the caller's thread.
    func testOneWorkerRunsTasksInOrder() {
        var order: [Int] = []
        CryptoWorkers(count: 1).run(tasks: 5) { task, worker in
            XCTAssertEqual(worker, 0)
            order.append(task)
        }
        XCTAssertEqual(order, [0, 1, 2, 3, 4])
    }

    /// With two workers, the others' tasks run while task 0 is still running (a pipeline's serial
    /// step overlaps the crypto): task 0 waits, bounded, until every other task has finished.
    /// Needs two CPUs, as Dispatch runs the shares on one thread otherwise.
    func testTaskZeroOverlapsTheRest() throws {
        try XCTSkipIf(CryptoWorkers.onlineCPUs < 2, "one CPU: the shares cannot overlap")
        let finished = Atomic<Int>(0)
        let overlapped = Atomic<Bool>(false)
        let tasks = 9
        CryptoWorkers(count: 2).run(tasks: tasks) { task, _ in
            guard task == 0 else {
                finished.add(1, ordering: .relaxed)
                return
            }
            let deadline = DispatchTime.now().uptimeNanoseconds + 5_000_000_000
            while DispatchTime.now().uptimeNanoseconds < deadline {
                if finished.load(ordering: .relaxed) == tasks - 1 {
                    overlapped.store(true, ordering: .relaxed)
                    return
                }
                sched_yield()
            }
        }
        XCTAssertTrue(overlapped.load(ordering: .relaxed), "task 0 held the others back")
    }

    func testCountIsAtLeastOne() {
        XCTAssertEqual(CryptoWorkers(count: 0).count, 1)
        XCTAssertGreaterThanOrEqual(CryptoWorkers.onlineCPUs, 1)
    }
}
