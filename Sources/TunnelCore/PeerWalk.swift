import TunnelCrypto

/// A walk over a device's peers in pieces, each piece under its own hold of the device's owner,
/// so that copying 100,000 peers never holds it for long and never looks a peer up by key.
///
/// Between pieces the table may change (a `set` applied in between). The walk's place is then
/// no longer valid; it starts again from the first peer and says so (`restart`), and the caller
/// drops what it copied before. After `restartsBeforeWholeWalk` restarts the next piece takes
/// every peer left, so a table that keeps changing cannot keep a walk from ending.
///
/// Not thread-safe: one caller steps it, each step inside a hold of the device's owner.
public struct PeerWalk {
    private var next: Dictionary<PublicKey, Peer>.Index?
    private var generation: UInt64 = 0
    public private(set) var restarts = 0
    public private(set) var isFinished = false
    static let restartsBeforeWholeWalk = 2

    public init() {}

    /// Visits up to `limit` peers after those visited so far, in the table's order; `restart`
    /// runs first when the table changed since the last step (everything visited before is to
    /// be forgotten). Sets `isFinished` once the last peer has been visited. Call it with
    /// exclusive use of `device`.
    public mutating func step(_ device: Device, limit: Int, restart: () -> Void, visit: (Peer) -> Void) {
        guard !isFinished else { return }
        let table = device.peersByKey
        if next != nil, generation != device.peerTableGeneration {
            restarts += 1
            next = nil
            restart()
        }
        var index = next ?? table.startIndex
        generation = device.peerTableGeneration
        var budget = restarts > Self.restartsBeforeWholeWalk ? Int.max : max(1, limit)
        while index != table.endIndex, budget > 0 {
            visit(table[index].value)
            index = table.index(after: index)
            budget -= 1
        }
        next = index
        isFinished = index == table.endIndex
    }
}

extension PeerWalk {
    /// Every peer's public key, listed `perHold` keys a hold, reaching the device only through
    /// `locked` (which runs its argument with exclusive use of it: the caller's lock). The list
    /// is sized outside the lock from `expected` (the count from an earlier hold), so that it
    /// does not grow by doubling, megabytes at a time, under it.
    public static func keys(expected: Int, perHold: Int, locked: ((Device) -> Void) -> Void) -> [PublicKey] {
        var keys: [PublicKey] = []
        keys.reserveCapacity(expected)
        var walk = PeerWalk()
        while !walk.isFinished {
            locked { device in
                walk.step(device, limit: perHold) {
                    keys.removeAll(keepingCapacity: true)
                } visit: { peer in
                    keys.append(peer.publicKey)
                }
            }
        }
        return keys
    }
}
