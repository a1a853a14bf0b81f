// See CLinuxShim.h for the contract: thin, policy-free, -errno on failure.
#define _GNU_SOURCE 1

#include "CLinuxShim.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stddef.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <linux/if_tun.h>
#include <netinet/udp.h>
#include <linux/virtio_net.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h, since 4.18; older headers lack it */
#endif
#ifndef UDP_GRO
#define UDP_GRO 104 /* linux/udp.h, since 5.0 */
#endif
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20 /* linux/if_tun.h, since 6.2 */
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40 /* linux/if_tun.h, since 6.2 */
#endif

_Static_assert(sizeof(struct tunctl_mmsghdr) == sizeof(struct mmsghdr),
               "tunctl_mmsghdr must mirror struct mmsghdr");
_Static_assert(offsetof(struct tunctl_mmsghdr, msg_hdr) == offsetof(struct mmsghdr, msg_hdr),
               "tunctl_mmsghdr must mirror struct mmsghdr");
_Static_assert(offsetof(struct tunctl_mmsghdr, msg_len) == offsetof(struct mmsghdr, msg_len),
               "tunctl_mmsghdr must mirror struct mmsghdr");
_Static_assert(sizeof(struct tunctl_in_pktinfo) == sizeof(struct in_pktinfo),
               "tunctl_in_pktinfo must mirror struct in_pktinfo");
_Static_assert(offsetof(struct tunctl_in_pktinfo, ipi_ifindex) == offsetof(struct in_pktinfo, ipi_ifindex),
               "tunctl_in_pktinfo must mirror struct in_pktinfo");
_Static_assert(offsetof(struct tunctl_in_pktinfo, ipi_spec_dst) == offsetof(struct in_pktinfo, ipi_spec_dst),
               "tunctl_in_pktinfo must mirror struct in_pktinfo");
_Static_assert(offsetof(struct tunctl_in_pktinfo, ipi_addr) == offsetof(struct in_pktinfo, ipi_addr),
               "tunctl_in_pktinfo must mirror struct in_pktinfo");
_Static_assert(sizeof(struct tunctl_in6_pktinfo) == sizeof(struct in6_pktinfo),
               "tunctl_in6_pktinfo must mirror struct in6_pktinfo");
_Static_assert(offsetof(struct tunctl_in6_pktinfo, ipi6_addr) == offsetof(struct in6_pktinfo, ipi6_addr),
               "tunctl_in6_pktinfo must mirror struct in6_pktinfo");
_Static_assert(offsetof(struct tunctl_in6_pktinfo, ipi6_ifindex) == offsetof(struct in6_pktinfo, ipi6_ifindex),
               "tunctl_in6_pktinfo must mirror struct in6_pktinfo");
_Static_assert(TUNCTL_IFNAMSIZ == IFNAMSIZ, "TUNCTL_IFNAMSIZ must equal IFNAMSIZ");

const unsigned int tunctl_tun_f_csum = TUN_F_CSUM;
const unsigned int tunctl_tun_f_tso4 = TUN_F_TSO4;
const unsigned int tunctl_tun_f_tso6 = TUN_F_TSO6;
const unsigned int tunctl_tun_f_tso_ecn = TUN_F_TSO_ECN;
const unsigned int tunctl_tun_f_uso4 = TUN_F_USO4;
const unsigned int tunctl_tun_f_uso6 = TUN_F_USO6;
const int tunctl_virtio_net_hdr_size = (int)sizeof(struct virtio_net_hdr);

const int tunctl_sol_udp = SOL_UDP;
const int tunctl_udp_segment = UDP_SEGMENT;
const int tunctl_udp_gro = UDP_GRO;

const int tunctl_sol_ip = SOL_IP;
const int tunctl_ip_pktinfo = IP_PKTINFO;
const int tunctl_sol_ipv6 = SOL_IPV6;
const int tunctl_ipv6_pktinfo = IPV6_PKTINFO;
const int tunctl_ipv6_recvpktinfo = IPV6_RECVPKTINFO;

// Why C: TUNSETIFF is an _IOW ioctl number and `struct ifreq` is a union of unions; both are only
// defined correctly by the kernel headers.
int tunctl_tun_open(const char *requested_name, unsigned int flags, char *name_out) {
    if ((flags & ~(TUNCTL_TUN_MULTI_QUEUE | TUNCTL_TUN_VNET_HDR)) != 0 || name_out == NULL) {
        return -EINVAL;
    }
    struct ifreq request;
    memset(&request, 0, sizeof request);
    request.ifr_flags = IFF_TUN | IFF_NO_PI;
    if (flags & TUNCTL_TUN_MULTI_QUEUE) request.ifr_flags |= IFF_MULTI_QUEUE;
    if (flags & TUNCTL_TUN_VNET_HDR) request.ifr_flags |= IFF_VNET_HDR;
    if (requested_name != NULL) {
        size_t length = strlen(requested_name);
        if (length >= IFNAMSIZ) return -ENAMETOOLONG;
        memcpy(request.ifr_name, requested_name, length);
    }

    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (ioctl(fd, TUNSETIFF, &request) < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    memcpy(name_out, request.ifr_name, IFNAMSIZ);
    name_out[IFNAMSIZ - 1] = '\0';
    return fd;
}

// Why C: TUNSETOFFLOAD is an _IOW ioctl number from linux/if_tun.h.
int tunctl_tun_set_offload(int fd, unsigned int offload_flags) {
    if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)offload_flags) < 0) return -errno;
    return 0;
}

// Why C: TUNSETVNETHDRSZ is an _IOW ioctl number from linux/if_tun.h.
int tunctl_tun_set_vnet_hdr_size(int fd, int size) {
    if (ioctl(fd, TUNSETVNETHDRSZ, &size) < 0) return -errno;
    return 0;
}

// Opens the datagram socket the SIOC*IF* ioctls are issued on and fills in the interface name.
static int interface_request(const char *name, struct ifreq *request) {
    if (name == NULL) return -EINVAL;
    size_t length = strlen(name);
    if (length == 0 || length >= IFNAMSIZ) return -EINVAL;
    memset(request, 0, sizeof *request);
    memcpy(request->ifr_name, name, length);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    return fd;
}

// Why C: SIOCGIFMTU takes a `struct ifreq` union that Swift imports awkwardly.
int tunctl_if_get_mtu(const char *name) {
    struct ifreq request;
    int fd = interface_request(name, &request);
    if (fd < 0) return fd;
    int result = ioctl(fd, SIOCGIFMTU, &request) < 0 ? -errno : request.ifr_mtu;
    close(fd);
    return result;
}

// Why C: SIOCSIFMTU takes a `struct ifreq` union that Swift imports awkwardly.
int tunctl_if_set_mtu(const char *name, int mtu) {
    struct ifreq request;
    int fd = interface_request(name, &request);
    if (fd < 0) return fd;
    request.ifr_mtu = mtu;
    int result = ioctl(fd, SIOCSIFMTU, &request) < 0 ? -errno : 0;
    close(fd);
    return result;
}

// Why C: SIOCGIFFLAGS takes a `struct ifreq` union that Swift imports awkwardly.
int tunctl_if_get_flags(const char *name) {
    struct ifreq request;
    int fd = interface_request(name, &request);
    if (fd < 0) return fd;
    // ifr_flags is a short; widen through unsigned short so IFF_* bits stay non-negative.
    int result = ioctl(fd, SIOCGIFFLAGS, &request) < 0 ? -errno : (int)(unsigned short)request.ifr_flags;
    close(fd);
    return result;
}

// Why C: SIOCSIFFLAGS takes a `struct ifreq` union that Swift imports awkwardly.
int tunctl_if_set_flags(const char *name, int flags) {
    if (flags < 0 || flags > 0xffff) return -EINVAL;
    struct ifreq request;
    int fd = interface_request(name, &request);
    if (fd < 0) return fd;
    request.ifr_flags = (short)flags;
    int result = ioctl(fd, SIOCSIFFLAGS, &request) < 0 ? -errno : 0;
    close(fd);
    return result;
}

// Why C: glibc declares recvmmsg and struct mmsghdr only under _GNU_SOURCE, invisible to Swift.
int tunctl_recvmmsg(int fd, struct tunctl_mmsghdr *messages, unsigned int count, int flags) {
    int result = recvmmsg(fd, (struct mmsghdr *)messages, count, flags, NULL);
    return result < 0 ? -errno : result;
}

// Why C: glibc declares sendmmsg and struct mmsghdr only under _GNU_SOURCE, invisible to Swift.
int tunctl_sendmmsg(int fd, struct tunctl_mmsghdr *messages, unsigned int count, int flags) {
    int result = sendmmsg(fd, (struct mmsghdr *)messages, count, flags);
    return result < 0 ? -errno : result;
}

// Why C: CMSG_SPACE is a function-like macro.
size_t tunctl_cmsg_space(size_t data_length) { return CMSG_SPACE(data_length); }

// Why C: CMSG_LEN is a function-like macro.
size_t tunctl_cmsg_len(size_t data_length) { return CMSG_LEN(data_length); }

// Why C: CMSG_FIRSTHDR is a function-like macro.
struct cmsghdr *tunctl_cmsg_firsthdr(struct msghdr *message) { return CMSG_FIRSTHDR(message); }

// Why C: CMSG_NXTHDR is a function-like macro.
struct cmsghdr *tunctl_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header) {
    return CMSG_NXTHDR(message, header);
}

// Why C: CMSG_DATA is a function-like macro.
unsigned char *tunctl_cmsg_data(struct cmsghdr *header) { return CMSG_DATA(header); }

// Why C: sys/eventfd.h is not part of Swift's Glibc module.
int tunctl_eventfd(void) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}
