/* vnet_test.c - TUN reads with a virtio-net header: TCP segmentation reads
 * over IPv4 and IPv6 come out as the packets a NIC would have sent (sizes,
 * sequence numbers, IP IDs, flags, checksums that verify, the payload
 * whole and in order); partial checksums get finished; reads the kernel
 * would never hand up are refused without a packet. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "ippkt.h"
#include "vnet.h"

#define PAYLOAD 5000
#define MSS 1400

struct got {
  size_t n;
  size_t len[16];
  uint8_t pkt[16][1600];
};

static void take(void *ud, uint8_t *pkt, size_t n)
{
  struct got *g = ud;

  assert_true(g->n < 16 && n <= sizeof(g->pkt[0]));
  memcpy(g->pkt[g->n], pkt, n);
  g->len[g->n++] = n;
}

static void hdr(uint8_t *rd, uint8_t flags, uint8_t gso, uint16_t hlen,
                uint16_t mss, uint16_t cstart, uint16_t coff)
{
  rd[0] = flags;
  rd[1] = gso;
  memcpy(rd + 2, &hlen, 2);
  memcpy(rd + 4, &mss, 2);
  memcpy(rd + 6, &cstart, 2);
  memcpy(rd + 8, &coff, 2);
}

static uint8_t pay(size_t i)
{
  return (uint8_t)(i * 7 + (i >> 8));
}

/* A TCP segment of PAYLOAD bytes as the kernel hands it up with TSO: IP
 * header, TCP header with 12 bytes of options (timestamps), flags
 * CWR|PSH|ACK|FIN, the checksum field holding only the pseudo-header's
 * sum. Returns the read's length. */
static size_t super(uint8_t *rd, int v6)
{
  uint8_t *p = rd + VNET_HDR_LEN;
  size_t iplen = v6 ? 40 : 20, hlen = iplen + 32, tot = hlen + PAYLOAD;
  uint8_t *tcp = p + iplen;

  memset(rd, 0, VNET_HDR_LEN + tot);
  if (v6) {
    p[0] = 0x60;
    p[4] = (uint8_t)((tot - 40) >> 8), p[5] = (uint8_t)(tot - 40);
    p[6] = 6, p[7] = 64;
    p[8] = 0xfd, p[23] = 1;  /* fd00::1 */
    p[24] = 0xfd, p[39] = 2; /* fd00::2 */
  } else {
    p[0] = 0x45;
    p[2] = 0, p[3] = 0; /* the kernel leaves total length to the NIC */
    p[4] = 0x12, p[5] = 0x34;
    p[6] = 0x40; /* DF */
    p[8] = 64, p[9] = 6;
    p[12] = 100, p[13] = 64, p[14] = 0, p[15] = 1;
    p[16] = 192, p[17] = 0, p[18] = 2, p[19] = 10;
  }
  tcp[0] = 0x9c, tcp[1] = 0x40; /* 40000 */
  tcp[2] = 0, tcp[3] = 80;
  tcp[4] = 0xff, tcp[5] = 0xff, tcp[6] = 0xfa, tcp[7] = 0x00; /* wraps */
  tcp[12] = 8 << 4;
  tcp[13] = 0x80 | 0x10 | 0x08 | 0x01;
  tcp[14] = 0x10;
  tcp[20] = 1, tcp[21] = 1, tcp[22] = 8, tcp[23] = 10; /* NOP NOP TS */
  tcp[16] = 0xab, tcp[17] = 0xcd; /* a partial sum: not read */
  for (size_t i = 0; i < PAYLOAD; i++)
    p[hlen + i] = pay(i);
  hdr(rd, VNET_F_NEEDS_CSUM, v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4,
      (uint16_t)hlen, MSS, (uint16_t)iplen, 16);
  return VNET_HDR_LEN + tot;
}

static uint32_t get32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static void check_split(int v6)
{
  static uint8_t rd[VNET_HDR_LEN + 8000], out[1500];
  static struct got g;
  size_t n = super(rd, v6), iplen = v6 ? 40 : 20, hlen = iplen + 32;
  size_t off = 0;

  memset(&g, 0, sizeof(g));
  assert_int_equal(vnet_split(rd, n, out, sizeof(out), take, &g), 4);
  assert_int_equal(g.n, 4);
  for (size_t i = 0; i < g.n; i++) {
    const uint8_t *p = g.pkt[i], *tcp = p + iplen;
    size_t len = i < 3 ? MSS : PAYLOAD - 3 * MSS;

    assert_int_equal(g.len[i], hlen + len);
    assert_int_equal(ippkt_verify(p, g.len[i]), 0); /* IP and TCP sums */
    if (v6) {
      assert_int_equal(p[4] << 8 | p[5], g.len[i] - 40);
    } else {
      assert_int_equal(p[2] << 8 | p[3], g.len[i]);
      assert_int_equal(p[4] << 8 | p[5], 0x1234 + i);
      assert_int_equal(p[6], 0x40);
    }
    assert_int_equal(get32(tcp + 4), (uint32_t)(0xfffffa00u + off));
    /* CWR on the first only; FIN and PSH on the last only; ACK on all. */
    assert_int_equal(tcp[13], (i == 0 ? 0x80 : 0) | 0x10 |
                                (i == 3 ? 0x09 : 0));
    assert_int_equal(tcp[20 + 2], 8); /* options copied */
    for (size_t k = 0; k < len; k++)
      if (p[hlen + k] != pay(off + k))
        fail_msg("segment %zu byte %zu", i, k);
    off += len;
  }
  assert_int_equal(off, PAYLOAD);
}

static void test_vnet_tso(void **state)
{
  (void)state;
  check_split(0);
  check_split(1);
}

/* A plain packet comes out in place; with NEEDS_CSUM its checksum is
 * finished (UDP here, TCP above). */
static void test_vnet_plain_and_csum(void **state)
{
  static uint8_t rd[VNET_HDR_LEN + 200], out[1500];
  static struct got g;
  uint8_t src[4] = { 100, 64, 0, 1 }, dst[4] = { 192, 0, 2, 10 };
  uint8_t data[37];
  uint32_t ps;
  int n;
  (void)state;

  memset(data, 0x5a, sizeof(data));
  n = ippkt_build_udp(rd + VNET_HDR_LEN, 190, 4, src, 5000, dst, 53, data,
                      sizeof(data));
  assert_true(n > 0);
  hdr(rd, 0, VNET_GSO_NONE, 0, 0, 0, 0);
  memset(&g, 0, sizeof(g));
  assert_int_equal(vnet_split(rd, VNET_HDR_LEN + (size_t)n, out, sizeof(out),
                              take, &g), 1);
  assert_int_equal(g.len[0], (size_t)n);
  assert_memory_equal(g.pkt[0], rd + VNET_HDR_LEN, (size_t)n);

  /* The kernel's partial sum: the pseudo header only, not inverted. */
  ps = ippkt_sum(src, 4, 0);
  ps = ippkt_sum(dst, 4, ps) + 17 + (uint32_t)(n - 20);
  rd[VNET_HDR_LEN + 26] = (uint8_t)(ippkt_fold(ps) >> 8);
  rd[VNET_HDR_LEN + 27] = (uint8_t)ippkt_fold(ps);
  assert_int_not_equal(ippkt_verify(rd + VNET_HDR_LEN, (size_t)n), 0);
  hdr(rd, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, 20, 6);
  memset(&g, 0, sizeof(g));
  assert_int_equal(vnet_split(rd, VNET_HDR_LEN + (size_t)n, out, sizeof(out),
                              take, &g), 1);
  assert_int_equal(ippkt_verify(g.pkt[0], g.len[0]), 0);
}

/* What the kernel never hands up: refused, and no packet is made. */
static void test_vnet_refused(void **state)
{
  static uint8_t rd[VNET_HDR_LEN + 8000], out[1500];
  static struct got g;
  size_t n;
  uint16_t v;
  (void)state;

  memset(&g, 0, sizeof(g));
  n = super(rd, 0);
  rd[1] = 5; /* UDP segmentation: not asked for */
  assert_int_equal(vnet_split(rd, n, out, sizeof(out), take, &g),
                   ZTNA_ERR_MALFORMED);
  n = super(rd, 0);
  v = 0;
  memcpy(rd + 4, &v, 2); /* segment size 0 */
  assert_int_equal(vnet_split(rd, n, out, sizeof(out), take, &g),
                   ZTNA_ERR_MALFORMED);
  n = super(rd, 0);
  assert_int_equal(vnet_split(rd, n, out, 1000, take, &g), /* no room */
                   ZTNA_ERR_MALFORMED);
  n = super(rd, 1);
  rd[VNET_HDR_LEN + 6] = 0; /* an IPv6 extension header */
  assert_int_equal(vnet_split(rd, n, out, sizeof(out), take, &g),
                   ZTNA_ERR_MALFORMED);
  n = super(rd, 0);
  rd[VNET_HDR_LEN + 20 + 12] = 0xf0; /* TCP header past the read */
  assert_int_equal(vnet_split(rd, VNET_HDR_LEN + 70, out, sizeof(out), take,
                              &g), ZTNA_ERR_MALFORMED);
  n = super(rd, 0);
  rd[VNET_HDR_LEN + 7] = 1; /* a fragment */
  assert_int_equal(vnet_split(rd, n, out, sizeof(out), take, &g),
                   ZTNA_ERR_MALFORMED);
  hdr(rd, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, 60, 16); /* sum past end */
  assert_int_equal(vnet_split(rd, VNET_HDR_LEN + 70, out, sizeof(out), take,
                              &g), ZTNA_ERR_MALFORMED);
  assert_int_equal(vnet_split(rd, VNET_HDR_LEN, out, sizeof(out), take, &g),
                   ZTNA_ERR_MALFORMED);
  assert_int_equal(g.n, 0);
}

/* --- joining segments bound for the TUN ---------------------------------- */

struct writes {
  size_t n;
  size_t len[64];
  uint8_t *rd[64];
};

/* Keeps each write whole: header and packet. */
static void keep(void *ud, const uint8_t *hdr, const uint8_t *pkt, size_t n)
{
  struct writes *w = ud;

  assert_true(w->n < 64);
  w->rd[w->n] = malloc(VNET_HDR_LEN + n);
  memcpy(w->rd[w->n], hdr, VNET_HDR_LEN);
  memcpy(w->rd[w->n] + VNET_HDR_LEN, pkt, n);
  w->len[w->n++] = VNET_HDR_LEN + n;
}

static void writes_free(struct writes *w)
{
  for (size_t i = 0; i < w->n; i++)
    free(w->rd[i]);
  memset(w, 0, sizeof(*w));
}

/* Segments as the connector sends them: cut from a super packet with ACK
 * (and PSH on the last) only. */
static void segments(struct got *g, int v6)
{
  static uint8_t rd[VNET_HDR_LEN + 8000], out[1500];
  size_t n = super(rd, v6), iplen = v6 ? 40 : 20;

  rd[VNET_HDR_LEN + iplen + 13] = 0x10 | 0x08;
  memset(g, 0, sizeof(*g));
  assert_int_equal(vnet_split(rd, n, out, sizeof(out), take, g), 4);
}

/* The four segments go in, one write comes out that the kernel takes as
 * one segment: cut again, it gives back the very same four packets. */
static void check_join(int v6)
{
  static struct got in, back;
  static struct vnet_gro gro;
  static uint8_t out[1500];
  struct writes w = { 0 };
  size_t iplen = v6 ? 40 : 20;
  uint16_t v;

  segments(&in, v6);
  for (size_t i = 0; i < in.n; i++)
    vnet_gro_add(&gro, in.pkt[i], in.len[i], keep, &w);
  vnet_gro_flush(&gro, keep, &w);
  assert_int_equal(w.n, 1);
  assert_int_equal(w.len[0], VNET_HDR_LEN + iplen + 32 + PAYLOAD);
  assert_int_equal(w.rd[0][0], VNET_F_NEEDS_CSUM);
  assert_int_equal(w.rd[0][1], v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4);
  memcpy(&v, w.rd[0] + 4, 2);
  assert_int_equal(v, MSS);
  memcpy(&v, w.rd[0] + 6, 2);
  assert_int_equal(v, iplen);
  memset(&back, 0, sizeof(back));
  assert_int_equal(vnet_split(w.rd[0], w.len[0], out, sizeof(out), take,
                              &back), 4);
  for (size_t i = 0; i < 4; i++) {
    assert_int_equal(back.len[i], in.len[i]);
    assert_memory_equal(back.pkt[i], in.pkt[i], in.len[i]);
  }
  writes_free(&w);
}

static void test_vnet_join(void **state)
{
  (void)state;
  check_join(0);
  check_join(1);
}

/* What must not be joined goes out as it came, in order: a single
 * segment, a gap in the sequence, another flow in between, a packet that
 * is not TCP data. */
static void test_vnet_join_keeps_order(void **state)
{
  static struct got in;
  static struct vnet_gro gro;
  struct writes w = { 0 };
  uint8_t other[1500];
  (void)state;

  segments(&in, 0);
  /* One segment alone: written without an offload header. */
  vnet_gro_add(&gro, in.pkt[0], in.len[0], keep, &w);
  vnet_gro_flush(&gro, keep, &w);
  assert_int_equal(w.n, 1);
  assert_int_equal(w.rd[0][1], VNET_GSO_NONE);
  assert_memory_equal(w.rd[0] + VNET_HDR_LEN, in.pkt[0], in.len[0]);
  writes_free(&w);

  /* 0, 2 (a gap): two writes. */
  vnet_gro_add(&gro, in.pkt[0], in.len[0], keep, &w);
  vnet_gro_add(&gro, in.pkt[2], in.len[2], keep, &w);
  vnet_gro_flush(&gro, keep, &w);
  assert_int_equal(w.n, 2);
  assert_memory_equal(w.rd[1] + VNET_HDR_LEN, in.pkt[2], in.len[2]);
  writes_free(&w);

  /* 0, another flow's segment, 1: three writes in that order. */
  memcpy(other, in.pkt[1], in.len[1]);
  other[21] ^= 1; /* another source port */
  vnet_gro_add(&gro, in.pkt[0], in.len[0], keep, &w);
  vnet_gro_add(&gro, other, in.len[1], keep, &w);
  vnet_gro_add(&gro, in.pkt[1], in.len[1], keep, &w);
  vnet_gro_flush(&gro, keep, &w);
  assert_int_equal(w.n, 3);
  assert_memory_equal(w.rd[0] + VNET_HDR_LEN, in.pkt[0], in.len[0]);
  assert_memory_equal(w.rd[1] + VNET_HDR_LEN, other, in.len[1]);
  assert_memory_equal(w.rd[2] + VNET_HDR_LEN, in.pkt[1], in.len[1]);
  writes_free(&w);

  /* 0, 1, a UDP packet, 2, 3: the first two joined, then the UDP packet,
   * then the last two joined. */
  memcpy(other, in.pkt[1], 60);
  other[9] = 17;
  other[2] = 0, other[3] = 60;
  vnet_gro_add(&gro, in.pkt[0], in.len[0], keep, &w);
  vnet_gro_add(&gro, in.pkt[1], in.len[1], keep, &w);
  vnet_gro_add(&gro, other, 60, keep, &w);
  vnet_gro_add(&gro, in.pkt[2], in.len[2], keep, &w);
  vnet_gro_add(&gro, in.pkt[3], in.len[3], keep, &w);
  vnet_gro_flush(&gro, keep, &w);
  assert_int_equal(w.n, 3);
  assert_int_equal(w.rd[0][1], VNET_GSO_TCPV4);
  assert_int_equal(w.rd[1][1], VNET_GSO_NONE);
  assert_int_equal(w.len[1], VNET_HDR_LEN + 60);
  assert_int_equal(w.rd[2][1], VNET_GSO_TCPV4);
  writes_free(&w);
}

/* A segment whose checksum does not hold is never joined (a joined
 * segment's checksum is left to the kernel, which would trust it): it is
 * written as it came, for the kernel to drop, between the others. */
static void test_vnet_join_checks_sums(void **state)
{
  static struct got in;
  static struct vnet_gro gro;
  struct writes w = { 0 };
  (void)state;

  segments(&in, 0);
  in.pkt[1][100] ^= 0x40; /* a payload byte flipped */
  for (size_t i = 0; i < in.n; i++)
    vnet_gro_add(&gro, in.pkt[i], in.len[i], keep, &w);
  vnet_gro_flush(&gro, keep, &w);
  assert_int_equal(w.n, 3);
  assert_int_equal(w.rd[0][1], VNET_GSO_NONE);
  assert_int_equal(w.rd[1][1], VNET_GSO_NONE);
  assert_memory_equal(w.rd[1] + VNET_HDR_LEN, in.pkt[1], in.len[1]);
  assert_int_equal(w.rd[2][1], VNET_GSO_TCPV4);
  writes_free(&w);
}

/* A long run stops short of the largest IP packet. */
static void test_vnet_join_bounded(void **state)
{
  static struct got in;
  static struct vnet_gro gro;
  static uint8_t seg[1500], rd_big[VNET_GRO_MAX + 1];
  struct writes w = { 0 };
  size_t total = 0;
  (void)state;

  segments(&in, 0);
  memcpy(seg, in.pkt[0], in.len[0]);
  seg[33] &= (uint8_t)~0x08;
  for (uint32_t i = 0; i < 60; i++) {
    uint32_t seq = 0xfffffa00u + i * MSS;
    seg[24] = (uint8_t)(seq >> 24), seg[25] = (uint8_t)(seq >> 16);
    seg[26] = (uint8_t)(seq >> 8), seg[27] = (uint8_t)seq;
    seg[4] = (uint8_t)((0x1234 + i) >> 8), seg[5] = (uint8_t)(0x1234 + i);
    vnet_gro_add(&gro, seg, in.len[0], keep, &w);
  }
  vnet_gro_flush(&gro, keep, &w);
  assert_true(w.n >= 2);
  for (size_t i = 0; i < w.n; i++) {
    assert_true(w.len[i] - VNET_HDR_LEN <= VNET_GRO_MAX);
    total += (w.len[i] - VNET_HDR_LEN - 52) / MSS;
  }
  assert_int_equal(total, 60);
  writes_free(&w);
  /* Nothing larger than an IP packet is taken. */
  assert_int_equal(vnet_gro_add(&gro, rd_big, sizeof(rd_big), keep, &w),
                   ZTNA_ERR_TOO_LARGE);
  assert_int_equal(w.n, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_vnet_tso),
    cmocka_unit_test(test_vnet_plain_and_csum),
    cmocka_unit_test(test_vnet_refused),
    cmocka_unit_test(test_vnet_join),
    cmocka_unit_test(test_vnet_join_keeps_order),
    cmocka_unit_test(test_vnet_join_checks_sums),
    cmocka_unit_test(test_vnet_join_bounded),
  };
  return cmocka_run_group_tests_name("vnet", tests, NULL, NULL);
}
