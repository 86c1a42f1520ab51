/* tun.h - a Linux TUN device, its address, MTU and routes (ioctl only). */
#ifndef ZTNA_TUN_H
#define ZTNA_TUN_H

#include <stddef.h>
#include <stdint.h>

/* Opens (creating) TUN device name ("" or NULL: the kernel picks), without
 * packet information, non-blocking. Writes the real name into actual.
 * With offload (non-NULL, *offload set), asks for a virtio-net header on
 * every read and write and TCP segmentation offload (reads may then be
 * TCP segments of up to 64 KB with checksums to finish: vnet.h); *offload
 * says whether it got them (a device or kernel that refuses gets the
 * plain device). Returns the fd or -errno. */
int tun_open(const char *name, char *actual, size_t len, int *offload);
/* Brings ifname up with IPv4 address addr4 (/32; NULL: none) and mtu. */
int tun_configure(const char *ifname, const char *addr4, int mtu);
int tun_set_mtu(const char *ifname, int mtu);
/* Adds IPv6 address addr6 (/128) to ifname. Returns 0 or -errno. */
int tun_add_addr6(const char *ifname, const char *addr6);
/* Adds (add = 1) or deletes a route to addr/prefix (family 4 or 6) through
 * ifname. Returns 0 or -errno. */
int tun_route(const char *ifname, int add, int family, const uint8_t *addr,
              int prefix);

#endif
