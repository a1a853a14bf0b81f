import Glibc

/// Which network namespace a process is in: the inode of its `/proc/self/ns/net` (what
/// `readlink /proc/self/ns/net` prints as `net:[INODE]`). Two processes are in the same namespace
/// exactly when the inodes match (all namespaces live on the one nsfs). The daemon puts its own in
/// its `show` report, so the CLI can tell a socket served from another namespace (the control
/// directory `/var/run/wireguard` is shared by all of them).
public enum NetworkNamespace {
    /// This process's namespace; nil when /proc is not mounted.
    public static func current() -> UInt64? {
        var info = stat()
        guard stat("/proc/self/ns/net", &info) == 0 else { return nil }
        return UInt64(info.st_ino)
    }

    /// The namespace of process `pid`; nil when it is gone or its /proc entry may not be read.
    public static func of(pid: Int32) -> UInt64? {
        var info = stat()
        guard stat("/proc/\(pid)/ns/net", &info) == 0 else { return nil }
        return UInt64(info.st_ino)
    }

    /// "net:[4026531840]", as readlink and `ip netns identify` users know it.
    public static func name(_ inode: UInt64) -> String { "net:[\(inode)]" }
}
