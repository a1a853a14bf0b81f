import Dispatch
import Glibc
import Logging
import Synchronization
import TunnelCore
import TunnelCrypto

/// The core's clock, read from the kernel: CLOCK_MONOTONIC for timers, CLOCK_REALTIME for
/// handshake timestamps. Both are vDSO reads, taken once per batch, not per packet.
public func currentInstant() -> Instant {
    var monotonic = timespec()
    var realtime = timespec()
    clock_gettime(CLOCK_MONOTONIC, &monotonic)
    clock_gettime(CLOCK_REALTIME, &realtime)
    return Instant(
        monotonic: UInt64(monotonic.tv_sec) * Protocol.nanosecondsPerSecond + UInt64(monotonic.tv_nsec),
        unixNanoseconds: UInt64(realtime.tv_sec) * Protocol.nanosecondsPerSecond + UInt64(realtime.tv_nsec))
}

/// Sends the datagrams the core originates (handshakes, keepalives, flushed packets) at once.
struct SocketSink: DatagramSink {
    let socket: UDPSocket
    let logger: Logger

    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        do {
            // A full socket buffer drops the datagram, as a congested link would.
            _ = try socket.send(datagram, to: endpoint)
        } catch {
            logger.debug("send to \(endpoint) failed: \(error)")
        }
    }
}

/// A running interface: the TUN device, the UDP socket, the protocol engine and the control
/// socket, driven by Dispatch sources on three serial queues so both directions use both cores.
///
/// Threading, which is why the `@unchecked Sendable` below is sound:
/// - `outboundQueue` owns `sendBatch` and the TUN read source (TUN → seal → UDP);
/// - `inboundQueue` owns `receiveBatch` and the UDP read source (UDP → open → TUN), and hands
///   handshake messages to `handshakeWorker`, whose own queue runs them (HandshakeWorker.swift);
/// - `queue` (control) owns everything else: timer, signals, control socket, link events, shutdown.
/// - `link` owns the link's addresses and routes on its own queue, off the timers' path.
/// - `device` is shared by all three and touched only inside `withEngine` (one lock; system
///   calls stay outside it). Encryption and decryption run outside the lock through the static
///   `Device.seal`/`Device.open`, which touch no device state.
/// - `socket` is replaced only by `rebind`, while both data queues are held (`sync`).
public final class Tunnel: @unchecked Sendable {
    public let name: String
    let queue: DispatchQueue
    let outboundQueue: DispatchQueue
    let inboundQueue: DispatchQueue
    let logger: Logger
    private let device: Device
    private let engineLock = Mutex<Void>(())
    let tun: TunDevice
    private(set) var socket: UDPSocket
    /// Addresses this process gave the link (they go with the link at shutdown).
    private(set) var addresses: [IPPrefix] = []
    /// The link's MTU, addresses, routes (rtnetlink, on its own queue).
    let link: LinkManager
    /// Kernel notifications about the link, delivered on `queue` (set by `run`).
    private var linkMonitor: LinkMonitor?
    /// The config file to re-read on SIGHUP (nil when started empty for wg-quick).
    let configPath: String?
    /// The socket's fwmark (SO_MARK), 0 for none: `FwMark`, UAPI `fwmark=`, or a full tunnel's
    /// table. Owned by `queue` (after `init`).
    private var fwmark: UInt32 = 0
    /// `Table` under `tunctl up` (nil under wg-quick, where routes are wg-quick's).
    private let routing: RoutingTable?
    /// `Table = auto`: the table (and fwmark) a 0.0.0.0/0 or ::/0 peer's policy routing uses.
    private let fullTunnelTable: UInt32?
    /// wg-quick's choice when no `FwMark` is set.
    static let defaultFullTunnelTable: UInt32 = 51820
    private var control: ControlServer?

    /// Runs the handshakes the inbound queue hands it and makes the initiations the engine wants,
    /// off the data path (HandshakeWorker.swift). Set on `queue` before any source starts, never
    /// changed after: the data queues read it.
    private var handshakeWorker: HandshakeWorker?
    private var tunSource: DispatchSourceRead?
    private var udpSource: DispatchSourceRead?
    /// One-shot, re-armed for the device's next timer deadline. Set and re-armed under
    /// `engineLock` (the data path may re-arm it from its own queue); cancelled on `queue`.
    private var timer: DispatchSourceTimer?
    /// The deadline (monotonic ns) `timer` is armed for, under `engineLock`: `withEngine`
    /// re-arms only when the device reports an earlier one, so a packet costs one comparison
    /// (unchecked: the lock already serialises every access).
    @exclusivity(unchecked) private var timerArmedFor: UInt64 = 0
    /// Timer wake-ups: at least every second (the rate limiter's sweep), at most every 10 ms.
    static let timerMaximumSleep: UInt64 = 1_000_000_000
    static let timerMinimumSleep: UInt64 = 10_000_000
    private var signalSources: [DispatchSourceSignal] = []
    private var stopping = false
    private var onStop: (@Sendable (Int32) -> Void)?
    /// Set by the first request to stop (on `queue`): later ones (a second signal, the link
    /// going while PreDown runs) are ignored.
    private var shutdownStarted = false
    /// What may block around a shutdown (hooks, resolvconf, SaveConfig), run on `stepsQueue`;
    /// nil: tear down at once. Owned by `queue`.
    private var shutdownSteps: ShutdownSteps?
    /// Told (on `queue`) of each config a reload applied, so `tunctl up` keeps its hooks current.
    private var reloadObserver: (@Sendable (LoadedConfig) -> Void)?
    /// The [Interface] as last applied (start-up or reload), owned by `queue`: a reload changes
    /// what the file changed since, so `ip link set mtu` or `wg set` at run time stays unless the
    /// file changes the same setting.
    private var appliedInterface: AppliedInterface?

    // `@exclusivity(unchecked)` on the three per-packet buffers below: each belongs to one serial
    // queue (see above), so the runtime's dynamic exclusivity check, a thread-local lookup on
    // every access, guards nothing here (perf: about 0.4% of the machine's samples).
    @exclusivity(unchecked) private var receiveBatch: ReceiveBatch
    /// Inbound: where the open decrypts a datagram before its plaintext goes back in place.
    private let openScratch: UnsafeMutableRawBufferPointer
    @exclusivity(unchecked) private var sendBatch: SendBatch
    /// The MTU `sendBatch`'s slots are sized for (`Tunnel.slotMTU`). Owned by `outboundQueue`.
    private var sendBatchMTU: Int
    /// The TUN's MTU as last learned (`linkMTUDidChange`, from any queue); `outboundQueue` re-sizes
    /// its slots to it between bursts (`adoptLinkMTU`): a relaxed load per burst, none per packet.
    private let linkMTU: Atomic<Int>
    /// Inbound: hands decrypted packets to the TUN, coalescing TCP when it has a virtio header.
    @exclusivity(unchecked) private var writer: TunWriter
    /// Outbound, with a virtio header only: one TUN read (header + up to 64 KiB), segmented into
    /// send slots from here. Owned by `outboundQueue`.
    private let tunRecord: UnsafeMutableRawBufferPointer
    /// Outbound: a synthetic "packet too big" for the TUN (virtio header room included), built by
    /// `tellTooBig`. Owned by `outboundQueue`.
    private let tooBigRecord = UnsafeMutableRawBufferPointer.allocate(
        byteCount: max(VirtioNetHeader.size, TunnelVirtioHeader.size) + ICMPTooBig.maximumLength, alignment: 16)
    let offload: OffloadSettings
    /// The TUN's virtio-net header size: `TunnelVirtioHeader.size` when the kernel took UDP tunnel
    /// GSO (VXLAN super-packets), else `VirtioNetHeader.size`. Fixed at start-up.
    let tunHeaderSize: Int
    /// Which offload path runs, for `show --json`.
    let offloadReport: TunOffloadReport
    /// Reads per wake-up before yielding to the other sources (fairness; bounded work per event).
    static let burst = 64
    /// TUN reads per wake-up when each may be a 64 KiB super-packet.
    static let recordBurst = 16
    /// How long a data handler that has drained its descriptor parks on it (in `poll`, asleep)
    /// before returning to its Dispatch source, and how many such waits it makes per wake-up.
    /// A thread woken by `poll` itself skips two hand-offs (Dispatch's epoll thread, then a worker
    /// woken by futex), each a cross-core wake-up: under load that was about 8% of the tunnel's
    /// CPU, and on a quiet link it is most of the latency a packet sees in tunctl, paid at every
    /// one of the four crossings of a round trip. Parking costs no CPU and never delays a packet
    /// (everything read is sent first); `wakeup` ends it early when the control queue needs the
    /// data queues, so a parked handler holds up `shutdown` or `rebind` by no more than a poll.
    static let parkMilliseconds: Int32 = 1000
    static let parkRounds = 64
    /// Raised by the control queue before it waits for the data queues; see `parkMilliseconds`.
    private let wakeup: Wakeup

    /// Opens the TUN, binds the socket, configures the link and loads `config` into the engine.
    /// Undoes what it did if a step fails. Call `run` next.
    public init(
        name: String, config: TunnelConfig?, configPath: String?, logger: Logger
    ) throws {
        self.name = name
        self.logger = logger
        self.configPath = configPath
        // UAPI `endpoint=[fe80::1%eth0]:51820` names an interface.
        Endpoint.installInterfaceNames()
        // No `Table` line is wg-quick's `auto`.
        routing = config.map { $0.interface.table ?? .auto }
        fullTunnelTable = routing == .auto ? (config?.interface.fwMark ?? Tunnel.defaultFullTunnelTable) : nil
        self.queue = DispatchQueue(label: "tunctl.\(name).control")
        self.outboundQueue = DispatchQueue(label: "tunctl.\(name).outbound")
        self.inboundQueue = DispatchQueue(label: "tunctl.\(name).inbound")
        wakeup = try Wakeup()
        let mtu = config?.interface.mtu ?? Protocol.defaultMTU
        device = Device(privateKey: config?.privateKey, mtu: mtu)
        // A send slot holds the largest packet the TUN hands us (its MTU, re-sized when the MTU
        // changes: `adoptLinkMTU`) plus the transport overhead; a receive slot, any datagram a
        // peer may send (its MTU may exceed ours). Receive slots have readable room around them
        // and the open a scratch, which lets it decrypt in one keystream call without copying
        // the ciphertext in.
        receiveBatch = ReceiveBatch(
            capacity: Tunnel.burst, bufferSize: ReceiveBatch.coalescingBufferSize, leadingRoom: Device.openingRoom,
            trailingRoom: Device.openingTailRoom)
        openScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Device.openingScratchSize, alignment: 16)
        sendBatchMTU = Tunnel.slotMTU(mtu)
        sendBatch = Tunnel.makeSendBatch(slotMTU: sendBatchMTU)
        linkMTU = Atomic(mtu)
        offload = OffloadSettings.fromEnvironment()
        tunRecord = UnsafeMutableRawBufferPointer.allocate(
            byteCount: offload.tun ? TunnelVirtioHeader.size + OffloadLayout.maximumIPPacket : 0, alignment: 16)

        let tun = try TunDevice.open(name: name, virtioHeader: offload.tun)
        self.tun = tun
        // TSO, USO and checksum offload: the kernel may hand us TCP and UDP super-packets, which
        // we cut up, and a kernel that knows USO (6.2 and later) takes UDP super-packets on write.
        // Without USO, TCP alone; if it refuses even that, reads still carry a (plain) virtio header.
        // First choice, where the kernel has it (6.17+): UDP tunnel GSO as well, so VXLAN inside the
        // tunnel crosses the TUN as super-packets too (TunTunnelOffload.swift).
        var udpSuperPackets = false
        var udpTunnelGSO = false
        var tunSegmentation = false
        if offload.tun {
            let tcp: TunDevice.Offloads = [.checksum, .tcpSegmentationV4, .tcpSegmentationV6, .tcpSegmentationECN]
            do {
                try tun.enableUDPTunnelOffload(tcp.union([.udpSegmentationV4, .udpSegmentationV6]))
                udpSuperPackets = true
                udpTunnelGSO = true
                tunSegmentation = true
            } catch {
                logger.info(
                    "\(name): TUN UDP tunnel offload unavailable (\(error)); tunnel datagrams come one per read")
            }
            if !udpTunnelGSO {
                do {
                    try tun.setOffloads(tcp.union([.udpSegmentationV4, .udpSegmentationV6]))
                    udpSuperPackets = true
                    tunSegmentation = true
                } catch {
                    do {
                        try tun.setOffloads(tcp)
                        tunSegmentation = true
                        logger.info("\(name): TUN UDP offload unavailable (\(error)); UDP goes one datagram per write")
                    } catch {
                        logger.info("\(name): TUN offloads unavailable (\(error)); packets go one by one")
                    }
                }
            }
        }
        tunHeaderSize = udpTunnelGSO ? TunnelVirtioHeader.size : VirtioNetHeader.size
        offloadReport = TunOffloadReport(tunSegmentation: tunSegmentation, udpTunnelGSO: udpTunnelGSO)
        // Up to one super-packet per receive slot (a batch carries at most 64 slots of 64 KiB),
        // so full-size TCP seldom passes segments through one by one; with 8 it did. A
        // super-packet costs only its list of pieces: it is written from the slots themselves.
        writer = TunWriter(
            capacity: Tunnel.burst * 48, superPackets: Tunnel.burst, virtio: offload.tun, mergesUDP: udpSuperPackets,
            headerSize: tunHeaderSize)
        do {
            fwmark = config?.interface.fwMark ?? 0
            socket = try Tunnel.openSocket(port: config?.interface.listenPort ?? 0, offload: offload, mark: fwmark)
            link = try LinkManager(interfaceName: tun.name, logger: logger)
            if case .number(let table) = routing {
                link.setRouting(table: table, fullTunnelTable: nil)
            } else {
                link.setRouting(table: Netlink.mainTable, fullTunnelTable: fullTunnelTable)
            }
            try link.configure(mtu: mtu, addresses: config?.interface.addresses ?? [])
            // The kernel's figure, not the config's, is what the TUN hands over.
            linkMTUDidChange(try tun.mtu())
            addresses = config?.interface.addresses ?? []
            appliedInterface = config.map { AppliedInterface($0.interface) }
            // Ready means routed: start-up waits for its routes.
            if let config { try apply(peers: config.peers, now: currentInstant(), waitForRoutes: true) }
        } catch {
            try? tun.close()
            throw error
        }
    }

    public var listenPort: UInt16 { socket.port }

    /// Runs `body` with exclusive use of the protocol engine. The sanitizer calls make the lock
    /// visible to the thread sanitizer (CLinuxSanitizer.h); without it they are empty.
    /// Initiations the engine decided on are made by the handshake worker, woken here once the
    /// lock is released.
    func withEngine<R>(_ body: (Device) throws -> R) rethrows -> R {
        var initiationsDue = false
        defer { if initiationsDue { handshakeWorker?.signal() } }
        return try engineLock.withLock { _ in
            let token = UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque())
            SanitizerAnnotations.acquired(token)
            defer { SanitizerAnnotations.releasing(token) }
            if socket.hasVanishedSources { forgetVanishedSources() }
            defer {
                if let due = device.timerLowerBound, due < timerArmedFor { armTimer(now: currentInstant().monotonic) }
                initiationsDue = device.announcesPendingInitiations()
            }
            return try body(device)
        }
    }

    /// Inside `withEngine`: arms the one-shot `timer` for the device's earliest deadline, within
    /// [now + 10 ms, now + 1 s].
    private func armTimer(now: UInt64) {
        guard let timer else { return }
        let due = min(device.timerLowerBound ?? UInt64.max, now + Tunnel.timerMaximumSleep)
        timerArmedFor = due
        let sleep = max(due > now ? due - now : 0, Tunnel.timerMinimumSleep)
        timer.schedule(deadline: .now() + .nanoseconds(Int(sleep)), leeway: .milliseconds(5))
    }

    /// Inside `withEngine`: the peers whose sticky source the kernel refused (the address went
    /// away) fall back to the kernel's choice until their next datagram (issue 15).
    private func forgetVanishedSources() {
        socket.takeVanishedSources { address in
            let peers = device.forgetStickySource(address)
            logger.debug(
                "\(name): source address \(address) is gone (\(socket.stickySourceResends) datagram(s) resent without it so far); \(peers) peer(s) now reply from the kernel's choice"
            )
        }
    }

    /// Starts the sources and the control socket; `onStop` runs (on the queue) with the exit status
    /// once the tunnel has shut down and cleaned up.
    public func run(controlSocketPath: String, onStop: @escaping @Sendable (Int32) -> Void) throws {
        self.onStop = onStop
        control = try ControlServer(path: controlSocketPath, queue: queue, logger: logger) {
            [unowned self] request, reply in
            self.handleControl(request, reply: reply)
        }
        let monitor = try LinkMonitor(name: tun.name, queue: queue, logger: logger) { [unowned self] event in
            self.linkEvent(event)
        }
        queue.sync {
            linkMonitor = monitor
            monitor.start()
            // After a restart the peers may still hold sessions we no longer have: a handshake
            // now, rather than when their stale session times out (Device.initiateHandshakes).
            _ = withEngine { $0.initiateHandshakes(now: currentInstant()) }
            startSources()
        }
        let publicKey = withEngine { $0.publicKey?.base64 } ?? "(none)"
        logger.info("\(name) up: listening on UDP port \(socket.port), public key \(publicKey)")
    }

    private func startSources() {
        // Before any data source: they read it. From here on initiations are made off the lock.
        handshakeWorker = HandshakeWorker(tunnel: self, name: name)
        withEngine { $0.defersInitiations = true }
        let tunSource = DispatchSource.makeReadSource(fileDescriptor: tun.fileDescriptor, queue: outboundQueue)
        tunSource.setEventHandler { [unowned self] in self.drainTun() }
        tunSource.resume()
        self.tunSource = tunSource
        startSocketSource()

        // The timers: a one-shot source fired at the device's next deadline, not a fixed scan.
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.setEventHandler { [unowned self] in
            var sink = SocketSink(socket: self.socket, logger: self.logger)
            self.withEngine { device in
                let now = currentInstant()
                device.tick(now: now, sink: &sink)
                self.armTimer(now: now.monotonic)
            }
        }
        withEngine { _ in
            self.timer = timer
            armTimer(now: currentInstant().monotonic)
        }
        timer.resume()

        for signalNumber in [SIGTERM, SIGINT, SIGHUP] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler { [unowned self] in
                if signalNumber == SIGHUP {
                    self.reload()
                } else {
                    self.logger.info("\(self.name): signal \(signalNumber), shutting down")
                    self.shutdown(status: 0, linkGone: false)
                }
            }
            source.resume()
            signalSources.append(source)
        }
    }

    private func startSocketSource() {
        let source = DispatchSource.makeReadSource(fileDescriptor: socket.fileDescriptor, queue: inboundQueue)
        source.setEventHandler { [unowned self] in self.drainSocket() }
        source.resume()
        udpSource = source
    }

    // MARK: - Data path (on `queue`)

    deinit {
        tunRecord.deallocate()
        tooBigRecord.deallocate()
        openScratch.deallocate()
    }

    /// TUN → encrypt → UDP. Reads up to `burst` packets, each straight into a send-batch slot
    /// behind room for the header, seals it there in place, and sends the batch with one sendmmsg:
    /// no copy and no allocation per packet.
    private func drainTun() {
        if tun.hasVirtioHeader { return drainTunRecords() }
        var sink = SocketSink(socket: socket, logger: logger)
        var parks = 0
        for _ in 0..<(4 * (Tunnel.parkRounds + 1)) {
            switch drainTunBurst(sink: &sink) {
            case .more: continue
            case .drained: guard park(on: tun.fileDescriptor, rounds: &parks) else { return }
            case .failed: return
            }
        }
    }

    private enum BurstOutcome { case more, drained, failed }

    /// One burst of `drainTun`: up to `burst` packets read, sealed and sent.
    private func drainTunBurst(sink: inout SocketSink) -> BurstOutcome {
        adoptLinkMTU()
        let now = currentInstant()
        var drained = false
        var failure: (any Error)?
        for _ in 0..<Tunnel.burst where !drained {
            if sendBatch.isFull { flushSendBatch() }
            _ = sendBatch.appendRouted { slot -> (length: Int, destination: Endpoint)? in
                let readArea = Tunnel.packetArea(slot)
                let length: Int
                do {
                    guard let count = try tun.read(into: readArea) else {
                        drained = true
                        return nil
                    }
                    // The TUN cuts a packet longer than the buffer short without a word; a read
                    // that fills the buffer is checked against its IP header, never sent cut.
                    if count == readArea.count, Device.isTruncated(UnsafeRawBufferPointer(readArea)) {
                        withEngine { $0.countDrop(.packetTooLarge) }
                        slotsOutgrown()
                        return nil
                    }
                    length = count
                } catch {
                    failure = error
                    drained = true
                    return nil
                }
                return seal(slot, packetLength: length, now: now, sink: &sink)
            }
        }
        flushSendBatch()
        if let failure {
            handleTunError(failure)
            return .failed
        }
        return drained ? .drained : .more
    }

    /// After draining `fd`: sleeps in `poll` until `fd` has more (true), or until
    /// `parkMilliseconds` pass, the control queue raises `wakeup` or this wake-up has parked
    /// `parkRounds` times (false: return to the Dispatch source).
    private func park(on fd: Int32, rounds: inout Int) -> Bool {
        guard rounds < Tunnel.parkRounds else { return false }
        rounds += 1
        return Syscall.waitReadable(fd, unlessReadable: wakeup.fileDescriptor, milliseconds: Tunnel.parkMilliseconds)
    }

    /// TUN → encrypt → UDP with a virtio-net header: each read is a packet or a TCP super-packet
    /// (up to 64 KiB); a super-packet is cut into segments straight into send slots, each sealed
    /// in place, so a run of equal segments to one peer leaves as one UDP GSO message.
    private func drainTunRecords() {
        var now = currentInstant()
        var sink = SocketSink(socket: socket, logger: logger)
        var parks = 0
        for round in 0..<(Tunnel.recordBurst * (Tunnel.parkRounds + 1)) {
            if round % Tunnel.recordBurst == 0 { adoptLinkMTU() }
            let recordLength: Int
            do {
                guard let count = try tun.read(into: tunRecord) else {
                    flushSendBatch()
                    guard park(on: tun.fileDescriptor, rounds: &parks) else { return }
                    adoptLinkMTU()
                    now = currentInstant()
                    continue
                }
                recordLength = count
            } catch {
                flushSendBatch()
                handleTunError(error)
                return
            }
            var record = UnsafeMutableRawBufferPointer(rebasing: tunRecord[0..<recordLength])
            do {
                if tunHeaderSize == TunnelVirtioHeader.size {
                    switch try interpretTunnelTUNRead(record) {
                    case .classic(let classic):
                        record = classic
                    case .tunnelSuperPacket(var segmenter):
                        sealSegments(&segmenter, now: now, sink: &sink)
                        continue
                    }
                }
                switch try interpretTUNRead(record) {
                case .packet(let length):
                    // The one copy on this path: a read cannot know in advance whether it will be a
                    // super-packet (segmented from here) or a single packet (moved into a slot).
                    let packet = UnsafeRawBufferPointer(
                        rebasing: record[VirtioNetHeader.size..<(VirtioNetHeader.size + length)])
                    _ = sealIntoBatch(now: now, sink: &sink) { area in
                        // Longer than a slot (the MTU rose; the slots are re-sized at the next
                        // burst): not copied, and prepareSend drops it as packetTooLarge.
                        if packet.count <= area.count { area.copyMemory(from: packet) }
                        return packet.count
                    }
                case .superPacket(var segmenter):
                    sealSegments(&segmenter, now: now, sink: &sink)
                }
            } catch {
                withEngine { $0.countDrop(.badOffloadPacket) }
            }
        }
        flushSendBatch()
    }

    /// Cuts a super-packet (TCP/UDP, or a UDP tunnel's) into segments straight into send slots,
    /// each sealed in place; a failure is counted once.
    private func sealSegments<Segmenter: PacketSegmenter>(
        _ segmenter: inout Segmenter, now: Instant, sink: inout SocketSink
    ) {
        var failure: OffloadError?
        while sealIntoBatch(
            now: now, sink: &sink,
            { area in
                do throws(OffloadError) {
                    return try segmenter.next(into: area)
                } catch {
                    failure = error
                    return nil
                }
            })
        {}
        if let failure {
            // A segment longer than a slot (as above) is too large, not malformed.
            var reason = DropReason.badOffloadPacket
            if case .destinationTooSmall = failure { reason = .packetTooLarge }
            withEngine { $0.countDrop(reason) }
        }
    }

    /// Puts one plaintext packet into the next send slot (`produce` writes it at the header room
    /// and returns its length, or nil when there is nothing more), seals it there and queues it.
    /// Returns false once `produce` has nothing more. Flushes first when the batch is full.
    private func sealIntoBatch(
        now: Instant, sink: inout SocketSink, _ produce: (UnsafeMutableRawBufferPointer) -> Int?
    ) -> Bool {
        if sendBatch.isFull { flushSendBatch() }
        var produced = false
        _ = sendBatch.appendRouted { slot -> (length: Int, destination: Endpoint)? in
            guard let length = produce(Tunnel.packetArea(slot)) else { return nil }
            produced = true
            return seal(slot, packetLength: length, now: now, sink: &sink)
        }
        return produced
    }

    /// Where a packet goes in a send slot (`appendRouted`'s, room included): behind the room and
    /// the header, clear of the tag.
    private static func packetArea(_ slot: UnsafeMutableRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(
            rebasing: slot[(Device.sealingRoom + Device.headroom)..<(slot.count - Device.tailroom)])
    }

    /// Seals the packet in `slot` (room included) for its peer and returns the datagram's length
    /// and destination, or nil when the core staged or dropped it. The engine lock is held only
    /// to route and reserve a counter, and then for the timers; the encryption runs outside it,
    /// so the other direction is not kept waiting for the seal (2.4 µs a full-size packet here).
    private func seal(
        _ slot: UnsafeMutableRawBufferPointer, packetLength: Int, now: Instant, sink: inout SocketSink
    ) -> (length: Int, destination: Endpoint)? {
        let datagram = UnsafeMutableRawBufferPointer(rebasing: slot[Device.sealingRoom...])
        let plan = withEngine { $0.prepareSend(datagram, packetLength: packetLength, now: now, sink: &sink) }
        guard case .seal(let ticket) = plan else {
            if case .finished(.dropped(.packetTooLarge)) = plan, packetLength > sendBatchMTU { slotsOutgrown() }
            if case .finished(.tooBig(let mtu)) = plan {
                tellTooBig(
                    UnsafeRawBufferPointer(rebasing: datagram[Device.headroom..<(Device.headroom + packetLength)]),
                    mtu: mtu)
            }
            return nil
        }
        let length = Device.seal(slot, datagramAt: Device.sealingRoom, ticket)
        withEngine { $0.completeSend(ticket, datagramLength: length, now: now, sink: &sink) }
        return (length, ticket.endpoint)
    }

    /// On `outboundQueue`: tells the sender of `packet`, refused as longer than its peer's path,
    /// that `mtu` bytes fit (issue 17), with an ICMP error written into the TUN. Best effort: a
    /// TUN that will not take it now loses it, as a router's rate limit would.
    private func tellTooBig(_ packet: UnsafeRawBufferPointer, mtu: Int) {
        // The header the TUN was set up with (`tunHeaderSize`: larger with UDP tunnel GSO).
        let room = tun.hasVirtioHeader ? tunHeaderSize : 0
        // A zeroed virtio header: no offload, checksums complete.
        if room > 0 {
            UnsafeMutableRawBufferPointer(rebasing: tooBigRecord[0..<room]).initializeMemory(
                as: UInt8.self, repeating: 0)
        }
        guard
            let length = ICMPTooBig.write(
                for: packet, mtu: mtu, into: UnsafeMutableRawBufferPointer(rebasing: tooBigRecord[room...]))
        else { return }
        do {
            _ = try tun.write(UnsafeRawBufferPointer(rebasing: tooBigRecord[0..<(room + length)]))
        } catch {
            logger.debug("\(name): packet-too-big write failed: \(error)")
        }
    }

    /// Opens `datagram` (a view of `storage`, starting at `offset`) in place, the decryption
    /// outside the engine lock (as `seal` does); it may read the bytes of `storage` around it.
    private func open(
        _ datagram: UnsafeMutableRawBufferPointer, at offset: Int, in storage: UnsafeMutableRawBufferPointer,
        from source: Endpoint, now: Instant, sink: inout SocketSink
    ) -> InboundAction {
        let plan = withEngine {
            $0.prepareReceive(datagram, length: datagram.count, from: source, now: now, sink: &sink)
        }
        switch plan {
        case .finished(let action):
            return action
        case .open(let ticket):
            let opened = Device.open(storage, datagramAt: offset, ticket, scratch: openScratch)
            return withEngine {
                $0.completeReceive(datagram, ticket, plaintextLength: opened, from: source, now: now, sink: &sink)
            }
        }
    }

    // MARK: - Link MTU

    /// Adopts the TUN's MTU, from the link monitor (or a drop of a too-long packet) on any queue: the engine
    /// pads for it at once, and `outboundQueue` re-sizes its send slots before its next burst
    /// (`adoptLinkMTU`), so packets as large as the new MTU are carried. A packet read before
    /// then that does not fit its slot is dropped and counted (`packetTooLarge`). Only a change
    /// is logged.
    public func linkMTUDidChange(_ mtu: Int) {
        guard linkMTU.exchange(mtu, ordering: .relaxed) != mtu else { return }
        withEngine { $0.mtu = mtu }
        logger.info("\(name): link MTU changed to \(mtu)")
    }

    /// After a packet longer than the send slots (dropped and counted by the caller): the MTU has
    /// likely just risen. Learns it now, a system call on this drop path only, rather than at the
    /// next link check, so the slots grow before the next burst instead of dropping until then.
    private func slotsOutgrown() {
        if let mtu = try? tun.mtu() { linkMTUDidChange(mtu) }
    }

    /// The MTU send slots are sized for: the link's, within what a config may set (a link below
    /// 1280 gets 1280-byte slots; the kernel allows no more than 65535).
    static func slotMTU(_ linkMTU: Int) -> Int {
        min(max(linkMTU, Protocol.minimumMTU), Protocol.maximumMTU)
    }

    /// Send slots for packets of up to `slotMTU` bytes. Sends batch 128 slots: three 64 KiB
    /// super-packets' segments (about 46 each) per sendmmsg at the default MTU. Each slot has the
    /// room in front and behind that lets the seal copy nothing.
    private static func makeSendBatch(slotMTU: Int) -> SendBatch {
        SendBatch(
            capacity: 2 * Tunnel.burst, bufferSize: Device.sealingSlotSize(mtu: slotMTU),
            leadingRoom: Device.sealingRoom)
    }

    /// On `outboundQueue`, between bursts: re-sizes the send slots when the link MTU changed.
    /// What is queued in the old batch leaves first.
    private func adoptLinkMTU() {
        let wanted = Tunnel.slotMTU(linkMTU.load(ordering: .relaxed))
        guard wanted != sendBatchMTU else { return }
        flushSendBatch()
        sendBatch = Tunnel.makeSendBatch(slotMTU: wanted)
        sendBatchMTU = wanted
    }

    private func flushSendBatch() {
        guard !sendBatch.isEmpty else {
            sendBatch.removeAll()
            return
        }
        // A datagram the kernel will not take now is dropped, as a full link queue would, and
        // counted (the engine is taken only then). A refusal consumes its datagram and stops the
        // send; what would block is left pending.
        var refused: UInt64 = 0
        do { _ = try socket.send(&sendBatch) } catch { refused = 1 }
        let unsent = refused + UInt64(sendBatch.pendingCount)
        sendBatch.removeAll()
        if unsent > 0 { withEngine { $0.countDrop(.udpSendRefused, times: unsent) } }
    }

    /// UDP → decrypt → TUN. Receives batches with recvmmsg (each slot possibly several datagrams
    /// coalesced by UDP GRO), opens each datagram in place, and hands the packets to the TUN writer,
    /// which coalesces TCP segments into super-packets when the TUN takes them.
    private func drainSocket() {
        var sink = SocketSink(socket: socket, logger: logger)
        let tun = self.tun
        var parks = 0
        for _ in 0..<(4 * (Tunnel.parkRounds + 1)) {
            let received: Int
            do {
                received = try socket.receive(into: &receiveBatch)
            } catch {
                logger.warning("\(name): receive failed: \(error)")
                return
            }
            if received == 0 { return }
            let now = currentInstant()
            var handedOff = false
            receiveBatch.forEachDatagramInStorage { storage, range, source in
                let datagram = UnsafeMutableRawBufferPointer(rebasing: storage[range])
                // Handshakes go to their worker: a copy into its ring, no crypto and no engine lock here.
                if let worker = handshakeWorker, HandshakeWorker.takes(UnsafeRawBufferPointer(datagram)) {
                    worker.enqueue(UnsafeRawBufferPointer(datagram), from: source)
                    handedOff = true
                    return
                }
                let action = open(datagram, at: range.lowerBound, in: storage, from: source, now: now, sink: &sink)
                if case .deliver(let offset, let length) = action {
                    writer.add(UnsafeMutableRawBufferPointer(rebasing: datagram[offset..<(offset + length)]), tun: tun)
                }
            }
            if handedOff { handshakeWorker?.signal() }
            // Before the next receive reuses the slots the writer points into.
            writer.flush(tun: tun)
            let refused = writer.takeRefused()
            if refused > 0 { withEngine { $0.countDrop(.tunWriteRefused, times: refused) } }
            if received < receiveBatch.capacity {
                guard park(on: socket.fileDescriptor, rounds: &parks) else { return }
            }
        }
    }

    private func handleTunError(_ error: any Error) {
        // EBADFD / EIO / ENODEV: the interface was removed under us.
        logger.info("\(name): TUN read failed (\(error)); shutting down")
        queue.async { [unowned self] in self.shutdown(status: 0, linkGone: true) }
    }

    // MARK: - Configuration (on `queue`)

    /// Makes the engine's peers match `peers`, keeping the sessions of peers that stay, and the
    /// kernel routes match their AllowedIPs (on the link manager's queue; `waitForRoutes`: return
    /// once they do).
    func apply(
        peers: [PeerConfig], now: Instant, waitForRoutes: Bool = false, endpoints resolved: [Endpoint?]? = nil
    ) throws {
        // Name resolution may block: done before taking the engine, and all of it before any change.
        let endpoints = try resolved ?? peers.map { try $0.endpoint.map(resolve) }
        let wanted = Set(peers.map(\.publicKey))
        withEngine { device in
            for existing in device.peers where !wanted.contains(existing.publicKey) {
                device.removePeer(existing.publicKey)
            }
            for (config, endpoint) in zip(peers, endpoints) {
                guard let peer = device.addPeer(config.publicKey) else { continue }
                // An unchanged key keeps the object it has: one binary copy of each key, reloads or not.
                let psk = config.presharedKey?.key ?? .none()
                if device.presharedKey(of: peer) != psk { device.setPresharedKey(psk, for: peer) }
                if let endpoint { device.setEndpoint(endpoint, for: peer) }
                device.removeAllowedIPs(for: peer)
                for prefix in config.allowedIPs { device.addAllowedIP(prefix, for: peer) }
                let keepalive = config.persistentKeepalive ?? 0
                // Re-arming on an unchanged value would send a keepalive on every reload.
                if keepalive != peer.persistentKeepalive {
                    device.setPersistentKeepalive(keepalive, for: peer, now: now)
                }
            }
        }
        syncRoutes(wait: waitForRoutes)
    }

    /// Makes the kernel's routes through the link match every peer's AllowedIPs. The work runs on
    /// the link manager's queue; `wait` (start-up only) returns once it is done.
    /// `Table = off`: none. A full tunnel first marks the socket, so that its own UDP never
    /// follows the /0 into the tunnel once the rules are in.
    func syncRoutes(wait: Bool = false) {
        guard routing != .off else { return }
        let wanted = withEngine { device in
            device.peers.reduce(into: Set<IPPrefix>()) { $0.formUnion(device.allowedIPs(of: $1)) }
        }
        if let fullTunnelTable, fwmark != fullTunnelTable, wanted.contains(where: { $0.length == 0 }) {
            do {
                try setFwMark(fullTunnelTable)
            } catch {
                logger.error("\(name): full tunnel not routed: cannot mark the UDP socket: \(error)")
                return
            }
        }
        link.updateRoutes(wanted, wait: wait)
    }

    /// Whether a peer has 0.0.0.0/0 or ::/0 (a full tunnel).
    private func routesDefault() -> Bool {
        withEngine { device in device.peers.contains { device.allowedIPs(of: $0).contains { $0.length == 0 } } }
    }

    /// Marks the UDP socket (0: unmarks it) and remembers the mark for `rebind` and UAPI `get`.
    func setFwMark(_ mark: UInt32) throws(SystemError) {
        try socket.setMark(mark)
        fwmark = mark
    }

    // MARK: - Link events (on `queue`)

    /// What the kernel reported about the link (LinkMonitor).
    func linkEvent(_ event: LinkEvent) {
        switch event {
        case .deleted:
            // That is how `wg-quick down` stops a userspace implementation.
            logger.info("\(name): link deleted, shutting down")
            shutdown(status: 0, linkGone: true)
        case .mtuChanged(let mtu):
            linkMTUDidChange(mtu)
        case .up:
            logger.info("\(name): link up")
        case .down:
            logger.info("\(name): link down")
        }
    }

    private func resolve(_ endpoint: PeerEndpoint) throws -> Endpoint {
        switch endpoint {
        case .address(let address): return address
        case .hostName(let host, let port): return try Resolver.resolve(host: host, port: port)
        }
    }

    /// Where SIGHUP reads and parses the config: never `queue`, whose timers and control socket
    /// must not wait on a slow disk or a large file. Serial, so reloads apply in signal order.
    private static let reloadQueue = DispatchQueue(label: "tunctl.reload")

    private func reload() {
        guard let configPath else {
            logger.info("\(name): SIGHUP ignored (no config file)")
            return
        }
        Tunnel.reloadQueue.async { [unowned self] in
            let outcome = Result { () throws(ConfigLoadError) in try ConfigLoader.load(path: configPath) }
            self.queue.async { self.finishReload(outcome, from: configPath) }
        }
    }

    /// Applies a config `reload` loaded (on `queue`): the interface's changes (addresses, MTU,
    /// ListenPort, private key) and the peers, all or nothing. Everything that can fail (binding
    /// the new port, resolving endpoints, the link's changes, which are undone together) happens
    /// before anything is swapped in; a failure is logged and the running configuration kept.
    /// One line says what changed.
    private func finishReload(_ outcome: Result<LoadedConfig, ConfigLoadError>, from configPath: String) {
        guard !shutdownStarted else { return }
        var replacement: UDPSocket?
        do {
            let loaded = try outcome.get()
            let wanted = loaded.config.interface
            let applied = appliedInterface
            var changes: [String] = []
            // FwMark; a running full tunnel keeps its table's mark (its rules are made for it).
            let oldMark = fwmark
            let fullTunnelActive = fullTunnelTable != nil && fwmark == fullTunnelTable && routesDefault()
            let newMark = fullTunnelActive ? oldMark : (wanted.fwMark ?? 0)

            var listenPort: (old: UInt16, new: UInt16)?
            if let port = wanted.listenPort, port != 0, port != applied?.listenPort, port != socket.port {
                do {
                    replacement = try Tunnel.openSocket(port: port, offload: offload, mark: newMark)
                } catch {
                    throw ReloadError(step: "ListenPort = \(port)", error)
                }
                listenPort = (socket.port, port)
            }
            let endpoints = try loaded.config.peers.map { try $0.endpoint.map(resolve) }

            let oldMTU = linkMTU.load(ordering: .relaxed)
            let newMTU = wanted.mtu ?? Protocol.defaultMTU
            let mtuChange: (old: Int, new: Int)? =
                newMTU != (applied?.mtu ?? Protocol.defaultMTU) && newMTU != oldMTU ? (oldMTU, newMTU) : nil
            let wantedSet = Set(wanted.addresses)
            let currentSet = Set(addresses)
            let removing = addresses.filter { !wantedSet.contains($0) }
            let adding = wanted.addresses.filter { !currentSet.contains($0) }
            if newMark != oldMark {
                do {
                    try setFwMark(newMark)
                } catch {
                    throw ReloadError(step: "FwMark = \(newMark)", error)
                }
            }
            do {
                try link.reconfigure(mtu: mtuChange, adding: adding, removing: removing)
            } catch {
                if newMark != oldMark { try? setFwMark(oldMark) }
                throw ReloadError(step: "the link (MTU, Address)", error)
            }
            if newMark != oldMark { changes.append("fwmark \(oldMark)→\(newMark)") }

            // Nothing below can fail.
            addresses = wanted.addresses
            changes += adding.map { "address +\($0)" } + removing.map { "address -\($0)" }
            if let mtuChange {
                linkMTUDidChange(mtuChange.new)
                changes.append("mtu \(mtuChange.old)→\(mtuChange.new)")
            }
            if let listenPort, let socket = replacement {
                replacement = nil
                swapSocket(socket)
                changes.append("listen port \(listenPort.old)→\(listenPort.new)")
            }
            if let key = loaded.config.privateKey, key.publicKey != applied?.publicKey,
                withEngine({ $0.publicKey }) != key.publicKey
            {
                // As `wg set private-key`: every session made under the old key is dropped.
                withEngine { $0.setPrivateKey(key) }
                changes.append("private key changed (sessions reset)")
            }
            try apply(peers: loaded.config.peers, now: currentInstant(), endpoints: endpoints)
            appliedInterface = AppliedInterface(wanted)
            _ = withEngine { $0.initiateHandshakes(now: currentInstant()) }
            changes.append("\(loaded.config.peers.count) peer\(loaded.config.peers.count == 1 ? "" : "s")")
            logger.info("\(name): reloaded \(configPath): \(changes.joined(separator: ", "))")
            reloadObserver?(loaded)
        } catch {
            try? replacement?.close()
            logger.error("\(name): reload failed, keeping the running configuration: \(error)")
        }
    }

    /// Rebinds the UDP socket to `port` (UAPI `listen_port=`).
    func rebind(port: UInt16) throws {
        guard port != socket.port || port == 0 else { return }
        swapSocket(try Tunnel.openSocket(port: port, offload: offload, mark: fwmark))
    }

    /// The UDP socket on `port` with the offloads the tunnel runs with (GSO and GRO, unless
    /// `TUNCTL_OFFLOAD=off`) and `mark` (0: none): the same at start, on reload and on a UAPI
    /// `listen_port=` (which once opened it with GSO alone, losing GRO for good).
    private static func openSocket(port: UInt16, offload: OffloadSettings, mark: UInt32) throws -> UDPSocket {
        let socket = try UDPSocket(port: port, offload: offload.udp ? [.segmentation, .coalescing] : [])
        do {
            if mark != 0 { try socket.setMark(mark) }
        } catch {
            try? socket.close()
            throw error
        }
        return socket
    }

    /// Puts `replacement` in the old socket's place and closes the old one.
    private func swapSocket(_ replacement: UDPSocket) {
        // Both data queues are held while the socket changes, so neither sees it half-replaced.
        holdingDataQueues {
            udpSource?.cancel()
            try? socket.close()
            socket = replacement
        }
        startSocketSource()
    }

    /// Installs what runs around the shutdown (`ShutdownSteps`) and who hears of reloads.
    public func setLifecycle(steps: ShutdownSteps?, onReload: (@Sendable (LoadedConfig) -> Void)?) {
        queue.sync {
            shutdownSteps = steps
            reloadObserver = onReload
        }
    }

    // MARK: - Control and shutdown (on `queue`)

    /// Runs `body` on the control queue while both data queues and the handshake worker's are
    /// held, first waking a handler parked in `poll` so the wait is for its current batch only.
    private func holdingDataQueues(_ body: () -> Void) {
        wakeup.raise()
        outboundQueue.sync {
            inboundQueue.sync {
                if let worker = handshakeWorker { worker.queue.sync(execute: body) } else { body() }
            }
        }
        wakeup.lower()
    }

    /// This thread's CPU time in nanoseconds (CLOCK_THREAD_CPUTIME_ID, a vDSO read).
    private static func threadCPUTime() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return UInt64(time.tv_sec) * Protocol.nanosecondsPerSecond + UInt64(time.tv_nsec)
    }

    /// Answers one control request into `reply` (a buffer the server zeroes after sending: the
    /// `get` reply holds the keys).
    private func handleControl(_ request: ControlRequest, reply: SecretBuffer) {
        switch request {
        case .get:
            let port = socket.port
            let mark = fwmark
            // In pieces, formatted outside the lock: 100,000 peers do not stall the data path. The
            // longest time inside the lock is logged (debug): wall time, which a preemption while
            // holding it stretches, and this thread's CPU time, the work done under it.
            let started = currentInstant().monotonic
            var holds = 0
            var longest: UInt64 = 0
            var longestCPU: UInt64 = 0
            var heldCPU: UInt64 = 0
            UAPI.get(listenPort: port, fwmark: mark, into: reply) { body in
                withEngine { device in
                    let entered = (currentInstant().monotonic, Tunnel.threadCPUTime())
                    body(device)
                    let cpu = Tunnel.threadCPUTime() - entered.1
                    longest = max(longest, currentInstant().monotonic - entered.0)
                    longestCPU = max(longestCPU, cpu)
                    heldCPU += cpu
                }
                holds += 1
            }
            logger.debug(
                "\(name): get=1 of \(reply.count) bytes in \((currentInstant().monotonic - started) / 1000) µs, \(holds) lock holds, the longest \(longest / 1000) µs (CPU \(longestCPU / 1000) µs), CPU under the lock \(heldCPU / 1000) µs in all"
            )
        case .set(let body):
            var listenPort: UInt16?
            var mark: UInt32?
            // Parsed before taking the lock: 100,000 peers' worth of text is not the data path's wait.
            let errno: Int32
            switch UAPI.parseSet(body) {
            case .failure(let error):
                errno = error.errno
            case .success(let parsed):
                let applied = withEngine { device -> UInt64 in
                    let entered = currentInstant().monotonic
                    UAPI.apply(parsed, to: device, now: currentInstant(), setListenPort: { listenPort = $0 }) {
                        mark = $0
                    }
                    return currentInstant().monotonic - entered
                }
                // Applied in one hold, so that no packet sees half a request: logged, as its length
                // is what the data path waits for.
                logger.debug(
                    "\(name): set=1 of \(body.count) bytes applied in \(applied / 1000) µs under the engine lock")
                errno = 0
            }
            // As wireguard-go: a port or mark the socket refuses is -EADDRINUSE.
            if errno == 0, let port = listenPort {
                do { try rebind(port: port) } catch { return reply.append("errno=-\(EADDRINUSE)\n\n") }
            }
            if errno == 0, let mark {
                do { try setFwMark(mark) } catch { return reply.append("errno=-\(EADDRINUSE)\n\n") }
            }
            // Routes are ours only when we own the config (`tunctl up`); under wg-quick
            // (`tunctl userspace`) they are wg-quick's, as with wireguard-go.
            if errno == 0, configPath != nil { syncRoutes() }
            reply.append("errno=\(errno)\n\n")
        case .show:
            // The report takes the engine in pieces itself; the JSON is encoded outside the lock.
            reply.append(showReport().json + "\n\n")
        case .down:
            queue.async { [unowned self] in self.shutdown(status: 0, linkGone: false) }
            reply.append("errno=0\n\n")
        }
    }

    /// The `show` report, on `queue`. The kernel's MTU now (`ip link set mtu` may not have reached
    /// us yet), read outside the lock.
    private func showReport() -> ShowReport {
        ShowReport(tunnel: self, linkMTU: (try? tun.mtu()) ?? linkMTU.load(ordering: .relaxed))
    }

    /// A `show` report made on `queue` as for `tunctl show`, handed to `done` there (the metrics
    /// endpoint: a snapshot, so a scrape holds the engine no longer than `tunctl show` does).
    public func report(_ done: @escaping @Sendable (ShowReport) -> Void) {
        queue.async { [self] in done(showReport()) }
    }

    /// Shuts down from any thread but `queue`, at once and without the shutdown steps (used when
    /// start-up fails after `run`).
    public func stop(status: Int32) {
        queue.sync {
            shutdownStarted = true
            teardown(status: status, report: true)
        }
    }

    var interfaceAddresses: [IPPrefix] { addresses }

    /// Stops the tunnel (on `queue`): with shutdown steps, their first part (PreDown, SaveConfig,
    /// DNS) runs on `stepsQueue` while the tunnel still runs, then the teardown on `queue`, then
    /// the second part (PostDown); a failed step makes the exit status 1. Without, tears down now.
    func shutdown(status: Int32, linkGone: Bool) {
        guard !shutdownStarted else { return }
        shutdownStarted = true
        guard let steps = shutdownSteps else { return teardown(status: status, report: true) }
        Tunnel.stepsQueue.async { [self] in
            let before = steps.beforeTeardown()
            queue.sync { teardown(status: status, report: false) }
            let after = steps.afterTeardown()
            let final = before && after ? status : max(status, 1)
            queue.async { self.onStop?(final) }
        }
    }

    /// Where shutdown steps run: never `queue` or a data queue, which must not wait on a hook.
    static let stepsQueue = DispatchQueue(label: "tunctl.steps")

    /// Removes the link (its routes and addresses go with it) and the control socket, then
    /// reports `status` when `report`.
    private func teardown(status: Int32, report: Bool) {
        guard !stopping else { return }
        stopping = true
        tunSource?.cancel()
        udpSource?.cancel()
        timer?.cancel()
        linkMonitor?.cancel()
        // Wait out any data-path handler still running before closing what it uses.
        holdingDataQueues {}
        handshakeWorker?.stop()
        try? tun.close()
        // A non-persistent TUN disappears when its last descriptor closes; make sure of it. No
        // route is deleted one by one: they go with the link.
        link.shutdown()
        try? socket.close()
        withEngine { device in
            device.removeAllPeers()
            device.setPrivateKey(nil)
        }
        // Last: a vanished socket file tells `tunctl down` that everything above is done.
        control?.close()
        if report { onStop?(status) }
    }
}
