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
/// device's owner, before and after. `run` and `runRounds` are the pipeline's form
/// (bench-dataplane): one task for the device's owner, the crypto of other batches beside it,
/// balanced by stealing, round after round without the workers sleeping in between.
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
        var planned = false
        runRounds(
            plan: {
                defer { planned = true }
                return planned ? nil : tasks
            }, body)
    }

    /// `run` round after round in one fork-join, so that no worker sleeps between rounds: a
    /// worker that has run its tasks waits for the next round spinning (a round's tasks end
    /// within about one task of each other), where a Dispatch thread parked after each `run`
    /// and, on a busy machine, lost its core to any other thread until woken. `plan` is called
    /// before each round, on one worker, once every task of the round before has finished, and
    /// returns the round's task count, or nil to stop; `body` runs the tasks as in `run`. No
    /// worker waits for another to arrive, so more workers than cores cannot deadlock (Dispatch
    /// runs at most one share per core at once; the rest start at the end and find it stopped).
    public func runRounds(plan: () -> Int?, _ body: (_ task: Int, _ worker: Int) -> Void) {
        guard count > 1 else {
            while let tasks = plan() {
                for task in 0..<tasks { body(task, 0) }
            }
            return
        }
        let shares = count
        withUnsafeTemporaryAllocation(of: ShareBounds.self, capacity: shares) { bounds in
            for share in 0..<shares { (bounds.baseAddress! + share).initialize(to: ShareBounds(front: 0, back: 0)) }
            defer { _ = bounds.baseAddress!.deinitialize(count: shares) }
            let rounds = Rounds(bounds: bounds.baseAddress!, shares: shares)
            withoutActuallyEscaping(plan) { plan in
                withoutActuallyEscaping(body) { body in
                    let run = SharedBody(run: body)
                    let next = SharedPlan(plan: plan)
                    // The caller's thread plans the first round before any worker looks.
                    rounds.start(next.plan())
                    DispatchQueue.concurrentPerform(iterations: shares) { share in
                        var seen = 0
                        while let round = rounds.wait(after: seen) {
                            seen = round
                            while let task = rounds.take(for: share) {
                                run.run(task, share)
                                if rounds.finish() { rounds.start(next.plan()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `runRounds`' shared state: the round number (0 until the first starts, -1 once stopped), the
/// shares' bounds and the count of the round's tasks not yet finished, all atomics. A round is
/// started by publishing its number after its bounds and count (release); a worker reads the
/// number (acquire) before it takes a task, and a worker that takes a task of a newer round than
/// it waited for has read its bounds (acquire) after they were set, so it sees the round's plan.
private final class Rounds: @unchecked Sendable {
    // @unchecked Sendable: every field is an atomic or immutable, and `bounds` outlives the
    // workers (runRounds deinitializes it after concurrentPerform has joined them).
    let bounds: UnsafeMutablePointer<ShareBounds>
    let shares: Int
    private let round = Atomic<Int>(0)
    private let unfinished = Atomic<Int>(0)

    init(bounds: UnsafeMutablePointer<ShareBounds>, shares: Int) {
        self.bounds = bounds
        self.shares = shares
    }

    /// Starts a round of `tasks` tasks, or stops when nil. Called when no task is running.
    func start(_ tasks: Int?) {
        guard let tasks, tasks > 0 else {
            round.store(-1, ordering: .releasing)
            return
        }
        unfinished.store(tasks, ordering: .relaxed)
        for share in 0..<shares {
            bounds[share].reset(front: tasks * share / shares, back: tasks * (share + 1) / shares)
        }
        round.wrappingAdd(1, ordering: .releasing)
    }

    /// The round after `seen` once it has started, or nil once stopped. Spins, yielding the core
    /// now and then, as the wait is about one task long.
    func wait(after seen: Int) -> Int? {
        var spins = 0
        while true {
            let current = round.load(ordering: .acquiring)
            if current < 0 { return nil }
            if current > seen { return current }
            spins += 1
            if spins & 63 == 0 { sched_yield() }
        }
    }

    /// A task of the current round for `share`: its own from the front, then the others' from
    /// their back; nil when none is left.
    func take(for share: Int) -> Int? {
        if let task = bounds[share].takeFront() { return task }
        for offset in 1..<shares {
            if let task = bounds[(share + offset) % shares].takeBack() { return task }
        }
        return nil
    }

    /// Counts a task as finished; true for the round's last, whose worker then starts the next.
    func finish() -> Bool {
        unfinished.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0
    }
}

/// `runRounds`' plan, handed to the share threads for the duration of the call.
// @unchecked Sendable: it is called only when no task runs (by the worker that finished a round's
// last task, after the acquire-release count that orders it after every other task).
private struct SharedPlan: @unchecked Sendable {
    let plan: () -> Int?
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

    /// Sets the share to `front ..< back` between rounds (every task taken): a worker that then
    /// takes one of its tasks sees whatever was written before (release, acquire).
    func reset(front: Int, back: Int) {
        range.store(UInt64(front) << 32 | UInt64(back), ordering: .releasing)
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
        var current = range.load(ordering: .acquiring)
        while true {
            let (front, back) = (current >> 32, current & 0xffff_ffff)
            guard front < back else { return nil }
            let next = pick(front, back)
            let (exchanged, original) = range.compareExchange(
                expected: current, desired: next.front << 32 | next.back, ordering: .acquiringAndReleasing)
            if exchanged { return Int(next.task) }
            current = original
        }
    }
}

/// `forEach`'s and `runRounds`' body, handed to the share threads for the duration of the call.
// @unchecked Sendable: each item or task runs once, on one share (the callers' contract: it touches
// only what it owns and its worker's scratch), and concurrentPerform joins them all before returning.
private struct SharedBody: @unchecked Sendable {
    let run: (Int, Int) -> Void
}
