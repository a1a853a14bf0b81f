import CLinuxShim
import Glibc

/// What a tunctl process does to itself so that a crash cannot carry its keys away in a core.
/// Called first thing by every command that reads a key, before any file is read.
public enum ProcessHardening {
    /// Not dumpable (PR_SET_DUMPABLE 0): the kernel writes no core file, not even to a
    /// `core_pattern` pipe unless `fs.suid_dumpable` is 2, and other users cannot read
    /// /proc/PID/mem. RLIMIT_CORE 0 as well, for a kernel or tool that looks only at the limit.
    public static func disableCoreDumps() throws(SystemError) {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = try Syscall.check("setrlimit(RLIMIT_CORE)") {
            setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit)
        }
        let status = tunctl_set_dumpable(0)
        guard status == 0 else { throw SystemError(call: "prctl(PR_SET_DUMPABLE)", errno: -status) }
    }
}
