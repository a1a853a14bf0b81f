import TunnelCore

extension TunDevice.Offloads {
    /// `TUN_F_UDP_TUNNEL_GSO` (Linux 6.17+): the reader takes UDP tunnel (VXLAN, Geneve) GSO
    /// super-packets, described by the 24-byte `virtio_net_hdr_v1_hash_tunnel`.
    public static var udpTunnelSegmentation: TunDevice.Offloads { TunDevice.Offloads(rawValue: 0x080) }
    /// `TUN_F_UDP_TUNNEL_GSO_CSUM`: the same with the outer UDP checksum left to the reader.
    public static var udpTunnelSegmentationChecksum: TunDevice.Offloads { TunDevice.Offloads(rawValue: 0x100) }
}

/// Which offload paths run, for `show --json` ("offload"): the TUN's, decided once at start-up,
/// and the UDP socket's, read when the report is made.
public struct TunOffloadReport: Codable, Sendable, Equatable {
    /// The kernel took TCP segmentation offload on the TUN (`TUNSETOFFLOAD`): TCP crosses it as
    /// super-packets both ways; false with `TUNCTL_OFFLOAD=off` or a kernel that refused it.
    public var tunSegmentation: Bool
    /// The kernel hands over UDP tunnel super-packets (VXLAN inside the tunnel crosses the TUN
    /// once per 64 KiB and is segmented here); false means one read per tunnel datagram.
    public var udpTunnelGSO: Bool
    /// The UDP socket sends batches as GSO super-datagrams (`UDP_SEGMENT`) and takes them
    /// coalesced (`UDP_GRO`): read from the socket in use when the report is made, since a
    /// kernel that fails a GSO send turns it off for good, and a new `ListenPort` opens a new
    /// socket. Nil from a daemon that does not say.
    public var udpSegmentation: Bool?
    public var udpCoalescing: Bool?

    public init(tunSegmentation: Bool, udpTunnelGSO: Bool, udpSegmentation: Bool? = nil, udpCoalescing: Bool? = nil) {
        self.tunSegmentation = tunSegmentation
        self.udpTunnelGSO = udpTunnelGSO
        self.udpSegmentation = udpSegmentation
        self.udpCoalescing = udpCoalescing
    }
}

// Only the read side: Linux 6.18 refuses (EINVAL) a UDP tunnel super-packet *written* to a TUN,
// because `virtio_net_hdr_tnl_to_skb` wants the outer transport header at least ETH_HLEN + an IP
// header into the packet, which only a TAP has (checked by writing back what the TUN handed over:
// outer_th_offset 20 is refused, 34 accepted). So VXLAN received through the tunnel still goes to
// the TUN as UDP super-packets (USO) that the kernel cuts into datagrams before decapsulating.
extension TunDevice {
    /// Asks for UDP tunnel GSO on top of `offloads`: the 24-byte header first (the kernel reads
    /// the tunnel fields only from a header that large), then `TUNSETOFFLOAD`. On a kernel without
    /// it (EINVAL), puts the classic 10-byte header back and returns the error, so the caller can
    /// fall back to what it did before. Only with `hasVirtioHeader`.
    func enableUDPTunnelOffload(_ offloads: Offloads) throws(SystemError) {
        try setVirtioHeaderSize(TunnelVirtioHeader.size)
        do {
            try setOffloads(offloads.union([.udpTunnelSegmentation, .udpTunnelSegmentationChecksum]))
        } catch {
            try setVirtioHeaderSize(VirtioNetHeader.size)
            throw error
        }
    }
}
