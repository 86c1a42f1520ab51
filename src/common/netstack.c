/* netstack.c - lwIP glue and TCP splicing for the connector. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <lwip/init.h>
#include <lwip/ip.h>
#include <lwip/netif.h>
#include <lwip/pbuf.h>
#include <lwip/sys.h>
#include <lwip/tcp.h>
#include <lwip/timeouts.h>

#include "err.h"
#include "ippkt.h"
#include "log.h"
#include "netstack.h"

#define MAX_LISTENERS 16
#define HASH_BUCKETS 4096 /* a power of two */
/* A mapping's index (its synthetic address) is not handed out again for
 * this long after it was freed: lwIP may still hold a half-open pcb for
 * it (SYN_RCVD lives up to 20 s), whose segments must never reach the
 * agent that would get the index next. */
#define MAP_QUARANTINE_MS 30000
#define LOCAL_ADDR 0x0afffffeu /* 10.255.255.254: lwIP's own address */
#define SYNTH_BASE 0x0afe0000u /* 10.254.0.0/16: synthetic sources */
#define SYNTH_MAX 65536
/* The same for IPv6: lwIP is fd7a:7a74:6e61:ffff::1, synthetic sources
 * are fd7a:7a74:6e61:fffe::/96 plus the mapping's index. Neither ever
 * leaves the process. */
static const uint8_t LOCAL6[16] = { 0xfd, 0x7a, 0x7a, 0x74, 0x6e, 0x61,
                                    0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1 };
static const uint8_t SYNTH6[12] = { 0xfd, 0x7a, 0x7a, 0x74, 0x6e, 0x61,
                                    0xff, 0xfe, 0, 0, 0, 0 };

enum { S_PENDING, S_CONNECTED, S_OPEN, S_DEAD };

/* One agent (the caller's conn) with TCP state here: its quota and its
 * SYN token bucket, so that varying the addresses gains it nothing. */
struct owner {
  struct owner *hnext;
  void *conn;
  size_t sessions;   /* sessions of this owner, all states */
  struct session *list; /* the same, linked by onext */
  unsigned maps;     /* mappings in use */
  uint64_t tokens_ms; /* SYN token bucket: time of the last refill */
  double tokens;
};

struct mapping {
  struct owner *owner; /* NULL: free */
  uint32_t hnext;      /* hash chain (UINT32_MAX ends it) */
  int version;         /* 4 or 6 */
  uint8_t agent[16], vip[16];
  unsigned refs;
  uint64_t freed_ms;
};

struct session {
  struct session *next, *prev;   /* all sessions */
  struct session *hnext;         /* hash chain */
  struct session *onext, *oprev; /* the owner's sessions */
  struct owner *owner;
  struct netstack *ns;
  uint32_t map; /* index into ns->maps */
  uint16_t sport, vport;
  int state;
  struct tcp_pcb *pcb;
  uv_tcp_t backend;
  uv_connect_t creq;
  uv_timer_t timer;
  uv_shutdown_t sreq;
  uint8_t *syn;
  size_t synlen;
  int handles;
  int agent_fin, backend_eof, backend_shut, lwip_fin, reading;
  err_t lwip_err;  /* what lwIP reported as it let go of the pcb */
  u8_t nrtx, probes; /* retransmissions, zero-window probes last logged */
  size_t inflight; /* bytes for the backend, not yet written */
  uint8_t *pending; /* backend bytes lwIP has not taken yet */
  size_t pendlen;
  /* The agent's bytes lwIP gave us this loop round, written to the
   * backend in one go when the round's I/O is done (flush_cb). */
  struct wreq *wfirst, *wlast;
  size_t nw;
  struct session *wnext; /* on ns->wq */
  int wqueued;
};

/* Bytes for the backend. A write is a chain of them: the first one's req
 * is the write's, its completion frees the chain. */
struct wreq {
  uv_write_t req;
  struct session *s;
  struct wreq *next;
  size_t len;
  uint8_t data[];
};

/* At most this many pieces in one write to the backend. */
#define WRITE_BATCH 64

struct netstack {
  uv_loop_t *loop;
  struct netstack_io io;
  struct netif netif;
  uv_timer_t tick;
  struct mapping *maps;
  size_t nmaps_max;
  uint32_t map_hash[HASH_BUCKETS];
  uint32_t *free_ring; /* free mapping indexes, oldest first */
  size_t free_head, free_count;
  struct owner *owners[HASH_BUCKETS];
  struct session *sessions;
  struct session *session_hash[HASH_BUCKETS];
  size_t nsessions, max_sessions, max_per_owner;
  unsigned syn_rate;
  /* What came for the backends (ns->wq) is written once the round's I/O
   * is handled (uv_check), or, queued outside the I/O phase, before the
   * loop waits again (uv_prepare). */
  uv_check_t flush;
  uv_prepare_t flush_pre;
  struct session *wq;
  int handles;          /* open: tick, flush, flush_pre */
  struct tcp_pcb *listeners[MAX_LISTENERS];
  uint16_t listen_ports[MAX_LISTENERS];
  struct netstack_stats st;
  uint8_t out[65536];
};

static struct netstack *the; /* lwIP is global; so is its one user */
static u8_t ext_id = LWIP_TCP_PCB_NUM_EXT_ARG_ID_INVALID; /* our pcb slot */

static void schedule(struct netstack *ns);

u32_t sys_now(void)
{
  return the ? (u32_t)uv_now(the->loop) : 0;
}

static void put32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

/* --- owners and mappings --------------------------------------------------- */

static uint32_t hash_bytes(uint32_t h, const void *p, size_t n)
{
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 16777619u;
  return h;
}

static uint32_t ptr_hash(const void *conn)
{
  uintptr_t v = (uintptr_t)conn;
  return hash_bytes(2166136261u, &v, sizeof(v)) & (HASH_BUCKETS - 1);
}

static struct owner *owner_find(struct netstack *ns, void *conn)
{
  struct owner *o = ns->owners[ptr_hash(conn)];
  while (o && o->conn != conn)
    o = o->hnext;
  return o;
}

static struct owner *owner_get(struct netstack *ns, void *conn)
{
  struct owner *o = owner_find(ns, conn);
  uint32_t h;

  if (o)
    return o;
  o = calloc(1, sizeof(*o));
  if (!o)
    return NULL;
  o->conn = conn;
  o->tokens = ns->syn_rate;
  o->tokens_ms = uv_now(ns->loop);
  h = ptr_hash(conn);
  o->hnext = ns->owners[h];
  ns->owners[h] = o;
  return o;
}

/* Frees an owner that has nothing left here. */
static void owner_put(struct netstack *ns, struct owner *o)
{
  struct owner **pp;

  if (o->sessions || o->maps)
    return;
  for (pp = &ns->owners[ptr_hash(o->conn)]; *pp; pp = &(*pp)->hnext)
    if (*pp == o) {
      *pp = o->hnext;
      break;
    }
  free(o);
}

static uint32_t map_bucket(void *conn, int version, const uint8_t *agent,
                           const uint8_t *vip)
{
  uintptr_t v = (uintptr_t)conn;
  size_t alen = version == 4 ? 4 : 16;
  uint32_t h = hash_bytes(2166136261u, &v, sizeof(v));

  h = hash_bytes(h, agent, alen);
  return hash_bytes(h, vip, alen) & (HASH_BUCKETS - 1);
}

static struct mapping *map_lookup(struct netstack *ns, void *conn,
                                  int version, const uint8_t *agent,
                                  const uint8_t *vip, uint32_t *idx)
{
  size_t alen = version == 4 ? 4 : 16;
  uint32_t i = ns->map_hash[map_bucket(conn, version, agent, vip)];

  for (; i != UINT32_MAX; i = ns->maps[i].hnext) {
    struct mapping *m = &ns->maps[i];
    if (m->owner->conn == conn && m->version == version &&
        !memcmp(m->agent, agent, alen) && !memcmp(m->vip, vip, alen)) {
      *idx = i;
      return m;
    }
  }
  return NULL;
}

/* A new mapping for owner o: the index freed longest ago, if its
 * quarantine is over. NULL when none is free. */
static struct mapping *map_new(struct netstack *ns, struct owner *o,
                               int version, const uint8_t *agent,
                               const uint8_t *vip, uint32_t *idx)
{
  size_t alen = version == 4 ? 4 : 16;
  uint32_t i, b;
  struct mapping *m;

  if (ns->free_count == 0)
    return NULL;
  i = ns->free_ring[ns->free_head];
  m = &ns->maps[i];
  if (m->freed_ms && uv_now(ns->loop) - m->freed_ms < MAP_QUARANTINE_MS)
    return NULL;
  ns->free_head = (ns->free_head + 1) % ns->nmaps_max;
  ns->free_count--;
  memset(m, 0, sizeof(*m));
  m->owner = o;
  m->version = version;
  memcpy(m->agent, agent, alen);
  memcpy(m->vip, vip, alen);
  b = map_bucket(o->conn, version, agent, vip);
  m->hnext = ns->map_hash[b];
  ns->map_hash[b] = i;
  o->maps++;
  *idx = i;
  return m;
}

static void map_release(struct netstack *ns, uint32_t idx)
{
  struct mapping *m = &ns->maps[idx];
  struct owner *o = m->owner;
  uint32_t *pp = &ns->map_hash[map_bucket(o->conn, m->version, m->agent,
                                          m->vip)];

  while (*pp != UINT32_MAX && *pp != idx)
    pp = &ns->maps[*pp].hnext;
  if (*pp == idx)
    *pp = m->hnext;
  m->owner = NULL;
  m->freed_ms = uv_now(ns->loop);
  if (!m->freed_ms)
    m->freed_ms = 1;
  ns->free_ring[(ns->free_head + ns->free_count) % ns->nmaps_max] = idx;
  ns->free_count++;
  o->maps--;
  owner_put(ns, o);
}

static void map_unref(struct netstack *ns, uint32_t idx)
{
  if (ns->maps[idx].refs > 0 && --ns->maps[idx].refs == 0)
    map_release(ns, idx);
}

/* --- lwIP output: back to real addresses -------------------------------- */

static void to_agent(struct netstack *ns, uint8_t *pkt, size_t n)
{
  struct ippkt ip;
  uint32_t synth, idx;
  struct mapping *m;

  if (ippkt_parse(pkt, n, &ip) < 0)
    return;
  if (ip.version == 4) {
    synth = get32(ip.dst);
    if (synth < SYNTH_BASE)
      return;
    idx = synth - SYNTH_BASE;
  } else {
    if (memcmp(ip.dst, SYNTH6, sizeof(SYNTH6)))
      return;
    idx = get32(ip.dst + 12);
  }
  if (idx >= ns->nmaps_max)
    return;
  m = &ns->maps[idx];
  if (!m->owner || m->version != ip.version)
    return;
  ippkt_rewrite_addr(pkt, n, 0, m->vip);
  ippkt_rewrite_addr(pkt, n, 1, m->agent);
  ns->io.send(m->owner->conn, pkt, n, ns->io.ud);
}

static err_t netif_output_cb(struct netif *netif, struct pbuf *p,
                             const ip4_addr_t *dst)
{
  struct netstack *ns = netif->state;
  u16_t n = p->tot_len;
  (void)dst;

  if (pbuf_copy_partial(p, ns->out, n, 0) != n)
    return ERR_BUF;
  to_agent(ns, ns->out, n);
  return ERR_OK;
}

static err_t netif_output6_cb(struct netif *netif, struct pbuf *p,
                              const ip6_addr_t *dst)
{
  (void)dst;
  return netif_output_cb(netif, p, NULL);
}

static err_t netif_init_cb(struct netif *netif)
{
  netif->name[0] = 'z';
  netif->name[1] = 't';
  netif->mtu = 1500;
  netif->output = netif_output_cb;
  netif->output_ip6 = netif_output6_cb;
  return ERR_OK;
}

/* --- sessions ------------------------------------------------------------ */

static uint32_t session_bucket(uint32_t map, uint16_t sport, uint16_t vport)
{
  uint32_t h = map * 2654435761u ^ ((uint32_t)sport << 16 | vport);
  return (h ^ h >> 15) * 2246822519u >> 20 & (HASH_BUCKETS - 1);
}

static struct session *session_find(struct netstack *ns, uint32_t map,
                                    uint16_t sport, uint16_t vport)
{
  struct session *s = ns->session_hash[session_bucket(map, sport, vport)];

  while (s && !(s->map == map && s->sport == sport && s->vport == vport))
    s = s->hnext;
  return s;
}

static void wchain_free(struct wreq *w)
{
  while (w) {
    struct wreq *next = w->next;
    free(w);
    w = next;
  }
}

static void handle_closed(uv_handle_t *h)
{
  struct session *s = h->data;

  if (--s->handles > 0)
    return;
  wchain_free(s->wfirst);
  free(s->syn);
  free(s->pending);
  free(s);
}

/* Takes the session out and closes its handles; the lwIP side must already
 * be detached (pcb NULL). */
static void session_free(struct session *s, int reset_backend)
{
  struct netstack *ns = s->ns;

  if (s->state == S_DEAD)
    return;
  s->state = S_DEAD;
  if (s->wqueued) {
    struct session **pp = &ns->wq;
    while (*pp != s)
      pp = &(*pp)->wnext;
    *pp = s->wnext;
    s->wqueued = 0;
  }
  if (s->prev)
    s->prev->next = s->next;
  else
    ns->sessions = s->next;
  if (s->next)
    s->next->prev = s->prev;
  {
    struct session **pp =
        &ns->session_hash[session_bucket(s->map, s->sport, s->vport)];
    while (*pp && *pp != s)
      pp = &(*pp)->hnext;
    if (*pp)
      *pp = s->hnext;
  }
  if (s->oprev)
    s->oprev->onext = s->onext;
  else
    s->owner->list = s->onext;
  if (s->onext)
    s->onext->oprev = s->oprev;
  s->owner->sessions--;
  ns->nsessions--;
  ns->st.sessions_active = ns->nsessions;
  map_unref(ns, s->map); /* may free the owner */
  uv_close((uv_handle_t *)&s->timer, handle_closed);
  /* uv_tcp_close_reset refuses a handle that is shutting down (the
   * agent's FIN was passed on) and then closes nothing: close it plainly
   * then, or the handle and the session would stay for good. */
  if (!reset_backend || !uv_is_active((uv_handle_t *)&s->backend) ||
      uv_tcp_close_reset(&s->backend, handle_closed) < 0)
    uv_close((uv_handle_t *)&s->backend, handle_closed);
}

static void detach_pcb(struct session *s)
{
  if (!s->pcb)
    return;
  tcp_arg(s->pcb, NULL);
  tcp_recv(s->pcb, NULL);
  tcp_sent(s->pcb, NULL);
  tcp_err(s->pcb, NULL);
  tcp_poll(s->pcb, NULL, 0);
  tcp_ext_arg_set(s->pcb, ext_id, NULL);
  s->pcb = NULL;
}

/* Resets the agent side (RST) and the backend, then frees. */
static void session_abort(struct session *s, const char *why)
{
  struct tcp_pcb *pcb = s->pcb;

  log_debug("tcp: port %u to %u: reset: %s", s->sport, s->vport, why);
  s->ns->st.resets++;
  detach_pcb(s);
  if (pcb)
    tcp_abort(pcb);
  session_free(s, 1);
}

/* Both directions are done once the agent sent its FIN, the backend has
 * every byte, and lwIP sent our FIN. The session (and with it the mapping
 * that routes lwIP's segments to this agent) lives on until lwIP has
 * delivered everything: either the pcb reaches TIME_WAIT (all our data
 * and FIN acknowledged; we free it there without a RST), or LAST_ACK ends
 * and lwIP reports ERR_CLSD through lwip_err. Never tcp_close() with data
 * unacknowledged: the retransmissions would lose their way.
 * Returns 1 when it aborted the pcb (inside an lwIP callback the caller
 * must then return ERR_ABRT). */
static void session_timer(uv_timer_t *t);

static int maybe_finish(struct session *s)
{
  struct tcp_pcb *pcb = s->pcb;

  if (s->state != S_OPEN || !s->agent_fin || !s->lwip_fin ||
      s->inflight > 0 || s->pendlen > 0)
    return 0;
  if (pcb && pcb->state != TIME_WAIT && pcb->state != CLOSED) {
    /* Our data or FIN is still unacknowledged: wait. CLOSING moves to
     * TIME_WAIT without a callback when only our FIN was outstanding, so
     * look again now and then (lwIP keeps a TIME_WAIT pcb for minutes,
     * far longer than this). */
    if (!uv_is_active((uv_handle_t *)&s->timer))
      uv_timer_start(&s->timer, session_timer, 200, 200);
    return 0;
  }
  detach_pcb(s);
  if (pcb)
    tcp_abort(pcb); /* TIME_WAIT: freed at once, no RST */
  session_free(s, 0);
  return pcb != NULL;
}

/* --- backend to agent ------------------------------------------------------ */

/* Whether the end of stream libuv reported was a reset: libuv takes a
 * hang-up after a partial read for the end without reading again, and a
 * reset that came without a FIN is then still waiting in the socket. A
 * peek reads it (0 is a FIN). Returns a libuv error code, or 0. */
static int backend_reset(struct session *s)
{
  uv_os_fd_t fd;
  char c;
  ssize_t r;

  if (uv_fileno((uv_handle_t *)&s->backend, &fd) < 0)
    return 0;
  do
    r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    return uv_translate_sys_error(errno);
  return 0;
}

static void start_reading(struct session *s);

/* Pushes pending backend bytes into lwIP; returns 0 when all went. */
static int flush_pending(struct session *s)
{
  while (s->pendlen > 0 && s->pcb) {
    u16_t room = tcp_sndbuf(s->pcb);
    size_t k = s->pendlen < room ? s->pendlen : room;
    err_t e;

    if (k == 0)
      return -1;
    e = tcp_write(s->pcb, s->pending, (u16_t)k, TCP_WRITE_FLAG_COPY);
    if (e == ERR_MEM)
      return -1;
    if (e != ERR_OK) {
      session_abort(s, "lwIP refused the backend's bytes");
      return -2;
    }
    memmove(s->pending, s->pending + k, s->pendlen - k);
    s->pendlen -= k;
    s->ns->st.to_agent += k;
  }
  if (s->pcb)
    tcp_output(s->pcb);
  return s->pendlen ? -1 : 0;
}

/* Returns 1 when the pcb was aborted (see maybe_finish). */
static int send_fin_to_agent(struct session *s)
{
  if (s->backend_eof && !s->lwip_fin && s->pendlen == 0 && s->pcb) {
    tcp_shutdown(s->pcb, 0, 1);
    s->lwip_fin = 1;
  }
  return maybe_finish(s);
}

static void backend_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
  struct session *s = h->data;
  size_t room = s->pcb && s->pendlen == 0 ? tcp_sndbuf(s->pcb) : 0;
  (void)hint;

  buf->base = room ? malloc(room) : NULL;
  buf->len = buf->base ? room : 0;
}

static void backend_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
  struct session *s = st->data;

  if (n == UV_ENOBUFS || n == 0) {
    /* lwIP's send buffer is full: wait for tcp_sent. */
    if (n == UV_ENOBUFS) {
      uv_read_stop(st);
      s->reading = 0;
    }
    free(buf->base);
    return;
  }
  if (n < 0) {
    int reset = n == UV_EOF ? backend_reset(s) : 0;

    free(buf->base);
    if (reset) {
      /* The agent must see a reset: as a FIN, a cut response would
       * pass for a whole one with any protocol that reads to the end. */
      session_abort(s, uv_strerror(reset));
    } else if (n == UV_EOF) {
      uv_read_stop(st);
      s->reading = 0;
      s->backend_eof = 1;
      (void)send_fin_to_agent(s);
    } else {
      session_abort(s, uv_strerror((int)n));
    }
    return;
  }
  /* The read buffer becomes the pending buffer (backend_alloc only reads
   * while nothing is pending); it is freed once lwIP took all of it. */
  free(s->pending);
  s->pending = (uint8_t *)buf->base;
  s->pendlen = (size_t)n;
  switch (flush_pending(s)) {
  case 0:
    free(s->pending);
    s->pending = NULL;
    break;
  case -1:
    uv_read_stop(st);
    s->reading = 0;
    break;
  }
}

static void start_reading(struct session *s)
{
  if (s->reading || s->backend_eof || s->state != S_OPEN)
    return;
  if (uv_read_start((uv_stream_t *)&s->backend, backend_alloc,
                    backend_read) == 0)
    s->reading = 1;
}

static err_t lwip_sent(void *arg, struct tcp_pcb *pcb, u16_t len)
{
  struct session *s = arg;
  (void)pcb;
  (void)len;

  if (!s)
    return ERR_OK;
  if (s->pendlen > 0) {
    int rv = flush_pending(s);
    if (rv == -2)
      return ERR_ABRT;
    if (rv < 0)
      return ERR_OK;
    free(s->pending);
    s->pending = NULL;
  }
  if (s->backend_eof)
    return send_fin_to_agent(s) ? ERR_ABRT : ERR_OK;
  start_reading(s);
  return ERR_OK;
}

/* lwIP's heap or segment pool can run out for a moment (many connections
 * at once); then tcp_write fails with nothing in flight and no tcp_sent
 * will come. The poll callback (every slow-timer tick, 20 ms here)
 * retries. */
static err_t lwip_poll(void *arg, struct tcp_pcb *pcb)
{
  struct session *s = arg;

  /* An agent that stops answering: say so as it happens (lwIP gives up
   * after TCP_MAXRTX of either, and the reset would come unexplained). */
  if (s && (pcb->nrtx != s->nrtx || pcb->persist_probe != s->probes)) {
    if (pcb->nrtx >= 3 || pcb->persist_probe >= 3)
      log_debug("tcp: port %u to %u: %u retransmissions, %u zero-window "
                "probes unanswered (window %u, %u bytes unacknowledged, "
                "state %d)",
                s->sport, s->vport, pcb->nrtx, pcb->persist_probe,
                (unsigned)pcb->snd_wnd, (unsigned)(pcb->snd_nxt - pcb->lastack),
                (int)pcb->state);
    s->nrtx = pcb->nrtx;
    s->probes = pcb->persist_probe;
  }
  return lwip_sent(arg, pcb, 0);
}

/* --- agent to backend ------------------------------------------------------ */

static void backend_shutdown_cb(uv_shutdown_t *req, int status)
{
  (void)req;
  (void)status;
}

static void backend_written(uv_write_t *req, int status)
{
  struct wreq *w = (struct wreq *)req;
  struct session *s = w->s;
  size_t len = 0;

  for (struct wreq *p = w; p; p = p->next)
    len += p->len;
  wchain_free(w);
  if (s->state == S_DEAD)
    return;
  s->inflight -= len;
  if (status < 0) {
    session_abort(s, uv_strerror(status));
    return;
  }
  /* The backend has the bytes: open the agent's window again. */
  while (len > 0 && s->pcb) {
    u16_t k = len > 0xffff ? 0xffff : (u16_t)len;
    tcp_recved(s->pcb, k);
    len -= k;
  }
  if (s->agent_fin && s->inflight == 0 && !s->backend_shut) {
    s->backend_shut = 1;
    uv_shutdown(&s->sreq, (uv_stream_t *)&s->backend, backend_shutdown_cb);
  }
  (void)maybe_finish(s);
}

/* Writes the session's queued pieces to the backend, in one write.
 * Returns -1 when that failed and the session is gone. */
static int session_flush(struct session *s)
{
  uv_buf_t b[WRITE_BATCH];
  struct wreq *w = s->wfirst;
  unsigned n = 0;

  if (!w)
    return 0;
  for (struct wreq *p = w; p; p = p->next)
    b[n++] = uv_buf_init((char *)p->data, (unsigned)p->len);
  s->wfirst = s->wlast = NULL;
  s->nw = 0;
  s->ns->st.backend_writes++;
  if (uv_write(&w->req, (uv_stream_t *)&s->backend, b, n,
               backend_written) < 0) {
    wchain_free(w);
    session_abort(s, "cannot write to the backend");
    return -1;
  }
  return 0;
}

static void flush_all(struct netstack *ns)
{
  while (ns->wq) {
    struct session *s = ns->wq;
    ns->wq = s->wnext;
    s->wqueued = 0;
    session_flush(s);
  }
  uv_check_stop(&ns->flush);
  uv_prepare_stop(&ns->flush_pre);
}

static void flush_cb(uv_check_t *h)
{
  flush_all(h->data);
}

static void flush_pre_cb(uv_prepare_t *h)
{
  flush_all(h->data);
}

static err_t lwip_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p,
                       err_t err)
{
  struct session *s = arg;
  struct wreq *w;
  (void)pcb;
  (void)err;

  if (!s) {
    if (p)
      pbuf_free(p);
    return ERR_OK;
  }
  if (!p) {
    /* The agent finished sending: pass the FIN on once written. */
    s->agent_fin = 1;
    if (s->inflight == 0 && !s->backend_shut) {
      s->backend_shut = 1;
      uv_shutdown(&s->sreq, (uv_stream_t *)&s->backend, backend_shutdown_cb);
    }
    return maybe_finish(s) ? ERR_ABRT : ERR_OK;
  }
  w = malloc(sizeof(*w) + p->tot_len);
  if (!w) {
    pbuf_free(p);
    session_abort(s, "out of memory");
    return ERR_ABRT;
  }
  w->s = s;
  w->next = NULL;
  w->len = p->tot_len;
  pbuf_copy_partial(p, w->data, p->tot_len, 0);
  pbuf_free(p);
  if (s->wlast)
    s->wlast->next = w;
  else
    s->wfirst = w;
  s->wlast = w;
  s->inflight += w->len;
  s->ns->st.to_backend += w->len;
  if (++s->nw == WRITE_BATCH)
    return session_flush(s) < 0 ? ERR_ABRT : ERR_OK;
  if (!s->wqueued) {
    s->wqueued = 1;
    s->wnext = s->ns->wq;
    s->ns->wq = s;
    uv_check_start(&s->ns->flush, flush_cb);
    uv_prepare_start(&s->ns->flush_pre, flush_pre_cb);
  }
  return ERR_OK;
}

/* lwIP let go of the pcb. Its two ways of saying so (the err callback:
 * ERR_CLSD when LAST_ACK ended normally, else an RST or lwIP giving up;
 * and the ext-arg destroy callback, which also covers a TIME_WAIT pcb
 * reused under pressure) come in either order within one lwIP call, so
 * neither frees the session: the session timer does, from the loop. */
static void pcb_gone(struct session *s, err_t err)
{
  s->pcb = NULL;
  if (err != ERR_OK)
    s->lwip_err = err;
  uv_timer_start(&s->timer, session_timer, 0, 0);
}

/* Why lwIP let go of a pcb whose session had not finished. */
static const char *lwip_why(err_t err)
{
  switch (err) {
  case ERR_RST:
    return "the agent reset it";
  case ERR_ABRT:
    return "the agent stopped answering (retransmissions or zero-window "
           "probes ran out)";
  case ERR_CLSD:
    return "closed before both sides were done";
  case ERR_OK:
    return "lwIP reused it";
  default:
    return "lwIP gave up on it";
  }
}

static void lwip_err(void *arg, err_t err)
{
  if (arg)
    pcb_gone(arg, err);
}

static void pcb_destroyed(u8_t id, void *data)
{
  (void)id;
  if (data)
    pcb_gone(data, ERR_OK);
}

static const struct tcp_ext_arg_callbacks ext_cbs = { pcb_destroyed, NULL };

/* The mapping index behind a synthetic source address of lwIP's. */
static int synth_index(struct netstack *ns, const ip_addr_t *a, uint32_t *idx)
{
  if (IP_IS_V6(a)) {
    uint8_t b[16];
    memcpy(b, ip_2_ip6(a)->addr, 16);
    if (memcmp(b, SYNTH6, sizeof(SYNTH6)))
      return -1;
    *idx = get32(b + 12);
  } else {
    uint32_t synth = ntohl(ip_2_ip4(a)->addr);
    if (synth < SYNTH_BASE)
      return -1;
    *idx = synth - SYNTH_BASE;
  }
  return *idx < ns->nmaps_max ? 0 : -1;
}

static err_t lwip_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
  struct netstack *ns = arg;
  struct session *s;
  uint32_t idx;
  (void)err;

  if (synth_index(ns, &pcb->remote_ip, &idx) < 0)
    goto refuse;
  s = session_find(ns, idx, pcb->remote_port, pcb->local_port);
  if (!s || s->state != S_CONNECTED)
    goto refuse;
  s->pcb = pcb;
  s->state = S_OPEN;
  uv_timer_stop(&s->timer);
  tcp_arg(pcb, s);
  tcp_recv(pcb, lwip_recv);
  tcp_sent(pcb, lwip_sent);
  tcp_err(pcb, lwip_err);
  tcp_poll(pcb, lwip_poll, 1);
  tcp_ext_arg_set_callbacks(pcb, ext_id, &ext_cbs);
  tcp_ext_arg_set(pcb, ext_id, s);
  tcp_nagle_disable(pcb);
  ns->st.sessions_total++;
  start_reading(s);
  return ERR_OK;
refuse:
  tcp_abort(pcb);
  return ERR_ABRT;
}

/* --- connection setup ------------------------------------------------------ */

static void feed(struct netstack *ns, const uint8_t *pkt, size_t n)
{
  struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)n, PBUF_POOL);

  if (!p)
    return; /* the agent retransmits */
  pbuf_take(p, pkt, (u16_t)n);
  if (ns->netif.input(p, &ns->netif) != ERR_OK)
    pbuf_free(p);
  schedule(ns);
}

static int ensure_listener(struct netstack *ns, uint16_t port)
{
  struct tcp_pcb *pcb;

  for (int i = 0; i < MAX_LISTENERS; i++)
    if (ns->listeners[i] && ns->listen_ports[i] == port)
      return 0;
  for (int i = 0; i < MAX_LISTENERS; i++) {
    if (ns->listeners[i])
      continue;
    pcb = tcp_new_ip_type(IPADDR_TYPE_ANY); /* IPv4 and IPv6 */
    if (!pcb)
      return -1;
    if (tcp_bind(pcb, IP_ANY_TYPE, port) != ERR_OK) {
      tcp_close(pcb);
      return -1;
    }
    ns->listeners[i] = tcp_listen_with_backlog(pcb, 255);
    if (!ns->listeners[i])
      return -1;
    ns->listen_ports[i] = port;
    tcp_arg(ns->listeners[i], ns);
    tcp_accept(ns->listeners[i], lwip_accept);
    return 0;
  }
  return -1;
}

/* Sends the agent a RST for the held SYN. */
static void refuse(struct session *s)
{
  uint8_t rst[80];
  int n = ippkt_build_rst(rst, sizeof(rst), s->syn, s->synlen);

  if (n > 0)
    to_agent(s->ns, rst, (size_t)n);
}

/* The session's one timer: the backend's connect timeout, the agent's
 * handshake timeout, and the wait for lwIP to finish a closed session. */
static void session_timer(uv_timer_t *t)
{
  struct session *s = t->data;

  if (s->state == S_OPEN && !s->pcb) {
    /* lwIP is done with it: cleanly when both sides closed and LAST_ACK
     * ended (ERR_CLSD) or a TIME_WAIT pcb was reused; else a reset. */
    int clean = s->agent_fin && s->lwip_fin &&
                (s->lwip_err == ERR_CLSD || s->lwip_err == ERR_OK);
    if (!clean) {
      log_debug("tcp: port %u to %u: reset: %s", s->sport, s->vport,
                lwip_why(s->lwip_err));
      s->ns->st.resets++;
    }
    session_free(s, !clean);
  } else if (s->state == S_OPEN) {
    (void)maybe_finish(s); /* outside lwIP: aborting is fine */
  } else if (s->state == S_PENDING) {
    /* The backend did not answer: the agent hears RST. */
    s->ns->st.timeouts++;
    refuse(s);
    session_free(s, 1);
  } else if (s->state == S_CONNECTED) {
    /* The agent never completed its handshake; lwIP drops its half-open
     * pcb by itself. */
    session_free(s, 1);
  }
}

static void backend_connected(uv_connect_t *req, int status)
{
  struct session *s = req->data;
  struct netstack *ns = s->ns;

  if (s->state != S_PENDING)
    return; /* timed out or aborted meanwhile */
  uv_timer_stop(&s->timer);
  if (status < 0) {
    log_debug("tcp: backend refused: %s", uv_strerror(status));
    ns->st.refused++;
    refuse(s);
    session_free(s, 0);
    return;
  }
  if (ensure_listener(ns, s->vport) < 0) {
    ns->st.limit++;
    refuse(s);
    session_free(s, 1);
    return;
  }
  /* Now lwIP may answer the SYN; the agent has 5 s to complete. */
  s->state = S_CONNECTED;
  uv_timer_start(&s->timer, session_timer, NETSTACK_CONNECT_TIMEOUT_MS, 0);
  feed(ns, s->syn, s->synlen);
  free(s->syn);
  s->syn = NULL;
}

static int syn_allowed(struct netstack *ns, struct owner *o)
{
  uint64_t now = uv_now(ns->loop);

  o->tokens += (double)(now - o->tokens_ms) * ns->syn_rate / 1000.0;
  if (o->tokens > ns->syn_rate)
    o->tokens = ns->syn_rate;
  o->tokens_ms = now;
  if (o->tokens < 1.0)
    return 0;
  o->tokens -= 1.0;
  return 1;
}

/* Answers a SYN we will not take, or a segment of no connection, with a
 * RST (real addresses). */
static void reset_syn(struct netstack *ns, void *conn, const uint8_t *pkt,
                      size_t n)
{
  uint8_t rst[80];
  int k = ippkt_build_rst(rst, sizeof(rst), pkt, n);

  if (k > 0)
    ns->io.send(conn, rst, (size_t)k, ns->io.ud);
}

void netstack_input(struct netstack *ns, void *conn,
                    const struct sockaddr *backend, const uint8_t *pkt,
                    size_t n)
{
  struct ippkt ip;
  const uint8_t *t;
  size_t tlen;
  uint8_t buf[65536], local[16], synth[16];
  uint16_t sport, vport;
  uint32_t idx, b;
  struct mapping *m;
  struct session *s;
  struct owner *o;
  int syn;

  if (ippkt_parse(pkt, n, &ip) < 0 || n > sizeof(buf))
    return;
  ippkt_l4(pkt, &ip, &t, &tlen);
  if (tlen < 20)
    return;
  sport = (uint16_t)(t[0] << 8 | t[1]);
  vport = (uint16_t)(t[2] << 8 | t[3]);
  syn = (t[13] & 0x12) == 0x02; /* SYN without ACK */
  m = map_lookup(ns, conn, ip.version, ip.src, ip.dst, &idx);
  if (!m) {
    if (!syn) {
      /* A segment of no connection here (this connector restarted, or
       * the connection's state went with an end-to-end connection that
       * ended): a RST ends it at the agent at once, where silence would
       * leave the application retransmitting for minutes. */
      ns->st.stray++;
      reset_syn(ns, conn, pkt, n);
      return;
    }
    o = owner_get(ns, conn);
    if (!o) {
      log_warnx("tcp: out of memory");
      return;
    }
    /* The quota and the rate belong to the agent, whatever addresses it
     * uses. */
    if (!syn_allowed(ns, o)) {
      ns->st.syn_limited++;
      owner_put(ns, o);
      return;
    }
    if (o->sessions >= ns->max_per_owner || ns->nsessions >= ns->max_sessions ||
        !(m = map_new(ns, o, ip.version, ip.src, ip.dst, &idx))) {
      ns->st.limit++;
      owner_put(ns, o);
      reset_syn(ns, conn, pkt, n);
      return;
    }
  }
  o = m->owner;
  /* Inside lwIP: the synthetic source, the netif's own address. */
  memcpy(buf, pkt, n);
  if (ip.version == 4) {
    put32(synth, SYNTH_BASE + idx);
    put32(local, LOCAL_ADDR);
  } else {
    memcpy(synth, SYNTH6, sizeof(SYNTH6));
    put32(synth + 12, idx);
    memcpy(local, LOCAL6, sizeof(LOCAL6));
  }
  ippkt_rewrite_addr(buf, n, 0, synth);
  ippkt_rewrite_addr(buf, n, 1, local);
  s = session_find(ns, idx, sport, vport);
  if (s) {
    if (s->state != S_PENDING)
      feed(ns, buf, n);
    return; /* a retransmitted SYN while the backend is being dialed */
  }
  if (!syn) {
    feed(ns, buf, n); /* lwIP answers what it does not know with RST */
    return;
  }
  if (m->refs && !syn_allowed(ns, o)) {
    ns->st.syn_limited++;
    return;
  }
  if (o->sessions >= ns->max_per_owner || ns->nsessions >= ns->max_sessions) {
    ns->st.limit++;
    s = NULL;
  } else if ((s = calloc(1, sizeof(*s))) && !(s->syn = malloc(n))) {
    free(s);
    s = NULL;
  }
  if (!s) {
    reset_syn(ns, conn, pkt, n);
    if (!m->refs)
      map_release(ns, idx);
    return;
  }
  memcpy(s->syn, buf, n);
  s->synlen = n;
  s->ns = ns;
  s->map = idx;
  s->sport = sport;
  s->vport = vport;
  s->state = S_PENDING;
  s->owner = o;
  m->refs++;
  uv_tcp_init(ns->loop, &s->backend);
  uv_timer_init(ns->loop, &s->timer);
  s->backend.data = s->timer.data = s->creq.data = s;
  s->handles = 2;
  s->next = ns->sessions;
  if (ns->sessions)
    ns->sessions->prev = s;
  ns->sessions = s;
  b = session_bucket(idx, sport, vport);
  s->hnext = ns->session_hash[b];
  ns->session_hash[b] = s;
  s->onext = o->list;
  if (o->list)
    o->list->oprev = s;
  o->list = s;
  o->sessions++;
  ns->nsessions++;
  ns->st.sessions_active = ns->nsessions;
  uv_tcp_nodelay(&s->backend, 1);
  if (uv_tcp_connect(&s->creq, &s->backend, backend, backend_connected) <
      0) {
    ns->st.refused++;
    refuse(s);
    session_free(s, 0);
    return;
  }
  uv_timer_start(&s->timer, session_timer, NETSTACK_CONNECT_TIMEOUT_MS, 0);
}

void netstack_conn_gone(struct netstack *ns, void *conn)
{
  struct owner *o;

  /* Aborting the last session frees the owner: look it up each time. */
  while ((o = owner_find(ns, conn)) && o->list)
    session_abort(o->list, "the agent's connection ended");
}

size_t netstack_conn_sessions(struct netstack *ns, void *conn)
{
  struct owner *o = owner_find(ns, conn);
  return o ? o->sessions : 0;
}

/* --- lifecycle ---------------------------------------------------------------- */

static void tick_cb(uv_timer_t *t);

/* lwIP's timers run only while it has TCP connections: sleep until the
 * next one is due. */
static void schedule(struct netstack *ns)
{
  u32_t next = sys_timeouts_sleeptime();

  if (next == SYS_TIMEOUTS_SLEEPTIME_INFINITE)
    uv_timer_stop(&ns->tick);
  else
    uv_timer_start(&ns->tick, tick_cb, next, 0);
}

static void tick_cb(uv_timer_t *t)
{
  sys_check_timeouts();
  schedule(t->data);
}

int netstack_new(struct netstack **out, uv_loop_t *loop,
                 const struct netstack_io *io, size_t max_sessions,
                 size_t max_per_owner, unsigned syn_rate)
{
  static int lwip_ready;
  struct netstack *ns;
  ip4_addr_t addr, mask, gw;
  ip6_addr_t addr6;
  s8_t idx6;

  *out = NULL;
  if (the)
    return ZTNA_ERR_STATE;
  ns = calloc(1, sizeof(*ns));
  if (!ns)
    return -ENOMEM;
  ns->loop = loop;
  ns->io = *io;
  ns->max_sessions = max_sessions ? max_sessions : 1024;
  ns->max_per_owner = max_per_owner ? max_per_owner : ns->max_sessions;
  ns->syn_rate = syn_rate ? syn_rate : 100;
  /* Every synthetic address: freed indexes wait out their quarantine
   * at the back of the queue. */
  ns->nmaps_max = SYNTH_MAX;
  ns->maps = calloc(ns->nmaps_max, sizeof(*ns->maps));
  ns->free_ring = calloc(ns->nmaps_max, sizeof(*ns->free_ring));
  if (!ns->maps || !ns->free_ring) {
    free(ns->maps);
    free(ns->free_ring);
    free(ns);
    return -ENOMEM;
  }
  for (size_t i = 0; i < ns->nmaps_max; i++)
    ns->free_ring[i] = (uint32_t)i;
  ns->free_count = ns->nmaps_max;
  memset(ns->map_hash, 0xff, sizeof(ns->map_hash));
  the = ns;
  if (!lwip_ready) {
    lwip_init();
    ext_id = tcp_ext_arg_alloc_id();
    lwip_ready = 1;
  }
  addr.addr = htonl(LOCAL_ADDR);
  mask.addr = 0;
  gw.addr = 0;
  netif_add(&ns->netif, &addr, &mask, &gw, ns, netif_init_cb, ip_input);
  memset(&addr6, 0, sizeof(addr6));
  memcpy(addr6.addr, LOCAL6, sizeof(LOCAL6));
  ip6_addr_clear_zone(&addr6);
  if (netif_add_ip6_address(&ns->netif, &addr6, &idx6) != ERR_OK) {
    netif_remove(&ns->netif);
    the = NULL;
    free(ns->maps);
    free(ns->free_ring);
    free(ns);
    return ZTNA_ERR_STATE;
  }
  netif_ip6_addr_set_state(&ns->netif, idx6, IP6_ADDR_PREFERRED);
  netif_set_default(&ns->netif);
  netif_set_link_up(&ns->netif);
  netif_set_up(&ns->netif);
  uv_timer_init(loop, &ns->tick);
  ns->tick.data = ns;
  uv_check_init(loop, &ns->flush);
  ns->flush.data = ns;
  uv_prepare_init(loop, &ns->flush_pre);
  ns->flush_pre.data = ns;
  ns->handles = 3;
  schedule(ns);
  *out = ns;
  return 0;
}

static void ns_handle_closed(uv_handle_t *h)
{
  struct netstack *ns = h->data;
  if (--ns->handles > 0)
    return;
  free(ns->maps);
  free(ns->free_ring);
  free(ns);
}

void netstack_del(struct netstack *ns)
{
  if (!ns)
    return;
  while (ns->sessions)
    session_abort(ns->sessions, "shutting down");
  for (int i = 0; i < MAX_LISTENERS; i++)
    if (ns->listeners[i])
      tcp_close(ns->listeners[i]);
  netif_remove(&ns->netif);
  the = NULL;
  uv_close((uv_handle_t *)&ns->tick, ns_handle_closed);
  uv_close((uv_handle_t *)&ns->flush, ns_handle_closed);
  uv_close((uv_handle_t *)&ns->flush_pre, ns_handle_closed);
}

const struct netstack_stats *netstack_stats(struct netstack *ns)
{
  return &ns->st;
}
