/* tunguard.h - what the agent lets into its TUN device, sans-IO.
 *
 * A connector (or anyone who holds a path to the agent) could otherwise
 * write any packet into the user's machine: sources that are another
 * service's virtual IP or an internet address, destinations that are the
 * machine's other addresses. A packet from a path is admitted only when
 * it is a whole IPv4/IPv6 packet, its source lies in a virtual IP (prefix)
 * of a service that path carries, and its destination is the agent's own
 * tunnel address.
 */
#ifndef ZTNA_TUNGUARD_H
#define ZTNA_TUNGUARD_H

#include <stddef.h>
#include <stdint.h>

#define TUNGUARD_MAX_VIPS 64

enum tunguard_verdict {
  TUNGUARD_OK = 0,
  TUNGUARD_MALFORMED,      /* not a whole IP packet */
  TUNGUARD_FOREIGN_SOURCE, /* not from a service this path carries */
  TUNGUARD_FOREIGN_DEST,   /* not to our tunnel address */
};

struct tunguard_vip {
  int family; /* 4 or 6 */
  uint8_t addr[16];
  int prefix;
  unsigned svc; /* the service's index */
};

struct tunguard {
  uint8_t tun4[4], tun6[16];
  int has_tun6;
  struct tunguard_vip vips[TUNGUARD_MAX_VIPS];
  size_t nvips;
};

/* Judges pkt (n bytes as read). carried: per service index, nonzero when
 * the path the packet came on carries that service; NULL when it carries
 * them all (the relay); ncarried: its length. On TUNGUARD_OK *totlen is the
 * packet's IP length (the bytes to write). */
enum tunguard_verdict tunguard_check(const struct tunguard *g,
                                     const uint8_t *pkt, size_t n,
                                     const uint8_t *carried, size_t ncarried,
                                     size_t *totlen);

/* 1 when a's first prefix bits equal b's. */
int tunguard_prefix_match(const uint8_t *a, const uint8_t *b, int prefix);

#endif
