import Testing

@testable import TunnelCore

private func v4(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) -> IPAddress {
    .v4(UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d))
}

private func v6(_ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: UInt32) -> IPAddress {
    .v6(IPv6Bits(UInt128(a) << 96 | UInt128(b) << 64 | UInt128(c) << 32 | UInt128(d)))
}

private func prefix(_ address: IPAddress, _ length: Int) -> IPPrefix {
    IPPrefix(address: address, length: length)!
}

private func prefix(_ text: String) -> IPPrefix { IPPrefix(text)! }

/// The slow reference: a list scanned for the longest matching prefix.
private struct ReferenceTable {
    var entries: [(prefix: IPPrefix, value: Int)] = []

    mutating func insert(_ prefix: IPPrefix, value: Int) {
        let masked = prefix.masked
        if let index = entries.firstIndex(where: { $0.prefix == masked }) {
            entries[index].value = value
        } else {
            entries.append((masked, value))
        }
    }

    mutating func remove(_ prefix: IPPrefix) -> Int? {
        let masked = prefix.masked
        guard let index = entries.firstIndex(where: { $0.prefix == masked }) else { return nil }
        return entries.remove(at: index).value
    }

    mutating func removeAll(value: Int) { entries.removeAll { $0.value == value } }

    func lookup(_ address: IPAddress) -> Int? {
        var best: (length: Int, value: Int)? = nil
        for entry in entries where entry.prefix.contains(address) {
            if best == nil || entry.prefix.length > best!.length {
                best = (entry.prefix.length, entry.value)
            }
        }
        return best?.value
    }
}

@Suite struct AllowedIPsTests {
    // MARK: Hand-written cases

    @Test func emptyTableFindsNothing() {
        let table = AllowedIPs<Int>()
        #expect(table.isEmpty)
        #expect(table.lookup(v4(10, 0, 0, 1)) == nil)
        #expect(table.lookup(v6(0, 0, 0, 1)) == nil)
    }

    @Test func defaultRoutesAreFamilySpecific() {
        var table = AllowedIPs<Int>()
        table.insert(prefix("0.0.0.0/0"), value: 4)
        #expect(table.lookup(v4(0, 0, 0, 0)) == 4)
        #expect(table.lookup(v4(255, 255, 255, 255)) == 4)
        #expect(table.lookup(v6(0, 0, 0, 0)) == nil)
        table.insert(prefix("::/0"), value: 6)
        #expect(table.lookup(v6(0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff)) == 6)
        #expect(table.lookup(v4(1, 2, 3, 4)) == 4)
        #expect(table.count == 2)
    }

    @Test func hostRoutesMatchOnlyTheirAddress() {
        var table = AllowedIPs<Int>()
        table.insert(prefix("192.0.2.7/32"), value: 1)
        table.insert(prefix("2001:db8::7/128"), value: 2)
        #expect(table.lookup(v4(192, 0, 2, 7)) == 1)
        #expect(table.lookup(v4(192, 0, 2, 6)) == nil)
        #expect(table.lookup(v4(192, 0, 2, 8)) == nil)
        #expect(table.lookup(IPAddress("2001:db8::7")!) == 2)
        #expect(table.lookup(IPAddress("2001:db8::6")!) == nil)
        #expect(table.lookup(IPAddress("2001:db8::7:0")!) == nil)
    }

    @Test func longestPrefixWinsAmongOverlaps() {
        var table = AllowedIPs<Int>()
        table.insert(prefix("10.0.0.0/8"), value: 8)
        table.insert(prefix("10.1.0.0/16"), value: 16)
        table.insert(prefix("10.1.2.0/24"), value: 24)
        table.insert(prefix("10.1.2.3/32"), value: 32)
        #expect(table.lookup(v4(10, 1, 2, 3)) == 32)
        #expect(table.lookup(v4(10, 1, 2, 4)) == 24)
        #expect(table.lookup(v4(10, 1, 3, 4)) == 16)
        #expect(table.lookup(v4(10, 2, 3, 4)) == 8)
        #expect(table.lookup(v4(11, 0, 0, 0)) == nil)
        // Removing the middle of the chain exposes the next shorter prefix.
        #expect(table.remove(prefix("10.1.2.0/24")) == 24)
        #expect(table.lookup(v4(10, 1, 2, 4)) == 16)
        #expect(table.lookup(v4(10, 1, 2, 3)) == 32)
        #expect(table.remove(prefix("10.1.2.0/24")) == nil)
        #expect(table.count == 3)
    }

    @Test func insertStoresMaskedAndReinsertMoves() {
        var table = AllowedIPs<String>()
        table.insert(prefix("192.168.7.99/24"), value: "a")
        #expect(table.prefixes(for: "a") == [prefix("192.168.7.0/24")])
        table.insert(prefix("192.168.7.1/24"), value: "b")
        #expect(table.prefixes(for: "a").isEmpty)
        #expect(table.prefixes(for: "b") == [prefix("192.168.7.0/24")])
        #expect(table.count == 1)
        // Removal also ignores host bits.
        #expect(table.remove(prefix("192.168.7.200/24")) == "b")
        #expect(table.isEmpty)
    }

    @Test func removeOfAbsentOrBranchPrefixIsNoOp() {
        var table = AllowedIPs<Int>()
        table.insert(prefix("10.0.0.0/24"), value: 1)
        table.insert(prefix("10.0.1.0/24"), value: 2)
        // 10.0.0.0/23 exists internally as a branch point but holds no value.
        #expect(table.remove(prefix("10.0.0.0/23")) == nil)
        #expect(table.remove(prefix("10.0.0.0/25")) == nil)
        #expect(table.remove(prefix("::/0")) == nil)
        #expect(table.lookup(v4(10, 0, 0, 1)) == 1)
        #expect(table.lookup(v4(10, 0, 1, 1)) == 2)
        #expect(table.count == 2)
    }

    @Test func prefixesForValueAndRemoveAllByValue() {
        var table = AllowedIPs<Int>()
        table.insert(prefix("10.0.0.0/8"), value: 1)
        table.insert(prefix("fd00::/8"), value: 1)
        table.insert(prefix("10.2.0.0/16"), value: 2)
        table.insert(prefix("10.3.0.0/16"), value: 1)
        #expect(
            table.prefixes(for: 1) == [prefix("10.0.0.0/8"), prefix("10.3.0.0/16"), prefix("fd00::/8")])
        table.removeAll(value: 1)
        #expect(table.prefixes(for: 1).isEmpty)
        #expect(table.lookup(v4(10, 2, 0, 1)) == 2)
        #expect(table.lookup(v4(10, 3, 0, 1)) == nil)
        #expect(table.lookup(IPAddress("fd00::1")!) == nil)
        #expect(table.count == 1)
    }

    @Test func rawNetworkByteLookups() {
        var table = AllowedIPs<Int>()
        table.insert(prefix("198.51.100.0/24"), value: 4)
        table.insert(prefix("2001:db8:1::/48"), value: 6)
        let four: [UInt8] = [198, 51, 100, 17]
        let six = IPAddress("2001:db8:1::99")!.networkBytes
        #expect(four.withUnsafeBytes { table.lookup(v4NetworkBytes: $0.baseAddress!) } == 4)
        #expect(six.withUnsafeBytes { table.lookup(v6NetworkBytes: $0.baseAddress!) } == 6)
        // Unaligned: the address starts one byte into the buffer.
        let shifted: [UInt8] = [0xee] + four
        #expect(shifted.withUnsafeBytes { table.lookup(v4NetworkBytes: $0.baseAddress! + 1) } == 4)
    }

    @Test func isACopyOnWriteValue() {
        var original = AllowedIPs<Int>()
        original.insert(prefix("10.0.0.0/8"), value: 1)
        var copy = original
        copy.insert(prefix("10.0.0.0/8"), value: 2)
        copy.insert(prefix("10.9.0.0/16"), value: 3)
        #expect(original.lookup(v4(10, 9, 0, 1)) == 1)
        #expect(copy.lookup(v4(10, 9, 0, 1)) == 3)
    }

    /// Facts from the Linux kernel's `drivers/net/wireguard/selftest/allowedips.c`
    /// (`wg_allowedips_selftest`, also ported in wireguard-go `device/allowedips_test.go`).
    @Test func kernelSelftestLookups() {
        var t = AllowedIPs<Character>()
        t.insert(prefix(v4(192, 168, 4, 0), 24), value: "a")
        t.insert(prefix(v4(192, 168, 4, 4), 32), value: "b")
        t.insert(prefix(v4(192, 168, 0, 0), 16), value: "c")
        t.insert(prefix(v4(192, 95, 5, 64), 27), value: "d")
        t.insert(prefix(v4(192, 95, 5, 65), 27), value: "c")  // replaces; masking required
        t.insert(prefix(v6(0x2607_5300, 0x6000_6b00, 0, 0xc05f_0543), 128), value: "d")
        t.insert(prefix(v6(0x2607_5300, 0x6000_6b00, 0, 0), 64), value: "c")
        t.insert(prefix(v4(0, 0, 0, 0), 0), value: "e")
        t.insert(prefix(v6(0, 0, 0, 0), 0), value: "e")
        t.insert(prefix(v6(0, 0, 0, 0), 0), value: "f")  // replaces
        t.insert(prefix(v6(0x2404_6800, 0, 0, 0), 32), value: "g")
        t.insert(prefix(v6(0x2404_6800, 0x4004_0800, 0xdead_beef, 0xdead_beef), 64), value: "h")
        t.insert(prefix(v6(0x2404_6800, 0x4004_0800, 0xdead_beef, 0xdead_beef), 128), value: "a")
        t.insert(prefix(v6(0x2444_6800, 0x40e4_0800, 0xdeae_beef, 0x0def_beef), 128), value: "c")
        t.insert(prefix(v6(0x2444_6800, 0xf0e4_0800, 0xeeae_beef, 0), 98), value: "b")
        t.insert(prefix(v4(64, 15, 112, 0), 20), value: "g")
        t.insert(prefix(v4(64, 15, 123, 211), 25), value: "h")  // masking required
        t.insert(prefix(v4(10, 0, 0, 0), 25), value: "a")
        t.insert(prefix(v4(10, 0, 0, 128), 25), value: "b")
        t.insert(prefix(v4(10, 1, 0, 0), 30), value: "a")
        t.insert(prefix(v4(10, 1, 0, 4), 30), value: "b")
        t.insert(prefix(v4(10, 1, 0, 8), 29), value: "c")
        t.insert(prefix(v4(10, 1, 0, 16), 29), value: "d")

        let expectations: [(IPAddress, Character)] = [
            (v4(192, 168, 4, 20), "a"),
            (v4(192, 168, 4, 0), "a"),
            (v4(192, 168, 4, 4), "b"),
            (v4(192, 168, 200, 182), "c"),
            (v4(192, 95, 5, 68), "c"),
            (v4(192, 95, 5, 96), "e"),
            (v6(0x2607_5300, 0x6000_6b00, 0, 0xc05f_0543), "d"),
            (v6(0x2607_5300, 0x6000_6b00, 0, 0xc02e_01ee), "c"),
            (v6(0x2607_5300, 0x6000_6b01, 0, 0), "f"),
            (v6(0x2404_6800, 0x4004_0806, 0, 0x1006), "g"),
            (v6(0x2404_6800, 0x4004_0806, 0x1234, 0x5678), "g"),
            (v6(0x2404_67ff, 0x4004_0806, 0x1234, 0x5678), "f"),
            (v6(0x2404_6801, 0x4004_0806, 0x1234, 0x5678), "f"),
            (v6(0x2404_6800, 0x4004_0800, 0x1234, 0x5678), "h"),
            (v6(0x2404_6800, 0x4004_0800, 0, 0), "h"),
            (v6(0x2404_6800, 0x4004_0800, 0x1010_1010, 0x1010_1010), "h"),
            (v6(0x2404_6800, 0x4004_0800, 0xdead_beef, 0xdead_beef), "a"),
            (v4(64, 15, 116, 26), "g"),
            (v4(64, 15, 127, 3), "g"),
            (v4(64, 15, 123, 1), "g"),
            (v4(64, 15, 123, 128), "h"),
            (v4(64, 15, 123, 129), "h"),
            (v4(10, 0, 0, 52), "a"),
            (v4(10, 0, 0, 220), "b"),
            (v4(10, 1, 0, 2), "a"),
            (v4(10, 1, 0, 6), "b"),
            (v4(10, 1, 0, 10), "c"),
            (v4(10, 1, 0, 20), "d"),
        ]
        for (number, (address, expected)) in zip(1..., expectations) {
            #expect(t.lookup(address) == expected, "kernel allowedips self-test \(number): \(address)")
        }

        for first: UInt8 in [1, 64, 128, 192, 255] {
            t.insert(prefix(v4(first, 0, 0, 0), 32), value: "a")
        }
        t.removeAll(value: "a")
        for first: UInt8 in [1, 64, 128, 192, 255] {
            #expect(t.lookup(v4(first, 0, 0, 0)) != "a")
        }
    }

    /// Kernel self-test: a peer's nested prefixes all go when the peer is removed.
    @Test func kernelSelftestRemoveNestedByPeer() {
        var t = AllowedIPs<Character>()
        t.insert(prefix(v4(192, 168, 0, 0), 16), value: "a")
        t.insert(prefix(v4(192, 168, 0, 0), 24), value: "a")
        t.removeAll(value: "a")
        #expect(t.lookup(v4(192, 168, 0, 1)) == nil)
        #expect(t.isEmpty)
    }

    /// Kernel self-test: 128 host routes that differ from all-ones in one bit each build the
    /// deepest possible trie; it must insert, look up and empty cleanly.
    @Test func kernelSelftestDeepTrie() {
        var t = AllowedIPs<Int>()
        for bit in 0..<128 {
            t.insert(prefix(.v6(IPv6Bits(~(UInt128(1) << bit))), 128), value: bit)
        }
        #expect(t.count == 128)
        for bit in 0..<128 {
            #expect(t.lookup(.v6(IPv6Bits(~(UInt128(1) << bit)))) == bit)
        }
        #expect(t.lookup(.v6(IPv6Bits(~UInt128(0)))) == nil)
        t.removeAll(where: { _ in true })
        #expect(t.isEmpty)
        #expect(t.lookup(.v6(IPv6Bits(~UInt128(1)))) == nil)
    }

    /// Kernel self-test: the prefixes listed for a peer are stored masked.
    @Test func kernelSelftestListedPrefixesAreMasked() {
        var t = AllowedIPs<Character>()
        t.insert(prefix(v4(192, 95, 5, 93), 27), value: "a")
        t.insert(prefix(v6(0x2607_5300, 0x6000_6b00, 0, 0xc05f_0543), 128), value: "a")
        t.insert(prefix(v4(10, 1, 0, 20), 29), value: "a")
        t.insert(prefix(v6(0x2607_5300, 0x6d8a_6bf8, 0xdab1_f1df, 0xc05f_1523), 83), value: "a")
        t.insert(prefix(v6(0x2607_5300, 0x6d8a_6bf8, 0xdab1_f1df, 0xc05f_1523), 21), value: "a")
        let listed = Set(t.prefixes(for: "a"))
        #expect(
            listed == [
                prefix(v4(192, 95, 5, 64), 27),
                prefix(v6(0x2607_5300, 0x6000_6b00, 0, 0xc05f_0543), 128),
                prefix(v4(10, 1, 0, 16), 29),
                prefix(v6(0x2607_5300, 0x6d8a_6bf8, 0xdab1_e000, 0), 83),
                prefix(v6(0x2607_5000, 0, 0, 0), 21),
            ])
        #expect(t.count == 5)
    }

    // MARK: Differential test against the linear-scan reference

    /// An address near `base`: keeps its top `keep` bits and randomises the rest, so lookups and
    /// prefixes cluster the way real routes do (the kernel's randomised test mutates the same way).
    private static func mutate(
        _ base: UInt128, width: Int, keep: Int, using random: inout SplitMix64
    ) -> UInt128 {
        let noise = UInt128(random.next()) << 64 | UInt128(random.next())
        let fullMask: UInt128 = width == 128 ? ~0 : (UInt128(1) << width) - 1
        let keepMask: UInt128 = keep == 0 ? 0 : (fullMask << (width - keep)) & fullMask
        return (base & keepMask) | (noise & ~keepMask & fullMask)
    }

    private static func address(_ raw: UInt128, width: Int) -> IPAddress {
        width == 32 ? .v4(UInt32(truncatingIfNeeded: raw)) : .v6(IPv6Bits(raw))
    }

    private static func randomAddress(width: Int, using random: inout SplitMix64) -> UInt128 {
        mutate(0, width: width, keep: 0, using: &random)
    }

    private func runDifferential(width: Int, seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var table = AllowedIPs<Int>()
        var reference = ReferenceTable()
        let peers = 40
        var bases: [UInt128] = []
        for _ in 0..<24 { bases.append(Self.randomAddress(width: width, using: &random)) }

        func randomPrefix() -> IPPrefix {
            let base = bases[Int(random.next() % UInt64(bases.count))]
            let raw = Self.mutate(
                base, width: width, keep: Int(random.next() % UInt64(width + 1)), using: &random)
            // Any length from /0 to the full width.
            let length = Int(random.next() % UInt64(width + 1))
            return IPPrefix(address: Self.address(raw, width: width), length: length)!
        }

        func checkLookups(_ rounds: Int) {
            for _ in 0..<rounds {
                let raw: UInt128
                if random.next() % 4 == 0 {
                    raw = Self.randomAddress(width: width, using: &random)
                } else {
                    let base = bases[Int(random.next() % UInt64(bases.count))]
                    raw = Self.mutate(
                        base, width: width, keep: Int(random.next() % UInt64(width + 1)),
                        using: &random)
                }
                let address = Self.address(raw, width: width)
                let expected = reference.lookup(address)
                let actual = table.lookup(address)
                if actual != expected {
                    Issue.record(
                        "lookup \(address): trie \(String(describing: actual)), reference \(String(describing: expected))"
                    )
                    return
                }
            }
        }

        // Grow: inserts (many colliding, so overwrites happen) interleaved with lookups.
        for _ in 0..<1500 {
            let entry = randomPrefix()
            let value = Int(random.next() % UInt64(peers))
            table.insert(entry, value: value)
            reference.insert(entry, value: value)
        }
        #expect(table.count == reference.entries.count)
        checkLookups(4000)

        // Churn: removals of present and absent prefixes, re-inserts.
        for step in 0..<1500 {
            if step % 3 == 0, !reference.entries.isEmpty {
                let victim = reference.entries[Int(random.next() % UInt64(reference.entries.count))]
                #expect(table.remove(victim.prefix) == reference.remove(victim.prefix))
            } else if step % 3 == 1 {
                let entry = randomPrefix()
                #expect(table.remove(entry) == reference.remove(entry))
            } else {
                let entry = randomPrefix()
                let value = Int(random.next() % UInt64(peers))
                table.insert(entry, value: value)
                reference.insert(entry, value: value)
            }
        }
        #expect(table.count == reference.entries.count)
        checkLookups(4000)

        // Peers leave one by one, as in the kernel's randomised test.
        for peer in 0..<peers {
            let expectedPrefixes = Set(reference.entries.filter { $0.value == peer }.map(\.prefix))
            #expect(Set(table.prefixes(for: peer)) == expectedPrefixes)
            table.removeAll(value: peer)
            reference.removeAll(value: peer)
            #expect(table.count == reference.entries.count)
            if peer % 8 == 7 { checkLookups(500) }
        }
        #expect(table.isEmpty)
        #expect(table.lookup(Self.address(0, width: width)) == nil)
    }

    @Test(arguments: [UInt64(1), 2, 3])
    func differentialIPv4(seed: UInt64) {
        runDifferential(width: 32, seed: 0x0a11_0000 + seed)
    }

    @Test(arguments: [UInt64(1), 2, 3])
    func differentialIPv6(seed: UInt64) {
        runDifferential(width: 128, seed: 0x0a11_6000 + seed)
    }

    /// Both families in one table: operations on one never disturb the other.
    @Test func differentialMixedFamilies() {
        var random = SplitMix64(seed: 0x0a11_4600)
        var table = AllowedIPs<Int>()
        var reference = ReferenceTable()
        for _ in 0..<800 {
            let isV4 = random.next() % 2 == 0
            let width = isV4 ? 32 : 128
            let raw = Self.randomAddress(width: width, using: &random)
            // Short prefixes so random lookups actually hit.
            let length = Int(random.next() % 13)
            let entry = IPPrefix(address: Self.address(raw, width: width), length: length)!
            if random.next() % 5 == 0 {
                #expect(table.remove(entry) == reference.remove(entry))
            } else {
                table.insert(entry, value: length)
                reference.insert(entry, value: length)
            }
        }
        for _ in 0..<4000 {
            let width = random.next() % 2 == 0 ? 32 : 128
            let address = Self.address(Self.randomAddress(width: width, using: &random), width: width)
            #expect(table.lookup(address) == reference.lookup(address))
        }
    }
}
