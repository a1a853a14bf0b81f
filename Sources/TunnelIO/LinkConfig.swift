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
/// Runs on its own serial queue, so route changes never hold up the queue that runs the tunnel's
/// timers. `@unchecked Sendable` is sound because `socket` and `routes` are touched only on `queue`
/// (every method below runs its work there) and `stopping` is atomic.
public final class LinkManager: @unchecked Sendable {
    public let interfaceName: String
    public let interfaceIndex: Int32
    /// Owns `socket` and `routes`.
    let queue: DispatchQueue
    private let socket: NetlinkSocket
    /// Routes this process added (on `queue`). Not removed one by one at shutdown: deleting the
    /// link takes its routes with it.
    private var routes: Set<IPPrefix> = []
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
        let socket = self.socket
        var requests: [NetlinkRequest] = []
        requests.reserveCapacity(stale.count + added.count)
        for prefix in stale {
            requests.append(
                NetlinkRequest(
                    message: Netlink.route(
                        .delete, prefix, interfaceIndex: interfaceIndex, sequence: socket.sequence()),
                    operation: "route del \(prefix) dev \(interfaceName)"))
        }
        for prefix in added {
            requests.append(
                NetlinkRequest(
                    message: Netlink.route(.add, prefix, interfaceIndex: interfaceIndex, sequence: socket.sequence()),
                    operation: "route add \(prefix) dev \(interfaceName)"))
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

    /// Stops route work after its current batch, deletes the link (`RTM_DELLINK`, which takes its
    /// routes and addresses with it; a link already gone is fine) and closes the socket.
    /// Call after closing the TUN descriptor (which deletes a non-persistent TUN on its own).
    public func shutdown() {
        stopping.store(true, ordering: .relaxed)
        queue.sync {
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
