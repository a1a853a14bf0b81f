// Happens-before edges for the thread sanitizer around locks it cannot see (CLinuxSanitizer.h).
#include "CLinuxSanitizer.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TUNCTL_THREAD_SANITIZER 1
#endif
#endif

#ifdef TUNCTL_THREAD_SANITIZER
void __tsan_acquire(void *address);
void __tsan_release(void *address);

void tunctl_sanitizer_acquire(const void *address) { __tsan_acquire((void *)address); }
void tunctl_sanitizer_release(const void *address) { __tsan_release((void *)address); }
#else
void tunctl_sanitizer_acquire(const void *address) { (void)address; }
void tunctl_sanitizer_release(const void *address) { (void)address; }
#endif
