import CLinuxShim
import Dispatch
import Glibc
import Logging

/// A change to the TUN link that the kernel announced.
public enum LinkEvent: Hashable, Sendable {
    case mtuChanged(Int)
    case up
    case down
    /// The link no longer exists (`RTM_DELLINK`, or a re-query answered ENODEV).
    case deleted
}

/// Watches one link through rtnetlink notifications (`RTNLGRP_LINK`) on a Dispatch read source:
/// MTU changes, up/down and deletion arrive as they happen, with no polling.
///
/// Its socket is opened once, at start: running out of descriptors later cannot look like a
/// deleted link. When notifications were lost (ENOBUFS: the receive buffer overflowed) it asks the
/// kernel for the link's state again. `@unchecked Sendable` is sound because `socket`, `state` and
/// `source` are touched only on `queue` (the read source's handler, and `cancel` there too).
public final class LinkMonitor: @unchecked Sendable {
    public let interfaceIndex: Int32
    let queue: DispatchQueue
    private let socket: NetlinkSocket
    private let logger: Logger
    private let name: String
    /// The last state seen, to tell what changed (on `queue`).
    private var state: LinkState
    /// The sequence number of an outstanding re-query, whose ENODEV answer means "deleted".
    private(set) var querySequence: UInt32?
    private var source: DispatchSourceRead?
    private var deliveredDeletion = false
    private let handler: @Sendable (LinkEvent) -> Void

    /// Subscribes to link notifications and reads the link's current state; `handler` runs on
    /// `queue` for every change to link `name`. Call `start()` to begin delivering.
    public init(
        name: String, queue: DispatchQueue, logger: Logger, handler: @escaping @Sendable (LinkEvent) -> Void
    ) throws {
        self.name = name
        self.queue = queue
        self.logger = logger
        self.handler = handler
        socket = try NetlinkSocket(groups: [UInt32(RTNLGRP_LINK.rawValue)])
        // Subscribed before the query: a change in between is seen by one or the other.
        state = try socket.queryLink(index: 0, name: name)
        interfaceIndex = state.index
    }

    /// Starts the read source on `queue`.
    public func start() {
        queue.async { [self] in
            let source = DispatchSource.makeReadSource(fileDescriptor: socket.fileDescriptor, queue: queue)
            source.setEventHandler { [unowned self] in self.drain() }
            source.setCancelHandler { [socket] in socket.close() }
            source.resume()
            self.source = source
        }
    }

    /// Stops watching and closes the socket. Call on `queue`.
    public func cancel() {
        dispatchPrecondition(condition: .onQueue(queue))
        if let source {
            source.cancel()
        } else {
            socket.close()
        }
        source = nil
    }

    /// Reads every queued notification (bounded per wake-up) and reports what changed.
    private func drain() {
        for _ in 0..<64 {
            guard source != nil else { return }
            let replies: [Netlink.Reply]
            do {
                guard let received = try socket.receiveAvailable() else { return }
                replies = received
            } catch let error where error.errno == ENOBUFS {
                logger.info("\(name): link notifications lost (receive buffer full); asking the kernel again")
                requery()
                continue
            } catch {
                // Not a statement about the link: report it, ask again, keep the tunnel.
                logger.warning("\(name): reading link notifications failed: \(error)")
                requery()
                return
            }
            for reply in replies { handle(reply) }
        }
    }

    /// Handles one message: a notification (or re-query answer) for our link, or an error answer
    /// to our re-query. Other links' messages are ignored.
    func handle(_ reply: Netlink.Reply) {
        switch reply {
        case .link(_, let update) where update.index == interfaceIndex:
            for event in LinkMonitor.changes(from: state, to: update) { deliver(event) }
            state = update
        case .ack(let sequence, let code, _) where sequence == querySequence:
            querySequence = nil
            if code == ENODEV {
                deliver(.deleted)
            } else if code != 0 {
                logger.warning("\(name): link query failed: \(SystemError.message(for: code)) (errno \(code))")
            }
        default:
            break
        }
    }

    /// What changed between two states of the same link, in the order to report it.
    static func changes(from old: LinkState, to new: LinkState) -> [LinkEvent] {
        if new.deleted { return [.deleted] }
        var events: [LinkEvent] = []
        if let mtu = new.mtu, mtu != old.mtu { events.append(.mtuChanged(mtu)) }
        if new.isUp != old.isUp { events.append(new.isUp ? .up : .down) }
        return events
    }

    private func deliver(_ event: LinkEvent) {
        if event == .deleted {
            guard !deliveredDeletion else { return }
            deliveredDeletion = true
        }
        handler(event)
    }

    /// Asks for the link's state; the answer arrives through the read source like a notification.
    func requery() {
        let sequence = socket.sequence()
        querySequence = sequence
        do {
            try socket.send(Netlink.getLink(interfaceIndex: interfaceIndex, name: nil, sequence: sequence))
        } catch {
            logger.warning("\(name): asking for link state failed: \(error)")
        }
    }
}
