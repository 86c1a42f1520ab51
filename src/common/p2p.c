/* p2p.c - the agent's side of a punch. */
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
    punch_prime(&io, local.ss_family, pc->peer, pc->npeer);
  }
  uv_timer_start(&pc->timer, timer_cb,
                 m->start_delay_ms > 1000 ? 1000 : m->start_delay_ms, 0);
  return 1;
}

int p2p_client_packet(struct p2p_client *pc, const struct wire_ctl *c,
                      const struct sockaddr *from)
{
  int mine;

  if (pc->phase != P2P_PUNCHING || !pc->start_ms)
    return 0;
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
