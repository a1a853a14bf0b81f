// See CLinuxSpawn.h for the contract.
#define _GNU_SOURCE
#include "CLinuxSpawn.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int tunctl_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno; }

int tunctl_spawn_closefrom(posix_spawn_file_actions_t *actions, int low) {
    return -posix_spawn_file_actions_addclosefrom_np(actions, low);
}
