/// Cryptokey routing table: maps IP prefixes to a value (a peer handle) with longest-prefix match.
///
/// Outbound, the destination of a packet read from the TUN picks the peer; inbound, the source of
/// a decrypted packet must map back to the peer that sent it. Semantics follow WireGuard's
/// allowedips: prefixes are stored masked, inserting a prefix that is already present moves it to
/// the new value, and removing a peer removes all of its prefixes.
///
/// One path-compressed binary trie per address family. Nodes live in a flat array and refer to
/// each other by index, so the table is a value type (copy-on-write), and `lookup` only reads:
/// it never allocates. Not safe for concurrent mutation; readers on other threads need a copy.
public struct AllowedIPs<Value> {
    private var v4 = Trie(width: 32)
    private var v6 = Trie(width: 128)

    public init() {}

    /// Number of prefixes stored.
    public var count: Int { v4.count + v6.count }
    public var isEmpty: Bool { count == 0 }

    /// Maps `prefix` (host bits ignored) to `value`, replacing the value already there, if any.
    public mutating func insert(_ prefix: IPPrefix, value: Value) {
        switch prefix.address {
        case .v4(let address): v4.insert(key: Trie.key(v4: address), length: prefix.length, value: value)
        case .v6(let address): v6.insert(key: address, length: prefix.length, value: value)
        }
    }

    /// Removes exactly `prefix` (host bits ignored). Returns the value it mapped to, if any.
    @discardableResult
    public mutating func remove(_ prefix: IPPrefix) -> Value? {
        switch prefix.address {
        case .v4(let address): return v4.remove(key: Trie.key(v4: address), length: prefix.length)
        case .v6(let address): return v6.remove(key: address, length: prefix.length)
        }
    }

    /// Removes every prefix whose value satisfies `shouldRemove`, as when a peer is removed.
    public mutating func removeAll(where shouldRemove: (Value) throws -> Bool) rethrows {
        try v4.removeAll(where: shouldRemove)
        try v6.removeAll(where: shouldRemove)
    }

    /// Empties the table.
    public mutating func removeAll() {
        v4 = Trie(width: 32)
        v6 = Trie(width: 128)
    }

    /// The value of the longest stored prefix containing `address`, or nil.
    public func lookup(_ address: IPAddress) -> Value? {
        switch address {
        case .v4(let value): return v4.lookup(Trie.key(v4: value))
        case .v6(let value): return v6.lookup(value)
        }
    }

    /// Looks up the IPv4 address stored in network order at `bytes` (4 bytes must be readable),
    /// for instance a field of a packet header.
    public func lookup(v4NetworkBytes bytes: UnsafeRawPointer) -> Value? {
        let address = UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self))
        return v4.lookup(Trie.key(v4: address))
    }

    /// Looks up the IPv6 address stored in network order at `bytes` (16 bytes must be readable).
    public func lookup(v6NetworkBytes bytes: UnsafeRawPointer) -> Value? {
        let high = UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self))
        let low = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        return v6.lookup(UInt128(high) << 64 | UInt128(low))
    }

    /// Every stored prefix with its value, IPv4 first, each family in address then length order.
    public var entries: [(prefix: IPPrefix, value: Value)] {
        v4.entries(family: .v4) + v6.entries(family: .v6)
    }
}

extension AllowedIPs where Value: Equatable {
    /// Prefixes mapped to `value`, in the order of `entries`.
    public func prefixes(for value: Value) -> [IPPrefix] {
        entries.filter { $0.value == value }.map(\.prefix)
    }

    /// Removes every prefix mapped to `value`.
    public mutating func removeAll(value: Value) {
        removeAll(where: { $0 == value })
    }
}

extension AllowedIPs: Sendable where Value: Sendable {}

extension AllowedIPs: CustomStringConvertible {
    /// The stored prefixes and values, not the node arrays (which is what reflection would print).
    public var description: String {
        "AllowedIPs[" + entries.map { "\($0.prefix) → \($0.value)" }.joined(separator: ", ") + "]"
    }
}

extension AllowedIPs {
    /// A path-compressed binary trie over keys held left-aligned in a UInt128 (an IPv4 address
    /// sits in the top 32 bits), so one implementation serves both families.
    ///
    /// Invariants: every node's key is masked to its length; a child's length is greater than its
    /// parent's and its key agrees with the parent's on the parent's length, with the bit at
    /// position `parent.length` choosing the slot; a node without a value (a branch point) has
    /// two children. These keep the depth at most `width + 1` and removal local.
    fileprivate struct Trie {
        struct Node {
            var key: UInt128
            var length: Int
            var children: (Int32, Int32)
            var hasValue: Bool
        }

        static var none: Int32 { -1 }

        let width: Int
        private(set) var count = 0
        private var root: Int32 = Trie.none
        private var nodes: [Node] = []
        /// Parallel to `nodes`; nil for branch points and free slots.
        private var values: [Value?] = []
        /// Slots of removed nodes, reused before the arrays grow.
        private var free: [Int32] = []

        init(width: Int) { self.width = width }

        static func key(v4 address: UInt32) -> UInt128 { UInt128(address) << 96 }

        /// All-ones in the top `length` bits; `<<` by 128 yields 0, which is right for /0.
        static func mask(_ length: Int) -> UInt128 { ~UInt128(0) << (128 - length) }

        /// Bit `position` counted from the most significant end (0 is the top bit).
        static func bit(_ key: UInt128, at position: Int) -> Int {
            Int(truncatingIfNeeded: (key >> (127 - position)) & 1)
        }

        private func child(of index: Int32, _ side: Int) -> Int32 {
            side == 0 ? nodes[Int(index)].children.0 : nodes[Int(index)].children.1
        }

        private mutating func setChild(of index: Int32, _ side: Int, to target: Int32) {
            if side == 0 {
                nodes[Int(index)].children.0 = target
            } else {
                nodes[Int(index)].children.1 = target
            }
        }

        /// Points the slot that `parent`/`side` names (the root when `parent` is none) at `target`.
        private mutating func link(parent: Int32, side: Int, to target: Int32) {
            if parent == Trie.none {
                root = target
            } else {
                setChild(of: parent, side, to: target)
            }
        }

        private mutating func makeNode(key: UInt128, length: Int, value: Value?) -> Int32 {
            let node = Node(
                key: key, length: length, children: (Trie.none, Trie.none), hasValue: value != nil)
            if let slot = free.popLast() {
                nodes[Int(slot)] = node
                values[Int(slot)] = value
                return slot
            }
            precondition(nodes.count < Int(Int32.max), "allowed-IPs table full")
            nodes.append(node)
            values.append(value)
            return Int32(nodes.count - 1)
        }

        private mutating func release(_ index: Int32) {
            nodes[Int(index)] = Node(key: 0, length: 0, children: (Trie.none, Trie.none), hasValue: false)
            values[Int(index)] = nil
            free.append(index)
        }

        func lookup(_ key: UInt128) -> Value? {
            var best: Int32 = Trie.none
            var index = root
            while index != Trie.none {
                let node = nodes[Int(index)]
                guard (key ^ node.key) & Trie.mask(node.length) == 0 else { break }
                if node.hasValue { best = index }
                guard node.length < width else { break }
                index = Trie.bit(key, at: node.length) == 0 ? node.children.0 : node.children.1
            }
            return best == Trie.none ? nil : values[Int(best)]
        }

        mutating func insert(key rawKey: UInt128, length: Int, value: Value) {
            precondition(length >= 0 && length <= width, "prefix length out of range")
            let key = rawKey & Trie.mask(length)
            // Descend while the node is a prefix of the new key no longer than it.
            var parent = Trie.none
            var side = 0
            var index = root
            while index != Trie.none {
                let node = nodes[Int(index)]
                guard node.length <= length, (key ^ node.key) & Trie.mask(node.length) == 0 else {
                    break
                }
                if node.length == length {
                    if !node.hasValue { count += 1 }
                    nodes[Int(index)].hasValue = true
                    values[Int(index)] = value
                    return
                }
                parent = index
                side = Trie.bit(key, at: node.length)
                index = child(of: index, side)
            }
            count += 1
            let fresh = makeNode(key: key, length: length, value: value)
            guard index != Trie.none else {
                link(parent: parent, side: side, to: fresh)
                return
            }
            // `index` is the subtree in the new key's way. Either the new prefix covers it, or the
            // two diverge and need a branch point at their common prefix.
            let existing = nodes[Int(index)]
            let common = min((key ^ existing.key).leadingZeroBitCount, length)
            if common == length {
                setChild(of: fresh, Trie.bit(existing.key, at: length), to: index)
                link(parent: parent, side: side, to: fresh)
            } else {
                let branch = makeNode(key: key & Trie.mask(common), length: common, value: nil)
                setChild(of: branch, Trie.bit(key, at: common), to: fresh)
                setChild(of: branch, Trie.bit(existing.key, at: common), to: index)
                link(parent: parent, side: side, to: branch)
            }
        }

        mutating func remove(key rawKey: UInt128, length: Int) -> Value? {
            guard length >= 0 && length <= width else { return nil }
            let key = rawKey & Trie.mask(length)
            var grandparent = Trie.none
            var parentSide = 0
            var parent = Trie.none
            var side = 0
            var index = root
            while index != Trie.none {
                let node = nodes[Int(index)]
                guard node.length <= length, (key ^ node.key) & Trie.mask(node.length) == 0 else {
                    return nil
                }
                if node.length == length { break }
                grandparent = parent
                parentSide = side
                parent = index
                side = Trie.bit(key, at: node.length)
                index = child(of: index, side)
            }
            guard index != Trie.none, nodes[Int(index)].hasValue else { return nil }
            let removed = values[Int(index)]
            count -= 1
            nodes[Int(index)].hasValue = false
            values[Int(index)] = nil

            let (left, right) = nodes[Int(index)].children
            if left != Trie.none && right != Trie.none {
                return removed  // still a needed branch point
            }
            let survivor = left != Trie.none ? left : right
            link(parent: parent, side: side, to: survivor)
            release(index)
            // A valueless parent left with one child is no longer a branch point: splice it out.
            if survivor == Trie.none, parent != Trie.none, !nodes[Int(parent)].hasValue {
                let sibling = child(of: parent, 1 - side)
                link(parent: grandparent, side: parentSide, to: sibling)
                release(parent)
            }
            return removed
        }

        mutating func removeAll(where shouldRemove: (Value) throws -> Bool) rethrows {
            var doomed: [(UInt128, Int)] = []
            for index in nodes.indices where nodes[index].hasValue {
                if let value = values[index], try shouldRemove(value) {
                    doomed.append((nodes[index].key, nodes[index].length))
                }
            }
            for (key, length) in doomed { _ = remove(key: key, length: length) }
        }

        enum Family { case v4, v6 }

        func entries(family: Family) -> [(prefix: IPPrefix, value: Value)] {
            var result: [(prefix: IPPrefix, value: Value)] = []
            result.reserveCapacity(count)
            for index in nodes.indices where nodes[index].hasValue {
                let node = nodes[index]
                let address: IPAddress =
                    family == .v4 ? .v4(UInt32(truncatingIfNeeded: node.key >> 96)) : .v6(node.key)
                guard let prefix = IPPrefix(address: address, length: node.length),
                    let value = values[index]
                else { continue }
                result.append((prefix, value))
            }
            result.sort { lhs, rhs in
                lhs.prefix.address != rhs.prefix.address
                    ? lhs.prefix.address < rhs.prefix.address : lhs.prefix.length < rhs.prefix.length
            }
            return result
        }
    }
}

extension AllowedIPs.Trie: Sendable where Value: Sendable {}
