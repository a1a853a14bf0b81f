import Dispatch
import Glibc
import Logging
import Synchronization
import TunnelCore

/// Interface-name rules and existence checks, without changing anything.
public enum LinkConfig {
    /// Whether an interface called `name` exists (`if_nametoindex`; no process is started).
    /// A check before start-up only: it opens a socket, so with no descriptor to spare it answers
    /// false. The running tunnel learns of its link from `LinkMonitor` instead.
    public static func linkExists(name: String) -> Bool {
        guard isValidInterfaceName(name) else { return false }
        return if_nametoindex(name) != 0
    }

    /// The kernel's rule (`dev_valid_name`) plus no leading '-', so a name is never read as an option.
    static func isValidInterfaceName(_ name: String) -> Bool {
        let bytes = name.utf8
        guard !bytes.isEmpty, bytes.count < 16, name != ".", name != "..", bytes.first != UInt8(ascii: "-")
        else { return false }
        return !bytes.contains {
            $0 == 0 || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7f
        }
    }
}

/// The TUN link's kernel configuration (MTU, addresses, up, routes) over one rtnetlink socket,
/// in batches of `NetlinkSocket.batchSize` requests per sendmsg: 10,000 routes are some 40
/// system calls, not 10,000 `ip` processes.
///
/// With `setRouting`, it also does wg-quick's full-tunnel policy routing (`Table = auto` and a
/// 0.0.0.0/0 or ::/0 route): that route goes to table T (the socket's fwmark), and per family the
/// rules `not fwmark T table T` and `table main suppress_prefixlength 0`, tagged with
/// `Netlink.ruleProtocol`; `net.ipv4.conf.all.src_valid_mark` is set to 1. The rules are deleted
/// at shutdown (exact match) and src_valid_mark restored; after a crash, the next start that
/// installs the same rules first deletes any carrying our tag for the same table (a crashed run's;
/// never wg-quick's, which have no tag), so restarts never pile up duplicates.
///
/// Runs on its own serial queue, so route changes never hold up the queue that runs the tunnel's
/// timers. `@unchecked Sendable` is sound because `socket`, `routes`, the routing choice and
/// `rules` are touched only on `queue` (every method below runs its work there) and `stopping`
/// is atomic.
public final class LinkManager: @unchecked Sendable {
    public let interfaceName: String
    public let interfaceIndex: Int32
    /// Owns `socket` and `routes`.
    let queue: DispatchQueue
    private let socket: NetlinkSocket
    /// Routes this process added (on `queue`). Not removed one by one at shutdown: deleting the
    /// link takes its routes with it.
    private var routes: Set<IPPrefix> = []
    /// The table routes go to (main unless `Table = NUMBER`), on `queue`.
    private var routeTable = Netlink.mainTable
    /// Full tunnel (`Table = auto`): the table a /0 route goes to, with the rules; nil otherwise.
    private var fullTunnelTable: UInt32?
    /// Rules this process added (on `queue`); deleted at shutdown.
    private var rules: [PolicyRule] = []
    /// `src_valid_mark` as it was before this process set it (on `queue`); restored at shutdown.
    private var previousSourceValidMark: String?
    static let sourceValidMarkPath = "/proc/sys/net/ipv4/conf/all/src_valid_mark"
    /// Set by `shutdown`: a route update in progress stops after its current batch.
    private let stopping = Atomic<Bool>(false)
    private let logger: Logger

    /// Opens the rtnetlink socket and looks the link up by name.
    public init(interfaceName: String, logger: Logger) throws {
        self.interfaceName = interfaceName
        self.logger = logger
        queue = DispatchQueue(label: "tunctl.\(interfaceName).link")
        socket = try NetlinkSocket()
        interfaceIndex = try socket.queryLink(index: 0, name: interfaceName).index
    }

    /// Sets the MTU, adds `addresses` and brings the link up, in one batch; throws the first
    /// failure (e.g. `address add 198.18.1.1/24 dev wg0 failed: ...`).
    public func configure(mtu: Int, addresses: [IPPrefix]) throws {
        try queue.sync {
            let socket = self.socket
            var requests = [
                NetlinkRequest(
                    message: Netlink.setLink(
                        interfaceIndex: interfaceIndex, mtu: mtu, up: false, sequence: socket.sequence()),
                    operation: "link set dev \(interfaceName) mtu \(mtu)")
            ]
            for address in addresses {
                requests.append(
                    NetlinkRequest(
                        message: Netlink.address(
                            .add, address, interfaceIndex: interfaceIndex, sequence: socket.sequence()),
                        operation: "address add \(address) dev \(interfaceName)"))
            }
            requests.append(
                NetlinkRequest(
                    message: Netlink.setLink(
                        interfaceIndex: interfaceIndex, mtu: nil, up: true, sequence: socket.sequence()),
                    operation: "link set dev \(interfaceName) up"))
            if let first = try socket.perform(requests).first { throw first.error }
        }
    }

    /// Where later `updateRoutes` put routes: `table` for all (main: 254), except that with
    /// `fullTunnelTable` a /0 goes there, with wg-quick's rules. Call before the first update.
    public func setRouting(table: UInt32, fullTunnelTable: UInt32?) {
        queue.sync {
            routeTable = table
            self.fullTunnelTable = fullTunnelTable
        }
    }

    /// The table `prefix` is routed in (on `queue`).
    private func table(for prefix: IPPrefix) -> UInt32 {
        if prefix.length == 0, let fullTunnelTable { return fullTunnelTable }
        return routeTable
    }

    /// A reload's link changes in one batch: the MTU (nil: unchanged), then addresses removed and
    /// added. All or nothing: when a request fails, the ones that took effect are undone (the old
    /// MTU back, removed addresses re-added, added ones deleted) and the first failure is thrown.
    public func reconfigure(mtu: (old: Int, new: Int)?, adding: [IPPrefix], removing: [IPPrefix]) throws {
        try queue.sync {
            let socket = self.socket
            func setMTU(_ value: Int) -> NetlinkRequest {
                NetlinkRequest(
                    message: Netlink.setLink(
                        interfaceIndex: interfaceIndex, mtu: value, up: false, sequence: socket.sequence()),
                    operation: "link set dev \(interfaceName) mtu \(value)")
            }
            func address(_ change: Netlink.Change, _ prefix: IPPrefix) -> NetlinkRequest {
                NetlinkRequest(
                    message: Netlink.address(
                        change, prefix, interfaceIndex: interfaceIndex, sequence: socket.sequence()),
                    operation: "address \(change == .add ? "add" : "del") \(prefix) dev \(interfaceName)")
            }
            // Each request with the one that undoes it.
            var steps: [(request: NetlinkRequest, undo: NetlinkRequest)] = []
            if let mtu { steps.append((setMTU(mtu.new), setMTU(mtu.old))) }
            for prefix in removing { steps.append((address(.delete, prefix), address(.add, prefix))) }
            for prefix in adding { steps.append((address(.add, prefix), address(.delete, prefix))) }
            guard !steps.isEmpty else { return }
            let failures = try socket.perform(steps.map(\.request))
            guard let first = failures.first else { return }
            let failed = Set(failures.map(\.index))
            let undo = steps.indices.reversed().filter { !failed.contains($0) }.map { steps[$0].undo }
            for failure in (try? socket.perform(undo)) ?? [] {
                logger.warning("\(interfaceName): undoing a failed reload: \(failure.error)")
            }
            throw first.error
        }
    }

    /// Makes the kernel's routes through the link match `wanted` (host bits ignored): adds the
    /// missing, deletes the stale. `wait` false returns at once (the work runs on `queue`); true
    /// returns when it is done (start-up: `tunctl up` is ready once its routes are in place).
    /// Failures are logged one line each; a prefix already routed elsewhere (EEXIST, e.g. the
    /// interface's own subnet) is not ours and is left alone, as before.
    public func updateRoutes(_ wanted: Set<IPPrefix>, wait: Bool) {
        let wanted = Set(wanted.map(\.masked))
        if wait {
            queue.sync { applyRoutes(wanted) }
        } else {
            queue.async { self.applyRoutes(wanted) }
        }
    }

    /// On `queue`.
    private func applyRoutes(_ wanted: Set<IPPrefix>) {
        guard !stopping.load(ordering: .relaxed) else { return }
        let stale = Array(routes.subtracting(wanted))
        let added = Array(wanted.subtracting(routes))
        guard !stale.isEmpty || !added.isEmpty else { return }
        defer { syncRules() }
        let socket = self.socket
        var requests: [NetlinkRequest] = []
        requests.reserveCapacity(stale.count + added.count)
        for prefix in stale {
            requests.append(
                NetlinkRequest(
                    message: Netlink.route(
                        .delete, prefix, interfaceIndex: interfaceIndex, table: table(for: prefix),
                        sequence: socket.sequence()),
                    operation: "route del \(prefix) dev \(interfaceName)\(tableWords(prefix))"))
        }
        for prefix in added {
            requests.append(
                NetlinkRequest(
                    message: Netlink.route(
                        .add, prefix, interfaceIndex: interfaceIndex, table: table(for: prefix),
                        sequence: socket.sequence()),
                    operation: "route add \(prefix) dev \(interfaceName)\(tableWords(prefix))"))
        }
        let failures: [(index: Int, error: NetlinkError)]
        do {
            failures = try socket.perform(requests) { !self.stopping.load(ordering: .relaxed) }
        } catch {
            logger.error("\(interfaceName): route update failed: \(error)")
            return
        }
        var failed = Set<Int>()
        for (index, error) in failures {
            failed.insert(index)
            if index >= stale.count, error.errno == EEXIST {
                logger.debug("\(interfaceName): \(error); already routed, left alone")
            } else if index < stale.count, error.errno == ESRCH {
                // Gone already (someone else deleted it): what we wanted.
                failed.remove(index)
            } else {
                logger.warning("\(interfaceName): \(error)")
            }
        }
        for (offset, prefix) in stale.enumerated() where !failed.contains(offset) { routes.remove(prefix) }
        for (offset, prefix) in added.enumerated() where !failed.contains(stale.count + offset) {
            routes.insert(prefix)
        }
        logger.debug(
            "\(interfaceName): routes: \(stale.count) to remove, \(added.count) to add, \(routes.count) ours now")
    }

    /// ` table T` for an error message, or nothing for the main table.
    private func tableWords(_ prefix: IPPrefix) -> String {
        let table = table(for: prefix)
        return table == Netlink.mainTable ? "" : " table \(table)"
    }

    // MARK: Full-tunnel rules (on `queue`)

    /// Adds the rules of each family that now has a /0 route in the full-tunnel table, and deletes
    /// those of a family that no longer has one.
    private func syncRules() {
        guard let table = fullTunnelTable else { return }
        for isV4 in [true, false] {
            let routed = routes.contains { $0.length == 0 && $0.address.isV4 == isV4 }
            let installed = rules.contains { $0.isV4 == isV4 }
            if routed, !installed {
                addRules([
                    PolicyRule(.unmarkedTo(table: table), isV4: isV4), PolicyRule(.mainWithoutDefault, isV4: isV4),
                ])
                if isV4 { setSourceValidMark() }
            } else if !routed, installed {
                deleteRules(rules.filter { $0.isV4 == isV4 })
            }
        }
    }

    /// Deletes any copies a crashed run left (bounded), then adds `wanted`; failures are logged.
    private func addRules(_ wanted: [PolicyRule]) {
        var stale = 0
        for rule in wanted {
            for _ in 0..<LinkManager.staleRuleLimit {
                let request = NetlinkRequest(
                    message: Netlink.rule(.delete, rule, sequence: socket.sequence()), operation: "\(rule) delete")
                guard let failures = try? socket.perform([request]), failures.isEmpty else { break }
                stale += 1
            }
        }
        if stale > 0 { logger.info("\(interfaceName): removed \(stale) stale rule(s) an earlier run left") }
        let requests = wanted.map {
            NetlinkRequest(message: Netlink.rule(.add, $0, sequence: socket.sequence()), operation: "\($0) add")
        }
        let failures: [(index: Int, error: NetlinkError)]
        do {
            failures = try socket.perform(requests)
        } catch {
            logger.error("\(interfaceName): rule update failed: \(error)")
            return
        }
        for failure in failures { logger.warning("\(interfaceName): \(failure.error)") }
        let failed = Set(failures.map(\.index))
        for (index, rule) in wanted.enumerated() where !failed.contains(index) { rules.append(rule) }
    }

    /// How many copies of one rule a start deletes before adding its own.
    static let staleRuleLimit = 16

    /// Deletes `doomed` (ours) by exact match; a rule already gone is fine.
    private func deleteRules(_ doomed: [PolicyRule]) {
        let requests = doomed.map {
            NetlinkRequest(message: Netlink.rule(.delete, $0, sequence: socket.sequence()), operation: "\($0) delete")
        }
        do {
            for failure in try socket.perform(requests) where failure.error.errno != ENOENT {
                logger.warning("\(interfaceName): \(failure.error)")
            }
        } catch {
            logger.warning("\(interfaceName): rule delete failed: \(error)")
        }
        rules.removeAll { doomed.contains($0) }
    }

    /// wg-quick's `sysctl net.ipv4.conf.all.src_valid_mark=1` (this namespace's), so replies to
    /// the marked socket pass reverse-path filtering; the old value is kept for shutdown.
    private func setSourceValidMark() {
        guard previousSourceValidMark == nil else { return }
        guard let previous = LinkManager.readSmallFile(LinkManager.sourceValidMarkPath) else { return }
        guard previous != "1" else { return }
        if LinkManager.writeSmallFile(LinkManager.sourceValidMarkPath, "1") {
            previousSourceValidMark = previous
        } else {
            logger.warning("\(interfaceName): could not set \(LinkManager.sourceValidMarkPath) to 1")
        }
    }

    /// The first line of a /proc file, trimmed; nil if unreadable.
    static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return nil }
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        return text.split(separator: "\n").first.map(String.init) ?? ""
    }

    static func writeSmallFile(_ path: String, _ value: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        let bytes = Array(value.utf8)
        return write(fd, bytes, bytes.count) == bytes.count
    }

    /// Stops route work after its current batch, deletes our rules (restoring src_valid_mark),
    /// deletes the link (`RTM_DELLINK`, which takes its routes and addresses with it, in every
    /// table; a link already gone is fine) and closes the socket.
    /// Call after closing the TUN descriptor (which deletes a non-persistent TUN on its own).
    public func shutdown() {
        stopping.store(true, ordering: .relaxed)
        queue.sync {
            if !rules.isEmpty { deleteRules(rules) }
            if let previous = previousSourceValidMark {
                _ = LinkManager.writeSmallFile(LinkManager.sourceValidMarkPath, previous)
                previousSourceValidMark = nil
            }
            let request = NetlinkRequest(
                message: Netlink.deleteLink(interfaceIndex: interfaceIndex, sequence: socket.sequence()),
                operation: "link delete dev \(interfaceName)")
            do {
                if let failure = try socket.perform([request]).first, failure.error.errno != ENODEV {
                    logger.warning("\(interfaceName): \(failure.error)")
                }
            } catch {
                logger.warning("\(interfaceName): link delete failed: \(error)")
            }
            routes.removeAll()
            socket.close()
        }
    }
}
