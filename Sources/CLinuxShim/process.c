// See CLinuxShim.h for the contract: thin, policy-free, -errno on failure.
#include "CLinuxShim.h"

#include <errno.h>
#include <sys/prctl.h>

int tunctl_set_dumpable(int dumpable) {
    // prctl is variadic, which Swift cannot call.
    return prctl(PR_SET_DUMPABLE, (unsigned long)dumpable, 0UL, 0UL, 0UL) == 0 ? 0 : -errno;
}
