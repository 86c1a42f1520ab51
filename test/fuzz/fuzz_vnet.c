/* fuzz_vnet.c - the TUN's offload both ways.
 *
 * Even first byte: any TUN read through vnet_split. It never reads or
 * writes outside the read and its output buffer, and every segment it
 * cuts from a TCP segmentation read is a whole packet whose IP and TCP
 * checksums hold, no longer than the headers and the segment size.
 *
 * Odd first byte: a stream of valid TCP/IP packets (several flows, both
 * families, flags, gaps, lengths and options chosen by the input) through
 * vnet_gro_add. Whatever it joins, the kernel's cutting of its writes
 * (vnet_split stands in for it) must give back exactly the packets that
 * went in, in the same order. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ippkt.h"
#include "vnet.h"

struct seen {
  size_t packets, bytes, max;
  int gso;
};

static void take(void *ud, uint8_t *pkt, size_t n)
{
  struct seen *s = ud;

  s->packets++;
  s->bytes += n;
  if (s->gso && (n > s->max || ippkt_verify(pkt, n) != 0))
    abort();
}

static int split_one(const uint8_t *d, size_t n)
{
  static uint8_t out[65536 + 64];
  uint8_t *rd;
  struct seen s = { 0 };
  size_t cap = 60 + 20 + (size_t)d[0] * 8; /* output room: 80..2120 */
  int rv;

  rd = malloc(n - 1);
  if (!rd)
    return 0;
  memcpy(rd, d + 1, n - 1);
  s.gso = n - 1 > VNET_HDR_LEN && (rd[1] & 0x7f) != 0;
  if (s.gso) {
    uint16_t mss;
    memcpy(&mss, rd + 4, 2);
    s.max = (size_t)mss + 120; /* headers are at most 60 + 60 bytes */
  }
  rv = vnet_split(rd, n - 1, out, cap, take, &s);
  if (rv < 0 ? s.packets != 0 : s.packets != (size_t)rv)
    abort();
  free(rd);
  return 0;
}

/* --- the round trip ------------------------------------------------------ */

#define MAXPKTS 200

static uint8_t *inpk[MAXPKTS];
static size_t inlen[MAXPKTS], nin, nback;

/* A write to the TUN, cut as the kernel would: each packet must be the
 * next one that went in. */
static void back_cb(void *ud, uint8_t *pkt, size_t n)
{
  (void)ud;
  if (nback >= nin || inlen[nback] != n || memcmp(inpk[nback], pkt, n))
    abort();
  nback++;
}

static void write_cb(void *ud, const uint8_t *hdr, const uint8_t *pkt,
                     size_t n)
{
  static uint8_t out[65536 + 64];
  uint8_t *copy = malloc(VNET_HDR_LEN + n);
  (void)ud;

  if (!copy)
    abort();
  memcpy(copy, hdr, VNET_HDR_LEN);
  memcpy(copy + VNET_HDR_LEN, pkt, n);
  if (vnet_split(copy, VNET_HDR_LEN + n, out, sizeof(out), back_cb, NULL) < 0)
    abort();
  free(copy);
}

static void put16(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static size_t build(uint8_t *p, const uint8_t *b, uint32_t *seq,
                    uint16_t *id)
{
  static const uint8_t flagset[4] = { 0x10, 0x18, 0x12, 0x11 };
  int v6 = b[0] & 1, flow = (b[0] >> 1) & 3;
  size_t iplen = v6 ? 40 : 20, opt = (size_t)(b[3] & 3) * 4;
  size_t pay = (size_t)(b[1] << 8 | b[2]) % 1461;
  size_t hlen = iplen + 20 + opt, n = hlen + pay;
  uint8_t *tcp = p + iplen;
  uint32_t sum;

  memset(p, 0, hlen);
  if (v6) {
    p[0] = 0x60;
    p[1] = b[4] & 0x10;
    put16(p + 4, (uint32_t)(n - 40));
    p[6] = 6, p[7] = 64;
    p[8] = 0xfd, p[23] = 1, p[24] = 0xfd, p[39] = 2;
  } else {
    p[0] = 0x45;
    p[1] = b[4] & 0x03; /* ECN bits */
    put16(p + 2, (uint32_t)n);
    if (b[0] & 0x40)
      *id += 7; /* an ID out of step */
    put16(p + 4, *id);
    p[6] = 0x40, p[8] = (uint8_t)(64 - (b[4] >> 7)), p[9] = 6;
    p[12] = 100, p[13] = 64, p[15] = 1;
    p[16] = 192, p[18] = 2, p[19] = 10;
    put16(p + 10, (uint16_t)~ippkt_fold(ippkt_sum(p, 20, 0)));
  }
  if (b[0] & 0x80)
    *seq += 1000; /* a gap */
  put16(tcp, 40000 + (uint32_t)flow);
  put16(tcp + 2, 80);
  put16(tcp + 4, *seq >> 16);
  put16(tcp + 6, *seq);
  put16(tcp + 8, 0x1234);
  tcp[12] = (uint8_t)((20 + opt) / 4 << 4);
  tcp[13] = flagset[(b[0] >> 3) & 3];
  put16(tcp + 14, 1000 + (b[5] & 1));
  memset(tcp + 20, 1, opt); /* NOPs */
  for (size_t i = 0; i < pay; i++)
    p[hlen + i] = (uint8_t)(*seq + i);
  sum = ippkt_sum(v6 ? p + 8 : p + 12, v6 ? 32 : 8, 0) + 6 +
        (uint32_t)(n - iplen);
  put16(tcp + 16, (uint16_t)~ippkt_fold(ippkt_sum(tcp, n - iplen, sum)));
  *seq += (uint32_t)pay + ((tcp[13] & 0x03) ? 1 : 0);
  *id += 1;
  return n;
}

static int round_trip(const uint8_t *d, size_t n)
{
  static struct vnet_gro gro;
  uint32_t seq[8] = { 0xfffff000u, 7, 70000, 9, 1, 2, 3, 4 };
  uint16_t id[8] = { 65530, 1, 2, 3, 4, 5, 6, 7 };

  nin = nback = 0;
  for (size_t i = 1; i + 6 <= n && nin < MAXPKTS; i += 6) {
    int k = (d[i] & 1) * 4 + ((d[i] >> 1) & 3);
    inpk[nin] = malloc(1600);
    if (!inpk[nin])
      abort();
    inlen[nin] = build(inpk[nin], d + i, &seq[k], &id[k]);
    nin++;
    vnet_gro_add(&gro, inpk[nin - 1], inlen[nin - 1], write_cb, NULL);
  }
  vnet_gro_flush(&gro, write_cb, NULL);
  if (nback != nin)
    abort();
  for (size_t i = 0; i < nin; i++)
    free(inpk[i]);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  if (n < 2)
    return 0;
  return (d[0] & 1) ? round_trip(d, n) : split_one(d, n);
}
