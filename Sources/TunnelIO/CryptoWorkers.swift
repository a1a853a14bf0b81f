import Dispatch
import Glibc
import Synchronization

/// Fork-join encryption for a batch: `count` threads seal (or open) one batch's packets at once,
/// each a contiguous share of it, and `forEach` returns only when every share is done. Whatever
/// the caller does next with the batch (counters, timers, the send or the TUN write) sees it in
/// its original order, so order per peer is kept by construction, with no reorder buffer.
///
/// The threads are Dispatch's: `concurrentPerform` runs the shares on the global pool, the
/// caller's thread taking one. Only the crypto step belongs here (`Device.seal` and
/// `Device.open`, which take no lock); routing, counters and the replay check stay with the
/// device's owner, before and after. `run` is the pipeline's form (bench-dataplane): one task
/// for the device's owner, the crypto of other batches beside it, balanced by stealing.
public struct CryptoWorkers: Sendable {
    /// Threads a batch is spread over; 1 runs it on the caller's thread alone.
    public let count: Int

    public init(count: Int) {
        self.count = max(1, count)
    }

    /// Online CPUs: the default, as wireguard-go starts one encryption worker per CPU.
    public static var onlineCPUs: Int { max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    /// Runs `body(item, worker)` once for each item in `0 ..< items`, the items spread over the
    /// workers in contiguous shares; `worker` (below `count`) names the share, for per-worker
    /// scratch. Returns when every item has run. `body` must touch only what its item owns, plus
    /// its worker's scratch.
    public func forEach(_ items: Int, _ body: (_ item: Int, _ worker: Int) -> Void) {
        let shares = min(count, items)
        guard shares > 1 else {
            for item in 0..<items { body(item, 0) }
            return
        }
        withoutActuallyEscaping(body) { body in
            let shared = SharedBody(run: body)
            DispatchQueue.concurrentPerform(iterations: shares) { share in
                for item in (items * share / shares)..<(items * (share + 1) / shares) { shared.run(item, share) }
            }
        }
    }

    /// Runs `body(task, worker)` once for each task in `0 ..< tasks`, on the workers in parallel.
    /// The tasks are split into contiguous shares, as `forEach` splits items, so that a task
    /// number lands on the same worker call after call (a pipeline's chunk of a batch stays in
    /// one core's cache from seal to open); each worker runs its share from the front, then
    /// takes what is left of the others' from their back. So worker 0 starts with task 0 (a
    /// pipeline's serial step, put first), the others take over the end of its share meanwhile,
    /// and the workers finish within about one task of each other. `worker` (below `count`)
    /// names the thread, for per-worker scratch; one worker runs one task at a time. Returns
    /// when every task has run. `body` must touch only what its task owns, plus its worker's
    /// scratch.
    public func run(tasks: Int, _ body: (_ task: Int, _ worker: Int) -> Void) {
        let shares = min(count, tasks)
        guard shares > 1 else {
            for task in 0..<tasks { body(task, 0) }
            return
        }
        withUnsafeTemporaryAllocation(of: ShareBounds.self, capacity: shares) { bounds in
            for share in 0..<shares {
                (bounds.baseAddress! + share).initialize(
                    to: ShareBounds(front: tasks * share / shares, back: tasks * (share + 1) / shares))
            }
            defer { _ = bounds.baseAddress!.deinitialize(count: shares) }
            let shared = SharedBounds(start: bounds.baseAddress!)
            withoutActuallyEscaping(body) { body in
                let run = SharedBody(run: body)
                DispatchQueue.concurrentPerform(iterations: shares) { share in
                    while let task = shared.start[share].takeFront() { run.run(task, share) }
                    for offset in 1..<shares {
                        let other = (share + offset) % shares
                        while let task = shared.start[other].takeBack() { run.run(task, share) }
                    }
                }
            }
        }
    }
}

/// The tasks of one share not yet taken, `front ..< back`, in one word so that its owner (from
/// the front) and the others (from the back) never take the same task. 64 bytes each, so that
/// two shares' words are never in one cache line and one worker taking its next task does not
/// disturb another's.
private struct ShareBounds: ~Copyable {
    private let range: Atomic<UInt64>
    private let padding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0)

    init(front: Int, back: Int) {
        range = Atomic(UInt64(front) << 32 | UInt64(back))
    }

    /// The share's next task from the front, or nil when none is left.
    func takeFront() -> Int? {
        take { front, back in (front, front + 1, back) }
    }

    /// The share's last task not yet taken, or nil when none is left.
    func takeBack() -> Int? {
        take { front, back in (back - 1, front, back - 1) }
    }

    /// Takes the task `pick(front, back)` names, leaving the bounds it gives, unless the share is
    /// empty; retried when another worker took one meanwhile.
    private func take(_ pick: (UInt64, UInt64) -> (task: UInt64, front: UInt64, back: UInt64)) -> Int? {
        var current = range.load(ordering: .relaxed)
        while true {
            let (front, back) = (current >> 32, current & 0xffff_ffff)
            guard front < back else { return nil }
            let next = pick(front, back)
            let (exchanged, original) = range.compareExchange(
                expected: current, desired: next.front << 32 | next.back, ordering: .relaxed)
            if exchanged { return Int(next.task) }
            current = original
        }
    }
}

/// `run`'s share bounds, handed to the share threads for the duration of the call.
// @unchecked Sendable: the bounds are atomics, and they outlive concurrentPerform, which joins
// every share thread before `run` deinitializes them.
private struct SharedBounds: @unchecked Sendable {
    let start: UnsafeMutablePointer<ShareBounds>
}

/// `forEach`'s and `run`'s body, handed to the share threads for the duration of the call.
// @unchecked Sendable: each item or task runs once, on one share (the callers' contract: it touches
// only what it owns and its worker's scratch), and concurrentPerform joins them all before returning.
private struct SharedBody: @unchecked Sendable {
    let run: (Int, Int) -> Void
}
