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

    let storage: UnsafeMutableRawPointer
    let vectors: UnsafeMutablePointer<iovec>
    let messages: UnsafeMutablePointer<tunctl_mmsghdr>
    let addresses: UnsafeMutablePointer<sockaddr_storage>

    /// - Parameters:
    ///   - capacity: datagrams per `recvmmsg` (wireguard-go uses 128).
    ///   - bufferSize: bytes per slot; 2048 holds any datagram for a 1500-byte path without GRO.
    public init(capacity: Int, bufferSize: Int = 2048) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max), "ReceiveBatch capacity out of range")
        precondition(bufferSize > 0, "ReceiveBatch bufferSize must be positive")
        self.capacity = capacity
        self.bufferSize = bufferSize
        // Raw bytes, deliberately not zero-filled: only bytes recvmmsg wrote are ever read (a
        // slot's first `length(at:)`), and untouched pages then cost no resident memory.
        storage = .allocate(byteCount: capacity * bufferSize, alignment: 16)
        vectors = .allocate(capacity: capacity)
        messages = .allocate(capacity: capacity)
        addresses = .allocate(capacity: capacity)
        addresses.initialize(repeating: sockaddr_storage(), count: capacity)
        // Sound: each header points at its own iovec, address and slot, all inside this allocation.
        for slot in 0..<capacity {
            vectors[slot] = iovec(iov_base: storage + slot * bufferSize, iov_len: bufferSize)
            messages[slot] = tunctl_mmsghdr(msg_hdr: msghdr(), msg_len: 0)
            messages[slot].msg_hdr.msg_iov = vectors + slot
            messages[slot].msg_hdr.msg_iovlen = 1
            messages[slot].msg_hdr.msg_name = UnsafeMutableRawPointer(addresses + slot)
        }
        resetHeaders(count: capacity)
    }

    deinit {
        storage.deallocate()
        vectors.deallocate()
        messages.deallocate()
        addresses.deallocate()
    }

    /// Bytes in slot `index` (after truncation).
    public func length(at index: Int) -> Int {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        return min(Int(messages[index].msg_len), bufferSize)
    }

    /// Whether the datagram in slot `index` was longer than `bufferSize` and was cut short.
    public func isTruncated(at index: Int) -> Bool {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        return messages[index].msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0
    }

    /// Where the datagram in slot `index` came from; IPv4-mapped sources are `.v4`.
    /// Nil only if the kernel reported no AF_INET/AF_INET6 address, which a UDP socket does not do.
    public func source(at index: Int) -> Endpoint? {
        precondition(index >= 0 && index < count, "ReceiveBatch slot out of range")
        // Sound: the index is checked, and msg_namelen never exceeds the storage's 128 bytes.
        return Endpoint(
            socketAddress: UnsafeRawPointer(addresses + index),
            length: Int(messages[index].msg_hdr.msg_namelen))
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
            messages[slot].msg_hdr.msg_flags = 0
            messages[slot].msg_len = 0
        }
    }
}

// Sound: the batch is noncopyable, so its memory has one owner; mutation needs `inout` (exclusive),
// and sharing a borrow only permits reads.
extension ReceiveBatch: @unchecked Sendable {}

/// Datagrams queued for one `sendmmsg`, in storage allocated once.
///
/// Fill it with `append`, hand it to `UDPSocket.send(_:)`, which removes what the kernel took from
/// the front; what remains (after would-block) stays queued for the next call. When the last
/// pending datagram is sent the batch empties itself. Nothing here allocates after `init`.
public struct SendBatch: ~Copyable {
    /// Number of datagram slots.
    public let capacity: Int
    /// Largest datagram a slot holds.
    public let bufferSize: Int
    /// Slots filled (including any already sent, see `pendingCount`).
    public private(set) var count: Int = 0
    /// Index of the first datagram not yet sent.
    public internal(set) var firstPending: Int = 0

    let storage: UnsafeMutableRawPointer
    let vectors: UnsafeMutablePointer<iovec>
    let messages: UnsafeMutablePointer<tunctl_mmsghdr>
    let addresses: UnsafeMutablePointer<sockaddr_storage>
    let destinations: UnsafeMutablePointer<Endpoint>

    /// - Parameters:
    ///   - capacity: datagrams per `sendmmsg`.
    ///   - bufferSize: bytes per slot; must hold the largest datagram you will append.
    public init(capacity: Int, bufferSize: Int = 2048) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max), "SendBatch capacity out of range")
        precondition(bufferSize > 0, "SendBatch bufferSize must be positive")
        self.capacity = capacity
        self.bufferSize = bufferSize
        storage = .allocate(byteCount: capacity * bufferSize, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: capacity * bufferSize)
        vectors = .allocate(capacity: capacity)
        messages = .allocate(capacity: capacity)
        addresses = .allocate(capacity: capacity)
        addresses.initialize(repeating: sockaddr_storage(), count: capacity)
        destinations = .allocate(capacity: capacity)
        destinations.initialize(repeating: Endpoint(address: .v4(0), port: 0), count: capacity)
        // Sound: each header points at its own iovec, address and slot, all inside this allocation.
        for slot in 0..<capacity {
            vectors[slot] = iovec(iov_base: storage + slot * bufferSize, iov_len: 0)
            messages[slot] = tunctl_mmsghdr(msg_hdr: msghdr(), msg_len: 0)
            messages[slot].msg_hdr.msg_iov = vectors + slot
            messages[slot].msg_hdr.msg_iovlen = 1
            messages[slot].msg_hdr.msg_name = UnsafeMutableRawPointer(addresses + slot)
        }
    }

    deinit {
        storage.deallocate()
        vectors.deallocate()
        messages.deallocate()
        addresses.deallocate()
        destinations.deallocate()
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
        let buffer = UnsafeMutableRawBufferPointer(start: storage + slot * bufferSize, count: bufferSize)
        guard let length = try fill(buffer) else { return false }
        precondition(length >= 0 && length <= bufferSize, "SendBatch fill returned a bad length")
        vectors[slot].iov_len = length
        destinations[slot] = endpoint
        count += 1
        return true
    }

    /// Queues a datagram written in place whose destination is known only once it is written
    /// (a packet read from the TUN, sealed, and routed by the core): `fill` gets the next slot and
    /// returns the length and destination, or nil to queue nothing. Returns false without calling
    /// `fill` when the batch is full. The buffer must not escape `fill`.
    public mutating func appendRouted<E: Error>(
        _ fill: (UnsafeMutableRawBufferPointer) throws(E) -> (length: Int, destination: Endpoint)?
    ) throws(E) -> Bool {
        guard count < capacity else { return false }
        let slot = count
        // Sound: slot < capacity, so the slot lies inside the storage allocation.
        let buffer = UnsafeMutableRawBufferPointer(start: storage + slot * bufferSize, count: bufferSize)
        guard let (length, destination) = try fill(buffer) else { return false }
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

    /// Encodes the destinations of the pending slots for a socket of the given kind.
    mutating func prepareForSend(mapV4ToV6: Bool) {
        // Sound: each slot's sockaddr_storage has room for either sockaddr the encoder writes.
        for slot in firstPending..<count {
            messages[slot].msg_hdr.msg_namelen = destinations[slot].encode(
                into: UnsafeMutableRawPointer(addresses + slot), mapV4ToV6: mapV4ToV6)
            messages[slot].msg_len = 0
        }
    }

    /// Marks `sent` more datagrams as gone; empties the batch once all are.
    mutating func advance(by sent: Int) {
        firstPending += sent
        precondition(firstPending <= count, "sendmmsg reported more datagrams than were queued")
        if firstPending == count { removeAll() }
    }
}

// Sound: the batch is noncopyable, so its memory has one owner; mutation needs `inout` (exclusive),
// and sharing a borrow only permits reads.
extension SendBatch: @unchecked Sendable {}
