import Dispatch
import Glibc
import Logging
import Testing
import TunnelCore

@testable import TunnelIO

/// rtnetlink encoding and parsing against bytes written out by hand from the kernel's UAPI layout
/// (include/uapi/linux/netlink.h, rtnetlink.h, if_addr.h, if_link.h; little-endian hosts), so a
/// wrong struct, alignment or constant in Netlink.swift shows here rather than as EINVAL at run
/// time. The numbers below are facts of the ABI: RTM_NEWROUTE 24, RTM_DELROUTE 25, RTM_NEWADDR 20,
/// RTM_NEWLINK 16, RTM_DELLINK 17, NLMSG_ERROR 2, NLM_F_REQUEST 1, NLM_F_ACK 4, NLM_F_EXCL 0x200,
/// NLM_F_CREATE 0x400, NLM_F_CAPPED 0x100, NLM_F_ACK_TLVS 0x200, RTA_DST 1, RTA_OIF 4, IFA_ADDRESS 1,
/// IFA_LOCAL 2, IFLA_IFNAME 3, IFLA_MTU 4, NLMSGERR_ATTR_MSG 1.
@Suite struct NetlinkEncodingTests {
    private func le16(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xff), UInt8(value >> 8)] }
    private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * $0)) & 0xff) } }

    @Test func routeAddIPv4() throws {
        let prefix = try #require(IPPrefix("198.18.2.77/24"))
        let bytes = Netlink.route(.add, prefix, interfaceIndex: 7, sequence: 42)
        let expected: [UInt8] =
            // nlmsghdr: length 44, RTM_NEWROUTE, REQUEST|ACK|EXCL|CREATE, seq 42, pid 0
            le32(44) + le16(24) + le16(0x605) + le32(42) + le32(0)
            // rtmsg: AF_INET, dst_len 24, src_len 0, tos 0, table main (254), protocol boot (3),
            // scope link (253), type unicast (1), flags 0
            + [2, 24, 0, 0, 254, 3, 253, 1] + le32(0)
            // RTA_DST: host bits cleared; RTA_OIF 7
            + le16(8) + le16(1) + [198, 18, 2, 0]
            + le16(8) + le16(4) + le32(7)
        #expect(bytes == expected)
    }

    @Test func routeDeleteIPv6() throws {
        let prefix = try #require(IPPrefix("2001:db8:2::/64"))
        let bytes = Netlink.route(.delete, prefix, interfaceIndex: 3, sequence: 1)
        let address: [UInt8] = [0x20, 0x01, 0x0d, 0xb8, 0, 2] + [UInt8](repeating: 0, count: 10)
        let expected: [UInt8] =
            le32(56) + le16(25) + le16(0x5) + le32(1) + le32(0)
            // AF_INET6 (10), /64, table main, boot, scope nowhere (255), unicast
            + [10, 64, 0, 0, 254, 3, 255, 1] + le32(0)
            + le16(20) + le16(1) + address
            + le16(8) + le16(4) + le32(3)
        #expect(bytes == expected)
    }

    @Test func addressAddKeepsHostBits() throws {
        let prefix = try #require(IPPrefix("198.18.1.1/24"))
        let bytes = Netlink.address(.add, prefix, interfaceIndex: 9, sequence: 5)
        let expected: [UInt8] =
            le32(40) + le16(20) + le16(0x605) + le32(5) + le32(0)
            // ifaddrmsg: AF_INET, /24, flags 0, scope universe (0), index 9
            + [2, 24, 0, 0] + le32(9)
            + le16(8) + le16(2) + [198, 18, 1, 1]
            + le16(8) + le16(1) + [198, 18, 1, 1]
        #expect(bytes == expected)
    }

    @Test func setLinkMTUAndUp() {
        let bytes = Netlink.setLink(interfaceIndex: 4, mtu: 1420, up: true, sequence: 9)
        let expected: [UInt8] =
            le32(40) + le16(16) + le16(0x5) + le32(9) + le32(0)
            // ifinfomsg: AF_UNSPEC, pad, type 0, index 4, flags IFF_UP, change IFF_UP
            + [0, 0] + le16(0) + le32(4) + le32(1) + le32(1)
            + le16(8) + le16(4) + le32(1420)
        #expect(bytes == expected)
        // Without up: no flag changes, so the link's state is left alone.
        let mtuOnly = Netlink.setLink(interfaceIndex: 4, mtu: 9000, up: false, sequence: 9)
        #expect(Array(mtuOnly[24..<32]) == le32(0) + le32(0))
    }

    @Test func getLinkByNamePadsTheName() {
        let bytes = Netlink.getLink(interfaceIndex: 0, name: "wg0", sequence: 3)
        // "wg0\0" is 4 bytes: attribute length 8, no padding; message 16 + 16 + 8.
        #expect(bytes.count == 40)
        #expect(Array(bytes[0..<4]) == le32(40))
        #expect(Array(bytes[32..<40]) == le16(8) + le16(3) + Array("wg0".utf8) + [0])
        let odd = Netlink.getLink(interfaceIndex: 0, name: "wg10", sequence: 3)
        // "wg10\0" is 5 bytes: attribute length 9, padded to 12.
        #expect(odd.count == 44)
        #expect(Array(odd[32..<34]) == le16(9))
        #expect(Array(odd[0..<4]) == le32(44))
    }
}

@Suite struct NetlinkParsingTests {
    private func le16(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xff), UInt8(value >> 8)] }
    private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * $0)) & 0xff) } }

    private func parse(_ bytes: [UInt8]) -> [Netlink.Reply] {
        bytes.withUnsafeBytes { Netlink.parse($0) }
    }

    /// A capped error with an extended-ack message, as the kernel sends for `route add` of a
    /// route that exists: nlmsgerr (error -17, the request's header only), then the TLVs.
    @Test func cappedErrorWithExtendedAck() {
        let text = Array("Route exists".utf8) + [0]  // 13 bytes: attribute 17, padded to 20
        let requestHeader = le32(44) + le16(24) + le16(0x605) + le32(77) + le32(0)
        let attribute = le16(UInt16(4 + text.count)) + le16(1) + text + [0, 0, 0]
        let payload = le32(UInt32(bitPattern: -17)) + requestHeader + attribute
        let message = le32(UInt32(16 + payload.count)) + le16(2) + le16(0x300) + le32(77) + le32(1234) + payload
        #expect(parse(message) == [.ack(sequence: 77, errno: EEXIST, message: "Route exists")])
    }

    /// Not capped: the whole request is echoed before the TLVs, and must be skipped.
    @Test func uncappedErrorSkipsTheEchoedRequest() {
        let request = le32(24) + le16(16) + le16(0x5) + le32(8) + le32(0) + le32(0xdead_beef) + le32(0)
        let text = Array("bad".utf8) + [0]
        let payload = le32(UInt32(bitPattern: -22)) + request + le16(8) + le16(1) + text
        let message = le32(UInt32(16 + payload.count)) + le16(2) + le16(0x200) + le32(8) + le32(0) + payload
        #expect(parse(message) == [.ack(sequence: 8, errno: EINVAL, message: "bad")])
    }

    @Test func plainAckAndSeveralMessagesInOneDatagram() {
        let ack1 = le32(36) + le16(2) + le16(0x100) + le32(1) + le32(0) + le32(0) + [UInt8](repeating: 0, count: 16)
        let ack2 =
            le32(36) + le16(2) + le16(0x100) + le32(2) + le32(0) + le32(UInt32(bitPattern: -19))
            + [UInt8](repeating: 0, count: 16)
        let done = le32(20) + le16(3) + le16(0) + le32(3) + le32(0) + le32(0)
        #expect(
            parse(ack1 + ack2 + done) == [
                .ack(sequence: 1, errno: 0, message: nil), .ack(sequence: 2, errno: ENODEV, message: nil),
                .other(type: 3),
            ])
    }

    private func linkMessage(type: UInt16, index: Int32, flags: UInt32, name: String, mtu: UInt32) -> [UInt8] {
        let nameBytes = Array(name.utf8) + [0]
        var attributes = le16(UInt16(4 + nameBytes.count)) + le16(3) + nameBytes
        attributes += [UInt8](repeating: 0, count: (4 - nameBytes.count % 4) % 4)
        attributes += le16(8) + le16(4) + le32(mtu)
        let body: [UInt8] = [0, 0] + le16(65534) + le32(UInt32(bitPattern: index)) + le32(flags) + le32(0)
        let length = 16 + body.count + attributes.count
        return le32(UInt32(length)) + le16(type) + le16(0) + le32(0) + le32(0) + body + attributes
    }

    @Test func linkNotifications() {
        let new = linkMessage(type: 16, index: 12, flags: 0x1 | 0x40, name: "wg0", mtu: 9000)
        let deleted = linkMessage(type: 17, index: 12, flags: 0, name: "wg0", mtu: 9000)
        #expect(
            parse(new + deleted) == [
                .link(sequence: 0, LinkState(index: 12, name: "wg0", mtu: 9000, flags: 0x41, deleted: false)),
                .link(sequence: 0, LinkState(index: 12, name: "wg0", mtu: 9000, flags: 0, deleted: true)),
            ])
    }

    /// Lengths that lie never make the parser read outside the datagram.
    @Test func truncatedAndLyingLengthsStopSafely() {
        let good = linkMessage(type: 16, index: 1, flags: 1, name: "lo", mtu: 65536)
        // Header claims more than there is.
        #expect(parse(le32(200) + le16(2) + le16(0) + le32(0) + le32(0)).isEmpty)
        // Shorter than a header.
        #expect(parse(le32(8) + le16(2) + le16(0) + le32(0) + le32(0) + good).isEmpty)
        // The datagram cut inside the second message: the first still parses.
        #expect(parse(good + Array(good[0..<20])).count == 1)
        // An error too short for nlmsgerr is skipped.
        #expect(parse(le32(20) + le16(2) + le16(0) + le32(0) + le32(0) + le32(0)).isEmpty)
        // An attribute whose length runs past the message is ignored, the link still reported.
        var lying = good
        lying[32] = 0xff
        guard case .link(_, let state)? = parse(lying).first else {
            Issue.record("expected a link")
            return
        }
        #expect(state.index == 1 && state.name == nil && state.mtu == nil)
        // Random bytes: no crash, whatever comes out.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let noise = (0..<Int.random(in: 0..<96, using: &generator)).map { _ in UInt8.random(in: 0...255) }
            _ = parse(
                le32(UInt32(noise.count + 16)) + le16(UInt16.random(in: 0...20)) + le16(0x300) + le32(0) + le32(0)
                    + noise)
        }
    }

    @Test func errorLineNamesTheRequestAndTheKernelMessage() {
        let error = NetlinkError(
            operation: "route add 198.18.2.0/24 dev wg0", errno: ENETDOWN, kernelMessage: "Nexthop device is not up")
        #expect(
            error.description
                == "route add 198.18.2.0/24 dev wg0 failed: Nexthop device is not up (Network is down, errno \(ENETDOWN))"
        )
        let plain = NetlinkError(operation: "address add 198.18.1.1/24 dev wg0", errno: EEXIST)
        #expect(plain.description == "address add 198.18.1.1/24 dev wg0 failed: File exists (errno \(EEXIST))")
        #expect(!error.description.contains("\n"))
    }

    @Test func monitorReportsWhatChanged() {
        let up = LinkState(index: 5, name: "wg0", mtu: 1420, flags: 1, deleted: false)
        var changed = up
        changed.mtu = 9000
        #expect(LinkMonitor.changes(from: up, to: changed) == [.mtuChanged(9000)])
        changed.flags = 0
        #expect(LinkMonitor.changes(from: up, to: changed) == [.mtuChanged(9000), .down])
        #expect(LinkMonitor.changes(from: changed, to: up) == [.mtuChanged(1420), .up])
        #expect(LinkMonitor.changes(from: up, to: up).isEmpty)
        var gone = up
        gone.deleted = true
        #expect(LinkMonitor.changes(from: up, to: gone) == [.deleted])
    }
}

/// A real rtnetlink socket, reading only (no privilege needed, nothing changed).
@Suite struct NetlinkSocketTests {
    @Test func queriesLoopbackAndReportsAMissingLink() throws {
        let socket = try NetlinkSocket()
        let loopback = try socket.queryLink(index: 0, name: "lo")
        #expect(loopback.index == Int32(if_nametoindex("lo")))
        #expect(loopback.name == "lo")
        #expect((loopback.mtu ?? 0) > 0)
        let byIndex = try socket.queryLink(index: loopback.index, name: nil)
        #expect(byIndex.name == "lo")
        let error = #expect(throws: NetlinkError.self) { _ = try socket.queryLink(index: 0, name: "tunctl-none0") }
        #expect(error?.errno == ENODEV)
        #expect(error?.description.hasPrefix("link show tunctl-none0 failed: ") == true)
    }
}

/// LinkMonitor's decisions, fed by hand (a monitor on `lo`, which needs no privilege; its read
/// source is never started, so only the messages given here reach it).
@Suite struct LinkMonitorTests {
    final class Events: @unchecked Sendable {
        // Sound: the tests call `handle` on their own thread, and the handler runs there.
        var list: [LinkEvent] = []
    }

    private func monitor() throws -> (LinkMonitor, Events, LinkState) {
        let events = Events()
        let queue = DispatchQueue(label: "test.linkmonitor")
        let monitor = try LinkMonitor(name: "lo", queue: queue, logger: Logger(label: "test")) {
            events.list.append($0)
        }
        let state = try NetlinkSocket().queryLink(index: 0, name: "lo")
        return (monitor, events, state)
    }

    @Test func reportsChangesOfItsOwnLinkOnly() throws {
        let (monitor, events, lo) = try monitor()
        var changed = lo
        changed.mtu = (lo.mtu ?? 0) - 1
        monitor.handle(.link(sequence: 0, changed))
        var other = changed
        other.index = lo.index + 1000
        other.mtu = 1280
        monitor.handle(.link(sequence: 0, other))
        #expect(events.list == [.mtuChanged((lo.mtu ?? 0) - 1)])
        var gone = changed
        gone.deleted = true
        monitor.handle(.link(sequence: 0, gone))
        monitor.handle(.link(sequence: 0, gone))
        #expect(events.list == [.mtuChanged((lo.mtu ?? 0) - 1), .deleted])
    }

    /// After lost notifications the monitor asks again; ENODEV for that question means deleted,
    /// any other answer (or an ENODEV for some other question) does not.
    @Test func requeryAnsweredWithENODEVIsDeletion() throws {
        let (monitor, events, _) = try monitor()
        monitor.requery()
        let sequence = try #require(monitor.querySequence)
        monitor.handle(.ack(sequence: sequence &+ 1, errno: ENODEV, message: nil))
        monitor.handle(.ack(sequence: sequence, errno: EMFILE, message: nil))
        #expect(events.list.isEmpty)
        monitor.requery()
        let second = try #require(monitor.querySequence)
        monitor.handle(.ack(sequence: second, errno: ENODEV, message: nil))
        #expect(events.list == [.deleted])
    }
}
