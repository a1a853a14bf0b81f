#ifndef TUNCTL_LINUX_SPAWN_H
#define TUNCTL_LINUX_SPAWN_H

#include <spawn.h>

/// Why C: pipe2 and posix_spawn_file_actions_addclosefrom_np are GNU extensions, declared only
/// under _GNU_SOURCE, which the Swift Glibc module does not define. Both return 0 or -errno.

/// pipe2(fds, O_CLOEXEC): a pipe whose ends no other child inherits.
int tunctl_pipe_cloexec(int fds[2]);

/// The child closes every descriptor from `low` up before exec (glibc 2.34 and later).
int tunctl_spawn_closefrom(posix_spawn_file_actions_t *actions, int low);

#endif
