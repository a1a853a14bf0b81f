import CAllocationCounter

/// Heap allocations made by the whole process so far (see `CAllocationCounter`). Take the
/// difference around the code under test, with nothing else running in it.
public func allocationCount() -> UInt64 { tunctl_allocation_count() }

/// False under the thread or address sanitizer, which own the allocator: nothing is counted
/// then, and tests that count allocations must skip (the plain `swift test` runs them).
public var allocationCountingAvailable: Bool { tunctl_allocation_counting() != 0 }
