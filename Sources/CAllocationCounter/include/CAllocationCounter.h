// Test support: counts heap allocations made anywhere in the process, so a test can prove a hot
// path allocates nothing. C because it must replace malloc itself, which Swift cannot do.
#ifndef TUNCTL_ALLOCATION_COUNTER_H
#define TUNCTL_ALLOCATION_COUNTER_H
#include <stdint.h>

/// Allocations (malloc, calloc, realloc, memalign family) since the process started.
uint64_t tunctl_allocation_count(void);
/// 1 when allocations are counted; 0 under a sanitizer that owns the allocator.
int tunctl_allocation_counting(void);

#endif
