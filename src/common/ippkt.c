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

/* 32-bit words into a 64-bit sum: the same one's complement sum as 16-bit
 * words (carries wrap around either way), a quarter of the steps. The
 * result is folded to 16 bits, so callers may add to it freely. */
uint32_t ippkt_sum(const uint8_t *d, size_t n, uint32_t sum)
{
  uint64_t acc = sum;
  size_t i = 0;

  for (; i + 4 <= n; i += 4)
    acc += (uint32_t)d[i] << 24 | (uint32_t)d[i + 1] << 16 |
           (uint32_t)d[i + 2] << 8 | d[i + 3];
  for (; i + 1 < n; i += 2)
    acc += (uint32_t)d[i] << 8 | d[i + 1];
  if (i < n)
    acc += (uint32_t)d[i] << 8;
  while (acc >> 16)
    acc = (acc & 0xffff) + (acc >> 16);
  return (uint32_t)acc;
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

#define PROTO_ICMP 1

void ippkt_l4(const uint8_t *p, const struct ippkt *ip, const uint8_t **l4,
              size_t *l4len)
{
  *l4 = p + ip->hdrlen;
  *l4len = ip->first_fragment ? ip->totlen - ip->hdrlen : 0;
}

/* Sum of the pseudo-header (RFC 768/793, RFC 8200 8.1). */
static uint32_t pseudo_sum(const struct ippkt *ip, size_t l4len)
{
  uint32_t sum = ippkt_sum(ip->src, ip->addrlen, 0);
  sum = ippkt_sum(ip->dst, ip->addrlen, sum);
  return sum + ip->proto + (uint32_t)l4len;
}

int ippkt_verify(const uint8_t *p, size_t n)
{
  struct ippkt ip;
  const uint8_t *l4;
  size_t l4len;
  uint32_t sum;

  if (ippkt_parse(p, n, &ip) < 0)
    return ZTNA_ERR_MALFORMED;
  if (ip.version == 4 && ippkt_fold(ippkt_sum(p, ip.hdrlen, 0)) != 0xffff)
    return ZTNA_ERR_MALFORMED;
  ippkt_l4(p, &ip, &l4, &l4len);
  if (!ip.first_fragment)
    return 0;
  switch (ip.proto) {
  case PROTO_TCP:
    if (l4len < 20)
      return ZTNA_ERR_MALFORMED;
    sum = pseudo_sum(&ip, l4len);
    break;
  case PROTO_UDP:
    if (l4len < 8 || ((size_t)l4[4] << 8 | l4[5]) != l4len)
      return ZTNA_ERR_MALFORMED;
    if (ip.version == 4 && l4[6] == 0 && l4[7] == 0)
      return 0;
    sum = pseudo_sum(&ip, l4len);
    break;
  case PROTO_ICMP:
    if (ip.version != 4 || l4len < 8)
      return ip.version == 4 ? ZTNA_ERR_MALFORMED : 0;
    sum = 0;
    break;
  case PROTO_ICMPV6:
    if (ip.version != 6 || l4len < 8)
      return ip.version == 6 ? ZTNA_ERR_MALFORMED : 0;
    sum = pseudo_sum(&ip, l4len);
    break;
  default:
    return 0;
  }
  return ippkt_fold(ippkt_sum(l4, l4len, sum)) == 0xffff ? 0
                                                         : ZTNA_ERR_MALFORMED;
}

static void put16(uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

/* Writes an IP header for version/proto/addresses and l4len bytes after
 * it; returns the header length. */
static size_t ip_header(uint8_t *out, int version, uint8_t proto,
                        const uint8_t *src, const uint8_t *dst, size_t l4len)
{
  if (version == 4) {
    memset(out, 0, 20);
    out[0] = 0x45;
    put16(out + 2, (uint16_t)(20 + l4len));
    out[6] = 0x40; /* DF */
    out[8] = 64;
    out[9] = proto;
    memcpy(out + 12, src, 4);
    memcpy(out + 16, dst, 4);
    put16(out + 10, (uint16_t)~ippkt_fold(ippkt_sum(out, 20, 0)));
    return 20;
  }
  memset(out, 0, 40);
  out[0] = 0x60;
  put16(out + 4, (uint16_t)l4len);
  out[6] = proto;
  out[7] = 64;
  memcpy(out + 8, src, 16);
  memcpy(out + 24, dst, 16);
  return 40;
}

/* Fills the checksum at offset off of the transport header of a packet
 * built by ip_header. */
static void l4_checksum(uint8_t *p, size_t n, size_t off, int pseudo)
{
  struct ippkt ip;
  uint32_t sum = 0;
  uint16_t c;

  ippkt_parse(p, n, &ip);
  p[ip.hdrlen + off] = p[ip.hdrlen + off + 1] = 0;
  if (pseudo)
    sum = pseudo_sum(&ip, ip.totlen - ip.hdrlen);
  c = (uint16_t)~ippkt_fold(ippkt_sum(p + ip.hdrlen, ip.totlen - ip.hdrlen,
                                      sum));
  if (c == 0 && ip.proto == PROTO_UDP)
    c = 0xffff;
  put16(p + ip.hdrlen + off, c);
}

int ippkt_set_checksums(uint8_t *p, size_t n, int partial)
{
  struct ippkt ip;
  size_t off, l4len;

  if (ippkt_parse(p, n, &ip) < 0)
    return ZTNA_ERR_MALFORMED;
  if (ip.version == 4) {
    p[10] = p[11] = 0;
    put16(p + 10, (uint16_t)~ippkt_fold(ippkt_sum(p, ip.hdrlen, 0)));
  }
  if (!ip.first_fragment)
    return 0;
  l4len = ip.totlen - ip.hdrlen;
  switch (ip.proto) {
  case PROTO_TCP: off = 16; break;
  case PROTO_UDP: off = 6; break;
  case PROTO_ICMP: off = ip.version == 4 ? 2 : 0; break;
  case PROTO_ICMPV6: off = ip.version == 6 ? 2 : 0; break;
  default: off = 0; break;
  }
  if (!off)
    return 0;
  if (l4len < off + 2)
    return ZTNA_ERR_MALFORMED;
  if (partial && (ip.proto == PROTO_TCP || ip.proto == PROTO_UDP)) {
    put16(p + ip.hdrlen + off, ippkt_fold(pseudo_sum(&ip, l4len)));
    return 0;
  }
  l4_checksum(p, ip.totlen, off, ip.proto != PROTO_ICMP);
  return 0;
}

int ippkt_build_udp(uint8_t *out, size_t cap, int version, const uint8_t *src,
                    uint16_t sport, const uint8_t *dst, uint16_t dport,
                    const uint8_t *payload, size_t plen)
{
  size_t hl = version == 4 ? 20 : 40, n = hl + 8 + plen;
  uint8_t *u;

  if (n > cap || n > 65535)
    return ZTNA_ERR_TOO_LARGE;
  ip_header(out, version, PROTO_UDP, src, dst, 8 + plen);
  u = out + hl;
  put16(u, sport);
  put16(u + 2, dport);
  put16(u + 4, (uint16_t)(8 + plen));
  memcpy(u + 8, payload, plen);
  l4_checksum(out, n, 6, 1);
  return (int)n;
}

int ippkt_build_echo(uint8_t *out, size_t cap, int version,
                     const uint8_t *src, const uint8_t *dst, uint16_t id,
                     uint16_t seq, const uint8_t *payload, size_t plen)
{
  size_t hl = version == 4 ? 20 : 40, len = hl + 8 + plen;
  uint8_t *e;

  if (len > cap || len > 65535)
    return ZTNA_ERR_TOO_LARGE;
  ip_header(out, version, version == 4 ? PROTO_ICMP : PROTO_ICMPV6, src, dst,
            8 + plen);
  e = out + hl;
  memset(e, 0, 8);
  e[0] = version == 4 ? 8 : 128;
  put16(e + 4, id);
  put16(e + 6, seq);
  memcpy(e + 8, payload, plen);
  l4_checksum(out, len, 2, version == 6);
  return (int)len;
}

int ippkt_echo_payload(const uint8_t *p, size_t n, const uint8_t **payload,
                       size_t *plen)
{
  struct ippkt ip;
  const uint8_t *l4;
  size_t l4len;

  if (ippkt_parse(p, n, &ip) < 0 || !ip.first_fragment)
    return -1;
  ippkt_l4(p, &ip, &l4, &l4len);
  if (l4len < 8)
    return -1;
  *payload = l4 + 8;
  *plen = l4len - 8;
  if (ip.version == 4 && ip.proto == PROTO_ICMP && (l4[0] == 8 || l4[0] == 0))
    return l4[0] == 8 ? 0 : 1;
  if (ip.version == 6 && ip.proto == PROTO_ICMPV6 &&
      (l4[0] == 128 || l4[0] == 129))
    return l4[0] == 128 ? 0 : 1;
  return -1;
}

int ippkt_echo_reply(uint8_t *p, size_t n)
{
  struct ippkt ip;
  uint8_t tmp[16], *l4;

  if (ippkt_parse(p, n, &ip) < 0 || !ip.first_fragment ||
      ip.totlen - ip.hdrlen < 8)
    return ZTNA_ERR_MALFORMED;
  l4 = p + ip.hdrlen;
  if (ip.version == 4 ? (ip.proto != PROTO_ICMP || l4[0] != 8)
                      : (ip.proto != PROTO_ICMPV6 || l4[0] != 128))
    return ZTNA_ERR_MALFORMED;
  memcpy(tmp, ip.src, ip.addrlen);
  memcpy((uint8_t *)(uintptr_t)ip.src, ip.dst, ip.addrlen);
  memcpy((uint8_t *)(uintptr_t)ip.dst, tmp, ip.addrlen);
  if (ip.version == 4) {
    p[8] = 64;
    l4[0] = 0;
  } else {
    p[7] = 64;
    l4[0] = 129;
  }
  return ippkt_set_checksums(p, ip.totlen, 0);
}

int ippkt_build_too_big(uint8_t *out, size_t cap, const uint8_t *orig,
                        size_t n, uint16_t mtu, const uint8_t *from)
{
  struct ippkt ip;
  size_t hl, quote, len;
  uint8_t *icmp;

  if (ippkt_parse(orig, n, &ip) < 0)
    return ZTNA_ERR_MALFORMED;
  hl = ip.version == 4 ? 20 : 40;
  /* IPv4: the header and 8 bytes suffice (RFC 792), more helps; IPv6: as
   * much as fits in the minimum MTU (RFC 4443). */
  quote = ip.version == 4 ? ip.hdrlen + 8 : 1280 - 48;
  if (quote > ip.totlen)
    quote = ip.totlen;
  len = hl + 8 + quote;
  if (len > cap)
    return ZTNA_ERR_TOO_LARGE;
  ip_header(out, ip.version, ip.version == 4 ? PROTO_ICMP : PROTO_ICMPV6,
            from, ip.src, 8 + quote);
  icmp = out + hl;
  memset(icmp, 0, 8);
  if (ip.version == 4) {
    icmp[0] = 3; /* destination unreachable */
    icmp[1] = 4; /* fragmentation needed and DF set */
    put16(icmp + 6, mtu);
  } else {
    icmp[0] = 2; /* packet too big */
    icmp[4] = 0;
    icmp[5] = 0;
    put16(icmp + 6, mtu);
  }
  memcpy(icmp + 8, orig, quote);
  l4_checksum(out, len, 2, ip.version == 6);
  return (int)len;
}

int ippkt_build_rst(uint8_t *out, size_t cap, const uint8_t *seg, size_t n)
{
  struct ippkt ip;
  const uint8_t *t;
  size_t hl, len, doff;
  uint32_t seq;
  uint8_t *r;

  if (ippkt_parse(seg, n, &ip) < 0 || ip.proto != PROTO_TCP ||
      !ip.first_fragment || ip.totlen - ip.hdrlen < 20)
    return ZTNA_ERR_MALFORMED;
  t = seg + ip.hdrlen;
  doff = (size_t)(t[12] >> 4) * 4;
  if (doff < 20 || doff > ip.totlen - ip.hdrlen)
    return ZTNA_ERR_MALFORMED;
  if (t[13] & 0x04)
    return 0; /* a RST is never answered */
  hl = ip.version == 4 ? 20 : 40;
  len = hl + 20;
  if (len > cap)
    return ZTNA_ERR_TOO_LARGE;
  ip_header(out, ip.version, PROTO_TCP, ip.dst, ip.src, 20);
  r = out + hl;
  memset(r, 0, 20);
  memcpy(r, t + 2, 2); /* ports swapped */
  memcpy(r + 2, t, 2);
  if (t[13] & 0x10) {
    memcpy(r + 4, t + 8, 4); /* SEQ = SEG.ACK */
    r[13] = 0x04;            /* RST */
  } else {
    /* ACK = SEG.SEQ + SEG.LEN, where SYN and FIN count as one each */
    seq = (uint32_t)t[4] << 24 | (uint32_t)t[5] << 16 |
          (uint32_t)t[6] << 8 | t[7];
    seq += (uint32_t)(ip.totlen - ip.hdrlen - doff);
    seq += (t[13] & 0x02) ? 1 : 0;
    seq += (t[13] & 0x01) ? 1 : 0;
    r[8] = (uint8_t)(seq >> 24);
    r[9] = (uint8_t)(seq >> 16);
    r[10] = (uint8_t)(seq >> 8);
    r[11] = (uint8_t)seq;
    r[13] = 0x14; /* RST, ACK */
  }
  r[12] = 0x50;
  l4_checksum(out, len, 16, 1);
  return (int)len;
}
