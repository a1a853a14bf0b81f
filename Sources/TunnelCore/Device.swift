import TunnelCrypto

/// Where the core hands datagrams it originates itself: handshake messages, cookie replies,
/// keepalives and packets that waited for a handshake. The bytes are valid only during the call.
/// The I/O layer sends them at once; tests collect them.
public protocol DatagramSink {
    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint)
}

/// What to do with a packet read from the TUN.
public enum OutboundAction: Equatable, Sendable {
    /// `buffer[0..<length]` now holds a transport datagram for `endpoint`.
    case send(length: Int, to: Endpoint)
    /// Kept until a handshake completes; nothing to do now.
    case staged
    case dropped(DropReason)
    /// Longer than the peer's path carries (`PathMTU`): dropped and counted as
    /// `pathMTUExceeded`; the caller writes `ICMPTooBig.write(for:mtu:into:)` into the TUN.
    case tooBig(mtu: Int)
}

/// What to do with a datagram read from the UDP socket.
public enum InboundAction: Equatable, Sendable {
    /// `buffer[offset ..< offset + length]` is an IP packet for the TUN.
    case deliver(offset: Int, length: Int)
    /// Handled inside the core (handshake, cookie, keepalive); nothing to write.
    case consumed
    case dropped(DropReason)
}

/// A data packet `Device.prepareSend` cleared to leave: the session and counter to seal it under.
/// Holding it keeps the keys alive, so sealing is safe even if the session is replaced meanwhile.
public struct SealTicket {
    let peer: Peer
    let keypair: Keypair
    let counter: UInt64
    let mtu: Int
    let packetLength: Int
    /// Where the sealed datagram goes.
    public let endpoint: Endpoint
    /// The keypair's sending key and the peer's index, taken here so that `seal`, on a crypto
    /// worker, reads neither the keypair nor a reference count: the device's owner writes the
    /// keypair's cache line on every packet (the counter, retains), and a retain of the key on
    /// each worker bounces the key's line between them.
    // Unmanaged (no retain when used): `keypair` holds this key for as long as the ticket lives.
    let key: Unmanaged<SecretKey>
    let receiver: UInt32

    init(peer: Peer, keypair: Keypair, counter: UInt64, mtu: Int, packetLength: Int, endpoint: Endpoint) {
        self.peer = peer
        self.keypair = keypair
        self.counter = counter
        self.mtu = mtu
        self.packetLength = packetLength
        self.endpoint = endpoint
        self.key = Unmanaged.passUnretained(keypair.sendingKey)
        self.receiver = keypair.remoteIndex
    }
}

/// What `Device.prepareSend` decided: seal now (step 2), or nothing more to do.
public enum SendPlan {
    case seal(SealTicket)
    case finished(OutboundAction)
}

/// A transport datagram `Device.prepareReceive` matched to a live session, to open (step 2).
public struct OpenTicket {
    let peer: Peer
    let keypair: Keypair
    let counter: UInt64
    let length: Int
    /// The keypair's receiving key, taken here for `open` as `SealTicket.key` is for `seal`.
    // Unmanaged (no retain when used): `keypair` holds this key for as long as the ticket lives.
    let key: Unmanaged<SecretKey>

    init(peer: Peer, keypair: Keypair, counter: UInt64, length: Int) {
        self.peer = peer
        self.keypair = keypair
        self.counter = counter
        self.length = length
        self.key = Unmanaged.passUnretained(keypair.receivingKey)
    }
}

/// What `Device.prepareReceive` decided: open now (step 2), or already handled.
public enum ReceivePlan {
    case open(OpenTicket)
    case finished(InboundAction)
}

/// The protocol engine of one interface: peers, cryptokey routing, handshakes, transport and
/// timers. Pure: no I/O, no clock of its own; every entry point takes `now`.
///
/// Not thread-safe by design: one owner (a serial queue, or a lock) makes every call, except the
/// static `seal` and `open`, which touch no device state and so can run outside that owner while
/// it serves the other direction.
public final class Device {
    /// Room the caller leaves in front of an outgoing packet for the transport header.
    public static let headroom = TransportMessage.headerSize
    /// Room the caller leaves behind an outgoing packet: padding (< 16) plus the tag.
    public static let tailroom = Protocol.paddingMultiple + MessageSize.tag

    // Read for every packet, as are `routes` and `indices`: unchecked for the reason on `Peer`.
    @exclusivity(unchecked) public private(set) var local: LocalIdentity?
    /// The interface MTU; a change starts every peer's path MTU search over at the next tick.
    @exclusivity(unchecked) public var mtu: Int {
        didSet {
            guard mtu != oldValue else { return }
            for peer in peersByKey.values where peer.current != nil { peer.pathMTUAt = 0 }
        }
    }

    /// Changed only by `addPeer` and `removePeer`, which bump `peerTableGeneration`.
    private(set) var peersByKey: [PublicKey: Peer] = [:]
    /// Tells a `PeerWalk` taken in pieces whether its place in `peersByKey` is still valid.
    private(set) var peerTableGeneration: UInt64 = 0
    @exclusivity(unchecked) private var routes = AllowedIPs<Peer>()
    /// Each peer's prefixes in `routes`, so that one peer's are found without walking the whole
    /// table (with 10,000 peers, start-up and shutdown were quadratic: seconds in `entries`).
    private var prefixesByPeer: [ObjectIdentifier: Set<IPPrefix>] = [:]
    @exclusivity(unchecked) var indices: [UInt32: IndexEntry] = [:]
    /// mac1, mac2 and the rate limit for `decapsulate`'s handshakes. The tunnel's handshake
    /// worker has its own, off the engine lock (HandshakeWorker.swift).
    private var gate: HandshakeGate?
    /// Set by an owner with a handshake worker: an initiation due is queued here rather than made
    /// (two X25519) under the owner's lock; the worker takes, makes and commits it
    /// (HandshakeSteps.swift). Off: made and sent at once, as `InMemoryNetwork` tests expect.
    public var defersInitiations = false
    /// The peers whose initiation is due, in order, each once (`pendingInitiationIDs`). Read after
    /// every engine call, as `initiationsAnnounced` is: unchecked for the reason on `Peer`.
    @exclusivity(unchecked) var pendingInitiations: [Peer] = []
    var pendingInitiationIDs = Set<ObjectIdentifier>()
    /// Whether the owner was told of the pending initiations (`announcesPendingInitiations`).
    @exclusivity(unchecked) var initiationsAnnounced = false
    private var timerJitter = TimerJitter()
    /// Every peer's earliest armed timer, so that `tick` visits only the peers that are due.
    private let timers = TimerQueue()
    /// Scratch for `tick`: the peers the latest tick visited, reused so that a tick does not
    /// allocate (tests read it to compare with a scan of every peer).
    private(set) var duePeers: [Peer] = []
    /// Peers `tick` has visited since the device was made (tests count the work a tick does).
    public private(set) var timerVisits = 0
    public private(set) var drops = DropCounters()
    public internal(set) var events = DeviceEvents()

    /// Scratch for datagrams the core originates (control messages, staged packets). Allocated
    /// once, large enough for any IP packet plus overhead; owned by this device's queue.
    let scratch: UnsafeMutableRawBufferPointer
    /// How many synthetic "packet too big" messages may go into the TUN now (Device+PathMTU.swift).
    var tooBigBudget = TooBigBudget()

    enum IndexEntry {
        /// Our outstanding initiation to this peer.
        case handshake(Peer)
        case keypair(Peer, Keypair)
    }

    public init(privateKey: PrivateKey?, mtu: Int = Protocol.defaultMTU) {
        self.mtu = mtu
        self.scratch = UnsafeMutableRawBufferPointer.allocate(
            byteCount: 65536 + Device.headroom + Device.tailroom, alignment: 16)
        setPrivateKey(privateKey)
    }

    deinit {
        // The queue holds its peers strongly and each peer holds the queue: break the cycle.
        for peer in peersByKey.values { timers.detach(peer) }
        timers.removeAll()
        scratch.deallocate()
    }

    // MARK: - Configuration

    /// Changes the static key. Sessions made under the old key are dropped; a peer whose public
    /// key equals our new one is removed (it could never complete a handshake).
    public func setPrivateKey(_ key: PrivateKey?) {
        if let key, let current = local?.privateKey, current == key { return }
        local = key.map(LocalIdentity.init(privateKey:))
        gate = local.map { HandshakeGate(local: $0) }
        if let own = local?.publicKey { removePeer(own) }
        for peer in peersByKey.values {
            clearSessions(peer)
            if let local {
                peer.remote = RemoteIdentity(
                    publicKey: peer.publicKey, presharedKey: peer.remote.presharedKey, local: local)
                peer.cookies = CookieGenerator(remote: peer.remote)
            }
        }
    }

    public var publicKey: PublicKey? { local?.publicKey }

    public var peers: [Peer] { Array(peersByKey.values) }

    public func peer(_ key: PublicKey) -> Peer? { peersByKey[key] }

    /// Adds a peer, or returns the existing one. Fails (nil) for our own public key or when no
    /// private key is set yet is not a failure: the identity is recomputed when one is.
    @discardableResult
    public func addPeer(_ key: PublicKey) -> Peer? {
        if let existing = peersByKey[key] { return existing }
        if key == local?.publicKey { return nil }
        let remote = makeRemote(key, presharedKey: .none())
        let peer = Peer(publicKey: key, remote: remote, endpoint: nil, persistentKeepalive: 0)
        peer.timerQueue = timers
        peersByKey[key] = peer
        peerTableGeneration &+= 1
        return peer
    }

    public func removePeer(_ key: PublicKey) {
        guard let peer = peersByKey.removeValue(forKey: key) else { return }
        peerTableGeneration &+= 1
        removeAllowedIPs(for: peer)
        clearSessions(peer)
        timers.detach(peer)
    }

    public func removeAllPeers() {
        for key in Array(peersByKey.keys) { removePeer(key) }
    }

    public func setPresharedKey(_ psk: PresharedKey, for peer: Peer) {
        // Unchanged (as for every peer without one at start-up): no static-static DH again.
        guard psk != peer.remote.presharedKey else { return }
        peer.remote = makeRemote(peer.publicKey, presharedKey: psk)
        peer.cookies = CookieGenerator(remote: peer.remote)
    }

    public func setEndpoint(_ endpoint: Endpoint?, for peer: Peer) {
        peer.endpoint = endpoint
    }

    /// Our local `address` is gone (the kernel refused it as a source): every peer whose endpoint
    /// uses it as its sticky source falls back to the kernel's choice until the peer's next
    /// datagram says where it talks to now. Returns how many peers that changed. One pass over
    /// the peers per vanished address, not per datagram.
    @discardableResult
    public func forgetStickySource(_ address: IPAddress) -> Int {
        var changed = 0
        for peer in peersByKey.values where peer.endpoint?.stickySource?.address == address {
            peer.endpoint?.stickySource = nil
            changed += 1
        }
        return changed
    }

    /// Sets the persistent keepalive interval; a nonzero one takes effect at once (a keepalive,
    /// which brings up a session if there is none), as wireguard-go does.
    public func setPersistentKeepalive(_ seconds: UInt16, for peer: Peer, now: Instant) {
        peer.persistentKeepalive = seconds
        peer.persistentKeepaliveAt = seconds == 0 ? nil : now.monotonic
    }

    /// Routes `prefix` (host bits ignored) to `peer`, taking it from the peer that had it.
    public func addAllowedIP(_ prefix: IPPrefix, for peer: Peer) {
        let masked = prefix.masked
        if let previous = routes.remove(masked), previous !== peer {
            prefixesByPeer[ObjectIdentifier(previous)]?.remove(masked)
        }
        routes.insert(masked, value: peer)
        prefixesByPeer[ObjectIdentifier(peer), default: []].insert(masked)
    }

    public func removeAllowedIP(_ prefix: IPPrefix, for peer: Peer) {
        let masked = prefix.masked
        if prefixesByPeer[ObjectIdentifier(peer)]?.remove(masked) != nil { _ = routes.remove(masked) }
    }

    public func removeAllowedIPs(for peer: Peer) {
        for prefix in prefixesByPeer.removeValue(forKey: ObjectIdentifier(peer)) ?? [] { routes.remove(prefix) }
    }

    public func allowedIPs(of peer: Peer) -> [IPPrefix] {
        (prefixesByPeer[ObjectIdentifier(peer)] ?? []).sorted { ($0.address, $0.length) < ($1.address, $1.length) }
    }

    /// Appends `peer`'s prefixes, in no particular order, to `list`: one array for many peers,
    /// so that copying 100,000 peers' prefixes under the engine's lock allocates nothing per
    /// peer (`UAPI.get` sorts each peer's after releasing it).
    public func appendAllowedIPs(of peer: Peer, to list: inout [IPPrefix]) {
        if let prefixes = prefixesByPeer[ObjectIdentifier(peer)] { list.append(contentsOf: prefixes) }
    }

    /// How many peers there are (to size a `PeerWalk.keys` list before taking it).
    public var peerCount: Int { peersByKey.count }

    public func status(of peer: Peer) -> PeerStatus {
        PeerStatus(
            publicKey: peer.publicKey, hasPresharedKey: peer.hasPresharedKey, endpoint: peer.endpoint,
            allowedIPs: allowedIPs(of: peer), persistentKeepalive: peer.persistentKeepalive,
            lastHandshakeUnixNanoseconds: peer.lastHandshakeUnixNanoseconds, rxBytes: peer.rxBytes,
            txBytes: peer.txBytes, drops: peer.drops.nonzero,
            pathMTU: peer.endpoint.map { peer.pathMTU.pathMTU(ipv4: $0.address.isV4) })
    }

    /// The configured preshared key of a peer (for the UAPI `get`; never log it).
    public func presharedKey(of peer: Peer) -> PresharedKey { peer.remote.presharedKey }

    private func makeRemote(_ key: PublicKey, presharedKey: PresharedKey) -> RemoteIdentity {
        // Without a private key there is no static-static DH yet; a throwaway identity keeps the
        // type total, and `setPrivateKey` recomputes every peer when the real key arrives.
        let identity = local ?? LocalIdentity(privateKey: PrivateKey.generate())
        return RemoteIdentity(publicKey: key, presharedKey: presharedKey, local: identity)
    }

    // MARK: - Packets from the TUN

    /// Encrypts the IP packet at `buffer[headroom ..< headroom + packetLength]` in place for the
    /// peer whose AllowedIPs hold its destination. `buffer` must extend `tailroom` bytes past the
    /// packet. Without a session the packet is staged and a handshake begins through `sink`.
    /// The three steps of `prepareSend`, `seal` and `completeSend` in one call.
    public func encapsulate<Sink: DatagramSink>(
        _ buffer: UnsafeMutableRawBufferPointer, packetLength: Int, now: Instant, sink: inout Sink
    ) -> OutboundAction {
        switch prepareSend(buffer, packetLength: packetLength, now: now, sink: &sink) {
        case .finished(let action):
            return action
        case .seal(let ticket):
            let length = Device.seal(buffer, ticket)
            completeSend(ticket, datagramLength: length, now: now, sink: &sink)
            return .send(length: length, to: ticket.endpoint)
        }
    }

    /// Step 1 of sending: routes the packet (as `encapsulate` describes) and, when a session is
    /// up, reserves its counter. Staging and drops finish here.
    public func prepareSend<Sink: DatagramSink>(
        _ buffer: UnsafeMutableRawBufferPointer, packetLength: Int, now: Instant, sink: inout Sink
    ) -> SendPlan {
        // A packet longer than the room the caller gave it (read whole elsewhere, as a virtio
        // record is, when the link MTU rose before the slots grew): dropped and counted, no trap.
        guard packetLength >= 0, packetLength <= buffer.count - Device.headroom - Device.tailroom else {
            return .finished(drop(.packetTooLarge))
        }
        let packet = UnsafeRawBufferPointer(rebasing: buffer[Device.headroom..<(Device.headroom + packetLength)])
        guard let peer = route(destinationOf: packet) else { return .finished(drop(.noRoute)) }
        guard local != nil else { return .finished(drop(.noPrivateKey, peer)) }
        guard let endpoint = peer.endpoint else { return .finished(drop(.noEndpoint, peer)) }
        guard Device.fitsDatagram(packetLength: packetLength, mtu: mtu, to: endpoint) else {
            return .finished(drop(.packetTooLarge, peer))
        }
        // The path's limit (issue 17): one comparison per packet; a SYN's MSS is lowered to fit.
        let pathLimit = peer.pathMTU.limit
        if peer.pathMTU.refuses(length: packetLength),
            let verdict = refuseTooBig(packet, limit: pathLimit, peer: peer, now: now)
        {
            return .finished(verdict)
        }
        let isSYN = ICMPTooBig.clampMSS(
            UnsafeMutableRawBufferPointer(rebasing: buffer[Device.headroom..<(Device.headroom + packetLength)]),
            mtu: pathLimit)
        // The search begins with the first TCP handshake or large packet: its first probe now.
        if !peer.pathMTU.started, isSYN || packetLength > peer.pathMTU.base,
            peer.pathMTU.begin(now: now.monotonic)
        {
            stepPathMTU(peer, now: now, sink: &sink)
        }
        guard let keypair = peer.sendingKeypair(at: now.monotonic) else {
            guard stage(packet, for: peer) else { return .finished(drop(.stagedQueueFull, peer)) }
            initiateHandshake(peer, now: now, isRetry: false, sink: &sink)
            return .finished(.staged)
        }
        return .seal(
            SealTicket(
                peer: peer, keypair: keypair, counter: keypair.reserveCounter(), mtu: mtu, packetLength: packetLength,
                endpoint: endpoint))
    }

    /// Step 2: seals the packet in `buffer` (the one given to `prepareSend`) in place and returns
    /// the datagram length. Touches no device state, so it may run on any thread, outside whatever
    /// serializes the device; the ticket keeps the keys alive.
    public static func seal(_ buffer: UnsafeMutableRawBufferPointer, _ ticket: SealTicket) -> Int {
        seal(buffer, datagramAt: 0, ticket)
    }

    /// `seal` for a packet at `region[offset + headroom...]` (the buffer given to `prepareSend`
    /// being `region[offset...]`): the datagram is `region[offset..<offset + result]`. With
    /// `sealingRoom` bytes in front of it and `sealingSlotSize(mtu:)` bytes from its start, the
    /// encryption runs in whole chunks in place and copies nothing (which saves 8–15% of a full-size seal);
    /// the room is left zeroed. With less, it is plain `seal`.
    public static func seal(
        _ region: UnsafeMutableRawBufferPointer, datagramAt offset: Int, _ ticket: SealTicket
    ) -> Int {
        ticket.key._withUnsafeGuaranteedRef { key in
            Transport.seal(
                region, datagramAt: offset, plaintextLength: ticket.packetLength, mtu: ticket.mtu, key: key,
                receiver: ticket.receiver, counter: ticket.counter)
        }
    }

    /// Bytes in front of a datagram that let `seal(_:datagramAt:_:)` skip its copies: the
    /// keystream's first block is made there, over the header and the bytes before it.
    public static let sealingRoom = ChaChaPoly.roomInFront - TransportMessage.headerSize

    /// Bytes from a datagram's start that hold a packet of up to `mtu` bytes with its transport
    /// overhead and, behind the tag, the rest of the last keystream chunk `seal(_:datagramAt:_:)`
    /// XORs in place.
    public static func sealingSlotSize(mtu: Int) -> Int {
        max(headroom + mtu + tailroom, ChaChaPoly.roomySpan(messageLength: mtu) - sealingRoom)
    }

    /// Whether a packet of `packetLength` bytes, padded for `mtu` and sealed, makes a UDP
    /// datagram the kernel can send to `endpoint` (`Protocol.maximumDatagramV4`/`V6`). Only a
    /// tunnel MTU above 65,475 lets the TUN hand over a packet that does not.
    public static func fitsDatagram(packetLength: Int, mtu: Int, to endpoint: Endpoint) -> Bool {
        let datagram = headroom + Transport.paddedLength(packetLength, mtu: mtu) + MessageSize.tag
        let limit = endpoint.address.isV4 ? Protocol.maximumDatagramV4 : Protocol.maximumDatagramV6
        return datagram <= limit
    }

    /// Whether `read`, a packet read into a buffer it filled, was cut short to fit: its IP header
    /// claims more bytes than the buffer holds. (A TUN read into too small a buffer truncates
    /// the packet and reports only what it copied.) Not per packet: only for a full buffer.
    public static func isTruncated(_ read: UnsafeRawBufferPointer) -> Bool {
        do throws(IPPacketError) {
            _ = try IPPacketHeader(parsing: read)
            return false
        } catch {
            return error == .lengthExceedsBuffer
        }
    }

    /// Step 3, back with the device's owner: byte counts and timers for the sealed datagram (which
    /// may start a rekey through `sink`).
    public func completeSend<Sink: DatagramSink>(
        _ ticket: SealTicket, datagramLength: Int, now: Instant, sink: inout Sink
    ) {
        dataSent(
            ticket.peer, keypair: ticket.keypair, datagramLength: datagramLength,
            isKeepalive: ticket.packetLength == 0, now: now, sink: &sink)
    }

    private func route(destinationOf packet: UnsafeRawBufferPointer) -> Peer? {
        guard let first = packet.firstByte else { return nil }
        switch first >> 4 {
        case 4 where packet.count >= IPPacketHeader.Layout.ipv4MinimumHeader:
            // In bounds: checked just above; the lookup reads 4 bytes.
            return routes.lookup(v4NetworkBytes: packet.baseAddress! + IPPacketHeader.Layout.ipv4DestinationOffset)
        case 6 where packet.count >= IPPacketHeader.Layout.ipv6Header:
            return routes.lookup(v6NetworkBytes: packet.baseAddress! + IPPacketHeader.Layout.ipv6DestinationOffset)
        default:
            return nil
        }
    }

    private func stage(_ packet: UnsafeRawBufferPointer, for peer: Peer) -> Bool {
        guard peer.staged.count < Peer.stagedLimit else { return false }
        peer.staged.append(Array(packet))
        return true
    }

    // MARK: - Datagrams from the network

    /// Handles the datagram in `buffer[0..<length]` from `source`, applying the receive rules of
    /// PROTOCOL.md in order; every failure is a silent, counted drop. A transport packet is
    /// decrypted in place.
    public func decapsulate<Sink: DatagramSink>(
        _ buffer: UnsafeMutableRawBufferPointer, length: Int, from source: Endpoint, now: Instant,
        sink: inout Sink
    ) -> InboundAction {
        switch prepareReceive(buffer, length: length, from: source, now: now, sink: &sink) {
        case .finished(let action):
            return action
        case .open(let ticket):
            let opened = Device.open(buffer, ticket)
            return completeReceive(buffer, ticket, plaintextLength: opened, from: source, now: now, sink: &sink)
        }
    }

    /// Step 1 of receiving: classifies the datagram and, for a transport message, finds its
    /// keypair. Everything but transport data (handshakes, cookies, drops) finishes here.
    public func prepareReceive<Sink: DatagramSink>(
        _ buffer: UnsafeMutableRawBufferPointer, length: Int, from source: Endpoint, now: Instant,
        sink: inout Sink
    ) -> ReceivePlan {
        let datagram = UnsafeRawBufferPointer(rebasing: buffer[0..<length])
        guard length >= MessageSize.minimum else { return .finished(drop(.tooShort)) }
        guard let type = classify(datagram) else {
            let raw = LittleEndian.readUInt32(datagram, at: 0).flatMap(MessageType.init(rawValue:))
            return .finished(drop(raw == nil ? .unknownType : .badMessageLength))
        }
        switch type {
        case .transport:
            guard let receiver = LittleEndian.readUInt32(datagram, at: TransportMessage.receiverOffset),
                let counter = LittleEndian.readUInt64(datagram, at: TransportMessage.counterOffset)
            else { return .finished(drop(.tooShort)) }
            guard case .keypair(let peer, let keypair) = indices[receiver] else {
                return .finished(drop(.unknownReceiver))
            }
            guard !keypair.isExpired(at: now.monotonic), counter < Protocol.rejectAfterMessages else {
                return .finished(drop(.expiredKeypair, peer))
            }
            return .open(OpenTicket(peer: peer, keypair: keypair, counter: counter, length: length))
        case .initiation, .response:
            return .finished(receiveHandshake(datagram, type: type, from: source, now: now, sink: &sink))
        case .cookieReply:
            return .finished(receiveCookieReply(datagram, now: now))
        }
    }

    /// Step 2: opens the transport datagram in `buffer` (the one given to `prepareReceive`) in
    /// place; the plaintext length, or nil when the tag does not verify. Touches no device state,
    /// so it may run on any thread, outside whatever serializes the device.
    public static func open(_ buffer: UnsafeMutableRawBufferPointer, _ ticket: OpenTicket) -> Int? {
        ticket.key._withUnsafeGuaranteedRef { key in
            Transport.open(buffer, length: ticket.length, counter: ticket.counter, key: key)
        }
    }

    /// `open` for the datagram at `region[offset...]` (the buffer given to `prepareReceive` being
    /// `region[offset..<offset + length]`), with `scratch` to decrypt into. With `openingRoom`
    /// readable bytes in front of the datagram, `openingSpan(datagramLength:)` readable from its
    /// start and `openingScratchSize` of scratch, the keystream comes from one call and nothing
    /// is copied in (5% of a full-size open here); with less, it is plain `open`. Only the
    /// datagram's bytes and the scratch are written, so its neighbours in a GRO slot stay intact.
    public static func open(
        _ region: UnsafeMutableRawBufferPointer, datagramAt offset: Int, _ ticket: OpenTicket,
        scratch: UnsafeMutableRawBufferPointer
    ) -> Int? {
        ticket.key._withUnsafeGuaranteedRef { key in
            Transport.open(
                region, datagramAt: offset, length: ticket.length, counter: ticket.counter, key: key, scratch: scratch)
        }
    }

    /// Readable bytes in front of a datagram that let `open(_:datagramAt:_:scratch:)` skip its
    /// copies: the keystream's first block is XORed over the header and the bytes before it.
    public static let openingRoom = ChaChaPoly.roomInFront - TransportMessage.headerSize

    /// Readable bytes, from a datagram's start, that `open(_:datagramAt:_:scratch:)` reads for a
    /// datagram of `length` bytes: the message and the rest of its last keystream chunk.
    public static func openingSpan(datagramLength length: Int) -> Int {
        ChaChaPoly.roomySpan(messageLength: max(0, length - TransportMessage.headerSize - MessageSize.tag))
            - openingRoom
    }

    /// Readable bytes behind a datagram that `openingSpan` may reach: the rest of the last
    /// keystream chunk, less the tag.
    public static let openingTailRoom = ChaChaPoly.roomBehind - MessageSize.tag

    /// Scratch that `open(_:datagramAt:_:scratch:)` needs for any UDP datagram (65,535 bytes).
    public static let openingScratchSize = ChaChaPoly.roomySpan(messageLength: 65535)

    /// Step 3, back with the device's owner: the replay check, session confirmation, roaming,
    /// timers and the inner packet's source check, given what `open` returned.
    public func completeReceive<Sink: DatagramSink>(
        _ buffer: UnsafeMutableRawBufferPointer, _ ticket: OpenTicket, plaintextLength: Int?,
        from source: Endpoint, now: Instant, sink: inout Sink
    ) -> InboundAction {
        let (peer, keypair) = (ticket.peer, ticket.keypair)
        guard let plaintextLength else { return drop(.decryptFailed, peer) }
        guard keypair.replay.validate(ticket.counter) else { return drop(.replayed, peer) }

        // Authenticated from here on.
        if keypair === peer.next { confirm(peer, now: now, sink: &sink) }
        peer.endpoint = source
        peer.rxBytes &+= UInt64(ticket.length)
        authenticatedPacketReceived(peer, now: now)
        keepKeyFreshReceiving(peer, keypair: keypair, now: now, sink: &sink)
        if peer.pathMTU.received(keepalive: plaintextLength == 0, now: now.monotonic) { armPathMTU(peer) }
        if plaintextLength == 0 { return .consumed }  // keepalive

        let plaintext = UnsafeRawBufferPointer(
            rebasing: buffer[TransportMessage.headerSize..<(TransportMessage.headerSize + plaintextLength)])
        // First byte 0: a path MTU probe or its answer (a padded keepalive), never an IP packet.
        if let probe = PathMTUProbe.classify(plaintext) {
            receivedProbe(probe, from: peer, now: now, sink: &sink)
            return .consumed
        }
        guard let header = try? IPPacketHeader(parsing: plaintext) else { return drop(.badInnerPacket, peer) }
        guard let owner = routes.lookup(header.source), owner === peer else {
            return drop(.sourceNotAllowed, peer)
        }
        dataReceived(peer, now: now)
        // A SYN from the peer learns our side's limit too, so this host sends no larger segments.
        ICMPTooBig.clampMSS(
            UnsafeMutableRawBufferPointer(
                rebasing: buffer[TransportMessage.headerSize..<(TransportMessage.headerSize + header.length)]),
            mtu: peer.pathMTU.limit)
        return .deliver(offset: TransportMessage.headerSize, length: header.length)
    }

    /// A handshake message handled at once, in the steps the handshake worker runs apart
    /// (HandshakeSteps.swift). No queue stands in front of it, so it is never under load.
    private func receiveHandshake<Sink: DatagramSink>(
        _ message: UnsafeRawBufferPointer, type: MessageType, from source: Endpoint, now: Instant,
        sink: inout Sink
    ) -> InboundAction {
        guard let local, gate != nil else { return drop(.noPrivateKey) }
        let verdict = gate!.check(
            message, from: source, queueDepth: 0, capacity: 1, now: now.monotonic,
            cookieReply: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<CookieReplyMessage.size]))
        if case .drop(let reason, let cookieReply) = verdict {
            if cookieReply {
                sink.send(UnsafeRawBufferPointer(rebasing: scratch[0..<CookieReplyMessage.size]), to: source)
                events.cookieRepliesSent &+= 1
            }
            return drop(reason)
        }
        if type == .initiation {
            guard let identity = Noise.decryptInitiationIdentity(local: local, message: message) else {
                return drop(.handshakeFailed)
            }
            let initiator: InitiatorLookup
            switch lookUpInitiator(identity, now: now) {
            case .success(let found): initiator = found
            case .failure(let dropped): return .dropped(dropped.reason)
            }
            let response = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<ResponseMessage.size])
            guard let prepared = Device.prepareResponse(to: identity, initiator, now: now, into: response) else {
                return drop(.handshakeFailed, initiator.peer)
            }
            return commitInitiation(
                prepared, response: UnsafeRawBufferPointer(response), from: source, now: now, sink: &sink)
        }
        guard let initiation = lookUpResponse(message) else { return .dropped(.unknownReceiver) }
        guard let keys = Device.consumeResponse(message, initiation) else {
            return drop(.handshakeFailed, initiation.peer)
        }
        return commitResponse(initiation, keys: keys, messageLength: message.count, from: source, now: now, sink: &sink)
    }

    func receiveCookieReply(_ message: UnsafeRawBufferPointer, now: Instant) -> InboundAction {
        guard let receiver = LittleEndian.readUInt32(message, at: CookieReplyMessage.receiverOffset) else {
            return drop(.tooShort)
        }
        let peer: Peer
        switch indices[receiver] {
        case .handshake(let owner): peer = owner
        case .keypair(let owner, _): peer = owner
        case nil: return drop(.unknownReceiver)
        }
        guard peer.cookies.consumeReply(message, now: now.monotonic) else { return drop(.badCookieReply, peer) }
        // The responder is under load and wants our initiation again with mac2: the retransmit
        // timer sends it as soon as the 50-per-second spacing allows, rather than REKEY_TIMEOUT
        // later, and counts it as one of the attempts. One reply per initiation sent (the
        // generator forgets its mac1), so a reply cannot be replayed into more initiations.
        if peer.initiation != nil, let sent = peer.lastInitiationSent {
            peer.retransmitHandshakeAt = max(now.monotonic, sent + Protocol.rekeyInitiationMinimumInterval)
        }
        return .consumed
    }

    // MARK: - Sessions

    /// The responder's first packet under `next`: it becomes current, and waiting packets go out.
    private func confirm<Sink: DatagramSink>(_ peer: Peer, now: Instant, sink: inout Sink) {
        guard let next = peer.next else { return }
        if let old = peer.previous { indices[old.localIndex] = nil }
        peer.previous = peer.current
        peer.current = next
        peer.next = nil
        // The responder's handshake completes here, at key confirmation (wireguard-go receive.go:
        // ReceivedWithKeypair → timersHandshakeComplete).
        handshakeComplete(peer, now: now)
        _ = flushStaged(peer, now: now, sink: &sink)
    }

    /// Sends every staged packet under the current keypair; false when there were none.
    func flushStaged<Sink: DatagramSink>(_ peer: Peer, now: Instant, sink: inout Sink) -> Bool {
        guard !peer.staged.isEmpty, let endpoint = peer.endpoint else { return false }
        let packets = peer.staged
        peer.staged.removeAll(keepingCapacity: true)
        for packet in packets {
            guard let keypair = peer.sendingKeypair(at: now.monotonic) else { break }
            let body = UnsafeMutableRawBufferPointer(rebasing: scratch[Device.headroom...])
            packet.withUnsafeBytes { body.copyMemory(from: $0) }
            let length = Transport.seal(scratch, plaintextLength: packet.count, mtu: mtu, keypair: keypair)
            sink.send(UnsafeRawBufferPointer(rebasing: scratch[0..<length]), to: endpoint)
            dataSent(peer, keypair: keypair, datagramLength: length, isKeepalive: false, now: now, sink: &sink)
        }
        return true
    }

    func sendKeepalive<Sink: DatagramSink>(_ peer: Peer, now: Instant, sink: inout Sink) {
        guard let endpoint = peer.endpoint else { return }
        guard let keypair = peer.sendingKeypair(at: now.monotonic) else {
            // No session: a handshake brings one up, and its completion sends the keepalive.
            initiateHandshake(peer, now: now, isRetry: false, sink: &sink)
            return
        }
        let length = Transport.seal(scratch, plaintextLength: 0, mtu: mtu, keypair: keypair)
        sink.send(UnsafeRawBufferPointer(rebasing: scratch[0..<length]), to: endpoint)
        dataSent(peer, keypair: keypair, datagramLength: length, isKeepalive: true, now: now, sink: &sink)
    }

    /// Sends an initiation unless one went out less than REKEY_TIMEOUT ago (retries from the
    /// retransmit timer bypass that, keeping the 50-per-second ceiling).
    private func initiateHandshake<Sink: DatagramSink>(
        _ peer: Peer, now: Instant, isRetry: Bool, sink: inout Sink
    ) {
        guard let local, let endpoint = peer.endpoint else { return }
        if let last = peer.lastInitiationSent {
            let since = now.elapsed(since: last)
            if !isRetry && since < Protocol.rekeyTimeout { return }
            if since < Protocol.rekeyInitiationMinimumInterval { return }
        }
        if !isRetry { peer.handshakeAttempts = 0 }
        if defersInitiations { return deferInitiation(peer, now: now) }
        if let old = peer.initiation { indices[old.senderIndex] = nil }
        let index = newIndex()
        let message = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<InitiationMessage.size])
        guard
            let state = Noise.createInitiation(
                local: local, remote: peer.remote, senderIndex: index, timestamp: now.tai64n,
                ephemeral: .generate(), into: message)
        else {
            peer.initiation = nil
            return
        }
        peer.cookies.addMACs(to: message, now: now.monotonic)
        peer.initiation = state
        indices[index] = .handshake(peer)
        peer.lastInitiationSent = now.monotonic
        transmit(UnsafeRawBufferPointer(message), to: endpoint, peer: peer, now: now, sink: &sink)
        // timersHandshakeInitiated
        peer.retransmitHandshakeAt = now.monotonic + Protocol.rekeyTimeout + jitter()
    }

    /// Sends a handshake message and applies the "authenticated packet sent" timer events.
    func transmit<Sink: DatagramSink>(
        _ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint, peer: Peer, now: Instant, sink: inout Sink
    ) {
        sink.send(datagram, to: endpoint)
        peer.txBytes &+= UInt64(datagram.count)
        authenticatedPacketSent(peer, now: now)
    }

    private func clearSessions(_ peer: Peer) {
        for keypair in peer.keypairs { indices[keypair.localIndex] = nil }
        if let initiation = peer.initiation { indices[initiation.senderIndex] = nil }
        peer.current = nil
        peer.previous = nil
        peer.next = nil
        peer.initiation = nil
        peer.retransmitHandshakeAt = nil
        peer.sendKeepaliveAt = nil
        peer.newHandshakeAt = nil
        peer.zeroKeyMaterialAt = nil
        peer.handshakeAttempts = 0
        peer.lastInitiationSent = nil
    }

    /// A fresh random index not in use (collisions are retried; 2^32 space, few in use).
    func newIndex() -> UInt32 {
        while true {
            let candidate = SecureRandom.uint32()
            if indices[candidate] == nil { return candidate }
        }
    }

    func jitter() -> UInt64 { timerJitter.draw() }

    // MARK: - Timers (wireguard-go device/timers.go, event by event)

    /// After a transport packet (data or keepalive) went out under `keypair`.
    func dataSent<Sink: DatagramSink>(
        _ peer: Peer, keypair: Keypair, datagramLength: Int, isKeepalive: Bool, now: Instant, sink: inout Sink
    ) {
        peer.txBytes &+= UInt64(datagramLength)
        authenticatedPacketSent(peer, now: now)
        if !isKeepalive,
            peer.pathMTU.sent(
                length: datagramLength - TransportMessage.headerSize - MessageSize.tag, now: now.monotonic)
        {
            armPathMTU(peer)
        }
        if !isKeepalive, peer.newHandshakeAt == nil {
            // timersDataSent: expect an answer within KEEPALIVE + REKEY_TIMEOUT, else rehandshake.
            peer.newHandshakeAt = now.monotonic + Protocol.keepaliveTimeout + Protocol.rekeyTimeout + jitter()
        }
        // keepKeyFresh (sending side).
        let age = now.elapsed(since: keypair.created)
        if keypair.sendCounter > Protocol.rekeyAfterMessages || (keypair.isInitiator && age >= Protocol.rekeyAfterTime)
        {
            initiateHandshake(peer, now: now, isRetry: false, sink: &sink)
        }
    }

    private func keepKeyFreshReceiving<Sink: DatagramSink>(
        _ peer: Peer, keypair: Keypair, now: Instant, sink: inout Sink
    ) {
        guard keypair === peer.current, keypair.isInitiator, !peer.sentLastMinuteHandshake,
            now.elapsed(since: keypair.created) >= Protocol.rekeyOnReceiveAfterTime
        else { return }
        peer.sentLastMinuteHandshake = true
        initiateHandshake(peer, now: now, isRetry: false, sink: &sink)
    }

    /// timersDataReceived: answer within KEEPALIVE_TIMEOUT if we have nothing else to send.
    private func dataReceived(_ peer: Peer, now: Instant) {
        if peer.sendKeepaliveAt == nil {
            peer.sendKeepaliveAt = now.monotonic + Protocol.keepaliveTimeout
        } else {
            peer.needAnotherKeepalive = true
        }
    }

    /// timersAnyAuthenticatedPacketSent + Traversal.
    func authenticatedPacketSent(_ peer: Peer, now: Instant) {
        peer.sendKeepaliveAt = nil
        traversal(peer, now: now)
    }

    /// timersAnyAuthenticatedPacketReceived + Traversal.
    func authenticatedPacketReceived(_ peer: Peer, now: Instant) {
        peer.newHandshakeAt = nil
        traversal(peer, now: now)
    }

    private func traversal(_ peer: Peer, now: Instant) {
        if peer.persistentKeepalive > 0 {
            peer.persistentKeepaliveAt =
                now.monotonic + UInt64(peer.persistentKeepalive) * Protocol.nanosecondsPerSecond
        }
    }

    func handshakeComplete(_ peer: Peer, now: Instant) {
        peer.retransmitHandshakeAt = nil
        peer.handshakeAttempts = 0
        peer.sentLastMinuteHandshake = false
        peer.lastHandshakeUnixNanoseconds = now.unixNanoseconds
        // A session: the path MTU search can run (it stops when none is left).
        if peer.pathMTUAt == nil { armPathMTU(peer) }
    }

    func sessionDerived(_ peer: Peer, now: Instant) {
        events.handshakes &+= 1
        peer.zeroKeyMaterialAt = now.monotonic + Protocol.zeroKeysAfter
    }

    /// How many start-up initiations fall due per 100 ms (see `initiateHandshakes`): a handshake
    /// costs two X25519 operations under whatever serialises the device, so 10,000 peers are
    /// spread over about 16 s instead of holding it for 1.5 s at once.
    static let startupInitiationsPerStep = 64
    static let startupInitiationStep: UInt64 = 100_000_000

    /// Start-up and reload: arms a handshake with every peer that has an endpoint and nothing
    /// to send on, so that after a restart traffic resumes at once in both directions instead of
    /// after the peer's stale session times out (KEEPALIVE + REKEY_TIMEOUT, about 15 s, which is
    /// what wireguard-go waits). The first `startupInitiationsPerStep` fall due now, the rest in
    /// steps of 100 ms; an authenticated packet from the peer first cancels its turn. Returns
    /// how many were armed; `tick` sends them.
    @discardableResult
    public func initiateHandshakes(now: Instant) -> Int {
        var armed = 0
        for peer in peersByKey.values where peer.endpoint != nil && peer.sendingKeypair(at: now.monotonic) == nil {
            let step = UInt64(armed / Device.startupInitiationsPerStep)
            let due = now.monotonic + step * Device.startupInitiationStep
            peer.newHandshakeAt = min(peer.newHandshakeAt ?? due, due)
            armed += 1
        }
        return armed
    }

    /// Retries before giving up on a handshake: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
    static let maxHandshakeAttempts = Int(Protocol.rekeyAttemptTime / Protocol.rekeyTimeout)

    /// Runs every timer that is due. Call it at `timerLowerBound` (a timer runs no earlier than
    /// its deadline and no later than the next call), and at least every second or so for the
    /// rate limiter's sweep. Visits only the peers whose earliest timer has passed (a min-heap
    /// by deadline); each visited peer runs every check below, as a scan of every peer would,
    /// and is queued again at its next armed timer.
    public func tick<Sink: DatagramSink>(now: Instant, sink: inout Sink) {
        let time = now.monotonic
        duePeers.removeAll(keepingCapacity: true)
        timers.popDue(at: time, into: &duePeers)
        timerVisits += duePeers.count
        for peer in duePeers {
            if let due = peer.retransmitHandshakeAt, time >= due {
                peer.retransmitHandshakeAt = nil
                if peer.handshakeAttempts >= Device.maxHandshakeAttempts {
                    // Give up: drop what waited, and erase keys later if nothing else does.
                    for _ in peer.staged { peer.drops.count(.handshakeTimedOut); drops.count(.handshakeTimedOut) }
                    peer.staged.removeAll()
                    if let initiation = peer.initiation { indices[initiation.senderIndex] = nil }
                    peer.initiation = nil
                    if peer.zeroKeyMaterialAt == nil { peer.zeroKeyMaterialAt = time + Protocol.zeroKeysAfter }
                } else {
                    peer.handshakeAttempts += 1
                    initiateHandshake(peer, now: now, isRetry: true, sink: &sink)
                }
            }
            if let due = peer.sendKeepaliveAt, time >= due {
                peer.sendKeepaliveAt = nil
                sendKeepalive(peer, now: now, sink: &sink)
                if peer.needAnotherKeepalive {
                    peer.needAnotherKeepalive = false
                    peer.sendKeepaliveAt = time + Protocol.keepaliveTimeout
                }
            }
            if let due = peer.newHandshakeAt, time >= due {
                peer.newHandshakeAt = nil
                initiateHandshake(peer, now: now, isRetry: false, sink: &sink)
            }
            if let due = peer.zeroKeyMaterialAt, time >= due {
                peer.zeroKeyMaterialAt = nil
                clearSessions(peer)
            }
            if let due = peer.persistentKeepaliveAt, time >= due {
                peer.persistentKeepaliveAt = nil
                sendKeepalive(peer, now: now, sink: &sink)
            }
            if let due = peer.pathMTUAt, time >= due {
                peer.pathMTUAt = nil
                stepPathMTU(peer, now: now, sink: &sink)
            }
            timers.reschedule(peer)
        }
        timers.compact(livePeers: peersByKey.count)
        gate?.collectGarbage(now: time)
    }

    /// The earliest armed timer over all peers, or nil when none is armed (a scan of every
    /// peer: for tests and diagnostics; the event loop uses `timerLowerBound`).
    public var nextDeadline: UInt64? {
        peersByKey.values.compactMap { $0.earliestTimer }.min()
    }

    /// No timer is armed before this instant (nil: none is armed). O(1); it may be early (an
    /// entry whose timer moved later since), never late, so a wake-up at it is never too late.
    public var timerLowerBound: UInt64? { timers.earliest }

    // MARK: - Drops

    /// Counts a drop decided outside the core (the I/O layer's offload parsing and TUN writes).
    public func countDrop(_ reason: DropReason, times: UInt64 = 1) {
        drops.count(reason, times: times)
    }

    func drop(_ reason: DropReason, _ peer: Peer? = nil) -> OutboundAction {
        drops.count(reason)
        peer?.drops.count(reason)
        return .dropped(reason)
    }

    func drop(_ reason: DropReason, _ peer: Peer? = nil) -> InboundAction {
        drops.count(reason)
        peer?.drops.count(reason)
        return .dropped(reason)
    }
}

extension Peer: Equatable {
    /// Peers are identities: equal only to themselves.
    public static func == (lhs: Peer, rhs: Peer) -> Bool { lhs === rhs }
}
