/* vnet.c - one TUN read with a virtio-net header into the packets it
 * stands for (vnet.h). */
#include <string.h>

#include "err.h"
#include "ippkt.h"
#include "vnet.h"

static uint16_t get16(const uint8_t *p)
{
  return (uint16_t)(p[0] << 8 | p[1]);
}

static void put16(uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
  put16(p, (uint16_t)(v >> 16));
  put16(p + 2, (uint16_t)v);
}

/* The header's 16-bit fields are in the host's order (a TUN device's
 * default). */
static uint16_t host16(const uint8_t *p)
{
  uint16_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

/* Finishes a checksum the kernel left partial: the field at off holds the
 * pseudo-header's sum, and everything from start on is summed into it. */
static int finish_csum(uint8_t *pkt, size_t n, size_t start, size_t off)
{
  uint16_t c;

  if (start > n || off > n - start || n - start - off < 2)
    return ZTNA_ERR_MALFORMED;
  c = (uint16_t)~ippkt_fold(ippkt_sum(pkt + start, n - start, 0));
  if (c == 0 && off == 6) /* UDP: a computed 0 goes as 0xffff */
    c = 0xffff;
  put16(pkt + start + off, c);
  return 0;
}

/* One segment: headers (hlen, IP header iplen) already in out, payload
 * len behind them, number i of a segment whose first payload byte is at
 * offset off. */
static void fix_segment(uint8_t *out, size_t iplen, size_t hlen, size_t len,
                        size_t i, size_t off, int last, uint32_t seq0,
                        uint16_t id0)
{
  uint8_t *tcp = out + iplen;
  size_t tot = hlen + len;

  if ((out[0] >> 4) == 4) {
    put16(out + 2, (uint16_t)tot);
    put16(out + 4, (uint16_t)(id0 + i));
  } else {
    put16(out + 4, (uint16_t)(tot - iplen));
  }
  put32(tcp + 4, seq0 + (uint32_t)off);
  if (!last)
    tcp[13] &= (uint8_t)~0x09; /* FIN and PSH only on the last */
  if (i)
    tcp[13] &= (uint8_t)~0x80; /* CWR only on the first */
  ippkt_set_checksums(out, tot, 0); /* a whole TCP packet: cannot fail */
}

int vnet_split(uint8_t *rd, size_t n, uint8_t *out, size_t cap,
               vnet_pkt_fn fn, void *ud)
{
  uint8_t *pkt = rd + VNET_HDR_LEN;
  size_t plen, iplen, hlen, mss, payload, count, off, i;
  uint8_t flags, gso;

  if (n <= VNET_HDR_LEN)
    return ZTNA_ERR_MALFORMED;
  plen = n - VNET_HDR_LEN;
  flags = rd[0];
  gso = rd[1] & (uint8_t)~VNET_GSO_ECN;
  if (gso == VNET_GSO_NONE) {
    if ((flags & VNET_F_NEEDS_CSUM) &&
        finish_csum(pkt, plen, host16(rd + 6), host16(rd + 8)) < 0)
      return ZTNA_ERR_MALFORMED;
    fn(ud, pkt, plen);
    return 1;
  }
  if (gso != VNET_GSO_TCPV4 && gso != VNET_GSO_TCPV6)
    return ZTNA_ERR_MALFORMED;

  /* TCP segmentation: the headers are the packet's own (an IPv6 packet
   * with extension headers is not split, and refused). */
  if (gso == VNET_GSO_TCPV4) {
    if (plen < 20 || (pkt[0] >> 4) != 4 || pkt[9] != 6)
      return ZTNA_ERR_MALFORMED;
    iplen = (size_t)(pkt[0] & 15) * 4;
    if (iplen < 20 || (get16(pkt + 6) & 0x3fff)) /* no fragments */
      return ZTNA_ERR_MALFORMED;
  } else {
    if (plen < 40 || (pkt[0] >> 4) != 6 || pkt[6] != 6)
      return ZTNA_ERR_MALFORMED;
    iplen = 40;
  }
  if (plen < iplen + 20)
    return ZTNA_ERR_MALFORMED;
  hlen = iplen + (size_t)(pkt[iplen + 12] >> 4) * 4;
  mss = host16(rd + 4);
  if (hlen < iplen + 20 || hlen > plen || mss == 0 || hlen + mss > cap ||
      hlen + mss > 65535)
    return ZTNA_ERR_MALFORMED;
  payload = plen - hlen;
  count = payload ? (payload + mss - 1) / mss : 1;
  for (i = 0, off = 0; i < count; i++, off += mss) {
    size_t len = payload - off < mss ? payload - off : mss;
    memcpy(out, pkt, hlen);
    memcpy(out + hlen, pkt + hlen + off, len);
    fix_segment(out, iplen, hlen, len, i, off, i + 1 == count,
                get32(pkt + iplen + 4), get16(pkt + 4));
    fn(ud, out, hlen + len);
  }
  return (int)count;
}

/* --- joining segments bound for the TUN --------------------------------- */

/* The TCP flags a segment may carry to be joined: ACK, and PSH (which
 * ends the run, as in the kernel's GRO). */
#define TCP_ACK 0x10
#define TCP_PSH 0x08

/* Header lengths of a TCP packet that may be joined: IPv4 without options
 * or fragments, IPv6 without extension headers; data, no flags but ACK
 * and PSH. Returns 0, or -1 for a packet that is written as it is. */
static int joinable(const uint8_t *p, size_t n, size_t *iplen, size_t *hlen)
{
  size_t tot;

  if (n < 40)
    return -1;
  if ((p[0] >> 4) == 4) {
    if (p[0] != 0x45 || p[9] != 6 || (get16(p + 6) & 0x3fff) ||
        get16(p + 2) != n)
      return -1;
    *iplen = 20;
  } else if ((p[0] >> 4) == 6) {
    if (n < 60 || p[6] != 6 || get16(p + 4) != n - 40)
      return -1;
    *iplen = 40;
  } else {
    return -1;
  }
  tot = *iplen + (size_t)(p[*iplen + 12] >> 4) * 4;
  if (tot < *iplen + 20 || tot >= n ||
      (p[*iplen + 13] & (uint8_t)~TCP_PSH) != TCP_ACK)
    return -1;
  *hlen = tot;
  return 0;
}

/* Does p (headers iplen/hlen) continue the run held? Everything but the
 * lengths, IP ID, checksums and sequence number must be equal: addresses,
 * ports, ACK number, window, flags, options, TOS/traffic class, TTL. */
static int continues(const struct vnet_gro *g, const uint8_t *p, size_t n,
                     size_t iplen, size_t hlen)
{
  const uint8_t *h = g->buf + VNET_HDR_LEN;
  size_t pay = n - hlen;

  if (iplen != g->iplen || hlen != g->hlen || pay > g->mss ||
      g->len + pay > VNET_GRO_MAX || get32(p + iplen + 4) != g->next_seq)
    return 0;
  if (iplen == 20) {
    if (get16(p + 4) != g->next_id || p[1] != h[1] ||
        memcmp(p + 6, h + 6, 4) || memcmp(p + 12, h + 12, 8))
      return 0;
  } else if (memcmp(p, h, 4) || memcmp(p + 6, h + 6, 34)) {
    return 0;
  }
  /* TCP: ports, ACK number, offset, flags (PSH aside), window, urgent
   * pointer and options as the first segment's. */
  return !memcmp(p + iplen, h + iplen, 4) &&
         !memcmp(p + iplen + 8, h + iplen + 8, 5) &&
         (p[iplen + 13] & (uint8_t)~TCP_PSH) ==
             (h[iplen + 13] & (uint8_t)~TCP_PSH) &&
         !memcmp(p + iplen + 14, h + iplen + 14, 2) &&
         !memcmp(p + iplen + 18, h + iplen + 18, hlen - iplen - 18);
}

/* A packet as it is: a header that asks for nothing. */
static void write_plain(const uint8_t *pkt, size_t n, vnet_write_fn fn,
                        void *ud)
{
  static const uint8_t none[VNET_HDR_LEN];
  fn(ud, none, pkt, n);
}

void vnet_gro_flush(struct vnet_gro *g, vnet_write_fn fn, void *ud)
{
  uint8_t *p = g->buf + VNET_HDR_LEN;
  uint16_t v;

  if (!g->len)
    return;
  if (g->count == 1) {
    write_plain(p, g->len, fn, ud);
    g->len = 0;
    return;
  }
  /* One segment of the joined length whose TCP checksum the kernel is to
   * finish (it holds the pseudo header's sum), to be taken as g->count
   * segments of g->mss bytes. */
  if (g->iplen == 20)
    put16(p + 2, (uint16_t)g->len);
  else
    put16(p + 4, (uint16_t)(g->len - 40));
  ippkt_set_checksums(p, g->len, 1);
  g->buf[0] = VNET_F_NEEDS_CSUM;
  g->buf[1] = g->iplen == 20 ? VNET_GSO_TCPV4 : VNET_GSO_TCPV6;
  v = (uint16_t)g->hlen;
  memcpy(g->buf + 2, &v, 2);
  v = (uint16_t)g->mss;
  memcpy(g->buf + 4, &v, 2);
  v = (uint16_t)g->iplen;
  memcpy(g->buf + 6, &v, 2);
  v = 16;
  memcpy(g->buf + 8, &v, 2);
  fn(ud, g->buf, p, g->len);
  g->len = 0;
}

int vnet_gro_add(struct vnet_gro *g, const uint8_t *pkt, size_t n,
                 vnet_write_fn fn, void *ud)
{
  size_t iplen, hlen, pay;
  uint8_t *h = g->buf + VNET_HDR_LEN;

  if (n > VNET_GRO_MAX)
    return ZTNA_ERR_TOO_LARGE; /* no IP packet is */
  /* A joined segment's checksum is the kernel's to trust (it is left
   * partial), so a packet joins only if its own checksum holds; one that
   * does not goes as it came, for the kernel to refuse. */
  if (joinable(pkt, n, &iplen, &hlen) < 0 || ippkt_verify(pkt, n) != 0) {
    /* Written after what is held: order is kept. */
    vnet_gro_flush(g, fn, ud);
    write_plain(pkt, n, fn, ud);
    return 0;
  }
  pay = n - hlen;
  if (g->len && continues(g, pkt, n, iplen, hlen)) {
    memcpy(h + g->len, pkt + hlen, pay);
    g->len += pay;
    g->count++;
    if (pkt[iplen + 13] & TCP_PSH)
      h[iplen + 13] |= TCP_PSH;
  } else {
    vnet_gro_flush(g, fn, ud);
    memcpy(h, pkt, n);
    g->len = n;
    g->iplen = iplen;
    g->hlen = hlen;
    g->mss = pay;
    g->count = 1;
  }
  g->next_seq = get32(pkt + iplen + 4) + (uint32_t)pay;
  g->next_id = (uint16_t)(get16(pkt + 4) + 1);
  /* A shorter segment or PSH ends a run (nothing may follow them in one
   * segment the kernel cuts evenly); so does room for less than another. */
  if (pay < g->mss || (pkt[iplen + 13] & TCP_PSH) ||
      g->len + g->mss > VNET_GRO_MAX)
    vnet_gro_flush(g, fn, ud);
  return 0;
}
