/* ippkt.c - IP header parsing and incremental checksum updates. */
#include <string.h>

#include "err.h"
#include "ippkt.h"

#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58

int ippkt_parse(const uint8_t *p, size_t n, struct ippkt *out)
{
  memset(out, 0, sizeof(*out));
  if (n < 1)
    return ZTNA_ERR_MALFORMED;
  if ((p[0] >> 4) == 4) {
    size_t ihl = (size_t)(p[0] & 0x0f) * 4;
    size_t tot;
    uint16_t frag;

    if (n < 20 || ihl < 20 || ihl > n)
      return ZTNA_ERR_MALFORMED;
    tot = (size_t)p[2] << 8 | p[3];
    if (tot < ihl || tot > n)
      return ZTNA_ERR_MALFORMED;
    frag = (uint16_t)((p[6] & 0x1f) << 8 | p[7]);
    out->version = 4;
    out->hdrlen = ihl;
    out->totlen = tot;
    out->proto = p[9];
    out->first_fragment = frag == 0;
    out->src = p + 12;
    out->dst = p + 16;
    out->addrlen = 4;
    return 0;
  }
  if ((p[0] >> 4) == 6) {
    size_t plen;
    if (n < 40)
      return ZTNA_ERR_MALFORMED;
    plen = (size_t)p[4] << 8 | p[5];
    if (40 + plen > n)
      return ZTNA_ERR_MALFORMED;
    out->version = 6;
    out->hdrlen = 40;
    out->totlen = 40 + plen;
    out->proto = p[6];
    out->first_fragment = 1;
    out->src = p + 8;
    out->dst = p + 24;
    out->addrlen = 16;
    return 0;
  }
  return ZTNA_ERR_MALFORMED;
}

uint32_t ippkt_sum(const uint8_t *d, size_t n, uint32_t sum)
{
  size_t i;
  for (i = 0; i + 1 < n; i += 2)
    sum += (uint32_t)d[i] << 8 | d[i + 1];
  if (i < n)
    sum += (uint32_t)d[i] << 8;
  return sum;
}

uint16_t ippkt_fold(uint32_t sum)
{
  while (sum >> 16)
    sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over each changed 16-bit word.
 * udp: 0 not UDP, 4 UDP over IPv4 (0 means "no checksum"), 6 UDP over IPv6
 * (the checksum is mandatory). A computed UDP checksum of 0 is sent as
 * 0xffff (RFC 768). */
static void csum_replace(uint8_t *field, const uint8_t *old, const uint8_t *new,
                         size_t len, int udp)
{
  uint32_t sum = (uint16_t)~((uint32_t)field[0] << 8 | field[1]);
  uint16_t res;

  if (udp == 4 && field[0] == 0 && field[1] == 0)
    return; /* UDP over IPv4 without a checksum stays without one */
  for (size_t i = 0; i < len; i += 2) {
    sum += (uint16_t)~((uint32_t)old[i] << 8 | old[i + 1]);
    sum += (uint32_t)new[i] << 8 | new[i + 1];
  }
  res = (uint16_t)~ippkt_fold(sum);
  if (udp && res == 0)
    res = 0xffff;
  field[0] = (uint8_t)(res >> 8);
  field[1] = (uint8_t)res;
}

int ippkt_rewrite_addr(uint8_t *p, size_t n, int which, const uint8_t *addr)
{
  struct ippkt ip;
  uint8_t old[16], *a, *l4;
  size_t l4len;

  if (ippkt_parse(p, n, &ip) < 0)
    return ZTNA_ERR_MALFORMED;
  a = (uint8_t *)(uintptr_t)(which ? ip.dst : ip.src);
  memcpy(old, a, ip.addrlen);
  memcpy(a, addr, ip.addrlen);
  if (ip.version == 4)
    csum_replace(p + 10, old, addr, 4, 0);
  if (!ip.first_fragment)
    return 0;
  l4 = p + ip.hdrlen;
  l4len = ip.totlen - ip.hdrlen;
  if (ip.proto == PROTO_TCP && l4len >= 18)
    csum_replace(l4 + 16, old, addr, ip.addrlen, 0);
  else if (ip.proto == PROTO_UDP && l4len >= 8)
    csum_replace(l4 + 6, old, addr, ip.addrlen, ip.version);
  else if (ip.proto == PROTO_ICMPV6 && ip.version == 6 && l4len >= 4)
    csum_replace(l4 + 2, old, addr, 16, 0);
  return 0;
}
