/* intermediate.c - the public QUIC relay.
 *
 * usage: ztna intermediate [-c FILE] [-n] [-v]... [options]
 *
 * Tells every client its observed address (QAD), registers agents and
 * connectors per service under the deny-by-default policy, relays DATAGRAMs
 * between them with per-agent address translation, brokers P2P signaling,
 * and serves Prometheus metrics. SIGHUP reloads certificates and policy;
 * SIGTERM/SIGINT close every connection ("server shutting down") and exit.
 * The protocol core is src/common/relay.c; this file is the I/O around it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/random.h>

#include <uv.h>

#include "../applets.h"
#include "../version.h"
#include "api.h"
#include "cluster.h"
#include "redistls.h"
#include "config.h"
#include "daemon.h"
#include "err.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "pki.h"
#include "policy.h"
#include "quic.h"
#include "relay.h"
#include "identity.h"
#include "tls.h"
#include "wire.h"

static const char usage_text[] =
    "Usage: ztna intermediate [-c FILE] [-n] [-v]... [OPTIONS]\n"
    "\n"
    "The public QUIC relay of a ztna deployment.\n"
    "\n"
    "  -c, --config FILE    configuration (default: /etc/ztna/intermediate.json,\n"
    "                       else ./intermediate.json, else none)\n"
    "  -n, --check          check configuration and certificates, print\n"
    "                       \"configuration OK\" and exit\n"
    "  -v, --verbose        more logging (repeat for debug, trace)\n"
    "  -p, --port N         UDP port (4433)\n"
    "  -b, --bind ADDR      address to listen on (0.0.0.0; :: for IPv4 and\n"
    "                       IPv6)\n"
    "      --cert FILE      server certificate (valid for ztna-server)\n"
    "      --key FILE       its private key\n"
    "      --ca FILE        CA that client certificates must chain to\n"
    "      --policy FILE    policy restricting agents per service\n"
    "      --metrics-port N Prometheus /metrics and /healthz on TCP N\n"
    "                       (9090; 0 disables)\n"
    "      --metrics-bind ADDR  address of the metrics port (127.0.0.1)\n"
    "      --disable-retry  no stateless Retry for new clients\n"
    "      --max-connections N  refuse connections beyond N (4096)\n"
    "      --max-translations N  agent addresses handed to connectors at\n"
    "                       once (65536)\n"
    "      --translation-quarantine S  seconds before a departed agent's\n"
    "                       address goes to another agent (900)\n"
    "      --diag-port N    a second UDP port that only tells clients their\n"
    "                       observed address, for 'ztna diag punch' (0: off)\n"
    "      --log-format F   text or json (one JSON object per line)\n"
    "      --user U         run as user U (NAME or UID[:GID]) once set up\n"
    "      --cluster-redis HOST:PORT  join a cluster of intermediates whose\n"
    "                       registry is this Redis (docs/cluster.md; off)\n"
    "      --cluster-node NAME  this intermediate's name in the cluster\n"
    "                       (the host name)\n"
    "      --cluster-advertise IP:PORT  where the other intermediates reach\n"
    "                       this one (required with --cluster-redis)\n"
    "      --cluster-prefix P   Redis key prefix of the cluster (ztna)\n"
    "      --cluster-redis-user U  Redis ACL user (AUTH)\n"
    "      --cluster-redis-password-file FILE  Redis password (AUTH), the\n"
    "                       file's first line\n"
    "      --cluster-redis-ca FILE  talk TLS to Redis, its certificate\n"
    "                       checked against this CA; ours is presented\n"
    "      --cluster-redis-name NAME  the name Redis' certificate carries\n"
    "                       (the host of --cluster-redis)\n"
    "      --cluster-redis-sentinels HOST:PORT[,...]  instead of\n"
    "                       --cluster-redis: Redis Sentinels to ask where\n"
    "                       the primary is (up to 8, asked in turn)\n"
    "      --cluster-redis-master NAME  the primary's name at the sentinels\n"
    "  -h, --help           this text\n"
    "\n"
    "Every option but --help and --check can also come from the\n"
    "environment as ZTNA_<OPTION> (ZTNA_METRICS_BIND=0.0.0.0); flags win over\n"
    "the configuration file, which wins over the environment. The original's\n"
    "form 'intermediate PORT [CERT KEY]' and --ca-cert are accepted;\n"
    "--external-ip and external_ip are accepted and not used (a warning\n"
    "says why). Signals: HUP reloads certificates and policy, TERM and INT\n"
    "shut down.\n";

struct ictx {
  uv_loop_t *loop;
  struct cfg_intermediate cfg;
  char config_path[CFG_PATH_MAX];
  struct tls_ctx *tls;
  struct quic_endpoint *ep;
  struct quic_endpoint *diag_ep; /* diag_port: QAD only */
  uint64_t diag_conns;
  struct relay *relay;
  struct metrics *m;
  struct metrics_http *http;
  struct daemon_signals sig;
  uv_timer_t tick;
  struct daemon_drain drain;
  uint64_t started_ms;
  uint64_t qad_sent, qad_failed;
  int draining;
  struct metric *mx_active, *mx_uptime, *mx_bytes, *mx_regs, *mx_rejects,
      *mx_relayed, *mx_sessions, *mx_retry_ok, *mx_retry_fail, *mx_qad,
      *mx_diag, *mx_sessions_active, *mx_sig_errors, *mx_limit, *mx_refused,
      *mx_hs_refused, *mx_hs_active,
      *mx_invalid_regs, *mx_drops[RELAY_DROP_COUNT], *mx_reloads,
      *mx_reload_failures, *mx_rsess, *mx_rsess_opened, *mx_rsess_refused,
      *mx_rsess_dgrams;
  /* Test hook (ZTNA_TEST_RECORD_DATAGRAMS=FILE): every DATAGRAM payload
   * this intermediate decrypts is appended to FILE, so that a test can
   * show what the relay is able to read. -1: off. */
  int record_fd;
  struct iconn *conns;
  /* SHA-256 of the files in use: what a reload reports as changed. */
  uint8_t sums[4][32]; /* certificate, key, CA, policy */
  /* The cluster (NULL: none): the registry, the client context of links
   * to the other intermediates, and those links (made on demand). */
  struct cluster *cl;
  struct cluster_endpoint sentinels[CLUSTER_SENTINELS_MAX];
  uint64_t links_full_ms; /* when "all links up" was last said */
  struct tls_ctx *peer_tls;
  struct plink *peers;
  uint64_t peer_links_made, peer_links_lost;
};

/* A link to another intermediate of the cluster, made when an agent here
 * needs a service whose connector is there. */
#define PEERS_MAX 64
#define PEER_KEEPALIVE_MS 2000
#define PEER_SILENCE_MS 6000 /* no answer this long: the link is dead */
struct plink {
  char node[REG_NODE_MAX + 1]; /* "" : a free slot */
  struct sockaddr_storage addr;
  struct iconn *ic;            /* the connection, NULL when none */
  uint64_t next_try_ms;
  uint64_t used_ms;
};

struct iconn {
  struct iconn *next, *prev; /* x->conns: those with a relay client */
  int64_t not_after;         /* its certificate's end (0: unknown) */
  int expired;
  struct ictx *x;
  struct quic_conn *c;
  struct relay_client *rc;
  int64_t sig_sid;
  int qad_pending;
  int peer;          /* a link to or from another intermediate */
  struct plink *pl;  /* ours to it (NULL: accepted, or not a link) */
  char *name;        /* for logs: ic_name; never NULL */
};

static char ic_noname[] = "connection";

/* Names a connection in the logs, at the name's own size (thousands of
 * idle connections each kept a 320-byte buffer). Out of memory keeps the
 * old name. */
static void ic_name(struct iconn *ic, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ic_name(struct iconn *ic, const char *fmt, ...)
{
  char buf[320], *n;
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  n = strdup(buf);
  if (!n)
    return;
  if (ic->name != ic_noname)
    free(ic->name);
  ic->name = n;
}

static void ic_free(struct iconn *ic)
{
  if (ic->name != ic_noname)
    free(ic->name);
  free(ic);
}

/* --- relay I/O ------------------------------------------------------------ */

static int relay_send_dgram(void *conn, const struct iovec *iov, int n,
                            void *ud)
{
  struct iconn *ic = conn;
  (void)ud;
  return quic_conn_send_datagramv(ic->c, iov, n);
}

static int relay_send_signal(void *conn, const uint8_t *d, size_t n, void *ud)
{
  struct iconn *ic = conn;
  int rv;
  (void)ud;

  if (ic->sig_sid < 0) {
    /* A connector that never opened stream 0: open one toward it. */
    rv = quic_conn_open_stream(ic->c, &ic->sig_sid);
    if (rv < 0)
      return rv;
  }
  return quic_conn_stream_send(ic->c, ic->sig_sid, d, n, 0);
}

static void relay_drop_cb(void *conn, enum relay_drop why, void *ud)
{
  struct iconn *ic = conn;
  (void)ud;
  log_debug("%s: datagram dropped: %s", ic ? ic->name : "?",
            relay_drop_name(why));
}

static void relay_refused_cb(void *conn, const char *role, const uint8_t *id,
                             size_t len, const char *why, void *ud)
{
  /* At most 20 such lines a second, whatever clients send; the rest are
   * counted (ztna_registration_rejections_total) and summed up. */
  static uint64_t window;
  static unsigned logged, skipped;
  struct ictx *x = ud;
  struct iconn *ic = conn;
  uint64_t now = uv_now(x->loop) / 1000;

  if (now != window) {
    if (skipped)
      log_info("%u more refused registrations not logged", skipped);
    window = now;
    logged = skipped = 0;
  }
  if (++logged > 20) {
    skipped++;
    return;
  }
  /* The id as the peer sent it (at most WIRE_SERVICE_ID_MAX bytes), with
   * every byte outside printable ASCII as \xNN. */
  char shown[4 * WIRE_SERVICE_ID_MAX + 1];
  size_t k = 0;
  for (size_t i = 0; id && i < len && i < WIRE_SERVICE_ID_MAX; i++) {
    if (id[i] >= 0x20 && id[i] < 0x7f && id[i] != '\\')
      shown[k++] = (char)id[i];
    else
      k += (size_t)snprintf(shown + k, sizeof(shown) - k, "\\x%02x", id[i]);
  }
  shown[k] = '\0';
  log_info("%s: registration as %s for '%s' refused: %s",
           ic ? ic->name : "?", role, shown, why);
}

/* --- connections --------------------------------------------------------- */

static void send_qad(struct iconn *ic)
{
  uint8_t buf[WIRE_QAD_V6_LEN];
  int n = wire_qad_encode(buf, sizeof(buf), quic_conn_peer(ic->c));

  if (n > 0 && quic_conn_send_datagram(ic->c, buf, (size_t)n) == 0) {
    ic->x->qad_sent++;
    ic->qad_pending = 0;
  } else {
    /* Retried on the next packet from this client. */
    ic->x->qad_failed++;
    ic->qad_pending = 1;
  }
}

static const struct api_ops api_ops;

static int has_name(const struct tls_identity *id, const char *name)
{
  for (size_t i = 0; i < id->ndns; i++)
    if (!strcmp(id->dns[i], name))
      return 1;
  return 0;
}

static const struct quic_conn_cbs conn_cbs;

/* --- the cluster ------------------------------------------------------------ */

static void plink_connect(struct ictx *x, struct plink *pl)
{
  struct iconn *ic;
  char a[64];
  uint64_t now = uv_now(x->loop);
  int rv;

  if (now < pl->next_try_ms)
    return;
  pl->next_try_ms = now + 1000;
  ic = calloc(1, sizeof(*ic));
  if (!ic)
    return;
  ic->x = x;
  ic->sig_sid = -1;
  ic->pl = pl;
  ic->name = ic_noname;
  ic_name(ic, "%s (intermediate %s)",
          netaddr_str((struct sockaddr *)&pl->addr, a, sizeof(a)), pl->node);
  rv = quic_connect(&ic->c, x->ep, x->peer_tls, (struct sockaddr *)&pl->addr,
                    NULL, &conn_cbs, ic);
  if (rv < 0) {
    log_warnx("%s: cannot start a cluster link: %s", ic->name,
              ztna_strerror(rv));
    ic_free(ic);
    return;
  }
  pl->ic = ic;
  log_debug("%s: making a cluster link", ic->name);
}

static int same_addr(const struct sockaddr_storage *a,
                     const struct sockaddr_storage *b)
{
  char x[64], y[64];
  return !strcmp(netaddr_str((const struct sockaddr *)a, x, sizeof(x)),
                 netaddr_str((const struct sockaddr *)b, y, sizeof(y)));
}

/* The link to node at addr: found, moved to a new address, or a new
 * slot (the one unused longest goes when all are taken). */
static struct plink *plink_get(struct ictx *x, const char *node,
                               const struct sockaddr_storage *addr)
{
  struct plink *pl = NULL, *old = NULL;

  for (size_t i = 0; i < PEERS_MAX; i++) {
    if (!strcmp(x->peers[i].node, node)) {
      pl = &x->peers[i];
      break;
    }
    if (!x->peers[i].node[0] && !old)
      old = &x->peers[i];
  }
  if (!pl) {
    /* No free slot: the one without a link used least recently. */
    for (size_t i = 0; !old && i < PEERS_MAX; i++)
      if (!x->peers[i].ic)
        old = &x->peers[i];
    for (size_t i = 0; old && i < PEERS_MAX; i++)
      if (!x->peers[i].ic && x->peers[i].used_ms < old->used_ms)
        old = &x->peers[i];
    if (!old) { /* every slot holds a link: agents here hear "no route" */
      uint64_t now = uv_now(x->loop);
      if (!x->links_full_ms || now - x->links_full_ms >= 60000) {
        x->links_full_ms = now;
        log_warnx("cluster: no link to %s: all %d links to other members "
                  "are up (a cluster of more than %d members?)", node,
                  PEERS_MAX, PEERS_MAX + 1);
      }
      return NULL;
    }
    pl = old;
    memset(pl, 0, sizeof(*pl));
    snprintf(pl->node, sizeof(pl->node), "%s", node);
    pl->addr = *addr;
  } else if (!same_addr(&pl->addr, addr)) {
    /* The node came back elsewhere: its old link goes. */
    if (pl->ic) {
      struct iconn *ic = pl->ic;
      ic->pl = NULL;
      pl->ic = NULL;
      quic_conn_close(ic->c, 0, "the intermediate moved");
    }
    pl->addr = *addr;
    pl->next_try_ms = 0;
  }
  pl->used_ms = uv_now(x->loop);
  return pl;
}

/* The relay asks where a service without a connector here is served. */
static struct relay_client *route_cb(const char *id, size_t len, void *ud)
{
  struct ictx *x = ud;
  char node[REG_NODE_MAX + 1];
  struct sockaddr_storage addr;
  struct plink *pl;

  if (!x->cl || x->draining ||
      cluster_route(x->cl, id, len, node, &addr) != 1 ||
      !strcmp(node, cluster_node(x->cl)))
    return NULL;
  pl = plink_get(x, node, &addr);
  if (!pl)
    return NULL;
  if (pl->ic && pl->ic->rc)
    return pl->ic->rc;
  if (!pl->ic)
    plink_connect(x, pl);
  return NULL;
}

static void service_cb(const char *id, size_t len, int up, void *ud)
{
  struct ictx *x = ud;

  if (x->cl)
    cluster_service(x->cl, id, len, up);
}

/* Links whose far end stopped answering go (the agents' sessions through
 * them end and are asked again, and routed anew). */
static void check_links(struct ictx *x)
{
  for (size_t i = 0; i < PEERS_MAX; i++) {
    struct iconn *ic = x->peers[i].ic;
    uint64_t silent;
    if (!ic || !ic->rc)
      continue;
    silent = quic_conn_silence_ms(ic->c);
    if (silent > PEER_SILENCE_MS) {
      char why[64];
      snprintf(why, sizeof(why), "no answer for %llu ms",
               (unsigned long long)silent);
      log_warnx("%s: cluster link lost: %s", ic->name, why);
      quic_conn_close(ic->c, 0, why);
    }
  }
}

static void on_handshake(struct quic_conn *c, void *ud)
{
  struct iconn *ic = ud;
  struct tls_identity id;
  char a[64];

  if (quic_conn_is_h3(c)) {
    /* The status and admin API: never a relay client, so it can
     * register, relay and signal nothing. */
    struct ictx *x = ic->x;
    quic_conn_set_cbs(c, NULL, NULL);
    ic_free(ic);
    api_attach(c, &api_ops, x);
    return;
  }
  if (quic_conn_peer_identity(c, &id) < 0)
    memset(&id, 0, sizeof(id)); /* no client certificate: grants nothing */
  ic_name(ic, "%s (%s)", netaddr_str(quic_conn_peer(c), a, sizeof(a)),
          id.cn[0] ? id.cn : "no certificate");
  ic->rc = relay_client_new(ic->x->relay, ic, &id);
  if (!ic->rc) {
    log_warnx("%s: out of memory", ic->name);
    quic_conn_close(c, 1, "out of memory");
    return;
  }
  /* Another intermediate: our link to it (its certificate was checked
   * for the name), or one that proved the name with its client
   * certificate. Without a cluster such a client registers nothing. */
  if (ic->x->cl && (ic->pl || has_name(&id, ID_SERVER_NAME))) {
    ic->peer = 1;
    relay_client_set_peer(ic->rc);
    if (ic->pl)
      quic_conn_set_keepalive(c, PEER_KEEPALIVE_MS);
  }
  ic->not_after = id.not_after;
  ic->next = ic->x->conns;
  if (ic->next)
    ic->next->prev = ic;
  ic->x->conns = ic;
  if (ic->peer) {
    if (ic->pl)
      ic->x->peer_links_made++;
    log_info("%s: cluster link %s", ic->name,
             ic->pl ? "made" : "accepted");
    return;
  }
  log_info("%s: connected, %zu identities", ic->name, id.ndns);
  send_qad(ic);
}

static void on_datagram(struct quic_conn *c, const uint8_t *d, size_t n,
                        void *ud)
{
  struct iconn *ic = ud;
  (void)c;

  if (!ic->rc)
    return;
  if (ic->qad_pending)
    send_qad(ic);
  if (ic->x->record_fd >= 0 && write(ic->x->record_fd, d, n) < 0)
    ic->x->record_fd = -1;
  relay_datagram(ic->x->relay, ic->rc, d, n);
}

static void on_stream(struct quic_conn *c, int64_t sid, const uint8_t *d,
                      size_t n, int fin, void *ud)
{
  struct iconn *ic = ud;
  (void)c;
  (void)fin;

  if (!ic->rc)
    return;
  /* The first client-initiated bidirectional stream carries signaling. */
  if (ic->sig_sid < 0 && (sid & 0x3) == 0)
    ic->sig_sid = sid;
  if (sid != ic->sig_sid)
    return;
  relay_signal(ic->x->relay, ic->rc, d, n, uv_now(ic->x->loop));
}

static void on_path(struct quic_conn *c, const struct sockaddr *peer, void *ud)
{
  struct iconn *ic = ud;
  char a[64];
  (void)c;

  log_info("%s: now at %s", ic->name, netaddr_str(peer, a, sizeof(a)));
  send_qad(ic);
}

static void on_close(struct quic_conn *c, const struct quic_close_info *info,
                     void *ud)
{
  struct iconn *ic = ud;
  (void)c;

  if (ic->pl) {
    if (!ic->rc && info->tls_alert)
      log_warnx("%s: cluster link failed: TLS alert %u (%s)%s", ic->name,
                info->tls_alert, info->local ? "ours" : "theirs",
                info->tls_alert == 42 || info->tls_alert == 46
                    ? ": both certificates must be intermediate ones of "
                      "this CA, with clientAuth (ztna keygen issues them "
                      "so)" : "");
    else if (!ic->rc)
      log_warnx("%s: cluster link failed: %s", ic->name,
                info->reason[0] ? info->reason
                                : ztna_strerror(info->err ? info->err
                                                          : ZTNA_ERR_CLOSED));
    ic->pl->ic = NULL;
  }
  if (ic->peer)
    ic->x->peer_links_lost++;
  if (ic->rc) {
    log_info("%s: disconnected (%s%s)", ic->name,
             info->local ? "" : "by peer: ",
             info->reason[0] ? info->reason : "no reason");
    relay_client_del(ic->x->relay, ic->rc);
    if (ic->prev)
      ic->prev->next = ic->next;
    else
      ic->x->conns = ic->next;
    if (ic->next)
      ic->next->prev = ic->prev;
  } else if (info->err) {
    log_debug("handshake failed: %s", info->reason);
  }
  ic_free(ic);
}

static const struct quic_conn_cbs conn_cbs = {
  .handshake_cb = on_handshake,
  .datagram_cb = on_datagram,
  .stream_cb = on_stream,
  .path_cb = on_path,
  .close_cb = on_close,
};

static int on_accept(struct quic_endpoint *ep, struct quic_conn *c, void *ud)
{
  struct ictx *x = ud;
  struct iconn *ic;
  (void)ep;

  if (x->draining)
    return 1;
  ic = calloc(1, sizeof(*ic));
  if (!ic)
    return 1;
  ic->x = x;
  ic->c = c;
  ic->sig_sid = -1;
  ic->name = ic_noname;
  quic_conn_set_cbs(c, &conn_cbs, ic);
  return 0;
}

static const struct quic_endpoint_cbs ep_cbs = { .accept_cb = on_accept };

/* The diag port: a client learns the address it is seen from on a second
 * port (RFC 5780's "alternate port") and nothing else; it can register
 * nothing. The connection ends by the client or idle timeout. */
static void on_diag_handshake(struct quic_conn *c, void *ud)
{
  uint8_t buf[WIRE_QAD_V6_LEN];
  int n = wire_qad_encode(buf, sizeof(buf), quic_conn_peer(c));
  char a[64];
  (void)ud;

  if (quic_conn_is_h3(c)) {
    /* The API is on the main port only. */
    quic_conn_close(c, 0x100, "no API on the diag port: use the main port");
    return;
  }
  log_debug("diag: %s connected", netaddr_str(quic_conn_peer(c), a,
                                               sizeof(a)));
  if (n < 0 || quic_conn_send_datagram(c, buf, (size_t)n) < 0)
    quic_conn_close(c, 1, "cannot send the observed address");
}

static const struct quic_conn_cbs diag_conn_cbs = {
  .handshake_cb = on_diag_handshake,
};

static int on_diag_accept(struct quic_endpoint *ep, struct quic_conn *c,
                          void *ud)
{
  struct ictx *x = ud;
  (void)ep;

  if (x->draining)
    return 1;
  x->diag_conns++;
  quic_conn_set_cbs(c, &diag_conn_cbs, x);
  return 0;
}

static const struct quic_endpoint_cbs diag_ep_cbs = {
  .accept_cb = on_diag_accept,
};

/* --- metrics --------------------------------------------------------------- */

static void service_gauge(const char *id, size_t len, int has_connector,
                          size_t agents, void *ud)
{
  struct ictx *x = ud;
  char esc[WIRE_SERVICE_ID_MAX * 2 + 1], labels[WIRE_SERVICE_ID_MAX * 2 + 16];

  snprintf(labels, sizeof(labels), "service=\"%s\"",
           metrics_label_escape(esc, sizeof(esc), id, len));
  metric_set(metrics_gauge(x->m, "ztna_service_connector_present", labels,
                           "1 when a connector provides the service"),
             has_connector);
  metric_set(metrics_gauge(x->m, "ztna_service_agents", labels,
                           "Agents registered for the service"),
             (int64_t)agents);
}

static void cluster_metrics(struct ictx *x, const struct relay_stats *rs)
{
  const struct cluster_stats *cs = cluster_stats(x->cl);
  struct metrics *m = x->m;
  size_t links = 0;

  for (struct iconn *ic = x->conns; ic; ic = ic->next)
    links += ic->peer;
  metric_set(metrics_gauge(m, "ztna_cluster_redis_up", NULL,
                           "1 while the registry's Redis is connected"),
             cs->redis_up);
  metric_set(metrics_counter(m, "ztna_cluster_redis_failures_total", NULL,
                             "Redis connections lost or not made"),
             (int64_t)cs->redis_failures);
  metric_set(metrics_counter(m, "ztna_cluster_registry_writes_total", NULL,
                             "Registry entries written (heartbeats, "
                             "services)"), (int64_t)cs->writes);
  metric_set(metrics_counter(m, "ztna_cluster_registry_write_errors_total",
                             NULL, "Registry writes that failed"),
             (int64_t)cs->write_errors);
  metric_set(metrics_counter(m, "ztna_cluster_lookups_total", NULL,
                             "Registry lookups of a service's intermediate"),
             (int64_t)cs->lookups);
  metric_set(metrics_counter(m, "ztna_cluster_lookup_errors_total", NULL,
                             "Registry lookups that failed"),
             (int64_t)cs->lookup_errors);
  metric_set(metrics_counter(m, "ztna_cluster_sentinel_queries_total", NULL,
                             "Sentinels asked where the Redis primary is"),
             (int64_t)cs->sentinel_queries);
  metric_set(metrics_counter(m, "ztna_cluster_sentinel_failures_total", NULL,
                             "Sentinels that could not be asked or did "
                             "not tell"),
             (int64_t)cs->sentinel_failures);
  metric_set(metrics_counter(m, "ztna_cluster_redis_not_primary_total", NULL,
                             "Redis connections left because Redis was "
                             "or became a replica"),
             (int64_t)cs->not_primary);
  metric_set(metrics_counter(m, "ztna_cluster_stale_entries_total", NULL,
                             "Registry entries read and not believed "
                             "(malformed, expired, of no live node)"),
             (int64_t)cs->stale_entries);
  metric_set(metrics_gauge(m, "ztna_cluster_services_held", NULL,
                           "Services whose connector is here, in the "
                           "registry"), (int64_t)cs->services);
  metric_set(metrics_gauge(m, "ztna_cluster_peer_links", NULL,
                           "Links to and from other intermediates, up"),
             (int64_t)links);
  metric_set(metrics_counter(m, "ztna_cluster_peer_links_made_total", NULL,
                             "Links to other intermediates made"),
             (int64_t)x->peer_links_made);
  metric_set(metrics_counter(m, "ztna_cluster_peer_links_lost_total", NULL,
                             "Links to or from other intermediates ended"),
             (int64_t)x->peer_links_lost);
  metric_set(metrics_counter(m, "ztna_cluster_sessions_forwarded_total",
                             NULL, "Relay sessions of agents here made at "
                             "the connector's intermediate"),
             (int64_t)rs->rsessions_forwarded);
  metric_set(metrics_counter(m, "ztna_cluster_sessions_for_peers_total",
                             NULL, "Relay sessions made here for agents "
                             "of other intermediates"),
             (int64_t)rs->rsessions_for_peers);
  metric_set(metrics_counter(m, "ztna_cluster_peer_datagrams_total", NULL,
                             "Session datagrams sent on links to other "
                             "intermediates"), (int64_t)rs->peer_dgrams);
}

static void collect(void *ud)
{
  struct ictx *x = ud;
  const struct relay_stats *rs = relay_stats(x->relay);
  const struct quic_stats *qs = quic_endpoint_stats(x->ep);

  metric_set(x->mx_active, (int64_t)quic_endpoint_conn_count(x->ep));
  metric_set(x->mx_uptime,
             (int64_t)((uv_now(x->loop) - x->started_ms) / 1000));
  metric_set(x->mx_bytes, (int64_t)rs->relayed_bytes);
  metric_set(x->mx_regs, (int64_t)rs->registrations);
  metric_set(x->mx_rejects, (int64_t)rs->rejections);
  metric_set(x->mx_invalid_regs, (int64_t)rs->invalid_regs);
  metric_set(x->mx_relayed, (int64_t)rs->relayed_dgrams);
  metric_set(x->mx_sessions, (int64_t)rs->sessions);
  metric_set(x->mx_sessions_active, (int64_t)relay_session_count(x->relay));
  metric_set(x->mx_sig_errors, (int64_t)rs->sig_errors);
  metric_set(x->mx_rsess, (int64_t)relay_rsession_count(x->relay));
  metric_set(x->mx_rsess_opened, (int64_t)rs->rsessions_opened);
  metric_set(x->mx_rsess_refused, (int64_t)rs->rsessions_refused);
  metric_set(x->mx_rsess_dgrams, (int64_t)rs->rsession_dgrams);
  metric_set(x->mx_limit, (int64_t)rs->limit_hits);
  metric_set(x->mx_retry_ok, (int64_t)qs->retry_ok);
  metric_set(x->mx_retry_fail, (int64_t)qs->retry_fail);
  metric_set(x->mx_refused, (int64_t)qs->refused_limit);
  metric_set(x->mx_hs_refused, (int64_t)qs->refused_half_open);
  metric_set(x->mx_hs_active, (int64_t)quic_endpoint_half_open(x->ep));
  metric_set(x->mx_qad, (int64_t)x->qad_sent);
  metric_set(x->mx_diag, (int64_t)x->diag_conns);
  for (int i = 0; i < RELAY_DROP_COUNT; i++)
    metric_set(x->mx_drops[i], (int64_t)rs->drops[i]);
  quic_endpoint_metrics(x->ep, x->m, "ztna_");
  if (x->diag_ep)
    quic_endpoint_metrics(x->diag_ep, x->m, "ztna_diag_");
  if (x->cl)
    cluster_metrics(x, rs);
  metrics_zero(x->m, "ztna_service_connector_present");
  metrics_zero(x->m, "ztna_service_agents");
  relay_foreach_service(x->relay, service_gauge, x);
}

/* /readyz: listening and not shutting down. */
static int ready(void *ud, char *why, size_t cap)
{
  struct ictx *x = ud;

  if (!x->draining)
    return 1;
  snprintf(why, cap, "shutting down");
  return 0;
}

static void metrics_init(struct ictx *x)
{
  struct metrics *m = x->m;
  char labels[64];

  x->mx_active = metrics_gauge(m, "ztna_active_connections", NULL,
                               "QUIC connections open");
  x->mx_uptime = metrics_gauge(m, "ztna_uptime_seconds", NULL,
                               "Seconds since start");
  x->mx_bytes = metrics_counter(m, "ztna_relay_bytes_total", NULL,
                                "Bytes of IP packets relayed");
  x->mx_regs = metrics_counter(m, "ztna_registrations_total", NULL,
                               "Registrations accepted (ACK sent)");
  x->mx_rejects = metrics_counter(m, "ztna_registration_rejections_total",
                                  NULL, "Registrations denied (NACK 02)");
  x->mx_invalid_regs = metrics_counter(
      m, "ztna_registration_invalid_total", NULL,
      "Registrations refused as invalid (NACK 01)");
  x->mx_relayed = metrics_counter(m, "ztna_datagrams_relayed_total", NULL,
                                  "DATAGRAMs relayed");
  x->mx_sessions = metrics_counter(m, "ztna_signaling_sessions_total", NULL,
                                   "P2P signaling sessions created");
  x->mx_sessions_active = metrics_gauge(m, "ztna_signaling_sessions_active",
                                        NULL, "P2P signaling sessions open");
  x->mx_sig_errors = metrics_counter(m, "ztna_signaling_errors_total", NULL,
                                     "Signaling messages refused");
  x->mx_rsess = metrics_gauge(m, "ztna_relay_sessions_active", NULL,
                              "Relay sessions carrying end-to-end "
                              "connections");
  x->mx_rsess_opened = metrics_counter(m, "ztna_relay_sessions_total", NULL,
                                       "Relay sessions opened");
  x->mx_rsess_refused = metrics_counter(
      m, "ztna_relay_sessions_refused_total", NULL,
      "Relay session requests refused");
  x->mx_rsess_dgrams = metrics_counter(
      m, "ztna_relay_session_datagrams_total", NULL,
      "End-to-end packets forwarded (opaque)");
  x->mx_limit = metrics_counter(m, "ztna_limit_hits_total", NULL,
                                "Times a resource bound was reached");
  x->mx_retry_ok = metrics_counter(m, "ztna_retry_tokens_validated", NULL,
                                   "Retry tokens accepted");
  x->mx_retry_fail = metrics_counter(m, "ztna_retry_token_failures", NULL,
                                     "Retry tokens refused");
  x->mx_refused = metrics_counter(m, "ztna_connections_refused_total", NULL,
                                  "Connections refused at the limit");
  x->mx_hs_refused = metrics_counter(
      m, "ztna_handshakes_refused_total", NULL,
      "New handshakes refused: too many in progress (overall or from one "
      "address)");
  x->mx_hs_active = metrics_gauge(m, "ztna_handshakes_in_progress", NULL,
                                  "Handshakes started and not finished");
  x->mx_qad = metrics_counter(m, "ztna_qad_sent_total", NULL,
                              "Observed-address messages sent");
  x->mx_diag = metrics_counter(m, "ztna_diag_connections_total", NULL,
                               "Connections to the diag port");
  x->mx_reloads = metrics_counter(m, "ztna_reloads_total", NULL,
                                  "Successful SIGHUP reloads");
  x->mx_reload_failures = metrics_counter(m, "ztna_reload_failures_total",
                                          NULL, "Failed SIGHUP reloads");
  for (int i = 0; i < RELAY_DROP_COUNT; i++) {
    snprintf(labels, sizeof(labels), "reason=\"%s\"", relay_drop_name(i));
    x->mx_drops[i] = metrics_counter(m, "ztna_drops_total", labels,
                                     "Datagrams dropped, by reason");
  }
  metrics_set_collect(m, collect, x);
  metrics_set_ready(m, ready, x);
}

/* --- configuration --------------------------------------------------------- */

static void warn_cb(const char *msg)
{
  log_warnx("%s", msg);
}

static int load_policy(struct ictx *x, struct cfg_policy **out, char *err,
                       size_t errlen)
{
  int rv;

  *out = NULL;
  if (!x->cfg.policy_path[0])
    return 0;
  rv = policy_load(x->cfg.policy_path, out, err, errlen, warn_cb);
  if (rv < 0)
    log_warnx("policy: %s", err);
  return rv;
}

static int load_tls(struct ictx *x, struct tls_ctx **out, char *err,
                    size_t errlen)
{
  struct tls_config tc;
  int rv;

  tls_config_init(&tc);
  tc.cert_file = x->cfg.cert_path[0] ? x->cfg.cert_path : NULL;
  tc.key_file = x->cfg.key_path[0] ? x->cfg.key_path : NULL;
  tc.ca_file = x->cfg.ca_cert_path[0] ? x->cfg.ca_cert_path : NULL;
  tc.verify_peer = x->cfg.verify_peer;
  tc.require_client_cert = x->cfg.require_client_cert;
  /* The relay protocol, and the status and admin API (docs/api.md). */
  tc.alpn = TLS_ALPN "," TLS_ALPN_H3;
  if (!tc.ca_file && (tc.verify_peer || tc.require_client_cert)) {
    snprintf(err, errlen, "no CA file (ca_cert_path or --ca): client "
             "certificates cannot be verified; set one, or set verify_peer "
             "and require_client_cert to false to run without (every "
             "registration is then denied)");
    log_warnx("%s", err);
    return ZTNA_ERR_CONFIG;
  }
  rv = tls_ctx_new(out, 1, &tc, err, errlen);
  if (rv < 0)
    log_warnx("%s", err);
  return rv;
}

/* The client context of links to the other intermediates: our
 * certificate as the client's, theirs must be valid for ztna-server under
 * our CA. */
static int load_peer_tls(struct ictx *x, struct tls_ctx **out, char *err,
                         size_t errlen)
{
  struct tls_config tc;

  tls_config_init(&tc);
  tc.cert_file = x->cfg.cert_path;
  tc.key_file = x->cfg.key_path;
  tc.ca_file = x->cfg.ca_cert_path;
  tc.verify_name = ID_SERVER_NAME;
  return tls_ctx_new(out, 0, &tc, err, errlen);
}

/* Redis over TLS (cluster_redis_ca set): its certificate checked against
 * that CA; ours, the one the clients see, presented to it. */
static int load_redis_tls(struct ictx *x, struct redis_tls **out, char *err,
                          size_t errlen)
{
  *out = NULL;
  if (!x->cfg.cluster_redis_ca[0])
    return 0;
  return redis_tls_new(out, x->cfg.cluster_redis_ca, x->cfg.cert_path,
                       x->cfg.key_path, err, errlen);
}

static int parse_bind(const char *host, uint16_t port,
                      struct sockaddr_storage *ss)
{
  memset(ss, 0, sizeof(*ss));
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  return ZTNA_ERR_CONFIG;
}

/* --- signals and timers ------------------------------------------------------ */

static void close_handle(uv_handle_t *h)
{
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Every close packet has left (or 3 s passed): close the rest. */
static void drain_done(void *ud)
{
  struct ictx *x = ud;

  quic_endpoint_del(x->ep);
  x->ep = NULL;
  if (x->diag_ep)
    quic_endpoint_del(x->diag_ep);
  x->diag_ep = NULL;
  daemon_signals_close(&x->sig);
}

static void on_terminate(void *ud, int signum)
{
  struct ictx *x = ud;
  struct quic_endpoint *eps[2];
  size_t n;

  if (x->draining)
    return;
  x->draining = 1;
  /* No metrics, no expiry from here on; on_hup ignores reloads. */
  close_handle((uv_handle_t *)&x->tick);
  /* Out of the cluster first: nobody is routed here any more. */
  cluster_del(x->cl);
  x->cl = NULL;
  metrics_http_stop(x->http);
  x->http = NULL;
  n = quic_endpoint_close_all(x->ep, 0, "server shutting down");
  if (x->diag_ep)
    n += quic_endpoint_close_all(x->diag_ep, 0, "server shutting down");
  log_info("signal %d: closed %zu connections, shutting down", signum, n);
  /* The close packets are on their way: the drain ends when they left,
   * at most 3 s from now (protocol.md 8). */
  eps[0] = x->ep;
  eps[1] = x->diag_ep;
  daemon_drain_start(&x->drain, x->loop, eps, 2, drain_done, x);
}

static const char *const file_names[4] = { "certificate", "key", "ca",
                                            "policy" };

/* The files' checksums now (zero for a file not set or not readable). */
static void file_sums(struct ictx *x, uint8_t sums[4][32])
{
  const char *files[4] = { x->cfg.cert_path, x->cfg.key_path,
                           x->cfg.ca_cert_path, x->cfg.policy_path };
  for (int i = 0; i < 4; i++)
    if (!files[i][0] || pki_file_sha256(files[i], sums[i]) < 0)
      memset(sums[i], 0, 32);
}

/* SIGHUP and POST /v1/reload: new certificates and policy, both or
 * neither. With w, what changed is written into it. */
static int reload(void *ud, struct jw *w, char *err, size_t errlen)
{
  struct ictx *x = ud;
  struct tls_ctx *tls;
  struct cfg_policy *p;
  uint8_t sums[4][32];
  size_t dropped;

  if (x->draining) {
    snprintf(err, errlen, "shutting down");
    return -1;
  }
  if (load_tls(x, &tls, err, errlen) < 0) {
    metric_inc(x->mx_reload_failures);
    log_warnx("reload failed: keeping the certificates and policy in use");
    return -1;
  }
  if (load_policy(x, &p, err, errlen) < 0) {
    tls_ctx_unref(tls); /* the certificates alone are not taken either */
    metric_inc(x->mx_reload_failures);
    log_warnx("reload failed: keeping the certificates and policy in use");
    return -1;
  }
  if (x->peer_tls) { /* links made from now on use the new certificate */
    struct tls_ctx *pt = NULL;
    struct redis_tls *rt = NULL;
    if (load_peer_tls(x, &pt, err, errlen) < 0 ||
        load_redis_tls(x, &rt, err, errlen) < 0) {
      tls_ctx_unref(pt);
      tls_ctx_unref(tls);
      cfg_policy_free(p);
      free(p);
      metric_inc(x->mx_reload_failures);
      log_warnx("reload failed: keeping the certificates and policy in use");
      return -1;
    }
    tls_ctx_unref(x->peer_tls);
    x->peer_tls = pt;
    if (rt) /* so does the next connection to Redis */
      cluster_set_tls(x->cl, rt);
  }
  file_sums(x, sums);
  quic_endpoint_set_server_tls(x->ep, tls);
  if (x->diag_ep)
    quic_endpoint_set_server_tls(x->diag_ep, tls);
  tls_ctx_unref(x->tls);
  x->tls = tls;
  dropped = relay_set_policy(x->relay, p);
  metric_inc(x->mx_reloads);
  log_info("reloaded certificates%s%s", p ? " and policy" : "",
           dropped ? " (registrations the policy denies now: ended)" : "");
  if (w) {
    jw_bool(w, "reloaded", 1);
    jw_changed(w, file_names, (const uint8_t(*)[32])x->sums,
               (const uint8_t(*)[32])sums, 4);
    jw_u64(w, "registrations_ended", dropped);
    if (p) {
      jw_obj(w, "policy");
      jw_str(w, "file", x->cfg.policy_path);
      jw_u64(w, "services", p->nservices);
      if (p->has_admins)
        jw_u64(w, "admins", p->nadmins);
      else
        jw_str(w, "admins", "every admin certificate");
      jw_end(w);
    }
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

static void write_peer(struct ictx *x, struct iconn *ic, struct jw *w)
{
  struct relay_client_info ri;
  struct quic_conn_info qi;
  char a[64], fp[65];
  int agent = 0, connector = 0, role, active;
  const char *id;
  size_t len;

  relay_client_describe(x->relay, ic->rc, &ri);
  quic_conn_get_info(ic->c, &qi);
  for (size_t i = 0; !relay_client_reg(ic->rc, i, &id, &len, &role, &active);
       i++) {
    if (role == POLICY_AGENT)
      agent = 1;
    else
      connector = 1;
  }
  api_hex32(fp, ri.id->fp);
  jw_obj(w, NULL);
  jw_str(w, "identity", ri.id->cn);
  if (ri.id->ou[0])
    jw_str(w, "group", ri.id->ou);
  jw_str(w, "fingerprint", fp);
  jw_str(w, "role", agent && connector ? "agent+connector"
                    : agent ? "agent" : connector ? "connector" : "none");
  jw_str(w, "address", netaddr_str(quic_conn_peer(ic->c), a, sizeof(a)));
  jw_fixed(w, "rtt_ms", qi.rtt_us, 3);
  jw_u64(w, "rx_bytes", qi.rx_bytes);
  jw_u64(w, "tx_bytes", qi.tx_bytes);
  jw_u64(w, "connected_s", qi.age_ms / 1000);
  jw_i64(w, "connected_since", (int64_t)time(NULL) -
                                   (int64_t)(qi.age_ms / 1000));
  if (ri.id->not_after)
    jw_i64(w, "certificate_expires", ri.id->not_after);
  jw_arr(w, "services");
  for (size_t i = 0; !relay_client_reg(ic->rc, i, &id, &len, &role, &active);
       i++) {
    jw_obj(w, NULL);
    jw_strn(w, "id", id, len);
    jw_str(w, "role", role == POLICY_AGENT ? "agent" : "connector");
    if (role == POLICY_CONNECTOR)
      jw_bool(w, "active", active);
    jw_end(w);
  }
  jw_end(w);
  jw_u64(w, "signaling_sessions", ri.sessions);
  jw_u64(w, "relay_sessions", ri.relay_sessions);
  jw_end(w);
}

static size_t api_peers(void *ud, const char *who, size_t offset,
                        size_t limit, struct jw *w)
{
  struct ictx *x = ud;
  size_t n = 0;

  for (struct iconn *ic = x->conns; ic; ic = ic->next) {
    const struct tls_identity *id;
    struct relay_client_info ri;
    relay_client_describe(x->relay, ic->rc, &ri);
    id = ri.id;
    if (who && !api_peer_matches(who, id->cn, id->fp))
      continue;
    if (n >= offset && n - offset < limit)
      write_peer(x, ic, w);
    n++;
  }
  return n;
}

static void api_service(const struct relay_service_info *si, void *ud)
{
  struct jw *w = ud;

  jw_obj(w, NULL);
  jw_strn(w, "id", si->id, si->len);
  jw_bool(w, "connector", si->has_connector);
  if (si->connector_conn) {
    struct iconn *ic = si->connector_conn;
    struct relay_client_info ri;
    relay_client_describe(ic->x->relay, ic->rc, &ri);
    jw_str(w, "connector_identity", ri.id->cn);
  }
  jw_u64(w, "connectors", si->connectors);
  jw_u64(w, "agents", si->agents);
  jw_u64(w, "relay_sessions", si->relay_sessions);
  jw_end(w);
}

/* The cluster part of the status (docs/api.md). */
static void api_cluster(struct ictx *x, struct jw *w)
{
  const struct cluster_stats *cs = cluster_stats(x->cl);
  const struct relay_stats *rs = relay_stats(x->relay);
  char a[64];

  jw_obj(w, "cluster");
  jw_str(w, "node", cluster_node(x->cl));
  jw_str(w, "advertise", x->cfg.cluster_advertise);
  if (x->cfg.cluster_redis_sentinels[0]) {
    jw_str(w, "redis_sentinels", x->cfg.cluster_redis_sentinels);
    jw_str(w, "redis_master", x->cfg.cluster_redis_master);
  } else {
    jw_str(w, "redis", x->cfg.cluster_redis);
  }
  jw_str(w, "redis_at", cluster_redis_where(x->cl));
  jw_bool(w, "redis_up", cs->redis_up);
  jw_u64(w, "services_held", cs->services);
  jw_u64(w, "sessions_forwarded", rs->rsessions_forwarded);
  jw_u64(w, "sessions_for_peers", rs->rsessions_for_peers);
  jw_arr(w, "links");
  for (size_t i = 0; i < PEERS_MAX; i++) {
    const struct plink *pl = &x->peers[i];
    if (!pl->node[0])
      continue;
    jw_obj(w, NULL);
    jw_str(w, "node", pl->node);
    jw_str(w, "address",
           netaddr_str((const struct sockaddr *)&pl->addr, a, sizeof(a)));
    jw_str(w, "direction", "out");
    jw_bool(w, "up", pl->ic && pl->ic->rc);
    if (pl->ic && pl->ic->rc)
      jw_u64(w, "rtt_us", quic_conn_rtt_us(pl->ic->c));
    jw_end(w);
  }
  for (struct iconn *ic = x->conns; ic; ic = ic->next) {
    if (!ic->peer || ic->pl)
      continue;
    jw_obj(w, NULL);
    jw_str(w, "address", netaddr_str(quic_conn_peer(ic->c), a, sizeof(a)));
    jw_str(w, "direction", "in");
    jw_bool(w, "up", 1);
    jw_u64(w, "rtt_us", quic_conn_rtt_us(ic->c));
    jw_end(w);
  }
  jw_end(w);
  jw_end(w);
}

static void api_status(void *ud, struct jw *w)
{
  struct ictx *x = ud;
  struct relay_limits lim;
  struct sockaddr_storage ss;
  char a[64];
  size_t n;

  jw_str(w, "role", "intermediate");
  jw_str(w, "version", ZTNA_VERSION);
  jw_u64(w, "uptime_s", (uv_now(x->loop) - x->started_ms) / 1000);
  jw_bool(w, "draining", x->draining);
  jw_arr(w, "listening");
  if (quic_endpoint_local_addr(x->ep, &ss) == 0) {
    jw_obj(w, NULL);
    jw_str(w, "address", netaddr_str((struct sockaddr *)&ss, a, sizeof(a)));
    jw_str(w, "transport", "udp");
    jw_str(w, "alpn", TLS_ALPN "," TLS_ALPN_H3);
    jw_end(w);
  }
  if (x->diag_ep && quic_endpoint_local_addr(x->diag_ep, &ss) == 0) {
    jw_obj(w, NULL);
    jw_str(w, "address", netaddr_str((struct sockaddr *)&ss, a, sizeof(a)));
    jw_str(w, "transport", "udp");
    jw_str(w, "purpose", "diag");
    jw_end(w);
  }
  if (x->http) {
    char m[CFG_STR_MAX + 16];
    jw_obj(w, NULL);
    snprintf(m, sizeof(m), "%s:%d", x->cfg.metrics_bind,
             metrics_http_port(x->http));
    jw_str(w, "address", m);
    jw_str(w, "transport", "tcp");
    jw_str(w, "purpose", "metrics");
    jw_end(w);
  }
  jw_end(w);
  jw_arr(w, "peers");
  n = api_peers(x, NULL, 0, API_PEERS_MAX, w);
  jw_end(w);
  jw_u64(w, "peers_total", n);
  jw_arr(w, "services");
  relay_describe_services(x->relay, api_service, w);
  jw_end(w);
  if (x->cl)
    api_cluster(x, w);
  relay_limits_get(x->relay, &lim);
  jw_obj(w, "limits");
  jw_limit(w, "connections", x->cfg.max_connections ? x->cfg.max_connections
                                                  : 4096,
        quic_endpoint_conn_count(x->ep) - quic_endpoint_half_open(x->ep));
  jw_limit(w, "handshakes", 1024, quic_endpoint_half_open(x->ep));
  jw_limit(w, "relay_sessions", lim.rsessions_total,
        relay_rsession_count(x->relay));
  jw_limit(w, "signaling_sessions", lim.sessions_total,
        relay_session_count(x->relay));
  jw_limit(w, "translations", lim.translations,
        relay_translation_count(x->relay));
  jw_end(w);
}

static size_t api_disconnect(void *ud, const char *who, const char *reason)
{
  struct ictx *x = ud;
  size_t n = 0;

  for (struct iconn *ic = x->conns, *next; ic; ic = next) {
    struct relay_client_info ri;
    next = ic->next; /* closing frees ic */
    relay_client_describe(x->relay, ic->rc, &ri);
    if (!api_peer_matches(who, ri.id->cn, ri.id->fp))
      continue;
    log_info("%s: disconnected by an administrator: %s", ic->name, reason);
    quic_conn_close(ic->c, WIRE_CLOSE_ADMIN, reason);
    n++;
  }
  return n;
}

static char *api_metrics(void *ud, size_t *len)
{
  struct ictx *x = ud;
  return metrics_render(x->m, len);
}

static int api_authorize(void *ud, const struct tls_identity *id, char *why,
                         size_t cap)
{
  struct ictx *x = ud;
  return policy_admin_allowed(relay_policy(x->relay), id, why, cap);
}

static const struct api_ops api_ops = {
  .authorize = api_authorize,
  .status = api_status,
  .peers = api_peers,
  .disconnect = api_disconnect,
  .reload = reload,
  .metrics = api_metrics,
};

/* The same JSON on the local HTTP/1.1 listener, read-only. */
static void on_tick(uv_timer_t *t)
{
  struct ictx *x = t->data;
  int64_t now = (int64_t)time(NULL);

  relay_expire(x->relay, uv_now(x->loop));
  if (x->cl)
    check_links(x);
  daemon_heap_trim(uv_now(x->loop));
  /* A certificate that expired since its handshake ends the connection
   * (and with it the peer's registrations and relay sessions). */
  for (struct iconn *ic = x->conns, *next; ic; ic = next) {
    next = ic->next; /* closing frees ic */
    if (ic->not_after && now >= ic->not_after && !ic->expired) {
      ic->expired = 1;
      log_info("%s: its certificate expired: closing", ic->name);
      quic_conn_close(ic->c, 2, "certificate expired");
    }
  }
}

/* --- main -------------------------------------------------------------------- */

enum {
  OPT_CERT = 256, OPT_KEY, OPT_CA, OPT_POLICY, OPT_METRICS_PORT,
  OPT_METRICS_BIND, OPT_DISABLE_RETRY, OPT_MAX_CONNS, OPT_DIAG_PORT,
  OPT_MAX_XLAT, OPT_XLAT_REST, OPT_LOG_FORMAT, OPT_USER, OPT_EXTERNAL_IP,
  OPT_CL_REDIS, OPT_CL_NODE, OPT_CL_ADVERTISE, OPT_CL_PREFIX, OPT_CL_USER,
  OPT_CL_PASSFILE, OPT_CL_CA, OPT_CL_NAME, OPT_CL_SENTINELS, OPT_CL_MASTER
};

static const struct option opts[] = {
  { "config", required_argument, NULL, 'c' },
  { "check", no_argument, NULL, 'n' },
  { "verbose", no_argument, NULL, 'v' },
  { "port", required_argument, NULL, 'p' },
  { "bind", required_argument, NULL, 'b' },
  { "cert", required_argument, NULL, OPT_CERT },
  { "key", required_argument, NULL, OPT_KEY },
  { "ca", required_argument, NULL, OPT_CA },
  { "policy", required_argument, NULL, OPT_POLICY },
  { "metrics-port", required_argument, NULL, OPT_METRICS_PORT },
  { "metrics-bind", required_argument, NULL, OPT_METRICS_BIND },
  { "disable-retry", no_argument, NULL, OPT_DISABLE_RETRY },
  { "max-connections", required_argument, NULL, OPT_MAX_CONNS },
  { "max-translations", required_argument, NULL, OPT_MAX_XLAT },
  { "translation-quarantine", required_argument, NULL, OPT_XLAT_REST },
  { "diag-port", required_argument, NULL, OPT_DIAG_PORT },
  { "log-format", required_argument, NULL, OPT_LOG_FORMAT },
  { "external-ip", required_argument, NULL, OPT_EXTERNAL_IP },
  { "user", required_argument, NULL, OPT_USER },
  { "cluster-redis", required_argument, NULL, OPT_CL_REDIS },
  { "cluster-node", required_argument, NULL, OPT_CL_NODE },
  { "cluster-advertise", required_argument, NULL, OPT_CL_ADVERTISE },
  { "cluster-prefix", required_argument, NULL, OPT_CL_PREFIX },
  { "cluster-redis-user", required_argument, NULL, OPT_CL_USER },
  { "cluster-redis-password-file", required_argument, NULL, OPT_CL_PASSFILE },
  { "cluster-redis-ca", required_argument, NULL, OPT_CL_CA },
  { "cluster-redis-name", required_argument, NULL, OPT_CL_NAME },
  { "cluster-redis-sentinels", required_argument, NULL, OPT_CL_SENTINELS },
  { "cluster-redis-master", required_argument, NULL, OPT_CL_MASTER },
  { "help", no_argument, NULL, 'h' },
  /* The original's spellings (docs/migrating.md). */
  { "ca-cert", required_argument, NULL, OPT_CA },
  { NULL, 0, NULL, 0 },
};
#define N_ENV_OPTS 30 /* the entries above before the original's */

struct iopts {
  const char *config, *port, *bind, *cert, *key, *ca, *policy, *mport,
      *mbind, *maxconns, *dport, *maxxlat, *xlatrest, *logfmt, *extip, *user,
      *cl_redis, *cl_node, *cl_adv, *cl_prefix, *cl_user, *cl_passfile,
      *cl_ca, *cl_name, *cl_sentinels, *cl_master;
  int check, verbose, help, disable_retry;
};

static int usage_error(const char *fmt, const char *arg)
{
  return daemon_usage_error("intermediate", fmt, arg);
}

/* A numeric option from 1 to hi (val NULL: not given). */
static int num_option(const char *name, const char *val, long hi,
                      uint32_t *out)
{
  char what[64];
  long v;

  if (!val)
    return 0;
  if (cfg_parse_uint(val, 1, hi, &v) < 0) {
    snprintf(what, sizeof(what), "%s '%%s' is not a number from 1 to %ld",
             name, hi);
    usage_error(what, val);
    return -1;
  }
  *out = (uint32_t)v;
  return 0;
}

/* 0, or -1 after saying why. The original's form, "PORT [CERT KEY]"
 * as operands, is taken too. */
static int parse_opts(int argc, char **argv, struct iopts *o)
{
  int ch;

  daemon_getopt_reset();
  while ((ch = getopt_long(argc, argv, "c:nvp:b:h", opts, NULL)) != -1) {
    switch (ch) {
    case 'c': o->config = optarg; break;
    case 'n': o->check = 1; break;
    case 'v': o->verbose++; break;
    case 'p': o->port = optarg; break;
    case 'b': o->bind = optarg; break;
    case OPT_CERT: o->cert = optarg; break;
    case OPT_KEY: o->key = optarg; break;
    case OPT_CA: o->ca = optarg; break;
    case OPT_POLICY: o->policy = optarg; break;
    case OPT_METRICS_PORT: o->mport = optarg; break;
    case OPT_METRICS_BIND: o->mbind = optarg; break;
    case OPT_DISABLE_RETRY: o->disable_retry = 1; break;
    case OPT_MAX_CONNS: o->maxconns = optarg; break;
    case OPT_MAX_XLAT: o->maxxlat = optarg; break;
    case OPT_XLAT_REST: o->xlatrest = optarg; break;
    case OPT_DIAG_PORT: o->dport = optarg; break;
    case OPT_LOG_FORMAT: o->logfmt = optarg; break;
    case OPT_USER: o->user = optarg; break;
    case OPT_EXTERNAL_IP: o->extip = optarg; break;
    case OPT_CL_REDIS: o->cl_redis = optarg; break;
    case OPT_CL_NODE: o->cl_node = optarg; break;
    case OPT_CL_ADVERTISE: o->cl_adv = optarg; break;
    case OPT_CL_PREFIX: o->cl_prefix = optarg; break;
    case OPT_CL_USER: o->cl_user = optarg; break;
    case OPT_CL_PASSFILE: o->cl_passfile = optarg; break;
    case OPT_CL_CA: o->cl_ca = optarg; break;
    case OPT_CL_NAME: o->cl_name = optarg; break;
    case OPT_CL_SENTINELS: o->cl_sentinels = optarg; break;
    case OPT_CL_MASTER: o->cl_master = optarg; break;
    case 'h': o->help = 1; break;
    default:
      fputs(usage_text, stderr);
      return -1;
    }
  }
  if (argc - optind == 1 || argc - optind == 3) {
    o->port = argv[optind++];
    if (optind < argc) {
      o->cert = argv[optind++];
      o->key = argv[optind++];
    }
  }
  if (optind < argc) {
    usage_error("unexpected argument '%s' (operands are PORT [CERT KEY])",
                argv[optind]);
    return -1;
  }
  return 0;
}

static int apply_opts(struct ictx *x, const struct iopts *o)
{
  if (o->logfmt && log_set_format(o->logfmt) < 0)
    return usage_error("--log-format '%s' is not text or json", o->logfmt);
  if (o->port && cfg_parse_port(o->port, &x->cfg.port, 0) < 0)
    return usage_error("--port '%s' is not a port (1-65535)", o->port);
  if (o->dport && cfg_parse_port(o->dport, &x->cfg.diag_port, 1) < 0)
    return usage_error("--diag-port '%s' is not a port (0-65535)", o->dport);
  if (o->mport && cfg_parse_port(o->mport, &x->cfg.metrics_port, 1) < 0)
    return usage_error("--metrics-port '%s' is not a port (0-65535)",
                       o->mport);
  if (num_option("--max-connections", o->maxconns, 1000000,
                 &x->cfg.max_connections) < 0 ||
      num_option("--max-translations", o->maxxlat, CFG_MAX_TRANSLATIONS,
                 &x->cfg.max_translations) < 0 ||
      num_option("--translation-quarantine", o->xlatrest, 86400,
                 &x->cfg.translation_quarantine_s) < 0)
    return 1;
  if (o->bind)
    snprintf(x->cfg.bind_addr, sizeof(x->cfg.bind_addr), "%s", o->bind);
  if (o->mbind)
    snprintf(x->cfg.metrics_bind, sizeof(x->cfg.metrics_bind), "%s",
             o->mbind);
  if (o->cert)
    snprintf(x->cfg.cert_path, sizeof(x->cfg.cert_path), "%s", o->cert);
  if (o->key)
    snprintf(x->cfg.key_path, sizeof(x->cfg.key_path), "%s", o->key);
  if (o->ca)
    snprintf(x->cfg.ca_cert_path, sizeof(x->cfg.ca_cert_path), "%s", o->ca);
  if (o->policy)
    snprintf(x->cfg.policy_path, sizeof(x->cfg.policy_path), "%s",
             o->policy);
  if (o->extip)
    snprintf(x->cfg.external_ip, sizeof(x->cfg.external_ip), "%s",
             o->extip);
  if (o->disable_retry)
    x->cfg.disable_retry = 1;
#define SETSTR(field, val) \
  if (val) \
    snprintf(x->cfg.field, sizeof(x->cfg.field), "%s", val)
  SETSTR(cluster_redis, o->cl_redis);
  SETSTR(cluster_node, o->cl_node);
  SETSTR(cluster_advertise, o->cl_adv);
  SETSTR(cluster_prefix, o->cl_prefix);
  SETSTR(cluster_redis_user, o->cl_user);
  SETSTR(cluster_redis_password_file, o->cl_passfile);
  SETSTR(cluster_redis_ca, o->cl_ca);
  SETSTR(cluster_redis_name, o->cl_name);
  SETSTR(cluster_redis_sentinels, o->cl_sentinels);
  SETSTR(cluster_redis_master, o->cl_master);
#undef SETSTR
  return 0;
}

/* "host:port" or "[v6]:port" into host and port; -1 if not that. */
static int split_host_port(const char *s, char *host, size_t cap,
                           uint16_t *port)
{
  const char *colon = strrchr(s, ':'), *h = s;
  size_t hl;

  if (!colon || cfg_parse_port(colon + 1, port, 0) < 0)
    return -1;
  hl = (size_t)(colon - s);
  if (s[0] == '[') {
    if (hl < 3 || s[hl - 1] != ']')
      return -1;
    h++;
    hl -= 2;
  } else if (memchr(s, ':', hl)) {
    return -1; /* an IPv6 literal needs its brackets */
  }
  if (hl == 0 || hl >= cap)
    return -1;
  memcpy(host, h, hl);
  host[hl] = '\0';
  return 0;
}

static int in_cluster(const struct ictx *x)
{
  return x->cfg.cluster_redis[0] || x->cfg.cluster_redis_sentinels[0];
}

/* The cluster's settings checked, the password read and the client
 * context of links to the others made; 0 or 1 after saying what is
 * wrong. */
static int cluster_setup(struct ictx *x, struct cluster_config *cc,
                         char *host, size_t hostcap,
                         struct sockaddr_storage *adv, char *pass,
                         size_t passcap)
{
  char err[512];
  const char *src = x->config_path[0] ? x->config_path : "the options";

  if (x->cfg.cluster_redis_sentinels[0]) {
    char list[sizeof(x->cfg.cluster_redis_sentinels)], *save = NULL, *t;
    if (x->cfg.cluster_redis[0]) {
      fprintf(stderr, "ztna intermediate: set cluster_redis (one Redis) or "
              "cluster_redis_sentinels (Sentinel), not both (in %s)\n", src);
      return 1;
    }
    if (!registry_name_ok(x->cfg.cluster_redis_master, REG_NODE_MAX)) {
      fprintf(stderr, "ztna intermediate: cluster_redis_sentinels needs "
              "cluster_redis_master: the name the sentinels monitor the "
              "primary under, 1-63 of [A-Za-z0-9._-] (in %s; now '%s')\n",
              src, x->cfg.cluster_redis_master);
      return 1;
    }
    snprintf(list, sizeof(list), "%s", x->cfg.cluster_redis_sentinels);
    for (t = strtok_r(list, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
      struct cluster_endpoint *e = &x->sentinels[cc->nsentinels];
      if (cc->nsentinels == CLUSTER_SENTINELS_MAX)
        return usage_error("cluster_redis_sentinels: at most 8 sentinels "
                           "('%s' is one too many)", t);
      if (split_host_port(t, e->host, sizeof(e->host), &e->port) < 0)
        return usage_error("cluster_redis_sentinels: '%s' is not HOST:PORT "
                           "(a name or address, [IPv6]:PORT; the list is "
                           "comma-separated)", t);
      cc->nsentinels++;
    }
    if (!cc->nsentinels)
      return usage_error("cluster_redis_sentinels '%s' names no sentinel",
                         x->cfg.cluster_redis_sentinels);
    cc->sentinels = x->sentinels;
    cc->master = x->cfg.cluster_redis_master;
    host[0] = '\0';
  } else if (x->cfg.cluster_redis_master[0]) {
    fprintf(stderr, "ztna intermediate: cluster_redis_master is the name "
            "of the primary at the sentinels: set cluster_redis_sentinels "
            "too (in %s)\n", src);
    return 1;
  } else if (split_host_port(x->cfg.cluster_redis, host, hostcap,
                             &cc->redis_port) < 0) {
    return usage_error("cluster_redis '%s' is not HOST:PORT (a name or "
                       "address, [IPv6]:PORT)", x->cfg.cluster_redis);
  }
  cc->redis_host = host;
  if (!x->cfg.cluster_advertise[0]) {
    fprintf(stderr, "ztna intermediate: a cluster member needs the address "
            "the other intermediates reach it at: set --cluster-advertise "
            "IP:PORT (cluster_advertise in %s)\n", src);
    return 1;
  }
  if (registry_addr_parse(x->cfg.cluster_advertise,
                          strlen(x->cfg.cluster_advertise), adv) < 0)
    return usage_error("cluster_advertise '%s' is not IP:PORT (an address, "
                       "[IPv6]:PORT; not a name)", x->cfg.cluster_advertise);
  if (!x->cfg.cluster_node[0] &&
      gethostname(x->cfg.cluster_node, sizeof(x->cfg.cluster_node) - 1) < 0)
    x->cfg.cluster_node[0] = '\0';
  if (!registry_name_ok(x->cfg.cluster_node, REG_NODE_MAX))
    return usage_error("cluster_node '%s' must be 1-63 characters of "
                       "[A-Za-z0-9._-] (every member a different one)",
                       x->cfg.cluster_node);
  if (!registry_name_ok(x->cfg.cluster_prefix, REG_NS_MAX))
    return usage_error("cluster_prefix '%s' must be 1-32 characters of "
                       "[A-Za-z0-9._-]", x->cfg.cluster_prefix);
  cc->node = x->cfg.cluster_node;
  cc->prefix = x->cfg.cluster_prefix;
  cc->advertise = (struct sockaddr *)adv;
  cc->redis_user = x->cfg.cluster_redis_user[0] ? x->cfg.cluster_redis_user
                                                : NULL;
  cc->redis_password = NULL;
  if (cc->redis_user && !x->cfg.cluster_redis_password_file[0]) {
    fprintf(stderr, "ztna intermediate: cluster_redis_user '%s' needs its "
            "password: set --cluster-redis-password-file FILE "
            "(cluster_redis_password_file in %s)\n", cc->redis_user, src);
    return 1;
  }
  if (x->cfg.cluster_redis_password_file[0]) {
    FILE *f = fopen(x->cfg.cluster_redis_password_file, "r");
    if (!f || !fgets(pass, (int)passcap, f)) {
      fprintf(stderr, "ztna intermediate: cannot read the Redis password "
              "from %s: %s\n", x->cfg.cluster_redis_password_file,
              f ? "the file is empty" : strerror(errno));
      if (f)
        fclose(f);
      return 1;
    }
    fclose(f);
    pass[strcspn(pass, "\r\n")] = '\0';
    cc->redis_password = pass;
  }
  if (!x->cfg.ca_cert_path[0]) {
    fprintf(stderr, "ztna intermediate: a cluster member needs the CA "
            "(--ca) to verify the other intermediates\n");
    return 1;
  }
  if (load_peer_tls(x, &x->peer_tls, err, sizeof(err)) < 0) {
    fprintf(stderr, "ztna intermediate: %s\n", err);
    return 1;
  }
  if (x->cfg.cluster_redis_name[0] && !x->cfg.cluster_redis_ca[0]) {
    fprintf(stderr, "ztna intermediate: cluster_redis_name is for Redis "
            "over TLS: set cluster_redis_ca too (in %s)\n", src);
    return 1;
  }
  if (x->cfg.cluster_redis_ca[0]) {
    unsigned char a[16];
    cc->tls_name = x->cfg.cluster_redis_name[0] ? x->cfg.cluster_redis_name
                                                : host;
    if (!cc->tls_name[0]) {
      fprintf(stderr, "ztna intermediate: with sentinels, Redis is reached "
              "at the address they tell: set cluster_redis_name to the "
              "name in the certificates of Redis and the sentinels (in "
              "%s)\n", src);
      return 1;
    }
    if (inet_pton(AF_INET, cc->tls_name, a) == 1 ||
        inet_pton(AF_INET6, cc->tls_name, a) == 1) {
      fprintf(stderr, "ztna intermediate: Redis is given as an address "
              "(%s); its certificate is checked against a name: set "
              "cluster_redis_name to the name in it (in %s)\n",
              cc->tls_name, src);
      return 1;
    }
    if (!netaddr_dns_name_ok(cc->tls_name, 0)) {
      fprintf(stderr, "ztna intermediate: '%s' is not a DNS name for "
              "Redis' certificate (cluster_redis_name, or the host of "
              "cluster_redis; in %s)\n", cc->tls_name, src);
      return 1;
    }
    if (load_redis_tls(x, &cc->tls, err, sizeof(err)) < 0) {
      fprintf(stderr, "ztna intermediate: %s\n", err);
      return 1;
    }
  }
  return 0;
}

int intermediate_main(int argc, char **argv)
{
  static struct daemon_env env;
  struct iopts eo = { 0 }, o = { 0 };
  int rv;
  struct ictx x;
  struct sockaddr_storage ss;
  struct quic_endpoint_config qc = { 0 };
  struct relay_limits lim = { 0 };
  struct relay_io rio = { relay_send_dgram, relay_send_signal, relay_drop_cb,
                          NULL, relay_refused_cb, route_cb, service_cb };
  struct cluster_config cc = { 0 };
  struct sockaddr_storage adv;
  char redis_host[256], redis_pass[256];
  struct cfg_policy *pol = NULL;
  uint8_t secret[32];
  char err[512];

  if (parse_opts(argc, argv, &o) < 0)
    return 1;
  if (o.help) {
    fputs(usage_text, stdout);
    return 0;
  }
  if (daemon_env_args(&env, "intermediate", opts, N_ENV_OPTS, NULL, err,
                      sizeof(err)) < 0)
    return daemon_fail("intermediate", "%s", err);
  daemon_env_phase(1);
  if (parse_opts(env.argc, env.argv, &eo) < 0)
    return 1;
  log_init("intermediate",
           LOG_LVL_INFO + (o.verbose ? o.verbose : eo.verbose));

  memset(&x, 0, sizeof(x));
  cfg_intermediate_defaults(&x.cfg);
  if (apply_opts(&x, &eo))
    return 1;
  daemon_env_phase(0);
  if (daemon_config_load("intermediate", o.config ? o.config : eo.config,
                         x.config_path, sizeof(x.config_path), &x.cfg) < 0)
    return 1;
  if (apply_opts(&x, &o))
    return 1;
  if (x.cfg.diag_port && x.cfg.diag_port == x.cfg.port)
    return usage_error("the diag port %s must differ from the main port",
                       o.dport ? o.dport : "(diag_port)");
  if (x.cfg.external_ip[0])
    log_warnx("external_ip '%s' is not used: clients learn their own "
              "address from the intermediate (QUIC address discovery) and "
              "reach it at the name or address they were given; remove the "
              "setting", x.cfg.external_ip);
  if (!x.cfg.cert_path[0] || !x.cfg.key_path[0]) {
    fprintf(stderr, "ztna intermediate: no certificate: give --cert and "
            "--key (or cert_path and key_path in %s)\n",
            x.config_path[0] ? x.config_path : "a configuration file");
    return 1;
  }
  if (parse_bind(x.cfg.bind_addr, x.cfg.port, &ss) < 0) {
    fprintf(stderr, "ztna intermediate: bind address '%s' is not an IPv4 "
            "or IPv6 address\n", x.cfg.bind_addr);
    return 1;
  }
  if (!x.cfg.require_client_cert)
    log_warnx("require_client_cert is off: clients without a certificate "
              "may connect (they can register nothing)");
  if (load_tls(&x, &x.tls, err, sizeof(err)) < 0)
    return 1;
  rv = load_policy(&x, &pol, err, sizeof(err)) < 0;
  file_sums(&x, x.sums);
  if (!rv && in_cluster(&x))
    rv = cluster_setup(&x, &cc, redis_host, sizeof(redis_host), &adv,
                       redis_pass, sizeof(redis_pass));
  if (rv || o.check) {
    /* A bad configuration, or only its check: nothing kept. */
    if (!rv)
      printf("configuration OK\n");
    tls_ctx_unref(x.tls);
    tls_ctx_unref(x.peer_tls);
    redis_tls_free(cc.tls);
    cfg_policy_free(pol);
    free(pol);
    return rv ? 1 : 0;
  }

  x.loop = uv_default_loop();
  x.started_ms = uv_now(x.loop);
  x.record_fd = -1;
  if (getenv("ZTNA_TEST_RECORD_DATAGRAMS")) {
    x.record_fd = open(getenv("ZTNA_TEST_RECORD_DATAGRAMS"),
                       O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (x.record_fd < 0)
      fatal("ZTNA_TEST_RECORD_DATAGRAMS");
    log_warnx("test hook: every DATAGRAM received is recorded in %s",
              getenv("ZTNA_TEST_RECORD_DATAGRAMS"));
  }
  rio.ud = &x;
  lim.translations = x.cfg.max_translations;
  lim.xlat_quarantine_ms = (uint64_t)x.cfg.translation_quarantine_s * 1000;
  /* Relay session ids count up from a random start: a restarted
   * intermediate does not hand out its previous life's ids (2^63 apart on
   * average; the top bit clear leaves 2^63 ids before a wrap). */
  if (getrandom(&lim.rsession_base, sizeof(lim.rsession_base), 0) !=
      sizeof(lim.rsession_base))
    fatal("no random bytes for relay session ids");
  lim.rsession_base >>= 1;
  if (relay_new(&x.relay, &rio, &lim) < 0)
    fatalx("out of memory");
  relay_set_policy(x.relay, pol);
  x.m = metrics_new();
  if (!x.m)
    fatalx("out of memory");
  metrics_init(&x);
  metrics_set_api(x.m, &api_ops, &x);

  /* Tokens from a secret tied to the key: after a restart the old
   * connections are reset at their next packet instead of idling out. */
  if (pki_derive_secret(x.cfg.key_path, "ztna quic token secret v1",
                        secret) < 0)
    fatalx("cannot read %s", x.cfg.key_path);
  qc.secret = secret;
  qc.stateless_reset = 1;
  qc.server_tls = x.tls;
  qc.retry = !x.cfg.disable_retry;
  qc.max_conns = x.cfg.max_connections;
  qc.cbs = &ep_cbs;
  qc.ud = &x;
  rv = quic_endpoint_new(&x.ep, x.loop, (struct sockaddr *)&ss, &qc);
  if (rv < 0) {
    char a[64];
    fprintf(stderr, "ztna intermediate: cannot listen on UDP %s: %s\n",
            netaddr_str((struct sockaddr *)&ss, a, sizeof(a)),
            rv > -4096 ? uv_strerror(rv) : ztna_strerror(rv));
    return 1;
  }
  if (x.cfg.diag_port) {
    struct sockaddr_storage ds;
    char a[64];
    parse_bind(x.cfg.bind_addr, x.cfg.diag_port, &ds);
    qc.cbs = &diag_ep_cbs;
    qc.max_conns = 256;
    qc.idle_timeout_ms = 10000;
    rv = quic_endpoint_new(&x.diag_ep, x.loop, (struct sockaddr *)&ds, &qc);
    if (rv < 0) {
      fprintf(stderr, "ztna intermediate: cannot listen on UDP %s (the "
              "diag port): %s\n",
              netaddr_str((struct sockaddr *)&ds, a, sizeof(a)),
              rv > -4096 ? uv_strerror(rv) : ztna_strerror(rv));
      return 1;
    }
    log_info("diag port: UDP %s", netaddr_str((struct sockaddr *)&ds, a,
                                              sizeof(a)));
  }
  if (x.cfg.metrics_port &&
      metrics_http_listen(&x.http, x.loop, x.cfg.metrics_bind, x.cfg.metrics_port,
                          x.m, err, sizeof(err)) < 0) {
    fprintf(stderr, "ztna intermediate: %s\n", err);
    return 1;
  }
  if (in_cluster(&x)) {
    char a[64];
    x.peers = calloc(PEERS_MAX, sizeof(*x.peers));
    if (!x.peers || cluster_new(&x.cl, x.loop, &cc) < 0)
      fatalx("out of memory");
    explicit_bzero(redis_pass, sizeof(redis_pass));
    log_info("cluster: node %s, reached at %s, registry at Redis %s "
             "(prefix %s, %s)", cc.node,
             netaddr_str((struct sockaddr *)&adv, a, sizeof(a)),
             cluster_redis_where(x.cl), cc.prefix,
             cc.tls ? "TLS, certificate checked for the name" :
                      "no TLS: keep Redis on a private network");
  }
  daemon_signals_start(&x.sig, x.loop, on_terminate, on_hup, &x);
  uv_timer_init(x.loop, &x.tick);
  x.tick.data = &x;
  uv_timer_start(&x.tick, on_tick, 1000, 1000);

  {
    char a[64];
    log_info("listening on UDP %s (retry %s, client certificates %s%s%s)",
             netaddr_str((struct sockaddr *)&ss, a, sizeof(a)),
             qc.retry ? "on" : "off",
             x.cfg.require_client_cert ? "required" : "optional",
             x.cfg.policy_path[0] ? ", policy " : "",
             x.cfg.policy_path);
    if (x.http)
      log_info("metrics on http://%s:%d/metrics", x.cfg.metrics_bind,
               metrics_http_port(x.http));
  }
  /* Everything that needed privileges is done (sockets bound, keys
   * read); SIGHUP later reads the files as this user. */
  if (daemon_drop_privileges(o.user ? o.user : eo.user, 0, err,
                             sizeof(err)) < 0)
    fatalx("%s", err);
  uv_run(x.loop, UV_RUN_DEFAULT);
  relay_del(x.relay);
  metrics_del(x.m);
  tls_ctx_unref(x.tls);
  tls_ctx_unref(x.peer_tls);
  free(x.peers);
  if (daemon_loop_close(x.loop) < 0)
    return 1;
  log_info("stopped");
  return 0;
}
