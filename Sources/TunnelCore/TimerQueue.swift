/// The peers' timer deadlines in a binary min-heap, so that `Device.tick` visits only the peers
/// with a deadline that has passed instead of scanning every peer (issue 16: 10,000 quiet peers
/// cost 1% of a core at a 100 ms scan).
///
/// Each peer has at most one live entry, at its `scheduledDeadline`; a peer's timer field set to
/// an earlier instant pushes a new entry and bumps the peer's `timerGeneration`, so the older
/// entry goes stale and is dropped when it surfaces (lazy deletion). A field moved later or
/// cleared leaves the entry alone: the peer is visited at the old instant, finds nothing due and
/// is pushed again at its real earliest deadline. Owned by the device's owner, as `Device` is.
final class TimerQueue {
    private struct Entry {
        let deadline: UInt64
        let generation: UInt32
        let peer: Peer
    }

    // Read by `earliest` after every engine call of the data path: unchecked as on `Peer`.
    @exclusivity(unchecked) private var heap: [Entry] = []

    /// Entries in the heap, live and stale (for tests and the compaction bound).
    var count: Int { heap.count }

    /// The earliest entry's deadline: a lower bound of every armed timer (a stale entry may make
    /// it early, never late). Nil when nothing is armed. O(1), no clean-up.
    var earliest: UInt64? { heap.first?.deadline }

    /// `peer` has a timer field armed at `deadline`: push it unless it is already due no later.
    @inline(__always)
    func armed(_ peer: Peer, at deadline: UInt64) {
        if let scheduled = peer.scheduledDeadline, scheduled <= deadline { return }
        push(peer, at: deadline)
    }

    /// After a visit: pushes `peer` at its earliest armed field, if any is armed.
    func reschedule(_ peer: Peer) {
        peer.scheduledDeadline = nil
        if let deadline = peer.earliestTimer { push(peer, at: deadline) }
    }

    /// Takes the peer out: its entry goes stale, and nothing it arms later is queued.
    func detach(_ peer: Peer) {
        peer.timerGeneration &+= 1
        peer.scheduledDeadline = nil
        peer.timerQueue = nil
    }

    /// Appends to `due` every peer whose live entry is at or before `now`, removing those entries
    /// and any stale ones met on the way. Each peer appears once; its `scheduledDeadline` is nil.
    func popDue(at now: UInt64, into due: inout [Peer]) {
        while let top = heap.first, top.deadline <= now {
            removeTop()
            guard top.generation == top.peer.timerGeneration, top.peer.scheduledDeadline != nil else { continue }
            top.peer.scheduledDeadline = nil
            due.append(top.peer)
        }
    }

    /// Drops every stale entry when they outnumber the live ones by far (many timers moved
    /// earlier, or many peers removed, before their entries surfaced): bounds the heap's memory.
    func compact(livePeers: Int) {
        guard heap.count > 2 * livePeers + 1024 else { return }
        heap.removeAll { $0.generation != $0.peer.timerGeneration || $0.peer.scheduledDeadline == nil }
        var index = heap.count / 2
        while index > 0 {
            index -= 1
            siftDown(from: index)
        }
    }

    func removeAll() {
        for entry in heap { entry.peer.scheduledDeadline = nil }
        heap.removeAll()
    }

    private func push(_ peer: Peer, at deadline: UInt64) {
        peer.timerGeneration &+= 1
        peer.scheduledDeadline = deadline
        heap.append(Entry(deadline: deadline, generation: peer.timerGeneration, peer: peer))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].deadline < heap[parent].deadline else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private func removeTop() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        siftDown(from: 0)
    }

    private func siftDown(from start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { return }
            var smallest = left
            if left + 1 < heap.count, heap[left + 1].deadline < heap[left].deadline { smallest = left + 1 }
            guard heap[smallest].deadline < heap[parent].deadline else { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
