/* p2p.c - both sides of a punch: the agent's and the connector's. */
#include <arpa/inet.h>
#include <string.h>
#include <sys/random.h>

#include "err.h"
#include "ippkt.h"
#include "log.h"
#include "netaddr.h"
#include "p2p.h"
#include "quic.h"
#include "uplink.h"

static void finish(struct p2p_client *pc, int success, const char *why)
{
  struct wire_sig m;

  if (pc->phase == P2P_DONE)
    return;
  pc->phase = P2P_DONE;
  pc->success = success;
  pc->end_ms = uv_now(pc->loop);
  uv_timer_stop(&pc->timer);
  if (why)
    snprintf(pc->why, sizeof(pc->why), "%s", why);
  /* Tell the connector through the intermediate (protocol.md 4). */
  memset(&m, 0, sizeof(m));
  m.tag = WIRE_SIG_RESULT;
  m.session_id = pc->session_id;
  m.success = success;
  if (success) {
    m.has_working = 1;
    m.working = pc->punch.pairs[pc->punch.winner].remote;
  }
  uplink_send_signal(pc->up, &m);
  if (pc->done)
    pc->done(pc, pc->ud);
}

static void send_raw(const struct sockaddr *to, const uint8_t *d, size_t n,
                     void *ud)
{
  struct p2p_client *pc = ud;
  quic_endpoint_send_raw(pc->ep, to, d, n);
}

static void send_raw_ttl(const struct sockaddr *to, const uint8_t *d,
                         size_t n, int ttl, void *ud)
{
  struct p2p_client *pc = ud;
  quic_endpoint_send_raw_ttl(pc->ep, to, d, n, ttl);
}

static void timer_cb(uv_timer_t *t)
{
  struct p2p_client *pc = t->data;
  uint64_t now = uv_now(pc->loop), wake;
  char msg[200];

  if (pc->phase == P2P_OFFERED) {
    if (now - pc->offer_ms >= PUNCH_TOTAL_TIMEOUT_MS) {
      finish(pc, 0, "the intermediate never started the punch (no "
                    "StartPunching within 10 s)");
    } else {
      uv_timer_start(&pc->timer, timer_cb,
                     PUNCH_TOTAL_TIMEOUT_MS - (now - pc->offer_ms), 0);
    }
    return;
  }
  if (pc->phase != P2P_PUNCHING)
    return;
  if (!pc->start_ms) {
    struct sockaddr_storage local;
    struct punch_io io = { send_raw, pc, NULL };
    quic_endpoint_local_addr(pc->ep, &local);
    punch_start(&pc->punch, &io, 1, local.ss_family, pc->peer, pc->npeer,
                now);
    if (pc->auth.on)
      punch_set_auth(&pc->punch, &pc->auth);
    pc->start_ms = now;
  }
  wake = punch_tick(&pc->punch, now);
  if (pc->punch.state == PUNCH_SUCCEEDED) {
    finish(pc, 1, NULL);
  } else if (pc->punch.state == PUNCH_FAILED) {
    snprintf(msg, sizeof(msg), "%s", pc->punch.why);
    finish(pc, 0, msg);
  } else if (now - pc->offer_ms >= PUNCH_TOTAL_TIMEOUT_MS) {
    finish(pc, 0, "the punch took longer than 10 s");
  } else if (wake) {
    uv_timer_start(&pc->timer, timer_cb, wake, 0);
  }
}

int p2p_client_start(struct p2p_client *pc, uv_loop_t *loop,
                     struct quic_endpoint *ep, struct uplink *up,
                     const char *service, const struct sockaddr *observed,
                     void (*done)(struct p2p_client *, void *), void *ud)
{
  struct sockaddr_storage local;
  struct wire_sig m;
  uint16_t port;
  int rv;

  memset(pc, 0, sizeof(*pc));
  pc->loop = loop;
  pc->ep = ep;
  pc->up = up;
  pc->done = done;
  pc->ud = ud;
  if (strlen(service) > WIRE_SERVICE_ID_MAX)
    return ZTNA_ERR_TOO_LARGE;
  if (getrandom(&pc->session_id, sizeof(pc->session_id), 0) !=
      sizeof(pc->session_id))
    return ZTNA_ERR_STATE;
  quic_endpoint_local_addr(ep, &local);
  port = ntohs(local.ss_family == AF_INET6
                   ? ((struct sockaddr_in6 *)&local)->sin6_port
                   : ((struct sockaddr_in *)&local)->sin_port);
  pc->nlocal = punch_gather(pc->local, WIRE_SIG_MAX_CANDIDATES,
                            local.ss_family, port, observed,
                            (const struct sockaddr *)uplink_server(up));
  memset(&m, 0, sizeof(m));
  m.tag = WIRE_SIG_OFFER;
  m.session_id = pc->session_id;
  m.service_id_len = strlen(service);
  memcpy(m.service_id, service, m.service_id_len + 1);
  m.ncand = pc->nlocal;
  memcpy(m.cand, pc->local, pc->nlocal * sizeof(pc->local[0]));
  rv = uplink_send_signal(up, &m);
  if (rv < 0)
    return rv;
  pc->phase = P2P_OFFERED;
  pc->offer_ms = uv_now(loop);
  uv_timer_init(loop, &pc->timer);
  pc->timer.data = pc;
  uv_timer_start(&pc->timer, timer_cb, PUNCH_TOTAL_TIMEOUT_MS, 0);
  return 0;
}

int p2p_client_signal(struct p2p_client *pc, const struct wire_sig *m)
{
  char msg[300];

  if (pc->phase == P2P_DONE)
    return 0;
  if (m->tag == WIRE_SIG_ERROR && m->has_session_id &&
      m->session_id == pc->session_id) {
    snprintf(msg, sizeof(msg), "the intermediate refused: %s", m->message);
    finish(pc, 0, msg);
    return 1;
  }
  if (m->tag != WIRE_SIG_START || m->session_id != pc->session_id ||
      pc->phase != P2P_OFFERED)
    return 0;
  pc->npeer = m->ncand;
  memcpy(pc->peer, m->cand, m->ncand * sizeof(m->cand[0]));
  pc->phase = P2P_PUNCHING;
  {
    /* Our NAT's mappings toward the peer, before its checks arrive. */
    struct sockaddr_storage local;
    struct punch_io io = { send_raw, pc, send_raw_ttl };
    quic_endpoint_local_addr(pc->ep, &local);
    punch_prime(&io, local.ss_family, pc->peer, pc->npeer, &pc->auth);
  }
  uv_timer_start(&pc->timer, timer_cb,
                 m->start_delay_ms > 1000 ? 1000 : m->start_delay_ms, 0);
  return 1;
}

int p2p_punch_key(struct quic_conn *c, uint64_t session,
                  struct punch_auth *a)
{
  uint8_t root[QUIC_EXPORTER_LEN];

  memset(a, 0, sizeof(*a));
  if (quic_conn_exporter(c, root) < 0 ||
      punch_key_derive(root, session, a->key) < 0)
    return ZTNA_ERR_STATE;
  a->session = session;
  a->cidlen = quic_conn_dcid(c, a->cid, sizeof(a->cid));
  a->on = 1;
  return 0;
}

void p2p_client_announce(struct p2p_client *pc, struct quic_conn *c)
{
  uint8_t m[WIRE_PUNCH_BIND_LEN];

  if (pc->auth.on && wire_punch_bind_encode(m, sizeof(m), pc->session_id) > 0)
    quic_conn_send_datagram(c, m, sizeof(m));
}

int p2p_client_bind(struct p2p_client *pc, struct quic_conn *c)
{
  int rv;

  if ((rv = p2p_punch_key(c, pc->session_id, &pc->auth)) < 0)
    return rv;
  p2p_client_announce(pc, c);
  return 0;
}

int p2p_client_packet(struct p2p_client *pc, const struct wire_ctl *c,
                      const struct sockaddr *from)
{
  int mine;

  if (c->auth && c->kind == WIRE_CTL_BIND_REQ) {
    /* Checks of our own punch: answered only when the tag is right. */
    struct punch_io io = { send_raw, pc, NULL };
    if (pc->phase == P2P_DONE || !pc->auth.on ||
        c->session != pc->session_id)
      return 0;
    if (!punch_answer(&io, c, from, &pc->auth)) {
      pc->punch.rejected++;
      return 1;
    }
  }
  if (pc->phase != P2P_PUNCHING || !pc->start_ms)
    return c->auth && c->kind == WIRE_CTL_BIND_REQ &&
           c->session == pc->session_id;
  mine = punch_input(&pc->punch, c, from, uv_now(pc->loop));
  if (mine)
    uv_timer_start(&pc->timer, timer_cb, 0, 0);
  return mine;
}

void p2p_client_stop(struct p2p_client *pc, uv_close_cb close_cb)
{
  pc->done = NULL;
  if (pc->phase == P2P_OFFERED || pc->phase == P2P_PUNCHING)
    pc->phase = P2P_DONE;
  uv_close((uv_handle_t *)&pc->timer, close_cb);
}

/* --- the connector's side ------------------------------------------------- */

static void srv_send(const struct sockaddr *to, const uint8_t *d, size_t n,
                     void *ud)
{
  struct p2p_server *s = ud;
  quic_endpoint_send_raw(s->ep, to, d, n);
}

static void srv_send_ttl(const struct sockaddr *to, const uint8_t *d,
                         size_t n, int ttl, void *ud)
{
  struct p2p_server *s = ud;
  quic_endpoint_send_raw_ttl(s->ep, to, d, n, ttl);
}

static const char *sname(struct p2p_session *ps)
{
  return ps->srv->io.name(ps->svc, ps->srv->io.ud);
}

/* Logs and counts how our own checks went, once. */
static void srv_report(struct p2p_session *ps)
{
  struct p2p_server *s = ps->srv;
  uint64_t now = uv_now(s->loop);
  char a[64];

  if (!ps->started || ps->reported || ps->punch.state == PUNCH_CHECKING)
    return;
  ps->reported = 1;
  if (ps->punch.state == PUNCH_SUCCEEDED) {
    const struct punch_pair *w = &ps->punch.pairs[ps->punch.winner];
    s->ok++;
    log_info("%s: p2p session %016llx: the agent answers at %s (%u ms "
             "round trip, after %llu ms)", sname(ps),
             (unsigned long long)ps->id,
             netaddr_str((const struct sockaddr *)&w->remote, a, sizeof(a)),
             w->rtt_ms, (unsigned long long)(now - ps->start_ms));
  } else {
    s->failed++;
    log_info("%s: p2p session %016llx: no direct path: %s", sname(ps),
             (unsigned long long)ps->id, ps->punch.why);
  }
}

static void srv_end(struct p2p_session *ps)
{
  srv_report(ps);
  uv_timer_stop(&ps->timer);
  ps->used = 0;
}

/* Binds ps to the agent's end-to-end connection (a's key); a running
 * punch restarts its checks tagged. srv_bind: to the connection that
 * claimed it with WIRE_PUNCH_BIND, if any; returns 1 when ps is bound. */
static void srv_bound(struct p2p_session *ps, const struct punch_auth *a)
{
  struct p2p_server *s = ps->srv;

  ps->auth = *a;
  s->bound++;
  if (ps->started)
    punch_set_auth(&ps->punch, a);
  log_debug("%s: p2p session %016llx: bound to the agent's end-to-end "
            "connection: checks are tagged", sname(ps),
            (unsigned long long)ps->id);
}

static int srv_bind(struct p2p_session *ps)
{
  struct p2p_server *s = ps->srv;
  struct punch_auth a;

  if (ps->auth.on)
    return 1;
  if (!s->io.key || s->io.key(ps->svc, ps->id, NULL, 0, &a, s->io.ud) < 0)
    return 0;
  srv_bound(ps, &a);
  return 1;
}

static void srv_timer(uv_timer_t *t)
{
  struct p2p_session *ps = t->data;
  struct p2p_server *s = ps->srv;
  uint64_t now = uv_now(s->loop), wake;

  if (!ps->started) {
    struct sockaddr_storage local;
    struct punch_io io = { srv_send, s, NULL };
    if (!srv_bind(ps) && !ps->result_seen &&
        now - ps->sig_ms < P2P_BIND_WAIT_MS) {
      uv_timer_start(&ps->timer, srv_timer, 50, 0);
      return;
    }
    quic_endpoint_local_addr(s->ep, &local);
    punch_start(&ps->punch, &io, 0, local.ss_family, ps->peer, ps->npeer,
                now);
    if (ps->auth.on)
      punch_set_auth(&ps->punch, &ps->auth);
    ps->started = 1;
    ps->start_ms = now;
  }
  wake = punch_tick(&ps->punch, now);
  srv_report(ps);
  if (ps->result_seen && ps->punch.state != PUNCH_CHECKING) {
    srv_end(ps);
    return;
  }
  if (wake)
    uv_timer_start(&ps->timer, srv_timer, wake, 0);
}

static struct p2p_session *srv_find(struct p2p_server *s, void *svc,
                                    uint64_t id)
{
  for (size_t i = 0; i < P2P_MAX_SESSIONS; i++)
    if (s->sess[i].used && s->sess[i].svc == svc && s->sess[i].id == id)
      return &s->sess[i];
  return NULL;
}

static void srv_error(struct p2p_server *s, void *svc, uint64_t id,
                      uint32_t code, const char *text)
{
  struct wire_sig m;

  memset(&m, 0, sizeof(m));
  m.tag = WIRE_SIG_ERROR;
  m.has_session_id = 1;
  m.session_id = id;
  m.code = code;
  m.message_len = strlen(text);
  memcpy(m.message, text, m.message_len + 1);
  s->io.send_signal(svc, &m, s->io.ud);
}

static void srv_offer(struct p2p_server *s, void *svc,
                      const struct wire_sig *m)
{
  struct p2p_session *ps = NULL;
  struct sockaddr_storage local;
  struct wire_sig ans;
  uint16_t port;

  if (srv_find(s, svc, m->session_id))
    return; /* a duplicate */
  for (size_t i = 0; i < P2P_MAX_SESSIONS && !ps; i++)
    if (!s->sess[i].used)
      ps = &s->sess[i];
  if (!ps) {
    log_warnx("%s: p2p: %d punches at once already; refusing one",
              s->io.name(svc, s->io.ud), P2P_MAX_SESSIONS);
    srv_error(s, svc, m->session_id, WIRE_SIGERR_UNKNOWN,
              "connector busy: too many punches at once");
    return;
  }
  ps->used = 1;
  ps->started = ps->reported = ps->result_seen = 0;
  memset(&ps->auth, 0, sizeof(ps->auth));
  ps->svc = svc;
  ps->id = m->session_id;
  ps->created_ms = uv_now(s->loop);
  ps->npeer = 0;
  quic_endpoint_local_addr(s->ep, &local);
  port = ntohs(local.ss_family == AF_INET6
                   ? ((struct sockaddr_in6 *)&local)->sin6_port
                   : ((struct sockaddr_in *)&local)->sin_port);
  memset(&ans, 0, sizeof(ans));
  ans.tag = WIRE_SIG_ANSWER;
  ans.session_id = m->session_id;
  ans.ncand = punch_gather(ans.cand, WIRE_SIG_MAX_CANDIDATES,
                           local.ss_family, port,
                           s->io.observed(svc, s->io.ud),
                           s->io.server(svc, s->io.ud));
  log_info("%s: p2p session %016llx: offer with %zu candidates, answering "
           "with %zu", sname(ps), (unsigned long long)m->session_id,
           m->ncand, ans.ncand);
  if (s->io.send_signal(svc, &ans, s->io.ud) < 0)
    srv_end(ps);
}

void p2p_server_init(struct p2p_server *s, uv_loop_t *loop,
                     struct quic_endpoint *ep, const struct p2p_server_io *io)
{
  memset(s, 0, sizeof(*s));
  s->loop = loop;
  s->ep = ep;
  s->io = *io;
  for (size_t i = 0; i < P2P_MAX_SESSIONS; i++) {
    s->sess[i].srv = s;
    uv_timer_init(loop, &s->sess[i].timer);
    s->sess[i].timer.data = &s->sess[i];
  }
}

void p2p_server_signal(struct p2p_server *s, void *svc,
                       const struct wire_sig *m)
{
  struct p2p_session *ps;

  switch (m->tag) {
  case WIRE_SIG_OFFER:
    srv_offer(s, svc, m);
    return;
  case WIRE_SIG_START:
    ps = srv_find(s, svc, m->session_id);
    if (!ps || ps->started || uv_is_active((uv_handle_t *)&ps->timer))
      return;
    ps->npeer = m->ncand;
    memcpy(ps->peer, m->cand, m->ncand * sizeof(m->cand[0]));
    ps->sig_ms = uv_now(s->loop);
    srv_bind(ps);
    {
      /* Our NAT's mappings toward the agent, before its checks arrive. */
      struct sockaddr_storage local;
      struct punch_io io = { srv_send, s, srv_send_ttl };
      quic_endpoint_local_addr(s->ep, &local);
      punch_prime(&io, local.ss_family, ps->peer, ps->npeer, &ps->auth);
    }
    uv_timer_start(&ps->timer, srv_timer,
                   m->start_delay_ms > 1000 ? 1000 : m->start_delay_ms, 0);
    return;
  case WIRE_SIG_RESULT:
    ps = srv_find(s, svc, m->session_id);
    if (!ps)
      return;
    log_info("%s: p2p session %016llx: the agent reports %s", sname(ps),
             (unsigned long long)m->session_id,
             m->success ? "a direct path" : "no direct path");
    /* Our own checks may still be running: let them finish; ones still
     * waiting to be bound (the agent's side is over, nobody will bind
     * them now) begin at once, since the agent lingers to answer them. */
    ps->result_seen = 1;
    if (!ps->started && uv_is_active((uv_handle_t *)&ps->timer))
      uv_timer_start(&ps->timer, srv_timer, 0, 0);
    else if (!ps->started || ps->punch.state != PUNCH_CHECKING)
      srv_end(ps);
    return;
  case WIRE_SIG_ERROR:
    if (m->has_session_id && (ps = srv_find(s, svc, m->session_id)))
      srv_end(ps);
    log_info("%s: p2p: error from the intermediate: %s",
             s->io.name(svc, s->io.ud), m->message);
    return;
  default:
    return;
  }
}

void p2p_server_bind(struct p2p_server *s, uint64_t session)
{
  for (size_t i = 0; i < P2P_MAX_SESSIONS; i++)
    if (s->sess[i].used && s->sess[i].id == session)
      srv_bind(&s->sess[i]);
}

void p2p_server_packet(struct p2p_server *s, const struct wire_ctl *c,
                       const struct sockaddr *from)
{
  uint64_t now = uv_now(s->loop);

  if (c->auth && c->kind == WIRE_CTL_BIND_REQ) {
    /* An agent's tagged check: answered (tagged) only when it verifies
     * under the key of the connection it names. */
    struct punch_io io = { srv_send, s, NULL };
    struct p2p_session *ps = NULL;
    for (size_t i = 0; i < P2P_MAX_SESSIONS && !ps; i++)
      if (s->sess[i].used && s->sess[i].id == c->session)
        ps = &s->sess[i];
    if (!ps)
      return;
    if (!ps->auth.on) {
      struct punch_auth a;
      if (s->io.key && s->io.key(ps->svc, ps->id, c->cid, c->cidlen, &a,
                                 s->io.ud) == 0 &&
          punch_auth_verify(&a, c))
        srv_bound(ps, &a);
    }
    if (!punch_answer(&io, c, from, &ps->auth)) {
      s->rejected++;
      return;
    }
    if (ps->started && punch_input(&ps->punch, c, from, now))
      uv_timer_start(&ps->timer, srv_timer, 0, 0);
    return;
  }

  for (size_t i = 0; i < P2P_MAX_SESSIONS; i++) {
    struct p2p_session *ps = &s->sess[i];
    if (!ps->used || !ps->started)
      continue;
    if (punch_input(&ps->punch, c, from, now)) {
      /* A triggered check or a success: let the timer act now. */
      uv_timer_start(&ps->timer, srv_timer, 0, 0);
      if (c->kind == WIRE_CTL_BIND_RESP)
        break;
    }
  }
}

void p2p_server_expire(struct p2p_server *s, void *svc)
{
  uint64_t now = uv_now(s->loop);

  for (size_t i = 0; i < P2P_MAX_SESSIONS; i++)
    if (s->sess[i].used &&
        (svc ? s->sess[i].svc == svc
             : now - s->sess[i].created_ms >= P2P_SESSION_MS))
      srv_end(&s->sess[i]);
}

size_t p2p_server_active(const struct p2p_server *s)
{
  size_t n = 0;
  for (size_t i = 0; i < P2P_MAX_SESSIONS; i++)
    n += s->sess[i].used;
  return n;
}

void p2p_server_close(struct p2p_server *s)
{
  for (size_t i = 0; i < P2P_MAX_SESSIONS; i++) {
    if (s->sess[i].used)
      srv_end(&s->sess[i]);
    if (!uv_is_closing((uv_handle_t *)&s->sess[i].timer))
      uv_close((uv_handle_t *)&s->sess[i].timer, NULL);
  }
}
