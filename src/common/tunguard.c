/* tunguard.c - admission of packets into the agent's TUN. */
#include <string.h>

#include "ippkt.h"
#include "tunguard.h"

int tunguard_prefix_match(const uint8_t *a, const uint8_t *b, int prefix)
{
  int full = prefix / 8, rest = prefix % 8;

  if (memcmp(a, b, (size_t)full))
    return 0;
  return !rest || ((a[full] ^ b[full]) & (0xff << (8 - rest))) == 0;
}

enum tunguard_verdict tunguard_check(const struct tunguard *g,
                                     const uint8_t *pkt, size_t n,
                                     const uint8_t *carried, size_t ncarried,
                                     size_t *totlen)
{
  struct ippkt ip;

  if (ippkt_parse(pkt, n, &ip) < 0)
    return TUNGUARD_MALFORMED;
  if (ip.version == 4 ? memcmp(ip.dst, g->tun4, 4) != 0
                      : !g->has_tun6 || memcmp(ip.dst, g->tun6, 16) != 0)
    return TUNGUARD_FOREIGN_DEST;
  for (size_t i = 0; i < g->nvips; i++) {
    const struct tunguard_vip *v = &g->vips[i];
    if (v->family == ip.version &&
        tunguard_prefix_match(v->addr, ip.src, v->prefix) &&
        (!carried || (v->svc < ncarried && carried[v->svc]))) {
      *totlen = ip.totlen;
      return TUNGUARD_OK;
    }
  }
  return TUNGUARD_FOREIGN_SOURCE;
}
