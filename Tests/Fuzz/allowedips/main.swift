// The allowed-IPs table against a linear reference, and the inner IP header parser against a
// reference reading of RFC 791 / RFC 8200, for an arbitrary sequence of operations.
//
// Input: a sequence of operations, each an opcode byte and its operands (see `fuzzOne`).
// Addresses are built from a few bytes over one of four bases, so prefixes overlap often.
import FuzzSupport
import Glibc
import TunnelCore

/// The slow reference: a list scanned for the longest matching prefix (WireGuard's semantics:
/// prefixes stored masked, inserting an existing prefix moves it to the new value).
struct ReferenceTable {
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

    func lookup(_ address: IPAddress) -> Int? {
        var best: (length: Int, value: Int)? = nil
        for entry in entries where entry.prefix.contains(address) {
            if best == nil || entry.prefix.length > best!.length { best = (entry.prefix.length, entry.value) }
        }
        return best?.value
    }
}

let v4Bases: [UInt32] = [0xc633_0000, 0xc612_0000, 0, 0xffff_ff00]
let v6Bases: [UInt128] = [0x2001_0db8 << 96, 0, ~0, 0xfe80 << 112]

/// An address: a family bit and a base from `selector`, then 4 bytes XORed into the low bits
/// (IPv4) or into bits 96–127 and 32–63 (IPv6).
func address(_ selector: UInt8, _ input: inout FuzzInput) -> IPAddress {
    let low = input.uint32()
    if selector & 1 == 0 {
        return .v4(v4Bases[Int(selector >> 1) & 3] ^ low)
    }
    let high = input.uint32()
    return .v6(IPv6Bits(v6Bases[Int(selector >> 1) & 3] ^ UInt128(low) ^ UInt128(high) << 96))
}

/// The bytes of `address` in network order, written into `packet` at `offset`.
func store(_ address: IPAddress, into packet: inout [UInt8], at offset: Int) {
    for (index, byte) in address.networkBytes.enumerated() { packet[offset + index] = byte }
}

/// RFC 791 / RFC 8200, read independently of IPPacketHeader: (version, length, source,
/// destination), or nil for what the receive path must drop.
func referenceHeader(_ packet: [UInt8]) -> (UInt8, Int, IPAddress, IPAddress)? {
    guard let first = packet.first else { return nil }
    func be16(_ at: Int) -> Int { Int(packet[at]) << 8 | Int(packet[at + 1]) }
    func bytes(_ range: Range<Int>) -> IPAddress? {
        packet[range].withUnsafeBytes { IPAddress(networkBytes: $0) }
    }
    switch first >> 4 {
    case 4:
        guard packet.count >= 20 else { return nil }
        let headerLength = Int(first & 0xf) * 4
        let total = be16(2)
        guard headerLength >= 20, headerLength <= total, total <= packet.count else { return nil }
        return (4, total, bytes(12..<16)!, bytes(16..<20)!)
    case 6:
        guard packet.count >= 40 else { return nil }
        let total = 40 + be16(4)
        guard total <= packet.count else { return nil }
        return (6, total, bytes(8..<24)!, bytes(24..<40)!)
    default:
        return nil
    }
}

func checkLookup(_ table: AllowedIPs<Int>, _ reference: ReferenceTable, _ address: IPAddress) {
    let expected = reference.lookup(address)
    require(
        table.lookup(address) == expected,
        "lookup \(address): table \(String(describing: table.lookup(address))), reference \(String(describing: expected))"
    )
    let bytes = address.networkBytes
    let fromBytes = bytes.withUnsafeBytes { raw in
        address.isV4 ? table.lookup(v4NetworkBytes: raw.baseAddress!) : table.lookup(v6NetworkBytes: raw.baseAddress!)
    }
    require(fromBytes == expected, "lookup of \(address) from network bytes disagrees")
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    var table = AllowedIPs<Int>()
    var reference = ReferenceTable()
    var steps = 0
    while !input.isEmpty && steps < 256 {
        steps += 1
        let op = input.byte()
        let selector = input.byte()
        switch op % 8 {
        case 0, 1, 2:  // insert
            let address = address(selector, &input)
            let length = Int(input.byte()) % (address.bitWidth + 1)
            let value = Int(input.byte() % 8)
            let prefix = IPPrefix(address: address, length: length)!
            table.insert(prefix, value: value)
            reference.insert(prefix, value: value)
        case 3:  // remove one prefix
            let address = address(selector, &input)
            let prefix = IPPrefix(address: address, length: Int(input.byte()) % (address.bitWidth + 1))!
            let removed = table.remove(prefix)
            require(removed == reference.remove(prefix), "remove \(prefix) returned \(String(describing: removed))")
        case 4:  // remove a peer's prefixes
            let value = Int(selector % 8)
            let expected = reference.entries.filter { $0.value == value }.map(\.prefix)
            require(Set(table.prefixes(for: value)) == Set(expected), "prefixes(for: \(value)) disagree")
            table.removeAll(value: value)
            reference.entries.removeAll { $0.value == value }
        case 5, 6:  // lookups around an address: itself and its neighbours
            let address = address(selector, &input)
            checkLookup(table, reference, address)
            switch address {
            case .v4(let value):
                checkLookup(table, reference, .v4(value &+ 1))
                checkLookup(table, reference, .v4(value &- 1))
            case .v6(let bits):
                checkLookup(table, reference, .v6(IPv6Bits(bits.value &+ 1)))
                checkLookup(table, reference, .v6(IPv6Bits(bits.value &- 1)))
            }
        default:  // an inner packet: parse its header, then route by its addresses
            var packet = [UInt8](input.take(Int(input.byte()) % 80))
            if selector & 0x80 != 0, packet.count >= 20 {
                // Make the header plausible so the addresses (not only the version) are reached.
                let v6 = packet.count >= 40 && selector & 1 == 1
                packet[0] = v6 ? 0x60 | packet[0] & 0xf : 0x45
                let total = packet.count - Int(selector >> 1 & 7)
                if v6 {
                    packet[4] = UInt8((total - 40) >> 8 & 0xff)
                    packet[5] = UInt8(max(0, total - 40) & 0xff)
                } else {
                    packet[2] = UInt8(total >> 8)
                    packet[3] = UInt8(total & 0xff)
                }
                if let (_, _, _, _) = referenceHeader(packet), !reference.entries.isEmpty {
                    // Aim the destination at a stored prefix now and then.
                    let target = reference.entries[Int(selector) % reference.entries.count].prefix.address
                    if target.isV4 != v6 { store(target, into: &packet, at: v6 ? 24 : 16) }
                }
            }
            let expected = referenceHeader(packet)
            let parsed = try? IPPacketHeader(parsing: packet)
            if let expected, let parsed {
                require(
                    parsed.version == expected.0 && parsed.length == expected.1 && parsed.source == expected.2
                        && parsed.destination == expected.3, "IPPacketHeader disagrees with the reference")
                checkLookup(table, reference, parsed.source)
                checkLookup(table, reference, parsed.destination)
            } else {
                require(expected == nil && parsed == nil, "IPPacketHeader accepts what the reference drops, or not")
            }
        }
    }
    require(table.count == reference.entries.count, "count \(table.count), reference \(reference.entries.count)")
    let stored = table.entries.map { "\($0.prefix)=\($0.value)" }
    let expected = reference.entries.map { "\($0.prefix)=\($0.value)" }
    require(Set(stored) == Set(expected) && stored.count == expected.count, "entries disagree")
    // Every stored prefix's own address and the text round trip of the prefix.
    for entry in reference.entries {
        checkLookup(table, reference, entry.prefix.address)
        require(IPPrefix(entry.prefix.description) == entry.prefix, "\(entry.prefix) does not parse back")
    }
    return 0
}

runFuzzer { data, size in fuzzOne(data, size) }
