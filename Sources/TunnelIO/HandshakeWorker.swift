import Dispatch
import Synchronization
import TunnelCore
import TunnelCrypto

/// Handshake messages (initiations, responses, cookie replies), taken off the inbound data path:
/// the inbound queue copies each into a bounded ring (`enqueue`, a copy under the ring's own lock)
/// and goes on with transport data; this worker's serial `queue` runs the handshakes.
///
/// The worker does its X25519, BLAKE2s and cookie sealing outside the engine lock, taking it only
/// for the look-ups and commits of `HandshakeSteps.swift` (microseconds: no key agreement, no
/// system call), and sends what those produce (responses, cookie replies, keepalives, packets
/// that waited) after releasing it, with one sendmmsg per batch. "Under load", when the gate asks
/// for cookies, is the ring's depth as wireguard-go measures it: at least 1/8 of `capacity`
/// waiting, and for a second after. A full ring drops the message (`handshakeQueueFull`).
/// The initiations the engine decides to send (`Device.defersInitiations`) are made here too.
///
/// Ownership, which is why the `@unchecked Sendable` is sound: `ring` is shared and only touched
/// under `ringLock`; everything else mutable (`gate`, `taken*`, `outgoing`, `large`, `initiations`,
/// `drops`, `stopped`) belongs to `queue`. The tunnel holds `queue` (`sync`) while it swaps the socket and
/// at teardown, as it does the data queues.
final class HandshakeWorker: @unchecked Sendable {
    /// Messages the ring holds: the kernel's MAX_QUEUED_INCOMING_HANDSHAKES (wireguard-go's is
    /// 1,024). 600 KB; with 1,024, a 50,000/s flood filled it whenever the worker lost its core for
    /// a time slice on this 2-core machine, and 2.5% of all handshakes, legitimate ones too, were
    /// dropped.
    static let capacity = 4096
    /// Messages taken from the ring per lock hold and handled before the next send.
    static let batch = 32
    /// Room per message: the largest handshake message (an initiation).
    static let slotSize = InitiationMessage.size

    let queue: DispatchQueue
    private unowned let tunnel: Tunnel
    /// Guards `ring`, shared by the inbound queue (push) and `queue` (pop); held for a copy only.
    private let ringLock = Mutex<Void>(())
    /// Touched only under `ringLock` (unchecked: the lock already serialises every access).
    @exclusivity(unchecked) private var ring = HandshakeRing(
        capacity: HandshakeWorker.capacity, slotSize: HandshakeWorker.slotSize)
    /// Raised by `enqueue` once per inbound batch that queued something; merges while the worker runs.
    private let wake: DispatchSourceUserDataAdd

    // Owned by `queue`.
    private var gate: HandshakeGate?
    /// Messages taken from the ring, handled one by one.
    private let taken: UnsafeMutableRawBufferPointer
    private var takenSources: [Endpoint]
    private var takenLengths: [Int]
    /// Datagrams to send once the engine lock is released: responses, cookie replies, keepalives
    /// (small, in `outgoing`) and packets that waited for the handshake (in `large`, rare).
    private var outgoing: SendBatch
    private var large: [([UInt8], Endpoint)] = []
    /// Initiations the device decided to send (`Device.defersInitiations`), taken each round.
    private var initiations: [InitiationRequest] = []
    /// Drops decided here and cookie replies made here, counted into the device once per batch.
    private var drops = DropCounters()
    private var cookieReplies: UInt64 = 0
    /// Where a response or a cookie reply is made before it is queued.
    private let scratch: UnsafeMutableRawBufferPointer
    private var stopped = false

    /// Datagrams up to this size go into `outgoing`; larger ones (staged packets) into `large`.
    static let smallDatagram = 256
    /// Free slots `outgoing` keeps before a commit (it is flushed first otherwise). What a commit
    /// sends beyond them goes to `large`: a commit never sends (a system call) under the lock.
    static let commitRoom = 8

    init(tunnel: Tunnel, name: String) {
        self.tunnel = tunnel
        queue = DispatchQueue(label: "tunctl.\(name).handshake")
        wake = DispatchSource.makeUserDataAddSource(queue: queue)
        taken = .allocate(byteCount: HandshakeWorker.batch * HandshakeWorker.slotSize, alignment: 16)
        takenSources = Array(repeating: Endpoint(address: .v4(0), port: 0), count: HandshakeWorker.batch)
        takenLengths = Array(repeating: 0, count: HandshakeWorker.batch)
        outgoing = SendBatch(
            capacity: 2 * HandshakeWorker.batch + HandshakeWorker.commitRoom, bufferSize: HandshakeWorker.smallDatagram)
        scratch = .allocate(byteCount: InitiationMessage.size, alignment: 16)
        wake.setEventHandler { [unowned self] in self.drain() }
        wake.resume()
    }

    deinit {
        wake.cancel()
        taken.deallocate()
        scratch.deallocate()
    }

    /// Whether `datagram` is for this worker: an initiation, response or cookie reply of its exact
    /// length (anything else of those types the device drops as malformed).
    static func takes(_ datagram: UnsafeRawBufferPointer) -> Bool {
        guard let first = datagram.first, first >= 1, first <= 3 else { return false }
        switch classify(datagram) {
        case .initiation, .response, .cookieReply: return true
        default: return false
        }
    }

    /// On the inbound queue: copies `datagram` into the ring, or counts it dropped when the ring
    /// is full. Call `signal` after the batch.
    func enqueue(_ datagram: UnsafeRawBufferPointer, from source: Endpoint) {
        withRing { $0.push(datagram, from: source) }
    }

    /// Runs `body` on `ring` under `ringLock`, the lock made visible to the thread sanitizer as
    /// the engine lock is (SanitizerAnnotations).
    private func withRing<R>(_ body: (inout HandshakeRing) -> R) -> R {
        ringLock.withLock { _ in
            let token = UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque())
            SanitizerAnnotations.acquired(token)
            defer { SanitizerAnnotations.releasing(token) }
            return body(&ring)
        }
    }

    /// On the inbound queue, after a batch that enqueued something: wakes the worker.
    func signal() {
        wake.add(data: 1)
    }

    /// At teardown, with `queue` held or on it: nothing more is handled or sent.
    func stop() {
        queue.sync { stopped = true }
        wake.cancel()
    }

    // MARK: - On `queue`

    private func drain() {
        // Bounded: at most the ring's capacity per wake-up in batches, then yield to Dispatch
        // (a flood keeps `wake` raised, so the worker comes straight back).
        for _ in 0..<(HandshakeWorker.capacity / HandshakeWorker.batch) where !stopped {
            let (count, depth, refused) = withRing { ring in
                ring.pop(into: taken, sources: &takenSources, lengths: &takenLengths, max: HandshakeWorker.batch)
            }
            if refused > 0 { drops.count(.handshakeQueueFull, times: refused) }
            // One hold: our identity for the batch, and the initiations the device wants sent.
            let local = tunnel.withEngine { device -> LocalIdentity? in
                device.takePendingInitiations(into: &initiations)
                return device.local
            }
            sendInitiations()
            if count == 0 {
                finishBatch()
                return
            }
            handleBatch(count: count, depthAfter: depth, local: local)
            finishBatch()
        }
        // More may be waiting: come back after the other work Dispatch has for this queue.
        if !stopped { wake.add(data: 1) }
    }

    /// Makes each initiation taken (two X25519) outside the engine lock, commits it under the
    /// lock, and queues it to be sent.
    private func sendInitiations() {
        guard !initiations.isEmpty else { return }
        let message = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<InitiationMessage.size])
        for request in initiations where !stopped {
            let now = currentInstant()
            guard let prepared = Device.prepareInitiation(request, now: now, into: message) else { continue }
            if let endpoint = tunnel.withEngine({ $0.commitInitiationSent(prepared, now: now) }) {
                queue(UnsafeRawBufferPointer(message), to: endpoint)
            }
        }
        initiations.removeAll(keepingCapacity: true)
    }

    private func handleBatch(count: Int, depthAfter: Int, local: LocalIdentity?) {
        guard let local else {
            drops.count(.noPrivateKey, times: UInt64(count))
            return
        }
        if gate?.publicKey != local.publicKey { gate = HandshakeGate(local: local) }
        for index in 0..<count where !stopped {
            let message = UnsafeRawBufferPointer(
                rebasing: taken[
                    (index * HandshakeWorker.slotSize)..<(index * HandshakeWorker.slotSize + takenLengths[index])])
            handle(message, from: takenSources[index], local: local, depth: depthAfter + count - 1 - index)
        }
    }

    private func handle(_ message: UnsafeRawBufferPointer, from source: Endpoint, local: LocalIdentity, depth: Int) {
        let now = currentInstant()
        guard let type = classify(message) else { return }
        if type == .cookieReply {
            _ = tunnel.withEngine { $0.consumeCookieReply(message, now: now) }
            return
        }
        let reply = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<CookieReplyMessage.size])
        let verdict = gate!.check(
            message, from: source, queueDepth: depth, capacity: HandshakeWorker.capacity, now: now.monotonic,
            cookieReply: reply)
        if case .drop(let reason, let cookieReply) = verdict {
            drops.count(reason)
            if cookieReply {
                queue(UnsafeRawBufferPointer(reply), to: source)
                cookieReplies += 1
            }
            return
        }
        if type == .initiation {
            guard let identity = Noise.decryptInitiationIdentity(local: local, message: message) else {
                drops.count(.handshakeFailed)
                return
            }
            guard case .success(let initiator) = tunnel.withEngine({ $0.lookUpInitiator(identity, now: now) }) else {
                return
            }
            let response = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<ResponseMessage.size])
            guard let prepared = Device.prepareResponse(to: identity, initiator, now: now, into: response) else {
                tunnel.withEngine { $0.countDrop(.handshakeFailed, for: initiator.peer) }
                return
            }
            makeCommitRoom()
            var sink = WorkerSink(worker: self)
            _ = tunnel.withEngine {
                $0.commitInitiation(
                    prepared, response: UnsafeRawBufferPointer(response), from: source, now: now, sink: &sink)
            }
        } else {
            guard let lookup = tunnel.withEngine({ $0.lookUpResponse(message) }) else { return }
            guard let keys = Device.consumeResponse(message, lookup) else {
                tunnel.withEngine { $0.countDrop(.handshakeFailed, for: lookup.peer) }
                return
            }
            makeCommitRoom()
            var sink = WorkerSink(worker: self)
            _ = tunnel.withEngine {
                $0.commitResponse(lookup, keys: keys, messageLength: message.count, from: source, now: now, sink: &sink)
            }
        }
    }

    /// Queues a datagram to send after the engine lock is released (copied: the bytes are valid
    /// only during the call). Called by `WorkerSink` inside commits.
    fileprivate func queue(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        if datagram.count <= HandshakeWorker.smallDatagram, outgoing.append(datagram, to: endpoint) { return }
        large.append((Array(datagram), endpoint))
    }

    /// Before a commit: sends what is queued if the batch is nearly full, so the commit's own
    /// datagrams never wait on a send under the lock.
    private func makeCommitRoom() {
        if outgoing.capacity - outgoing.count < HandshakeWorker.commitRoom { flushSends() }
    }

    /// After a batch: the drops into the device (one lock hold), then the sends.
    private func finishBatch() {
        if drops.total > 0 || cookieReplies > 0 {
            let counted = drops
            let replies = cookieReplies
            drops = DropCounters()
            cookieReplies = 0
            tunnel.withEngine { $0.countDrops(counted, cookieRepliesSent: replies) }
        }
        flushSends()
    }

    private func flushSends() {
        guard !stopped else {
            outgoing.removeAll()
            large.removeAll()
            return
        }
        let socket = tunnel.socket
        if !outgoing.isEmpty {
            // What the socket will not take now is dropped, as a congested link would.
            _ = try? socket.send(&outgoing)
        }
        outgoing.removeAll()
        for (bytes, endpoint) in large {
            _ = bytes.withUnsafeBytes { try? socket.send($0, to: endpoint) }
        }
        large.removeAll(keepingCapacity: true)
    }
}

/// Collects what a commit sends, for the worker to send once the engine lock is released.
private struct WorkerSink: DatagramSink {
    unowned let worker: HandshakeWorker

    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        worker.queue(datagram, to: endpoint)
    }
}

/// The bounded queue between the inbound queue and the worker: `capacity` fixed slots of
/// `slotSize` bytes, their sources and lengths, allocated once; a push or pop copies bytes and
/// never allocates. Touched only under `HandshakeWorker.ringLock`.
struct HandshakeRing: ~Copyable {
    let capacity: Int
    let slotSize: Int
    private let storage: UnsafeMutableRawBufferPointer
    private var sources: [Endpoint]
    private var lengths: [Int]
    private var head = 0
    private(set) var count = 0
    /// Messages refused because the ring was full, since the last `pop`.
    private var refused: UInt64 = 0

    init(capacity: Int, slotSize: Int) {
        self.capacity = capacity
        self.slotSize = slotSize
        storage = .allocate(byteCount: capacity * slotSize, alignment: 16)
        sources = Array(repeating: Endpoint(address: .v4(0), port: 0), count: capacity)
        lengths = Array(repeating: 0, count: capacity)
    }

    deinit { storage.deallocate() }

    mutating func push(_ datagram: UnsafeRawBufferPointer, from source: Endpoint) {
        guard count < capacity, datagram.count <= slotSize else {
            refused += 1
            return
        }
        let slot = (head + count) % capacity
        UnsafeMutableRawBufferPointer(rebasing: storage[(slot * slotSize)..<(slot * slotSize + datagram.count)])
            .copyMemory(from: datagram)
        sources[slot] = source
        lengths[slot] = datagram.count
        count += 1
    }

    /// Moves up to `max` messages into `out` (slot `i` at `i * slotSize`), their sources and
    /// lengths into the arrays; returns how many, how many remain, and the refusals since last time.
    mutating func pop(
        into out: UnsafeMutableRawBufferPointer, sources outSources: inout [Endpoint], lengths outLengths: inout [Int],
        max: Int
    ) -> (count: Int, remaining: Int, refused: UInt64) {
        let taken = min(max, count)
        for index in 0..<taken {
            let slot = (head + index) % capacity
            UnsafeMutableRawBufferPointer(rebasing: out[(index * slotSize)..<(index * slotSize + lengths[slot])])
                .copyMemory(
                    from: UnsafeRawBufferPointer(
                        rebasing: storage[(slot * slotSize)..<(slot * slotSize + lengths[slot])]))
            outSources[index] = sources[slot]
            outLengths[index] = lengths[slot]
        }
        head = (head + taken) % capacity
        count -= taken
        let refusals = refused
        refused = 0
        return (taken, count, refusals)
    }
}
