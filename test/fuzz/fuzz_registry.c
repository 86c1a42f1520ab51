/* fuzz_registry.c - the cluster registry's values as Redis hands them
 * back (registry.h): anyone who can write to Redis writes these. Every
 * value decoded is encoded again and must decode to the same entry. */
#include <assert.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  struct reg_node_entry ne, ne2;
  struct reg_svc_entry se, se2;
  char buf[REG_VALUE_MAX + 1];
  int k;

  if (registry_node_decode((const char *)d, n, &ne) == 0) {
    k = registry_node_encode(buf, sizeof(buf), (struct sockaddr *)&ne.addr,
                             ne.heartbeat_ms);
    assert(k > 0);
    assert(registry_node_decode(buf, (size_t)k, &ne2) == 0);
    assert(ne2.heartbeat_ms == ne.heartbeat_ms);
    assert(!memcmp(&ne2.addr, &ne.addr, sizeof(ne.addr)));
  }
  if (registry_svc_decode((const char *)d, n, &se) == 0) {
    k = registry_svc_encode(buf, sizeof(buf), se.node, se.since_ms,
                            se.heartbeat_ms);
    assert(k > 0 && (size_t)k == n && !memcmp(buf, d, n));
    assert(registry_svc_decode(buf, (size_t)k, &se2) == 0);
    assert(!strcmp(se2.node, se.node));
  }
  /* A sentinel's answer: the first byte splits the two strings. */
  if (n > 0 && (size_t)d[0] < n) {
    struct sockaddr_storage ss;
    size_t iplen = d[0];
    const char *ip = (const char *)d + 1;
    if (registry_primary_parse(ip, iplen, ip + iplen, n - 1 - iplen,
                               &ss) == 0)
      assert(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
    else
      assert(ss.ss_family == 0);
  }
  (void)registry_fresh(n, (uint64_t)n * 7, 6000);
  return 0;
}
