import TunnelCrypto

// A received handshake message in steps, so that its Diffie-Hellman and BLAKE2s work runs outside
// whatever serialises the device (the tunnel's engine lock) and only the look-ups and the commit of
// the result run inside it:
//
//   initiation:  Noise.decryptInitiationIdentity (X25519)  ->  lookUpInitiator (device)
//                ->  prepareResponse (X25519 x3, BLAKE2s)   ->  commitInitiation (device)
//   response:    lookUpResponse (device)  ->  consumeResponse (X25519 x2)  ->  commitResponse (device)
//
// The commit re-checks what may have changed in between (the peer removed, its keys changed, a
// newer initiation committed first), so the protocol's checks hold whatever ran meanwhile:
// replay by TAI64N timestamp, at most one initiation per peer per 20 ms, the receiver index of a
// response. `Device.decapsulate` runs the same steps back to back.

/// The configured peer an initiation comes from, as the device knew it at the look-up.
public struct InitiatorLookup {
    public let peer: Peer
    let remote: RemoteIdentity
    /// A copy of the peer's generator: the response's MACs are made from it outside the device.
    let cookies: CookieGenerator
    /// Our public key at the look-up: a response made under another key is not committed.
    let localKey: PublicKey
}

/// A handshake message dropped (and counted) at a look-up, and why.
public struct HandshakeDropped: Error, Equatable {
    public let reason: DropReason
}

/// A response to an initiation, made and MAC'd outside the device, waiting for `commitInitiation`.
public struct PreparedResponse {
    let initiator: InitiatorLookup
    let initiation: ConsumedInitiation
    let keys: TransportKeys
    let mac1: Bytes16
}

/// Our outstanding initiation a response names by its receiver index.
public struct ResponseLookup {
    public let peer: Peer
    let state: InitiationState
    let local: LocalIdentity
    let remote: RemoteIdentity
}

extension Device {
    /// Step 2 of an initiation, with the device: the peer whose static key `identity` decrypted
    /// to. Fails, counted, when no peer has it (`handshakeFailed`) or that peer's last initiation
    /// was accepted less than 20 ms ago (`initiationFlood`; checked again at the commit).
    public func lookUpInitiator(
        _ identity: InitiationIdentity, now: Instant
    ) -> Result<InitiatorLookup, HandshakeDropped> {
        guard let local, let peer = peersByKey[identity.remoteStatic] else {
            _ = drop(.handshakeFailed) as InboundAction
            return .failure(HandshakeDropped(reason: .handshakeFailed))
        }
        if let last = peer.lastInitiationConsumed, now.elapsed(since: last) < Protocol.rekeyInitiationMinimumInterval {
            _ = drop(.initiationFlood, peer) as InboundAction
            return .failure(HandshakeDropped(reason: .initiationFlood))
        }
        return .success(
            InitiatorLookup(peer: peer, remote: peer.remote, cookies: peer.cookies, localKey: local.publicKey))
    }

    /// Step 3, outside the device: authenticates the initiation (static-static and timestamp) and
    /// writes our response, MACs included, into `out` (92 bytes). Nil when it does not
    /// authenticate (the caller counts `handshakeFailed` for the peer). Touches no device state.
    public static func prepareResponse(
        to identity: InitiationIdentity, _ initiator: InitiatorLookup, now: Instant,
        into out: UnsafeMutableRawBufferPointer
    ) -> PreparedResponse? {
        guard let initiation = Noise.consumeInitiation(identity, remote: initiator.remote) else { return nil }
        // Random, and checked free at the commit: a collision (a few live indices in 2^32) fails
        // that one handshake, and the peer retries.
        let index = SecureRandom.uint32()
        guard
            let keys = Noise.createResponse(
                for: initiation, remote: initiator.remote, senderIndex: index, ephemeral: .generate(), into: out)
        else { return nil }
        var cookies = initiator.cookies
        let mac1 = cookies.addMACs(
            to: UnsafeMutableRawBufferPointer(rebasing: out[0..<ResponseMessage.size]), now: now.monotonic)
        return PreparedResponse(initiator: initiator, initiation: initiation, keys: keys, mac1: mac1)
    }

    /// Step 4, with the device: installs the responder's keypair (as `next`, until the peer's first
    /// transport packet confirms it) and sends `response` through `sink`, after checking again
    /// that the peer and its keys are the ones the response was made for, that the timestamp is
    /// newer than any accepted, and that no initiation of the peer was accepted in the last 20 ms.
    public func commitInitiation<Sink: DatagramSink>(
        _ prepared: PreparedResponse, response: UnsafeRawBufferPointer, from source: Endpoint, now: Instant,
        sink: inout Sink
    ) -> InboundAction {
        let peer = prepared.initiator.peer
        guard peersByKey[peer.publicKey] === peer, local?.publicKey == prepared.initiator.localKey,
            peer.remote.presharedKey == prepared.initiator.remote.presharedKey,
            indices[prepared.keys.localIndex] == nil
        else { return drop(.handshakeFailed, peer) }
        if let latest = peer.latestTimestamp, prepared.initiation.timestamp <= latest {
            return drop(.staleTimestamp, peer)
        }
        if let last = peer.lastInitiationConsumed, now.elapsed(since: last) < Protocol.rekeyInitiationMinimumInterval {
            return drop(.initiationFlood, peer)
        }
        peer.latestTimestamp = prepared.initiation.timestamp
        peer.lastInitiationConsumed = now.monotonic
        peer.cookies.recordSent(mac1: prepared.mac1)

        let keypair = Keypair(keys: prepared.keys, isInitiator: false, created: now.monotonic)
        if let stale = peer.next { indices[stale.localIndex] = nil }
        peer.next = keypair
        indices[prepared.keys.localIndex] = .keypair(peer, keypair)

        peer.endpoint = source
        peer.rxBytes &+= UInt64(InitiationMessage.size)
        authenticatedPacketReceived(peer, now: now)
        sessionDerived(peer, now: now)
        transmit(response, to: source, peer: peer, now: now, sink: &sink)
        return .consumed
    }

    /// Step 1 of a response, with the device: our outstanding initiation it answers. Nil, counted
    /// as `unknownReceiver`, when its receiver index names none.
    public func lookUpResponse(_ message: UnsafeRawBufferPointer) -> ResponseLookup? {
        guard let local, let receiver = LittleEndian.readUInt32(message, at: ResponseMessage.receiverOffset),
            case .handshake(let peer) = indices[receiver], let state = peer.initiation,
            state.senderIndex == receiver
        else {
            _ = drop(.unknownReceiver) as InboundAction
            return nil
        }
        return ResponseLookup(peer: peer, state: state, local: local, remote: peer.remote)
    }

    /// Step 2, outside the device: the initiator's transport keys, or nil when the response does
    /// not authenticate. Touches no device state.
    public static func consumeResponse(_ message: UnsafeRawBufferPointer, _ lookup: ResponseLookup) -> TransportKeys? {
        Noise.consumeResponse(state: lookup.state, local: lookup.local, remote: lookup.remote, message: message)
    }

    /// Step 3, with the device: the handshake is complete. Installs the keypair as current and
    /// sends what waited (or a keepalive) through `sink`, when the initiation answered is still
    /// the peer's outstanding one under the same keys.
    public func commitResponse<Sink: DatagramSink>(
        _ lookup: ResponseLookup, keys: TransportKeys, messageLength: Int, from source: Endpoint, now: Instant,
        sink: inout Sink
    ) -> InboundAction {
        let peer = lookup.peer
        let receiver = lookup.state.senderIndex
        guard case .handshake(let owner) = indices[receiver], owner === peer,
            peer.initiation?.senderIndex == receiver, local?.publicKey == lookup.local.publicKey,
            peer.remote.presharedKey == lookup.remote.presharedKey
        else { return drop(.unknownReceiver, peer) }
        indices[receiver] = nil
        peer.initiation = nil

        let keypair = Keypair(keys: keys, isInitiator: true, created: now.monotonic)
        // Crossing initiations: the peer may already be sending under the keypair we derived as
        // its responder (`next`, unconfirmed here). Demote it to `previous` rather than drop it,
        // so those packets still open; it takes the place `current` would have taken
        // (wireguard-go noise-protocol.go, BeginSymmetricSession).
        if let old = peer.previous { indices[old.localIndex] = nil }
        if let unconfirmed = peer.next {
            if let displaced = peer.current { indices[displaced.localIndex] = nil }
            peer.previous = unconfirmed
            peer.next = nil
        } else {
            peer.previous = peer.current
        }
        peer.current = keypair
        indices[keys.localIndex] = .keypair(peer, keypair)

        peer.endpoint = source
        peer.rxBytes &+= UInt64(messageLength)
        handshakeComplete(peer, now: now)
        sessionDerived(peer, now: now)
        authenticatedPacketReceived(peer, now: now)
        // Key confirmation for the responder: staged packets, or else a keepalive, go out now.
        if !flushStaged(peer, now: now, sink: &sink) { sendKeepalive(peer, now: now, sink: &sink) }
        return .consumed
    }

    /// A cookie reply, with the device (its XChaCha20-Poly1305 open is the only crypto here).
    public func consumeCookieReply(_ message: UnsafeRawBufferPointer, now: Instant) -> InboundAction {
        receiveCookieReply(message, now: now)
    }

    /// Counts drops decided off the device and the cookie replies sent from there (the handshake
    /// worker counts in batches).
    public func countDrops(_ counters: DropCounters, cookieRepliesSent: UInt64 = 0) {
        for (reason, times) in counters.nonzero { countDrop(reason, times: times) }
        events.cookieRepliesSent &+= cookieRepliesSent
    }

    /// Counts a drop of `peer`'s decided off the device.
    public func countDrop(_ reason: DropReason, for peer: Peer) {
        _ = drop(reason, peer) as InboundAction
    }
}

/// An initiation the device decided to send, to be made outside it (`Device.prepareInitiation`).
public struct InitiationRequest {
    public let peer: Peer
    let local: LocalIdentity
    let remote: RemoteIdentity
    let cookies: CookieGenerator
}

/// An initiation made outside the device, waiting for `Device.commitInitiationSent`.
public struct PreparedInitiation {
    let request: InitiationRequest
    let state: InitiationState
    let mac1: Bytes16
}

extension Device {
    /// Under `defersInitiations`: the timers and rate rules of an initiation apply now (so
    /// nothing asks for a second one meanwhile); the peer waits in `pendingInitiations` for the
    /// owner's worker to make it.
    func deferInitiation(_ peer: Peer, now: Instant) {
        peer.lastInitiationSent = now.monotonic
        // timersHandshakeInitiated
        peer.retransmitHandshakeAt = now.monotonic + Protocol.rekeyTimeout + jitter()
        if pendingInitiationIDs.insert(ObjectIdentifier(peer)).inserted { pendingInitiations.append(peer) }
    }

    /// True once per run of pending initiations: the owner should wake its worker (after
    /// releasing its lock). Cheap: called after every engine call.
    public func announcesPendingInitiations() -> Bool {
        guard !pendingInitiations.isEmpty, !initiationsAnnounced else { return false }
        initiationsAnnounced = true
        return true
    }

    /// Step 1 of sending an initiation, with the device: the pending ones (cleared), as requests
    /// carrying what making them needs, appended to `requests`.
    public func takePendingInitiations(into requests: inout [InitiationRequest]) {
        defer {
            pendingInitiations.removeAll(keepingCapacity: true)
            pendingInitiationIDs.removeAll(keepingCapacity: true)
            initiationsAnnounced = false
        }
        guard let local else { return }
        for peer in pendingInitiations where peersByKey[peer.publicKey] === peer {
            requests.append(InitiationRequest(peer: peer, local: local, remote: peer.remote, cookies: peer.cookies))
        }
    }

    /// Step 2, outside the device: writes the initiation, MACs included, into `out` (148 bytes).
    /// Nil when the peer's key is low-order (no initiation can be made).
    public static func prepareInitiation(
        _ request: InitiationRequest, now: Instant, into out: UnsafeMutableRawBufferPointer
    ) -> PreparedInitiation? {
        // Random, and checked free at the commit (as for responses).
        guard
            let state = Noise.createInitiation(
                local: request.local, remote: request.remote, senderIndex: SecureRandom.uint32(),
                timestamp: now.tai64n, ephemeral: .generate(), into: out)
        else { return nil }
        var cookies = request.cookies
        let mac1 = cookies.addMACs(
            to: UnsafeMutableRawBufferPointer(rebasing: out[0..<InitiationMessage.size]), now: now.monotonic)
        return PreparedInitiation(request: request, state: state, mac1: mac1)
    }

    /// Step 3, with the device: the initiation becomes the peer's outstanding one (a response to
    /// the one before no longer completes) and is counted as sent; returns where to send it, or
    /// nil when the peer, its keys or our key changed meanwhile or the index is taken (the
    /// retransmit timer makes a new one).
    public func commitInitiationSent(_ prepared: PreparedInitiation, now: Instant) -> Endpoint? {
        let peer = prepared.request.peer
        guard peersByKey[peer.publicKey] === peer, let endpoint = peer.endpoint,
            local?.publicKey == prepared.request.local.publicKey,
            peer.remote.presharedKey == prepared.request.remote.presharedKey,
            indices[prepared.state.senderIndex] == nil
        else { return nil }
        if let old = peer.initiation { indices[old.senderIndex] = nil }
        peer.initiation = prepared.state
        indices[prepared.state.senderIndex] = .handshake(peer)
        peer.cookies.recordSent(mac1: prepared.mac1)
        peer.txBytes &+= UInt64(InitiationMessage.size)
        authenticatedPacketSent(peer, now: now)
        return endpoint
    }
}
