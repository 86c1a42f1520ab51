/* uplink.c - connect, register, reconnect. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "netaddr.h"
#include "quic.h"
#include "tls.h"
#include "uplink.h"
#include "wire.h"

struct uplink {
  uv_loop_t *loop;
  struct uplink_config cfg;
  struct uplink_cbs cbs;
  void *ud;
  struct quic_conn *conn;
  uv_timer_t retry; /* reconnect */
  uv_timer_t regt;  /* registration resends */
  uv_timer_t watch; /* the intermediate still answers */
  uint64_t backoff_ms;
  uint64_t reconnects;
  int up, closing, handles;
  enum uplink_reg reg[UPLINK_MAX_SERVICES];
  int attempts;
  int64_t sig_sid; /* the signaling stream, -1 none yet */
  struct wire_sigbuf sig;
  char host[256], port[8];
  uv_getaddrinfo_t gai;
  int resolving;
  /* Which of the name's addresses to try next: a name with several (a
   * cluster of intermediates) is tried address after address, moving on
   * whenever a connection fails or is lost. */
  unsigned pick;
};

static void uplink_free(struct uplink *u)
{
  tls_ctx_unref(u->cfg.tls);
  wire_sigbuf_free(&u->sig);
  free(u);
}

static void connect_now(struct uplink *u);
static void send_registrations(struct uplink *u);

static void retry_cb(uv_timer_t *t)
{
  connect_now(t->data);
}

/* The next attempt after the backoff, which doubles up to its cap. */
static void retry_later(struct uplink *u)
{
  uv_timer_start(&u->retry, retry_cb, u->backoff_ms, 0);
  u->backoff_ms *= 2;
  if (u->backoff_ms > UPLINK_BACKOFF_MAX_MS)
    u->backoff_ms = UPLINK_BACKOFF_MAX_MS;
}

/* An intermediate that is gone (killed, its host down, replaced by one
 * with another key that cannot reset our connection) would only show
 * at the idle timeout, 30 s, when the agents' end-to-end connections
 * through it time out as well. Unanswered for UPLINK_SILENCE_MS while
 * something is owed (a keepalive at least every 10 s), the connection is
 * given up and made again: the end-to-end connections then move to the
 * new relay sessions well inside their own idle timeout. */
static void watch_cb(uv_timer_t *t)
{
  struct uplink *u = t->data;
  uint64_t silent;
  char why[64];

  if (!u->up || !u->conn)
    return;
  silent = quic_conn_silence_ms(u->conn);
  if (silent < UPLINK_SILENCE_MS)
    return;
  snprintf(why, sizeof(why), "no answer for %llu ms",
           (unsigned long long)silent);
  quic_conn_close(u->conn, 0, why);
}

static void regt_cb(uv_timer_t *t)
{
  send_registrations(t->data);
}

static void send_registrations(struct uplink *u)
{
  uint8_t buf[4 + WIRE_SERVICE_ID_MAX];
  int pending = 0;

  for (size_t i = 0; i < u->cfg.nservices; i++) {
    int n;
    if (u->reg[i] != UPLINK_REG_PENDING)
      continue;
    if (u->attempts >= UPLINK_REG_ATTEMPTS) {
      u->reg[i] = UPLINK_REG_NO_ANSWER;
      log_warnx("%s: no answer to the registration of '%s' after %d "
                "attempts; it is retried after the next reconnect",
                u->cfg.name, u->cfg.services[i], UPLINK_REG_ATTEMPTS);
      if (u->cbs.registered)
        u->cbs.registered(u, i, u->reg[i], u->ud);
      continue;
    }
    n = wire_register_encode(buf, sizeof(buf), u->cfg.role,
                             u->cfg.services[i], strlen(u->cfg.services[i]));
    if (n > 0 && u->cfg.reg_flags && (size_t)n + 2 <= sizeof(buf)) {
      buf[n++] = WIRE_REG_EXT_MAGIC;
      buf[n++] = u->cfg.reg_flags;
    }
    if (n > 0)
      quic_conn_send_datagram(u->conn, buf, (size_t)n);
    pending = 1;
  }
  u->attempts++;
  if (pending)
    uv_timer_start(&u->regt, regt_cb,
                   UPLINK_REG_INTERVAL_MS, 0);
}

static void on_handshake(struct quic_conn *c, void *ud)
{
  struct uplink *u = ud;
  (void)c;

  u->up = 1;
  u->sig_sid = -1;
  wire_sigbuf_free(&u->sig);
  if (wire_sigbuf_init(&u->sig) < 0)
    u->sig.failed = 1;
  u->backoff_ms = UPLINK_BACKOFF_MIN_MS; /* only a completed handshake */
  u->attempts = 0;
  for (size_t i = 0; i < u->cfg.nservices; i++)
    u->reg[i] = UPLINK_REG_PENDING;
  {
    char a[64];
    log_info("%s: connected to %s", u->cfg.name,
             netaddr_str((struct sockaddr *)&u->cfg.server, a, sizeof(a)));
  }
  if (u->cbs.up)
    u->cbs.up(u, u->ud);
  send_registrations(u);
}

static void on_status(struct uplink *u, const uint8_t *d, size_t n)
{
  const uint8_t *id;
  size_t idlen;
  uint8_t type, status;

  if (wire_status_decode(d, n, &type, &status, &id, &idlen) < 0)
    return;
  for (size_t i = 0; i < u->cfg.nservices; i++) {
    const char *s = u->cfg.services[i];
    if (strlen(s) != idlen || memcmp(s, id, idlen) != 0 ||
        u->reg[i] != UPLINK_REG_PENDING)
      continue;
    if (type == WIRE_REG_ACK) {
      u->reg[i] = UPLINK_REG_OK;
      log_info("%s: service '%s' registered", u->cfg.name, s);
    } else {
      u->reg[i] = status == WIRE_NACK_DENIED ? UPLINK_REG_DENIED
                                             : UPLINK_REG_INVALID;
      log_warnx("%s: service '%s' refused: %s", u->cfg.name, s,
                status == WIRE_NACK_DENIED
                    ? "not authorized (check the certificate's SANs and "
                      "the intermediate's policy)"
                    : "invalid request");
    }
    if (u->cbs.registered)
      u->cbs.registered(u, i, u->reg[i], u->ud);
  }
}

static void on_datagram(struct quic_conn *c, const uint8_t *d, size_t n,
                        void *ud)
{
  struct uplink *u = ud;
  struct sockaddr_storage ss;
  (void)c;

  switch (wire_classify(d, n)) {
  case WIRE_KIND_QAD:
    if (wire_qad_decode(d, n, &ss) == 0 && u->cbs.qad)
      u->cbs.qad(u, (struct sockaddr *)&ss, u->ud);
    return;
  case WIRE_KIND_ACK:
  case WIRE_KIND_NACK:
    on_status(u, d, n);
    return;
  default:
    if (u->cbs.datagram)
      u->cbs.datagram(u, d, n, u->ud);
  }
}

static void on_sig(const struct wire_sig *m, void *ud)
{
  struct uplink *u = ud;
  if (u->cbs.signal)
    u->cbs.signal(u, m, u->ud);
}

/* Signaling rides the first bidirectional stream either side opened. */
static void on_stream(struct quic_conn *c, int64_t sid, const uint8_t *d,
                      size_t n, int fin, void *ud)
{
  struct uplink *u = ud;
  int rv;
  (void)c;
  (void)fin;

  if (u->sig_sid < 0 && (sid & 0x2) == 0)
    u->sig_sid = sid;
  if (sid != u->sig_sid || u->sig.failed)
    return;
  rv = wire_sigbuf_feed(&u->sig, d, n, on_sig, u);
  if (rv < 0)
    log_warnx("%s: signaling stream closed: %s", u->cfg.name,
              ztna_strerror(rv));
}

static void on_close(struct quic_conn *c, const struct quic_close_info *i,
                     void *ud)
{
  struct uplink *u = ud;
  (void)c;

  u->conn = NULL;
  uv_timer_stop(&u->regt);
  if (u->closing)
    log_info("%s: connection closed", u->cfg.name);
  else
    log_warnx("%s: connection %s: %s", u->cfg.name,
              u->up ? "lost" : "failed",
              i->reason[0] ? i->reason : ztna_strerror(i->err));
  u->up = 0;
  u->pick++;
  if (u->cbs.down)
    u->cbs.down(u, i, u->ud);
  if (u->closing)
    return;
  log_info("%s: reconnecting in %llu ms", u->cfg.name,
           (unsigned long long)u->backoff_ms);
  retry_later(u);
}

static const struct quic_conn_cbs conn_cbs = {
  .handshake_cb = on_handshake,
  .datagram_cb = on_datagram,
  .stream_cb = on_stream,
  .close_cb = on_close,
};

static void dial(struct uplink *u)
{
  int rv;

  if (u->reconnects++ > 0)
    log_debug("%s: connecting (attempt %llu)", u->cfg.name,
              (unsigned long long)u->reconnects);
  rv = quic_connect(&u->conn, u->cfg.ep, u->cfg.tls,
                    (struct sockaddr *)&u->cfg.server, u->cfg.sni, &conn_cbs,
                    u);
  if (rv < 0) {
    u->conn = NULL;
    log_warnx("%s: cannot connect: %s", u->cfg.name, ztna_strerror(rv));
    retry_later(u);
  }
}

static void resolved_cb(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res)
{
  struct uplink *u = req->data;
  char was[64], now[64];

  u->resolving = 0;
  if (--u->handles == 0) { /* deleted meanwhile, timers closed */
    uv_freeaddrinfo(res);
    uplink_free(u);
    return;
  }
  if (u->closing || u->conn) {
    uv_freeaddrinfo(res);
    return;
  }
  if (status < 0 || !res) {
    log_warnx("%s: cannot resolve %s: %s; trying again in %llu ms",
              u->cfg.name, u->host, uv_strerror(status),
              (unsigned long long)u->backoff_ms);
    uv_freeaddrinfo(res);
    retry_later(u);
    return;
  }
  /* The address after the one that failed last (getaddrinfo's order is
   * stable for the same answer). */
  size_t n = 0, k;
  struct addrinfo *a = res;
  for (struct addrinfo *p = res; p; p = p->ai_next)
    n++;
  k = u->pick % n;
  for (size_t i = 0; i < k; i++)
    a = a->ai_next;
  netaddr_str((struct sockaddr *)&u->cfg.server, was, sizeof(was));
  memset(&u->cfg.server, 0, sizeof(u->cfg.server));
  memcpy(&u->cfg.server, a->ai_addr,
         a->ai_addrlen < sizeof(u->cfg.server) ? a->ai_addrlen
                                               : sizeof(u->cfg.server));
  uv_freeaddrinfo(res);
  netaddr_str((struct sockaddr *)&u->cfg.server, now, sizeof(now));
  if (strcmp(was, now) && n > 1)
    log_info("%s: trying %s at %s (address %zu of %zu; was %s)",
             u->cfg.name, u->host, now, k + 1, n, was);
  else if (strcmp(was, now))
    log_info("%s: %s is at %s now (was %s)", u->cfg.name, u->host, now,
             was);
  dial(u);
}

/* Connects, after looking the intermediate's name up again when it has
 * one (off the loop: uv_getaddrinfo runs in libuv's thread pool). */
static void connect_now(struct uplink *u)
{
  struct addrinfo hints;

  if (u->closing || u->conn || u->resolving)
    return;
  if (!u->host[0]) {
    dial(u);
    return;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = u->cfg.server.ss_family; /* our socket's family */
  hints.ai_socktype = SOCK_DGRAM;
  u->gai.data = u;
  if (uv_getaddrinfo(u->loop, &u->gai, resolved_cb, u->host, u->port,
                     &hints) < 0) {
    dial(u); /* the last address it had */
    return;
  }
  u->resolving = 1;
  u->handles++;
}

int uplink_new(struct uplink **out, uv_loop_t *loop,
               const struct uplink_config *cfg, const struct uplink_cbs *cbs,
               void *ud)
{
  struct uplink *u;

  *out = NULL;
  if (cfg->nservices > UPLINK_MAX_SERVICES)
    return ZTNA_ERR_LIMIT;
  u = calloc(1, sizeof(*u));
  if (!u)
    return -ENOMEM;
  u->loop = loop;
  u->cfg = *cfg;
  u->cbs = *cbs;
  if (cfg->host && strlen(cfg->host) < sizeof(u->host)) {
    snprintf(u->host, sizeof(u->host), "%s", cfg->host);
    snprintf(u->port, sizeof(u->port), "%u", (unsigned)cfg->port);
  }
  u->cfg.host = NULL; /* ours is u->host */
  u->ud = ud;
  tls_ctx_ref(u->cfg.tls);
  u->backoff_ms = UPLINK_BACKOFF_MIN_MS;
  uv_timer_init(loop, &u->retry);
  uv_timer_init(loop, &u->regt);
  uv_timer_init(loop, &u->watch);
  u->retry.data = u->regt.data = u->watch.data = u;
  u->handles = 3;
  uv_timer_start(&u->watch, watch_cb, 1000, 1000);
  u->sig_sid = -1;
  if (wire_sigbuf_init(&u->sig) < 0)
    u->sig.failed = 1;
  *out = u;
  /* Through the loop, so that the caller finishes setting up first. */
  uv_timer_start(&u->retry, retry_cb, 0, 0);
  return 0;
}

static void timer_closed(uv_handle_t *h)
{
  struct uplink *u = h->data;
  if (--u->handles == 0)
    uplink_free(u);
}

void uplink_del(struct uplink *u, const char *reason)
{
  if (!u)
    return;
  u->closing = 1;
  if (u->conn)
    quic_conn_close(u->conn, 0, reason);
  u->conn = NULL;
  if (u->resolving)
    uv_cancel((uv_req_t *)&u->gai); /* its callback still comes */
  uv_close((uv_handle_t *)&u->retry, timer_closed);
  uv_close((uv_handle_t *)&u->regt, timer_closed);
  uv_close((uv_handle_t *)&u->watch, timer_closed);
}

int uplink_send(struct uplink *u, const struct iovec *iov, int iovcnt)
{
  if (!u || !u->up || !u->conn)
    return ZTNA_ERR_STATE;
  return quic_conn_send_datagramv(u->conn, iov, iovcnt);
}

int uplink_send_session(struct uplink *u, uint64_t sid, const uint8_t *d,
                        size_t n)
{
  uint8_t hdr[WIRE_SESSION_HDR_LEN];
  struct iovec iov[2] = { { hdr, sizeof(hdr) },
                          { (void *)(uintptr_t)d, n } };

  wire_session_data_header(hdr, sizeof(hdr), sid);
  return uplink_send(u, iov, 2);
}

int uplink_send_signal(struct uplink *u, const struct wire_sig *m)
{
  static uint8_t buf[4 + WIRE_SIG_PAYLOAD_MAX];
  int n, rv;

  if (!u || !u->up || !u->conn)
    return ZTNA_ERR_STATE;
  n = wire_sig_frame(buf, sizeof(buf), m);
  if (n < 0)
    return n;
  if (u->sig_sid < 0 && (rv = quic_conn_open_stream(u->conn, &u->sig_sid)) < 0)
    return rv;
  return quic_conn_stream_send(u->conn, u->sig_sid, buf, (size_t)n, 0);
}

size_t uplink_max_datagram(struct uplink *u)
{
  return u && u->up && u->conn ? quic_conn_max_datagram(u->conn) : 0;
}

int uplink_is_up(struct uplink *u)
{
  return u && u->up;
}

enum uplink_reg uplink_reg_state(struct uplink *u, size_t svc)
{
  return svc < u->cfg.nservices ? u->reg[svc] : UPLINK_REG_INVALID;
}

void uplink_set_tls(struct uplink *u, struct tls_ctx *tls)
{
  tls_ctx_ref(tls);
  tls_ctx_unref(u->cfg.tls);
  u->cfg.tls = tls;
}

void uplink_register_again(struct uplink *u, size_t svc)
{
  if (!u || !u->up || svc >= u->cfg.nservices)
    return;
  u->reg[svc] = UPLINK_REG_PENDING;
  u->attempts = 0;
  send_registrations(u);
}

uint64_t uplink_reconnects(struct uplink *u)
{
  return u->reconnects > 0 ? u->reconnects - 1 : 0;
}

const struct sockaddr_storage *uplink_server(struct uplink *u)
{
  return &u->cfg.server;
}

struct quic_conn *uplink_conn(struct uplink *u)
{
  return u ? u->conn : NULL;
}
