// CLinuxShim: the Linux interfaces Swift cannot reach on its own.
//
// Contract for every function here: thin and policy-free (no retries, no logging, no defaults),
// names prefixed `tunctl_`, and failure reported as a negative errno value (never -1 + errno).
// EINTR is returned like any other errno; the Swift syscall helper decides what to do with it.
//
// Linux headers are included only in shim.c, so that their definitions (linux/if.h,
// linux/if_tun.h) never collide with Glibc's in Swift's view; constants cross as `extern const`.
#ifndef TUNCTL_CLINUXSHIM_H
#define TUNCTL_CLINUXSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

/// Bytes an interface name buffer needs, including the terminating NUL (IFNAMSIZ).
#define TUNCTL_IFNAMSIZ 16

// Flags for tunctl_tun_open; tunctl's own bits, translated to IFF_* in shim.c.
#define TUNCTL_TUN_MULTI_QUEUE 0x1u
#define TUNCTL_TUN_VNET_HDR 0x2u

/// Same layout as glibc's `struct mmsghdr`, which Swift cannot see because glibc declares it only
/// under _GNU_SOURCE. shim.c checks size and offsets against the real one at compile time.
struct tunctl_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

// MARK: TUN

/// Opens /dev/net/tun as an IFF_TUN | IFF_NO_PI device with O_NONBLOCK | O_CLOEXEC.
/// `requested_name` may be empty or NULL (the kernel picks, e.g. "tun0") or a pattern like "wg%d".
/// `flags` is a combination of TUNCTL_TUN_*. On success returns the fd and writes the name the
/// kernel chose, NUL-terminated, into `name_out` (at least TUNCTL_IFNAMSIZ bytes).
int tunctl_tun_open(const char *requested_name, unsigned int flags, char *name_out);

/// TUNSETOFFLOAD: which offloads (tunctl_tun_f_* bits) the reader of this TUN fd accepts.
int tunctl_tun_set_offload(int fd, unsigned int offload_flags);

/// TUNSETVNETHDRSZ: size of the virtio-net header in front of every packet (IFF_VNET_HDR only).
int tunctl_tun_set_vnet_hdr_size(int fd, int size);

extern const unsigned int tunctl_tun_f_csum;
extern const unsigned int tunctl_tun_f_tso4;
extern const unsigned int tunctl_tun_f_tso6;
extern const unsigned int tunctl_tun_f_tso_ecn;
extern const unsigned int tunctl_tun_f_uso4;
extern const unsigned int tunctl_tun_f_uso6;
/// sizeof(struct virtio_net_hdr): 10.
extern const int tunctl_virtio_net_hdr_size;

// MARK: Wake-ups

/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC): a counter that polls readable while non-zero
/// (sys/eventfd.h is not in Swift's Glibc module). Returns the fd or -errno.
int tunctl_eventfd(void);

// MARK: Process

/// prctl(PR_SET_DUMPABLE, dumpable): 0 means no core dump is written and /proc/PID/mem is
/// readable only with CAP_SYS_PTRACE. Returns 0 or -errno.
int tunctl_set_dumpable(int dumpable);

// MARK: Interface MTU and flags (ioctls on a throwaway AF_INET datagram socket)

/// SIOCGIFMTU. Returns the MTU (> 0) or -errno.
int tunctl_if_get_mtu(const char *name);

/// SIOCSIFMTU.
int tunctl_if_set_mtu(const char *name, int mtu);

/// SIOCGIFFLAGS. Returns the interface flags (IFF_* bits, non-negative) or -errno.
int tunctl_if_get_flags(const char *name);

/// SIOCSIFFLAGS: replaces the flags; read-modify-write is the caller's business.
int tunctl_if_set_flags(const char *name, int flags);

// MARK: Batched datagrams

/// recvmmsg(2). Returns the number of messages received or -errno.
int tunctl_recvmmsg(int fd, struct tunctl_mmsghdr *messages, unsigned int count, int flags);

/// sendmmsg(2). Returns the number of messages sent or -errno.
int tunctl_sendmmsg(int fd, struct tunctl_mmsghdr *messages, unsigned int count, int flags);

// MARK: UDP segmentation offload and control messages

/// SOL_UDP, UDP_SEGMENT (GSO) and UDP_GRO from <netinet/udp.h>.
extern const int tunctl_sol_udp;
extern const int tunctl_udp_segment;
extern const int tunctl_udp_gro;

/// CMSG_SPACE / CMSG_LEN, which are macros Swift cannot call.
size_t tunctl_cmsg_space(size_t data_length);
size_t tunctl_cmsg_len(size_t data_length);

/// CMSG_FIRSTHDR / CMSG_NXTHDR / CMSG_DATA. NULL when there is no (further) header.
struct cmsghdr *tunctl_cmsg_firsthdr(struct msghdr *message);
struct cmsghdr *tunctl_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header);
unsigned char *tunctl_cmsg_data(struct cmsghdr *header);

// MARK: Packet info (sticky source address)

/// Same layout as `struct in_pktinfo` (IP_PKTINFO), which glibc declares only under _GNU_SOURCE.
/// shim.c checks size and offsets against the real one at compile time. Addresses are in
/// network byte order, as the kernel has them.
struct tunctl_in_pktinfo {
    int ipi_ifindex;
    uint32_t ipi_spec_dst;
    uint32_t ipi_addr;
};

/// Same layout as `struct in6_pktinfo` (IPV6_PKTINFO), likewise hidden without _GNU_SOURCE.
struct tunctl_in6_pktinfo {
    uint8_t ipi6_addr[16];
    unsigned int ipi6_ifindex;
};

/// SOL_IP / IP_PKTINFO, SOL_IPV6 / IPV6_PKTINFO, and IPV6_RECVPKTINFO (the option that asks for
/// IPV6_PKTINFO on receive; for IPv4, IP_PKTINFO is both the option and the message type).
extern const int tunctl_sol_ip;
extern const int tunctl_ip_pktinfo;
extern const int tunctl_sol_ipv6;
extern const int tunctl_ipv6_pktinfo;
extern const int tunctl_ipv6_recvpktinfo;

// MARK: rtnetlink (types and constants only)

#include "CLinuxNetlink.h"

#include "CLinuxSanitizer.h"
#include "CLinuxSpawn.h"

#endif
