// The receive path: a Device that has done a real handshake with a known peer, fed a sequence of
// datagrams. Each input runs from a fresh pair, so a reproducer replays exactly.
//
// Input: a mode byte (low nibble 0xf: first put the device under load with 130 mac1-valid
// handshake messages), then datagrams, each a kind byte, a source byte and its fields:
//   kind 0: raw bytes;  1: a real transport datagram from the peer carrying the given packet,
//   with one byte flipped unless the flip byte is 0xff;  2: a replay of an earlier real datagram;
//   3: a transport header with the live receiver index, then arbitrary counter and body;
//   4/5: an initiation/response of arbitrary bytes with a correct mac1 (a response may take
//   a live index);  6: a cookie reply with a live index;  7: the clock moves on (bounded).
// Invariants: an unauthenticated datagram (all but an intact kind 1) is never delivered, leaves
// the device's `get` view unchanged and causes no output but a cookie reply to its source while
// under load; an intact one delivers exactly the packet sent; at the end the session still
// carries traffic both ways.
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

/// Writes a correct mac1 (and zero mac2) into an initiation or response for device A.
func fixMAC1(_ message: inout [UInt8], now: Instant) {
    var generator = CookieGenerator(
        remote: RemoteIdentity(publicKey: keyA.publicKey, local: LocalIdentity(privateKey: keyB)))
    message.withUnsafeMutableBytes { generator.addMACs(to: $0, now: now.monotonic) }
}

func message(type: UInt8, size: Int, from input: inout FuzzInput) -> [UInt8] {
    var bytes = input.array(size)
    bytes[0] = type
    bytes[1] = 0
    bytes[2] = 0
    bytes[3] = 0
    return bytes
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    var now = Instant(monotonic: 1_000_000_000_000, unixNanoseconds: 1_700_000_000_000_000_000)
    let a = Device(privateKey: keyA)
    let b = Device(privateKey: keyB)
    let peerB = a.addPeer(keyB.publicKey)!
    a.addAllowedIP(IPPrefix(address: addressB, length: 32)!, for: peerB)
    a.setEndpoint(endpointB, for: peerB)
    let peerA = b.addPeer(keyA.publicKey)!
    b.addAllowedIP(IPPrefix(address: addressA, length: 32)!, for: peerA)
    b.setEndpoint(endpointA, for: peerA)

    // The handshake: B's first packet waits for it; A's first packet confirms the session at B.
    var sinkA = Collect()
    var sinkB = Collect()
    let first = packet(from: addressB, to: addressA, payload: [1, 2, 3])
    require(send(first, from: b, now: now, sink: &sinkB) == nil, "sent before a handshake")
    let initiation = sinkB.sent.removeFirst().bytes
    _ = receive(initiation, at: a, from: endpointB, now: now, sink: &sinkA)
    let response = sinkA.sent.removeFirst().bytes
    _ = receive(response, at: b, from: endpointA, now: now, sink: &sinkB)
    let staged = sinkB.sent.removeFirst().bytes
    let (delivered, firstPacket) = receive(staged, at: a, from: endpointB, now: now, sink: &sinkA)
    require(firstPacket == first, "the handshake did not deliver the first packet: \(delivered)")
    let liveIndex = receiverIndex(staged)
    let responderIndex = Array(initiation[4..<8])  // B's sender index, the receiver of A's response
    var real: [[UInt8]] = [initiation, staged]
    var elapsed: UInt64 = 0

    let mode = input.byte()
    var underLoad = false
    if mode & 0x0f == 0x0f {
        // 130 responses with a correct mac1 and an unknown receiver: the device counts them as
        // handshake load without any Diffie-Hellman.
        for count in 0..<130 {
            var junk = [UInt8](repeating: UInt8(truncatingIfNeeded: count), count: 92)
            junk[0] = 2
            junk[1...3] = [0, 0, 0]
            fixMAC1(&junk, now: now)
            var sink = Collect()
            _ = receive(junk, at: a, from: attacker, now: now, sink: &sink)
        }
        underLoad = true
    }

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
            datagram = [4, 0, 0, 0] + liveIndex + [UInt8](input.take(8 + Int(input.byte())))
        case 4:
            datagram = message(type: 1, size: 148, from: &input)
            fixMAC1(&datagram, now: now)
        case 5:
            datagram = message(type: 2, size: 92, from: &input)
            if sourceByte & 2 != 0 { datagram[8..<12] = responderIndex[...] }
            fixMAC1(&datagram, now: now)
        case 6:
            datagram = message(type: 3, size: 64, from: &input)
            datagram[4..<8] = (sourceByte & 2 != 0 ? responderIndex : liveIndex)[...]
        default:
            let step = UInt64(input.byte()) * 10_000_000  // up to 2.55 s
            if elapsed + step < 100 * 1_000_000_000 {
                elapsed += step
                now = now.advanced(by: step)
                if step >= 1_000_000_000 { underLoad = false }
            }
            continue
        }
        let before = view(a)
        var sink = Collect()
        let (action, opened) = receive(datagram, at: a, from: source, now: now, sink: &sink)
        require(opened == nil, "an unauthenticated datagram (kind \(kind)) was delivered: \(action)")
        require(view(a) == before, "an unauthenticated datagram (kind \(kind)) changed the device: \(action)")
        for (bytes, to) in sink.sent {
            require(
                underLoad && bytes.count == 64 && bytes[0] == 3 && to == source,
                "an unauthenticated datagram (kind \(kind)) made the device send \(bytes.count) bytes")
        }
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
    return 0
}

runFuzzer { data, size in fuzzOne(data, size) }
