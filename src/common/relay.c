/* relay.c - registration, routing, translation and signaling, sans-IO. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "err.h"
#include "ippkt.h"
#include "policy.h"
#include "relay.h"
#include "tls.h"
#include "wire.h"

#define SVC_BUCKETS 1024
#define MAX_SOURCES 4   /* source addresses translated per agent */
#define MAX_VIPS 64     /* virtual IPs learned per agent */
#define XLAT_OFFSET 256 /* translated addresses start at 100.64.1.0 */
#define RSESS_BUCKETS 4096 /* a power of two */

static const uint8_t xlat_v6_prefix[12] = { 0xfd, 0x7a, 0x7a, 0x74, 0x6e,
                                            0x61, 0, 0, 0, 0, 0, 0 };

struct service {
  struct service *next;
  struct relay_client *connector; /* newest wins */
  size_t connectors;              /* registrations, the active one too */
  size_t agents;
  size_t nrsess;                  /* relay sessions for it */
  size_t len;
  char id[WIRE_SERVICE_ID_MAX + 1];
};

struct reg {
  struct service *svc;
  int role;     /* POLICY_AGENT or POLICY_CONNECTOR */
  uint64_t seq; /* when it (last) registered: the newest connector wins */
};

struct vip {
  int family;
  uint8_t addr[16];
  struct service *svc;
};

struct relay_client {
  struct relay_client *next, *prev;
  void *conn;
  /* The peer's identity, allocated to the SANs it has: the fixed struct
   * has room for TLS_MAX_SANS of the longest names (8 KB), and nothing
   * here reads id->dns past id->ndns. */
  struct tls_identity *id;
  struct reg *regs;   /* grown on demand: most clients have one or two */
  size_t nregs, capregs;
  uint32_t xlat[MAX_SOURCES]; /* indexes into relay.xlat */
  size_t nxlat;
  struct vip *vips;   /* learned from raw IP only (original agents) */
  size_t nvips, capvips;
  struct wire_sigbuf sig;
  size_t nsessions;
  size_t nrsess;      /* relay sessions it holds (as agent or connector) */
  int takes_sessions; /* a connector that announced relay sessions */
  int peer;           /* another intermediate of the cluster */
  uint64_t unknown_tick; /* answers to DATA of unknown sessions ... */
  unsigned unknown_n;    /* ... since the last expiry tick */
};

/* A relay session: one agent connection, one connector connection. In a
 * cluster either end may be a peer link: on the agent's intermediate the
 * connector end is the link to the connector's intermediate (a forwarded
 * session, known there by the id `remote`); on the connector's, the agent
 * end is the link from the agent's. */
struct rsess {
  struct rsess *next;  /* hash chain by id */
  struct rsess *rnext; /* forwarded: hash chain by (link, remote) */
  struct rsess *pnext; /* forwarded, waiting for the answer: r->pending */
  uint64_t id;
  uint64_t remote;     /* forwarded: the id at the far intermediate */
  uint64_t created;    /* relay time it was asked for */
  uint32_t req;        /* the agent's request number */
  uint32_t preq;       /* forwarded: our request number on the link */
  int pending;         /* forwarded, not answered yet */
  struct relay_client *agent, *connector;
  struct service *svc;
};

struct xlat {
  struct relay_client *c; /* NULL: free */
  int family;
  uint8_t orig[16];
  int used;          /* was ever handed out */
  uint64_t freed_ms; /* when its agent left */
};

struct session {
  struct session *next;
  uint64_t id;
  uint64_t created;
  struct relay_client *agent, *connector;
  struct service *svc;
  int started;
  struct wire_sig offer;
};

struct relay {
  struct relay_io io;
  struct relay_limits lim;
  struct cfg_policy *policy;
  struct service *svc[SVC_BUCKETS];
  struct relay_client *clients;
  size_t nclients;
  struct xlat *xlat;
  size_t xlat_next;
  struct session *sessions;
  size_t nsessions;
  struct rsess *rs[RSESS_BUCKETS];
  struct rsess *rr[RSESS_BUCKETS]; /* forwarded sessions by (link, remote) */
  struct rsess *pending;           /* forwarded, waiting for OPENED */
  uint32_t preq_next;
  size_t nrsess;
  uint64_t rsess_next;
  struct relay_stats stats;
  uint64_t reg_seq;
  uint64_t now_ms; /* the last time relay_expire was told */
  uint8_t scratch[65536];
  uint8_t sigbuf[4 + WIRE_SIG_PAYLOAD_MAX];
  struct wire_sig msg;
  /* Context of the signaling callback (wire_sigbuf_feed takes one ud). */
  struct relay_client *sig_from;
  uint64_t sig_now;
  struct relay_client *cur; /* the sender of the datagram being handled */
};

const char *relay_drop_name(enum relay_drop d)
{
  static const char *const names[RELAY_DROP_COUNT] = {
    "malformed",  "not_registered", "denied", "no_connector", "no_route",
    "too_large",  "queue_full",     "limit",  "unexpected",
  };
  return d < RELAY_DROP_COUNT ? names[d] : "unknown";
}

static void drop(struct relay *r, enum relay_drop why)
{
  r->stats.drops[why]++;
  if (r->io.drop_cb)
    r->io.drop_cb(r->cur ? r->cur->conn : NULL, why, r->io.ud);
}

/* --- services ------------------------------------------------------------ */

/* Service ids compare as the SAN names that grant them do: ASCII case
 * does not matter (policy_cert_grants, the policy file). */
static uint8_t fold(uint8_t c)
{
  return c >= 'A' && c <= 'Z' ? (uint8_t)(c - 'A' + 'a') : c;
}

static uint32_t svc_hash(const uint8_t *id, size_t len)
{
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++)
    h = (h ^ fold(id[i])) * 16777619u;
  return h & (SVC_BUCKETS - 1);
}

static int svc_id_eq(const uint8_t *a, const uint8_t *b, size_t len)
{
  for (size_t i = 0; i < len; i++)
    if (fold(a[i]) != fold(b[i]))
      return 0;
  return 1;
}

static struct service *svc_find(struct relay *r, const uint8_t *id, size_t len)
{
  for (struct service *s = r->svc[svc_hash(id, len)]; s; s = s->next)
    if (s->len == len && svc_id_eq((const uint8_t *)s->id, id, len))
      return s;
  return NULL;
}

static struct service *svc_get(struct relay *r, const uint8_t *id, size_t len)
{
  struct service *s = svc_find(r, id, len);
  uint32_t h;

  if (s)
    return s;
  s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  memcpy(s->id, id, len);
  s->len = len;
  h = svc_hash(id, len);
  s->next = r->svc[h];
  r->svc[h] = s;
  return s;
}

static void svc_release(struct relay *r, struct service *s)
{
  struct service **pp;

  /* A service lives as long as anything is registered to it: displaced
   * connectors too, since their registrations point here. */
  if (s->connectors || s->agents)
    return;
  for (pp = &r->svc[svc_hash((uint8_t *)s->id, s->len)]; *pp;
       pp = &(*pp)->next) {
    if (*pp == s) {
      *pp = s->next;
      free(s);
      return;
    }
  }
}

/* --- lifecycle ---------------------------------------------------------- */

int relay_new(struct relay **out, const struct relay_io *io,
              const struct relay_limits *lim)
{
  struct relay *r = calloc(1, sizeof(*r));

  *out = NULL;
  if (!r)
    return -ENOMEM;
  r->io = *io;
  r->lim.services_per_client = 64;
  r->lim.sessions_per_client = 16;
  r->lim.sessions_total = 4096;
  r->lim.translations = 65536;
  r->lim.xlat_quarantine_ms = RELAY_XLAT_QUARANTINE_MS;
  r->lim.rsessions_per_client = 64;
  r->lim.rsessions_total = 65536;
  if (lim) {
    if (lim->rsessions_per_client)
      r->lim.rsessions_per_client = lim->rsessions_per_client;
    if (lim->rsessions_total)
      r->lim.rsessions_total = lim->rsessions_total;
    r->rsess_next = lim->rsession_base;
    if (lim->services_per_client)
      r->lim.services_per_client = lim->services_per_client;
    if (lim->sessions_per_client)
      r->lim.sessions_per_client = lim->sessions_per_client;
    if (lim->sessions_total)
      r->lim.sessions_total = lim->sessions_total;
    if (lim->translations)
      r->lim.translations = lim->translations;
    if (lim->xlat_quarantine_ms)
      r->lim.xlat_quarantine_ms = lim->xlat_quarantine_ms;
  }
  r->xlat = calloc(r->lim.translations, sizeof(*r->xlat));
  if (!r->xlat) {
    free(r);
    return -ENOMEM;
  }
  *out = r;
  return 0;
}

void relay_del(struct relay *r)
{
  if (!r)
    return;
  while (r->clients)
    relay_client_del(r, r->clients);
  cfg_policy_free(r->policy);
  free(r->policy);
  free(r->xlat);
  free(r);
}

/* Doubles a per-client table (from 2 entries) up to max entries. */
static int grow(void **tab, size_t *cap, size_t size, size_t max)
{
  size_t n = *cap ? *cap * 2 : 2;
  void *t;

  if (n > max)
    n = max;
  if (n <= *cap || !(t = realloc(*tab, n * size)))
    return -1;
  *tab = t;
  *cap = n;
  return 0;
}

struct relay_client *relay_client_new(struct relay *r, void *conn,
                                      const struct tls_identity *id)
{
  struct relay_client *c = calloc(1, sizeof(*c));
  size_t idsize = offsetof(struct tls_identity, dns) +
                  id->ndns * sizeof(id->dns[0]);

  if (!c)
    return NULL;
  c->id = malloc(idsize);
  if (!c->id || wire_sigbuf_init(&c->sig) < 0) {
    free(c->id);
    free(c);
    return NULL;
  }
  memcpy(c->id, id, idsize);
  c->conn = conn;
  c->next = r->clients;
  if (r->clients)
    r->clients->prev = c;
  r->clients = c;
  r->nclients++;
  return c;
}

static void session_free(struct relay *r, struct session *s)
{
  struct session **pp;

  for (pp = &r->sessions; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  s->agent->nsessions--;
  if (s->connector)
    s->connector->nsessions--;
  r->nsessions--;
  free(s);
}

/* --- relay sessions -------------------------------------------------------- */

static struct rsess **rsess_slot(struct relay *r, uint64_t id)
{
  uint64_t h = id * 0x9e3779b97f4a7c15ull;
  return &r->rs[(h >> 40) & (RSESS_BUCKETS - 1)];
}

static struct rsess *rsess_find(struct relay *r, uint64_t id)
{
  struct rsess *s = *rsess_slot(r, id);
  while (s && s->id != id)
    s = s->next;
  return s;
}

static struct rsess **rr_slot(struct relay *r, const struct relay_client *l,
                             uint64_t remote)
{
  uint64_t h = (remote ^ (uint64_t)(uintptr_t)l) * 0x9e3779b97f4a7c15ull;
  return &r->rr[(h >> 40) & (RSESS_BUCKETS - 1)];
}

/* The forwarded session the link l knows as remote. */
static struct rsess *rr_find(struct relay *r, const struct relay_client *l,
                             uint64_t remote)
{
  struct rsess *s = *rr_slot(r, l, remote);
  while (s && (s->remote != remote || s->connector != l))
    s = s->rnext;
  return s;
}

/* Takes s out of the tables and the counts and frees it; says nothing. */
static void rsess_free(struct relay *r, struct rsess *s)
{
  struct rsess **pp = rsess_slot(r, s->id);

  while (*pp && *pp != s)
    pp = &(*pp)->next;
  if (*pp)
    *pp = s->next;
  if (s->pending) {
    for (pp = &r->pending; *pp && *pp != s; pp = &(*pp)->pnext)
      ;
    if (*pp)
      *pp = s->pnext;
  } else if (s->connector->peer) {
    for (pp = rr_slot(r, s->connector, s->remote); *pp && *pp != s;
         pp = &(*pp)->rnext)
      ;
    if (*pp)
      *pp = s->rnext;
  }
  s->agent->nrsess--;
  s->connector->nrsess--;
  s->svc->nrsess--;
  r->nrsess--;
  free(s);
}

static void send_closed(struct relay *r, struct relay_client *to, uint64_t id,
                        uint8_t reason)
{
  uint8_t msg[WIRE_SESSION_CLOSED_LEN];
  struct iovec v = { msg, sizeof(msg) };

  wire_session_closed_encode(msg, sizeof(msg), id, reason);
  if (r->io.send_dgram(to->conn, &v, 1, r->io.ud) < 0)
    drop(r, RELAY_DROP_QUEUE_FULL);
}

static void send_opened(struct relay *r, struct relay_client *c, uint32_t req,
                        uint8_t status, uint64_t id);

/* Ends a relay session, telling each side whose connection is not the
 * one going away (skip) why. */
static void rsess_end(struct relay *r, struct rsess *s, uint8_t reason,
                      struct relay_client *skip)
{
  if (s->agent != skip && s->pending) /* the agent has no id yet */
    send_opened(r, s->agent, s->req, WIRE_SESSION_NO_CONNECTOR, 0);
  else if (s->agent != skip)
    send_closed(r, s->agent, s->id, reason);
  /* A forwarded session is known to the far intermediate by its id
   * there; one still waiting for it is closed there when the answer
   * comes (on_peer_opened). */
  if (s->connector != skip && !s->pending)
    send_closed(r, s->connector, s->connector->peer ? s->remote : s->id,
                reason);
  rsess_free(r, s);
  r->stats.rsessions_closed++;
}

/* Ends every relay session that involves c (as agent or connector) and,
 * if svc is set, is for that service. A scan: connections come and go
 * far less often than packets. */
static void rsess_end_all(struct relay *r, struct relay_client *c,
                          const struct service *svc, uint8_t reason,
                          struct relay_client *skip)
{
  if (!c->nrsess)
    return;
  for (size_t b = 0; b < RSESS_BUCKETS && c->nrsess; b++)
    for (struct rsess *s = r->rs[b], *next; s; s = next) {
      next = s->next;
      if ((s->agent == c || s->connector == c) && (!svc || s->svc == svc))
        rsess_end(r, s, reason, skip);
    }
}

static void send_opened(struct relay *r, struct relay_client *c, uint32_t req,
                        uint8_t status, uint64_t id)
{
  uint8_t msg[WIRE_SESSION_OPENED_LEN];
  struct iovec v = { msg, sizeof(msg) };

  if (status != WIRE_SESSION_OK)
    r->stats.rsessions_refused++;
  wire_session_opened_encode(msg, sizeof(msg), req, status, id);
  if (r->io.send_dgram(c->conn, &v, 1, r->io.ud) < 0)
    drop(r, RELAY_DROP_QUEUE_FULL);
}

static struct reg *find_reg(struct relay_client *c, const struct service *s,
                            int role);

/* A new session in the id table: never 0 (the "no session" of a
 * refusal), never handed out twice. */
static struct rsess *rsess_new(struct relay *r, struct relay_client *agent,
                               struct relay_client *connector,
                               struct service *svc, uint32_t req)
{
  struct rsess *s = calloc(1, sizeof(*s));

  if (!s)
    return NULL;
  do
    s->id = r->rsess_next++;
  while (s->id == 0 || rsess_find(r, s->id));
  s->req = req;
  s->agent = agent;
  s->connector = connector;
  s->svc = svc;
  s->created = r->now_ms;
  s->next = *rsess_slot(r, s->id);
  *rsess_slot(r, s->id) = s;
  agent->nrsess++;
  connector->nrsess++;
  svc->nrsess++;
  r->nrsess++;
  return s;
}

static int rsess_full(struct relay *r, struct relay_client *agent,
                      struct relay_client *connector)
{
  if ((!agent->peer && agent->nrsess >= r->lim.rsessions_per_client) ||
      r->nrsess >= r->lim.rsessions_total ||
      connector->nrsess >= r->lim.rsessions_total) {
    r->stats.limit_hits++;
    return 1;
  }
  return 0;
}

/* The service's connector is at another intermediate of the cluster,
 * reached through link p: ask it for a session there; the agent's answer
 * waits for its answer (on_peer_opened) or the expiry. */
static void forward_open(struct relay *r, struct relay_client *c,
                         uint32_t req, struct service *svc,
                         struct relay_client *p)
{
  uint8_t msg[WIRE_SESSION_OPENED_LEN + WIRE_SERVICE_ID_MAX + 8];
  struct iovec v = { msg, 0 };
  struct rsess *s;
  int n;

  /* A repeated request: answered as the first one is (or will be). */
  for (s = r->pending; s; s = s->pnext)
    if (s->agent == c && s->req == req && s->svc == svc)
      return;
  for (size_t b = 0; b < RSESS_BUCKETS && c->nrsess; b++)
    for (s = r->rs[b]; s; s = s->next)
      if (s->agent == c && s->req == req && s->svc == svc &&
          s->connector == p) {
        send_opened(r, c, req, WIRE_SESSION_OK, s->id);
        return;
      }
  if (rsess_full(r, c, p)) {
    send_opened(r, c, req, WIRE_SESSION_LIMIT, 0);
    return;
  }
  s = rsess_new(r, c, p, svc, req);
  if (!s) {
    send_opened(r, c, req, WIRE_SESSION_LIMIT, 0);
    return;
  }
  s->pending = 1;
  if (++r->preq_next == 0)
    r->preq_next = 1;
  s->preq = r->preq_next;
  s->pnext = r->pending;
  r->pending = s;
  n = wire_session_open_encode(msg, sizeof(msg), s->preq, svc->id, svc->len);
  v.iov_len = n > 0 ? (size_t)n : 0;
  if (n < 0 || r->io.send_dgram(p->conn, &v, 1, r->io.ud) < 0) {
    drop(r, RELAY_DROP_QUEUE_FULL);
    rsess_free(r, s);
    send_opened(r, c, req, WIRE_SESSION_NO_CONNECTOR, 0);
  }
}

/* OPEN from another intermediate for one of its agents: that
 * intermediate authorized the agent (its certificate and policy), the
 * connector authenticates it again end to end; here the session goes to
 * the service's connector on this intermediate, never further (one hop). */
static void peer_open(struct relay *r, struct relay_client *p, uint32_t req,
                      const uint8_t *id, size_t len)
{
  struct service *svc = svc_find(r, id, len);
  struct rsess *s;

  if (!svc || !svc->connector) {
    send_opened(r, p, req, WIRE_SESSION_NO_CONNECTOR, 0);
    return;
  }
  if (!svc->connector->takes_sessions) {
    send_opened(r, p, req, WIRE_SESSION_UNSUPPORTED, 0);
    return;
  }
  if (rsess_full(r, p, svc->connector)) {
    send_opened(r, p, req, WIRE_SESSION_LIMIT, 0);
    return;
  }
  s = rsess_new(r, p, svc->connector, svc, req);
  if (!s) {
    send_opened(r, p, req, WIRE_SESSION_LIMIT, 0);
    return;
  }
  r->stats.rsessions_opened++;
  r->stats.rsessions_for_peers++;
  send_opened(r, p, req, WIRE_SESSION_OK, s->id);
}

/* The far intermediate's answer to forward_open. */
static void on_peer_opened(struct relay *r, struct relay_client *p,
                           const uint8_t *d, size_t n)
{
  uint32_t preq;
  uint8_t status;
  uint64_t id;
  struct rsess *s, **pp;

  if (wire_session_opened_decode(d, n, &preq, &status, &id) < 0) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  for (pp = &r->pending; *pp; pp = &(*pp)->pnext)
    if ((*pp)->connector == p && (*pp)->preq == preq)
      break;
  s = *pp;
  if (!s) {
    /* Too late (the agent was told "no connector" meanwhile) or a
     * repeat: a session made there for nobody is closed there. */
    if (status == WIRE_SESSION_OK && id && !rr_find(r, p, id))
      send_closed(r, p, id, WIRE_SESSION_CLOSED_BY_PEER);
    return;
  }
  if (status != WIRE_SESSION_OK || id == 0 || rr_find(r, p, id)) {
    send_opened(r, s->agent, s->req,
                status == WIRE_SESSION_OK ? WIRE_SESSION_NO_CONNECTOR
                                          : status, 0);
    rsess_free(r, s);
    return;
  }
  *pp = s->pnext;
  s->pending = 0;
  s->remote = id;
  s->rnext = *rr_slot(r, p, id);
  *rr_slot(r, p, id) = s;
  r->stats.rsessions_opened++;
  r->stats.rsessions_forwarded++;
  send_opened(r, s->agent, s->req, WIRE_SESSION_OK, s->id);
}

static void on_session_open(struct relay *r, struct relay_client *c,
                            const uint8_t *d, size_t n)
{
  const uint8_t *id;
  size_t len;
  uint32_t req;
  struct service *svc;
  struct rsess *s;

  if (wire_session_open_decode(d, n, &req, &id, &len) < 0) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  if (c->peer) {
    peer_open(r, c, req, id, len);
    return;
  }
  /* Defence in depth: the connector authenticates the agent again. */
  if (!policy_allows(r->policy, c->id, POLICY_AGENT, id, len)) {
    send_opened(r, c, req, WIRE_SESSION_DENIED, 0);
    return;
  }
  svc = svc_find(r, id, len);
  if (!svc || !find_reg(c, svc, POLICY_AGENT)) {
    send_opened(r, c, req, WIRE_SESSION_INVALID, 0);
    return;
  }
  if (!svc->connector) {
    struct relay_client *p = NULL;
    if (r->io.route_cb)
      p = r->io.route_cb(svc->id, svc->len, r->io.ud);
    if (p && p->peer)
      forward_open(r, c, req, svc, p);
    else
      send_opened(r, c, req, WIRE_SESSION_NO_CONNECTOR, 0);
    return;
  }
  if (!svc->connector->takes_sessions) {
    send_opened(r, c, req, WIRE_SESSION_UNSUPPORTED, 0);
    return;
  }
  /* A repeated request (the answer was lost) gets the same session. */
  for (size_t b = 0; b < RSESS_BUCKETS && c->nrsess; b++)
    for (s = r->rs[b]; s; s = s->next)
      if (s->agent == c && s->req == req && s->svc == svc &&
          s->connector == svc->connector) {
        send_opened(r, c, req, WIRE_SESSION_OK, s->id);
        return;
      }
  if (rsess_full(r, c, svc->connector)) {
    send_opened(r, c, req, WIRE_SESSION_LIMIT, 0);
    return;
  }
  s = rsess_new(r, c, svc->connector, svc, req);
  if (!s) {
    send_opened(r, c, req, WIRE_SESSION_LIMIT, 0);
    return;
  }
  r->stats.rsessions_opened++;
  send_opened(r, c, req, WIRE_SESSION_OK, s->id);
}

static void count_forward(struct relay *r, int rv, size_t n)
{
  if (rv == 0) {
    r->stats.relayed_dgrams++;
    r->stats.relayed_bytes += n;
    r->stats.rsession_dgrams++;
    r->stats.rsession_bytes += n;
  } else {
    drop(r, rv == ZTNA_ERR_TOO_LARGE ? RELAY_DROP_TOO_LARGE
                                      : RELAY_DROP_QUEUE_FULL);
  }
}

/* A forwarded session's packet under the id the next hop knows it by. */
static void forward_renamed(struct relay *r, struct relay_client *to,
                            uint64_t id, const uint8_t *pkt, size_t len)
{
  uint8_t hdr[WIRE_SESSION_HDR_LEN];
  struct iovec v[2] = { { hdr, sizeof(hdr) },
                        { (void *)(uintptr_t)pkt, len } };
  int rv;

  wire_session_data_header(hdr, sizeof(hdr), id);
  rv = r->io.send_dgram(to->conn, v, 2, r->io.ud);
  if (rv == 0)
    r->stats.peer_dgrams++;
  count_forward(r, rv, sizeof(hdr) + len);
}

/* Forwards the frame as it is: header and an end-to-end encrypted packet
 * that the relay cannot read. */
static void on_session_data(struct relay *r, struct relay_client *c,
                            const uint8_t *d, size_t n)
{
  const uint8_t *pkt;
  size_t len;
  uint64_t id;
  struct rsess *s;
  struct relay_client *to;
  struct iovec v = { (void *)(uintptr_t)d, n };
  int rv;

  if (wire_session_data_decode(d, n, &id, &pkt, &len) < 0) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  s = rsess_find(r, id);
  if (s && s->agent != c && s->connector != c)
    s = NULL;
  if (s && s->connector == c && c->peer) /* our id means nothing there */
    s = NULL;
  if (!s && c->peer && (s = rr_find(r, c, id)) != NULL) {
    /* From the connector's intermediate: to the agent, by our id. */
    forward_renamed(r, s->agent, s->id, pkt, len);
    return;
  }
  if (s && s->agent == c && s->connector->peer) {
    /* To the connector's intermediate, by its id; nothing before it
     * answered. */
    if (s->pending)
      drop(r, RELAY_DROP_NO_ROUTE);
    else
      forward_renamed(r, s->connector, s->remote, pkt, len);
    return;
  }
  if (!s) {
    /* Tell the sender once in a while: it may hold a session that ended
     * while the CLOSED was lost. Not a stranger's session: its id is
     * not confirmed or denied beyond "not yours". */
    drop(r, RELAY_DROP_NO_ROUTE);
    if (c->unknown_tick != r->now_ms) {
      c->unknown_tick = r->now_ms;
      c->unknown_n = 0;
    }
    /* A flood of made-up ids gets a few answers, not one each. */
    if (c->unknown_n++ < RELAY_UNKNOWN_ANSWERS)
      send_closed(r, c, id, WIRE_SESSION_UNKNOWN);
    return;
  }
  to = s->agent == c ? s->connector : s->agent;
  rv = r->io.send_dgram(to->conn, &v, 1, r->io.ud);
  if (rv == 0 && to->peer)
    r->stats.peer_dgrams++;
  count_forward(r, rv, n);
}

static void on_session_closed(struct relay *r, struct relay_client *c,
                              const uint8_t *d, size_t n)
{
  uint64_t id;
  uint8_t reason;
  struct rsess *s;

  if (wire_session_closed_decode(d, n, &id, &reason) < 0) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  s = rsess_find(r, id);
  if (s && s->connector == c && c->peer) /* our id from the far side */
    s = NULL;
  if (s && (s->agent == c || s->connector == c)) {
    rsess_end(r, s, WIRE_SESSION_CLOSED_BY_PEER, c);
    return;
  }
  /* The connector's intermediate ended a forwarded session: the agent
   * hears its reason (the connector left, was replaced, revoked). */
  if (c->peer && (s = rr_find(r, c, id)) != NULL)
    rsess_end(r, s, reason, c);
}

void relay_client_set_peer(struct relay_client *c)
{
  c->peer = 1;
}

size_t relay_rsession_count(const struct relay *r)
{
  return r->nrsess;
}

/* The newest connector registration of s that remains, other than the
 * one of except (NULL when there is none). A rare event: a scan. */
static struct relay_client *newest_connector(struct relay *r,
                                             struct service *s,
                                             struct relay_client *except)
{
  struct relay_client *best = NULL;
  uint64_t best_seq = 0;

  for (struct relay_client *c = r->clients; c; c = c->next) {
    if (c == except)
      continue;
    for (size_t i = 0; i < c->nregs; i++)
      if (c->regs[i].svc == s && c->regs[i].role == POLICY_CONNECTOR &&
          (!best || c->regs[i].seq > best_seq)) {
        best = c;
        best_seq = c->regs[i].seq;
      }
  }
  return best;
}

/* Tells every ztna connector of service s that agent c may no longer
 * reach it: its end-to-end connections may run directly, where no relay
 * session ends, or on a session the connector cannot tie to it. */
static void tell_revoked(struct relay *r, struct relay_client *c,
                         const struct service *s)
{
  uint8_t msg[WIRE_REVOKED_LEN];
  struct iovec v = { msg, sizeof(msg) };

  if (wire_revoked_encode(msg, sizeof(msg), c->id->fp) < 0)
    return;
  for (struct relay_client *k = r->clients; k; k = k->next)
    if (k->takes_sessions && find_reg(k, s, POLICY_CONNECTOR) &&
        r->io.send_dgram(k->conn, &v, 1, r->io.ud) < 0)
      drop(r, RELAY_DROP_QUEUE_FULL);
}

static void unregister(struct relay *r, struct relay_client *c, size_t i,
                       uint8_t reason)
{
  struct service *s = c->regs[i].svc;

  /* Its relay sessions for the service end with the registration. */
  rsess_end_all(r, c, s, reason, NULL);
  if (reason == WIRE_SESSION_REVOKED && c->regs[i].role == POLICY_AGENT &&
      c->nrsess) {
    /* An agent's end-to-end connection carries every service of its
     * connector, whichever one its session was opened for: revoking one
     * ends the sessions to every connector that serves it. */
    for (size_t b = 0; b < RSESS_BUCKETS && c->nrsess; b++)
      for (struct rsess *rs = r->rs[b], *next; rs; rs = next) {
        next = rs->next;
        if (rs->agent == c &&
            (find_reg(rs->connector, s, POLICY_CONNECTOR) ||
             (rs->connector->peer && rs->svc == s)))
          rsess_end(r, rs, reason, NULL);
      }
  }
  if (reason == WIRE_SESSION_REVOKED && c->regs[i].role == POLICY_AGENT)
    tell_revoked(r, c, s);
  if (c->regs[i].role == POLICY_CONNECTOR) {
    s->connectors--;
    /* A connector that was displaced serves again when the newer one
     * goes. */
    if (s->connector == c) {
      s->connector = s->connectors ? newest_connector(r, s, c) : NULL;
      if (!s->connector && r->io.service_cb)
        r->io.service_cb(s->id, s->len, 0, r->io.ud);
    }
  } else {
    s->agents--;
  }
  /* Learned virtual IPs of this service go with the registration. */
  for (size_t k = 0; k < c->nvips;)
    if (c->vips[k].svc == s && c->regs[i].role == POLICY_AGENT)
      c->vips[k] = c->vips[--c->nvips];
    else
      k++;
  c->regs[i] = c->regs[--c->nregs];
  svc_release(r, s);
}

static void xlat_addr(uint32_t idx, int family, uint8_t *out);

/* Tells the connectors of c's services that c's translated addresses are
 * gone, so that they reset what they keep for them (ztna connectors; an
 * original one ignores the message, the quarantine protects it). */
static void tell_agent_gone(struct relay *r, struct relay_client *c)
{
  struct relay_client *told[16];
  size_t ntold = 0;

  for (size_t i = 0; i < c->nregs; i++) {
    struct relay_client *to = c->regs[i].svc->connector;
    size_t k;

    if (c->regs[i].role != POLICY_AGENT || !to || to == c)
      continue;
    for (k = 0; k < ntold && told[k] != to; k++)
      ;
    if (k < ntold)
      continue;
    if (ntold < sizeof(told) / sizeof(told[0]))
      told[ntold++] = to;
    for (size_t x = 0; x < c->nxlat; x++) {
      uint8_t addr[16], msg[WIRE_AGENT_GONE_V6_LEN];
      struct iovec v;
      int n, family = r->xlat[c->xlat[x]].family;

      xlat_addr(c->xlat[x], family, addr);
      n = wire_agent_gone_encode(msg, sizeof(msg), family, addr);
      v.iov_base = msg;
      v.iov_len = (size_t)n;
      if (n > 0 && r->io.send_dgram(to->conn, &v, 1, r->io.ud) < 0)
        drop(r, RELAY_DROP_QUEUE_FULL);
    }
  }
}

void relay_client_del(struct relay *r, struct relay_client *c)
{
  struct session *s = r->sessions, *next;

  for (; s; s = next) {
    next = s->next;
    if (s->agent == c || s->connector == c)
      session_free(r, s);
  }
  if (c->nxlat)
    tell_agent_gone(r, c);
  rsess_end_all(r, c, NULL, WIRE_SESSION_GONE, c);
  while (c->nregs > 0)
    unregister(r, c, c->nregs - 1, WIRE_SESSION_GONE);
  /* Its translations rest before anyone gets them again: a connector may
   * hold state for them. */
  for (size_t i = 0; i < c->nxlat; i++) {
    r->xlat[c->xlat[i]].c = NULL;
    r->xlat[c->xlat[i]].freed_ms = r->now_ms;
  }
  if (c->prev)
    c->prev->next = c->next;
  else
    r->clients = c->next;
  if (c->next)
    c->next->prev = c->prev;
  r->nclients--;
  wire_sigbuf_free(&c->sig);
  free(c->regs);
  free(c->vips);
  free(c->id);
  free(c);
}

size_t relay_set_policy(struct relay *r, struct cfg_policy *p)
{
  size_t dropped = 0;

  if (r->policy) {
    cfg_policy_free(r->policy);
    free(r->policy);
  }
  r->policy = p;
  for (struct relay_client *c = r->clients; c; c = c->next)
    for (size_t i = 0; i < c->nregs;) {
      struct service *s = c->regs[i].svc;
      if (!policy_allows(p, c->id, c->regs[i].role, (uint8_t *)s->id,
                         s->len))
        unregister(r, c, i, WIRE_SESSION_REVOKED), dropped++;
      else
        i++;
    }
  return dropped;
}

/* --- registration -------------------------------------------------------- */

static void send_status(struct relay *r, struct relay_client *c, uint8_t type,
                        uint8_t status, const uint8_t *id, size_t len)
{
  uint8_t buf[3 + WIRE_SERVICE_ID_MAX];
  struct iovec v;
  int n = wire_status_encode(buf, sizeof(buf), type, status, id, len);

  if (n < 0)
    return;
  v.iov_base = buf;
  v.iov_len = (size_t)n;
  if (r->io.send_dgram(c->conn, &v, 1, r->io.ud) < 0)
    drop(r, RELAY_DROP_QUEUE_FULL);
}

static struct reg *find_reg(struct relay_client *c, const struct service *s,
                            int role)
{
  for (size_t i = 0; i < c->nregs; i++)
    if (c->regs[i].svc == s && c->regs[i].role == role)
      return &c->regs[i];
  return NULL;
}

static void refused(struct relay *r, struct relay_client *c, int role,
                    const uint8_t *id, size_t len, const char *why)
{
  if (r->io.refused_cb)
    r->io.refused_cb(c->conn, role == POLICY_AGENT ? "agent" : "connector",
                     id, len, why, r->io.ud);
}

static void on_register(struct relay *r, struct relay_client *c,
                        const uint8_t *d, size_t n)
{
  const uint8_t *id = NULL;
  size_t len = 0;
  uint8_t type;
  int role, rv = wire_register_decode(d, n, &type, &id, &len);
  struct service *s;

  if (rv == ZTNA_ERR_SHORT) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  role = type == WIRE_REG_AGENT ? POLICY_AGENT : POLICY_CONNECTOR;
  if (rv < 0) {
    r->stats.invalid_regs++;
    send_status(r, c, WIRE_REG_NACK, WIRE_NACK_INVALID, id, len);
    refused(r, c, role, id, len, "not a valid service id");
    return;
  }
  if (!policy_allows(r->policy, c->id, role, id, len)) {
    r->stats.rejections++;
    send_status(r, c, WIRE_REG_NACK, WIRE_NACK_DENIED, id, len);
    refused(r, c, role, id, len,
            !policy_cert_grants(c->id, role, id, len)
                ? "its certificate has no SAN granting it "
                  "(<role>.<service>.ztna)"
                : "the policy file does not list this identity for it");
    return;
  }
  s = svc_find(r, id, len);
  if (!s || !find_reg(c, s, role)) {
    if (c->nregs >= r->lim.services_per_client) {
      r->stats.limit_hits++;
      r->stats.invalid_regs++;
      send_status(r, c, WIRE_REG_NACK, WIRE_NACK_INVALID, id, len);
      refused(r, c, role, id, len, "too many services on one connection");
      return;
    }
    if (c->nregs == c->capregs &&
        grow((void **)&c->regs, &c->capregs, sizeof(*c->regs),
             r->lim.services_per_client) < 0) {
      r->stats.invalid_regs++;
      send_status(r, c, WIRE_REG_NACK, WIRE_NACK_INVALID, id, len);
      refused(r, c, role, id, len, "out of memory");
      return;
    }
    s = svc_get(r, id, len);
    if (!s) {
      r->stats.invalid_regs++;
      send_status(r, c, WIRE_REG_NACK, WIRE_NACK_INVALID, id, len);
      refused(r, c, role, id, len, "the service table is full");
      return;
    }
    memset(&c->regs[c->nregs], 0, sizeof(c->regs[0]));
    c->regs[c->nregs].svc = s;
    c->regs[c->nregs].role = role;
    c->nregs++;
    if (role == POLICY_AGENT)
      s->agents++;
    else
      s->connectors++;
  }
  if (role == POLICY_CONNECTOR) {
    find_reg(c, s, role)->seq = ++r->reg_seq;
    if (wire_register_flags(d, n) & WIRE_REG_FLAG_SESSIONS)
      c->takes_sessions = 1;
    /* The sessions of a displaced connector end: their agents open new
     * ones to the connector that serves now. */
    if (s->connector && s->connector != c)
      rsess_end_all(r, s->connector, s, WIRE_SESSION_REPLACED, NULL);
    if (!s->connector && r->io.service_cb)
      r->io.service_cb(s->id, s->len, 1, r->io.ud);
    s->connector = c; /* the newest connector wins the service */
  }
  r->stats.registrations++;
  send_status(r, c, WIRE_REG_ACK, 0, id, len);
}

/* --- translation ---------------------------------------------------------- */

static void xlat_addr(uint32_t idx, int family, uint8_t *out)
{
  uint32_t v = XLAT_OFFSET + idx;

  if (family == 4) {
    uint32_t a = (100u << 24 | 64u << 16) + v; /* 100.64.0.0/10 */
    out[0] = (uint8_t)(a >> 24);
    out[1] = (uint8_t)(a >> 16);
    out[2] = (uint8_t)(a >> 8);
    out[3] = (uint8_t)a;
  } else {
    memcpy(out, xlat_v6_prefix, 12);
    out[12] = (uint8_t)(v >> 24);
    out[13] = (uint8_t)(v >> 16);
    out[14] = (uint8_t)(v >> 8);
    out[15] = (uint8_t)v;
  }
}

/* The translation entry of a translated address, or NULL. */
static struct xlat *xlat_lookup(struct relay *r, int family,
                                const uint8_t *a)
{
  uint32_t v, idx;

  if (family == 4) {
    uint32_t x = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 |
                 (uint32_t)a[2] << 8 | a[3];
    if ((x & 0xffc00000u) != (100u << 24 | 64u << 16))
      return NULL;
    v = x - (100u << 24 | 64u << 16);
  } else {
    if (memcmp(a, xlat_v6_prefix, 12) != 0)
      return NULL;
    v = (uint32_t)a[12] << 24 | (uint32_t)a[13] << 16 |
        (uint32_t)a[14] << 8 | a[15];
  }
  if (v < XLAT_OFFSET)
    return NULL;
  idx = v - XLAT_OFFSET;
  if (idx >= r->lim.translations || !r->xlat[idx].c ||
      r->xlat[idx].family != family)
    return NULL;
  return &r->xlat[idx];
}

/* The translated address for this agent's source address, made on first
 * use. Returns 0 with out filled, or ZTNA_ERR_LIMIT. */
static int xlat_for(struct relay *r, struct relay_client *c, int family,
                    const uint8_t *src, uint8_t *out)
{
  size_t alen = family == 4 ? 4 : 16;

  for (size_t i = 0; i < c->nxlat; i++) {
    struct xlat *x = &r->xlat[c->xlat[i]];
    if (x->family == family && memcmp(x->orig, src, alen) == 0) {
      xlat_addr(c->xlat[i], family, out);
      return 0;
    }
  }
  if (c->nxlat >= MAX_SOURCES)
    return ZTNA_ERR_LIMIT;
  for (size_t k = 0; k < r->lim.translations; k++) {
    size_t idx = (r->xlat_next + k) % r->lim.translations;
    struct xlat *x = &r->xlat[idx];
    if (x->c || (x->used && r->now_ms - x->freed_ms <
                                r->lim.xlat_quarantine_ms))
      continue;
    x->c = c;
    x->used = 1;
    x->family = family;
    memcpy(x->orig, src, alen);
    c->xlat[c->nxlat++] = (uint32_t)idx;
    r->xlat_next = idx + 1;
    xlat_addr((uint32_t)idx, family, out);
    return 0;
  }
  return ZTNA_ERR_LIMIT;
}

/* --- routing ------------------------------------------------------------- */

static void forward(struct relay *r, struct relay_client *to,
                    const uint8_t *pkt, size_t n)
{
  struct iovec v = { (void *)(uintptr_t)pkt, n };
  int rv = r->io.send_dgram(to->conn, &v, 1, r->io.ud);

  if (rv == 0) {
    r->stats.relayed_dgrams++;
    r->stats.relayed_bytes += n;
  } else if (rv == ZTNA_ERR_TOO_LARGE) {
    drop(r, RELAY_DROP_TOO_LARGE);
  } else {
    drop(r, RELAY_DROP_QUEUE_FULL);
  }
}

static void learn_vip(struct relay *r, struct relay_client *c,
                      const struct ippkt *ip, struct service *s)
{
  for (size_t i = 0; i < c->nvips; i++)
    if (c->vips[i].family == ip->version &&
        memcmp(c->vips[i].addr, ip->dst, ip->addrlen) == 0) {
      c->vips[i].svc = s;
      return;
    }
  if (c->nvips >= MAX_VIPS) {
    r->stats.limit_hits++;
    return;
  }
  if (c->nvips == c->capvips &&
      grow((void **)&c->vips, &c->capvips, sizeof(*c->vips), MAX_VIPS) < 0) {
    r->stats.limit_hits++;
    return;
  }
  c->vips[c->nvips].family = ip->version;
  memcpy(c->vips[c->nvips].addr, ip->dst, ip->addrlen);
  c->vips[c->nvips].svc = s;
  c->nvips++;
}

/* Agent to connector: translate the source and send the raw packet. */
static void to_connector(struct relay *r, struct relay_client *c,
                         struct service *s, const uint8_t *pkt, size_t n)
{
  struct ippkt ip;
  uint8_t addr[16];

  if (!s->connector) {
    drop(r, RELAY_DROP_NO_CONNECTOR);
    return;
  }
  if (ippkt_parse(pkt, n, &ip) < 0) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  if (xlat_for(r, c, ip.version, ip.src, addr) < 0) {
    r->stats.limit_hits++;
    drop(r, RELAY_DROP_LIMIT);
    return;
  }
  memcpy(r->scratch, pkt, n);
  ippkt_rewrite_addr(r->scratch, n, 0, addr);
  forward(r, s->connector, r->scratch, n);
}

static void on_routed(struct relay *r, struct relay_client *c,
                      const uint8_t *d, size_t n)
{
  const uint8_t *id, *pkt;
  size_t idlen, pktlen;
  struct service *s;
  struct ippkt ip;

  if (wire_routed_decode(d, n, &id, &idlen, &pkt, &pktlen) < 0 ||
      ippkt_parse(pkt, pktlen, &ip) < 0) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  s = svc_find(r, id, idlen);
  if (!s || !find_reg(c, s, POLICY_AGENT)) {
    drop(r, policy_allows(r->policy, c->id, POLICY_AGENT, id, idlen)
                ? RELAY_DROP_NOT_REGISTERED
                : RELAY_DROP_DENIED);
    return;
  }
  learn_vip(r, c, &ip, s);
  to_connector(r, c, s, pkt, pktlen);
}

static int agent_of_connector(struct relay_client *agent,
                              struct relay_client *conn)
{
  for (size_t i = 0; i < agent->nregs; i++)
    if (agent->regs[i].role == POLICY_AGENT &&
        agent->regs[i].svc->connector == conn)
      return 1;
  return 0;
}

static int is_connector(struct relay_client *c)
{
  for (size_t i = 0; i < c->nregs; i++)
    if (c->regs[i].role == POLICY_CONNECTOR && c->regs[i].svc->connector == c)
      return 1;
  return 0;
}

static void on_raw(struct relay *r, struct relay_client *c, const uint8_t *d,
                   size_t n)
{
  struct ippkt ip;
  struct xlat *x;
  struct service *s = NULL;
  size_t agent_regs = 0;

  if (ippkt_parse(d, n, &ip) < 0) {
    drop(r, RELAY_DROP_MALFORMED);
    return;
  }
  /* Connector to agent: the destination is a translated address. */
  x = xlat_lookup(r, ip.version, ip.dst);
  if (x && is_connector(c)) {
    if (!agent_of_connector(x->c, c)) {
      drop(r, RELAY_DROP_DENIED);
      return;
    }
    memcpy(r->scratch, d, n);
    ippkt_rewrite_addr(r->scratch, n, 1, x->orig);
    forward(r, x->c, r->scratch, n);
    return;
  }
  /* Agent to connector: its only service, or the one whose virtual IP the
   * destination is. */
  for (size_t i = 0; i < c->nregs; i++)
    if (c->regs[i].role == POLICY_AGENT) {
      agent_regs++;
      s = c->regs[i].svc;
    }
  if (agent_regs == 0) {
    drop(r, is_connector(c) ? RELAY_DROP_NO_ROUTE
                            : RELAY_DROP_NOT_REGISTERED);
    return;
  }
  if (agent_regs > 1) {
    s = NULL;
    for (size_t i = 0; i < c->nvips; i++)
      if (c->vips[i].family == ip.version &&
          memcmp(c->vips[i].addr, ip.dst, ip.addrlen) == 0)
        s = c->vips[i].svc;
    if (!s) {
      drop(r, RELAY_DROP_NO_ROUTE);
      return;
    }
  }
  to_connector(r, c, s, d, n);
}

void relay_datagram(struct relay *r, struct relay_client *c,
                    const uint8_t *d, size_t n)
{
  int kind = wire_classify(d, n);

  /* A link from another intermediate carries relay sessions only. */
  if (c->peer && kind != WIRE_KIND_SESSION_OPEN &&
      kind != WIRE_KIND_SESSION_OPENED && kind != WIRE_KIND_SESSION_DATA &&
      kind != WIRE_KIND_SESSION_CLOSED) {
    drop(r, RELAY_DROP_UNEXPECTED);
    return;
  }
  r->cur = c;
  switch (kind) {
  case WIRE_KIND_REGISTER:
    on_register(r, c, d, n);
    break;
  case WIRE_KIND_ROUTED:
    on_routed(r, c, d, n);
    break;
  case WIRE_KIND_IPV4:
  case WIRE_KIND_IPV6:
    on_raw(r, c, d, n);
    break;
  case WIRE_KIND_SESSION_DATA:
    on_session_data(r, c, d, n);
    break;
  case WIRE_KIND_SESSION_OPEN:
    on_session_open(r, c, d, n);
    break;
  case WIRE_KIND_SESSION_CLOSED:
    on_session_closed(r, c, d, n);
    break;
  case WIRE_KIND_SESSION_OPENED:
    if (c->peer) {
      on_peer_opened(r, c, d, n);
      break;
    }
    /* fall through */
  default:
    drop(r, RELAY_DROP_UNEXPECTED);
  }
  r->cur = NULL;
}

/* --- signaling ---------------------------------------------------------- */

static void send_sig(struct relay *r, struct relay_client *to,
                     const struct wire_sig *m)
{
  int n = wire_sig_frame(r->sigbuf, sizeof(r->sigbuf), m);

  if (n < 0 || r->io.send_signal(to->conn, r->sigbuf, (size_t)n,
                                 r->io.ud) < 0)
    r->stats.sig_errors++;
}

static void send_sig_error(struct relay *r, struct relay_client *to,
                           uint64_t sid, int has_sid, uint32_t code,
                           const char *text)
{
  struct wire_sig *m = &r->msg;

  memset(m, 0, sizeof(*m));
  m->tag = WIRE_SIG_ERROR;
  m->has_session_id = has_sid;
  m->session_id = sid;
  m->code = code;
  m->message_len = strlen(text);
  memcpy(m->message, text, m->message_len + 1);
  send_sig(r, to, m);
}

static struct session *session_find(struct relay *r, uint64_t id,
                                    struct relay_client *agent,
                                    struct relay_client *connector)
{
  for (struct session *s = r->sessions; s; s = s->next)
    if (s->id == id && (!agent || s->agent == agent) &&
        (!connector || s->connector == connector))
      return s;
  return NULL;
}

/* A CandidateOffer: from an agent registered for the service, to the
 * service's connector here, or (a cluster) to the link to the member that
 * has it; from a link (another member's agent, authorized there), to the
 * connector here only. */
static void on_offer(struct relay *r, struct relay_client *c,
                     const struct wire_sig *m)
{
  struct service *svc = svc_find(r, (const uint8_t *)m->service_id,
                                 m->service_id_len);
  struct relay_client *to = svc ? svc->connector : NULL;
  struct session *s;

  if (!c->peer && (!svc || !find_reg(c, svc, POLICY_AGENT))) {
    r->stats.sig_errors++;
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_PEER_REJECTED,
                   "not registered as an agent of this service");
    return;
  }
  if (!to && !c->peer && r->io.route_cb) {
    to = r->io.route_cb(svc->id, svc->len, r->io.ud);
    if (to && !to->peer)
      to = NULL;
  }
  if (!to) {
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_NO_CONNECTOR,
                   "no connector for this service");
    return;
  }
  if (session_find(r, m->session_id, c, NULL)) {
    r->stats.sig_errors++;
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_INVALID_MESSAGE,
                   "session id already in use");
    return;
  }
  if ((!c->peer && c->nsessions >= r->lim.sessions_per_client) ||
      r->nsessions >= r->lim.sessions_total) {
    r->stats.limit_hits++;
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_UNKNOWN,
                   "too many signaling sessions");
    return;
  }
  s = calloc(1, sizeof(*s));
  if (!s) {
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_UNKNOWN,
                   "out of memory");
    return;
  }
  s->id = m->session_id;
  s->created = r->sig_now;
  s->agent = c;
  s->connector = to;
  s->svc = svc;
  s->offer = *m;
  s->next = r->sessions;
  r->sessions = s;
  r->nsessions++;
  c->nsessions++;
  s->connector->nsessions++;
  r->stats.sessions++;
  send_sig(r, s->connector, m);
}

static void on_answer(struct relay *r, struct relay_client *c,
                      const struct wire_sig *m)
{
  /* Only from the connector the offer went to (the original took it from
   * anyone: a session hijack). */
  struct session *s = session_find(r, m->session_id, NULL, c);
  struct wire_sig *start = &r->msg;

  if (!s || s->started) {
    r->stats.sig_errors++;
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_SESSION_NOT_FOUND,
                   "no such session for this connection");
    return;
  }
  s->started = 1;
  memset(start, 0, sizeof(*start));
  start->tag = WIRE_SIG_START;
  start->session_id = s->id;
  start->start_delay_ms = RELAY_START_DELAY_MS;
  start->ncand = m->ncand;
  memcpy(start->cand, m->cand, m->ncand * sizeof(m->cand[0]));
  send_sig(r, s->agent, start);
  start->ncand = s->offer.ncand;
  memcpy(start->cand, s->offer.cand, s->offer.ncand * sizeof(m->cand[0]));
  send_sig(r, s->connector, start);
}

static void on_result(struct relay *r, struct relay_client *c,
                      const struct wire_sig *m)
{
  struct session *s = session_find(r, m->session_id, c, NULL);

  if (!s) {
    r->stats.sig_errors++;
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_SESSION_NOT_FOUND,
                   "no such session for this connection");
    return;
  }
  send_sig(r, s->connector, m);
  session_free(r, s);
}

static void on_peer_error(struct relay *r, struct relay_client *c,
                          const struct wire_sig *m)
{
  struct session *s = m->has_session_id
                          ? session_find(r, m->session_id, NULL, c)
                          : NULL;

  /* A connector refusing a session: the agent hears of it. */
  if (s) {
    send_sig(r, s->agent, m);
    session_free(r, s);
  }
}

/* StartPunching from the member whose connector answered an offer we
 * passed on: to the agent, as if we had made it. */
static void on_peer_start(struct relay *r, struct relay_client *p,
                          const struct wire_sig *m)
{
  struct session *s = session_find(r, m->session_id, NULL, p);

  if (!s || s->started) {
    r->stats.sig_errors++;
    return;
  }
  s->started = 1;
  send_sig(r, s->agent, m);
}

static void on_sig(const struct wire_sig *m, void *ud)
{
  struct relay *r = ud;
  struct relay_client *c = r->sig_from;

  switch (m->tag) {
  case WIRE_SIG_OFFER:
    on_offer(r, c, m);
    break;
  case WIRE_SIG_ANSWER:
    if (c->peer) { /* a member passes StartPunching on, never answers */
      r->stats.sig_errors++;
      break;
    }
    on_answer(r, c, m);
    break;
  case WIRE_SIG_RESULT:
    on_result(r, c, m);
    break;
  case WIRE_SIG_ERROR:
    on_peer_error(r, c, m);
    break;
  case WIRE_SIG_START:
    if (c->peer) { /* the connector's member started a punch of ours */
      on_peer_start(r, c, m);
      break;
    }
    /* fall through */
  default:
    r->stats.sig_errors++;
    send_sig_error(r, c, m->session_id, 1, WIRE_SIGERR_INVALID_MESSAGE,
                   "clients do not send StartPunching");
  }
}

void relay_signal(struct relay *r, struct relay_client *c, const uint8_t *d,
                  size_t n, uint64_t now_ms)
{
  int was_failed = c->sig.failed;

  r->sig_from = c;
  r->sig_now = now_ms;
  if (wire_sigbuf_feed(&c->sig, d, n, on_sig, r) < 0 && !was_failed)
    r->stats.sig_errors++;
}

void relay_expire(struct relay *r, uint64_t now_ms)
{
  struct session *s = r->sessions, *next;

  r->now_ms = now_ms;
  /* Forwarded requests the far intermediate did not answer in time:
   * the agent asks again (and may be routed elsewhere by then). */
  for (struct rsess *f = r->pending, *fn; f; f = fn) {
    fn = f->pnext;
    if (now_ms - f->created >= RELAY_FORWARD_TTL_MS) {
      send_opened(r, f->agent, f->req, WIRE_SESSION_NO_CONNECTOR, 0);
      rsess_free(r, f);
    }
  }
  for (; s; s = next) {
    next = s->next;
    if (now_ms - s->created <
        (s->started ? RELAY_PUNCH_TTL_MS : RELAY_SESSION_TTL_MS))
      continue;
    r->stats.sessions_expired++;
    if (!s->started)
      send_sig_error(r, s->agent, s->id, 1, WIRE_SIGERR_SESSION_TIMEOUT,
                     "no answer from the connector in time");
    session_free(r, s);
  }
}

const struct relay_stats *relay_stats(const struct relay *r)
{
  return &r->stats;
}

size_t relay_session_count(const struct relay *r)
{
  return r->nsessions;
}

size_t relay_client_count(const struct relay *r)
{
  return r->nclients;
}

void relay_foreach_service(struct relay *r,
                           void (*fn)(const char *id, size_t len,
                                      int has_connector, size_t agents,
                                      void *ud),
                           void *ud)
{
  for (size_t b = 0; b < SVC_BUCKETS; b++)
    for (struct service *s = r->svc[b]; s; s = s->next)
      fn(s->id, s->len, s->connector != NULL, s->agents, ud);
}

void relay_describe_services(struct relay *r,
                             void (*fn)(const struct relay_service_info *si,
                                        void *ud),
                             void *ud)
{
  for (size_t b = 0; b < SVC_BUCKETS; b++)
    for (struct service *s = r->svc[b]; s; s = s->next) {
      struct relay_service_info si = {
        .id = s->id, .len = s->len, .has_connector = s->connector != NULL,
        .connectors = s->connectors, .agents = s->agents,
        .relay_sessions = s->nrsess,
        .connector_conn = s->connector ? s->connector->conn : NULL,
      };
      fn(&si, ud);
    }
}

void relay_client_describe(const struct relay *r,
                           const struct relay_client *c,
                           struct relay_client_info *out)
{
  (void)r;
  memset(out, 0, sizeof(*out));
  out->id = c->id;
  out->sessions = c->nsessions;
  out->relay_sessions = c->nrsess;
}

int relay_client_reg(const struct relay_client *c, size_t i, const char **id,
                     size_t *len, int *role, int *active)
{
  if (i >= c->nregs)
    return -1;
  *id = c->regs[i].svc->id;
  *len = c->regs[i].svc->len;
  *role = c->regs[i].role;
  *active = c->regs[i].role == POLICY_AGENT ||
            c->regs[i].svc->connector == c;
  return 0;
}

const struct cfg_policy *relay_policy(const struct relay *r)
{
  return r->policy;
}

void relay_limits_get(const struct relay *r, struct relay_limits *out)
{
  *out = r->lim;
}

size_t relay_translation_count(const struct relay *r)
{
  size_t n = 0;
  for (size_t i = 0; i < r->lim.translations && r->xlat; i++)
    if (r->xlat[i].c)
      n++;
  return n;
}
