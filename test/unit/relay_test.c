/* relay_test.c - the intermediate's core without sockets: registration,
 * policy, routing, translation, signaling sessions on a fake clock, and
 * hostile sequences. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "err.h"
#include "ippkt.h"
#include "relay.h"
#include "testutil.h"
#include "tls.h"
#include "wire.h"

/* A fake connection: records what the relay sends it. */
struct fconn {
  int id;
  int ndgrams, nsig;
  uint8_t last[2048];
  size_t lastlen;
  uint8_t sig[8192];
  size_t siglen;
  int fail_with; /* make send_dgram fail with this code */
};

static int f_send_dgram(void *conn, const struct iovec *iov, int n, void *ud)
{
  struct fconn *f = conn;
  (void)ud;
  if (f->fail_with)
    return f->fail_with;
  f->lastlen = 0;
  for (int i = 0; i < n; i++) {
    memcpy(f->last + f->lastlen, iov[i].iov_base, iov[i].iov_len);
    f->lastlen += iov[i].iov_len;
  }
  f->ndgrams++;
  return 0;
}

static int f_send_signal(void *conn, const uint8_t *d, size_t n, void *ud)
{
  struct fconn *f = conn;
  (void)ud;
  if (f->siglen + n <= sizeof(f->sig)) {
    memcpy(f->sig + f->siglen, d, n);
    f->siglen += n;
  }
  f->nsig++;
  return 0;
}

/* The last refusal the relay reported, "role id: why". */
static char refused_last[512];

static void f_refused(void *conn, const char *role, const uint8_t *id,
                      size_t len, const char *why, void *ud)
{
  (void)conn;
  (void)ud;
  snprintf(refused_last, sizeof(refused_last), "%s %.*s: %s", role, (int)len,
           (const char *)id, why);
}

static const struct relay_io fio = { f_send_dgram, f_send_signal, NULL,
                                     NULL, f_refused, NULL, NULL };

static struct tls_identity ident(const char *cn, const char *san1,
                                 const char *san2)
{
  struct tls_identity id;
  memset(&id, 0, sizeof(id));
  snprintf(id.cn, sizeof(id.cn), "%s", cn);
  if (san1)
    snprintf(id.dns[id.ndns++], sizeof(id.dns[0]), "%s", san1);
  if (san2)
    snprintf(id.dns[id.ndns++], sizeof(id.dns[0]), "%s", san2);
  return id;
}

static void reg(struct relay *r, struct relay_client *c, uint8_t type,
                const char *svc)
{
  uint8_t b[300];
  int n = wire_register_encode(b, sizeof(b), type, svc, strlen(svc));
  relay_datagram(r, c, b, (size_t)n);
}

/* The status byte of the last ACK/NACK f got: 0 ACK, 1/2 NACK, -1 none. */
static int last_status(struct fconn *f)
{
  if (f->lastlen < 3 || (f->last[0] != WIRE_REG_ACK &&
                         f->last[0] != WIRE_REG_NACK))
    return -1;
  return f->last[0] == WIRE_REG_ACK ? 0 : f->last[1];
}

static size_t udp4(uint8_t *p, const char *src, const char *dst,
                   const char *payload)
{
  uint8_t s4[4], d4[4];
  int n;

  inet_pton(AF_INET, src, s4);
  inet_pton(AF_INET, dst, d4);
  n = ippkt_build_udp(p, 256, 4, s4, 5000, d4, 7,
                      (const uint8_t *)payload, strlen(payload));
  assert_true(n > 0);
  return (size_t)n;
}

static void assert_checksums(const uint8_t *p, size_t n)
{
  uint32_t sum;
  assert_int_equal(ippkt_fold(ippkt_sum(p, 20, 0)), 0xffff);
  sum = ippkt_sum(p + 12, 8, 17 + (uint32_t)(n - 20));
  assert_int_equal(ippkt_fold(ippkt_sum(p + 20, n - 20, sum)), 0xffff);
}

static size_t routed(uint8_t *b, const char *svc, const uint8_t *pkt,
                     size_t n)
{
  int h = wire_routed_encode_header(b, 2048, svc, strlen(svc));
  memcpy(b + h, pkt, n);
  return (size_t)h + n;
}

static void count_cb(const char *id, size_t len, int has_connector,
                     size_t agents, void *ud)
{
  (void)id, (void)len, (void)has_connector, (void)agents;
  ++*(int *)ud;
}

static int count_services(struct relay *r)
{
  int n = 0;
  relay_foreach_service(r, count_cb, &n);
  return n;
}

struct world {
  struct relay *r;
  struct fconn fa, fb, fc;
  struct relay_client *a, *b, *c;
};

static void world(struct world *w, const struct relay_limits *lim)
{
  struct tls_identity ia = ident("alice", "agent.echo.ztna", NULL);
  struct tls_identity ib = ident("bob", "agent.*.ztna", NULL);
  struct tls_identity ic = ident("conn", "ztna-connector",
                                 "connector.echo.ztna");

  memset(ib.fp, 0xbb, sizeof(ib.fp));
  memset(w, 0, sizeof(*w));
  w->fa.id = 1, w->fb.id = 2, w->fc.id = 3;
  assert_int_equal(relay_new(&w->r, &fio, lim), 0);
  w->a = relay_client_new(w->r, &w->fa, &ia);
  w->b = relay_client_new(w->r, &w->fb, &ib);
  w->c = relay_client_new(w->r, &w->fc, &ic);
}

static void test_relay_registration_and_policy(void **state)
{
  struct world w;
  struct cfg_policy *p = calloc(1, sizeof(*p));
  const char *pol = "{\"services\": {\"echo\": {\"allow\": [\"bob\"]}}}";
  char err[256];
  (void)state;

  world(&w, NULL);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  assert_int_equal(last_status(&w.fa), 0);
  reg(w.r, w.a, WIRE_REG_AGENT, "ECHO"); /* SANs are case-insensitive */
  assert_int_equal(last_status(&w.fa), 0);
  /* ... and so is the registry: ECHO is the service echo. */
  assert_int_equal(count_services(w.r), 1);
  reg(w.r, w.a, WIRE_REG_CONNECTOR, "echo"); /* not a connector */
  assert_int_equal(last_status(&w.fa), 2);
  assert_string_equal(refused_last, "connector echo: its certificate has no "
                      "SAN granting it (<role>.<service>.ztna)");
  reg(w.r, w.a, WIRE_REG_AGENT, "web");
  assert_int_equal(last_status(&w.fa), 2);
  assert_string_equal(refused_last, "agent web: its certificate has no SAN "
                      "granting it (<role>.<service>.ztna)");
  reg(w.r, w.b, WIRE_REG_AGENT, "anything"); /* wildcard */
  assert_int_equal(last_status(&w.fb), 0);
  assert_int_equal(relay_stats(w.r)->registrations, 3);
  assert_int_equal(relay_stats(w.r)->rejections, 2);

  /* A policy file that allows only bob to reach echo: alice's
   * registration goes, and she cannot register again. */
  assert_int_equal(cfg_policy_parse(p, "p.json", pol, strlen(pol), err,
                                    sizeof(err), NULL), 0);
  relay_set_policy(w.r, p);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  assert_int_equal(last_status(&w.fa), 2);
  assert_string_equal(refused_last, "agent echo: the policy file does not "
                      "list this identity for it");
  reg(w.r, w.b, WIRE_REG_AGENT, "echo");
  assert_int_equal(last_status(&w.fb), 0);
  reg(w.r, w.b, WIRE_REG_AGENT, "other"); /* not in the policy: denied */
  assert_int_equal(last_status(&w.fb), 2);
  /* The policy does not restrict connectors. */
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  assert_int_equal(last_status(&w.fc), 0);
  /* The policy file names services without regard to case either. */
  reg(w.r, w.b, WIRE_REG_AGENT, "Echo");
  assert_int_equal(last_status(&w.fb), 0);
  relay_set_policy(w.r, NULL);
  relay_del(w.r);
}

static void test_relay_translation(void **state)
{
  struct world w;
  uint8_t pkt[256], b[2048], xa[4], xb[4];
  size_t n;
  (void)state;

  world(&w, NULL);
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  reg(w.r, w.b, WIRE_REG_AGENT, "echo");
  /* Same tunnel address from both agents. */
  n = udp4(pkt, "100.64.0.1", "10.100.0.1", "a");
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, n));
  assert_int_equal(w.fc.ndgrams, 2); /* its ACK, then the packet */
  assert_int_equal(w.fc.lastlen, n);
  assert_checksums(w.fc.last, n);
  memcpy(xa, w.fc.last + 12, 4);
  n = udp4(pkt, "100.64.0.1", "10.100.0.1", "b");
  relay_datagram(w.r, w.b, b, routed(b, "echo", pkt, n));
  assert_checksums(w.fc.last, n);
  memcpy(xb, w.fc.last + 12, 4);
  assert_memory_not_equal(xa, xb, 4);
  assert_int_equal(xa[0], 100);
  assert_int_equal(xa[1] & 0xc0, 64); /* inside 100.64.0.0/10 */
  /* The same source keeps its translation. */
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, n));
  assert_memory_equal(w.fc.last + 12, xa, 4);

  /* Replies: to the agent that owns the translated address only. */
  {
    char dst[16];
    inet_ntop(AF_INET, xb, dst, sizeof(dst));
    n = udp4(pkt, "10.100.0.1", dst, "reply");
  }
  relay_datagram(w.r, w.c, pkt, n);
  assert_int_equal(w.fb.ndgrams, 2); /* the ACK, then the reply */
  assert_int_equal(w.fa.ndgrams, 1);
  assert_checksums(w.fb.last, n);
  {
    uint8_t want[4];
    inet_pton(AF_INET, "100.64.0.1", want);
    assert_memory_equal(w.fb.last + 16, want, 4);
  }
  /* An agent cannot inject "replies" into another agent. */
  relay_datagram(w.r, w.a, pkt, n);
  assert_int_equal(w.fb.ndgrams, 2);

  /* Disconnect frees the translation: the address routes nowhere. */
  relay_client_del(w.r, w.b);
  relay_datagram(w.r, w.c, pkt, n);
  assert_int_equal(relay_stats(w.r)->drops[RELAY_DROP_NO_ROUTE], 1);
  relay_del(w.r);
}

static void test_relay_drops(void **state)
{
  struct world w;
  uint8_t pkt[256], b[2048];
  size_t n;
  const struct relay_stats *st;
  (void)state;

  world(&w, NULL);
  st = relay_stats(w.r);
  n = udp4(pkt, "100.64.0.1", "10.100.0.1", "x");
  relay_datagram(w.r, w.a, pkt, n); /* registered nothing */
  assert_int_equal(st->drops[RELAY_DROP_NOT_REGISTERED], 1);
  relay_datagram(w.r, w.a, b, routed(b, "web", pkt, n)); /* not allowed */
  assert_int_equal(st->drops[RELAY_DROP_DENIED], 1);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, n)); /* no connector */
  assert_int_equal(st->drops[RELAY_DROP_NO_CONNECTOR], 1);
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  w.fc.fail_with = ZTNA_ERR_TOO_LARGE;
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, n));
  assert_int_equal(st->drops[RELAY_DROP_TOO_LARGE], 1);
  w.fc.fail_with = ZTNA_ERR_QUEUE_FULL;
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, n));
  assert_int_equal(st->drops[RELAY_DROP_QUEUE_FULL], 1);
  w.fc.fail_with = 0;
  /* Truncated packets, lying lengths, other types. */
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, 10));
  pkt[3] = 0xff; /* total length past the end */
  relay_datagram(w.r, w.a, pkt, n);
  relay_datagram(w.r, w.a, (const uint8_t *)"\x2f", 1);
  assert_int_equal(st->drops[RELAY_DROP_MALFORMED], 3);
  relay_datagram(w.r, w.a, (const uint8_t *)"\x01\x02", 2);
  relay_datagram(w.r, w.a, (const uint8_t *)"", 0);
  assert_int_equal(st->drops[RELAY_DROP_UNEXPECTED], 2);
  relay_del(w.r);
}

static void test_relay_raw_routing_by_virtual_ip(void **state)
{
  struct world w;
  struct tls_identity ic2 = ident("conn2", "connector.web.ztna", NULL);
  struct fconn f2 = { .id = 4 };
  struct relay_client *c2;
  uint8_t pkt[256], b[2048];
  size_t n;
  (void)state;

  world(&w, NULL);
  c2 = relay_client_new(w.r, &f2, &ic2);
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  reg(w.r, c2, WIRE_REG_CONNECTOR, "web");
  reg(w.r, w.b, WIRE_REG_AGENT, "echo");
  reg(w.r, w.b, WIRE_REG_AGENT, "web");
  /* Two services: a raw packet needs a learned virtual IP. */
  n = udp4(pkt, "100.64.0.1", "10.100.0.2", "x");
  relay_datagram(w.r, w.b, pkt, n);
  assert_int_equal(relay_stats(w.r)->drops[RELAY_DROP_NO_ROUTE], 1);
  relay_datagram(w.r, w.b, b, routed(b, "web", pkt, n));
  assert_int_equal(f2.ndgrams, 2); /* the ACK, then the packet */
  relay_datagram(w.r, w.b, pkt, n);
  assert_int_equal(f2.ndgrams, 3);
  assert_int_equal(w.fc.ndgrams, 1); /* only its ACK */
  relay_del(w.r);
}

static void test_relay_limits(void **state)
{
  struct relay_limits lim = { .services_per_client = 2 };
  struct world w;
  (void)state;

  world(&w, &lim);
  reg(w.r, w.b, WIRE_REG_AGENT, "s1");
  reg(w.r, w.b, WIRE_REG_AGENT, "s2");
  assert_int_equal(last_status(&w.fb), 0);
  reg(w.r, w.b, WIRE_REG_AGENT, "s3");
  assert_int_equal(last_status(&w.fb), 1);
  reg(w.r, w.b, WIRE_REG_AGENT, "s1"); /* known ones still ACK */
  assert_int_equal(last_status(&w.fb), 0);
  assert_int_equal(relay_stats(w.r)->limit_hits, 1);
  relay_del(w.r);
}

/* --- signaling ------------------------------------------------------------ */

static void sig(struct relay *r, struct relay_client *c, uint32_t tag,
                uint64_t sid, const char *svc, uint64_t now)
{
  struct wire_sig *m = calloc(1, sizeof(*m));
  uint8_t buf[4096];
  int n;

  m->tag = tag;
  m->session_id = sid;
  if (svc) {
    m->service_id_len = strlen(svc);
    memcpy(m->service_id, svc, m->service_id_len);
  }
  n = wire_sig_frame(buf, sizeof(buf), m);
  free(m);
  relay_signal(r, c, buf, (size_t)n, now);
}

/* Decodes every frame f got since last time; returns the last message's
 * tag and fills *code for an Error. */
static int last_sig(struct fconn *f, uint32_t *code, uint64_t *sid)
{
  struct wire_sig *m = malloc(sizeof(*m));
  size_t off = 0;
  int tag = -1;

  while (off + 4 <= f->siglen) {
    uint32_t len = (uint32_t)f->sig[off] << 24 | f->sig[off + 1] << 16 |
                   f->sig[off + 2] << 8 | f->sig[off + 3];
    assert_int_equal(wire_sig_decode(f->sig + off + 4, len, m), 0);
    tag = (int)m->tag;
    if (code)
      *code = m->code;
    if (sid)
      *sid = m->session_id;
    off += 4 + len;
  }
  f->siglen = 0;
  free(m);
  return tag;
}

static void test_relay_signaling(void **state)
{
  struct world w;
  uint32_t code = 0;
  uint64_t sid = 0;
  (void)state;

  world(&w, NULL);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  sig(w.r, w.a, WIRE_SIG_OFFER, 1, "echo", 0);
  assert_int_equal(last_sig(&w.fa, &code, &sid), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_NO_CONNECTOR);
  assert_int_equal(sid, 1);

  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  sig(w.r, w.a, WIRE_SIG_OFFER, 2, "echo", 0);
  assert_int_equal(last_sig(&w.fc, NULL, &sid), WIRE_SIG_OFFER);
  assert_int_equal(sid, 2);
  /* Same id again from the same agent: refused. */
  sig(w.r, w.a, WIRE_SIG_OFFER, 2, "echo", 0);
  assert_int_equal(last_sig(&w.fa, &code, NULL), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_INVALID_MESSAGE);
  /* Hijack: an answer from another connection. */
  sig(w.r, w.b, WIRE_SIG_ANSWER, 2, NULL, 10);
  assert_int_equal(last_sig(&w.fb, &code, NULL), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_SESSION_NOT_FOUND);
  assert_int_equal(last_sig(&w.fa, NULL, NULL), -1);
  /* The right connector: StartPunching to both. */
  sig(w.r, w.c, WIRE_SIG_ANSWER, 2, NULL, 20);
  assert_int_equal(last_sig(&w.fa, NULL, &sid), WIRE_SIG_START);
  assert_int_equal(last_sig(&w.fc, NULL, NULL), WIRE_SIG_START);
  /* A second answer is refused. */
  sig(w.r, w.c, WIRE_SIG_ANSWER, 2, NULL, 30);
  assert_int_equal(last_sig(&w.fc, &code, NULL), WIRE_SIG_ERROR);
  /* The agent's result goes to the connector and ends the session. */
  sig(w.r, w.a, WIRE_SIG_RESULT, 2, NULL, 40);
  assert_int_equal(last_sig(&w.fc, NULL, NULL), WIRE_SIG_RESULT);
  assert_int_equal(relay_session_count(w.r), 0);
  /* Clients never send StartPunching. */
  sig(w.r, w.a, WIRE_SIG_START, 3, NULL, 50);
  assert_int_equal(last_sig(&w.fa, &code, NULL), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_INVALID_MESSAGE);
  /* Not registered for the service. */
  sig(w.r, w.b, WIRE_SIG_OFFER, 4, "echo", 50);
  assert_int_equal(last_sig(&w.fb, &code, NULL), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_PEER_REJECTED);
  relay_del(w.r);
}

static void test_relay_sessions_expire_and_bounded(void **state)
{
  struct relay_limits lim = { .sessions_per_client = 3 };
  struct world w;
  uint32_t code = 0;
  (void)state;

  world(&w, &lim);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  for (uint64_t i = 1; i <= 4; i++)
    sig(w.r, w.a, WIRE_SIG_OFFER, i, "echo", 1000);
  assert_int_equal(relay_session_count(w.r), 3);
  assert_int_equal(last_sig(&w.fa, &code, NULL), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_UNKNOWN); /* too many */
  assert_int_equal(relay_stats(w.r)->limit_hits, 1);
  /* One answered (punching), two not. At 5 s the unanswered expire with
   * SessionTimeout; the punching one waits for its result. */
  sig(w.r, w.c, WIRE_SIG_ANSWER, 1, NULL, 2000);
  last_sig(&w.fa, NULL, NULL);
  relay_expire(w.r, 5999);
  assert_int_equal(relay_session_count(w.r), 3);
  relay_expire(w.r, 6000);
  assert_int_equal(relay_session_count(w.r), 1);
  assert_int_equal(last_sig(&w.fa, &code, NULL), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_SESSION_TIMEOUT);
  relay_expire(w.r, 1000 + RELAY_PUNCH_TTL_MS);
  assert_int_equal(relay_session_count(w.r), 0);
  relay_del(w.r);
}

static void test_relay_disconnect_mid_session(void **state)
{
  struct world w;
  uint8_t pkt[256], b[2048];
  (void)state;

  world(&w, NULL);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  sig(w.r, w.a, WIRE_SIG_OFFER, 5, "echo", 0);
  relay_datagram(w.r, w.a, b,
                 routed(b, "echo", pkt, udp4(pkt, "100.64.0.1", "10.0.0.1",
                                             "x")));
  relay_client_del(w.r, w.c);
  assert_int_equal(relay_session_count(w.r), 0);
  /* The answer of a connector that reconnected finds nothing. */
  w.c = relay_client_new(w.r, &w.fc, &(struct tls_identity){ 0 });
  sig(w.r, w.c, WIRE_SIG_ANSWER, 5, NULL, 10);
  assert_int_equal(last_sig(&w.fc, NULL, NULL), WIRE_SIG_ERROR);
  relay_client_del(w.r, w.a);
  assert_int_equal(relay_client_count(w.r), 2);
  relay_del(w.r);
}

static void test_relay_signal_stream_garbage(void **state)
{
  struct world w;
  uint8_t big[8] = { 0x00, 0x01, 0x00, 0x01 }; /* 65537-byte frame */
  (void)state;

  world(&w, NULL);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  relay_signal(w.r, w.a, big, sizeof(big), 0);
  assert_int_equal(relay_stats(w.r)->sig_errors, 1);
  /* The buffer is closed: later valid frames are ignored. */
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  sig(w.r, w.a, WIRE_SIG_OFFER, 1, "echo", 0);
  assert_int_equal(w.fc.nsig, 0);
  assert_int_equal(relay_stats(w.r)->sig_errors, 1);
  relay_del(w.r);
}

/* Two connectors of one service; the newer one leaves with no agent
 * registered. The older one's registration must stay valid (it used to
 * point at the freed service: its next datagram, a policy reload or its
 * own disconnect read freed memory), and it serves the service again. */
static void test_relay_connector_displaced_then_newest_leaves(void **state)
{
  struct tls_identity ic = ident("conn2", "connector.echo.ztna", NULL);
  struct fconn f2;
  struct relay_client *c2;
  struct cfg_policy *p = calloc(1, sizeof(*p));
  const char *pol = "{\"services\": {\"echo\": {\"allow\": [\"alice\"]}}}";
  struct world w;
  uint8_t pkt[256], b[2048];
  char err[256];
  size_t n;
  (void)state;

  world(&w, NULL);
  memset(&f2, 0, sizeof(f2));
  c2 = relay_client_new(w.r, &f2, &ic);
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  reg(w.r, c2, WIRE_REG_CONNECTOR, "echo"); /* the newest wins */
  relay_client_del(w.r, c2);
  n = udp4(pkt, "10.100.0.1", "100.64.1.0", "x");
  relay_datagram(w.r, w.c, pkt, n); /* no agent: dropped, counted */
  assert_int_equal(relay_stats(w.r)->drops[RELAY_DROP_NO_ROUTE], 1);
  assert_int_equal(cfg_policy_parse(p, "p.json", pol, strlen(pol), err,
                                    sizeof(err), NULL), 0);
  relay_set_policy(w.r, p);
  /* The remaining connector carries the service again. */
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  n = udp4(pkt, "100.64.0.1", "10.100.0.1", "a");
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, n));
  assert_int_equal(w.fc.lastlen, n);
  relay_client_del(w.r, w.c);
  relay_client_del(w.r, w.a);
  relay_del(w.r);
}

/* An agent's translated address is not handed to another agent while a
 * connector may still hold state for it, and the connector is told at
 * once that the agent is gone. */
static void test_relay_translation_quarantine(void **state)
{
  struct relay_limits lim = { .translations = 1,
                              .xlat_quarantine_ms = 60000 };
  struct world w;
  uint8_t pkt[256], b[2048], gone[8];
  size_t n;
  (void)state;

  world(&w, &lim);
  relay_expire(w.r, 1000);
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  reg(w.r, w.b, WIRE_REG_AGENT, "echo");
  n = udp4(pkt, "100.64.0.1", "10.100.0.1", "a");
  relay_datagram(w.r, w.a, b, routed(b, "echo", pkt, n));
  assert_memory_equal(w.fc.last + 12, "\x64\x40\x01\x00", 4);
  relay_client_del(w.r, w.a);
  /* The connector hears that 100.64.1.0 is gone. */
  assert_int_equal(unhex("30 04 64 40 01 00", gone, sizeof(gone)), 6);
  assert_int_equal(w.fc.lastlen, 6);
  assert_memory_equal(w.fc.last, gone, 6);
  /* Bob may not have that address yet: the only one is resting. */
  relay_datagram(w.r, w.b, b, routed(b, "echo", pkt, n));
  assert_int_equal(relay_stats(w.r)->drops[RELAY_DROP_LIMIT], 1);
  assert_int_equal(w.fc.lastlen, 6);
  relay_expire(w.r, 1000 + 59999);
  relay_datagram(w.r, w.b, b, routed(b, "echo", pkt, n));
  assert_int_equal(relay_stats(w.r)->drops[RELAY_DROP_LIMIT], 2);
  relay_expire(w.r, 1000 + 60000);
  relay_datagram(w.r, w.b, b, routed(b, "echo", pkt, n));
  assert_int_equal(w.fc.lastlen, n);
  assert_memory_equal(w.fc.last + 12, "\x64\x40\x01\x00", 4);
  relay_del(w.r);
}

static void reg_flags(struct relay *r, struct relay_client *c, uint8_t type,
                      const char *svc, uint8_t flags)
{
  uint8_t b[300];
  int n = wire_register_encode(b, sizeof(b), type, svc, strlen(svc));
  b[n++] = WIRE_REG_EXT_MAGIC;
  b[n++] = flags;
  relay_datagram(r, c, b, (size_t)n);
}

/* Sends OPEN for svc from c; returns the OPENED status, *sid its id. */
static int open_session(struct world *w, struct relay_client *c,
                        struct fconn *f, uint32_t req, const char *svc,
                        uint64_t *sid)
{
  uint8_t b[300], status;
  uint32_t rq;
  int n = wire_session_open_encode(b, sizeof(b), req, svc, strlen(svc));

  relay_datagram(w->r, c, b, (size_t)n);
  assert_int_equal(wire_session_opened_decode(f->last, f->lastlen, &rq,
                                              &status, sid), 0);
  assert_int_equal(rq, req);
  return status;
}

static size_t data(uint8_t *b, uint64_t sid, const char *payload)
{
  int h = wire_session_data_header(b, 2048, sid);
  memcpy(b + h, payload, strlen(payload));
  return (size_t)h + strlen(payload);
}

/* Relay sessions: opened only for an agent registered and granted, to a
 * connector that takes them; forwarded unchanged between exactly those
 * two; ids never handed out twice; ended (and both sides told) when
 * either leaves, the connector is displaced or the policy revokes. */
static void test_relay_sessions_opaque_forwarding(void **state)
{
  struct relay_limits lim = { .rsession_base = 41 };
  struct tls_identity ic2 = ident("conn2", "connector.echo.ztna", NULL);
  struct tls_identity ie = ident("eve", "agent.other.ztna", NULL);
  struct fconn f2, fe;
  struct relay_client *c2, *e;
  struct cfg_policy *p = calloc(1, sizeof(*p));
  const char *pol = "{\"services\": {\"echo\": {\"allow\": [\"bob\"]}}}";
  struct world w;
  uint8_t b[2048], reason;
  uint64_t sid, sid2, sid3, got;
  char err[256];
  size_t n;
  (void)state;

  world(&w, &lim);
  memset(&f2, 0, sizeof(f2));
  memset(&fe, 0, sizeof(fe));
  e = relay_client_new(w.r, &fe, &ie);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  /* No connector yet, then an original one that takes no sessions. */
  assert_int_equal(open_session(&w, w.a, &w.fa, 1, "echo", &sid),
                   WIRE_SESSION_NO_CONNECTOR);
  reg(w.r, w.c, WIRE_REG_CONNECTOR, "echo");
  assert_int_equal(open_session(&w, w.a, &w.fa, 2, "echo", &sid),
                   WIRE_SESSION_UNSUPPORTED);
  reg_flags(w.r, w.c, WIRE_REG_CONNECTOR, "echo", WIRE_REG_FLAG_SESSIONS);
  /* Not registered for it, not granted it. */
  assert_int_equal(open_session(&w, w.b, &w.fb, 3, "echo", &sid),
                   WIRE_SESSION_INVALID);
  reg(w.r, e, WIRE_REG_AGENT, "echo");
  assert_int_equal(open_session(&w, e, &fe, 4, "echo", &sid),
                   WIRE_SESSION_DENIED);
  /* Granted: session 41; a repeated request gets the same one. */
  assert_int_equal(open_session(&w, w.a, &w.fa, 5, "echo", &sid),
                   WIRE_SESSION_OK);
  assert_int_equal(sid, 41);
  assert_int_equal(open_session(&w, w.a, &w.fa, 5, "ECHO", &sid),
                   WIRE_SESSION_OK);
  assert_int_equal(sid, 41);
  assert_int_equal(relay_rsession_count(w.r), 1);
  /* Both ways, byte for byte. */
  n = data(b, sid, "\x40 opaque inner packet");
  relay_datagram(w.r, w.a, b, n);
  assert_int_equal(w.fc.lastlen, n);
  assert_memory_equal(w.fc.last, b, n);
  n = data(b, sid, "\x41 answer");
  relay_datagram(w.r, w.c, b, n);
  assert_int_equal(w.fa.lastlen, n);
  assert_memory_equal(w.fa.last, b, n);
  /* Nobody else may use the session: a stranger hears "unknown". */
  w.fc.ndgrams = 0;
  n = data(b, sid, "\x40 forged");
  relay_datagram(w.r, w.b, b, n);
  assert_int_equal(w.fc.ndgrams, 0);
  assert_int_equal(wire_session_closed_decode(w.fb.last, w.fb.lastlen, &got,
                                              &reason), 0);
  assert_int_equal(reason, WIRE_SESSION_UNKNOWN);
  assert_int_equal(relay_stats(w.r)->drops[RELAY_DROP_NO_ROUTE], 1);
  /* A flood of made-up ids: a few answers per tick, every one counted. */
  w.fb.ndgrams = 0;
  for (uint64_t k = 0; k < 1000; k++) {
    n = data(b, 1000000 + k, "\x40 flood");
    relay_datagram(w.r, w.b, b, n);
  }
  assert_int_equal(w.fb.ndgrams, RELAY_UNKNOWN_ANSWERS - 1);
  assert_int_equal(relay_stats(w.r)->drops[RELAY_DROP_NO_ROUTE], 1001);
  relay_expire(w.r, 1000);
  relay_datagram(w.r, w.b, b, n);
  assert_int_equal(w.fb.ndgrams, RELAY_UNKNOWN_ANSWERS);
  /* A newer connector displaces the old one: the session ends, both told. */
  c2 = relay_client_new(w.r, &f2, &ic2);
  reg_flags(w.r, c2, WIRE_REG_CONNECTOR, "echo", WIRE_REG_FLAG_SESSIONS);
  assert_int_equal(relay_rsession_count(w.r), 0);
  assert_int_equal(wire_session_closed_decode(w.fa.last, w.fa.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sid && reason == WIRE_SESSION_REPLACED);
  assert_int_equal(wire_session_closed_decode(w.fc.last, w.fc.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sid && reason == WIRE_SESSION_REPLACED);
  /* The same request number now opens a new session: never id 41 again. */
  assert_int_equal(open_session(&w, w.a, &w.fa, 5, "echo", &sid2),
                   WIRE_SESSION_OK);
  assert_true(sid2 != sid);
  n = data(b, sid2, "\x40 to the new one");
  relay_datagram(w.r, w.a, b, n);
  assert_memory_equal(f2.last, b, n);
  /* The connector leaves: the agent is told. */
  relay_client_del(w.r, c2);
  assert_int_equal(wire_session_closed_decode(w.fa.last, w.fa.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sid2 && reason == WIRE_SESSION_GONE);
  /* The old connector serves again; the policy revokes alice. */
  reg(w.r, w.b, WIRE_REG_AGENT, "echo");
  assert_int_equal(open_session(&w, w.a, &w.fa, 6, "echo", &sid3),
                   WIRE_SESSION_OK);
  assert_true(sid3 != sid && sid3 != sid2);
  assert_int_equal(open_session(&w, w.b, &w.fb, 1, "echo", &sid),
                   WIRE_SESSION_OK);
  assert_int_equal(relay_rsession_count(w.r), 2);
  assert_int_equal(cfg_policy_parse(p, "p.json", pol, strlen(pol), err,
                                    sizeof(err), NULL), 0);
  relay_set_policy(w.r, p);
  assert_int_equal(relay_rsession_count(w.r), 1);
  assert_int_equal(wire_session_closed_decode(w.fa.last, w.fa.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sid3 && reason == WIRE_SESSION_REVOKED);
  /* Bob closes his: the connector hears it. */
  n = (size_t)wire_session_closed_encode(b, sizeof(b), sid, 0);
  relay_datagram(w.r, w.b, b, n);
  assert_int_equal(relay_rsession_count(w.r), 0);
  assert_int_equal(wire_session_closed_decode(w.fc.last, w.fc.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sid && reason == WIRE_SESSION_CLOSED_BY_PEER);
  assert_int_equal(relay_stats(w.r)->rsession_dgrams, 3);
  relay_del(w.r);
}

/* One agent cannot hold more relay sessions than its bound. */
static void test_relay_sessions_bounded(void **state)
{
  struct relay_limits lim = { .rsessions_per_client = 2 };
  struct world w;
  uint64_t sid;
  (void)state;

  world(&w, &lim);
  reg_flags(w.r, w.c, WIRE_REG_CONNECTOR, "echo", WIRE_REG_FLAG_SESSIONS);
  reg(w.r, w.a, WIRE_REG_AGENT, "echo");
  assert_int_equal(open_session(&w, w.a, &w.fa, 1, "echo", &sid), 0);
  assert_int_equal(open_session(&w, w.a, &w.fa, 2, "echo", &sid), 0);
  assert_int_equal(open_session(&w, w.a, &w.fa, 3, "echo", &sid),
                   WIRE_SESSION_LIMIT);
  reg(w.r, w.b, WIRE_REG_AGENT, "echo");
  assert_int_equal(open_session(&w, w.b, &w.fb, 1, "echo", &sid), 0);
  relay_client_del(w.r, w.a);
  assert_int_equal(relay_rsession_count(w.r), 1);
  relay_del(w.r);
}

/* Revoking a service ends the agent's sessions to every connector that
 * serves it, whichever service they were opened for: the end-to-end
 * connection in them carries all of that connector's services; and the
 * connector hears whose access ended (WIRE_REVOKED). */
static void test_relay_revocation_ends_carrying_sessions(void **state)
{
  struct tls_identity i2 = ident("conn2", "connector.echo.ztna",
                                 "connector.web.ztna");
  struct tls_identity i3 = ident("conn3", "connector.db.ztna", NULL);
  struct cfg_policy *p = calloc(1, sizeof(*p));
  const char *pol = "{\"services\": {\"web\": {\"allow\": [\"alice\"]}, "
                    "\"echo\": {\"allow\": [\"*\"]}, "
                    "\"db\": {\"allow\": [\"*\"]}}}";
  struct fconn f2, f3;
  struct relay_client *c2, *c3;
  struct world w;
  uint64_t sid_echo, sid_db, got;
  uint8_t reason;
  char err[256];
  (void)state;

  world(&w, NULL);
  memset(&f2, 0, sizeof(f2));
  memset(&f3, 0, sizeof(f3));
  c2 = relay_client_new(w.r, &f2, &i2);
  c3 = relay_client_new(w.r, &f3, &i3);
  reg_flags(w.r, c2, WIRE_REG_CONNECTOR, "echo", WIRE_REG_FLAG_SESSIONS);
  reg_flags(w.r, c2, WIRE_REG_CONNECTOR, "web", WIRE_REG_FLAG_SESSIONS);
  reg_flags(w.r, c3, WIRE_REG_CONNECTOR, "db", WIRE_REG_FLAG_SESSIONS);
  reg(w.r, w.b, WIRE_REG_AGENT, "echo");
  reg(w.r, w.b, WIRE_REG_AGENT, "web");
  reg(w.r, w.b, WIRE_REG_AGENT, "db");
  assert_int_equal(open_session(&w, w.b, &w.fb, 1, "echo", &sid_echo),
                   WIRE_SESSION_OK);
  assert_int_equal(open_session(&w, w.b, &w.fb, 2, "db", &sid_db),
                   WIRE_SESSION_OK);
  assert_int_equal(relay_rsession_count(w.r), 2);
  assert_int_equal(cfg_policy_parse(p, "p.json", pol, strlen(pol), err,
                                    sizeof(err), NULL), 0);
  f2.ndgrams = f3.ndgrams = 0;
  relay_set_policy(w.r, p); /* bob loses web */
  /* The echo session reached web's connector: it ends, revoked, both
   * sides told; db's connector serves no web: its session stays, and it
   * hears nothing. */
  assert_int_equal(relay_rsession_count(w.r), 1);
  assert_int_equal(wire_session_closed_decode(w.fb.last, w.fb.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sid_echo && reason == WIRE_SESSION_REVOKED);
  assert_int_equal(f3.ndgrams, 0);
  /* Web's connector is told which agent lost it (its connections may run
   * directly, where no session ends): after the session's end. */
  assert_int_equal(f2.ndgrams, 2);
  {
    const uint8_t *fp;
    uint8_t bob_fp[32];
    memset(bob_fp, 0xbb, sizeof(bob_fp));
    assert_int_equal(wire_revoked_decode(f2.last, f2.lastlen, &fp), 0);
    assert_memory_equal(fp, bob_fp, 32);
  }
  /* Echo itself is still his: a new session opens. */
  assert_int_equal(open_session(&w, w.b, &w.fb, 3, "echo", &got),
                   WIRE_SESSION_OK);
  assert_true(got != sid_echo);
  relay_del(w.r);
}

/* --- a cluster: two relays joined by a link ------------------------------ */

static struct relay_client *route_to; /* what A's route_cb answers */

static struct relay_client *f_route(const char *id, size_t len, void *ud)
{
  (void)id, (void)len, (void)ud;
  return route_to;
}

static const struct relay_io fio_cluster = { f_send_dgram, f_send_signal,
                                             NULL, NULL, f_refused,
                                             f_route, NULL };

/* Hands what one relay sent on its link to the other relay. */
static void deliver(struct relay *to, struct relay_client *from,
                    struct fconn *f)
{
  relay_datagram(to, from, f->last, f->lastlen);
}

/* Two relays joined by a cluster link: alice, an agent of echo, at A;
 * echo's connector (it takes sessions) at B; pa and pb the link's ends at
 * A and B. The fakes and identities live here: the relays keep pointers
 * to them. */
struct pair {
  struct tls_identity ia, ic, ii;
  struct fconn fa, fc, fpa, fpb;
  struct relay *A, *B;
  struct relay_client *a, *c, *pa, *pb;
};

static void pair_new(struct pair *p, const struct relay_limits *la,
                     const struct relay_limits *lb)
{
  memset(p, 0, sizeof(*p));
  p->ia = ident("alice", "agent.echo.ztna", NULL);
  p->ic = ident("conn", "ztna-connector", "connector.echo.ztna");
  p->ii = ident("i", "ztna-server", NULL);
  assert_int_equal(relay_new(&p->A, &fio_cluster, la), 0);
  assert_int_equal(relay_new(&p->B, &fio_cluster, lb), 0);
  p->a = relay_client_new(p->A, &p->fa, &p->ia);
  p->c = relay_client_new(p->B, &p->fc, &p->ic);
  p->pa = relay_client_new(p->A, &p->fpa, &p->ii);
  p->pb = relay_client_new(p->B, &p->fpb, &p->ii);
  relay_client_set_peer(p->pa);
  relay_client_set_peer(p->pb);
  reg_flags(p->B, p->c, WIRE_REG_CONNECTOR, "echo", WIRE_REG_FLAG_SESSIONS);
  reg(p->A, p->a, WIRE_REG_AGENT, "echo");
}

/* Alice asks for an echo session (request req) and the link carries the
 * request to B and the answer back: it is made; returns her session id. */
static uint64_t pair_open(struct pair *p, uint32_t req)
{
  uint8_t b[64], st;
  uint32_t rq;
  uint64_t sid;
  size_t n = (size_t)wire_session_open_encode(b, sizeof(b), req, "echo", 4);

  relay_datagram(p->A, p->a, b, n);
  deliver(p->B, p->pb, &p->fpa);
  deliver(p->A, p->pa, &p->fpb);
  assert_int_equal(wire_session_opened_decode(p->fa.last, p->fa.lastlen, &rq,
                                              &st, &sid), 0);
  assert_true(rq == req && st == WIRE_SESSION_OK);
  return sid;
}

/* An agent at relay A, the connector at relay B: A asks B for the session
 * over their link, the packets cross it under B's session id and reach
 * the agent under A's, and either side's end reaches the other. A link
 * carries sessions only, a pending request expires, a late answer is
 * closed at B, and a lost link ends the sessions through it. */
static void test_relay_cluster_forwarding(void **state)
{
  struct pair P;
  struct relay_limits la = { .rsession_base = 1000 };
  struct relay_limits lb = { .rsession_base = 5000 };
  uint8_t b[2048], st, reason;
  uint32_t rq;
  uint64_t sa, sb, got;
  const uint8_t *pkt;
  size_t n, plen;
  int k;
  (void)state;

  pair_new(&P, &la, &lb);
  /* Not known where: no connector. */
  route_to = NULL;
  n = (size_t)wire_session_open_encode(b, sizeof(b), 7, "echo", 4);
  relay_datagram(P.A, P.a, b, n);
  assert_int_equal(wire_session_opened_decode(P.fa.last, P.fa.lastlen, &rq, &st,
                                              &sa), 0);
  assert_int_equal(st, WIRE_SESSION_NO_CONNECTOR);
  /* Known: asked of B; the agent waits for B's answer. */
  route_to = P.pa;
  P.fa.ndgrams = 0;
  relay_datagram(P.A, P.a, b, n);
  assert_int_equal(P.fa.ndgrams, 0);
  assert_int_equal(P.fpa.last[0], WIRE_SESSION_OPEN);
  relay_datagram(P.A, P.a, b, n); /* repeated: still one request */
  assert_int_equal(P.fpa.ndgrams, 1);
  deliver(P.B, P.pb, &P.fpa);
  assert_int_equal(wire_session_opened_decode(P.fpb.last, P.fpb.lastlen, &rq,
                                              &st, &sb), 0);
  assert_int_equal(st, WIRE_SESSION_OK);
  assert_int_equal(sb, 5000);
  deliver(P.A, P.pa, &P.fpb);
  assert_int_equal(wire_session_opened_decode(P.fa.last, P.fa.lastlen, &rq, &st,
                                              &sa), 0);
  assert_true(rq == 7 && st == WIRE_SESSION_OK && sa == 1000);
  assert_int_equal(relay_stats(P.A)->rsessions_forwarded, 1);
  assert_int_equal(relay_stats(P.B)->rsessions_for_peers, 1);
  /* A repeated request once answered: the same session. */
  relay_datagram(P.A, P.a, b, n);
  assert_int_equal(wire_session_opened_decode(P.fa.last, P.fa.lastlen, &rq, &st,
                                              &got), 0);
  assert_true(st == WIRE_SESSION_OK && got == sa);
  /* Agent to connector: renamed to B's id on the link, unchanged after. */
  n = data(b, sa, "\x40 inner");
  relay_datagram(P.A, P.a, b, n);
  assert_int_equal(wire_session_data_decode(P.fpa.last, P.fpa.lastlen, &got,
                                            &pkt, &plen), 0);
  assert_true(got == sb && plen == 7 && !memcmp(pkt, "\x40 inner", 7));
  deliver(P.B, P.pb, &P.fpa);
  assert_int_equal(wire_session_data_decode(P.fc.last, P.fc.lastlen, &got, &pkt,
                                            &plen), 0);
  assert_true(got == sb && plen == 7);
  /* And back. */
  n = data(b, sb, "\x41 back");
  relay_datagram(P.B, P.c, b, n);
  deliver(P.A, P.pa, &P.fpb);
  assert_int_equal(wire_session_data_decode(P.fa.last, P.fa.lastlen, &got, &pkt,
                                            &plen), 0);
  assert_true(got == sa && plen == 6 && !memcmp(pkt, "\x41 back", 6));
  /* A link carries sessions only: no registration, no raw IP. */
  k = P.fpb.ndgrams;
  reg(P.B, P.pb, WIRE_REG_CONNECTOR, "echo");
  assert_int_equal(P.fpb.ndgrams, k);
  assert_true(relay_stats(P.B)->drops[RELAY_DROP_UNEXPECTED] >= 1);
  /* The agent's own id is not B's: DATA under it from the link is not
   * taken for the agent's session. */
  n = data(b, sa, "\x41 wrong id");
  k = P.fa.ndgrams;
  relay_datagram(P.A, P.pa, b, n);
  assert_int_equal(P.fa.ndgrams, k);
  /* The connector leaves B: the agent at A hears it, under its id. */
  relay_client_del(P.B, P.c);
  assert_int_equal(wire_session_closed_decode(P.fpb.last, P.fpb.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sb && reason == WIRE_SESSION_GONE);
  deliver(P.A, P.pa, &P.fpb);
  assert_int_equal(wire_session_closed_decode(P.fa.last, P.fa.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sa && reason == WIRE_SESSION_GONE);
  assert_int_equal(relay_rsession_count(P.A), 0);
  assert_int_equal(relay_rsession_count(P.B), 0);
  /* No answer from B in time: the agent hears "no connector"; B's late
   * answer is closed there. */
  n = (size_t)wire_session_open_encode(b, sizeof(b), 8, "echo", 4);
  relay_datagram(P.A, P.a, b, n);
  assert_int_equal(relay_rsession_count(P.A), 1);
  memcpy(b, P.fpa.last, P.fpa.lastlen); /* the request, kept */
  relay_expire(P.A, RELAY_FORWARD_TTL_MS);
  assert_int_equal(wire_session_opened_decode(P.fa.last, P.fa.lastlen, &rq, &st,
                                              &got), 0);
  assert_true(rq == 8 && st == WIRE_SESSION_NO_CONNECTOR);
  assert_int_equal(relay_rsession_count(P.A), 0);
  n = (size_t)wire_session_opened_encode(b, sizeof(b), 2, WIRE_SESSION_OK,
                                         777);
  relay_datagram(P.A, P.pa, b, n);
  assert_int_equal(wire_session_closed_decode(P.fpa.last, P.fpa.lastlen, &got,
                                              &reason), 0);
  assert_true(got == 777 && reason == WIRE_SESSION_CLOSED_BY_PEER);
  /* A session through the link, then the link goes: the agent hears it. */
  P.c = relay_client_new(P.B, &P.fc, &P.ic);
  reg_flags(P.B, P.c, WIRE_REG_CONNECTOR, "echo", WIRE_REG_FLAG_SESSIONS);
  sa = pair_open(&P, 9);
  relay_client_del(P.A, P.pa);
  assert_int_equal(wire_session_closed_decode(P.fa.last, P.fa.lastlen, &got,
                                              &reason), 0);
  assert_true(got == sa && reason == WIRE_SESSION_GONE);
  relay_client_del(P.B, P.pb); /* and B's end: the connector hears it */
  assert_int_equal(wire_session_closed_decode(P.fc.last, P.fc.lastlen, &got,
                                              &reason), 0);
  assert_true(reason == WIRE_SESSION_GONE);
  assert_int_equal(relay_rsession_count(P.A), 0);
  assert_int_equal(relay_rsession_count(P.B), 0);
  route_to = NULL;
  relay_del(P.A);
  relay_del(P.B);
}

/* Hands the signaling bytes one relay sent on its link to the other. */
static void deliver_sig(struct relay *to, struct relay_client *from,
                        struct fconn *f)
{
  uint8_t buf[sizeof(f->sig)];
  size_t n = f->siglen;

  memcpy(buf, f->sig, n);
  f->siglen = 0;
  relay_signal(to, from, buf, n, 0);
}

/* A punch between an agent at A and a connector at B: the offer crosses
 * the link, the connector's member starts the punch on both sides, the
 * agent's result ends it on both; a link never answers an offer itself,
 * and "no connector" at B reaches the agent. */
static void test_relay_cluster_signaling(void **state)
{
  struct pair P;
  uint32_t code = 0;
  uint64_t sid = 0;
  (void)state;

  pair_new(&P, NULL, NULL);
  /* Nowhere known: no connector. */
  route_to = NULL;
  sig(P.A, P.a, WIRE_SIG_OFFER, 7, "echo", 0);
  assert_int_equal(last_sig(&P.fa, &code, NULL), WIRE_SIG_ERROR);
  assert_int_equal(code, WIRE_SIGERR_NO_CONNECTOR);
  /* At B: the offer crosses the link to the connector. */
  route_to = P.pa;
  sig(P.A, P.a, WIRE_SIG_OFFER, 7, "echo", 0);
  assert_int_equal(P.fpa.nsig, 1);
  deliver_sig(P.B, P.pb, &P.fpa);
  assert_int_equal(last_sig(&P.fc, NULL, &sid), WIRE_SIG_OFFER);
  assert_int_equal(sid, 7);
  /* A link does not answer for a connector. */
  sig(P.A, P.pa, WIRE_SIG_ANSWER, 7, NULL, 0);
  assert_int_equal(last_sig(&P.fa, NULL, NULL), -1);
  /* The connector answers: StartPunching to it, and across to the agent. */
  sig(P.B, P.c, WIRE_SIG_ANSWER, 7, NULL, 0);
  assert_int_equal(last_sig(&P.fc, NULL, NULL), WIRE_SIG_START);
  deliver_sig(P.A, P.pa, &P.fpb);
  assert_int_equal(last_sig(&P.fa, NULL, &sid), WIRE_SIG_START);
  assert_int_equal(sid, 7);
  /* The agent's result ends it at both. */
  sig(P.A, P.a, WIRE_SIG_RESULT, 7, NULL, 0);
  deliver_sig(P.B, P.pb, &P.fpa);
  assert_int_equal(last_sig(&P.fc, NULL, NULL), WIRE_SIG_RESULT);
  assert_int_equal(relay_session_count(P.A), 0);
  assert_int_equal(relay_session_count(P.B), 0);
  /* The connector gone from B: its "no connector" reaches the agent. */
  relay_client_del(P.B, P.c);
  sig(P.A, P.a, WIRE_SIG_OFFER, 8, "echo", 0);
  deliver_sig(P.B, P.pb, &P.fpa);
  deliver_sig(P.A, P.pa, &P.fpb);
  assert_int_equal(last_sig(&P.fa, &code, &sid), WIRE_SIG_ERROR);
  assert_true(code == WIRE_SIGERR_NO_CONNECTOR && sid == 8);
  assert_int_equal(relay_session_count(P.A), 0);
  route_to = NULL;
  relay_del(P.A);
  relay_del(P.B);
}

/* The same id at both members (their ids count from random starts, so
 * this is rare, not impossible): the far member's packets still reach the
 * agent. Then a link that floods OPENs: it gets what the bounds allow and
 * "limit" for the rest, and its going ends every session it held. */
static void test_relay_cluster_same_ids(void **state)
{
  struct pair P;
  struct relay_limits lim = { .rsession_base = 77, .rsessions_total = 8 };
  uint8_t b[2048], st;
  uint32_t rq;
  uint64_t sa, got;
  const uint8_t *pkt;
  size_t n, plen;
  (void)state;

  pair_new(&P, &lim, &lim);
  route_to = P.pa;
  sa = pair_open(&P, 1);
  assert_true(sa == 77);
  n = data(b, 77, "\x41 from B");
  relay_datagram(P.B, P.c, b, n);
  deliver(P.A, P.pa, &P.fpb);
  assert_int_equal(wire_session_data_decode(P.fa.last, P.fa.lastlen, &got, &pkt,
                                            &plen), 0);
  assert_true(got == 77 && plen == 8);
  /* The flood: 1 session held, 7 more allowed, 93 refused. */
  for (uint32_t k = 0; k < 100; k++) {
    n = (size_t)wire_session_open_encode(b, sizeof(b), 1000 + k, "echo", 4);
    relay_datagram(P.B, P.pb, b, n);
    assert_int_equal(wire_session_opened_decode(P.fpb.last, P.fpb.lastlen, &rq,
                                                &st, &got), 0);
    assert_int_equal(st, k < 7 ? WIRE_SESSION_OK : WIRE_SESSION_LIMIT);
  }
  assert_int_equal(relay_rsession_count(P.B), 8);
  assert_true(relay_stats(P.B)->limit_hits >= 93);
  relay_client_del(P.B, P.pb);
  assert_int_equal(relay_rsession_count(P.B), 0);
  assert_int_equal(wire_session_closed_decode(P.fc.last, P.fc.lastlen, &got,
                                              &st), 0);
  assert_int_equal(st, WIRE_SESSION_GONE);
  route_to = NULL;
  relay_del(P.A);
  relay_del(P.B);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_relay_registration_and_policy),
    cmocka_unit_test(test_relay_translation),
    cmocka_unit_test(test_relay_drops),
    cmocka_unit_test(test_relay_raw_routing_by_virtual_ip),
    cmocka_unit_test(test_relay_limits),
    cmocka_unit_test(test_relay_signaling),
    cmocka_unit_test(test_relay_sessions_expire_and_bounded),
    cmocka_unit_test(test_relay_disconnect_mid_session),
    cmocka_unit_test(test_relay_signal_stream_garbage),
    cmocka_unit_test(test_relay_connector_displaced_then_newest_leaves),
    cmocka_unit_test(test_relay_translation_quarantine),
    cmocka_unit_test(test_relay_sessions_opaque_forwarding),
    cmocka_unit_test(test_relay_sessions_bounded),
    cmocka_unit_test(test_relay_revocation_ends_carrying_sessions),
    cmocka_unit_test(test_relay_cluster_forwarding),
    cmocka_unit_test(test_relay_cluster_signaling),
    cmocka_unit_test(test_relay_cluster_same_ids),
  };
  return cmocka_run_group_tests_name("relay", tests, NULL, NULL);
}
