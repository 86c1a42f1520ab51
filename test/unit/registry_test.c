/* registry_test.c - the cluster registry's keys and values (registry.h):
 * round trips, every malformed form refused, and when an entry is too old
 * (or too new) to believe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "err.h"
#include "registry.h"

static void test_registry_keys(void **state)
{
  char k[REG_KEY_MAX];
  (void)state;

  assert_int_equal(registry_key(k, sizeof(k), "ztna", "svc", "Web", 3), 12);
  assert_string_equal(k, "ztna:svc:web");
  assert_int_equal(registry_key(k, 10, "ztna", "svc", "web", 3),
                   ZTNA_ERR_TOO_LARGE);
  assert_true(registry_name_ok("i-1.eu_west", REG_NODE_MAX));
  assert_false(registry_name_ok("", REG_NODE_MAX));
  assert_false(registry_name_ok("a b", REG_NODE_MAX));
  assert_false(registry_name_ok("a:b", REG_NODE_MAX));
  assert_false(registry_name_ok("abcd", 3));
}

static void test_registry_node_values(void **state)
{
  struct sockaddr_in s4 = { .sin_family = AF_INET,
                            .sin_port = htons(4433) };
  struct sockaddr_in6 s6 = { .sin6_family = AF_INET6,
                             .sin6_port = htons(443) };
  struct reg_node_entry e;
  char v[REG_VALUE_MAX + 1];
  int n;
  static const char *bad[] = {
    "", "1", "1 198.51.100.2:4433", "2 198.51.100.2:4433 5",
    "1 198.51.100.2:4433 5 ", " 1 198.51.100.2:4433 5",
    "1  198.51.100.2:4433 5", "1 198.51.100.2 5", "1 198.51.100.2:0 5",
    "1 198.51.100.2:65536 5", "1 198.51.100.256:4433 5",
    "1 host.example:4433 5", "1 2001:db8::1:4433 5", "1 [2001:db8::1] 5",
    "1 [198.51.100.2]:4433 5", "1 198.51.100.2:4433 05",
    "1 198.51.100.2:4433 -5", "1 198.51.100.2:4433 1234567890123456",
    "1 198.51.100.2:4433 5x", "1 198.51.100.2:04433 5",
    "1 198.51.100.2:4433\t5",
  };
  (void)state;

  inet_pton(AF_INET, "198.51.100.2", &s4.sin_addr);
  n = registry_node_encode(v, sizeof(v), (struct sockaddr *)&s4,
                           1764583000000ull);
  assert_string_equal(v, "1 198.51.100.2:4433 1764583000000");
  assert_int_equal(registry_node_decode(v, (size_t)n, &e), 0);
  assert_int_equal(e.heartbeat_ms, 1764583000000ull);
  assert_int_equal(e.addr.ss_family, AF_INET);
  assert_memory_equal(&((struct sockaddr_in *)&e.addr)->sin_addr,
                      &s4.sin_addr, 4);
  assert_int_equal(((struct sockaddr_in *)&e.addr)->sin_port, htons(4433));
  inet_pton(AF_INET6, "2001:db8::1", &s6.sin6_addr);
  n = registry_node_encode(v, sizeof(v), (struct sockaddr *)&s6, 7);
  assert_string_equal(v, "1 [2001:db8::1]:443 7");
  assert_int_equal(registry_node_decode(v, (size_t)n, &e), 0);
  assert_int_equal(e.addr.ss_family, AF_INET6);
  assert_int_equal(registry_node_encode(v, 10, (struct sockaddr *)&s4, 7),
                   ZTNA_ERR_TOO_LARGE);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (registry_node_decode(bad[i], strlen(bad[i]), &e) !=
        ZTNA_ERR_MALFORMED)
      fail_msg("accepted node value '%s'", bad[i]);
  /* The exact length: a NUL inside is not the end. */
  assert_int_equal(registry_node_decode("1 198.51.100.2:4433 5\0", 22, &e),
                   ZTNA_ERR_MALFORMED);
}

static void test_registry_service_values(void **state)
{
  struct reg_svc_entry e;
  char v[REG_VALUE_MAX + 1], longname[80];
  int n;
  static const char *bad[] = {
    "", "1 i2 5", "1 i2 5 6 7", "0 i2 5 6", "1 i 2 5 6", "1 i:2 5 6",
    "1 i2 5 6 ", "1 i2 x 6", "1 i2 5 06", "1 i2 5  6", "1 \xc3\xa9 5 6",
  };
  (void)state;

  n = registry_svc_encode(v, sizeof(v), "i2", 100, 200);
  assert_string_equal(v, "1 i2 100 200");
  assert_int_equal(registry_svc_decode(v, (size_t)n, &e), 0);
  assert_string_equal(e.node, "i2");
  assert_true(e.since_ms == 100 && e.heartbeat_ms == 200);
  assert_int_equal(registry_svc_encode(v, sizeof(v), "bad name", 1, 2),
                   ZTNA_ERR_MALFORMED);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (registry_svc_decode(bad[i], strlen(bad[i]), &e) != ZTNA_ERR_MALFORMED)
      fail_msg("accepted service value '%s'", bad[i]);
  /* A node name one past the longest. */
  memset(longname, 'n', REG_NODE_MAX + 1);
  longname[REG_NODE_MAX + 1] = '\0';
  n = snprintf(v, sizeof(v), "1 %s 1 2", longname);
  assert_int_equal(registry_svc_decode(v, (size_t)n, &e), ZTNA_ERR_MALFORMED);
  longname[REG_NODE_MAX] = '\0';
  n = snprintf(v, sizeof(v), "1 %s 1 2", longname);
  assert_int_equal(registry_svc_decode(v, (size_t)n, &e), 0);
}

/* Believed for ttl after its heartbeat, and up to ttl before it (a
 * writer's clock ahead of ours); not outside that. */
/* A sentinel's answer: an address and a port, nothing else. */
static void test_registry_primary(void **state)
{
  struct sockaddr_storage ss;
  struct { const char *ip, *port; } bad[] = {
    { "", "6379" }, { "redis.example", "6379" }, { "10.0.0.1", "" },
    { "10.0.0.1", "0" }, { "10.0.0.1", "65536" }, { "10.0.0.1", "+80" },
    { "10.0.0.1", " 80" }, { "10.0.0.1", "-1" }, { "10.0.0.1", "080" },
    { "10.0.0.1", "6379x" }, { "[::1]", "6379" }, { "10.0.0.1:1", "2" },
    { "10.0.0.256", "1" },
  };
  (void)state;

  assert_int_equal(registry_primary_parse("10.0.0.1", 8, "6379", 4, &ss), 0);
  assert_int_equal(ss.ss_family, AF_INET);
  assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 6379);
  assert_int_equal(registry_primary_parse("2001:db8::7", 11, "65535", 5,
                                          &ss), 0);
  assert_int_equal(ss.ss_family, AF_INET6);
  assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 65535);
  /* A NUL inside the address (Redis strings are counted) is refused. */
  assert_int_equal(registry_primary_parse("10.0.0.1\0junk", 13, "1", 1,
                                          &ss), -1);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(registry_primary_parse(bad[i].ip, strlen(bad[i].ip),
                                            bad[i].port,
                                            strlen(bad[i].port), &ss), -1);
    assert_int_equal(ss.ss_family, 0);
  }
}

static void test_registry_expiry(void **state)
{
  (void)state;
  assert_true(registry_fresh(10000, 10000, 6000));
  assert_true(registry_fresh(10000, 16000, 6000));
  assert_false(registry_fresh(10000, 16001, 6000));
  assert_true(registry_fresh(16000, 10000, 6000));
  assert_false(registry_fresh(16001, 10000, 6000));
  assert_false(registry_fresh(0, 1764583000000ull, 6000));
  assert_false(registry_fresh(UINT64_MAX, 1764583000000ull, 6000));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_registry_keys),
    cmocka_unit_test(test_registry_node_values),
    cmocka_unit_test(test_registry_service_values),
    cmocka_unit_test(test_registry_expiry),
    cmocka_unit_test(test_registry_primary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
