/// Cryptokey routing table: maps IP prefixes to a value (a peer handle) with longest-prefix match.
///
/// Outbound, the destination of a packet read from the TUN picks the peer; inbound, the source of
/// a decrypted packet must map back to the peer that sent it. Semantics follow WireGuard's
/// allowedips: prefixes are stored masked, inserting a prefix that is already present moves it to
/// the new value, and removing a peer removes all of its prefixes.
///
/// One path-compressed binary trie per address family. Nodes live in a flat array and refer to
/// each other by index, so the table is a value type (copy-on-write), and `lookup` only reads:
/// it never allocates. The trie itself is not generic (so it is compiled specialised even when
/// `Value` is only known at run time); values sit in a parallel array indexed by node slot.
/// Not safe for concurrent mutation; readers on other threads need their own copy.
public struct AllowedIPs<Value> {
    private var v4 = PrefixTrie(width: 32)
    private var v6 = PrefixTrie(width: 128)
    /// Indexed by node slot of the trie of the same family; nil for branch points and free slots.
    private var v4Values: [Value?] = []
    private var v6Values: [Value?] = []

    public init() {}

    /// Number of prefixes stored.
    public var count: Int { v4.count + v6.count }
    public var isEmpty: Bool { count == 0 }

    /// Maps `prefix` (host bits ignored) to `value`, replacing the value already there, if any.
    public mutating func insert(_ prefix: IPPrefix, value: Value) {
        switch prefix.address {
        case .v4(let address):
            let slot = v4.insert(key: PrefixTrie.key(v4: address), length: prefix.length)
            Self.store(value, at: slot, in: &v4Values)
        case .v6(let address):
            let slot = v6.insert(key: address.value, length: prefix.length)
            Self.store(value, at: slot, in: &v6Values)
        }
    }

    /// Removes exactly `prefix` (host bits ignored). Returns the value it mapped to, if any.
    @discardableResult
    public mutating func remove(_ prefix: IPPrefix) -> Value? {
        switch prefix.address {
        case .v4(let address):
            let slot = v4.remove(key: PrefixTrie.key(v4: address), length: prefix.length)
            return Self.take(slot, from: &v4Values)
        case .v6(let address):
            let slot = v6.remove(key: address.value, length: prefix.length)
            return Self.take(slot, from: &v6Values)
        }
    }

    /// Removes every prefix whose value satisfies `shouldRemove`, as when a peer is removed.
    public mutating func removeAll(where shouldRemove: (Value) throws -> Bool) rethrows {
        for (key, length) in try Self.matching(v4, v4Values, shouldRemove) {
            _ = Self.take(v4.remove(key: key, length: length), from: &v4Values)
        }
        for (key, length) in try Self.matching(v6, v6Values, shouldRemove) {
            _ = Self.take(v6.remove(key: key, length: length), from: &v6Values)
        }
    }

    /// Empties the table.
    public mutating func removeAll() {
        self = AllowedIPs()
    }

    /// The value of the longest stored prefix containing `address`, or nil.
    public func lookup(_ address: IPAddress) -> Value? {
        switch address {
        case .v4(let value): return Self.value(at: v4.lookup(PrefixTrie.key(v4: value)), in: v4Values)
        case .v6(let bits): return Self.value(at: v6.lookup(bits.value), in: v6Values)
        }
    }

    /// Looks up the IPv4 address stored in network order at `bytes` (4 bytes must be readable),
    /// for instance a field of a packet header.
    public func lookup(v4NetworkBytes bytes: UnsafeRawPointer) -> Value? {
        let address = UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self))
        return Self.value(at: v4.lookup(PrefixTrie.key(v4: address)), in: v4Values)
    }

    /// Looks up the IPv6 address stored in network order at `bytes` (16 bytes must be readable).
    public func lookup(v6NetworkBytes bytes: UnsafeRawPointer) -> Value? {
        let high = UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self))
        let low = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        return Self.value(at: v6.lookup(UInt128(high) << 64 | UInt128(low)), in: v6Values)
    }

    /// Every stored prefix with its value, IPv4 first, each family in address then length order.
    public var entries: [(prefix: IPPrefix, value: Value)] {
        var result: [(prefix: IPPrefix, value: Value)] = []
        result.reserveCapacity(count)
        for slot in v4.slots {
            guard let (key, length) = v4.prefix(at: slot), let value = v4Values[slot],
                let prefix = IPPrefix(address: .v4(UInt32(truncatingIfNeeded: key >> 96)), length: length)
            else { continue }
            result.append((prefix, value))
        }
        for slot in v6.slots {
            guard let (key, length) = v6.prefix(at: slot), let value = v6Values[slot],
                let prefix = IPPrefix(address: .v6(IPv6Bits(key)), length: length)
            else { continue }
            result.append((prefix, value))
        }
        result.sort { lhs, rhs in
            lhs.prefix.address != rhs.prefix.address
                ? lhs.prefix.address < rhs.prefix.address : lhs.prefix.length < rhs.prefix.length
        }
        return result
    }

    private static func value(at slot: Int32, in values: [Value?]) -> Value? {
        slot == PrefixTrie.none ? nil : values[Int(slot)]
    }

    private static func store(_ value: Value, at slot: Int32, in values: inout [Value?]) {
        while values.count <= Int(slot) { values.append(nil) }
        values[Int(slot)] = value
    }

    private static func take(_ slot: Int32?, from values: inout [Value?]) -> Value? {
        guard let slot else { return nil }
        defer { values[Int(slot)] = nil }
        return values[Int(slot)]
    }

    /// Keys and lengths of the prefixes whose value matches; collected first because removal
    /// reshapes the trie.
    private static func matching(
        _ trie: PrefixTrie, _ values: [Value?], _ predicate: (Value) throws -> Bool
    ) rethrows -> [(UInt128, Int)] {
        var keys: [(UInt128, Int)] = []
        for slot in trie.slots {
            guard let prefix = trie.prefix(at: slot), let value = values[slot] else { continue }
            if try predicate(value) { keys.append(prefix) }
        }
        return keys
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

/// A path-compressed binary trie over keys held left-aligned in a UInt128 (an IPv4 address sits
/// in the top 32 bits), so one implementation serves both families. It stores only structure;
/// a node that holds a prefix is identified by its slot, and the owner keeps the value there.
///
/// Invariants: every node's key is masked to its length; a child's length is greater than its
/// parent's and its key agrees with the parent's on the parent's length, with the bit at position
/// `parent.length` choosing the slot; a node without a prefix (a branch point) has two children.
/// These keep the depth at most `width + 1` and make removal local.
struct PrefixTrie: Sendable {
    /// 32 bytes (stride), so two nodes share a cache line: lookups in a large table are bound by
    /// memory latency, one node per level.
    struct Node: Sendable {
        var key: UInt128
        var children: (Int32, Int32)
        var storedLength: UInt8
        var holdsPrefix: Bool

        var length: Int { Int(storedLength) }
    }

    /// The "no node" index.
    static let none: Int32 = -1

    let width: Int
    /// Number of prefixes (not nodes) stored.
    private(set) var count = 0
    private var root: Int32 = PrefixTrie.none
    private var nodes: [Node] = []
    /// Slots of removed nodes, reused before `nodes` grows.
    private var free: [Int32] = []

    init(width: Int) { self.width = width }

    static func key(v4 address: UInt32) -> UInt128 { UInt128(address) << 96 }

    /// All-ones in the top `length` bits; `<<` by 128 yields 0, which is right for /0.
    static func mask(_ length: Int) -> UInt128 { ~UInt128(0) << (128 - length) }

    /// Bit `position` counted from the most significant end (0 is the top bit).
    static func bit(_ key: UInt128, at position: Int) -> Int {
        Int(truncatingIfNeeded: (key >> (127 - position)) & 1)
    }

    /// Every slot index that may hold a prefix; see `prefix(at:)`.
    var slots: Range<Int> { nodes.indices }

    /// The key and length stored at `slot`, or nil if the slot is a branch point or free.
    func prefix(at slot: Int) -> (UInt128, Int)? {
        nodes[slot].holdsPrefix ? (nodes[slot].key, nodes[slot].length) : nil
    }

    /// The slot of the longest stored prefix containing `key`, or `none`. Reads only.
    func lookup(_ key: UInt128) -> Int32 {
        var best = PrefixTrie.none
        var index = root
        while index != PrefixTrie.none {
            let node = nodes[Int(index)]
            guard (key ^ node.key) & PrefixTrie.mask(node.length) == 0 else { break }
            if node.holdsPrefix { best = index }
            guard node.length < width else { break }
            index = PrefixTrie.bit(key, at: node.length) == 0 ? node.children.0 : node.children.1
        }
        return best
    }

    /// Adds the prefix (host bits of `rawKey` beyond `length` are ignored) if absent and returns
    /// the slot that holds it, whether new or already there.
    mutating func insert(key rawKey: UInt128, length: Int) -> Int32 {
        precondition(length >= 0 && length <= width, "prefix length out of range")
        let key = rawKey & PrefixTrie.mask(length)
        // Descend while the node is a prefix of the new key no longer than it.
        var parent = PrefixTrie.none
        var side = 0
        var index = root
        while index != PrefixTrie.none {
            let node = nodes[Int(index)]
            guard node.length <= length, (key ^ node.key) & PrefixTrie.mask(node.length) == 0 else {
                break
            }
            if node.length == length {
                if !node.holdsPrefix {
                    count += 1
                    nodes[Int(index)].holdsPrefix = true
                }
                return index
            }
            parent = index
            side = PrefixTrie.bit(key, at: node.length)
            index = child(of: index, side)
        }
        count += 1
        let fresh = makeNode(key: key, length: length, holdsPrefix: true)
        guard index != PrefixTrie.none else {
            link(parent: parent, side: side, to: fresh)
            return fresh
        }
        // `index` is the subtree in the new key's way. Either the new prefix covers it, or the
        // two diverge and need a branch point at their common prefix.
        let existing = nodes[Int(index)]
        let common = min((key ^ existing.key).leadingZeroBitCount, length)
        if common == length {
            setChild(of: fresh, PrefixTrie.bit(existing.key, at: length), to: index)
            link(parent: parent, side: side, to: fresh)
        } else {
            let branch = makeNode(key: key & PrefixTrie.mask(common), length: common, holdsPrefix: false)
            setChild(of: branch, PrefixTrie.bit(key, at: common), to: fresh)
            setChild(of: branch, PrefixTrie.bit(existing.key, at: common), to: index)
            link(parent: parent, side: side, to: branch)
        }
        return fresh
    }

    /// Removes exactly this prefix. Returns the slot that held it (now free, and reusable by the
    /// next insert), or nil if it was not stored.
    mutating func remove(key rawKey: UInt128, length: Int) -> Int32? {
        guard length >= 0 && length <= width else { return nil }
        let key = rawKey & PrefixTrie.mask(length)
        var grandparent = PrefixTrie.none
        var parentSide = 0
        var parent = PrefixTrie.none
        var side = 0
        var index = root
        while index != PrefixTrie.none {
            let node = nodes[Int(index)]
            guard node.length <= length, (key ^ node.key) & PrefixTrie.mask(node.length) == 0 else {
                return nil
            }
            if node.length == length { break }
            grandparent = parent
            parentSide = side
            parent = index
            side = PrefixTrie.bit(key, at: node.length)
            index = child(of: index, side)
        }
        guard index != PrefixTrie.none, nodes[Int(index)].holdsPrefix else { return nil }
        count -= 1
        nodes[Int(index)].holdsPrefix = false

        let (left, right) = nodes[Int(index)].children
        if left != PrefixTrie.none && right != PrefixTrie.none {
            return index  // stays as a branch point; its slot no longer holds a prefix
        }
        let survivor = left != PrefixTrie.none ? left : right
        link(parent: parent, side: side, to: survivor)
        release(index)
        // A parent that is only a branch point, left with one child, is spliced out too.
        if survivor == PrefixTrie.none, parent != PrefixTrie.none, !nodes[Int(parent)].holdsPrefix {
            let sibling = child(of: parent, 1 - side)
            link(parent: grandparent, side: parentSide, to: sibling)
            release(parent)
        }
        return index
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
        if parent == PrefixTrie.none {
            root = target
        } else {
            setChild(of: parent, side, to: target)
        }
    }

    private mutating func makeNode(key: UInt128, length: Int, holdsPrefix: Bool) -> Int32 {
        let node = Node(
            key: key, children: (PrefixTrie.none, PrefixTrie.none), storedLength: UInt8(length),
            holdsPrefix: holdsPrefix)
        if let slot = free.popLast() {
            nodes[Int(slot)] = node
            return slot
        }
        precondition(nodes.count < Int(Int32.max), "allowed-IPs table full")
        nodes.append(node)
        return Int32(nodes.count - 1)
    }

    private mutating func release(_ index: Int32) {
        nodes[Int(index)] = Node(
            key: 0, children: (PrefixTrie.none, PrefixTrie.none), storedLength: 0, holdsPrefix: false)
        free.append(index)
    }
}
