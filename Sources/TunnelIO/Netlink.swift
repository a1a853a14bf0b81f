import CLinuxShim
import Glibc
import TunnelCore

/// A failed rtnetlink request: what was asked (`route add 198.18.2.0/24 dev wg0`) and what the
/// kernel answered (its errno and, with extended acks, its own one-line explanation).
public struct NetlinkError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The request as a person would type it to `ip`, e.g. `address add 10.0.0.1/24 dev wg0`.
    public let operation: String
    /// The kernel's errno (positive), e.g. EEXIST.
    public let errno: Int32
    /// The kernel's extended-ack message (`NLMSGERR_ATTR_MSG`), when it gave one.
    public let kernelMessage: String?

    public init(operation: String, errno: Int32, kernelMessage: String? = nil) {
        self.operation = operation
        self.errno = errno
        self.kernelMessage = kernelMessage
    }

    public var description: String {
        let text = SystemError.message(for: errno)
        guard let kernelMessage, !kernelMessage.isEmpty else { return "\(operation) failed: \(text) (errno \(errno))" }
        return "\(operation) failed: \(kernelMessage) (\(text), errno \(errno))"
    }
}

/// What the kernel says about a link (`RTM_NEWLINK` / `RTM_DELLINK`, or a `RTM_GETLINK` reply).
public struct LinkState: Hashable, Sendable {
    public var index: Int32
    public var name: String?
    public var mtu: Int?
    /// `IFF_*` bits of `ifi_flags`.
    public var flags: UInt32
    /// True for `RTM_DELLINK`: the link is gone.
    public var deleted: Bool

    public var isUp: Bool { flags & UInt32(IFF_UP) != 0 }
}

/// One of the two rules wg-quick adds per address family for a full tunnel.
public struct PolicyRule: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// `not fwmark T table T`: everything but the tunnel's own (marked) UDP uses table T.
        case unmarkedTo(table: UInt32)
        /// `table main suppress_prefixlength 0`: the main table, except its default route, first.
        case mainWithoutDefault
    }

    public var kind: Kind
    public var isV4: Bool

    public init(_ kind: Kind, isV4: Bool) {
        self.kind = kind
        self.isV4 = isV4
    }

    /// As `ip` would be asked for it.
    public var description: String {
        let family = isV4 ? "-4" : "-6"
        switch kind {
        case .unmarkedTo(let table): return "\(family) rule not fwmark \(table) table \(table)"
        case .mainWithoutDefault: return "\(family) rule table main suppress_prefixlength 0"
        }
    }
}

/// One request in a batch: the encoded message and the words that name it in an error.
public struct NetlinkRequest: Sendable {
    public let message: [UInt8]
    public let operation: String
}

/// rtnetlink message encoding and parsing, with no I/O: layouts and numbers come from the kernel's
/// UAPI headers (via CLinuxShim), lengths are checked before every read.
///
/// Wire format (all host byte order except addresses): each message is an `nlmsghdr` (16 bytes,
/// `nlmsg_len` covering header and payload), a fixed family header (`ifinfomsg`, `ifaddrmsg`,
/// `rtmsg`), then attributes, each an `rtattr` (length, type) and its payload, padded to 4 bytes.
public enum Netlink {
    static let alignment = Int(NLMSG_ALIGNTO)
    static let attributeAlignment = Int(RTA_ALIGNTO)
    static let headerLength = align(MemoryLayout<nlmsghdr>.size)
    static let attributeHeaderLength = alignAttribute(MemoryLayout<rtattr>.size)

    static func align(_ length: Int) -> Int { (length + alignment - 1) & ~(alignment - 1) }
    static func alignAttribute(_ length: Int) -> Int { (length + attributeAlignment - 1) & ~(attributeAlignment - 1) }

    public enum Change: Sendable { case add, delete }

    // MARK: Encoding

    /// An attribute: type and payload (unpadded; `message` pads it).
    struct Attribute {
        var type: UInt16
        var payload: [UInt8]

        init(_ type: UInt16, _ payload: [UInt8]) {
            self.type = type
            self.payload = payload
        }

        init(_ type: UInt16, u32 value: UInt32) {
            self.init(type, withUnsafeBytes(of: value) { Array($0) })
        }
    }

    /// One message: header, the fixed family struct `body`, then `attributes`, each padded.
    /// An add (the NEW type, refused if it exists: `NLM_F_CREATE | NLM_F_EXCL`) or a delete (the
    /// DEL type) of a route, rule or address, acknowledged.
    static func message<Body>(
        _ change: Change, adding newType: Int, deleting deleteType: Int, sequence: UInt32, body: Body,
        attributes: [Attribute]
    ) -> [UInt8] {
        switch change {
        case .add:
            return message(
                type: Int32(newType), flags: Int32(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL),
                sequence: sequence, body: body, attributes: attributes)
        case .delete:
            return message(
                type: Int32(deleteType), flags: Int32(NLM_F_REQUEST | NLM_F_ACK), sequence: sequence, body: body,
                attributes: attributes)
        }
    }

    static func message<Body>(
        type: Int32, flags: Int32, sequence: UInt32, body: Body, attributes: [Attribute]
    ) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: headerLength)
        withUnsafeBytes(of: body) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: repeatElement(0, count: align(bytes.count) - bytes.count))
        for attribute in attributes {
            let length = attributeHeaderLength + attribute.payload.count
            let header = rtattr(rta_len: UInt16(length), rta_type: attribute.type)
            withUnsafeBytes(of: header) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: repeatElement(0, count: attributeHeaderLength - MemoryLayout<rtattr>.size))
            bytes.append(contentsOf: attribute.payload)
            bytes.append(contentsOf: repeatElement(0, count: alignAttribute(length) - length))
        }
        let header = nlmsghdr(
            nlmsg_len: UInt32(bytes.count), nlmsg_type: UInt16(type), nlmsg_flags: UInt16(flags),
            nlmsg_seq: sequence, nlmsg_pid: 0)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: header, as: nlmsghdr.self) }
        return bytes
    }

    private static func family(_ address: IPAddress) -> UInt8 { UInt8(address.isV4 ? AF_INET : AF_INET6) }

    /// The main routing table's number (254).
    public static let mainTable = UInt32(RT_TABLE_MAIN.rawValue)

    /// `rtm_table` / `fib_rule_hdr.table` for `table`: the number when it fits a byte, else
    /// RT_TABLE_UNSPEC with the full number in the RTA_TABLE / FRA_TABLE attribute (as `ip` does).
    private static func tableByte(_ table: UInt32) -> UInt8 {
        table < 256 ? UInt8(table) : UInt8(RT_TABLE_UNSPEC.rawValue)
    }

    /// `ip route add|del PREFIX dev IFINDEX [table TABLE]` (host bits cleared; main table unless
    /// given): link scope for IPv4 and universe for IPv6 as `ip` chooses, protocol boot, unicast.
    public static func route(
        _ change: Change, _ prefix: IPPrefix, interfaceIndex: Int32, table: UInt32 = mainTable, sequence: UInt32
    )
        -> [UInt8]
    {
        let prefix = prefix.masked
        var body = rtmsg()
        body.rtm_family = family(prefix.address)
        body.rtm_dst_len = UInt8(prefix.length)
        body.rtm_table = tableByte(table)
        body.rtm_protocol = UInt8(RTPROT_BOOT)
        body.rtm_type = UInt8(RTN_UNICAST)
        switch change {
        case .add: body.rtm_scope = UInt8((prefix.address.isV4 ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE).rawValue)
        case .delete: body.rtm_scope = UInt8(RT_SCOPE_NOWHERE.rawValue)
        }
        var attributes = [
            Attribute(UInt16(RTA_DST.rawValue), prefix.address.networkBytes),
            Attribute(UInt16(RTA_OIF.rawValue), u32: UInt32(bitPattern: interfaceIndex)),
        ]
        if table != mainTable { attributes.append(Attribute(UInt16(RTA_TABLE.rawValue), u32: table)) }
        return message(
            change, adding: RTM_NEWROUTE, deleting: RTM_DELROUTE, sequence: sequence, body: body, attributes: attributes
        )
    }

    /// `ip rule add|del` of one of wg-quick's full-tunnel rules, tagged with `ruleProtocol` so a
    /// later start recognises (and deletes) rules a crashed tunctl left, and nobody else's. No
    /// priority is given: the kernel puts each just above the main table's rule, as for wg-quick.
    /// A delete matches every attribute sent (the kernel ignores those not sent).
    public static func rule(_ change: Change, _ rule: PolicyRule, sequence: UInt32) -> [UInt8] {
        var body = fib_rule_hdr()
        body.family = UInt8(rule.isV4 ? AF_INET : AF_INET6)
        body.action = UInt8(FR_ACT_TO_TBL)
        var attributes: [Attribute] = []
        switch rule.kind {
        case .unmarkedTo(let table):
            // not fwmark TABLE table TABLE
            body.table = tableByte(table)
            body.flags = UInt32(FIB_RULE_INVERT)
            attributes.append(Attribute(UInt16(FRA_TABLE), u32: table))
            attributes.append(Attribute(UInt16(FRA_FWMARK), u32: table))
        case .mainWithoutDefault:
            // table main suppress_prefixlength 0
            body.table = tableByte(mainTable)
            attributes.append(Attribute(UInt16(FRA_TABLE), u32: mainTable))
            attributes.append(Attribute(UInt16(FRA_SUPPRESS_PREFIXLEN), u32: 0))
        }
        attributes.append(Attribute(UInt16(FRA_PROTOCOL), [ruleProtocol]))
        return message(
            change, adding: RTM_NEWRULE, deleting: RTM_DELRULE, sequence: sequence, body: body, attributes: attributes)
    }

    /// The `proto` tunctl's rules carry (`ip -d rule` shows it as 116): not one of the kernel's or
    /// iproute2's named protocols, so no other tool's rule has it.
    public static let ruleProtocol: UInt8 = 116

    /// `ip address add|del ADDRESS/LEN dev IFINDEX`: IFA_LOCAL and IFA_ADDRESS both the address.
    public static func address(
        _ change: Change, _ prefix: IPPrefix, interfaceIndex: Int32, sequence: UInt32
    )
        -> [UInt8]
    {
        var body = ifaddrmsg()
        body.ifa_family = family(prefix.address)
        body.ifa_prefixlen = UInt8(prefix.length)
        body.ifa_index = UInt32(bitPattern: interfaceIndex)
        let bytes = prefix.address.networkBytes
        let attributes = [Attribute(UInt16(IFA_LOCAL), bytes), Attribute(UInt16(IFA_ADDRESS), bytes)]
        return message(
            change, adding: RTM_NEWADDR, deleting: RTM_DELADDR, sequence: sequence, body: body, attributes: attributes)
    }

    /// `ip link set dev IFINDEX [mtu MTU] [up]`.
    public static func setLink(interfaceIndex: Int32, mtu: Int?, up: Bool, sequence: UInt32) -> [UInt8] {
        var body = ifinfomsg()
        body.ifi_family = UInt8(AF_UNSPEC)
        body.ifi_index = interfaceIndex
        if up {
            body.ifi_flags = UInt32(IFF_UP)
            body.ifi_change = UInt32(IFF_UP)
        }
        let attributes = mtu.map { [Attribute(UInt16(IFLA_MTU), u32: UInt32($0))] } ?? []
        return message(
            type: Int32(RTM_NEWLINK), flags: Int32(NLM_F_REQUEST | NLM_F_ACK), sequence: sequence, body: body,
            attributes: attributes)
    }

    /// `ip link delete dev IFINDEX`.
    public static func deleteLink(interfaceIndex: Int32, sequence: UInt32) -> [UInt8] {
        var body = ifinfomsg()
        body.ifi_family = UInt8(AF_UNSPEC)
        body.ifi_index = interfaceIndex
        return message(
            type: Int32(RTM_DELLINK), flags: Int32(NLM_F_REQUEST | NLM_F_ACK), sequence: sequence, body: body,
            attributes: [])
    }

    /// `ip link show` of one link, by index (when non-zero) or else by name.
    public static func getLink(interfaceIndex: Int32, name: String?, sequence: UInt32) -> [UInt8] {
        var body = ifinfomsg()
        body.ifi_family = UInt8(AF_UNSPEC)
        body.ifi_index = interfaceIndex
        var attributes: [Attribute] = []
        if interfaceIndex == 0, let name { attributes.append(Attribute(UInt16(IFLA_IFNAME), Array(name.utf8) + [0])) }
        return message(
            type: Int32(RTM_GETLINK), flags: Int32(NLM_F_REQUEST), sequence: sequence, body: body,
            attributes: attributes)
    }

    // MARK: Parsing

    /// One message the kernel sent, as far as tunctl cares.
    public enum Reply: Hashable, Sendable {
        /// `NLMSG_ERROR`: `errno` 0 is an ack; otherwise the request `sequence` failed.
        case ack(sequence: UInt32, errno: Int32, message: String?)
        /// `RTM_NEWLINK` / `RTM_DELLINK` (a notification, or the answer to `RTM_GETLINK`).
        case link(sequence: UInt32, LinkState)
        /// Any other message type (`NLMSG_DONE`, `NLMSG_NOOP`, other families).
        case other(type: UInt16)
    }

    /// The messages in one datagram, in order. Stops at the first message whose length does not
    /// fit (a truncated datagram), and never reads past `buffer`.
    public static func parse(_ buffer: UnsafeRawBufferPointer) -> [Reply] {
        var replies: [Reply] = []
        var offset = 0
        let headerSize = MemoryLayout<nlmsghdr>.size
        while buffer.count - offset >= headerSize {
            let header = buffer.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self)
            let length = Int(header.nlmsg_len)
            guard length >= headerSize, length <= buffer.count - offset else { break }
            let payload = UnsafeRawBufferPointer(rebasing: buffer[(offset + headerLength)..<(offset + length)])
            switch Int32(header.nlmsg_type) {
            case Int32(NLMSG_ERROR):
                if let reply = parseError(payload, flags: header.nlmsg_flags, sequence: header.nlmsg_seq) {
                    replies.append(reply)
                }
            case Int32(RTM_NEWLINK), Int32(RTM_DELLINK):
                if var link = parseLink(payload) {
                    link.deleted = Int32(header.nlmsg_type) == Int32(RTM_DELLINK)
                    replies.append(.link(sequence: header.nlmsg_seq, link))
                }
            default:
                replies.append(.other(type: header.nlmsg_type))
            }
            offset += align(length)
        }
        return replies
    }

    /// `struct nlmsgerr` (error, then the request's header and, unless capped, its payload), then
    /// with `NLM_F_ACK_TLVS` the extended-ack attributes, of which the message string is kept.
    static func parseError(_ payload: UnsafeRawBufferPointer, flags: UInt16, sequence: UInt32) -> Reply? {
        guard payload.count >= MemoryLayout<nlmsgerr>.size else { return nil }
        let error = payload.loadUnaligned(as: nlmsgerr.self)
        var message: String?
        if Int32(flags) & Int32(NLM_F_ACK_TLVS) != 0 {
            // Capped: only the request's header is echoed; otherwise all of the request.
            let echoed = Int32(flags) & Int32(NLM_F_CAPPED) != 0 ? headerLength : Int(error.msg.nlmsg_len)
            let start = align(MemoryLayout<Int32>.size + echoed)
            if start <= payload.count {
                let attributes = attributeList(UnsafeRawBufferPointer(rebasing: payload[start...]))
                message = attributes[UInt16(NLMSGERR_ATTR_MSG.rawValue)].map(string)
            }
        }
        // The kernel reports -errno; the sequence is the failed request's.
        return .ack(sequence: sequence, errno: -error.error, message: message)
    }

    /// `struct ifinfomsg` and the attributes tunctl reads: IFLA_IFNAME and IFLA_MTU.
    static func parseLink(_ payload: UnsafeRawBufferPointer) -> LinkState? {
        let bodyLength = align(MemoryLayout<ifinfomsg>.size)
        guard payload.count >= bodyLength else { return nil }
        let info = payload.loadUnaligned(as: ifinfomsg.self)
        let attributes = attributeList(UnsafeRawBufferPointer(rebasing: payload[bodyLength...]))
        let mtu = attributes[UInt16(IFLA_MTU)].flatMap { $0.count >= 4 ? Int($0.loadUnaligned(as: UInt32.self)) : nil }
        return LinkState(
            index: info.ifi_index, name: attributes[UInt16(IFLA_IFNAME)].map(string), mtu: mtu, flags: info.ifi_flags,
            deleted: false)
    }

    /// Attributes by type (the last of a repeated type wins); stops at the first that does not fit.
    static func attributeList(_ buffer: UnsafeRawBufferPointer) -> [UInt16: UnsafeRawBufferPointer] {
        var result: [UInt16: UnsafeRawBufferPointer] = [:]
        var offset = 0
        while buffer.count - offset >= MemoryLayout<rtattr>.size {
            let header = buffer.loadUnaligned(fromByteOffset: offset, as: rtattr.self)
            let length = Int(header.rta_len)
            guard length >= MemoryLayout<rtattr>.size, length <= buffer.count - offset else { break }
            // NLA_F_NESTED and NLA_F_NET_BYTEORDER ride in the type's top bits.
            let type = header.rta_type & ~UInt16(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
            result[type] = UnsafeRawBufferPointer(
                rebasing: buffer[(offset + attributeHeaderLength)..<(offset + length)])
            offset += alignAttribute(length)
        }
        return result
    }

    /// A NUL-terminated (or not) attribute string.
    private static func string(_ bytes: UnsafeRawBufferPointer) -> String {
        let end = bytes.firstIndex(of: 0) ?? bytes.count
        return String(decoding: bytes[0..<end], as: UTF8.self)
    }
}

/// An rtnetlink socket (`NETLINK_ROUTE`), non-blocking and close-on-exec, with extended acks and
/// capped acks, and a receive buffer large enough for a batch's acks.
///
/// Not thread-safe: whoever owns it (LinkManager's queue, LinkMonitor's queue) serialises its use.
/// The descriptor is closed once, by `close()` or on release.
public final class NetlinkSocket {
    public private(set) var fileDescriptor: Int32
    private var nextSequence: UInt32 = 1
    /// One receive buffer, reused: a datagram of acks or a link dump.
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    static let receiveBufferSize = 64 * 1024
    /// Requests per sendmsg. Each ack queued for us costs the socket about 700 bytes of receive
    /// buffer (skb overhead); 256 of them fit the 1 MiB asked for below with room to spare.
    public static let batchSize = 256
    /// How long to wait for the kernel's acks: they are queued before sendmsg returns, so this is
    /// only a guard against a kernel that never answers.
    static let replyTimeoutMilliseconds: Int32 = 5000

    /// Opens the socket; `groups` are RTNLGRP_* multicast groups to join (notifications).
    public init(groups: [UInt32] = []) throws(SystemError) {
        let fd = try Syscall.check("socket(AF_NETLINK)") {
            socket(
                AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                NETLINK_ROUTE)
        }
        fileDescriptor = fd
        receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: NetlinkSocket.receiveBufferSize, alignment: 8)
        do {
            var address = sockaddr_nl()
            address.nl_family = sa_family_t(AF_NETLINK)
            _ = try Syscall.check("bind(AF_NETLINK)") {
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
            try setOption(SOL_NETLINK, NETLINK_EXT_ACK, 1, "setsockopt(NETLINK_EXT_ACK)")
            try setOption(SOL_NETLINK, NETLINK_CAP_ACK, 1, "setsockopt(NETLINK_CAP_ACK)")
            // Beyond rmem_max needs CAP_NET_ADMIN (which configuring links needs anyway).
            let size: Int32 = 1 << 20
            if (try? setOption(SOL_SOCKET, SO_RCVBUFFORCE, size, "setsockopt(SO_RCVBUFFORCE)")) == nil {
                try? setOption(SOL_SOCKET, SO_RCVBUF, size, "setsockopt(SO_RCVBUF)")
            }
            for group in groups {
                try setOption(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, Int32(group), "setsockopt(NETLINK_ADD_MEMBERSHIP)")
            }
        } catch {
            Glibc.close(fd)
            receiveBuffer.deallocate()
            throw error
        }
    }

    deinit {
        close()
        receiveBuffer.deallocate()
    }

    public func close() {
        guard fileDescriptor >= 0 else { return }
        _ = try? Syscall.close(fileDescriptor)
        fileDescriptor = -1
    }

    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32, _ call: String) throws(SystemError) {
        var value = value
        let fd = fileDescriptor
        _ = try Syscall.check(call) { setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// A fresh sequence number (never 0, which notifications carry).
    public func sequence() -> UInt32 {
        defer { nextSequence = nextSequence == UInt32.max ? 1 : nextSequence + 1 }
        return nextSequence
    }

    /// Sends `requests` (each built with a sequence from `sequence()` and NLM_F_ACK) in batches of
    /// `batchSize` per sendmsg and waits for every ack. Returns the failures, in request order;
    /// `ignoring` errnos count as success (e.g. EEXIST, ESRCH). Throws only when the socket itself
    /// fails (then which requests took effect is unknown).
    public func perform(
        _ requests: [NetlinkRequest], shouldContinue: () -> Bool = { true }
    ) throws(SystemError)
        -> [(index: Int, error: NetlinkError)]
    {
        var failures: [(index: Int, error: NetlinkError)] = []
        var start = 0
        while start < requests.count, shouldContinue() {
            let end = min(start + NetlinkSocket.batchSize, requests.count)
            var batch: [UInt8] = []
            var pending: [UInt32: Int] = [:]
            for index in start..<end {
                let message = requests[index].message
                batch += message
                pending[message.withUnsafeBytes { $0.loadUnaligned(as: nlmsghdr.self).nlmsg_seq }] = index
            }
            try send(batch)
            while !pending.isEmpty {
                for reply in try receive() {
                    guard case .ack(let sequence, let code, let message) = reply, let index = pending[sequence] else {
                        continue
                    }
                    pending[sequence] = nil
                    if code != 0 {
                        failures.append(
                            (
                                index,
                                NetlinkError(operation: requests[index].operation, errno: code, kernelMessage: message)
                            ))
                    }
                }
            }
            start = end
        }
        return failures
    }

    /// Asks for one link's state (by index when non-zero, else by name). Throws `NetlinkError`
    /// with ENODEV when there is no such link.
    public func queryLink(index: Int32, name: String?) throws -> LinkState {
        let sequence = self.sequence()
        try send(Netlink.getLink(interfaceIndex: index, name: name, sequence: sequence))
        while true {
            for reply in try receive() {
                switch reply {
                case .link(sequence, let state):
                    return state
                case .ack(sequence, let code, let message) where code != 0:
                    throw NetlinkError(
                        operation: "link show \(index != 0 ? "index \(index)" : name ?? "?")", errno: code,
                        kernelMessage: message)
                default:
                    continue
                }
            }
        }
    }

    /// One sendto to the kernel (port 0).
    func send(_ bytes: [UInt8]) throws(SystemError) {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let destination = kernel
        let fd = fileDescriptor
        while true {
            let sent = try Syscall.io("sendto(netlink)") {
                bytes.withUnsafeBytes { buffer in
                    withUnsafePointer(to: destination) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            sendto(
                                fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                        }
                    }
                }
            }
            switch sent {
            case .done: return
            case .wouldBlock:
                // The kernel handles a request during sendto; a full send queue is unusual. Wait.
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&entry, 1, NetlinkSocket.replyTimeoutMilliseconds)
            }
        }
    }

    /// One datagram's messages, waiting (bounded) for it. ENOBUFS (acks or notifications lost
    /// to a full receive buffer) is thrown for the caller to handle.
    func receive() throws(SystemError) -> [Netlink.Reply] {
        let fd = fileDescriptor
        let buffer = receiveBuffer
        while true {
            let result = try Syscall.io("recv(netlink)") { recv(fd, buffer.baseAddress, buffer.count, 0) }
            switch result {
            case .done(let count):
                return Netlink.parse(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            case .wouldBlock:
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&entry, 1, NetlinkSocket.replyTimeoutMilliseconds)
                if ready == 0 { throw SystemError(call: "recv(netlink): no answer from the kernel", errno: ETIMEDOUT) }
            }
        }
    }

    /// Reads whatever is queued now without waiting: nil when nothing is (for a read source).
    func receiveAvailable() throws(SystemError) -> [Netlink.Reply]? {
        let fd = fileDescriptor
        let buffer = receiveBuffer
        let result = try Syscall.io("recv(netlink)") { recv(fd, buffer.baseAddress, buffer.count, 0) }
        guard let count = result.value else { return nil }
        return Netlink.parse(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
    }
}
