import CLinuxShim
import Glibc

/// A level-triggered flag other threads can `poll` on: an eventfd that reads readable from
/// `raise()` until `lower()`.
///
/// The data handlers park in `poll` on their descriptor and this one when they run out of work;
/// the control queue raises it before it waits for the data queues (`sync`), so a parked handler
/// returns at once instead of sleeping out its timeout, and lowers it once it holds them.
final class Wakeup: Sendable {
    /// The descriptor to poll for readability, open for the object's lifetime. Do not read or
    /// close it.
    let fileDescriptor: Int32

    init() throws(SystemError) {
        fileDescriptor = try Syscall.shimCheck("tunctl_eventfd") { tunctl_eventfd() }
    }

    deinit { _ = try? Syscall.close(fileDescriptor) }

    /// Makes the descriptor readable until `lower()`; raising twice is the same as once.
    func raise() {
        var one: UInt64 = 1
        let fd = fileDescriptor
        // Cannot fail: the counter would need 2^64 - 1 raises without a lower to overflow.
        _ = try? Syscall.io("write(eventfd)") { Glibc.write(fd, &one, MemoryLayout<UInt64>.size) }
    }

    /// Makes the descriptor unreadable again (reading an eventfd resets its counter to zero).
    func lower() {
        var count: UInt64 = 0
        let fd = fileDescriptor
        _ = try? Syscall.io("read(eventfd)") { Glibc.read(fd, &count, MemoryLayout<UInt64>.size) }
    }
}
