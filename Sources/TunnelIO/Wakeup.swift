import CLinuxShim
import Glibc
import Synchronization

/// A level-triggered flag other threads can `poll` on: an eventfd that reads readable from
/// `raise()` until `lower()`.
///
/// The data handlers park in `poll` on their descriptor and this one when they run out of work;
/// the control queue raises it before it waits for the data queues (`sync`), so a parked handler
/// returns at once instead of sleeping out its timeout, and lowers it once it holds them.
final class Wakeup: Sendable {
    private let descriptor: Atomic<Int32>

    /// The descriptor to poll for readability; -1 after `close()`. Do not read or close it.
    var fileDescriptor: Int32 { descriptor.load(ordering: .acquiring) }

    init() throws(SystemError) {
        descriptor = Atomic(try Syscall.shimCheck("tunctl_eventfd") { tunctl_eventfd() })
    }

    deinit { close() }

    /// Makes the descriptor readable until `lower()`; raising twice is the same as once.
    func raise() {
        var one: UInt64 = 1
        let fd = fileDescriptor
        // The counter cannot overflow from this (it would take 2^64 - 1 raises without a lower),
        // so the only failure is a closed descriptor, after which nobody polls it.
        _ = try? Syscall.io("write(eventfd)") { Glibc.write(fd, &one, MemoryLayout<UInt64>.size) }
    }

    /// Makes the descriptor unreadable again (reading an eventfd resets its counter to zero).
    func lower() {
        var count: UInt64 = 0
        let fd = fileDescriptor
        _ = try? Syscall.io("read(eventfd)") { Glibc.read(fd, &count, MemoryLayout<UInt64>.size) }
    }

    func close() {
        let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { _ = try? Syscall.close(fd) }
    }
}
