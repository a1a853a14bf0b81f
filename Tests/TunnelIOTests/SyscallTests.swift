import Foundation
import Glibc
import Testing

@testable import TunnelIO

/// A non-blocking pipe, closed when the test is done with it. (pipe2 is not visible to Swift.)
final class TestPipe {
    let readEnd: Int32
    let writeEnd: Int32

    init() throws {
        var ends: [Int32] = [-1, -1]
        _ = try Syscall.check("pipe") { pipe(&ends) }
        readEnd = ends[0]
        writeEnd = ends[1]
        for fd in ends {
            _ = try Syscall.check("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, O_NONBLOCK) }
            _ = try Syscall.check("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
    }

    deinit {
        _ = try? Syscall.close(readEnd)
        _ = try? Syscall.close(writeEnd)
    }
}

@Suite struct SyscallTests {
    @Test func emptyNonBlockingPipeReadsAsWouldBlock() throws {
        let pipe = try TestPipe()
        var buffer = [UInt8](repeating: 0, count: 16)
        let result = try buffer.withUnsafeMutableBytes { bytes in
            try Syscall.io("read") { read(pipe.readEnd, bytes.baseAddress, bytes.count) }
        }
        #expect(result == .wouldBlock)
        #expect(result.value == nil)
    }

    @Test func dataWrittenToPipeIsReadBack() throws {
        let pipe = try TestPipe()
        let message: [UInt8] = [1, 2, 3, 4, 5]
        let written = try message.withUnsafeBytes { bytes in
            try Syscall.io("write") { write(pipe.writeEnd, bytes.baseAddress, bytes.count) }
        }
        #expect(written == .done(5))
        var buffer = [UInt8](repeating: 0, count: 16)
        let read = try buffer.withUnsafeMutableBytes { bytes in
            try Syscall.io("read") { Glibc.read(pipe.readEnd, bytes.baseAddress, bytes.count) }
        }
        #expect(read == .done(5))
        #expect(Array(buffer.prefix(5)) == message)
    }

    /// A pipe cannot seek: the kernel's ESPIPE arrives as a typed error naming the call.
    @Test func seekingAPipeThrowsESPIPE() throws {
        let pipe = try TestPipe()
        let error = #expect(throws: SystemError.self) {
            _ = try Syscall.check("lseek(pipe)") { lseek(pipe.readEnd, 0, SEEK_SET) }
        }
        #expect(error?.call == "lseek(pipe)")
        #expect(error?.errno == ESPIPE)
        #expect(error?.description == "lseek(pipe) failed: Illegal seek (errno \(ESPIPE))")
    }

    @Test func openingAMissingFileThrowsENOENT() {
        let error = #expect(throws: SystemError.self) {
            _ = try Syscall.check("open") { open("/nonexistent/tunctl-test", O_RDONLY | O_CLOEXEC) }
        }
        #expect(error?.errno == ENOENT)
    }

    /// `check` is for calls that should never block, so would-block is an error there.
    @Test func checkTreatsWouldBlockAsAnError() throws {
        let pipe = try TestPipe()
        var byte: UInt8 = 0
        let error = #expect(throws: SystemError.self) {
            _ = try Syscall.check("read") { read(pipe.readEnd, &byte, 1) }
        }
        #expect(error?.errno == EAGAIN)
    }

    /// EINTR is retried until the call completes; the retry is invisible to the caller.
    @Test func interruptedCallsAreRetried() throws {
        var attempts = 0
        let result = try Syscall.io("fake") { () -> Int32 in
            attempts += 1
            if attempts < 3 {
                errno = EINTR
                return -1
            }
            return 42
        }
        #expect(result == .done(42))
        #expect(attempts == 3)
    }

    /// The shim convention: a negative errno, with the same classification.
    @Test func shimConventionIsClassifiedTheSameWay() throws {
        var attempts = 0
        let retried = try Syscall.shimIO("tunctl_fake") { () -> Int32 in
            attempts += 1
            return attempts == 1 ? -EINTR : 7
        }
        #expect(retried == .done(7))
        #expect(try Syscall.shimIO("tunctl_fake") { -EAGAIN } == IOResult<Int32>.wouldBlock)
        #expect(try Syscall.shimCheck("tunctl_fake") { Int32(0) } == 0)

        let failed = #expect(throws: SystemError.self) {
            _ = try Syscall.shimIO("tunctl_fake") { -EPERM }
        }
        #expect(failed == SystemError(call: "tunctl_fake", errno: EPERM))
        let blocked = #expect(throws: SystemError.self) {
            _ = try Syscall.shimCheck("tunctl_fake") { -EWOULDBLOCK }
        }
        #expect(blocked?.errno == EWOULDBLOCK)
    }

    @Test func unknownErrnoStillDescribes() {
        let error = SystemError(call: "x", errno: 99999)
        #expect(error.description.hasPrefix("x failed: "))
        #expect(error.description.hasSuffix("(errno 99999)"))
    }

    // MARK: Parking on a descriptor with a wake-up

    private func makeReadable(_ pipe: TestPipe) throws {
        var byte: UInt8 = 7
        #expect(try Syscall.io("write") { write(pipe.writeEnd, &byte, 1) } == .done(1))
    }

    @Test func parkedWaitSeesData() throws {
        let pipe = try TestPipe()
        let wakeup = try Wakeup()
        #expect(!Syscall.waitReadable(pipe.readEnd, unlessReadable: wakeup.fileDescriptor, milliseconds: 0))
        try makeReadable(pipe)
        #expect(Syscall.waitReadable(pipe.readEnd, unlessReadable: wakeup.fileDescriptor, milliseconds: 0))
    }

    /// A raised wake-up wins over waiting data: the handler must return so the control queue can
    /// take the data queues. The long timeout is never waited out.
    @Test func raisedWakeupEndsTheWaitEvenWithData() throws {
        let pipe = try TestPipe()
        let wakeup = try Wakeup()
        try makeReadable(pipe)
        wakeup.raise()
        wakeup.raise()
        #expect(!Syscall.waitReadable(pipe.readEnd, unlessReadable: wakeup.fileDescriptor, milliseconds: 60_000))
        // One lower undoes any number of raises.
        wakeup.lower()
        #expect(Syscall.waitReadable(pipe.readEnd, unlessReadable: wakeup.fileDescriptor, milliseconds: 0))
        #expect(!Syscall.waitReadable(wakeup.fileDescriptor, unlessReadable: -1, milliseconds: 0))
    }

    /// A wake-up raised by another thread ends a wait that is already asleep in `poll`.
    @Test func wakeupFromAnotherThreadEndsASleepingWait() throws {
        let pipe = try TestPipe()
        let wakeup = try Wakeup()
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        Thread.detachNewThread {
            usleep(50_000)
            wakeup.raise()
        }
        let sawData = Syscall.waitReadable(pipe.readEnd, unlessReadable: wakeup.fileDescriptor, milliseconds: 30_000)
        var end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &end)
        #expect(!sawData)
        // Woken, not timed out: well under the 30 s timeout (a bound, not a speed measurement).
        #expect(end.tv_sec - start.tv_sec < 15)
        #expect(Syscall.waitReadable(wakeup.fileDescriptor, unlessReadable: -1, milliseconds: 0))
    }
}
