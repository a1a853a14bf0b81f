import CLinuxShim

/// Lock edges for the thread sanitizer, which cannot see inside `Synchronization.Mutex` on
/// Linux: call `acquired` first thing under the lock and `releasing` last, with one address per
/// lock. Empty calls in a build without the sanitizer.
enum SanitizerAnnotations {
    @inline(__always) static func acquired(_ lock: UnsafeRawPointer) { tunctl_sanitizer_acquire(lock) }
    @inline(__always) static func releasing(_ lock: UnsafeRawPointer) { tunctl_sanitizer_release(lock) }
}
