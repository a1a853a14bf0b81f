#ifndef TUNCTL_LINUX_SANITIZER_H
#define TUNCTL_LINUX_SANITIZER_H

/// Why C: the thread sanitizer cannot see inside Synchronization.Mutex (its Linux fast path
/// runs in the uninstrumented standard library), so accesses made under it look like races.
/// These tell the sanitizer that the lock at `address` was taken and is about to be released;
/// without the sanitizer they do nothing.
void tunctl_sanitizer_acquire(const void *address);
void tunctl_sanitizer_release(const void *address);

#endif
