import CLinuxShim
import Glibc
import TunnelCore

/// Storage for receiving up to `capacity` datagrams with one `recvmmsg`, allocated once.
///
/// Ownership: the batch owns all of its memory (packet slots, iovecs, message headers, source
/// addresses) and frees it when it goes away; being noncopyable, it has exactly one owner.
/// `UDPSocket.receive(into:)` overwrites slots `0..<count`; a slot's bytes are valid until the next
/// receive into this batch. Nothing here allocates after `init`.
public struct ReceiveBatch: ~Copyable {
    /// Number of datagram slots.
    public let capacity: Int
    /// Bytes per slot. A datagram longer than this is cut short and reported by `isTruncated(at:)`.
    public let bufferSize: Int
    /// Slots filled by the last receive.
    public internal(set) var count: Int = 0

    /// The first slot; `leadingRoom` bytes into the allocation.
    let storage: UnsafeMutableRawPointer
    /// Bytes allocated before the first slot and after the last one: never received into, but
    /// readable, so that an open may read around any datagram (see `storageRegion`).
    public let leadingRoom: Int
    public let trailingRoom: Int
    let vectors: UnsafeMutablePointer<iovec>
    let messages: UnsafeMutablePointer<tunctl_mmsghdr>
    let addresses: UnsafeMutablePointer<sockaddr_storage>
    /// `controlSpace` bytes of ancillary data per slot, where the kernel puts the `UDP_GRO` size
    /// and the packet info (the datagram's destination: a sticky source for replies).
    let control: UnsafeMutableRawPointer

    /// Slot size a socket with `UDPOffload.coalescing` needs: the kernel hands over a coalesced
    /// message whole (up to 64 KiB less headers) and would cut a shorter slot short.
    public static let coalescingBufferSize = 65535

    /// Ancillary bytes per slot: the `UDP_GRO` message (`CMSG_SPACE(sizeof(int))`, 24 bytes) and
    /// `IPV6_PKTINFO` (40) or `IP_PKTINFO` (32), with room to spare: a control area that overflows
    /// marks the slot MSG_CTRUNC, and such a slot is dropped (`isTruncated(at:)`).
    static let controlSpace = 128

    /// - Parameters:
    ///   - capacity: datagrams per `recvmmsg` (wireguard-go uses 128).
    ///   - bufferSize: bytes per slot; 2048 holds any datagram for a 1500-byte path without GRO;
    ///     a socket that coalesces (GRO) needs `coalescingBufferSize`.
    ///   - leadingRoom, trailingRoom: readable bytes before the first slot and after the last
    ///     (for the open: `Device.openingRoom` and `Device.openingTailRoom`); the leading room is
    ///     rounded up to a multiple of 16.
    public init(capacity: Int, bufferSize: Int = 2048, leadingRoom: Int = 0, trailingRoom: Int = 0) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max), "ReceiveBatch capacity out of range")
        precondition(bufferSize > 0, "ReceiveBatch bufferSize must be positive")
        precondition(leadingRoom >= 0 && trailingRoom >= 0, "ReceiveBatch room must not be negative")
        self.capacity = capacity
        self.bufferSize = bufferSize
        // Kept 16-aligned, so the slots are too.
        self.leadingRoom = (leadingRoom + 15) / 16 * 16
        self.trailingRoom = trailingRoom
        // calloc: the rooms and slots read around a datagram are never uninitialized, and at this
        // size glibc maps fresh zero pages rather than filling them, so untouched pages cost no
        // resident memory. glibc's calloc is 16-aligned on x86-64 and arm64.
        let byteCount = self.leadingRoom + capacity * bufferSize + trailingRoom
        guard let whole = calloc(1, byteCount) else { fatalError("ReceiveBatch: out of memory (\(byteCount) bytes)") }
        storage = whole + self.leadingRoom
        vectors = .allocate(capacity: capacity)
        messages = .allocate(capacity: capacity)
        addresses = .allocate(capacity: capacity)
        addresses.initialize(repeating: sockaddr_storage(), count: capacity)
        // Aligned for cmsghdr (CMSG_SPACE keeps every later header aligned within a slot's part).
        control = .allocate(byteCount: capacity * ReceiveBatch.controlSpace, alignment: 16)
        control.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * ReceiveBatch.controlSpace)
        // Sound: each header points at its own iovec, address, control area and slot, all inside
        // this batch's allocations.
        for slot in 0..<capacity {
            vectors[slot] = iovec(iov_base: storage + slot * bufferSize, iov_len: bufferSize)
            messages[slot] = tunctl_mmsghdr(msg_hdr: msghdr(), msg_len: 0)
            messages[slot].msg_hdr.msg_iov = vectors + slot
            messages[slot].msg_hdr.msg_iovlen = 1
            messages[slot].msg_hdr.msg_name = UnsafeMutableRawPointer(addresses + slot)
            messages[slot].msg_hdr.msg_control = control + slot * ReceiveBatch.controlSpace
        }
        resetHeaders(count: capacity)
    }

    deinit {
        free(storage - leadingRoom)
        vectors.deallocate()
        messages.deallocate()
        addresses.deallocate()
        control.deallocate()
    }

    /// Bytes in slot `index` (after truncation).
    public func length(at index: Int) -> Int {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        return min(Int(messages[index].msg_len), bufferSize)
    }

    /// Whether slot `index` was cut short: its message was longer than `bufferSize`, or the
    /// ancillary data that says how to split it did not fit (then its datagrams cannot be told apart).
    public func isTruncated(at index: Int) -> Bool {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        return messages[index].msg_hdr.msg_flags & Int32(MSG_TRUNC | MSG_CTRUNC) != 0
    }

    /// Where the datagram in slot `index` came from; IPv4-mapped sources are `.v4`. Its
    /// `stickySource` is where it was sent to (our address and the interface it arrived on), when
    /// the kernel said so. Nil only if the kernel reported no AF_INET/AF_INET6 address, which a
    /// UDP socket does not do.
    public func source(at index: Int) -> Endpoint? {
        source(at: index, control: controlMessages(at: index))
    }

    private func source(at index: Int, control: ControlMessages.Received) -> Endpoint? {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        // Sound: the index is checked, and msg_namelen never exceeds the storage's 128 bytes.
        guard
            var endpoint = Endpoint(
                socketAddress: UnsafeRawPointer(addresses + index),
                length: Int(messages[index].msg_hdr.msg_namelen))
        else { return nil }
        endpoint.stickySource = control.stickySource
        return endpoint
    }

    /// The control messages the kernel attached to slot `index`.
    func controlMessages(at index: Int) -> ControlMessages.Received {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        // Sound: the index is checked; the header's control pointer and the kernel-set length
        // describe this slot's control area, which `parse` never reads outside of.
        guard let header = (messages + index).pointer(to: \.msg_hdr) else { return ControlMessages.Received() }
        return ControlMessages.parse(header)
    }

    /// Reads the datagram in slot `index`. The buffer must not escape `body`.
    public func withPacket<R, E: Error>(
        at index: Int, _ body: (UnsafeRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        let length = self.length(at: index)
        // Sound: length(at:) checked the index and caps the length at bufferSize.
        return try body(UnsafeRawBufferPointer(start: storage + index * bufferSize, count: length))
    }

    /// Gives the whole slot `index` (`bufferSize` bytes) for in-place work such as decryption; the
    /// datagram occupies its first `length(at:)` bytes. The buffer must not escape `body`.
    public mutating func withMutableSlot<R, E: Error>(
        at index: Int, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        // Sound: the index is checked, so the slot lies inside the storage allocation.
        return try body(UnsafeMutableRawBufferPointer(start: storage + index * bufferSize, count: bufferSize))
    }

    /// Restores the fields the kernel overwrote in the first `count` headers before the next call.
    mutating func resetHeaders(count: Int) {
        for slot in 0..<count {
            messages[slot].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
            messages[slot].msg_hdr.msg_controllen = ReceiveBatch.controlSpace
            messages[slot].msg_hdr.msg_flags = 0
            messages[slot].msg_len = 0
        }
    }
}

// Sound: the batch is noncopyable, so its memory has one owner; mutation needs `inout` (exclusive),
// and sharing a borrow only permits reads.
extension ReceiveBatch: @unchecked Sendable {}

// MARK: Coalesced datagrams (UDP GRO)

/// With `UDPOffload.coalescing` a slot may hold several datagrams from one source that the kernel
/// joined: all `segmentSize(at:)` bytes long except a possibly shorter last one, back to back.
/// Without it (or when the kernel did not coalesce) a slot holds one datagram. These methods are
/// correct either way, so a receive loop uses them and need not know whether GRO is on.
extension ReceiveBatch {
    /// Size of each datagram in slot `index`: the kernel's `UDP_GRO` segment size when it joined
    /// several, otherwise the slot's whole `length(at:)`.
    public func segmentSize(at index: Int) -> Int {
        segmentSize(at: index, control: controlMessages(at: index))
    }

    private func segmentSize(at index: Int, control: ControlMessages.Received) -> Int {
        let length = self.length(at: index)
        guard let size = control.segmentSize, size < length else { return length }
        return size
    }

    /// How many datagrams slot `index` holds: at least 1 (an empty datagram is one datagram).
    public func datagramCount(at index: Int) -> Int {
        let length = self.length(at: index)
        let size = segmentSize(at: index)
        return size == 0 ? 1 : (length + size - 1) / size
    }

    /// Calls `body` for each datagram in slot `index`, in the order the peer sent them, with a
    /// mutable view of exactly that datagram's bytes (for decryption in place; writing past it is
    /// not possible, the next datagram follows) and the slot's source. A truncated slot
    /// (`isTruncated(at:)`) or one without a source yields nothing. The buffer must not escape `body`.
    public mutating func forEachDatagram<E: Error>(
        inSlot index: Int, _ body: (_ datagram: UnsafeMutableRawBufferPointer, _ source: Endpoint) throws(E) -> Void
    ) throws(E) {
        let region = storageRegion
        try forEachDatagramRange(inSlot: index) { (datagram, source) throws(E) in
            try body(UnsafeMutableRawBufferPointer(rebasing: region[datagram]), source)
        }
    }

    /// Calls `body` for every datagram of every slot from the last receive, slot by slot and in
    /// order within a slot; truncated slots are skipped (count them with `isTruncated(at:)`).
    public mutating func forEachDatagram<E: Error>(
        _ body: (_ datagram: UnsafeMutableRawBufferPointer, _ source: Endpoint) throws(E) -> Void
    ) throws(E) {
        for index in 0..<count {
            try forEachDatagram(inSlot: index, body)
        }
    }

    /// `forEachDatagram`, with each datagram given as its place in `storageRegion`: for work that
    /// reads around a datagram (`Device.open(_:datagramAt:_:scratch:)`) but writes only inside it.
    public mutating func forEachDatagramInStorage<E: Error>(
        _ body: (_ storage: UnsafeMutableRawBufferPointer, _ datagram: Range<Int>, _ source: Endpoint) throws(E) -> Void
    ) throws(E) {
        let region = storageRegion
        for index in 0..<count {
            try forEachDatagramRange(inSlot: index) { (datagram, source) throws(E) in try body(region, datagram, source)
            }
        }
    }

    /// The whole allocation: the leading room, every slot and the trailing room. Bytes outside
    /// the last receive's datagrams hold zeros or older datagrams; all of them are readable.
    public var storageRegion: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(
            start: storage - leadingRoom, count: leadingRoom + capacity * bufferSize + trailingRoom)
    }

    /// The datagrams of slot `index` as ranges of `storageRegion`.
    private func forEachDatagramRange<E: Error>(
        inSlot index: Int, _ body: (_ datagram: Range<Int>, _ source: Endpoint) throws(E) -> Void
    ) throws(E) {
        guard !isTruncated(at: index) else { return }
        // One walk over the slot's control messages for both the source and the segment size.
        let control = controlMessages(at: index)
        guard let source = source(at: index, control: control) else { return }
        let length = self.length(at: index)
        let size = segmentSize(at: index, control: control)
        let slot = leadingRoom + index * bufferSize
        var offset = 0
        repeat {
            let datagramLength = min(size, length - offset)
            // Sound: offset + datagramLength <= length(at:) <= bufferSize, inside this slot.
            try body((slot + offset)..<(slot + offset + datagramLength), source)
            offset += datagramLength
        } while offset < length
    }

    /// The `UDP_GRO` segment size the kernel attached to slot `index`, or nil when it attached none
    /// (the slot then holds one datagram) or an unusable one.
    func coalescedSegmentSize(at index: Int) -> Int? {
        controlMessages(at: index).segmentSize
    }
}

/// Datagrams queued for one `sendmmsg`, in storage allocated once.
///
/// Fill it with `append`, hand it to `UDPSocket.send(_:)`, which removes what the kernel took from
/// the front; what remains (after would-block) stays queued for the next call. When the last
/// pending datagram is sent the batch empties itself. Nothing here allocates after `init`.
///
/// With UDP GSO each run of consecutive datagrams to one destination with equal lengths (the
/// last may be shorter) leaves as one message, so queue a peer's datagrams back to back (as
/// segmenting one TSO super-packet does) to make the runs long. Slots need not be contiguous.
public struct SendBatch: ~Copyable {
    /// Number of datagram slots.
    public let capacity: Int
    /// Largest datagram a slot holds.
    public let bufferSize: Int
    /// Bytes in front of each slot's datagram that are never sent: `appendRouted` hands them to
    /// its `fill` with the slot, for work that needs room before the datagram (the seal's).
    public let leadingRoom: Int
    /// Slots filled (including any already sent, see `pendingCount`).
    public private(set) var count: Int = 0
    /// Index of the first datagram not yet sent.
    public internal(set) var firstPending: Int = 0

    let storage: UnsafeMutableRawPointer
    let vectors: UnsafeMutablePointer<iovec>
    let messages: UnsafeMutablePointer<tunctl_mmsghdr>
    let addresses: UnsafeMutablePointer<sockaddr_storage>
    let destinations: UnsafeMutablePointer<Endpoint>
    /// `ControlMessages.packetInfoSpace` bytes per slot: the packet info naming a destination's
    /// sticky source, written by `prepareForSend` for the slots whose destination has one.
    let slotControl: UnsafeMutableRawPointer

    // UDP GSO: pending slots grouped into runs, one message per run (see `planRuns`). A run's
    // message names the run's iovecs, which point at the slots themselves, so nothing is copied.
    /// One header per possible run (at most one per slot).
    let runMessages: UnsafeMutablePointer<tunctl_mmsghdr>
    /// `runControlSpace` bytes per run: the run's packet info, if its destination has a sticky
    /// source, then its `UDP_SEGMENT` cmsg, if it has more than one datagram (`planRuns`).
    let runControl: UnsafeMutableRawPointer
    /// First slot of each planned run.
    let runStarts: UnsafeMutablePointer<Int>
    /// Runs planned by the last `planRuns`.
    var runCount = 0

    /// Packet info (40 bytes at most) and `UDP_SEGMENT` (a u16 segment size, 24 bytes).
    static let runControlSpace = ControlMessages.packetInfoSpace + ControlMessages.segmentSpace

    /// - Parameters:
    ///   - capacity: datagrams per `sendmmsg`.
    ///   - bufferSize: bytes per slot; must hold the largest datagram you will append.
    ///   - leadingRoom: bytes in front of each slot (see `leadingRoom`).
    public init(capacity: Int, bufferSize: Int = 2048, leadingRoom: Int = 0) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max), "SendBatch capacity out of range")
        precondition(bufferSize > 0 && leadingRoom >= 0, "SendBatch sizes out of range")
        self.capacity = capacity
        self.bufferSize = bufferSize
        self.leadingRoom = leadingRoom
        let stride = leadingRoom + bufferSize
        // calloc, as for ReceiveBatch: slots sized for a 64 KiB MTU (8 MiB in all) cost resident
        // memory only for the pages packets use. glibc's calloc is 16-aligned on x86-64 and arm64.
        guard let whole = calloc(1, capacity * stride) else {
            fatalError("SendBatch: out of memory (\(capacity * stride) bytes)")
        }
        storage = whole
        vectors = .allocate(capacity: capacity)
        messages = .allocate(capacity: capacity)
        addresses = .allocate(capacity: capacity)
        addresses.initialize(repeating: sockaddr_storage(), count: capacity)
        destinations = .allocate(capacity: capacity)
        destinations.initialize(repeating: Endpoint(address: .v4(0), port: 0), count: capacity)
        // Aligned for cmsghdr; packetInfoSpace is a multiple of it, so every slot's part is too.
        slotControl = .allocate(byteCount: capacity * ControlMessages.packetInfoSpace, alignment: 16)
        slotControl.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * ControlMessages.packetInfoSpace)
        runMessages = .allocate(capacity: capacity)
        runMessages.initialize(repeating: tunctl_mmsghdr(msg_hdr: msghdr(), msg_len: 0), count: capacity)
        runControl = .allocate(byteCount: capacity * Int(SendBatch.runControlSpace), alignment: 16)
        runControl.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * Int(SendBatch.runControlSpace))
        runStarts = .allocate(capacity: capacity)
        runStarts.initialize(repeating: 0, count: capacity)
        // Sound: each header points at its own iovec, address and slot, all inside this allocation.
        for slot in 0..<capacity {
            vectors[slot] = iovec(iov_base: storage + slot * stride + leadingRoom, iov_len: 0)
            messages[slot] = tunctl_mmsghdr(msg_hdr: msghdr(), msg_len: 0)
            messages[slot].msg_hdr.msg_iov = vectors + slot
            messages[slot].msg_hdr.msg_iovlen = 1
            messages[slot].msg_hdr.msg_name = UnsafeMutableRawPointer(addresses + slot)
        }
    }

    deinit {
        free(storage)
        vectors.deallocate()
        messages.deallocate()
        addresses.deallocate()
        destinations.deallocate()
        slotControl.deallocate()
        runMessages.deallocate()
        runControl.deallocate()
        runStarts.deallocate()
    }

    /// Datagrams queued and not yet sent.
    public var pendingCount: Int { count - firstPending }
    public var isEmpty: Bool { pendingCount == 0 }
    public var isFull: Bool { count == capacity }

    /// The destination of queued slot `index`.
    public func destination(at index: Int) -> Endpoint {
        precondition(index >= 0 && index < count, "SendBatch slot out of range")
        return destinations[index]
    }

    /// Queues a copy of `bytes` for `endpoint`. Returns false, queuing nothing, when the batch is full.
    /// `bytes.count` must not exceed `bufferSize`.
    public mutating func append(_ bytes: UnsafeRawBufferPointer, to endpoint: Endpoint) -> Bool {
        precondition(bytes.count <= bufferSize, "datagram larger than SendBatch bufferSize")
        return append(to: endpoint) { slot in
            slot.copyMemory(from: bytes)
            return bytes.count
        }
    }

    /// Queues a datagram written in place: `fill` gets the next slot (`bufferSize` bytes) and returns
    /// how many bytes it wrote, or nil to queue nothing. Returns false without calling `fill` when
    /// the batch is full; otherwise whether a datagram was queued. The buffer must not escape `fill`.
    public mutating func append<E: Error>(
        to endpoint: Endpoint, _ fill: (UnsafeMutableRawBufferPointer) throws(E) -> Int?
    ) throws(E) -> Bool {
        guard count < capacity else { return false }
        let slot = count
        // Sound: slot < capacity, so the slot lies inside the storage allocation.
        let buffer = UnsafeMutableRawBufferPointer(
            start: storage + slot * (leadingRoom + bufferSize) + leadingRoom, count: bufferSize)
        guard let length = try fill(buffer) else { return false }
        precondition(length >= 0 && length <= bufferSize, "SendBatch fill returned a bad length")
        vectors[slot].iov_len = length
        destinations[slot] = endpoint
        count += 1
        return true
    }

    /// Queues a datagram written in place whose destination is known only once it is written
    /// (a packet read from the TUN, sealed, and routed by the core): `fill` gets the next slot
    /// with its room in front (`leadingRoom + bufferSize` bytes, the datagram starting at
    /// `leadingRoom`) and returns the datagram's length and destination, or nil to queue nothing.
    /// Returns false without calling `fill` when the batch is full. The buffer must not escape
    /// `fill`.
    public mutating func appendRouted<E: Error>(
        _ fill: (UnsafeMutableRawBufferPointer) throws(E) -> (length: Int, destination: Endpoint)?
    ) throws(E) -> Bool {
        guard count < capacity else { return false }
        let slot = count
        let stride = leadingRoom + bufferSize
        // Sound: slot < capacity, so the slot and its room lie inside the storage allocation.
        let region = UnsafeMutableRawBufferPointer(start: storage + slot * stride, count: stride)
        guard let (length, destination) = try fill(region) else { return false }
        precondition(length >= 0 && length <= bufferSize, "SendBatch fill returned a bad length")
        vectors[slot].iov_len = length
        destinations[slot] = destination
        count += 1
        return true
    }

    /// Drops every queued datagram, sent or not.
    public mutating func removeAll() {
        count = 0
        firstPending = 0
    }

    /// Encodes the destinations of the pending slots for a socket of the given kind, and the
    /// packet info of those with a sticky source.
    mutating func prepareForSend(mapV4ToV6: Bool) {
        // Sound: each slot's sockaddr_storage has room for either sockaddr the encoder writes, and
        // its control part has packetInfoSpace bytes, the most writePacketInfo uses.
        for slot in firstPending..<count {
            messages[slot].msg_hdr.msg_namelen = destinations[slot].encode(
                into: UnsafeMutableRawPointer(addresses + slot), mapV4ToV6: mapV4ToV6)
            messages[slot].msg_len = 0
            if let source = destinations[slot].stickySource {
                let area = slotControl + slot * ControlMessages.packetInfoSpace
                messages[slot].msg_hdr.msg_control = area
                messages[slot].msg_hdr.msg_controllen = ControlMessages.writePacketInfo(source, at: area)
            } else {
                messages[slot].msg_hdr.msg_control = nil
                messages[slot].msg_hdr.msg_controllen = 0
            }
        }
    }

    /// `address` is no longer ours (the kernel refused it as a source): the pending datagrams
    /// that named it go without a source, the kernel choosing one. Returns whether any did. Call
    /// `planRuns` again before sending runs; slot messages are updated here.
    mutating func dropStickySource(_ address: IPAddress) -> Bool {
        var dropped = false
        for slot in firstPending..<count where destinations[slot].stickySource?.address == address {
            destinations[slot].stickySource = nil
            messages[slot].msg_hdr.msg_control = nil
            messages[slot].msg_hdr.msg_controllen = 0
            dropped = true
        }
        return dropped
    }

    /// Marks `sent` more datagrams as gone; empties the batch once all are.
    mutating func advance(by sent: Int) {
        firstPending += sent
        precondition(firstPending <= count, "sendmmsg reported more datagrams than were queued")
        if firstPending == count { removeAll() }
    }

    // MARK: UDP GSO runs

    /// Groups the pending slots into runs and writes one message per run into `runMessages`;
    /// returns the number of runs (also `runCount`). Call after `prepareForSend`.
    ///
    /// A run is consecutive slots with the same destination (sticky source included: one GSO
    /// message has one source address) whose lengths equal the first's,
    /// except that the last may be shorter (and not empty): exactly what the kernel splits back
    /// into datagrams every `segmentSize` bytes. It holds at most `maxSegments` datagrams and
    /// `maxBytes` bytes. A run of one is sent as a plain message, without the cmsg.
    mutating func planRuns(maxSegments: Int, maxBytes: Int) -> Int {
        runCount = 0
        var slot = firstPending
        while slot < count {
            let start = slot
            let segmentSize = vectors[start].iov_len
            var bytes = segmentSize
            slot += 1
            // An empty datagram cannot be a segment: the kernel would send nothing for it.
            if segmentSize > 0 {
                while slot < count, slot - start < maxSegments {
                    let length = vectors[slot].iov_len
                    guard length > 0, length <= segmentSize, bytes + length <= maxBytes,
                        destinations[slot] == destinations[start]
                    else { break }
                    bytes += length
                    slot += 1
                    if length < segmentSize { break }
                }
            }
            let run = runCount
            runStarts[run] = start
            runMessages[run].msg_hdr.msg_name = messages[start].msg_hdr.msg_name
            runMessages[run].msg_hdr.msg_namelen = messages[start].msg_hdr.msg_namelen
            // Sound: start..<slot are filled slots, so the run's iovecs lie inside `vectors`.
            runMessages[run].msg_hdr.msg_iov = vectors + start
            runMessages[run].msg_hdr.msg_iovlen = slot - start
            runMessages[run].msg_len = 0
            // Sound: this run's control area is runControlSpace bytes, room for both messages;
            // every datagram of the run has the same destination, so the same sticky source.
            let control = runControl + run * Int(SendBatch.runControlSpace)
            var used = 0
            if let source = destinations[start].stickySource {
                used += ControlMessages.writePacketInfo(source, at: control)
            }
            if slot - start > 1 {
                // Two or more segments fit in maxBytes, so the size is below 32 KiB and fits a u16.
                precondition(segmentSize <= Int(UInt16.max), "UDP_SEGMENT size exceeds 16 bits")
                used += ControlMessages.writeSegmentSize(UInt16(segmentSize), at: control + used)
            }
            runMessages[run].msg_hdr.msg_control = used > 0 ? control : nil
            runMessages[run].msg_hdr.msg_controllen = used
            runCount += 1
        }
        return runCount
    }

    /// Number of datagrams in planned run `run`.
    func runLength(_ run: Int) -> Int {
        precondition(run >= 0 && run < runCount, "SendBatch run out of range")
        return Int(runMessages[run].msg_hdr.msg_iovlen)
    }

    /// Segment size of planned run `run`: its first datagram's length.
    func runSegmentSize(_ run: Int) -> Int {
        precondition(run >= 0 && run < runCount, "SendBatch run out of range")
        return vectors[runStarts[run]].iov_len
    }
}

// Sound: the batch is noncopyable, so its memory has one owner; mutation needs `inout` (exclusive),
// and sharing a borrow only permits reads.
extension SendBatch: @unchecked Sendable {}
