/* connector.c - serves private applications to the tunnel.
 *
 * usage: ztna connector [-c FILE] [-n] [-v]... [OPTIONS]
 *        ztna connector --server HOST:PORT --service ID --forward HOST:PORT
 *                       --cert FILE --key FILE --ca FILE [OPTIONS]
 *
 * One relay connection per service (all from one UDP socket), each
 * registering its service. Tunneled packets become real traffic to the
 * service's backend: ICMP echo is answered here, UDP goes through one
 * connected socket per flow, TCP is terminated by lwIP (netstack.c) and
 * spliced to a TCP connection to the backend. Packets with bad checksums
 * are dropped and counted; the backend comes from the configuration, never
 * from the packet.
 *
 * Agents punch to the connector through the intermediate (it answers
 * offers and checks back from the same socket) and then connect to it
 * directly; each agent is known by its relay-side address, and a direct
 * connection linked to it carries its packets both ways while it is up.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "../applets.h"
#include "../version.h"
#include "api.h"
#include "config.h"
#include "daemon.h"
#include "err.h"
#include "identity.h"
#include "ippkt.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "netstack.h"
#include "p2p.h"
#include "pki.h"
#include "policy.h"
#include "punch.h"
#include "quic.h"
#include "tls.h"
#include "udpflow.h"
#include "uplink.h"
#include "wire.h"

#define UDP_IDLE_MS 60000
#define MAX_UDP_FLOWS 4096
#define MAX_UDP_PER_AGENT 512   /* one agent may not take every flow */
#define MAX_TCP_SESSIONS 1024
#define MAX_TCP_PER_AGENT 256   /* nor every TCP session */
/* The intermediate lets one agent hold 16 signaling sessions: one agent
 * alone cannot take every slot. */
#define CTL_ANSWERS_PER_SEC 200
#define MAX_AGENT_IDS 4096
#define AGENT_ID_IDLE_MS (10 * 60 * 1000)
#define MAX_DIRECT 1024
#define DIRECT_PING_MS 5000

static const char usage_text[] =
    "Usage: ztna connector [-c FILE] [-n] [-v]... [OPTIONS]\n"
    "       ztna connector --server HOST:PORT --service ID --forward HOST:PORT\n"
    "                      --cert FILE --key FILE --ca FILE [OPTIONS]\n"
    "\n"
    "Serve private applications to ztna agents through the intermediate,\n"
    "and directly to agents that punch through to this connector (on the\n"
    "same UDP port; they must present a certificate granting the service).\n"
    "\n"
    "  -c, --config FILE    configuration (default: /etc/ztna/connector.json,\n"
    "                       else ./connector.json)\n"
    "  -n, --check          check configuration and certificates, print\n"
    "                       \"configuration OK\" and exit\n"
    "  -v, --verbose        more logging (repeat for debug, trace)\n"
    "      --server H:P     the intermediate\n"
    "      --service ID     the service to provide (short form)\n"
    "      --forward H:P    its backend (short form)\n"
    "      --protocol P     udp, tcp or both (short form; both)\n"
    "      --cert FILE      client certificate (connector.<service>.ztna)\n"
    "      --key FILE       its private key\n"
    "      --ca FILE        CA the intermediate's certificate chains to\n"
    "  -p, --port N         local UDP port (4434)\n"
    "      --metrics-port N Prometheus /metrics and /healthz (9091; 0 off)\n"
    "      --metrics-bind ADDR  address of the metrics port (127.0.0.1)\n"
    "      --log-format F   text or json (one JSON object per line)\n"
    "      --user U         run as user U (NAME or UID[:GID]) once set up\n"
    "      --policy FILE    the intermediate's policy file, applied here\n"
    "                       too (agents it does not list lose access)\n"
    "  -h, --help           this text\n"
    "\n"
    "Every option but --help and --check can also come from the\n"
    "environment as ZTNA_<OPTION> (ZTNA_METRICS_BIND=0.0.0.0); flags win over\n"
    "the configuration file, which wins over the environment. The original\n"
    "connector's --p2p-cert, --p2p-key, --ca-cert, --p2p-port and its\n"
    "INTERMEDIATE_SERVER, SERVICE_HOST, SERVICE_PORT variables are accepted.\n"
    "\n"
    "Backends on loopback are served only when configured as a loopback\n"
    "address; link-local and metadata addresses and the connector's own\n"
    "addresses never are. Signals: HUP reloads certificates, TERM and INT\n"
    "shut down.\n";

enum cdrop {
  D_BAD_CHECKSUM, D_PROTOCOL, D_NOT_OFFERED, D_TOO_LARGE, D_QUEUE_FULL,
  D_NOT_CONNECTED, D_FLOW_LIMIT, D_MALFORMED, D_NOT_AUTHORIZED, D_NOT_LINKED,
  D_AGENT_LIMIT, D_COUNT
};
static const char *const cdrop_names[D_COUNT] = {
  "bad_checksum", "unsupported_protocol", "protocol_not_offered",
  "too_large",    "queue_full",           "not_connected",
  "flow_limit",   "malformed",            "not_authorized",
  "not_linked",   "agent_limit",
};

struct cctx;

struct csvc {
  struct cctx *x;
  struct cfg_service *cfg;
  struct sockaddr_storage backend;
  struct uplink *up;
  struct sockaddr_storage observed; /* QAD: our public address */
  int has_observed;
};

struct dconn;

/* One agent of one service as the connector knows it. A ztna agent is
 * its end-to-end connection (conn set; one identity per service and
 * address family), whichever path that connection takes. An original
 * agent, whose raw IP packets come through the intermediate, is the
 * address the intermediate translated it to (conn NULL). Its TCP and UDP
 * state hangs off this. */
struct agent_id {
  struct agent_id *next;   /* hash chain */
  struct csvc *svc;
  int family;
  uint8_t addr[16];        /* its source address (on the relay: the
                              intermediate's translation) */
  struct dconn *conn;      /* its end-to-end connection, or NULL */
  size_t nflows;           /* its UDP flows (MAX_UDP_PER_AGENT) */
  uint64_t last_ms;
};

/* An agent's end-to-end QUIC connection (protocol.md 10; the connector
 * is the server): through a relay session, or direct after a punch, the
 * same connection either way. */
struct dconn {
  struct dconn *next, *prev;
  struct cctx *x;
  struct quic_conn *qc;
  unsigned char cert_fp[32]; /* the agent's certificate */
  struct tls_identity *id;   /* and its names, for the policy (malloc'd) */
  char name[400];
  int up;
  int direct;   /* on a direct path now */
  uint64_t sid; /* the relay session it came through last */
  uint64_t punch_sid; /* the punch it said is its own (WIRE_PUNCH_BIND) */
  uint8_t grants[CFG_MAX_SERVICES];
  struct agent_id *ids[CFG_MAX_SERVICES][2]; /* by service, IPv4/IPv6 */
};

/* A relay session the intermediate carries for us: which service's
 * connection its packets go back on. */
struct vsess {
  struct vsess *next;
  uint64_t id;
  struct csvc *svc;
  uint64_t last_ms; /* its last packet from the agent */
};
/* A session idle this long is forgotten (bounded table); the agent's
 * next packet on it, a fallback from the direct path, makes it again. */
#define VSESS_IDLE_MS 60000
#define VSESS_BUCKETS 1024

struct cctx {
  uv_loop_t *loop;
  struct cfg_connector cfg;
  char config_path[CFG_PATH_MAX];
  const char *cert, *key;
  struct tls_ctx *tls;
  struct quic_endpoint *ep;
  struct netstack *ns;
  struct csvc svcs[CFG_MAX_SERVICES];
  size_t nsvcs;
  struct udpflows *udp;
  struct metrics *m;
  struct metrics_http *http;
  struct daemon_signals sig;
  uv_timer_t sweep;
  struct daemon_drain drain;
  uint64_t started_ms;
  uint64_t fwd_packets, fwd_bytes, drops[D_COUNT], icmp_echo;
  struct metric *mx_pkts, *mx_bytes, *mx_tcp, *mx_tcp_err, *mx_reconn,
      *mx_uptime, *mx_drops[D_COUNT], *mx_flows, *mx_tcp_active, *mx_icmp;
  int stopping;
  struct p2p_server p2p;     /* punches agents ask for */
  struct tls_ctx *srv_tls;   /* direct connections from agents */
  struct cfg_policy *policy; /* --policy: NULL when none */
  struct agent_id *ids[1024];  /* by relay address */
  struct agent_id *orphans;    /* agents of end-to-end connections */
  size_t nids;
  struct dconn *dconns;
  size_t ndconns;
  struct vsess *vs[VSESS_BUCKETS];
  size_t nvs;
  uint64_t e2e_total;
  struct metric *mx_e2e_total, *mx_vsess;
  uint64_t direct_total, direct_rejected, direct_lost, direct_rx, direct_tx,
      e2e_relay_tx, e2e_relay_rx;
  struct metric *mx_ctl_limited, *mx_gone, *mx_revoked;
  struct metric *mx_direct, *mx_direct_total, *mx_direct_rej,
      *mx_direct_lost, *mx_direct_rx, *mx_direct_tx;
  uint8_t dbuf[65536], rbuf[65536];
  uint64_t ctl_limited, agents_gone, revoked;
  struct punch_rate ctl_rate;
  struct metric *mx_punch_ok, *mx_punch_fail, *mx_punch_active,
      *mx_punch_bound, *mx_punch_rejected;
  uint8_t buf[65536];
  /* SHA-256 of the files in use: what a reload reports as changed. */
  uint8_t sums[4][32];
};


static void drop(struct cctx *x, enum cdrop d)
{
  x->drops[d]++;
  log_debug("packet dropped: %s", cdrop_names[d]);
}

/* --- sending back to the agent --------------------------------------------- */

static void send_to_agent(struct csvc *s, const uint8_t *pkt, size_t n)
{
  struct iovec v = { (void *)(uintptr_t)pkt, n };
  int rv = uplink_send(s->up, &v, 1);

  if (rv == 0)
    return;
  drop(s->x, rv == ZTNA_ERR_TOO_LARGE  ? D_TOO_LARGE
             : rv == ZTNA_ERR_QUEUE_FULL ? D_QUEUE_FULL
                                         : D_NOT_CONNECTED);
}

/* To an agent: on its end-to-end connection (whatever path it takes), or
 * for an original agent through the relay. */
static void send_to_id(struct agent_id *a, const uint8_t *pkt, size_t n)
{
  struct dconn *dc = a->conn;
  struct cctx *x = a->svc->x;
  int rv;

  if (!dc) {
    send_to_agent(a->svc, pkt, n);
    return;
  }
  if (!dc->up) {
    drop(x, D_NOT_CONNECTED);
    return;
  }
  rv = quic_conn_send_datagram(dc->qc, pkt, n);
  if (rv == 0) {
    if (quic_conn_path_virtual(dc->qc))
      x->e2e_relay_tx++;
    else
      x->direct_tx++;
    return;
  }
  drop(x, rv == ZTNA_ERR_TOO_LARGE  ? D_TOO_LARGE
          : rv == ZTNA_ERR_QUEUE_FULL ? D_QUEUE_FULL
                                      : D_NOT_CONNECTED);
}

static void netstack_send(void *conn, const uint8_t *pkt, size_t n, void *ud)
{
  (void)ud;
  send_to_id(conn, pkt, n);
}

/* --- agents ------------------------------------------------------------------- */

static size_t id_hash(const struct csvc *s, int family, const uint8_t *addr)
{
  uint32_t h = 2166136261u ^ (uint32_t)(uintptr_t)s ^ (uint32_t)family;
  for (int i = 0; i < (family == 4 ? 4 : 16); i++)
    h = (h ^ addr[i]) * 16777619u;
  return h % 1024;
}


static struct agent_id **id_list(struct cctx *x, struct agent_id *a)
{
  return a->conn ? &x->orphans : &x->ids[id_hash(a->svc, a->family, a->addr)];
}

static void id_unhash(struct cctx *x, struct agent_id *a)
{
  struct agent_id **pp = id_list(x, a);

  while (*pp && *pp != a)
    pp = &(*pp)->next;
  if (*pp)
    *pp = a->next;
}

static void id_hash_in(struct cctx *x, struct agent_id *a)
{
  struct agent_id **pp = id_list(x, a);
  a->next = *pp;
  *pp = a;
}

static void id_free(struct cctx *x, struct agent_id *a)
{
  id_unhash(x, a);
  x->nids--;
  if (x->ns) /* gone already at shutdown */
    netstack_conn_gone(x->ns, a);
  if (x->udp)
    udpflows_owner_gone(x->udp, a, &a->nflows);
  if (a->conn)
    for (size_t i = 0; i < CFG_MAX_SERVICES; i++)
      for (int fam = 0; fam < 2; fam++)
        if (a->conn->ids[i][fam] == a)
          a->conn->ids[i][fam] = NULL;
  free(a);
}

static struct agent_id *id_find(struct csvc *s, int family,
                                const uint8_t *addr)
{
  struct cctx *x = s->x;
  size_t h = id_hash(s, family, addr), alen = family == 4 ? 4 : 16;
  struct agent_id *a;

  for (a = x->ids[h]; a; a = a->next)
    if (a->svc == s && a->family == family && !memcmp(a->addr, addr, alen))
      break;
  return a;
}


/* The agent behind address addr on service s's relay connection. */
static struct agent_id *id_get(struct csvc *s, int family,
                               const uint8_t *addr)
{
  struct cctx *x = s->x;
  size_t h = id_hash(s, family, addr), alen = family == 4 ? 4 : 16;
  struct agent_id *a = id_find(s, family, addr);

  if (!a) {
    if (x->nids >= MAX_AGENT_IDS)
      return NULL;
    a = calloc(1, sizeof(*a));
    if (!a)
      return NULL;
    a->svc = s;
    a->family = family;
    memcpy(a->addr, addr, alen);
    a->next = x->ids[h];
    x->ids[h] = a;
    x->nids++;
  }
  a->last_ms = uv_now(x->loop);
  return a;
}

/* --- UDP flows (udpflow.c) ------------------------------------------------------- */

static void flow_reply(void *owner, const uint8_t *pkt, size_t n, void *ud)
{
  (void)ud;
  send_to_id(owner, pkt, n);
}

static void flow_drop(enum udpflow_drop why, void *ud)
{
  drop(ud, why == UDPFLOW_TOO_LARGE    ? D_TOO_LARGE
           : why == UDPFLOW_QUEUE_FULL ? D_QUEUE_FULL
                                       : D_FLOW_LIMIT);
}

static void vs_forget(struct cctx *x, uint64_t id);

static void sweep_cb(uv_timer_t *t)
{
  struct cctx *x = t->data;
  uint64_t now = uv_now(x->loop);

  udpflows_sweep(x->udp, UDP_IDLE_MS);
  p2p_server_expire(&x->p2p, NULL);
  daemon_heap_trim(now);
  for (size_t b = 0; b < VSESS_BUCKETS; b++)
    for (struct vsess *v = x->vs[b], *vn; v; v = vn) {
      vn = v->next;
      if (now - v->last_ms >= VSESS_IDLE_MS)
        vs_forget(x, v->id);
    }
  /* An agent whose certificate expired since its handshake loses its
   * connection, on whatever path it runs. */
  for (struct dconn *dc = x->dconns, *dn; dc; dc = dn) {
    dn = dc->next;
    if (dc->up && dc->id && dc->id->not_after &&
        (int64_t)time(NULL) >= dc->id->not_after) {
      dc->up = 0;
      log_info("%s: its certificate expired: closing", dc->name);
      quic_conn_close(dc->qc, 2, "certificate expired");
    }
  }
  for (size_t h = 0; h < 1024; h++) {
    struct agent_id *a = x->ids[h], *an;
    for (; a; a = an) {
      int busy = 0;
      an = a->next;
      if (now - a->last_ms < AGENT_ID_IDLE_MS)
        continue;
      busy = a->nflows > 0;
      if (!busy && !netstack_conn_sessions(x->ns, a))
        id_free(x, a);
    }
  }
}

/* --- packets from the tunnel ---------------------------------------------------- */

/* A packet from agent a (its relay-side address as the source). */
static void on_packet(struct agent_id *a, const uint8_t *pkt, size_t n)
{
  struct csvc *s = a->svc;
  struct cctx *x = s->x;
  struct ippkt ip;
  const uint8_t *l4;
  size_t l4len;

  if (ippkt_parse(pkt, n, &ip) < 0) {
    drop(x, D_MALFORMED);
    return;
  }
  if (ippkt_verify(pkt, n) < 0) {
    drop(x, D_BAD_CHECKSUM);
    return;
  }
  ippkt_l4(pkt, &ip, &l4, &l4len);
  x->fwd_packets++;
  x->fwd_bytes += n;
  if ((ip.version == 4 && ip.proto == 1) ||
      (ip.version == 6 && ip.proto == 58)) {
    memcpy(x->buf, pkt, ip.totlen);
    if (ippkt_echo_reply(x->buf, ip.totlen) == 0) {
      x->icmp_echo++;
      send_to_id(a, x->buf, ip.totlen);
    } else {
      drop(x, D_PROTOCOL);
    }
    return;
  }
  if (ip.proto == 17 && l4len >= 8) {
    if (!(s->cfg->protocol & CFG_PROTO_UDP)) {
      drop(x, D_NOT_OFFERED);
      return;
    }
    udpflows_input(x->udp, a, &a->nflows, (struct sockaddr *)&s->backend,
                   &ip, l4, l4len);
    return;
  }
  if (ip.proto == 6 && l4len >= 20) {
    if (!(s->cfg->protocol & CFG_PROTO_TCP)) {
      drop(x, D_NOT_OFFERED);
      return;
    }
    netstack_input(x->ns, a, (struct sockaddr *)&s->backend, pkt, ip.totlen);
    return;
  }
  drop(x, D_PROTOCOL);
}

/* --- relay sessions: end-to-end connections through the intermediate ----- */

static struct vsess **vs_slot(struct cctx *x, uint64_t id)
{
  return &x->vs[(id * 0x9e3779b97f4a7c15ull) >> 54 & (VSESS_BUCKETS - 1)];
}

static struct vsess *vs_find(struct cctx *x, uint64_t id)
{
  struct vsess *v = *vs_slot(x, id);
  while (v && v->id != id)
    v = v->next;
  return v;
}

static void vs_forget(struct cctx *x, uint64_t id)
{
  struct vsess **pp = vs_slot(x, id), *v;

  while (*pp && (*pp)->id != id)
    pp = &(*pp)->next;
  if (!(v = *pp))
    return;
  *pp = v->next;
  x->nvs--;
  free(v);
}

/* The packets of an end-to-end connection leave on the service's relay
 * connection, behind the session header. */
static int vsend(struct quic_endpoint *ep, const struct sockaddr *to,
                 const uint8_t *d, size_t n, void *ud)
{
  struct cctx *x = ud;
  struct vsess *v;
  uint64_t id;
  (void)ep;

  if (!quic_addr_virtual(to, &id) || !(v = vs_find(x, id)))
    return ZTNA_ERR_STATE;
  return uplink_send_session(v->svc->up, id, d, n);
}

/* A packet of an end-to-end connection from the intermediate. The
 * intermediate opened the session for an agent it authorized; the
 * connection's handshake authenticates the agent again here. */
static void on_session_data(struct csvc *s, const uint8_t *d, size_t n)
{
  struct cctx *x = s->x;
  struct sockaddr_storage from;
  const uint8_t *pkt;
  size_t len;
  uint64_t id;
  struct vsess *v;

  if (wire_session_data_decode(d, n, &id, &pkt, &len) < 0) {
    drop(x, D_MALFORMED);
    return;
  }
  v = vs_find(x, id);
  if (!v) {
    if (x->nvs >= MAX_DIRECT || !(v = calloc(1, sizeof(*v)))) {
      drop(x, D_AGENT_LIMIT);
      return;
    }
    v->id = id;
    v->next = *vs_slot(x, id);
    *vs_slot(x, id) = v;
    x->nvs++;
  }
  v->svc = s; /* its packets go back the way they came */
  v->last_ms = uv_now(x->loop);
  quic_virtual_addr(&from, id, QUIC_VIRTUAL_LOCAL_PORT);
  quic_endpoint_input(x->ep, pkt, len, (struct sockaddr *)&from);
}

/* The intermediate ended a session: the agent left it, or lost its grant
 * (then its connection ends here too, on whatever path it is). */
static void on_session_closed(struct csvc *s, const uint8_t *d, size_t n)
{
  struct cctx *x = s->x;
  uint64_t id;
  uint8_t reason;

  if (wire_session_closed_decode(d, n, &id, &reason) < 0) {
    drop(x, D_MALFORMED);
    return;
  }
  vs_forget(x, id);
  /* Revoked: on whatever path the connection runs now. */
  for (struct dconn *dc = x->dconns, *next; dc; dc = next) {
    next = dc->next; /* closing frees dc */
    if (reason == WIRE_SESSION_REVOKED && dc->sid == id) {
      log_info("%s: the intermediate revoked its access: closing",
               dc->name);
      quic_conn_close(dc->qc, 2, "access revoked");
    }
  }
}

/* From the relay: the agent is known by its translated source address. */
static void on_relay_packet(struct csvc *s, const uint8_t *pkt, size_t n)
{
  struct ippkt ip;
  struct agent_id *a;

  if (ippkt_parse(pkt, n, &ip) < 0) {
    drop(s->x, D_MALFORMED);
    return;
  }
  a = id_get(s, ip.version, ip.src);
  if (!a) {
    drop(s->x, D_AGENT_LIMIT);
    return;
  }
  on_packet(a, pkt, n);
}

static void on_datagram(struct uplink *u, const uint8_t *d, size_t n,
                        void *ud)
{
  struct csvc *s = ud;
  const uint8_t *id, *pkt;
  size_t idlen, pktlen;
  (void)u;

  switch (wire_classify(d, n)) {
  case WIRE_KIND_ROUTED:
    /* ztna: a wrapped packet is taken wherever it arrives, for this
     * connection's service only. */
    if (wire_routed_decode(d, n, &id, &idlen, &pkt, &pktlen) < 0 ||
        idlen != strlen(s->cfg->id) ||
        strncasecmp((const char *)id, s->cfg->id, idlen)) {
      drop(s->x, D_MALFORMED);
      return;
    }
    on_relay_packet(s, pkt, pktlen);
    return;
  case WIRE_KIND_IPV4:
  case WIRE_KIND_IPV6:
    on_relay_packet(s, d, n);
    return;
  case WIRE_KIND_SESSION_DATA:
    on_session_data(s, d, n);
    return;
  case WIRE_KIND_SESSION_CLOSED:
    on_session_closed(s, d, n);
    return;
  case WIRE_KIND_REVOKED: {
    /* The intermediate's policy no longer lets that agent reach the
     * service: its connections carrying it close, on whatever path, also
     * where no relay session the intermediate ended leads to them. */
    const uint8_t *fp;
    size_t si = (size_t)(s - s->x->svcs);
    if (wire_revoked_decode(d, n, &fp) < 0) {
      drop(s->x, D_MALFORMED);
      return;
    }
    for (struct dconn *dc = s->x->dconns, *next; dc; dc = next) {
      next = dc->next; /* closing may free dc */
      if (dc->up && dc->grants[si] && !memcmp(dc->cert_fp, fp, 32)) {
        log_info("%s: the intermediate revoked its access to '%s': "
                 "closing", dc->name, s->cfg->id);
        s->x->revoked++;
        quic_conn_close(dc->qc, 2, "access revoked");
      }
    }
    return;
  }
  case WIRE_KIND_AGENT_GONE: {
    /* ztna: the intermediate will give this address to another agent
     * one day; nothing of this one's may reach that one. */
    uint8_t addr[16];
    int family;
    struct agent_id *a;
    if (wire_agent_gone_decode(d, n, &family, addr) < 0) {
      drop(s->x, D_MALFORMED);
      return;
    }
    s->x->agents_gone++;
    if ((a = id_find(s, family, addr)))
      id_free(s->x, a);
    return;
  }
  default:
    drop(s->x, D_MALFORMED);
  }
}

static void on_down(struct uplink *u, const struct quic_close_info *i,
                    void *ud)
{
  struct csvc *s = ud;
  struct cctx *x = s->x;
  (void)u;
  (void)i;
  if (x->stopping)
    return; /* everything goes anyway */
  /* Its relay sessions went with it (agents' connections on them move to
   * new ones, or on directly). */
  for (size_t b = 0; b < VSESS_BUCKETS; b++)
    for (struct vsess *v = x->vs[b], *vn; v; v = vn) {
      vn = v->next;
      if (v->svc == s)
        vs_forget(x, v->id);
    }
  /* The original agents it carried are gone with it (the intermediate
   * translates them anew on the next connection). */
  for (size_t h = 0; h < 1024; h++) {
    struct agent_id *a = x->ids[h], *next;
    for (; a; a = next) {
      next = a->next;
      /* Its relay address may go to another agent on the next
       * connection. */
      if (a->svc == s)
        id_free(x, a);
    }
  }
}

static void on_qad(struct uplink *u, const struct sockaddr *sa, void *ud)
{
  struct csvc *s = ud;
  char a[80];
  (void)u;

  log_info("%s: the intermediate sees us at %s", s->cfg->id,
           netaddr_str(sa, a, sizeof(a)));
  memset(&s->observed, 0, sizeof(s->observed));
  memcpy(&s->observed, sa, sa->sa_family == AF_INET6
                               ? sizeof(struct sockaddr_in6)
                               : sizeof(struct sockaddr_in));
  s->has_observed = 1;
}

/* --- P2P: answering punches ------------------------------------------------------ */

static void punch_send(const struct sockaddr *to, const uint8_t *d, size_t n,
                       void *ud)
{
  struct cctx *x = ud;
  quic_endpoint_send_raw(x->ep, to, d, n);
}

/* The punch driver's view of a service (p2p.h). */
static int p2p_send_signal(void *svc, const struct wire_sig *m, void *ud)
{
  struct csvc *s = svc;
  (void)ud;
  return uplink_send_signal(s->up, m);
}

static const struct sockaddr *p2p_observed(void *svc, void *ud)
{
  struct csvc *s = svc;
  (void)ud;
  return s->has_observed ? (const struct sockaddr *)&s->observed : NULL;
}

static const struct sockaddr *p2p_server_addr(void *svc, void *ud)
{
  struct csvc *s = svc;
  (void)ud;
  return (const struct sockaddr *)uplink_server(s->up);
}

static const char *p2p_name(void *svc, void *ud)
{
  (void)ud;
  return ((struct csvc *)svc)->cfg->id;
}

static int p2p_key(void *svc, uint64_t session, const uint8_t *cid,
                   size_t cidlen, struct punch_auth *a, void *ud)
{
  struct cctx *x = ud;
  size_t si = (size_t)((struct csvc *)svc - x->svcs);
  struct dconn *dc = NULL;

  if (cidlen) {
    /* Only server connections here are agents' (the uplinks are ours). */
    struct quic_conn *c = quic_endpoint_find_cid(x->ep, cid, cidlen);
    if (c && quic_conn_is_server(c))
      dc = quic_conn_ud(c);
  } else {
    for (dc = x->dconns; dc; dc = dc->next)
      if (dc->up && dc->punch_sid == session)
        break;
  }
  if (!dc || !dc->up || !dc->grants[si])
    return ZTNA_ERR_NOT_FOUND;
  return p2p_punch_key(dc->qc, session, a);
}

static const struct p2p_server_io p2p_io = {
  p2p_send_signal, p2p_observed, p2p_server_addr, p2p_name, p2p_key, NULL,
};

static void on_signal(struct uplink *u, const struct wire_sig *m, void *ud)
{
  struct csvc *s = ud;
  (void)u;
  p2p_server_signal(&s->x->p2p, s, m);
}

/* Control packets on the shared socket: binding checks and keepalives. */
static void on_raw_packet(struct quic_endpoint *ep, const uint8_t *d,
                          size_t n, const struct sockaddr *from, void *ud)
{
  struct cctx *x = ud;
  struct punch_io io = { punch_send, x, NULL };
  struct wire_ctl c;
  uint64_t now = uv_now(x->loop);
  (void)ep;

  if (wire_ctl_decode(d, n, &c) < 0)
    return;
  if (c.kind == WIRE_CTL_BIND_REQ || c.kind == WIRE_CTL_KA_REQ) {
    /* Answers only tell the asker its own address; still, at most
     * CTL_ANSWERS_PER_SEC of them. */
    if (!punch_rate_ok(&x->ctl_rate, CTL_ANSWERS_PER_SEC, now)) {
      x->ctl_limited++; /* counted: ztna_connector_control_limited_total */
      return;
    }
  }
  if (c.kind == WIRE_CTL_KA_REQ) {
    uint8_t buf[WIRE_KEEPALIVE_LEN];
    int k;
    c.kind = WIRE_CTL_KA_RESP;
    k = wire_ctl_encode(buf, sizeof(buf), &c);
    if (k > 0)
      quic_endpoint_send_raw(x->ep, from, buf, (size_t)k);
    return;
  }
  if (c.kind == WIRE_CTL_BIND_REQ && !c.auth)
    punch_answer(&io, &c, from, NULL); /* tagged ones: p2p.c */
  p2p_server_packet(&x->p2p, &c, from);
}

/* --- P2P: direct connections from agents -------------------------------------- */

/* A packet on an end-to-end connection: the connection is the agent.
 * Its identity for the service (and the packet's address family) is made
 * on first use; the agent's own address stays as it is, since lwIP and
 * the UDP flows tell agents apart by identity, not address. */
static void on_e2e_packet(struct dconn *dc, size_t svc,
                          const struct ippkt *ip, const uint8_t *pkt)
{
  struct cctx *x = dc->x;
  struct agent_id **slot = &dc->ids[svc][ip->version == 4 ? 0 : 1];
  struct agent_id *a = *slot;

  if (!a) {
    if (x->nids >= MAX_AGENT_IDS || !(a = calloc(1, sizeof(*a)))) {
      drop(x, D_AGENT_LIMIT);
      return;
    }
    a->svc = &x->svcs[svc];
    a->family = ip->version;
    memcpy(a->addr, ip->src, ip->addrlen);
    a->conn = dc;
    id_hash_in(x, a);
    x->nids++;
    *slot = a;
  } else if (memcmp(a->addr, ip->src, ip->addrlen)) {
    drop(x, D_NOT_LINKED); /* one tunnel address per agent and family */
    return;
  }
  a->last_ms = uv_now(x->loop);
  on_packet(a, pkt, ip->totlen);
}

static void on_direct_datagram(struct quic_conn *c, const uint8_t *d,
                               size_t n, void *ud)
{
  struct dconn *dc = ud;
  struct cctx *x = dc->x;
  const uint8_t *id, *pkt = d;
  size_t idlen, pktlen = n, svc = SIZE_MAX;
  struct ippkt ip;

  if (!dc->up)
    return;
  switch (wire_classify(d, n)) {
  case WIRE_KIND_PUNCH_BIND:
    if (wire_punch_bind_decode(d, n, &dc->punch_sid) < 0) {
      drop(x, D_MALFORMED);
      return;
    }
    p2p_server_bind(&x->p2p, dc->punch_sid);
    return;
  case WIRE_KIND_ROUTED:
    if (wire_routed_decode(d, n, &id, &idlen, &pkt, &pktlen) < 0) {
      drop(x, D_MALFORMED);
      return;
    }
    for (size_t i = 0; i < x->nsvcs; i++)
      if (strlen(x->svcs[i].cfg->id) == idlen &&
          !strncasecmp(x->svcs[i].cfg->id, (const char *)id, idlen))
        svc = i;
    break;
  case WIRE_KIND_IPV4:
  case WIRE_KIND_IPV6:
    /* Unwrapped: only when the agent may reach exactly one service. */
    for (size_t i = 0, k = 0; i < x->nsvcs; i++)
      if (dc->grants[i] && k++ == 0)
        svc = i;
      else if (dc->grants[i])
        svc = SIZE_MAX - 1;
    break;
  default:
    drop(x, D_MALFORMED);
    return;
  }
  if (svc >= x->nsvcs || !dc->grants[svc]) {
    drop(x, D_NOT_AUTHORIZED);
    return;
  }
  if (ippkt_parse(pkt, pktlen, &ip) < 0 || pktlen > sizeof(x->dbuf)) {
    drop(x, D_MALFORMED);
    return;
  }
  if (quic_conn_path_virtual(c))
    x->e2e_relay_rx++;
  else
    x->direct_rx++;
  on_e2e_packet(dc, svc, &ip, pkt);
}

/* Tells the agent which of our services its connection may carry (the
 * ones its certificate and the policy grant): its other services of ours
 * then ride on this connection (protocol.md 10). As many as fit one
 * DATAGRAM; the agent opens connections of its own for any others. */
static void send_services(struct dconn *dc)
{
  struct cctx *x = dc->x;
  struct wire_id ids[CFG_MAX_SERVICES];
  uint8_t msg[QUIC_DATAGRAM_MAX];
  size_t n = 0, room = quic_conn_max_datagram(dc->qc);
  int k = -1;

  for (size_t i = 0; i < x->nsvcs; i++)
    if (dc->grants[i]) {
      ids[n].p = (const uint8_t *)x->svcs[i].cfg->id;
      ids[n].n = strlen(x->svcs[i].cfg->id);
      n++;
    }
  if (room > sizeof(msg))
    room = sizeof(msg);
  while (n > 0 && (k = wire_services_encode(msg, room, ids, n)) < 0)
    n--;
  if (k > 0)
    quic_conn_send_datagram(dc->qc, msg, (size_t)k);
}

static const struct api_ops api_ops;

static void dconn_unlink(struct cctx *x, struct dconn *dc)
{
  if (dc->prev)
    dc->prev->next = dc->next;
  else
    x->dconns = dc->next;
  if (dc->next)
    dc->next->prev = dc->prev;
  x->ndconns--;
}

static void on_direct_handshake(struct quic_conn *c, void *ud)
{
  struct dconn *dc = ud;
  struct cctx *x = dc->x;
  struct tls_identity id;
  char a[64];
  size_t ngrants = 0;

  if (quic_conn_is_h3(c)) {
    /* The status and admin API (docs/api.md): not an agent, it carries
     * and signals nothing. */
    quic_conn_set_cbs(c, NULL, NULL);
    dconn_unlink(x, dc);
    free(dc);
    api_attach(c, &api_ops, x);
    return;
  }

  memset(&id, 0, sizeof(id));
  quic_conn_peer_identity(c, &id);
  memcpy(dc->cert_fp, id.fp, sizeof(dc->cert_fp));
  {
    uint64_t sid;
    if (quic_addr_virtual(quic_conn_peer(c), &sid))
      snprintf(a, sizeof(a), "relay session %llu", (unsigned long long)sid);
    else
      netaddr_str(quic_conn_peer(c), a, sizeof(a));
  }
  snprintf(dc->name, sizeof(dc->name), "agent %s (%s)",
           id.cn[0] ? id.cn : "no certificate", a);
  /* The same grants and policy file the intermediate honours
   * (protocol.md 3): deny by default, at both ends. */
  {
    /* Kept at the size of its SANs (nothing reads past ndns). */
    size_t idsize = offsetof(struct tls_identity, dns) +
                    id.ndns * sizeof(id.dns[0]);
    dc->id = malloc(idsize);
    if (dc->id)
      memcpy(dc->id, &id, idsize);
  }
  for (size_t i = 0; dc->id && i < x->nsvcs; i++) {
    const char *sv = x->svcs[i].cfg->id;
    dc->grants[i] = (uint8_t)policy_allows(x->policy, &id, POLICY_AGENT,
                                           (const uint8_t *)sv, strlen(sv));
    ngrants += dc->grants[i];
  }
  if (!ngrants) {
    x->direct_rejected++;
    log_warnx("%s: refused: its certificate grants none of our services",
              dc->name);
    quic_conn_close(c, 2, "not authorized for any service here");
    return;
  }
  dc->up = 1;
  x->e2e_total++;
  quic_conn_set_keepalive(c, DIRECT_PING_MS);
  send_services(dc);
  log_info("%s: connected, %zu of our services granted", dc->name, ngrants);
}

static void on_direct_close(struct quic_conn *c,
                            const struct quic_close_info *i, void *ud)
{
  struct dconn *dc = ud;
  struct cctx *x = dc->x;
  (void)c;

  /* The agent is its connection: its TCP and UDP state goes with it. */
  for (size_t k = 0; k < CFG_MAX_SERVICES; k++)
    for (int f = 0; f < 2; f++)
      if (dc->ids[k][f])
        id_free(x, dc->ids[k][f]);
  if (dc->up)
    log_info("%s: closed (%s%s)", dc->name,
             i->local ? "" : "by the agent: ",
             i->reason[0] ? i->reason : "no reason");
  dconn_unlink(x, dc);
  free(dc->id);
  free(dc);
}

/* The agent moved its connection (QUIC migration, validated by ngtcp2). */
static void on_direct_path(struct quic_conn *c, const struct sockaddr *peer,
                           void *ud)
{
  struct dconn *dc = ud;
  struct cctx *x = dc->x;
  char a[64];

  (void)c;

  if (quic_addr_virtual(peer, &dc->sid)) {
    if (dc->direct) {
      dc->direct = 0;
      x->direct_lost++;
    }
    log_info("%s: path: relay", dc->name);
    return;
  }
  if (!dc->direct)
    x->direct_total++;
  dc->direct = 1;
  log_info("%s: path: direct from %s", dc->name,
           netaddr_str(peer, a, sizeof(a)));
}

static const struct quic_conn_cbs direct_cbs = {
  .handshake_cb = on_direct_handshake,
  .path_cb = on_direct_path,
  .datagram_cb = on_direct_datagram,
  .close_cb = on_direct_close,
};

static int on_accept(struct quic_endpoint *ep, struct quic_conn *c, void *ud)
{
  struct cctx *x = ud;
  struct dconn *dc;
  (void)ep;

  if (x->stopping || x->ndconns >= MAX_DIRECT)
    return 1;
  dc = calloc(1, sizeof(*dc));
  if (!dc)
    return 1;
  dc->x = x;
  dc->qc = c;
  quic_addr_virtual(quic_conn_peer(c), &dc->sid);
  snprintf(dc->name, sizeof(dc->name), "agent connection");
  dc->next = x->dconns;
  if (x->dconns)
    x->dconns->prev = dc;
  x->dconns = dc;
  x->ndconns++;
  quic_conn_set_cbs(c, &direct_cbs, dc);
  return 0;
}

static const struct uplink_cbs uplink_cbs = {
  .down = on_down,
  .datagram = on_datagram,
  .qad = on_qad,
  .signal = on_signal,
};

static const struct quic_endpoint_cbs ep_cbs = {
  .accept_cb = on_accept,
  .packet_cb = on_raw_packet,
};

/* --- backends and the egress guard ------------------------------------------------ */

static int is_own_address(const struct sockaddr *sa)
{
  struct ifaddrs *ifa, *i;
  int own = 0;

  if (getifaddrs(&ifa) < 0)
    return 0;
  for (i = ifa; i && !own; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != sa->sa_family)
      continue;
    if (sa->sa_family == AF_INET)
      own = ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr ==
            ((const struct sockaddr_in *)sa)->sin_addr.s_addr;
    else
      own = !memcmp(&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr,
                    &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
  }
  freeifaddrs(ifa);
  return own;
}

/* Returns NULL when the backend may be served, else why not. */
static const char *egress_refused(const struct sockaddr *sa, int literal)
{
  if (sa->sa_family == AF_INET) {
    uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
    if ((a >> 24) == 127)
      return literal ? NULL : "it resolves to loopback; write the loopback "
                              "address itself to serve it";
    if ((a >> 16) == 0xa9fe)
      return "link-local and metadata addresses are never served";
    if (a == 0 || (a >> 28) == 0xe || a == 0xffffffffu)
      return "not a unicast address";
  } else {
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t lo[16] = { [15] = 1 };
    if (!memcmp(b, lo, 16))
      return literal ? NULL : "it resolves to loopback; write the loopback "
                              "address itself to serve it";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
      return "link-local addresses are never served";
    if (b[0] == 0xff)
      return "not a unicast address";
  }
  if (is_own_address(sa))
    return "it is one of this connector's own addresses";
  return NULL;
}

static int resolve_backend(struct csvc *s)
{
  char host[CFG_STR_MAX], err[300];
  uint16_t port;
  int literal;
  const char *why;

  if (cfg_split_hostport(s->cfg->backend, host, sizeof(host), &port) < 0) {
    fprintf(stderr, "ztna connector: service '%s': backend '%s' is not "
            "HOST:PORT\n", s->cfg->id, s->cfg->backend);
    return -1;
  }
  if (netaddr_resolve(host, port, &s->backend, &literal, err,
                      sizeof(err)) < 0) {
    fprintf(stderr, "ztna connector: service '%s': %s\n", s->cfg->id, err);
    return -1;
  }
  why = egress_refused((struct sockaddr *)&s->backend, literal);
  if (why) {
    fprintf(stderr, "ztna connector: service '%s': backend %s refused: %s\n",
            s->cfg->id, s->cfg->backend, why);
    return -1;
  }
  return 0;
}

/* --- metrics, signals ------------------------------------------------------------- */

static void collect(void *ud)
{
  struct cctx *x = ud;
  const struct netstack_stats *ts = netstack_stats(x->ns);
  uint64_t reconn = 0;

  size_t punching = 0;

  for (size_t i = 0; i < x->nsvcs; i++)
    reconn += uplink_reconnects(x->svcs[i].up);
  punching = p2p_server_active(&x->p2p);
  metric_set(x->mx_punch_ok, (int64_t)x->p2p.ok);
  metric_set(x->mx_punch_fail, (int64_t)x->p2p.failed);
  metric_set(x->mx_punch_active, (int64_t)punching);
  metric_set(x->mx_punch_bound, (int64_t)x->p2p.bound);
  metric_set(x->mx_punch_rejected, (int64_t)x->p2p.rejected);
  {
    int64_t up = 0;
    for (struct dconn *dc = x->dconns; dc; dc = dc->next)
      up += dc->up;
    metric_set(x->mx_direct, up);
  }
  metric_set(x->mx_direct_total, (int64_t)x->direct_total);
  metric_set(x->mx_e2e_total, (int64_t)x->e2e_total);
  metric_set(x->mx_vsess, (int64_t)x->nvs);
  metric_set(x->mx_direct_rej, (int64_t)x->direct_rejected);
  metric_set(x->mx_direct_lost, (int64_t)x->direct_lost);
  metric_set(x->mx_direct_rx, (int64_t)x->direct_rx);
  metric_set(x->mx_ctl_limited, (int64_t)x->ctl_limited);
  metric_set(x->mx_gone, (int64_t)x->agents_gone);
  metric_set(x->mx_revoked, (int64_t)x->revoked);
  metric_set(x->mx_direct_tx, (int64_t)x->direct_tx);
  metric_set(x->mx_pkts, (int64_t)x->fwd_packets);
  metric_set(x->mx_bytes, (int64_t)x->fwd_bytes);
  metric_set(x->mx_tcp, (int64_t)ts->sessions_total);
  metric_set(x->mx_tcp_err, (int64_t)(ts->refused + ts->timeouts +
                                      ts->resets));
  metric_set(x->mx_tcp_active, (int64_t)ts->sessions_active);
  metric_set(x->mx_reconn, (int64_t)reconn);
  metric_set(x->mx_uptime, (int64_t)(uv_now(x->loop) - x->started_ms) / 1000);
  metric_set(x->mx_flows, (int64_t)udpflows_count(x->udp));
  metric_set(x->mx_icmp, (int64_t)x->icmp_echo);
  metric_set(metrics_counter(x->m, "ztna_connector_tcp_stray_segments_total",
                             NULL, "TCP segments of no connection here (the "
                             "connector restarted, or the state went with "
                             "an agent's connection): answered with RST"),
             (int64_t)ts->stray);
  metric_set(metrics_counter(x->m, "ztna_connector_tcp_bytes_total",
                             "direction=\"to_backend\"", "Bytes spliced "
                             "between agents and TCP backends"),
             (int64_t)ts->to_backend);
  metric_set(metrics_counter(x->m, "ztna_connector_tcp_bytes_total",
                             "direction=\"to_agent\"", "Bytes spliced "
                             "between agents and TCP backends"),
             (int64_t)ts->to_agent);
  metric_set(metrics_counter(x->m, "ztna_connector_tcp_backend_writes_total",
                             NULL, "Writes to TCP backends (what an agent "
                             "sent in one loop round goes in one write)"),
             (int64_t)ts->backend_writes);
  if (x->ep)
    quic_endpoint_metrics(x->ep, x->m, "ztna_connector_");
  for (int i = 0; i < D_COUNT; i++)
    metric_set(x->mx_drops[i], (int64_t)x->drops[i]);
  metrics_zero(x->m, "ztna_connector_service_up");
  for (size_t i = 0; i < x->nsvcs; i++) {
    char esc[600], labels[640];
    snprintf(labels, sizeof(labels), "service=\"%s\"",
             metrics_label_escape(esc, sizeof(esc), x->svcs[i].cfg->id,
                                  strlen(x->svcs[i].cfg->id)));
    metric_set(metrics_gauge(x->m, "ztna_connector_service_up", labels,
                             "1 when the service is registered"),
               uplink_reg_state(x->svcs[i].up, 0) == UPLINK_REG_OK &&
                   uplink_is_up(x->svcs[i].up));
  }
  {
    /* Which path each agent of each service takes now. */
    int64_t direct[CFG_MAX_SERVICES] = { 0 }, relay[CFG_MAX_SERVICES] = { 0 };
    for (size_t h = 0; h <= 1024; h++)
      for (struct agent_id *a = h < 1024 ? x->ids[h] : x->orphans; a;
           a = a->next) {
        size_t k = (size_t)(a->svc - x->svcs);
        if (a->conn && a->conn->up && !quic_conn_path_virtual(a->conn->qc))
          direct[k]++;
        else
          relay[k]++;
      }
    for (size_t i = 0; i < x->nsvcs; i++) {
      char esc[600], labels[680];
      metrics_label_escape(esc, sizeof(esc), x->svcs[i].cfg->id,
                           strlen(x->svcs[i].cfg->id));
      snprintf(labels, sizeof(labels), "service=\"%s\",path=\"direct\"",
               esc);
      metric_set(metrics_gauge(x->m, "ztna_connector_agents", labels,
                               "Agents known, by the path they take now"),
                 direct[i]);
      snprintf(labels, sizeof(labels), "service=\"%s\",path=\"relay\"",
               esc);
      metric_set(metrics_gauge(x->m, "ztna_connector_agents", labels,
                               "Agents known, by the path they take now"),
                 relay[i]);
    }
  }
}

/* /readyz: every service registered with the intermediate. */
static int ready(void *ud, char *why, size_t cap)
{
  static const char *const states[] = { "registering", "registered",
                                        "refused", "invalid",
                                        "no answer" };
  struct cctx *x = ud;

  if (x->stopping) {
    snprintf(why, cap, "shutting down");
    return 0;
  }
  for (size_t i = 0; i < x->nsvcs; i++) {
    enum uplink_reg r = uplink_is_up(x->svcs[i].up)
                            ? uplink_reg_state(x->svcs[i].up, 0)
                            : UPLINK_REG_PENDING;
    if (r != UPLINK_REG_OK) {
      snprintf(why, cap, "service '%s': %s", x->svcs[i].cfg->id,
               uplink_is_up(x->svcs[i].up) ? states[r]
                                            : "not connected");
      return 0;
    }
  }
  return 1;
}

static void metrics_init(struct cctx *x)
{
  struct metrics *m = x->m;
  char labels[64];

  x->mx_pkts = metrics_counter(m, "ztna_connector_forwarded_packets_total",
                               NULL, "Packets taken from the tunnel");
  x->mx_bytes = metrics_counter(m, "ztna_connector_forwarded_bytes_total",
                                NULL, "Bytes taken from the tunnel");
  x->mx_tcp = metrics_counter(m, "ztna_connector_tcp_sessions_total", NULL,
                              "TCP connections spliced to a backend");
  x->mx_tcp_err = metrics_counter(m, "ztna_connector_tcp_errors_total", NULL,
                                  "TCP connections refused, timed out or "
                                  "reset");
  x->mx_tcp_active = metrics_gauge(m, "ztna_connector_tcp_sessions_active",
                                   NULL, "TCP connections open");
  x->mx_reconn = metrics_counter(m, "ztna_connector_reconnections_total",
                                 NULL, "Reconnections to the intermediate");
  x->mx_uptime = metrics_gauge(m, "ztna_connector_uptime_seconds", NULL,
                               "Seconds since start");
  x->mx_flows = metrics_gauge(m, "ztna_connector_udp_flows", NULL,
                              "UDP flows open");
  x->mx_icmp = metrics_counter(m, "ztna_connector_icmp_echo_total", NULL,
                               "ICMP echo requests answered");
  for (int i = 0; i < D_COUNT; i++) {
    snprintf(labels, sizeof(labels), "reason=\"%s\"", cdrop_names[i]);
    x->mx_drops[i] = metrics_counter(m, "ztna_connector_drops_total", labels,
                                     "Packets dropped, by reason");
  }
  x->mx_punch_ok = metrics_counter(m, "ztna_connector_punches_total",
                                   "result=\"success\"",
                                   "Punches by result of our own checks");
  x->mx_punch_fail = metrics_counter(m, "ztna_connector_punches_total",
                                     "result=\"failed\"",
                                     "Punches by result of our own checks");
  x->mx_punch_active = metrics_gauge(m, "ztna_connector_punch_sessions",
                                     NULL, "Punches in progress");
  x->mx_punch_bound = metrics_counter(
      m, "ztna_connector_punches_authenticated_total", NULL,
      "Punches bound to an agent's end-to-end connection (tagged checks)");
  x->mx_punch_rejected = metrics_counter(
      m, "ztna_connector_punch_checks_rejected_total", NULL,
      "Tagged checks whose tag did not verify (not answered)");
  x->mx_direct = metrics_gauge(m, "ztna_connector_direct_connections", NULL,
                               "Direct connections from agents, up");
  x->mx_e2e_total = metrics_counter(
      m, "ztna_connector_e2e_connections_total", NULL,
      "End-to-end connections from agents accepted (begun through a "
      "relay session)");
  x->mx_vsess = metrics_gauge(m, "ztna_connector_relay_sessions", NULL,
                              "Relay sessions carrying end-to-end "
                              "connections");
  x->mx_direct_total = metrics_counter(
      m, "ztna_connector_direct_connections_total", NULL,
      "Direct connections accepted (handshake and grants checked)");
  x->mx_direct_rej = metrics_counter(
      m, "ztna_connector_direct_rejected_total", NULL,
      "Direct connections refused: no service granted");
  x->mx_direct_lost = metrics_counter(
      m, "ztna_connector_direct_lost_total", NULL,
      "Agent connections that moved from a direct path back to the relay");
  x->mx_ctl_limited = metrics_counter(
      m, "ztna_connector_control_limited_total", NULL,
      "Binding requests and keepalives left unanswered: over the rate");
  x->mx_gone = metrics_counter(
      m, "ztna_connector_agents_gone_total", NULL,
      "Notices from the intermediate that an agent left (one per service "
      "it used); that agent's state here was reset");
  x->mx_revoked = metrics_counter(
      m, "ztna_connector_revoked_connections_total", NULL,
      "Agent connections closed because the intermediate revoked the "
      "agent's access to a service they carry");
  x->mx_direct_rx = metrics_counter(
      m, "ztna_connector_direct_packets_received_total", NULL,
      "Packets received on direct connections");
  x->mx_direct_tx = metrics_counter(
      m, "ztna_connector_direct_packets_sent_total", NULL,
      "Packets sent on direct connections");
  metrics_set_collect(m, collect, x);
  metrics_set_ready(m, ready, x);
}

static void close_handle(uv_handle_t *h)
{
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* The drain is over: every close packet has left. */
static void stop_done(void *ud)
{
  struct cctx *x = ud;

  quic_endpoint_del(x->ep);
  x->ep = NULL;
  daemon_signals_close(&x->sig);
}

static void on_terminate(void *ud, int signum)
{
  struct cctx *x = ud;
  struct dconn *dc, *next;

  if (x->stopping)
    return;
  x->stopping = 1;
  log_info("signal %d: shutting down", signum);
  /* Nothing may call into what goes away below: no metrics, no timers
   * (on_hup ignores reloads from now on). Agents' TCP connections hear RST while the relay is
   * still there to carry it. */
  metrics_http_stop(x->http);
  x->http = NULL;
  close_handle((uv_handle_t *)&x->sweep);
  p2p_server_close(&x->p2p);
  udpflows_del(x->udp);
  x->udp = NULL;
  netstack_del(x->ns);
  x->ns = NULL;
  for (dc = x->dconns; dc; dc = next) {
    next = dc->next; /* closing frees dc */
    quic_conn_close(dc->qc, 0, "connector shutting down");
  }
  for (size_t i = 0; i < x->nsvcs; i++) {
    uplink_del(x->svcs[i].up, "connector shutting down");
    x->svcs[i].up = NULL;
  }
  for (size_t b = 0; b < VSESS_BUCKETS; b++)
    while (x->vs[b])
      vs_forget(x, x->vs[b]->id);
  daemon_drain_start(&x->drain, x->loop, &x->ep, 1, stop_done, x);
}

/* server: the context for direct connections from agents (our
 * certificate is valid for ztna-connector; theirs must chain to the CA). */
static int make_tls_role(struct cctx *x, struct tls_ctx **out, int server,
                         char *err, size_t errlen)
{
  struct tls_config tc;
  int rv;

  tls_config_init(&tc);
  tc.cert_file = x->cert;
  tc.key_file = x->key;
  tc.ca_file = x->cfg.ca_cert[0] ? x->cfg.ca_cert : NULL;
  tc.verify_peer = x->cfg.verify_peer;
  if (!server)
    tc.verify_name = ID_SERVER_NAME;
  else /* agents' end-to-end connections; the API (docs/api.md) */
    tc.alpn = TLS_ALPN_E2E "," TLS_ALPN_H3;
  rv = tls_ctx_new(out, server, &tc, err, errlen);
  if (rv < 0)
    log_warnx("%s", err);
  return rv;
}

static int make_tls(struct cctx *x, struct tls_ctx **out)
{
  char err[512];
  return make_tls_role(x, out, 0, err, sizeof(err));
}

/* Takes a new policy: agents lose what it no longer grants at once (their
 * state for those services goes) and get what it grants again; an agent
 * left with nothing loses its connection, on whatever path it runs. */
static void set_policy(struct cctx *x, struct cfg_policy *p)
{
  if (x->policy) {
    cfg_policy_free(x->policy);
    free(x->policy);
  }
  x->policy = p;
  for (struct dconn *dc = x->dconns, *next; dc; dc = next) {
    size_t left = 0;
    next = dc->next;
    if (!dc->up || !dc->id)
      continue;
    for (size_t i = 0; i < x->nsvcs; i++) {
      const char *sv = x->svcs[i].cfg->id;
      uint8_t now = (uint8_t)policy_allows(p, dc->id, POLICY_AGENT,
                                           (const uint8_t *)sv, strlen(sv));
      if (dc->grants[i] && !now) {
        for (int f = 0; f < 2; f++)
          if (dc->ids[i][f])
            id_free(x, dc->ids[i][f]);
        log_info("%s: the policy no longer lets it reach '%s'", dc->name,
                 sv);
      } else if (!dc->grants[i] && now) {
        log_info("%s: the policy lets it reach '%s' again", dc->name, sv);
      }
      dc->grants[i] = now;
      left += dc->grants[i];
    }
    if (!left) {
      log_info("%s: access revoked by the policy: closing", dc->name);
      quic_conn_close(dc->qc, 2, "access revoked");
    } else {
      send_services(dc);
    }
  }
}

static void policy_warn(const char *msg)
{
  log_warnx("%s", msg);
}

/* The policy file named in the configuration, or NULL when there is none.
 * Returns 0 or -1 (logged). */
static int load_policy(struct cctx *x, struct cfg_policy **out, char *err,
                       size_t errlen)
{
  *out = NULL;
  if (!x->cfg.policy_path[0])
    return 0;
  if (policy_load(x->cfg.policy_path, out, err, errlen, policy_warn) < 0) {
    log_warnx("policy: %s", err);
    return -1;
  }
  return 0;
}

static void file_sums(struct cctx *x, uint8_t sums[4][32])
{
  const char *files[4] = { x->cert, x->key, x->cfg.ca_cert,
                           x->cfg.policy_path };
  for (int i = 0; i < 4; i++)
    if (!files[i] || !files[i][0] || pki_file_sha256(files[i], sums[i]) < 0)
      memset(sums[i], 0, 32);
}

/* SIGHUP and POST /v1/reload: the policy and both certificate contexts,
 * all or none. With w, what changed is written into it. */
static int reload(void *ud, struct jw *w, char *err, size_t errlen)
{
  struct cctx *x = ud;
  static const char *const names[4] = { "certificate", "key", "ca",
                                        "policy" };
  struct tls_ctx *tls, *srv;
  struct cfg_policy *pol;
  uint8_t sums[4][32];

  if (x->stopping) {
    snprintf(err, errlen, "shutting down");
    return -1;
  }
  if (load_policy(x, &pol, err, errlen) < 0) {
    log_warnx("reload failed: keeping the certificates and policy in use");
    return -1;
  }
  if (make_tls_role(x, &tls, 0, err, errlen) < 0) {
    cfg_policy_free(pol);
    free(pol);
    log_warnx("reload failed: keeping the certificates and policy in use");
    return -1;
  }
  if (make_tls_role(x, &srv, 1, err, errlen) < 0) {
    tls_ctx_unref(tls);
    cfg_policy_free(pol);
    free(pol);
    log_warnx("reload failed: keeping the certificates and policy in use");
    return -1;
  }
  set_policy(x, pol);
  for (size_t i = 0; i < x->nsvcs; i++)
    uplink_set_tls(x->svcs[i].up, tls);
  tls_ctx_unref(x->tls);
  x->tls = tls;
  quic_endpoint_set_server_tls(x->ep, srv);
  tls_ctx_unref(x->srv_tls);
  x->srv_tls = srv;
  file_sums(x, sums);
  log_info("reloaded certificates%s", pol ? " and policy" : "");
  if (w) {
    jw_bool(w, "reloaded", 1);
    jw_changed(w, names, (const uint8_t(*)[32])x->sums,
               (const uint8_t(*)[32])sums, 4);
  }
  memcpy(x->sums, sums, sizeof(sums));
  return 0;
}

static void on_hup(void *ud)
{
  char err[512];
  reload(ud, NULL, err, sizeof(err));
}

/* --- status and admin API (docs/api.md) ------------------------------------- */

static void write_agent(struct cctx *x, struct dconn *dc, struct jw *w)
{
  struct quic_conn_info qi;
  char a[64], fp[65];
  uint64_t sid;

  quic_conn_get_info(dc->qc, &qi);
  api_hex32(fp, dc->cert_fp);
  jw_obj(w, NULL);
  jw_str(w, "identity", dc->id ? dc->id->cn : "");
  if (dc->id && dc->id->ou[0])
    jw_str(w, "group", dc->id->ou);
  jw_str(w, "fingerprint", fp);
  if (quic_addr_virtual(quic_conn_peer(dc->qc), &sid)) {
    jw_str(w, "path", "relay");
    jw_u64(w, "relay_session", sid);
  } else {
    jw_str(w, "path", "direct");
    jw_str(w, "address", netaddr_str(quic_conn_peer(dc->qc), a, sizeof(a)));
  }
  jw_fixed(w, "rtt_ms", qi.rtt_us, 3);
  jw_u64(w, "rx_bytes", qi.rx_bytes);
  jw_u64(w, "tx_bytes", qi.tx_bytes);
  jw_u64(w, "connected_s", qi.age_ms / 1000);
  jw_arr(w, "services");
  for (size_t i = 0; i < x->nsvcs; i++)
    if (dc->grants[i])
      jw_str(w, NULL, x->svcs[i].cfg->id);
  jw_end(w);
  jw_end(w);
}

static size_t api_peers(void *ud, const char *who, size_t offset,
                        size_t limit, struct jw *w)
{
  struct cctx *x = ud;
  size_t n = 0;

  for (struct dconn *dc = x->dconns; dc; dc = dc->next) {
    if (!dc->up || !dc->id ||
        (who && !api_peer_matches(who, dc->id->cn, dc->cert_fp)))
      continue;
    if (n >= offset && n - offset < limit)
      write_agent(x, dc, w);
    n++;
  }
  return n;
}

static void api_status(void *ud, struct jw *w)
{
  static const char *const reg[] = { "registering", "registered", "refused",
                                     "invalid", "no answer" };
  static const char *const proto[] = { "udp", "tcp", "udp+tcp" };
  struct cctx *x = ud;
  const struct netstack_stats *ts = netstack_stats(x->ns);
  struct sockaddr_storage ss;
  size_t direct = 0, n;
  char a[64];

  jw_str(w, "role", "connector");
  jw_str(w, "version", ZTNA_VERSION);
  jw_u64(w, "uptime_s", (uv_now(x->loop) - x->started_ms) / 1000);
  jw_bool(w, "draining", x->stopping);
  jw_arr(w, "listening");
  if (quic_endpoint_local_addr(x->ep, &ss) == 0) {
    jw_obj(w, NULL);
    jw_str(w, "address", netaddr_str((struct sockaddr *)&ss, a, sizeof(a)));
    jw_str(w, "transport", "udp");
    jw_str(w, "alpn", TLS_ALPN_E2E "," TLS_ALPN_H3);
    jw_end(w);
  }
  jw_end(w);
  jw_arr(w, "services");
  for (size_t i = 0; i < x->nsvcs; i++) {
    struct csvc *s = &x->svcs[i];
    int up = uplink_is_up(s->up);
    enum uplink_reg r = up ? uplink_reg_state(s->up, 0) : UPLINK_REG_PENDING;
    size_t agents = 0;
    jw_obj(w, NULL);
    jw_str(w, "id", s->cfg->id);
    jw_str(w, "backend", s->cfg->backend);
    if (s->cfg->protocol >= 0 && s->cfg->protocol < 3)
      jw_str(w, "protocol", proto[s->cfg->protocol]);
    jw_str(w, "intermediate", netaddr_str(
                                  (const struct sockaddr *)uplink_server(s->up),
                                  a, sizeof(a)));
    jw_str(w, "registration", up ? reg[r] : "not connected");
    if (s->has_observed)
      jw_str(w, "public_address", netaddr_str(
                                      (struct sockaddr *)&s->observed, a,
                                      sizeof(a)));
    for (struct dconn *dc = x->dconns; dc; dc = dc->next)
      agents += dc->up && dc->grants[i];
    jw_u64(w, "agents", agents);
    jw_end(w);
  }
  jw_end(w);
  jw_arr(w, "agents");
  n = api_peers(x, NULL, 0, API_PEERS_MAX, w);
  jw_end(w);
  jw_u64(w, "agents_total", n);
  for (struct dconn *dc = x->dconns; dc; dc = dc->next)
    direct += dc->up && !quic_addr_virtual(quic_conn_peer(dc->qc), NULL);
  jw_obj(w, "paths");
  jw_u64(w, "direct", direct);
  jw_u64(w, "relay", x->ndconns - direct);
  jw_u64(w, "direct_total", x->direct_total);
  jw_u64(w, "direct_lost", x->direct_lost);
  jw_end(w);
  jw_obj(w, "limits");
  jw_limit(w, "agent_connections", MAX_DIRECT, x->ndconns);
  jw_limit(w, "udp_flows", MAX_UDP_FLOWS, udpflows_count(x->udp));
  jw_limit(w, "tcp_sessions", MAX_TCP_SESSIONS, ts->sessions_active);
  jw_limit(w, "agents", MAX_AGENT_IDS, x->nids);
  jw_end(w);
}

static size_t api_disconnect(void *ud, const char *who, const char *reason)
{
  struct cctx *x = ud;
  size_t n = 0;

  for (struct dconn *dc = x->dconns, *next; dc; dc = next) {
    next = dc->next; /* closing frees dc */
    if (!dc->up || !dc->id || !api_peer_matches(who, dc->id->cn, dc->cert_fp))
      continue;
    log_info("%s: disconnected by an administrator: %s", dc->name, reason);
    quic_conn_close(dc->qc, WIRE_CLOSE_ADMIN, reason);
    n++;
  }
  return n;
}

static char *api_metrics(void *ud, size_t *len)
{
  struct cctx *x = ud;
  return metrics_render(x->m, len);
}

static int api_authorize(void *ud, const struct tls_identity *id, char *why,
                         size_t cap)
{
  struct cctx *x = ud;
  return policy_admin_allowed(x->policy, id, why, cap);
}

static const struct api_ops api_ops = {
  .authorize = api_authorize,
  .status = api_status,
  .peers = api_peers,
  .disconnect = api_disconnect,
  .reload = reload,
  .metrics = api_metrics,
};

/* --- main ---------------------------------------------------------------------------- */

enum { OPT_SERVER = 256, OPT_SERVICE, OPT_FORWARD, OPT_PROTOCOL, OPT_CERT,
       OPT_KEY, OPT_CA, OPT_METRICS_PORT, OPT_METRICS_BIND, OPT_LOG_FORMAT, OPT_USER,
       OPT_POLICY };

static const struct option opts[] = {
  { "config", required_argument, NULL, 'c' },
  { "check", no_argument, NULL, 'n' },
  { "verbose", no_argument, NULL, 'v' },
  { "port", required_argument, NULL, 'p' },
  { "server", required_argument, NULL, OPT_SERVER },
  { "service", required_argument, NULL, OPT_SERVICE },
  { "forward", required_argument, NULL, OPT_FORWARD },
  { "protocol", required_argument, NULL, OPT_PROTOCOL },
  { "cert", required_argument, NULL, OPT_CERT },
  { "key", required_argument, NULL, OPT_KEY },
  { "ca", required_argument, NULL, OPT_CA },
  { "metrics-port", required_argument, NULL, OPT_METRICS_PORT },
  { "metrics-bind", required_argument, NULL, OPT_METRICS_BIND },
  { "log-format", required_argument, NULL, OPT_LOG_FORMAT },
  { "user", required_argument, NULL, OPT_USER },
  { "policy", required_argument, NULL, OPT_POLICY },
  { "help", no_argument, NULL, 'h' },
  /* The original connector's flags (docs/migrating.md); not read from
   * the environment under these names. */
  { "p2p-cert", required_argument, NULL, OPT_CERT },
  { "p2p-key", required_argument, NULL, OPT_KEY },
  { "ca-cert", required_argument, NULL, OPT_CA },
  { "p2p-port", required_argument, NULL, 'p' },
  { NULL, 0, NULL, 0 },
};
#define N_ENV_OPTS 17 /* the entries above before the original's */

struct copts {
  const char *config, *server, *service, *forward, *proto, *cert, *key, *ca,
      *port, *mport, *mbind, *logfmt, *user, *policy;
  int check, verbose, help;
};

static int usage_error(const char *fmt, const char *arg)
{
  return daemon_usage_error("connector", fmt, arg);
}

/* 0, or -1 after printing the usage (unknown option). */
static int parse_opts(int argc, char **argv, struct copts *o)
{
  int ch;

  daemon_getopt_reset();
  while ((ch = getopt_long(argc, argv, "c:nvp:h", opts, NULL)) != -1) {
    switch (ch) {
    case 'c': o->config = optarg; break;
    case 'n': o->check = 1; break;
    case 'v': o->verbose++; break;
    case 'p': o->port = optarg; break;
    case OPT_SERVER: o->server = optarg; break;
    case OPT_SERVICE: o->service = optarg; break;
    case OPT_FORWARD: o->forward = optarg; break;
    case OPT_PROTOCOL: o->proto = optarg; break;
    case OPT_CERT: o->cert = optarg; break;
    case OPT_KEY: o->key = optarg; break;
    case OPT_CA: o->ca = optarg; break;
    case OPT_METRICS_PORT: o->mport = optarg; break;
    case OPT_METRICS_BIND: o->mbind = optarg; break;
    case OPT_LOG_FORMAT: o->logfmt = optarg; break;
    case OPT_USER: o->user = optarg; break;
    case OPT_POLICY: o->policy = optarg; break;
    case 'h': o->help = 1; break;
    default:
      fputs(usage_text, stderr);
      return -1;
    }
  }
  if (optind < argc) {
    usage_error("unexpected argument '%s'", argv[optind]);
    return -1;
  }
  return 0;
}

/* The environment: ZTNA_* (daemon.h), then the original connector's
 * INTERMEDIATE_SERVER, SERVICE_HOST and SERVICE_PORT where no ZTNA_*
 * variable says the same. */
static int env_opts(struct daemon_env *e, struct copts *o)
{
  static char fwd[CFG_STR_MAX + 8];
  const char *h = getenv("SERVICE_HOST"), *p = getenv("SERVICE_PORT");
  char err[256];

  if (daemon_env_args(e, "connector", opts, N_ENV_OPTS, NULL, err,
                      sizeof(err)) < 0) {
    daemon_fail("connector", "%s", err);
    return -1;
  }
  if (parse_opts(e->argc, e->argv, o) < 0)
    return -1;
  if (!o->server)
    o->server = getenv("INTERMEDIATE_SERVER");
  if (!o->forward && h && *h) {
    snprintf(fwd, sizeof(fwd), strchr(h, ':') ? "[%s]:%s" : "%s:%s", h,
             p && *p ? p : "");
    o->forward = fwd;
  }
  return 0;
}

/* Lays options over x->cfg: those of the environment before the
 * configuration file is read, those of the command line after it. */
static int apply_opts(struct cctx *x, const struct copts *o)
{
  if (o->logfmt && log_set_format(o->logfmt) < 0)
    return usage_error("--log-format '%s' is not text or json", o->logfmt);
  if (o->server && cfg_split_hostport(o->server, x->cfg.server_host,
                                      sizeof(x->cfg.server_host),
                                      &x->cfg.server_port) < 0)
    return usage_error("--server '%s' is not HOST:PORT", o->server);
  if (o->service || o->forward) {
    struct cfg_service *s = &x->cfg.services[0];
    if (!o->service || !o->forward)
      return usage_error("%s", "--service and --forward go together");
    memset(s, 0, sizeof(*s));
    snprintf(s->id, sizeof(s->id), "%s", o->service);
    snprintf(s->backend, sizeof(s->backend), "%s", o->forward);
    s->protocol = CFG_PROTO_BOTH;
    x->cfg.nservices = 1;
  }
  if (o->proto) {
    int p = !strcmp(o->proto, "udp") ? CFG_PROTO_UDP
            : !strcmp(o->proto, "tcp") ? CFG_PROTO_TCP
            : !strcmp(o->proto, "both") ? CFG_PROTO_BOTH : 0;
    if (!p)
      return usage_error("--protocol '%s' is not udp, tcp or both", o->proto);
    for (size_t i = 0; i < x->cfg.nservices; i++)
      x->cfg.services[i].protocol = p;
  }
  if (o->cert)
    snprintf(x->cfg.cert, sizeof(x->cfg.cert), "%s", o->cert);
  if (o->key)
    snprintf(x->cfg.key, sizeof(x->cfg.key), "%s", o->key);
  if (o->ca)
    snprintf(x->cfg.ca_cert, sizeof(x->cfg.ca_cert), "%s", o->ca);
  if (o->port && cfg_parse_port(o->port, &x->cfg.p2p_port, 1) < 0)
    return usage_error("--port '%s' is not a port", o->port);
  if (o->mport && cfg_parse_port(o->mport, &x->cfg.metrics_port, 1) < 0)
    return usage_error("--metrics-port '%s' is not a port", o->mport);
  if (o->mbind)
    snprintf(x->cfg.metrics_bind, sizeof(x->cfg.metrics_bind), "%s",
             o->mbind);
  if (o->policy)
    snprintf(x->cfg.policy_path, sizeof(x->cfg.policy_path), "%s",
             o->policy);
  return 0;
}

int connector_main(int argc, char **argv)
{
  static struct cctx x;
  static struct daemon_env env;
  struct copts eo = { 0 }, o = { 0 };
  const char *config;
  int rv;
  char err[512];
  struct sockaddr_storage server_addr, bind_addr;
  struct quic_endpoint_config qc = { 0 };
  struct netstack_io nio = { netstack_send, NULL };

  if (parse_opts(argc, argv, &o) < 0)
    return 1;
  if (o.help) {
    fputs(usage_text, stdout);
    return 0;
  }
  daemon_env_phase(1);
  if (env_opts(&env, &eo) < 0)
    return 1;
  log_init("connector", LOG_LVL_INFO + (o.verbose ? o.verbose : eo.verbose));
  cfg_connector_defaults(&x.cfg);
  if (apply_opts(&x, &eo))
    return 1;
  daemon_env_phase(0);
  /* The short form needs no file; otherwise the lookup order applies. */
  config = o.config ? o.config : eo.config;
  if ((config || !(o.service || eo.service)) &&
      daemon_config_load("connector", config, x.config_path,
                         sizeof(x.config_path), &x.cfg) < 0)
    return 1;
  if (apply_opts(&x, &o))
    return 1;
  x.cert = x.cfg.cert[0] ? x.cfg.cert : x.cfg.p2p_cert;
  x.key = x.cfg.key[0] ? x.cfg.key : x.cfg.p2p_key;
  if (!x.cfg.server_host[0])
    return usage_error("%s", "no intermediate: give --server HOST:PORT (or "
                       "intermediate_server in the configuration)");
  if (x.cfg.nservices == 0)
    return usage_error("%s", "no service: give --service ID --forward "
                       "HOST:PORT (or services in the configuration)");
  if (!x.cert || !x.cert[0] || !x.key || !x.key[0])
    return usage_error("%s", "no client certificate: give --cert and --key "
                       "(or cert/key or p2p.cert/p2p.key in the "
                       "configuration)");
  x.nsvcs = x.cfg.nservices;
  for (size_t i = 0; i < x.nsvcs; i++) {
    x.svcs[i].x = &x;
    x.svcs[i].cfg = &x.cfg.services[i];
    if (resolve_backend(&x.svcs[i]) < 0)
      return 1;
  }
  if (load_policy(&x, &x.policy, err, sizeof(err)) < 0)
    return 1;
  if (make_tls(&x, &x.tls) < 0 ||
      make_tls_role(&x, &x.srv_tls, 1, err, sizeof(err)) < 0)
    return 1;
  file_sums(&x, x.sums);
  {
    int literal;
    if (netaddr_resolve(x.cfg.server_host, x.cfg.server_port, &server_addr,
                        &literal, err, sizeof(err)) < 0) {
      fprintf(stderr, "ztna connector: the intermediate: %s\n", err);
      return 1;
    }
  }
  if (!x.cfg.verify_peer)
    log_warnx("verify_peer is off: the intermediate's certificate and agents' certificates on direct connections are not checked; anyone on the path can pose as "
              "them (set it to true with a CA)");
  if (o.check) {
    printf("configuration OK\n");
    return 0;
  }

  x.loop = uv_default_loop();
  x.started_ms = uv_now(x.loop);
  memset(&bind_addr, 0, sizeof(bind_addr));
  if (server_addr.ss_family == AF_INET6)
    uv_ip6_addr("::", x.cfg.p2p_port, (struct sockaddr_in6 *)&bind_addr);
  else
    uv_ip4_addr("0.0.0.0", x.cfg.p2p_port, (struct sockaddr_in *)&bind_addr);
  qc.keepalive_ms = 10000;
  qc.server_tls = x.srv_tls; /* direct connections from agents */
  qc.retry = 1; /* they prove their address before we keep any state */
  qc.cbs = &ep_cbs;
  qc.ud = &x;
  qc.vsend_cb = vsend;
  rv = quic_endpoint_new(&x.ep, x.loop, (struct sockaddr *)&bind_addr, &qc);
  if (rv < 0) {
    fprintf(stderr, "ztna connector: cannot bind UDP port %u: %s\n",
            x.cfg.p2p_port, rv > -4096 ? uv_strerror(rv) : ztna_strerror(rv));
    return 1;
  }
  {
    struct p2p_server_io io = p2p_io;
    io.ud = &x;
    p2p_server_init(&x.p2p, x.loop, x.ep, &io);
  }
  {
    struct udpflow_io uio = { flow_reply, flow_drop, &x };
    if (udpflows_new(&x.udp, x.loop, &uio, MAX_UDP_FLOWS,
                     MAX_UDP_PER_AGENT) < 0)
      fatalx("out of memory");
  }
  if (netstack_new(&x.ns, x.loop, &nio, MAX_TCP_SESSIONS,
                   MAX_TCP_PER_AGENT, 100) < 0)
    fatalx("cannot start the TCP stack");
  x.m = metrics_new();
  if (!x.m)
    fatalx("out of memory");
  metrics_init(&x);
  metrics_set_api(x.m, &api_ops, &x);
  for (size_t i = 0; i < x.nsvcs; i++) {
    struct uplink_config uc = { 0 };
    uc.ep = x.ep;
    uc.tls = x.tls;
    uc.server = server_addr;
    uc.host = x.cfg.server_host; /* looked up again on every reconnect */
    uc.port = x.cfg.server_port;
    uc.sni = NULL; /* protocol.md 1: none toward the intermediate */
    uc.role = WIRE_REG_CONNECTOR;
    uc.reg_flags = WIRE_REG_FLAG_SESSIONS;
    uc.services[0] = x.cfg.services[i].id;
    uc.nservices = 1;
    uc.name = x.cfg.services[i].id;
    if (uplink_new(&x.svcs[i].up, x.loop, &uc, &uplink_cbs, &x.svcs[i]) < 0)
      fatalx("out of memory");
    log_info("service '%s' -> %s (%s)", x.cfg.services[i].id,
             x.cfg.services[i].backend,
             x.cfg.services[i].protocol == CFG_PROTO_BOTH  ? "udp, tcp"
             : x.cfg.services[i].protocol == CFG_PROTO_UDP ? "udp"
                                                           : "tcp");
  }
  if (x.cfg.metrics_port &&
      metrics_http_listen(&x.http, x.loop, x.cfg.metrics_bind, x.cfg.metrics_port,
                          x.m, err, sizeof(err)) < 0) {
    fprintf(stderr, "ztna connector: %s\n", err);
    return 1;
  }
  daemon_signals_start(&x.sig, x.loop, on_terminate, on_hup, &x);
  uv_timer_init(x.loop, &x.sweep);
  x.sweep.data = &x;
  uv_timer_start(&x.sweep, sweep_cb, 5000, 5000);
  /* Everything that needed privileges is done (sockets bound, keys
   * read); SIGHUP later reads the files as this user. */
  if (daemon_drop_privileges(o.user ? o.user : eo.user, 0, err,
                             sizeof(err)) < 0)
    fatalx("%s", err);
  uv_run(x.loop, UV_RUN_DEFAULT);
  metrics_del(x.m);
  tls_ctx_unref(x.tls);
  tls_ctx_unref(x.srv_tls);
  if (x.policy) {
    cfg_policy_free(x.policy);
    free(x.policy);
  }
  if (daemon_loop_close(x.loop) < 0)
    return 1;
  log_info("stopped");
  return 0;
}
