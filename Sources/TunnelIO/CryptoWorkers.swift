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
/// device's owner, before and after.
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

    /// Runs `body(task, worker)` once for each task in `0 ..< tasks`, handed out one at a time, in
    /// order, to whichever worker is free: a task starts only after every lower-numbered one has
    /// started, so a long task put first (a pipeline's serial step) overlaps the short ones after
    /// it, and the workers finish within one short task of each other. `worker` (below `count`)
    /// names the thread's share, for per-worker scratch; one worker runs one task at a time.
    /// Returns when every task has run. `body` must touch only what its task owns, plus its
    /// worker's scratch.
    public func run(tasks: Int, _ body: (_ task: Int, _ worker: Int) -> Void) {
        let shares = min(count, tasks)
        guard shares > 1 else {
            for task in 0..<tasks { body(task, 0) }
            return
        }
        let next = Atomic<Int>(0)
        withoutActuallyEscaping(body) { body in
            let shared = SharedBody(run: body)
            DispatchQueue.concurrentPerform(iterations: shares) { share in
                while true {
                    let task = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard task < tasks else { return }
                    shared.run(task, share)
                }
            }
        }
    }
}

/// `forEach`'s and `run`'s body, handed to the share threads for the duration of the call.
// @unchecked Sendable: each item or task runs once, on one share (the callers' contract: it touches
// only what it owns and its worker's scratch), and concurrentPerform joins them all before returning.
private struct SharedBody: @unchecked Sendable {
    let run: (Int, Int) -> Void
}
