import Glibc
import Testing
// Results involving a noncopyable batch are bound to a local before #expect: Swift 6.3.1
// miscompiles the macro's closure capture of an inout noncopyable value (wrong results, traps).
import TunnelCore

@testable import TunnelIO

/// Real UDP sockets over loopback only (127.0.0.1 and ::1); no root needed.
@Suite struct UDPSocketTests {
    static let loopback4 = IPAddress.v4(0x7f00_0001)
    static let loopback6 = IPAddress.v6(1)

    /// Waits up to a second for `socket` to become readable, so tests do not depend on timing.
    func waitReadable(_ socket: UDPSocket) throws {
        var poller = pollfd(fd: socket.fileDescriptor, events: Int16(POLLIN), revents: 0)
        let ready = try Syscall.check("poll") { poll(&poller, 1, 1000) }
        #expect(ready == 1, "socket did not become readable")
    }

    /// Datagram `index` of a test batch: distinct lengths and contents per slot.
    func payload(_ index: Int) -> [UInt8] {
        (0..<(20 + 37 * index)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ index) }
    }

    /// Waits for the first datagram, then receives what is there. Loopback delivers during the
    /// sender's call, so everything sent before is waiting by then.
    func receiveWaiting(_ socket: UDPSocket, into batch: inout ReceiveBatch) throws -> Int {
        try waitReadable(socket)
        return try socket.receive(into: &batch)
    }

    @Test func bindsAnEphemeralDualStackPort() throws {
        let socket = try UDPSocket(port: 0)
        #expect(socket.port != 0)
        #expect(socket.family == .dualStack)
        #expect(socket.fileDescriptor >= 0)
        #expect(socket.receiveBufferSize > 0 && socket.sendBufferSize > 0)
        let flags = fcntl(socket.fileDescriptor, F_GETFL)
        #expect(flags & O_NONBLOCK != 0)
        #expect(fcntl(socket.fileDescriptor, F_GETFD) & FD_CLOEXEC != 0)
        try socket.close()
        #expect(socket.fileDescriptor == -1)
        try socket.close()  // a second close does nothing
    }

    @Test func emptySocketReceivesNothing() throws {
        let socket = try UDPSocket(port: 0)
        var batch = ReceiveBatch(capacity: 4)
        let observed1 = try socket.receive(into: &batch)
        #expect(observed1 == 0)
        let count = batch.count
        #expect(count == 0)
        var buffer = [UInt8](repeating: 0, count: 64)
        #expect(try buffer.withUnsafeMutableBytes { try socket.receive(into: $0) } == nil)
    }

    @Test(arguments: [loopback4, loopback6])
    func batchRoundTripOverLoopback(address: IPAddress) throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0)
        let destination = Endpoint(address: address, port: receiver.port)
        let count = 5

        var outgoing = SendBatch(capacity: 8)
        for index in 0..<count {
            let queued = payload(index).withUnsafeBytes { outgoing.append($0, to: destination) }
            #expect(queued)
        }
        let pending = outgoing.pendingCount
        #expect(pending == count)
        let observed2 = try sender.send(&outgoing)
        #expect(observed2 == count)
        let (drained, left) = (outgoing.isEmpty, outgoing.count)
        #expect(drained && left == 0)

        var incoming = ReceiveBatch(capacity: 8, bufferSize: 2048)
        let observed3 = try receiveWaiting(receiver, into: &incoming)
        #expect(observed3 == count)
        let received = incoming.count
        #expect(received == count)
        for index in 0..<count {
            let length = incoming.length(at: index)
            #expect(length == payload(index).count)
            let truncated = incoming.isTruncated(at: index)
            #expect(!truncated)
            let bytes = incoming.withPacket(at: index) { Array($0) }
            #expect(bytes == payload(index))
            let source = incoming.source(at: index)
            // The source is the sender's port at the loopback address of the family used; an
            // IPv4 source on the dual-stack receiver is folded back from ::ffff:127.0.0.1.
            #expect(source?.withoutStickySource == Endpoint(address: address, port: sender.port))
        }
        let observed4 = try receiver.receive(into: &incoming)
        #expect(observed4 == 0)
    }

    /// A slot can be reused in place (decryption does this) and the batch is reused across receives.
    @Test func batchIsReusedAcrossReceives() throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0)
        let destination = Endpoint(address: Self.loopback4, port: receiver.port)
        var incoming = ReceiveBatch(capacity: 2, bufferSize: 256)
        for round in 0..<3 {
            let bytes = [UInt8](repeating: UInt8(round), count: 10 + round)
            #expect(try bytes.withUnsafeBytes { try sender.send($0, to: destination) })
            let observed5 = try receiveWaiting(receiver, into: &incoming)
            #expect(observed5 == 1)
            let received = incoming.withPacket(at: 0) { Array($0) }
            #expect(received == bytes)
            let slotSize = incoming.withMutableSlot(at: 0) { slot in
                slot[0] = 0xee
                return slot.count
            }
            #expect(slotSize == 256)
            let first = incoming.withPacket(at: 0) { $0[0] }
            #expect(first == 0xee)
        }
    }

    @Test func oversizedDatagramIsReportedTruncated() throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0)
        let bytes = [UInt8](repeating: 0xab, count: 100)
        #expect(
            try bytes.withUnsafeBytes {
                try sender.send($0, to: Endpoint(address: Self.loopback6, port: receiver.port))
            })
        var incoming = ReceiveBatch(capacity: 2, bufferSize: 16)
        let observed6 = try receiveWaiting(receiver, into: &incoming)
        #expect(observed6 == 1)
        let truncated = incoming.isTruncated(at: 0)
        #expect(truncated)
        let length = incoming.length(at: 0)
        #expect(length == 16)
    }

    /// A datagram the kernel refuses is dropped and reported once; the rest of the batch still goes.
    @Test func refusedDatagramIsReportedOnceAndTheRestIsSent() throws {
        let sender = try UDPSocket(port: 0, allowIPv6: false)
        #expect(sender.family == .ipv4)
        let receiver = try UDPSocket(port: 0)
        let good = Endpoint(address: Self.loopback4, port: receiver.port)
        let bad = Endpoint(address: Self.loopback6, port: receiver.port)  // IPv6 on an IPv4 socket

        var outgoing = SendBatch(capacity: 4, bufferSize: 128)
        for (index, destination) in [good, bad, good].enumerated() {
            let observed7 = payload(index).withUnsafeBytes { outgoing.append($0, to: destination) }
            #expect(observed7)
        }
        let observed8 = try sender.send(&outgoing)
        #expect(observed8 == 1)
        let pendingAfterFirst = outgoing.pendingCount
        #expect(pendingAfterFirst == 2)
        let error = #expect(throws: SystemError.self) { _ = try sender.send(&outgoing) }
        #expect(error?.errno == EAFNOSUPPORT)
        #expect(error?.call == "sendmmsg")
        let pendingAfterError = outgoing.pendingCount
        #expect(pendingAfterError == 1)
        let observed9 = try sender.send(&outgoing)
        #expect(observed9 == 1)
        let drained = outgoing.isEmpty
        #expect(drained)

        var incoming = ReceiveBatch(capacity: 4, bufferSize: 128)
        try waitReadable(receiver)
        var received: [[UInt8]] = []
        for _ in 0..<10 where received.count < 2 {
            let count = try receiver.receive(into: &incoming)
            for index in 0..<count {
                received.append(incoming.withPacket(at: index) { Array($0) })
                let source = incoming.source(at: index)
                #expect(source?.withoutStickySource == Endpoint(address: Self.loopback4, port: sender.port))
            }
            if received.count < 2 { try waitReadable(receiver) }
        }
        #expect(received == [payload(0), payload(2)])
    }

    @Test func sendBatchFillsInPlaceAndStopsWhenFull() throws {
        var outgoing = SendBatch(capacity: 2, bufferSize: 32)
        let destination = Endpoint(address: Self.loopback4, port: 9)
        var slotSize = 0
        let filled = outgoing.append(to: destination) { slot in
            slotSize = slot.count
            slot.storeBytes(of: 0x0102_0304, as: UInt32.self)
            return 4
        }
        #expect(filled && slotSize == 32)
        let declined = outgoing.append(to: destination) { _ in nil }
        let countAfterDecline = outgoing.count
        #expect(!declined && countAfterDecline == 1)
        let copied = [UInt8]([9]).withUnsafeBytes { outgoing.append($0, to: destination) }
        let full = outgoing.isFull
        #expect(copied && full)
        let overflowed = [UInt8]([9]).withUnsafeBytes { outgoing.append($0, to: destination) }
        #expect(!overflowed)
        let second = outgoing.destination(at: 1)
        #expect(second == destination)
        outgoing.removeAll()
        let (empty, left) = (outgoing.isEmpty, outgoing.count)
        #expect(empty && left == 0)
    }

    @Test func singleDatagramRoundTripReportsTheSource() throws {
        let sender = try UDPSocket(port: 0)
        let receiver = try UDPSocket(port: 0)
        let bytes: [UInt8] = Array("handshake".utf8)
        #expect(
            try bytes.withUnsafeBytes {
                try sender.send($0, to: Endpoint(address: Self.loopback6, port: receiver.port))
            })
        try waitReadable(receiver)
        var buffer = [UInt8](repeating: 0, count: 64)
        let received = try buffer.withUnsafeMutableBytes { try receiver.receive(into: $0) }
        #expect(received?.length == bytes.count)
        #expect(received?.source.withoutStickySource == Endpoint(address: Self.loopback6, port: sender.port))
        #expect(Array(buffer.prefix(bytes.count)) == bytes)
    }

    @Test func bindingATakenPortFails() throws {
        let first = try UDPSocket(port: 0)
        let error = #expect(throws: SystemError.self) { _ = try UDPSocket(port: first.port) }
        #expect(error?.errno == EADDRINUSE)
        #expect(error?.call == "bind")
    }
}
