// The receive path: a Device that has done a real handshake with a known peer, fed a sequence of
// datagrams the way the tunnel feeds it: transport and cookie replies straight to the device,
// initiations and responses first through a handshake gate (mac1, and under load mac2, cookie
// replies and the per-source rate limit), as the handshake worker does.
//
// Input: a mode byte (low nibble 0xf: the gate sees a deep handshake queue, so it is under load),
// then datagrams, each a kind byte, a source byte and its fields:
//   kind 0: raw bytes;  1: a real transport datagram from the peer carrying the given packet,
//   with one byte flipped unless the flip byte is 0xff;  2: a replay of an earlier real datagram;
//   3: a transport header with the live receiver index, then arbitrary counter and body;
//   4/5: an initiation/response of arbitrary bytes with a correct mac1, and a correct mac2 once
//   the gate has given that source a cookie (a response may take a live index);  6: a cookie
//   reply with a live index;  7: the clock moves on (bounded).
// Invariants: an unauthenticated datagram (all but an intact kind 1) is never delivered, leaves
// the device's `get` view unchanged, and causes no output but the gate's 64-byte cookie reply to
// its source while under load; an intact one delivers exactly the packet sent; at the end the
// session still carries traffic both ways.
//
// The handshake (nine X25519 operations) was most of an input's time, so while fuzzing a pair
// serves up to `Pair.reuseLimit` inputs, as long as the clock has not moved: an input that does
// not move it leaves nothing behind that the next one can see except the session's counters
// (and the peer's endpoint, which is put back). A reproducer given as a file runs on a fresh pair.
import FuzzSupport
import Glibc
import TunnelCore
import TunnelCrypto

func key(_ byte: UInt8) -> PrivateKey {
    PrivateKey(secret: SecretKey { $0.initializeMemory(as: UInt8.self, repeating: byte) })
}

let keyA = key(0x11)  // the device under test
let keyB = key(0x22)  // its peer
let endpointA = Endpoint(IPAddress("198.18.0.1")!, 51820)
let endpointB = Endpoint(IPAddress("198.18.0.2")!, 51820)
let attacker = Endpoint(IPAddress("203.0.113.7")!, 4444)
let addressA = IPAddress("198.18.1.1")!
let addressB = IPAddress("198.18.1.2")!

extension Endpoint {
    init(_ address: IPAddress, _ port: UInt16) { self.init(address: address, port: port) }
}

struct Collect: DatagramSink {
    var sent: [(bytes: [UInt8], to: Endpoint)] = []
    mutating func send(_ datagram: UnsafeRawBufferPointer, to endpoint: Endpoint) {
        sent.append(([UInt8](datagram), endpoint))
    }
}

/// An IPv4 packet from `source` to `destination` with `payload` (UDP-ish; the core only routes).
func packet(from source: IPAddress, to destination: IPAddress, payload: [UInt8]) -> [UInt8] {
    let total = 20 + payload.count
    var bytes: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 0, 0x40, 0, 64, 17, 0, 0]
    bytes += source.networkBytes + destination.networkBytes + payload
    return bytes
}

/// `device` sends `packet` through `encapsulate`: the datagram, or nil when staged or dropped.
func send(_ packet: [UInt8], from device: Device, now: Instant, sink: inout Collect) -> [UInt8]? {
    let buffer = UnsafeMutableRawBufferPointer.allocate(
        byteCount: Device.headroom + packet.count + Device.tailroom, alignment: 16)
    defer { buffer.deallocate() }
    (buffer.baseAddress! + Device.headroom).copyMemory(from: packet, byteCount: packet.count)
    guard case .send(let length, _) = device.encapsulate(buffer, packetLength: packet.count, now: now, sink: &sink)
    else { return nil }
    return [UInt8](buffer[0..<length])
}

/// `device` receives `datagram` in a buffer of exactly its size: the action and, when delivered,
/// the packet.
func receive(
    _ datagram: [UInt8], at device: Device, from source: Endpoint, now: Instant, sink: inout Collect
)
    -> (InboundAction, [UInt8]?)
{
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, datagram.count), alignment: 16)
    defer { buffer.deallocate() }
    buffer.copyMemory(from: datagram.withUnsafeBytes { $0 })
    let action = device.decapsulate(buffer, length: datagram.count, from: source, now: now, sink: &sink)
    if case .deliver(let offset, let length) = action {
        return (action, [UInt8](buffer[offset..<offset + length]))
    }
    return (action, nil)
}

/// What the device shows of itself and its peer: the `get` reply.
func view(_ device: Device) -> String { UAPI.get(device: device, listenPort: 51820) }

/// The peer's index for our session: the receiver index of its transport datagrams.
func receiverIndex(_ datagram: [UInt8]) -> [UInt8] { Array(datagram[4..<8]) }

/// B's MACs towards A: a correct mac1 on any initiation or response, and mac2 once it holds a cookie.
let mac1Maker = CookieGenerator(
    remote: RemoteIdentity(publicKey: keyA.publicKey, local: LocalIdentity(privateKey: keyB)))

/// Writes `generator`'s mac1 (and mac2, or zeros) into an initiation or response for device A.
func addMACs(_ message: inout [UInt8], with generator: inout CookieGenerator, now: Instant) {
    _ = message.withUnsafeMutableBytes { generator.addMACs(to: $0, now: now.monotonic) }
}

func message(type: UInt8, size: Int, from input: inout FuzzInput) -> [UInt8] {
    var bytes = input.array(size)
    bytes[0] = type
    bytes[1] = 0
    bytes[2] = 0
    bytes[3] = 0
    return bytes
}

/// Two devices after a real handshake: A, under test, and its peer B.
final class Pair {
    /// Inputs one pair serves while fuzzing.
    static let reuseLimit = 64
    /// The handshake gate's queue, as the handshake worker's (`HandshakeWorker.capacity`).
    static let queueCapacity = 4096

    let a = Device(privateKey: keyA)
    let b = Device(privateKey: keyB)
    let peerB: Peer
    /// When the handshake was done; inputs that reuse the pair start here too.
    let start = Instant(monotonic: 1_000_000_000_000, unixNanoseconds: 1_700_000_000_000_000_000)
    /// B's initiation and its first (staged) transport datagram, for replays.
    let initiation: [UInt8]
    let staged: [UInt8]
    /// A's index for the session (the receiver of B's transport datagrams).
    let liveIndex: [UInt8]
    /// B's sender index, the receiver of A's response.
    let responderIndex: [UInt8]
    var inputs = 0

    init() {
        peerB = a.addPeer(keyB.publicKey)!
        a.addAllowedIP(IPPrefix(address: addressB, length: 32)!, for: peerB)
        a.setEndpoint(endpointB, for: peerB)
        let peerA = b.addPeer(keyA.publicKey)!
        b.addAllowedIP(IPPrefix(address: addressA, length: 32)!, for: peerA)
        b.setEndpoint(endpointA, for: peerA)

        // B's first packet waits for the handshake; A's first packet confirms the session at B.
        var sinkA = Collect()
        var sinkB = Collect()
        let first = packet(from: addressB, to: addressA, payload: [1, 2, 3])
        require(send(first, from: b, now: start, sink: &sinkB) == nil, "sent before a handshake")
        initiation = sinkB.sent.removeFirst().bytes
        _ = receive(initiation, at: a, from: endpointB, now: start, sink: &sinkA)
        let response = sinkA.sent.removeFirst().bytes
        _ = receive(response, at: b, from: endpointA, now: start, sink: &sinkB)
        staged = sinkB.sent.removeFirst().bytes
        let (delivered, firstPacket) = receive(staged, at: a, from: endpointB, now: start, sink: &sinkA)
        require(firstPacket == first, "the handshake did not deliver the first packet: \(delivered)")
        liveIndex = receiverIndex(staged)
        responderIndex = Array(initiation[4..<8])
    }
}

/// True when libFuzzer was given a file to run (a reproducer), not a corpus directory to fuzz.
let replaying = CommandLine.arguments.dropFirst().contains { argument in
    var status = stat()
    return !argument.hasPrefix("-") && stat(argument, &status) == 0 && status.st_mode & S_IFMT == S_IFREG
}
nonisolated(unsafe) var reusable: Pair?

/// A's handshake gate, as the handshake worker runs it in front of the device: `.admit`, or the
/// drop with the cookie reply it wrote into `reply`.
func gated(
    _ datagram: [UInt8], gate: inout HandshakeGate, underLoad: Bool, from source: Endpoint, now: Instant,
    reply: UnsafeMutableRawBufferPointer
) -> HandshakeGate.Verdict {
    datagram.withUnsafeBytes { message in
        gate.check(
            message, from: source, queueDepth: underLoad ? Pair.queueCapacity / 2 : 0, capacity: Pair.queueCapacity,
            now: now.monotonic, cookieReply: reply)
    }
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let pair = reusable ?? Pair()
    reusable = nil
    pair.inputs += 1
    let (a, b) = (pair.a, pair.b)
    var now = pair.start
    var sinkB = Collect()
    var real: [[UInt8]] = [pair.initiation, pair.staged]
    var elapsed: UInt64 = 0
    // The gate and a sender that takes in its cookie replies, as a peer retrying under load would.
    var gate = HandshakeGate(local: LocalIdentity(privateKey: keyA))
    var forger = mac1Maker
    let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: CookieReplyMessage.size, alignment: 16)
    defer { reply.deallocate() }

    let underLoad = input.byte() & 0x0f == 0x0f
    var steps = 0
    while !input.isEmpty && steps < 32 {
        steps += 1
        let kind = input.byte() % 8
        let sourceByte = input.byte()
        let source = sourceByte & 1 == 0 ? endpointB : Endpoint(IPAddress.v4(0xcb00_7100 | UInt32(sourceByte)), 4444)
        var datagram: [UInt8]
        switch kind {
        case 0:
            datagram = [UInt8](input.take(Int(input.byte()) * 2))
        case 1:
            let payload = [UInt8](input.take(Int(input.byte())))
            let flip = input.byte()
            let sent = packet(from: addressB, to: addressA, payload: payload)
            guard let sealed = send(sent, from: b, now: now, sink: &sinkB) else {
                require(false, "the peer has no session to send on")
                return 0
            }
            datagram = sealed
            if flip == 0xff {
                real.append(sealed)
                let before = view(a)
                var sink = Collect()
                let (action, opened) = receive(datagram, at: a, from: source, now: now, sink: &sink)
                require(opened == sent, "an intact datagram was not delivered as sent: \(action)")
                require(sink.sent.isEmpty, "an intact datagram made the device send something")
                require(view(a) != before, "an intact datagram did not count its bytes")
                continue
            }
            datagram[Int(flip) % datagram.count] ^= 1 << (flip % 8)
        case 2:
            datagram = real[Int(input.byte()) % real.count]
        case 3:
            datagram = [4, 0, 0, 0] + pair.liveIndex + [UInt8](input.take(8 + Int(input.byte())))
        case 4:
            datagram = message(type: 1, size: 148, from: &input)
            addMACs(&datagram, with: &forger, now: now)
        case 5:
            datagram = message(type: 2, size: 92, from: &input)
            if sourceByte & 2 != 0 { datagram[8..<12] = pair.responderIndex[...] }
            addMACs(&datagram, with: &forger, now: now)
        case 6:
            datagram = message(type: 3, size: 64, from: &input)
            datagram[4..<8] = (sourceByte & 2 != 0 ? pair.responderIndex : pair.liveIndex)[...]
        default:
            let step = UInt64(input.byte()) * 10_000_000  // up to 2.55 s
            if elapsed + step < 100 * 1_000_000_000 {
                elapsed += step
                now = now.advanced(by: step)
            }
            continue
        }
        let before = view(a)
        if datagram.count >= 4, datagram[0] == 1 || datagram[0] == 2, datagram[1...3] == [0, 0, 0] {
            let verdict = gated(datagram, gate: &gate, underLoad: underLoad, from: source, now: now, reply: reply)
            if case .drop(_, let cookieReply) = verdict {
                require(!cookieReply || underLoad, "the gate sent a cookie reply while not under load")
                if cookieReply {
                    require(reply[0] == 3, "the gate's cookie reply is not a cookie reply")
                    _ = forger.consumeReply(UnsafeRawBufferPointer(reply), now: now.monotonic)
                }
                continue
            }
        }
        var sink = Collect()
        let (action, opened) = receive(datagram, at: a, from: source, now: now, sink: &sink)
        require(opened == nil, "an unauthenticated datagram (kind \(kind)) was delivered: \(action)")
        require(view(a) == before, "an unauthenticated datagram (kind \(kind)) changed the device: \(action)")
        require(sink.sent.isEmpty, "an unauthenticated datagram (kind \(kind)) made the device send something")
    }

    // The session survived: B to A, and A to B.
    let last = packet(from: addressB, to: addressA, payload: [9, 9])
    guard let sealed = send(last, from: b, now: now, sink: &sinkB) else { return 0 }
    var sink = Collect()
    let (_, opened) = receive(sealed, at: a, from: endpointB, now: now, sink: &sink)
    require(opened == last, "after the input the peer's packets no longer arrive")
    let back = packet(from: addressA, to: addressB, payload: [8])
    if let reply = send(back, from: a, now: now, sink: &sink) {
        let (_, returned) = receive(reply, at: b, from: endpointA, now: now, sink: &sinkB)
        require(returned == back, "after the input the device's packets no longer reach the peer")
    } else {
        require(false, "after the input the device has no session to send on")
    }
    // Reused only while the clock stood still; an intact datagram from elsewhere moved the
    // peer's endpoint (roaming), which is put back.
    if !replaying && elapsed == 0 && pair.inputs < Pair.reuseLimit {
        a.setEndpoint(endpointB, for: pair.peerB)
        reusable = pair
    }
    return 0
}

runFuzzer { data, size in fuzzOne(data, size) }
