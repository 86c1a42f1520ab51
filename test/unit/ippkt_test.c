/* ippkt_test.c - parsing and address rewriting keep every checksum right. */
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
#include "testutil.h"

/* Full recomputation, to check the incremental updates against. */
static uint16_t l4_sum(const uint8_t *p, size_t n)
{
  struct ippkt ip;
  uint32_t sum;
  size_t l4len;

  assert_int_equal(ippkt_parse(p, n, &ip), 0);
  l4len = ip.totlen - ip.hdrlen;
  sum = ippkt_sum(ip.src, ip.addrlen, 0);
  sum = ippkt_sum(ip.dst, ip.addrlen, sum);
  sum += ip.proto + (uint32_t)l4len;
  return ippkt_fold(ippkt_sum(p + ip.hdrlen, l4len, sum));
}

static void set_l4_checksum(uint8_t *p, size_t n, size_t off)
{
  uint16_t c;
  p[off] = p[off + 1] = 0;
  c = (uint16_t)~l4_sum(p, n);
  p[off] = (uint8_t)(c >> 8);
  p[off + 1] = (uint8_t)c;
}

static size_t tcp4(uint8_t *p)
{
  size_t n = 20 + 20 + 5;
  uint16_t c;
  memset(p, 0, n);
  p[0] = 0x45, p[3] = (uint8_t)n, p[8] = 64, p[9] = 6;
  inet_pton(AF_INET, "100.64.0.1", p + 12);
  inet_pton(AF_INET, "10.100.0.2", p + 16);
  c = (uint16_t)~ippkt_fold(ippkt_sum(p, 20, 0));
  p[10] = (uint8_t)(c >> 8), p[11] = (uint8_t)c;
  p[20] = 0x9c, p[21] = 0x40, p[22] = 0, p[23] = 80, p[32] = 0x50;
  memcpy(p + 40, "hello", 5);
  set_l4_checksum(p, n, 36);
  return n;
}

static uint32_t get32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* The RST for a segment of no connection: addresses and ports swapped,
 * both checksums right; a segment with ACK gets RST at the sequence
 * number it acknowledged, one without (a SYN) RST|ACK of what it carried
 * (data, SYN and FIN); a RST gets nothing; a bad data offset is refused. */
static void test_ippkt_rst(void **state)
{
  static const struct {
    uint8_t flags;
    uint8_t want_flags;
    uint32_t want_seq, want_ack;
  } cases[] = {
    { 0x18, 0x04, 0x0a0b0c0d, 0 },              /* PSH|ACK with data */
    { 0x10, 0x04, 0x0a0b0c0d, 0 },              /* a bare ACK */
    { 0x11, 0x04, 0x0a0b0c0d, 0 },              /* FIN|ACK */
    { 0x02, 0x14, 0, 0x01020304 + 5 + 1 },      /* SYN with 5 data bytes */
    { 0x03, 0x14, 0, 0x01020304 + 5 + 2 },      /* SYN|FIN */
  };
  uint8_t p[128], r[80];
  size_t n;
  int k;
  (void)state;

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    n = tcp4(p);
    put32(p + 24, 0x01020304);
    put32(p + 28, 0x0a0b0c0d);
    p[33] = cases[i].flags;
    set_l4_checksum(p, n, 36);
    k = ippkt_build_rst(r, sizeof(r), p, n);
    assert_int_equal(k, 40);
    assert_memory_equal(r + 12, p + 16, 4);
    assert_memory_equal(r + 16, p + 12, 4);
    assert_memory_equal(r + 20, p + 22, 2);
    assert_memory_equal(r + 22, p + 20, 2);
    assert_int_equal(r[33], cases[i].want_flags);
    assert_int_equal(get32(r + 24), cases[i].want_seq);
    assert_int_equal(get32(r + 28), cases[i].want_ack);
    assert_int_equal(ippkt_fold(ippkt_sum(r, 20, 0)), 0xffff);
    assert_int_equal(l4_sum(r, (size_t)k), 0xffff);
  }
  n = tcp4(p);
  p[33] = 0x14; /* RST|ACK */
  assert_int_equal(ippkt_build_rst(r, sizeof(r), p, n), 0);
  p[33] = 0x10;
  p[32] = 0x40; /* data offset 16 bytes */
  assert_int_equal(ippkt_build_rst(r, sizeof(r), p, n), ZTNA_ERR_MALFORMED);
  p[32] = 0xf0; /* 60 bytes: past the segment */
  assert_int_equal(ippkt_build_rst(r, sizeof(r), p, n), ZTNA_ERR_MALFORMED);
}

static void test_ippkt_tcp4_rewrite(void **state)
{
  uint8_t p[128], a[4];
  size_t n = tcp4(p);
  (void)state;

  assert_int_equal(l4_sum(p, n), 0xffff);
  for (int i = 0; i < 1000; i++) {
    a[0] = 100, a[1] = (uint8_t)(64 + i % 64), a[2] = (uint8_t)(i * 7);
    a[3] = (uint8_t)(i * 13);
    assert_int_equal(ippkt_rewrite_addr(p, n, i & 1, a), 0);
    assert_int_equal(ippkt_fold(ippkt_sum(p, 20, 0)), 0xffff);
    assert_int_equal(l4_sum(p, n), 0xffff);
    assert_memory_equal(p + ((i & 1) ? 16 : 12), a, 4);
  }
}

static void test_ippkt_udp_v6_and_zero(void **state)
{
  uint8_t p[128], a[16];
  size_t n = 40 + 8 + 4;
  (void)state;

  memset(p, 0, sizeof(p));
  p[0] = 0x60, p[5] = 12, p[6] = 17, p[7] = 64;
  inet_pton(AF_INET6, "2001:db8::1", p + 8);
  inet_pton(AF_INET6, "2001:db8::2", p + 24);
  p[45] = 12;
  memcpy(p + 48, "ping", 4);
  set_l4_checksum(p, n, 46);
  inet_pton(AF_INET6, "fd7a:7a74:6e61::101", a);
  assert_int_equal(ippkt_rewrite_addr(p, n, 0, a), 0);
  assert_int_equal(l4_sum(p, n), 0xffff);
  assert_memory_equal(p + 8, a, 16);

  /* IPv4 UDP without a checksum keeps none. */
  memset(p, 0, sizeof(p));
  p[0] = 0x45, p[3] = 32, p[9] = 17, p[25] = 12;
  {
    uint16_t c = (uint16_t)~ippkt_fold(ippkt_sum(p, 20, 0));
    p[10] = (uint8_t)(c >> 8), p[11] = (uint8_t)c;
  }
  assert_int_equal(ippkt_rewrite_addr(p, 32, 1, a), 0);
  assert_int_equal(p[26] | p[27], 0);
  assert_int_equal(ippkt_fold(ippkt_sum(p, 20, 0)), 0xffff);
}

static void test_ippkt_fragment_keeps_payload(void **state)
{
  uint8_t p[64], a[4] = { 100, 64, 1, 1 };
  (void)state;

  memset(p, 0xab, sizeof(p));
  p[0] = 0x45, p[1] = 0, p[2] = 0, p[3] = 60, p[6] = 0, p[7] = 10, p[9] = 6;
  p[10] = p[11] = 0;
  /* A later fragment has no TCP header: its bytes must stay as they are. */
  assert_int_equal(ippkt_rewrite_addr(p, 60, 0, a), 0);
  for (int i = 20; i < 60; i++)
    assert_int_equal(p[i], 0xab);
}

static void test_ippkt_hostile(void **state)
{
  uint8_t p[64];
  struct ippkt ip;
  (void)state;

  memset(p, 0, sizeof(p));
  assert_int_equal(ippkt_parse(p, 0, &ip), ZTNA_ERR_MALFORMED);
  p[0] = 0x44; /* IHL 4 */
  assert_int_equal(ippkt_parse(p, 64, &ip), ZTNA_ERR_MALFORMED);
  p[0] = 0x4f, p[3] = 64; /* IHL 60 fits, total 64 */
  assert_int_equal(ippkt_parse(p, 64, &ip), 0);
  p[3] = 65; /* total past the buffer */
  assert_int_equal(ippkt_parse(p, 64, &ip), ZTNA_ERR_MALFORMED);
  p[0] = 0x45, p[3] = 10; /* total below the header */
  assert_int_equal(ippkt_parse(p, 64, &ip), ZTNA_ERR_MALFORMED);
  p[0] = 0x60, p[4] = 0, p[5] = 25; /* payload past the buffer */
  assert_int_equal(ippkt_parse(p, 64, &ip), ZTNA_ERR_MALFORMED);
  assert_int_equal(ippkt_parse(p, 39, &ip), ZTNA_ERR_MALFORMED);
  p[0] = 0x50;
  assert_int_equal(ippkt_parse(p, 64, &ip), ZTNA_ERR_MALFORMED);
  /* A TCP packet too short for the checksum field is not touched. */
  memset(p, 0, sizeof(p));
  p[0] = 0x45, p[3] = 30, p[9] = 6;
  assert_int_equal(ippkt_rewrite_addr(p, 30, 0, (uint8_t[]){ 1, 2, 3, 4 }),
                   0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_ippkt_tcp4_rewrite),
    cmocka_unit_test(test_ippkt_rst),
    cmocka_unit_test(test_ippkt_udp_v6_and_zero),
    cmocka_unit_test(test_ippkt_fragment_keeps_payload),
    cmocka_unit_test(test_ippkt_hostile),
  };
  return cmocka_run_group_tests_name("ippkt", tests, NULL, NULL);
}
