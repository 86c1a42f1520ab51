/* fuzz_relay.c - the intermediate's datagram dispatcher and signaling
 * reassembly on hostile input: a script of datagrams, stream bytes, clock
 * ticks and reconnects from four clients (agent, wildcard agent,
 * connector, and a link to another intermediate of a cluster, where the
 * relay forwards sessions for a service with no connector here:
 * "other"). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"
#include "tls.h"
#include "wire.h"

static int send_dgram(void *conn, const struct iovec *iov, int n, void *ud)
{
  size_t len = 0;
  (void)conn;
  (void)ud;
  for (int i = 0; i < n; i++)
    len += iov[i].iov_len;
  return len > 1306 ? -5002 : 0;
}

static int send_signal(void *conn, const uint8_t *d, size_t n, void *ud)
{
  (void)conn;
  (void)d;
  (void)n;
  (void)ud;
  return 0;
}

static struct relay_client *link_client;

static struct relay_client *route(const char *id, size_t len, void *ud)
{
  (void)ud;
  return len == 5 && !memcmp(id, "other", 5) ? link_client : NULL;
}

static struct tls_identity ident(const char *cn, const char *san)
{
  struct tls_identity id;
  memset(&id, 0, sizeof(id));
  strcpy(id.cn, cn);
  strcpy(id.dns[0], san);
  id.ndns = 1;
  return id;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  static const struct relay_io io = { send_dgram, send_signal, NULL, NULL,
                                      NULL, route, NULL };
  struct relay_limits lim = { 4, 4, 16, 8 };
  struct tls_identity ids[4] = { ident("a", "agent.echo.ztna"),
                                 ident("b", "agent.*.ztna"),
                                 ident("c", "connector.echo.ztna"),
                                 ident("i", "ztna-server") };
  struct relay_client *cl[4];
  struct relay *r;
  uint8_t reg[16];
  uint64_t now = 0;
  size_t off = 0;

  if (relay_new(&r, &io, &lim) < 0)
    return 0;
  int k;

  for (int i = 0; i < 3; i++) {
    cl[i] = relay_client_new(r, &cl[i], &ids[i]);
    k = wire_register_encode(reg, sizeof(reg),
                             i == 2 ? WIRE_REG_CONNECTOR : WIRE_REG_AGENT,
                             "echo", 4);
    if (i == 2) { /* a connector that takes relay sessions */
      reg[k++] = WIRE_REG_EXT_MAGIC;
      reg[k++] = WIRE_REG_FLAG_SESSIONS;
    }
    relay_datagram(r, cl[i], reg, (size_t)k);
  }
  k = wire_register_encode(reg, sizeof(reg), WIRE_REG_AGENT, "other", 5);
  relay_datagram(r, cl[1], reg, (size_t)k);
  cl[3] = link_client = relay_client_new(r, &cl[3], &ids[3]);
  relay_client_set_peer(cl[3]);
  while (off + 4 <= n) {
    uint8_t op = d[off] % 4, who = d[off + 1] % 4;
    size_t len = (size_t)d[off + 2] << 8 | d[off + 3];

    off += 4;
    if (len > n - off)
      len = n - off;
    switch (op) {
    case 0:
      relay_datagram(r, cl[who], d + off, len);
      break;
    case 1:
      relay_signal(r, cl[who], d + off, len, now);
      break;
    case 2:
      now += len * 10;
      relay_expire(r, now);
      break;
    case 3:
      relay_client_del(r, cl[who]);
      cl[who] = relay_client_new(r, &cl[who], &ids[who]);
      if (who == 3) {
        link_client = cl[who];
        relay_client_set_peer(cl[who]);
      }
      break;
    }
    off += len;
  }
  relay_del(r);
  return 0;
}
