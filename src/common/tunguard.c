/* tunguard.c - admission of packets into the agent's TUN. */
#include <string.h>

#include "ippkt.h"
#include "p2p.h"
#include "tunguard.h"

/* Declared in p2p.h; here because it is sans-IO and the TUN guard needs
 * it (fuzzed with it). */
int p2p_link_token(const uint8_t *pkt, size_t n, uint8_t *token)
{
  const uint8_t *d;
  size_t len;
  int kind;

  /* Every packet passes here: only the two sizes a link request has (an
   * IPv4 or IPv6 header, the echo header, the payload) are parsed. */
  if (n != 20 + 8 + P2P_LINK_PAYLOAD_LEN && n != 40 + 8 + P2P_LINK_PAYLOAD_LEN)
    return -1;
  kind = ippkt_echo_payload(pkt, n, &d, &len);
  if (kind < 0 || len != P2P_LINK_PAYLOAD_LEN ||
      memcmp(d, P2P_LINK_MAGIC, P2P_LINK_MAGIC_LEN))
    return -1;
  memcpy(token, d + P2P_LINK_MAGIC_LEN, P2P_LINK_TOKEN_LEN);
  return kind;
}

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
  uint8_t token[P2P_LINK_TOKEN_LEN];

  if (ippkt_parse(pkt, n, &ip) < 0)
    return TUNGUARD_MALFORMED;
  if (p2p_link_token(pkt, ip.totlen, token) >= 0)
    return TUNGUARD_LINK;
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
