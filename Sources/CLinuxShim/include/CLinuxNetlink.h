// rtnetlink for Swift: the message structs (nlmsghdr, ifinfomsg, ifaddrmsg, rtmsg, nlmsgerr,
// rtattr, sockaddr_nl, fib_rule_hdr) and constants (RTM_*, NLM_F_*, IFLA_*, IFA_*, RTA_*, FRA_*, RTNLGRP_*,
// NETLINK_*) straight from the kernel's UAPI headers, so Swift never spells one of their numbers.
//
// An exception to "Linux headers only in shim.c": these headers define no type that Glibc also
// defines (unlike linux/if.h), so Swift sees one definition of everything. No functions: the
// function-like macros (NLMSG_ALIGN, RTA_ALIGN, ...) are done in Swift from NLMSG_ALIGNTO and
// RTA_ALIGNTO.
#ifndef TUNCTL_CLINUXNETLINK_H
#define TUNCTL_CLINUXNETLINK_H

#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/fib_rules.h>

#endif
