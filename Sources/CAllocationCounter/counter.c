// Replaces the allocator's entry points with counting wrappers around glibc's own (__libc_*), so
// the count includes the Swift runtime's allocations (swift_slowAlloc calls malloc or
// posix_memalign). Linked only into the test bundle, through TunnelTestSupport.
#include "CAllocationCounter.h"
#include <errno.h>
#include <stddef.h>

// The thread sanitizer intercepts the allocator itself; a second interposer under it crashes the
// test bundle at start. Under it nothing is counted and the allocation tests skip (the plain
// `swift test` runs them).
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define TUNCTL_SANITIZER_OWNS_MALLOC 1
#endif
#endif

#ifdef TUNCTL_SANITIZER_OWNS_MALLOC
int tunctl_allocation_counting(void) { return 0; }
uint64_t tunctl_allocation_count(void) { return 0; }
#else
int tunctl_allocation_counting(void) { return 1; }

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *pointer);

static uint64_t allocations;

static void counted(void) { __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED); }

uint64_t tunctl_allocation_count(void) { return __atomic_load_n(&allocations, __ATOMIC_RELAXED); }

void *malloc(size_t size) {
    counted();
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    counted();
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    counted();
    return __libc_realloc(pointer, size);
}

void *memalign(size_t alignment, size_t size) {
    counted();
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    counted();
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    counted();
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL && size != 0) return ENOMEM;
    *result = pointer;
    return 0;
}

void free(void *pointer) { __libc_free(pointer); }
#endif
