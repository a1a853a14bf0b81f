import Dispatch
import Glibc
import Logging
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
/// socket, driven by Dispatch sources on one serial queue.
///
/// Threading: every mutable property, the `Device` included, is owned by `queue`; the Dispatch
/// sources deliver their events on that queue, so no state is ever touched concurrently. That is
/// why the `@unchecked Sendable` below is sound.
public final class Tunnel: @unchecked Sendable {
    public let name: String
    let queue: DispatchQueue
    let logger: Logger
    let device: Device
    let tun: TunDevice
    private(set) var socket: UDPSocket
    /// Addresses and routes this process added, removed again on shutdown.
    private(set) var addresses: [IPPrefix] = []
    private(set) var routes: Set<IPPrefix> = []
    /// The config file to re-read on SIGHUP (nil when started empty for wg-quick).
    let configPath: String?
    private var control: ControlServer?

    private var tunSource: DispatchSourceRead?
    private var udpSource: DispatchSourceRead?
    private var timer: DispatchSourceTimer?
    private var signalSources: [DispatchSourceSignal] = []
    private var stopping = false
    private var onStop: (@Sendable (Int32) -> Void)?

    private var receiveBatch: ReceiveBatch
    private var sendBatch: SendBatch
    /// Reads per wake-up before yielding to the other sources (fairness; bounded work per event).
    static let burst = 64
    /// The largest UDP payload over IPv4 or IPv6 without jumbograms.
    static let maximumDatagram = 65535

    /// Opens the TUN, binds the socket, configures the link and loads `config` into the engine.
    /// Undoes what it did if a step fails. Call `run` next.
    public init(
        name: String, config: TunnelConfig?, configPath: String?, logger: Logger
    ) throws {
        self.name = name
        self.logger = logger
        self.configPath = configPath
        self.queue = DispatchQueue(label: "tunctl.\(name)")
        let mtu = config?.interface.mtu ?? Protocol.defaultMTU
        device = Device(privateKey: config?.privateKey, mtu: mtu)
        // A send slot holds the largest packet the TUN hands us (its MTU) plus the transport
        // overhead; a receive slot, any datagram a peer may send (its MTU may exceed ours).
        receiveBatch = ReceiveBatch(capacity: Tunnel.burst, bufferSize: Tunnel.maximumDatagram)
        sendBatch = SendBatch(capacity: Tunnel.burst, bufferSize: mtu + Device.headroom + Device.tailroom)

        tun = try TunDevice.open(name: name)
        do {
            socket = try UDPSocket(port: config?.interface.listenPort ?? 0)
            try LinkConfig.setMTU(mtu, interface: tun.name)
            for address in config?.interface.addresses ?? [] {
                try LinkConfig.addAddress(address, interface: tun.name)
                addresses.append(address)
            }
            try LinkConfig.setUp(interface: tun.name)
            if let config { try apply(peers: config.peers, now: currentInstant()) }
        } catch {
            try? tun.close()
            throw error
        }
    }

    public var listenPort: UInt16 { socket.port }

    /// Starts the sources and the control socket; `onStop` runs (on the queue) with the exit status
    /// once the tunnel has shut down and cleaned up.
    public func run(controlSocketPath: String, onStop: @escaping @Sendable (Int32) -> Void) throws {
        self.onStop = onStop
        control = try ControlServer(path: controlSocketPath, queue: queue, logger: logger) { [unowned self] request in
            self.handleControl(request)
        }
        queue.sync {
            startSources()
        }
        logger.info(
            "\(name) up: listening on UDP port \(socket.port), public key \(device.publicKey?.base64 ?? "(none)")")
    }

    private func startSources() {
        let tunSource = DispatchSource.makeReadSource(fileDescriptor: tun.fileDescriptor, queue: queue)
        tunSource.setEventHandler { [unowned self] in self.drainTun() }
        tunSource.resume()
        self.tunSource = tunSource
        startSocketSource()

        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now(), repeating: .milliseconds(100), leeway: .milliseconds(20))
        var ticks = 0
        timer.setEventHandler { [unowned self] in
            var sink = SocketSink(socket: self.socket, logger: self.logger)
            self.device.tick(now: currentInstant(), sink: &sink)
            ticks += 1
            // The daemon exits when its link is deleted from outside (that is how `wg-quick down`
            // stops a userspace implementation).
            if ticks % 5 == 0, !LinkConfig.linkExists(name: self.tun.name) {
                self.logger.info("\(self.name): link deleted, shutting down")
                self.shutdown(status: 0, linkGone: true)
            }
        }
        timer.resume()
        self.timer = timer

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
        let source = DispatchSource.makeReadSource(fileDescriptor: socket.fileDescriptor, queue: queue)
        source.setEventHandler { [unowned self] in self.drainSocket() }
        source.resume()
        udpSource = source
    }

    // MARK: - Data path (on `queue`)

    /// TUN → encrypt → UDP. Reads up to `burst` packets, each straight into a send-batch slot
    /// behind room for the header, seals it there in place, and sends the batch with one sendmmsg:
    /// no copy and no allocation per packet.
    private func drainTun() {
        let now = currentInstant()
        var sink = SocketSink(socket: socket, logger: logger)
        var drained = false
        var failure: (any Error)?
        for _ in 0..<Tunnel.burst where !drained {
            if sendBatch.isFull { flushSendBatch() }
            _ = sendBatch.appendRouted { slot -> (length: Int, destination: Endpoint)? in
                let readArea = UnsafeMutableRawBufferPointer(
                    rebasing: slot[Device.headroom..<(slot.count - Device.tailroom)])
                let length: Int
                do {
                    guard let count = try tun.read(into: readArea) else {
                        drained = true
                        return nil
                    }
                    length = count
                } catch {
                    failure = error
                    drained = true
                    return nil
                }
                switch device.encapsulate(slot, packetLength: length, now: now, sink: &sink) {
                case .send(let datagramLength, let endpoint): return (datagramLength, endpoint)
                case .staged, .dropped: return nil
                }
            }
        }
        flushSendBatch()
        if let failure { handleTunError(failure) }
    }

    private func flushSendBatch() {
        guard !sendBatch.isEmpty else {
            sendBatch.removeAll()
            return
        }
        // A datagram the kernel will not take now is dropped, as a full link queue would.
        _ = try? socket.send(&sendBatch)
        sendBatch.removeAll()
    }

    /// UDP → decrypt → TUN. Receives batches with recvmmsg, opens each in place, writes the
    /// inner packets to the TUN.
    private func drainSocket() {
        var sink = SocketSink(socket: socket, logger: logger)
        for _ in 0..<8 {
            let received: Int
            do {
                received = try socket.receive(into: &receiveBatch)
            } catch {
                logger.warning("\(name): receive failed: \(error)")
                return
            }
            if received == 0 { return }
            let now = currentInstant()
            for slot in 0..<received {
                guard let source = receiveBatch.source(at: slot), !receiveBatch.isTruncated(at: slot) else { continue }
                let length = receiveBatch.length(at: slot)
                receiveBatch.withMutableSlot(at: slot) { buffer in
                    let action = device.decapsulate(buffer, length: length, from: source, now: now, sink: &sink)
                    if case .deliver(let offset, let packetLength) = action {
                        let packet = UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + packetLength)])
                        do {
                            _ = try tun.write(packet)
                        } catch {
                            logger.debug("\(name): TUN write failed: \(error)")
                        }
                    }
                }
            }
            if received < receiveBatch.capacity { return }
        }
    }

    private func handleTunError(_ error: any Error) {
        // EBADFD / EIO / ENODEV: the interface was removed under us.
        logger.info("\(name): TUN read failed (\(error)); shutting down")
        shutdown(status: 0, linkGone: true)
    }

    // MARK: - Configuration (on `queue`)

    /// Makes the engine's peers match `peers`, keeping the sessions of peers that stay, and the
    /// kernel routes match their AllowedIPs.
    func apply(peers: [PeerConfig], now: Instant) throws {
        let wanted = Set(peers.map(\.publicKey))
        for existing in device.peers where !wanted.contains(existing.publicKey) {
            device.removePeer(existing.publicKey)
        }
        for config in peers {
            guard let peer = device.addPeer(config.publicKey) else { continue }
            device.setPresharedKey(config.presharedKey?.key ?? .none(), for: peer)
            if let endpoint = config.endpoint {
                device.setEndpoint(try resolve(endpoint), for: peer)
            }
            device.removeAllowedIPs(for: peer)
            for prefix in config.allowedIPs { device.addAllowedIP(prefix, for: peer) }
            device.setPersistentKeepalive(config.persistentKeepalive ?? 0, for: peer, now: now)
        }
        syncRoutes()
    }

    /// Adds a kernel route for every AllowedIPs prefix and removes routes no longer wanted.
    func syncRoutes() {
        var wanted = Set<IPPrefix>()
        for peer in device.peers { wanted.formUnion(device.allowedIPs(of: peer)) }
        for stale in routes.subtracting(wanted) {
            try? LinkConfig.deleteRoute(stale, interface: tun.name)
            routes.remove(stale)
        }
        for prefix in wanted.subtracting(routes) {
            do {
                try LinkConfig.addRoute(prefix, interface: tun.name)
                routes.insert(prefix)
            } catch {
                // Already routed (e.g. the interface's own subnet): nothing to add or remove later.
                logger.debug("\(name): route \(prefix): \(error)")
            }
        }
    }

    private func resolve(_ endpoint: PeerEndpoint) throws -> Endpoint {
        switch endpoint {
        case .address(let address): return address
        case .hostName(let host, let port): return try Resolver.resolve(host: host, port: port)
        }
    }

    private func reload() {
        guard let configPath else {
            logger.info("\(name): SIGHUP ignored (no config file)")
            return
        }
        do {
            let loaded = try ConfigLoader.load(path: configPath)
            try apply(peers: loaded.config.peers, now: currentInstant())
            logger.info("\(name): reloaded \(loaded.config.peers.count) peer(s) from \(configPath)")
        } catch {
            logger.error("\(name): reload failed, keeping the running configuration: \(error)")
        }
    }

    /// Rebinds the UDP socket to `port` (UAPI `listen_port=`).
    func rebind(port: UInt16) throws {
        guard port != socket.port || port == 0 else { return }
        let replacement = try UDPSocket(port: port)
        udpSource?.cancel()
        try? socket.close()
        socket = replacement
        startSocketSource()
    }

    // MARK: - Control and shutdown (on `queue`)

    private func handleControl(_ request: ControlRequest) -> String {
        switch request {
        case .get:
            return UAPI.get(device: device, listenPort: socket.port)
        case .set(let body):
            var listenPort: UInt16?
            let errno = UAPI.set(body, device: device, now: currentInstant()) { listenPort = $0 }
            if errno == 0, let port = listenPort {
                do { try rebind(port: port) } catch { return "errno=-\(EADDRINUSE)\n\n" }
            }
            if errno == 0 { syncRoutes() }
            return "errno=\(errno)\n\n"
        case .show:
            return ShowReport(tunnel: self).json + "\n\n"
        case .down:
            queue.async { [unowned self] in self.shutdown(status: 0, linkGone: false) }
            return "errno=0\n\n"
        }
    }

    /// Shuts down from any thread (used when start-up fails after `run`).
    public func stop(status: Int32) {
        queue.sync { shutdown(status: status, linkGone: false) }
    }

    var interfaceAddresses: [IPPrefix] { addresses }
    var engine: Device { device }

    /// Removes routes, addresses, the link and the control socket, then reports `status`.
    func shutdown(status: Int32, linkGone: Bool) {
        guard !stopping else { return }
        stopping = true
        tunSource?.cancel()
        udpSource?.cancel()
        timer?.cancel()
        if !linkGone {
            for prefix in routes { try? LinkConfig.deleteRoute(prefix, interface: tun.name) }
        }
        routes.removeAll()
        try? tun.close()
        // A non-persistent TUN disappears when its last descriptor closes; make sure of it.
        if LinkConfig.linkExists(name: tun.name) { try? LinkConfig.deleteLink(name: tun.name) }
        try? socket.close()
        device.removeAllPeers()
        device.setPrivateKey(nil)
        // Last: a vanished socket file tells `tunctl down` that everything above is done.
        control?.close()
        onStop?(status)
    }
}
