/* punch_test.c - connectivity checks with a fake clock and a fake network:
 * RFC 8445 priorities, pacing and retransmission as protocol.md 5 says,
 * success and its round trip, peer-reflexive candidates, and the answers
 * that must not count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "punch.h"
#include "testutil.h"
#include "wire.h"

#define MAXPKT 256

struct pkt {
  struct sockaddr_storage to;
  uint8_t d[128];
  size_t n;
  uint64_t at;
};

/* Everything one side sent, in order. */
struct wire_log {
  struct pkt p[MAXPKT];
  size_t n;
};

static uint64_t now;

static void log_send(const struct sockaddr *to, const uint8_t *d, size_t n,
                     void *ud)
{
  struct wire_log *w = ud;
  assert_true(w->n < MAXPKT);
  memset(&w->p[w->n], 0, sizeof(w->p[0]));
  memcpy(&w->p[w->n].to, to, sizeof(struct sockaddr_in));
  memcpy(w->p[w->n].d, d, n);
  w->p[w->n].n = n;
  w->p[w->n].at = now;
  w->n++;
}

static void addr(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  memset(ss, 0, sizeof(*ss));
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  inet_pton(AF_INET, ip, &in->sin_addr);
}

static void cand(struct wire_candidate *c, uint32_t type, const char *ip,
                 uint16_t port)
{
  memset(c, 0, sizeof(*c));
  c->type = type;
  addr(&c->addr, ip, port);
  c->priority = punch_cand_priority(type, AF_INET);
}

static void test_priorities(void **state)
{
  (void)state;
  /* The golden vectors of protocol.md 6. */
  assert_int_equal(punch_cand_priority(WIRE_CAND_HOST, AF_INET), 2130706431u);
  assert_int_equal(punch_cand_priority(WIRE_CAND_SRFLX, AF_INET),
                   1694498815u);
  assert_int_equal(punch_cand_priority(WIRE_CAND_PRFLX, AF_INET),
                   (110u << 24) | (65535u << 8) | 255u);
  assert_int_equal(punch_cand_priority(WIRE_CAND_HOST, AF_INET6),
                   (126u << 24) | (65534u << 8) | 255u);
  assert_int_equal(punch_cand_priority(WIRE_CAND_RELAY, AF_INET),
                   (65535u << 8) | 255u);
  /* 2^32*min(G,D) + 2*max(G,D) + (G>D ? 1 : 0) */
  assert_true(punch_pair_priority(5, 3) == (3ull << 32) + 10 + 1);
  assert_true(punch_pair_priority(3, 5) == (3ull << 32) + 10);
}

/* Nobody answers: 5 transmissions per pair at 100, 200, 400, 800 ms after
 * the previous, never two within 20 ms, highest priority first, relay and
 * other-family candidates never checked; then failure with a reason. */
static void test_pacing_and_retransmission(void **state)
{
  static struct punch p;
  static struct wire_log w;
  struct punch_io io = { log_send, &w, NULL };
  struct wire_candidate c[4];
  uint64_t wake;
  (void)state;

  memset(&w, 0, sizeof(w));
  cand(&c[0], WIRE_CAND_SRFLX, "203.0.113.2", 4434);
  cand(&c[1], WIRE_CAND_HOST, "192.0.2.18", 4434);
  cand(&c[2], WIRE_CAND_RELAY, "198.51.100.10", 4433);
  memset(&c[3], 0, sizeof(c[3]));
  c[3].type = WIRE_CAND_HOST;
  c[3].addr.ss_family = AF_INET6;
  now = 1000;
  punch_start(&p, &io, 1, AF_INET, c, 4, now);
  assert_int_equal(p.npairs, 2);
  /* The host pair ranks first. */
  assert_int_equal(p.pairs[0].remote_type, WIRE_CAND_HOST);
  while (p.state == PUNCH_CHECKING) {
    wake = punch_tick(&p, now);
    if (!wake)
      break;
    now += wake;
  }
  assert_int_equal(p.state, PUNCH_FAILED);
  assert_non_null(strstr(p.why, "no answer to 5 checks on any of 2"));
  assert_int_equal(w.n, 10);
  for (size_t i = 1; i < w.n; i++)
    assert_true(w.p[i].at - w.p[i - 1].at >= PUNCH_PACE_MS);
  {
    /* Per pair: gaps of 100, 200, 400, 800 ms. */
    uint64_t last[2] = { 0, 0 };
    int k[2] = { 0, 0 };
    for (size_t i = 0; i < w.n; i++) {
      int j = ((struct sockaddr_in *)&w.p[i].to)->sin_addr.s_addr ==
                      ((struct sockaddr_in *)&p.pairs[0].remote)
                          ->sin_addr.s_addr
                  ? 0
                  : 1;
      struct wire_ctl ctl;
      assert_int_equal(wire_ctl_decode(w.p[i].d, w.p[i].n, &ctl), 0);
      assert_int_equal(ctl.kind, WIRE_CTL_BIND_REQ);
      assert_true(ctl.priority == p.pairs[j].priority);
      if (k[j] > 0) {
        uint64_t gap = w.p[i].at - last[j];
        uint64_t want = (uint64_t)PUNCH_RTO_MS << (k[j] - 1);
        assert_true(gap >= want && gap < want + 2 * PUNCH_PACE_MS);
      }
      last[j] = w.p[i].at;
      k[j]++;
    }
    assert_int_equal(k[0], 5);
    assert_int_equal(k[1], 5);
  }
  assert_true(now - 1000 < PUNCH_CHECK_TIMEOUT_MS);
}

/* Delivers every packet each side sent since last time to the other, as
 * coming from from_a / from_b (what the other side's NAT shows). */
static void deliver(struct punch *dst, struct wire_log *src, size_t *seen,
                    const struct sockaddr *from, struct wire_log *dst_out,
                    int drop)
{
  struct punch_io io = { log_send, dst_out, NULL };

  for (; *seen < src->n; (*seen)++) {
    struct wire_ctl c;
    if (drop)
      continue;
    assert_int_equal(wire_ctl_decode(src->p[*seen].d, src->p[*seen].n, &c),
                     0);
    if (c.kind == WIRE_CTL_BIND_REQ)
      punch_answer(&io, &c, from, &dst->auth);
    punch_input(dst, &c, from, now);
  }
}

/* The agent (a: its host address offered, its NAT showing another) and
 * the connector (b: its public address offered) check each other until
 * both are done; authenticated under auth when it is set. */
static void both_ways(struct punch *a, struct punch *b, struct wire_log *wa,
                      struct wire_log *wb, const struct punch_auth *auth)
{
  struct punch_io ioa = { log_send, wa, NULL }, iob = { log_send, wb, NULL };
  struct wire_candidate ca[1], cb[1];
  struct sockaddr_storage a_seen, b_seen;
  size_t sa = 0, sb = 0;

  memset(wa, 0, sizeof(*wa));
  memset(wb, 0, sizeof(*wb));
  cand(&ca[0], WIRE_CAND_HOST, "192.0.2.2", 40000);
  cand(&cb[0], WIRE_CAND_SRFLX, "203.0.113.2", 4434);
  addr(&a_seen, "198.51.100.2", 40000);
  addr(&b_seen, "203.0.113.2", 4434);
  now = 5000;
  punch_start(a, &ioa, 1, AF_INET, cb, 1, now);
  punch_start(b, &iob, 0, AF_INET, ca, 1, now);
  if (auth) {
    punch_set_auth(a, auth);
    punch_set_auth(b, auth);
  }
  for (int i = 0; i < 200 &&
                  (a->state == PUNCH_CHECKING || b->state == PUNCH_CHECKING);
       i++) {
    punch_tick(a, now);
    punch_tick(b, now);
    now += 5;
    deliver(b, wa, &sa, (struct sockaddr *)&a_seen, wb, 0);
    deliver(a, wb, &sb, (struct sockaddr *)&b_seen, wa, 0);
  }
}

static void test_success_both_ways_and_prflx(void **state)
{
  static struct punch a, b;
  static struct wire_log wa, wb;
  struct sockaddr_storage a_seen;
  (void)state;

  addr(&a_seen, "198.51.100.2", 40000);
  both_ways(&a, &b, &wa, &wb, NULL);
  assert_int_equal(a.state, PUNCH_SUCCEEDED);
  assert_int_equal(a.pairs[a.winner].remote_type, WIRE_CAND_SRFLX);
  assert_true(a.pairs[a.winner].rtt_ms <= 10);
  /* The connector learned the agent's public address from its request
   * (peer-reflexive) and its own check to it succeeded too. */
  assert_int_equal(b.state, PUNCH_SUCCEEDED);
  assert_int_equal(b.pairs[b.winner].remote_type, WIRE_CAND_PRFLX);
  assert_memory_equal(&b.pairs[b.winner].remote, &a_seen,
                      sizeof(struct sockaddr_in));
  /* The answer told the agent how the connector sees it. */
  assert_true(a.pairs[a.winner].has_mapped);
  assert_memory_equal(&a.pairs[a.winner].mapped, &a_seen,
                      sizeof(struct sockaddr_in));
}

/* A stranger's binding request never becomes a pair on the agent's side
 * (it could otherwise answer its own check and win the path). */
static void test_controlling_learns_no_prflx(void **state)
{
  static struct punch a;
  static struct wire_log wa;
  struct punch_io ioa = { log_send, &wa, NULL };
  struct wire_candidate cb[1];
  struct sockaddr_storage stranger;
  struct wire_ctl req;
  (void)state;

  memset(&wa, 0, sizeof(wa));
  memset(&req, 0, sizeof(req));
  cand(&cb[0], WIRE_CAND_SRFLX, "203.0.113.2", 4434);
  addr(&stranger, "198.51.100.99", 5555);
  now = 1000;
  punch_start(&a, &ioa, 1, AF_INET, cb, 1, now);
  assert_int_equal(a.npairs, 1);
  req.kind = WIRE_CTL_BIND_REQ;
  memset(req.txn, 0x55, sizeof(req.txn));
  assert_int_equal(punch_input(&a, &req, (struct sockaddr *)&stranger, now),
                   0);
  assert_int_equal(a.npairs, 1);
  assert_false(punch_addr_eq((struct sockaddr *)&a.pairs[0].remote,
                             (struct sockaddr *)&stranger));
}

/* Candidates that aim checks at loopback, link-local, metadata,
 * multicast or broadcast addresses are refused; a private LAN host is
 * fine. */
static void test_candidates_past_the_egress_guard(void **state)
{
  static struct punch a;
  static struct wire_log wa;
  struct punch_io ioa = { log_send, &wa, NULL };
  struct wire_candidate c[9];
  struct sockaddr_in6 *s6;
  (void)state;

  memset(&wa, 0, sizeof(wa));
  cand(&c[0], WIRE_CAND_HOST, "127.0.0.1", 4434);
  cand(&c[1], WIRE_CAND_HOST, "169.254.169.254", 80);
  cand(&c[2], WIRE_CAND_HOST, "0.0.0.0", 4434);
  cand(&c[3], WIRE_CAND_HOST, "224.0.0.1", 4434);
  cand(&c[4], WIRE_CAND_HOST, "255.255.255.255", 4434);
  cand(&c[5], WIRE_CAND_HOST, "127.8.9.10", 4434);
  cand(&c[6], WIRE_CAND_HOST, "169.254.1.1", 4434);
  cand(&c[7], WIRE_CAND_SRFLX, "203.0.113.2", 4434);
  cand(&c[8], WIRE_CAND_HOST, "192.168.1.10", 4434);
  punch_start(&a, &ioa, 0, AF_INET, c, 9, 1000);
  assert_int_equal(a.npairs, 2);
  assert_int_equal(a.refused, 7);
  /* IPv6: loopback, link-local, multicast, IPv4-mapped loopback. */
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 5; i++) {
    s6 = (struct sockaddr_in6 *)&c[i].addr;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(4434);
    c[i].type = WIRE_CAND_HOST;
  }
  inet_pton(AF_INET6, "::1", &((struct sockaddr_in6 *)&c[0].addr)->sin6_addr);
  inet_pton(AF_INET6, "fe80::1",
            &((struct sockaddr_in6 *)&c[1].addr)->sin6_addr);
  inet_pton(AF_INET6, "ff02::1",
            &((struct sockaddr_in6 *)&c[2].addr)->sin6_addr);
  inet_pton(AF_INET6, "::ffff:127.0.0.1",
            &((struct sockaddr_in6 *)&c[3].addr)->sin6_addr);
  inet_pton(AF_INET6, "2001:db8::5",
            &((struct sockaddr_in6 *)&c[4].addr)->sin6_addr);
  punch_start(&a, &ioa, 0, AF_INET6, c, 5, 1000);
  assert_int_equal(a.npairs, 1);
  assert_int_equal(a.refused, 4);
}

static void test_answers_that_do_not_count(void **state)
{
  static struct punch a;
  static struct wire_log wa;
  struct punch_io ioa = { log_send, &wa, NULL };
  struct wire_candidate cb[1];
  struct wire_ctl resp;
  struct sockaddr_storage right, wrong;
  (void)state;

  memset(&wa, 0, sizeof(wa));
  cand(&cb[0], WIRE_CAND_SRFLX, "203.0.113.2", 4434);
  addr(&right, "203.0.113.2", 4434);
  addr(&wrong, "203.0.113.66", 4434);
  now = 100;
  punch_start(&a, &ioa, 1, AF_INET, cb, 1, now);
  punch_tick(&a, now);
  assert_int_equal(wa.n, 1);
  memset(&resp, 0, sizeof(resp));
  resp.kind = WIRE_CTL_BIND_RESP;
  resp.success = 1;
  /* Wrong transaction id. */
  memset(resp.txn, 0xee, 12);
  assert_int_equal(punch_input(&a, &resp, (struct sockaddr *)&right, now),
                   0);
  /* Right id, wrong source. */
  memcpy(resp.txn, a.pairs[0].txn, 12);
  assert_int_equal(punch_input(&a, &resp, (struct sockaddr *)&wrong, now),
                   0);
  /* A failure answer. */
  resp.success = 0;
  punch_input(&a, &resp, (struct sockaddr *)&right, now);
  assert_int_equal(a.state, PUNCH_CHECKING);
  /* The real one. */
  resp.success = 1;
  now += 3;
  assert_int_equal(punch_input(&a, &resp, (struct sockaddr *)&right, now),
                   1);
  assert_int_equal(a.state, PUNCH_SUCCEEDED);
  assert_int_equal(a.pairs[0].rtt_ms, 3);
}

/* The punch key: HMAC-SHA256(exporter, "ztna punch" | session BE), a
 * vector computed independently (Python's hmac). */
static void test_key_derivation(void **state)
{
  uint8_t root[32], key[32];
  (void)state;

  memset(root, 1, sizeof(root));
  assert_int_equal(punch_key_derive(root, 0x0102030405060708ull, key), 0);
  static const uint8_t want[32] = {
    0xcb, 0xe8, 0x88, 0x19, 0x10, 0x93, 0x59, 0x0d, 0x70, 0x8c, 0x60,
    0x17, 0x92, 0x4c, 0xeb, 0x64, 0x90, 0xe1, 0x45, 0x91, 0x1d, 0x55,
    0xde, 0x3a, 0x78, 0xbe, 0xc2, 0xa8, 0x33, 0x5a, 0x6f, 0xc0,
  };
  assert_memory_equal(key, want, sizeof(want));
}

static void auth_init(struct punch_auth *a, uint8_t keybyte, uint64_t sid)
{
  memset(a, 0, sizeof(*a));
  a->on = 1;
  memset(a->key, keybyte, sizeof(a->key));
  a->session = sid;
  a->cidlen = 8;
  memset(a->cid, 0xc1, a->cidlen);
}

/* A punch bound to an end-to-end connection: every check and answer
 * either side sends is tagged (71-byte requests, 45-byte IPv4 answers),
 * both succeed, and the agent may now learn a peer-reflexive candidate
 * (its request is authenticated). */
static void test_authenticated_checks(void **state)
{
  static struct punch a, b;
  static struct wire_log wa, wb;
  struct punch_auth k;
  (void)state;

  auth_init(&k, 0x42, 0x1122334455667788ull);
  both_ways(&a, &b, &wa, &wb, &k);
  assert_int_equal(a.state, PUNCH_SUCCEEDED);
  assert_int_equal(b.state, PUNCH_SUCCEEDED);
  assert_int_equal(b.pairs[b.winner].remote_type, WIRE_CAND_PRFLX);
  assert_int_equal(a.rejected + b.rejected, 0);
  for (struct wire_log *w = &wa; w; w = w == &wa ? &wb : NULL)
    for (size_t i = 0; i < w->n; i++) {
      struct wire_ctl c;
      assert_int_equal(wire_ctl_decode(w->p[i].d, w->p[i].n, &c), 0);
      assert_true(c.auth);
      assert_int_equal(w->p[i].n, c.kind == WIRE_CTL_BIND_REQ ? 71 : 45);
      if (c.kind == WIRE_CTL_BIND_REQ) {
        assert_true(c.session == k.session);
        assert_int_equal(c.cidlen, 8);
      }
    }
}

/* The stranger at a candidate's address sees our check (its transaction
 * id too) and answers it: untagged, or tagged under any key but the
 * connection's, it does not count; nor does its request make it a
 * candidate. Only the peer's answer wins. */
static void test_stranger_cannot_answer_authenticated_checks(void **state)
{
  static struct punch a;
  static struct wire_log wa, ws;
  struct punch_io ioa = { log_send, &wa, NULL }, ios = { log_send, &ws, NULL };
  struct wire_candidate cb[1];
  struct sockaddr_storage right, me, stranger;
  struct punch_auth k, wrong;
  struct wire_ctl req, resp;
  size_t npairs;
  (void)state;

  memset(&wa, 0, sizeof(wa));
  memset(&ws, 0, sizeof(ws));
  auth_init(&k, 0x42, 7);
  auth_init(&wrong, 0x43, 7);
  cand(&cb[0], WIRE_CAND_SRFLX, "203.0.113.2", 4434);
  addr(&right, "203.0.113.2", 4434);
  addr(&me, "198.51.100.2", 40000);
  addr(&stranger, "198.51.100.99", 5555);
  now = 100;
  punch_start(&a, &ioa, 1, AF_INET, cb, 1, now);
  punch_set_auth(&a, &k);
  punch_tick(&a, now);
  assert_int_equal(wa.n, 1);
  assert_int_equal(wire_ctl_decode(wa.p[0].d, wa.p[0].n, &req), 0);
  /* Whoever is at the candidate cannot answer it without the key ... */
  assert_int_equal(punch_answer(&ios, &req, (struct sockaddr *)&me, &wrong),
                   0);
  /* ... and untagged, or forged with another key: */
  req.auth = 0;
  assert_int_equal(punch_answer(&ios, &req, (struct sockaddr *)&me, NULL), 1);
  assert_int_equal(wire_ctl_decode(ws.p[0].d, ws.p[0].n, &resp), 0);
  assert_int_equal(punch_input(&a, &resp, (struct sockaddr *)&right, now), 0);
  {
    uint8_t buf[64];
    int n;
    resp.auth = 1;
    n = wire_ctl_encode(buf, sizeof(buf), &resp);
    assert_true(n == 45);
    punch_auth_sign(&wrong, buf, (size_t)n);
    assert_int_equal(wire_ctl_decode(buf, (size_t)n, &resp), 0);
    assert_int_equal(punch_input(&a, &resp, (struct sockaddr *)&right, now),
                     0);
    assert_int_equal(a.rejected, 1);
    /* One flipped bit of a right tag. */
    punch_auth_sign(&k, buf, (size_t)n);
    buf[n - 1] ^= 1;
    assert_int_equal(wire_ctl_decode(buf, (size_t)n, &resp), 0);
    assert_int_equal(punch_input(&a, &resp, (struct sockaddr *)&right, now),
                     0);
  }
  assert_int_equal(a.state, PUNCH_CHECKING);
  /* A stranger's request, tagged under its own key: no candidate. */
  npairs = a.npairs;
  {
    uint8_t buf[WIRE_ABIND_REQ_LEN];
    struct wire_ctl sreq;
    int n;
    memset(&sreq, 0, sizeof(sreq));
    sreq.kind = WIRE_CTL_BIND_REQ;
    sreq.auth = 1;
    sreq.session = 7;
    n = wire_ctl_encode(buf, sizeof(buf), &sreq);
    assert_int_equal(n, WIRE_ABIND_REQ_LEN);
    punch_auth_sign(&wrong, buf, (size_t)n);
    assert_int_equal(wire_ctl_decode(buf, (size_t)n, &sreq), 0);
    assert_int_equal(punch_input(&a, &sreq, (struct sockaddr *)&stranger,
                                 now), 0);
    assert_int_equal(a.npairs, npairs);
    /* The same request under the right key is the peer's: a candidate. */
    punch_auth_sign(&k, buf, (size_t)n);
    assert_int_equal(wire_ctl_decode(buf, (size_t)n, &sreq), 0);
    assert_int_equal(punch_input(&a, &sreq, (struct sockaddr *)&stranger,
                                 now), 1);
    assert_int_equal(a.npairs, npairs + 1);
  }
  /* The peer's own answer wins. */
  memset(&ws, 0, sizeof(ws));
  assert_int_equal(wire_ctl_decode(wa.p[0].d, wa.p[0].n, &req), 0);
  assert_int_equal(punch_answer(&ios, &req, (struct sockaddr *)&me, &k), 1);
  assert_int_equal(wire_ctl_decode(ws.p[0].d, ws.p[0].n, &resp), 0);
  now += 4;
  assert_int_equal(punch_input(&a, &resp, (struct sockaddr *)&right, now), 1);
  assert_int_equal(a.state, PUNCH_SUCCEEDED);
  assert_true(punch_addr_eq((struct sockaddr *)&a.pairs[a.winner].remote,
                            (struct sockaddr *)&right));
}

/* Bound late (the connector learns which connection a punch is from after
 * its checks began): what untagged answers proved is checked again. */
static void test_bound_late_checks_again(void **state)
{
  static struct punch b;
  static struct wire_log wb, ws;
  struct punch_io iob = { log_send, &wb, NULL }, ios = { log_send, &ws, NULL };
  struct wire_candidate ca[1];
  struct sockaddr_storage a_addr;
  struct punch_auth k;
  struct wire_ctl req, resp;
  (void)state;

  memset(&wb, 0, sizeof(wb));
  memset(&ws, 0, sizeof(ws));
  cand(&ca[0], WIRE_CAND_SRFLX, "198.51.100.2", 40000);
  addr(&a_addr, "198.51.100.2", 40000);
  now = 100;
  punch_start(&b, &iob, 0, AF_INET, ca, 1, now);
  punch_tick(&b, now);
  assert_int_equal(wire_ctl_decode(wb.p[0].d, wb.p[0].n, &req), 0);
  assert_false(req.auth);
  punch_answer(&ios, &req, (struct sockaddr *)&a_addr, NULL);
  assert_int_equal(wire_ctl_decode(ws.p[0].d, ws.p[0].n, &resp), 0);
  assert_int_equal(punch_input(&b, &resp, (struct sockaddr *)&a_addr, now), 1);
  assert_int_equal(b.state, PUNCH_SUCCEEDED);
  auth_init(&k, 0x42, 9);
  punch_set_auth(&b, &k);
  assert_int_equal(b.state, PUNCH_CHECKING);
  assert_int_equal(b.winner, -1);
  /* The old answer counts no more; the next check is tagged. */
  assert_int_equal(punch_input(&b, &resp, (struct sockaddr *)&a_addr, now), 0);
  now += PUNCH_PACE_MS;
  punch_tick(&b, now);
  assert_int_equal(wb.n, 2);
  assert_int_equal(wire_ctl_decode(wb.p[1].d, wb.p[1].n, &req), 0);
  assert_true(req.auth);
}

static void test_no_candidates(void **state)
{
  static struct punch a;
  static struct wire_log wa;
  struct punch_io ioa = { log_send, &wa, NULL };
  struct wire_candidate c[1];
  (void)state;

  cand(&c[0], WIRE_CAND_RELAY, "198.51.100.10", 4433);
  punch_start(&a, &ioa, 1, AF_INET, c, 1, 0);
  assert_int_equal(punch_tick(&a, 0), 0);
  assert_int_equal(a.state, PUNCH_FAILED);
  assert_non_null(strstr(a.why, "no candidates"));
}

static int ttl_seen[MAXPKT];

static void log_send_ttl(const struct sockaddr *to, const uint8_t *d,
                         size_t n, int ttl, void *ud)
{
  struct wire_log *w = ud;
  ttl_seen[w->n] = ttl;
  log_send(to, d, n, ud);
}

/* Priming: one binding request with TTL 2 to each candidate the checks
 * will go to (not the relay, not another family, nothing past the egress
 * guard), and none at all without a TTL-capable send. */
static void test_prime(void **state)
{
  static struct wire_log w;
  struct punch_io io = { log_send, &w, log_send_ttl };
  struct punch_io plain = { log_send, &w, NULL };
  struct wire_candidate c[4];
  struct wire_ctl ctl;
  (void)state;

  memset(&w, 0, sizeof(w));
  cand(&c[0], WIRE_CAND_SRFLX, "203.0.113.2", 4434);
  cand(&c[1], WIRE_CAND_HOST, "192.0.2.18", 4434);
  cand(&c[2], WIRE_CAND_RELAY, "198.51.100.10", 4433);
  cand(&c[3], WIRE_CAND_HOST, "169.254.169.254", 80);
  punch_prime(&io, AF_INET, c, 4, NULL);
  assert_int_equal(w.n, 2);
  for (size_t i = 0; i < 2; i++) {
    assert_int_equal(ttl_seen[i], PUNCH_PRIME_TTL);
    assert_int_equal(wire_ctl_decode(w.p[i].d, w.p[i].n, &ctl), 0);
    assert_int_equal(ctl.kind, WIRE_CTL_BIND_REQ);
  }
  assert_int_equal(((struct sockaddr_in *)&w.p[0].to)->sin_port, htons(4434));
  punch_prime(&io, AF_INET6, c, 4, NULL);
  assert_int_equal(w.n, 2);
  punch_prime(&plain, AF_INET, c, 4, NULL);
  assert_int_equal(w.n, 2);
  {
    /* Bound: the primers are tagged checks too. */
    struct punch_auth k;
    auth_init(&k, 0x42, 3);
    punch_prime(&io, AF_INET, c, 4, &k);
    assert_int_equal(w.n, 4);
    assert_int_equal(w.p[3].n, WIRE_ABIND_REQ_LEN);
    assert_int_equal(wire_ctl_decode(w.p[3].d, w.p[3].n, &ctl), 0);
    assert_true(ctl.auth);
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_priorities),
    cmocka_unit_test(test_pacing_and_retransmission),
    cmocka_unit_test(test_success_both_ways_and_prflx),
    cmocka_unit_test(test_key_derivation),
    cmocka_unit_test(test_authenticated_checks),
    cmocka_unit_test(test_stranger_cannot_answer_authenticated_checks),
    cmocka_unit_test(test_bound_late_checks_again),
    cmocka_unit_test(test_controlling_learns_no_prflx),
    cmocka_unit_test(test_candidates_past_the_egress_guard),
    cmocka_unit_test(test_answers_that_do_not_count),
    cmocka_unit_test(test_no_candidates),
    cmocka_unit_test(test_prime),
  };
  return cmocka_run_group_tests_name("punch", tests, NULL, NULL);
}
