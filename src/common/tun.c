/* tun.c - TUN devices and routes through ioctl. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <net/route.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tun.h"

static int tun_open_flags(const char *name, char *actual, size_t len,
                          short flags)
{
  struct ifreq ifr;
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);

  if (fd < 0)
    return -errno;
  memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = flags;
  if (name)
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  snprintf(actual, len, "%s", ifr.ifr_name);
  return fd;
}

int tun_open(const char *name, char *actual, size_t len, int *offload)
{
  int fd;

  if (offload && *offload) {
    *offload = 0;
    fd = tun_open_flags(name, actual, len, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR);
    if (fd >= 0) {
      int hs = 10; /* struct virtio_net_hdr: vnet.h's VNET_HDR_LEN */
      if (ioctl(fd, TUNSETVNETHDRSZ, &hs) == 0 &&
          ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) == 0) {
        *offload = 1;
        return fd;
      }
      close(fd);
    }
  }
  return tun_open_flags(name, actual, len, IFF_TUN | IFF_NO_PI);
}

static int ifreq_ioctl(int family, unsigned long req, struct ifreq *ifr)
{
  int s = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0), rv = 0;

  if (s < 0)
    return -errno;
  if (ioctl(s, req, ifr) < 0)
    rv = -errno;
  close(s);
  return rv;
}

int tun_set_mtu(const char *ifname, int mtu)
{
  struct ifreq ifr;

  memset(&ifr, 0, sizeof(ifr));
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  ifr.ifr_mtu = mtu;
  return ifreq_ioctl(AF_INET, SIOCSIFMTU, &ifr);
}

int tun_configure(const char *ifname, const char *addr4, int mtu)
{
  struct ifreq ifr;
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  int rv;

  if (addr4) {
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    sin->sin_family = AF_INET;
    if (inet_pton(AF_INET, addr4, &sin->sin_addr) != 1)
      return -EINVAL;
    if ((rv = ifreq_ioctl(AF_INET, SIOCSIFADDR, &ifr)) < 0)
      return rv;
    sin->sin_addr.s_addr = 0xffffffffu;
    if ((rv = ifreq_ioctl(AF_INET, SIOCSIFNETMASK, &ifr)) < 0)
      return rv;
  }
  if ((rv = tun_set_mtu(ifname, mtu)) < 0)
    return rv;
  memset(&ifr, 0, sizeof(ifr));
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  if ((rv = ifreq_ioctl(AF_INET, SIOCGIFFLAGS, &ifr)) < 0)
    return rv;
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  return ifreq_ioctl(AF_INET, SIOCSIFFLAGS, &ifr);
}

/* struct in6_ifreq of <linux/ipv6.h>, which clashes with <netinet/in.h>. */
struct ifreq6 {
  struct in6_addr addr;
  uint32_t prefixlen;
  int ifindex;
};

int tun_add_addr6(const char *ifname, const char *addr6)
{
  /* Padded to a struct ifreq: checkers read SIOCSIFADDR's argument as
   * one. */
  union {
    struct ifreq6 r;
    struct ifreq ifr;
  } u;
  int s, rv = 0;

  memset(&u, 0, sizeof(u));
  if (inet_pton(AF_INET6, addr6, &u.r.addr) != 1)
    return -EINVAL;
  u.r.prefixlen = 128;
  u.r.ifindex = (int)if_nametoindex(ifname);
  if (!u.r.ifindex)
    return -ENODEV;
  s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    return -errno;
  if (ioctl(s, SIOCSIFADDR, &u) < 0 && errno != EEXIST)
    rv = -errno;
  close(s);
  return rv;
}

int tun_route(const char *ifname, int add, int family, const uint8_t *addr,
              int prefix)
{
  int s, rv = 0;

  if (family == 4) {
    struct rtentry rt;
    struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
    struct sockaddr_in *mask = (struct sockaddr_in *)&rt.rt_genmask;
    char dev[IFNAMSIZ];

    memset(&rt, 0, sizeof(rt));
    memset(dev, 0, sizeof(dev));
    dst->sin_family = AF_INET;
    memcpy(&dst->sin_addr, addr, 4);
    mask->sin_family = AF_INET;
    mask->sin_addr.s_addr = prefix ? htonl(0xffffffffu << (32 - prefix)) : 0;
    rt.rt_flags = RTF_UP | (prefix == 32 ? RTF_HOST : 0);
    snprintf(dev, sizeof(dev), "%s", ifname);
    rt.rt_dev = dev;
    s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
      return -errno;
    if (ioctl(s, add ? SIOCADDRT : SIOCDELRT, &rt) < 0)
      rv = -errno;
    close(s);
    return rv;
  } else {
    /* Padded to a struct rtentry, as checkers read SIOCADDRT's argument. */
    union {
      struct in6_rtmsg m;
      struct rtentry pad;
    } u;
    struct in6_rtmsg *rt = &u.m;

    memset(&u, 0, sizeof(u));
    memcpy(&rt->rtmsg_dst, addr, 16);
    rt->rtmsg_dst_len = (unsigned short)prefix;
    rt->rtmsg_flags = RTF_UP | (prefix == 128 ? RTF_HOST : 0);
    rt->rtmsg_metric = 1;
    rt->rtmsg_ifindex = (int)if_nametoindex(ifname);
    if (!rt->rtmsg_ifindex)
      return -ENODEV;
    s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
      return -errno;
    if (ioctl(s, add ? SIOCADDRT : SIOCDELRT, &u) < 0)
      rv = -errno;
    close(s);
    return rv;
  }
}
