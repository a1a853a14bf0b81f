import Glibc
import TunnelCore

/// Whether the daemon asks the kernel for offloads: TUN TSO/checksum (`IFF_VNET_HDR` +
/// `TUNSETOFFLOAD`) and UDP GSO/GRO. On by default; `TUNCTL_OFFLOAD=off` turns all of them off
/// (the tests run both ways), and any the kernel refuses fall back on their own.
public struct OffloadSettings: Sendable, Equatable {
    public var tun: Bool
    public var udp: Bool

    public static let all = OffloadSettings(tun: true, udp: true)
    public static let none = OffloadSettings(tun: false, udp: false)

    public static func fromEnvironment() -> OffloadSettings {
        guard let value = getenv("TUNCTL_OFFLOAD").map({ String(cString: $0) }) else { return .all }
        return ["off", "0", "no", "false"].contains(value.lowercased()) ? .none : .all
    }
}

/// Hands decrypted packets to the TUN device. With a virtio-net header, the TCP segments (and,
/// where the kernel takes UDP super-packets, the UDP datagrams) of one received batch are
/// coalesced into super-packets (GRO in userspace: one `writev` for up to 64 KiB, gathered from
/// the receive slots with no copy) and every other
/// packet goes out behind a header that marks it verified; without one, each packet is written
/// as it comes.
///
/// Ownership: `add` keeps only views of packets that live in the caller's receive batch, so the
/// caller must `flush` before that batch is reused. Each packet must have `headerSize` writable
/// bytes in front of it (the transport header's room: at least 64 bytes, `Device.openingRoom`
/// and the 16-byte transport header, or for a later datagram of a UDP GRO slot its own header and
/// the previous datagram's 16-byte tag).
/// Owned by the inbound queue; nothing here allocates after `init`.
struct TunWriter: ~Copyable {
    let virtio: Bool
    let capacity: Int
    /// The TUN's virtio-net header size: `VirtioNetHeader.size`, or `TunnelVirtioHeader.size` with
    /// UDP tunnel offload on.
    let headerSize: Int
    private var coalescer: GROCoalescer
    private let bases: UnsafeMutablePointer<UnsafeMutableRawPointer>
    private let lengths: UnsafeMutablePointer<Int>
    /// One super-packet's pieces for `writev`.
    private let vectors: UnsafeMutablePointer<iovec>
    private var count = 0
    /// Writes the TUN refused (full queue or an error) since `takeRefused()`.
    private var refused: UInt64 = 0

    /// - Parameters:
    ///   - capacity: packets queued between flushes.
    ///   - superPackets: super-packets one flush may build; past them, packets go one by one.
    ///   - mergesUDP: whether the TUN takes UDP super-packets (it accepted USO).
    ///   - headerSize: the TUN's virtio-net header size.
    init(capacity: Int, superPackets: Int, virtio: Bool, mergesUDP: Bool, headerSize: Int = VirtioNetHeader.size) {
        self.virtio = virtio
        self.capacity = capacity
        self.headerSize = headerSize
        // Every packet here passed its Poly1305 tag, which proves it is what the peer sealed, so
        // checksums are not verified again: not by the coalescer, and not by the kernel
        // (DATA_VALID below), as the kernel's WireGuard does for what it decrypts.
        coalescer = GROCoalescer(
            maximumPackets: capacity, maximumFlows: 8, maximumSuperPackets: superPackets, trustChecksums: true,
            mergesUDP: mergesUDP, headerRoom: headerSize)
        bases = .allocate(capacity: capacity)
        lengths = .allocate(capacity: capacity)
        vectors = .allocate(capacity: GROCoalescer.maximumSegments)
    }

    deinit {
        bases.deallocate()
        lengths.deallocate()
        vectors.deallocate()
    }

    /// The header in front of a single decrypted packet: its checksums need no verification.
    static let authenticated = VirtioNetHeader(flags: VirtioNetHeader.Flags.dataValid)

    /// Queues (or, without a virtio header, writes) `packet`.
    mutating func add(_ packet: UnsafeMutableRawBufferPointer, tun: TunDevice) {
        // A delivered packet is never empty (the core checked its IP header).
        guard let base = packet.baseAddress else { return }
        guard virtio else {
            write(UnsafeRawBufferPointer(packet), tun: tun)
            return
        }
        if count == capacity { flush(tun: tun) }
        bases[count] = base
        lengths[count] = packet.count
        count += 1
    }

    /// Coalesces and writes everything queued since the last flush.
    mutating func flush(tun: TunDevice) {
        guard virtio, count > 0 else { return }
        coalescer.reset()
        for index in 0..<count {
            _ = coalescer.add(UnsafeMutableRawBufferPointer(start: bases[index], count: lengths[index]), slot: index)
        }
        coalescer.finish()
        for output in 0..<coalescer.outputCount {
            switch coalescer.output(at: output) {
            case .packet(let slot):
                // Sound: the caller guarantees `headerSize` writable bytes before each packet.
                let record = UnsafeMutableRawBufferPointer(
                    start: bases[slot] - headerSize, count: lengths[slot] + headerSize)
                try? TunWriter.authenticated.write(to: record)
                if headerSize > VirtioNetHeader.size { TunnelVirtioHeader.clearExtension(bases[slot] - headerSize) }
                write(UnsafeRawBufferPointer(record), tun: tun)
            case .merged(let superPacket):
                write(coalescer.pieces(ofSuperPacket: superPacket), tun: tun)
            }
        }
        count = 0
    }

    /// The writes refused since the last call, for the drop counters; resets the count.
    mutating func takeRefused() -> UInt64 {
        defer { refused = 0 }
        return refused
    }

    private mutating func write(_ pieces: GROCoalescer.Pieces, tun: TunDevice) {
        // A super-packet has at most `maximumSegments` pieces: its first packet and the rest.
        precondition(pieces.count <= GROCoalescer.maximumSegments, "more pieces than iovecs")
        var count = 0
        var length = 0
        for piece in pieces {
            vectors[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: piece.baseAddress), iov_len: piece.count)
            count += 1
            length += piece.count
        }
        guard (try? tun.write(vectors: vectors, count: count, length: length)) == true else {
            refused &+= 1
            return
        }
    }

    private mutating func write(_ record: UnsafeRawBufferPointer, tun: TunDevice) {
        // A full TUN queue drops the packet, as a full link would; TCP recovers.
        guard (try? tun.write(record)) == true else {
            refused &+= 1
            return
        }
    }
}
