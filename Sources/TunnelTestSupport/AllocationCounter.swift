import CAllocationCounter

/// Heap allocations made by the whole process so far (see `CAllocationCounter`). Take the
/// difference around the code under test, with nothing else running in it.
public func allocationCount() -> UInt64 { tunctl_allocation_count() }
