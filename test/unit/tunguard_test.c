/* tunguard_test.c - what may enter the agent's TUN: sources per path,
 * the destination, garbage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "ippkt.h"
#include "p2p.h"
#include "tunguard.h"

static struct tunguard g;

static int setup(void **state)
{
  (void)state;
  memset(&g, 0, sizeof(g));
  inet_pton(AF_INET, "100.64.0.1", g.tun4);
  inet_pton(AF_INET6, "fd7a:7a74:6e61:a::1", g.tun6);
  g.has_tun6 = 1;
  g.vips[0].family = 4; /* web: 10.100.0.2 */
  inet_pton(AF_INET, "10.100.0.2", g.vips[0].addr);
  g.vips[0].prefix = 32;
  g.vips[0].svc = 0;
  g.vips[1].family = 4; /* db: 10.100.1.0/24 */
  inet_pton(AF_INET, "10.100.1.0", g.vips[1].addr);
  g.vips[1].prefix = 24;
  g.vips[1].svc = 1;
  g.vips[2].family = 6; /* web6 */
  inet_pton(AF_INET6, "fd10:100::2", g.vips[2].addr);
  g.vips[2].prefix = 128;
  g.vips[2].svc = 0;
  g.nvips = 3;
  return 0;
}

static size_t udp(uint8_t *p, int v, const char *src, const char *dst)
{
  uint8_t s[16], d[16];
  int af = v == 4 ? AF_INET : AF_INET6;
  int n;

  inet_pton(af, src, s);
  inet_pton(af, dst, d);
  n = ippkt_build_udp(p, 256, v, s, 80, d, 40000, (const uint8_t *)"x", 1);
  assert_true(n > 0);
  return (size_t)n;
}

static void test_tunguard_relay_carries_every_service(void **state)
{
  uint8_t p[256];
  size_t n, len = 0;
  (void)state;

  n = udp(p, 4, "10.100.0.2", "100.64.0.1");
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len), TUNGUARD_OK);
  assert_int_equal(len, n);
  n = udp(p, 4, "10.100.1.77", "100.64.0.1"); /* inside the /24 */
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len), TUNGUARD_OK);
  n = udp(p, 6, "fd10:100::2", "fd7a:7a74:6e61:a::1");
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len), TUNGUARD_OK);
  /* Trailing bytes after the packet are not written. */
  p[n] = 0xee;
  assert_int_equal(tunguard_check(&g, p, n + 1, NULL, 0, &len), TUNGUARD_OK);
  assert_int_equal(len, n);
}

static void test_tunguard_foreign_sources_and_destinations(void **state)
{
  uint8_t p[256];
  size_t n, len;
  (void)state;

  n = udp(p, 4, "203.0.113.77", "100.64.0.1"); /* an internet address */
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len),
                   TUNGUARD_FOREIGN_SOURCE);
  n = udp(p, 4, "10.100.2.1", "100.64.0.1"); /* next to a VIP */
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len),
                   TUNGUARD_FOREIGN_SOURCE);
  n = udp(p, 4, "10.100.0.2", "192.0.2.2"); /* the host's LAN address */
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len),
                   TUNGUARD_FOREIGN_DEST);
  n = udp(p, 4, "10.100.0.2", "127.0.0.1");
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len),
                   TUNGUARD_FOREIGN_DEST);
  n = udp(p, 6, "fd10:100::3", "fd7a:7a74:6e61:a::1");
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len),
                   TUNGUARD_FOREIGN_SOURCE);
  n = udp(p, 6, "fd10:100::2", "::1");
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len),
                   TUNGUARD_FOREIGN_DEST);
  /* No IPv6 tunnel address: no IPv6 at all. */
  g.has_tun6 = 0;
  n = udp(p, 6, "fd10:100::2", "fd7a:7a74:6e61:a::1");
  assert_int_equal(tunguard_check(&g, p, n, NULL, 0, &len),
                   TUNGUARD_FOREIGN_DEST);
  g.has_tun6 = 1;
}

static void test_tunguard_direct_path_speaks_for_its_services(void **state)
{
  uint8_t p[256], web_only[2] = { 1, 0 };
  size_t n, len;
  (void)state;

  n = udp(p, 4, "10.100.0.2", "100.64.0.1");
  assert_int_equal(tunguard_check(&g, p, n, web_only, 2, &len), TUNGUARD_OK);
  /* The db service is not on this connection. */
  n = udp(p, 4, "10.100.1.5", "100.64.0.1");
  assert_int_equal(tunguard_check(&g, p, n, web_only, 2, &len),
                   TUNGUARD_FOREIGN_SOURCE);
  /* A service index past the table counts as not carried. */
  assert_int_equal(tunguard_check(&g, p, n, web_only, 1, &len),
                   TUNGUARD_FOREIGN_SOURCE);
}

static void test_tunguard_garbage(void **state)
{
  uint8_t p[256], payload[28], s[4], d[4];
  size_t len;
  int n;
  (void)state;

  /* An echo is an echo (no payload means anything to the agent). */
  memcpy(payload, "ztna-link-v1", 12);
  memset(payload + 12, 7, 16);
  inet_pton(AF_INET, "10.100.0.2", s);
  inet_pton(AF_INET, "100.64.0.1", d);
  n = ippkt_build_echo(p, sizeof(p), 4, s, d, 1, 1, payload, sizeof(payload));
  assert_true(n > 0);
  assert_int_equal(tunguard_check(&g, p, (size_t)n, NULL, 0, &len),
                   TUNGUARD_OK);
  assert_int_equal(tunguard_check(&g, p, 19, NULL, 0, &len),
                   TUNGUARD_MALFORMED);
  assert_int_equal(tunguard_check(&g, p, 0, NULL, 0, &len),
                   TUNGUARD_MALFORMED);
  p[0] = 0x35;
  assert_int_equal(tunguard_check(&g, p, (size_t)n, NULL, 0, &len),
                   TUNGUARD_MALFORMED);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup(test_tunguard_relay_carries_every_service, setup),
    cmocka_unit_test_setup(test_tunguard_foreign_sources_and_destinations,
                           setup),
    cmocka_unit_test_setup(test_tunguard_direct_path_speaks_for_its_services,
                           setup),
    cmocka_unit_test_setup(test_tunguard_garbage, setup),
  };
  return cmocka_run_group_tests_name("tunguard", tests, NULL, NULL);
}
