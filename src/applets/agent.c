/* agent.c - the user's endpoint: a TUN device that carries only the
 * services' virtual IPs (split tunnel), each packet wrapped for its service
 * and sent to the intermediate.
 *
 * usage: ztna agent [-c FILE] [-n] [-v]... [OPTIONS]
 *        ztna agent --server HOST:PORT --service ID=VIP... --cert FILE
 *                   --key FILE --ca FILE [OPTIONS]
 *
 * The TUN device and its routes stay while the connection to the
 * intermediate comes and goes; traffic resumes by itself when it is back.
 * Routes are removed on exit, also after an error (the device goes with
 * the process).
 *
 * Direct paths (protocol.md 5): once a service is registered the agent
 * punches to its connector (p2p.c, punch.c) from the same socket, opens a
 * QUIC connection to it (one per connector), links it to its relay path
 * and sends the service's packets there; silence, lost keepalives or a
 * close send them back through the relay at once, and the punch is tried
 * again after a cooldown.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "../applets.h"
#include "config.h"
#include "daemon.h"
#include "err.h"
#include "ippkt.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "p2p.h"
#include "policy.h"
#include "punch.h"
#include "quic.h"
#include "tls.h"
#include "tun.h"
#include "tunguard.h"
#include "uplink.h"
#include "wire.h"

/* The TUN's IPv6 address when a service has an IPv6 virtual IP and the
 * configuration names none. Agents share it freely: the intermediate and
 * connectors tell agents apart by their connection, not this address. */
#define AGENT_TUNNEL_ADDR6 "fd7a:7a74:6e61:a::1"

static const char usage_text[] =
    "Usage: ztna agent [-c FILE] [-n] [-v]... [OPTIONS]\n"
    "       ztna agent --server HOST:PORT --service ID=VIRTUAL_IP...\n"
    "                  --cert FILE --key FILE --ca FILE [OPTIONS]\n"
    "\n"
    "Reach private services through ztna: a TUN device routes only the\n"
    "services' virtual IPs into the tunnel; nothing else is touched.\n"
    "\n"
    "  -c, --config FILE    configuration (default: /etc/ztna/agent.json,\n"
    "                       else ./agent.json)\n"
    "  -n, --check          check configuration and certificates, exit\n"
    "  -v, --verbose        more logging (repeat for debug, trace)\n"
    "      --server H:P     the intermediate\n"
    "      --service ID=IP  a service and its virtual IP (repeatable)\n"
    "      --cert FILE      client certificate (agent.<service>.ztna)\n"
    "      --key FILE       its private key\n"
    "      --ca FILE        CA the intermediate's certificate chains to\n"
    "      --tun NAME       TUN device name (ztna0)\n"
    "      --tunnel-addr A  this agent's address on the TUN (100.64.0.1)\n"
    "      --tunnel-addr6 A its IPv6 address on the TUN, needed for IPv6\n"
    "                       virtual IPs (" AGENT_TUNNEL_ADDR6 ")\n"
    "      --metrics-port N Prometheus /metrics, /healthz and /readyz\n"
    "                       (0: off)\n"
    "      --metrics-bind ADDR  address of the metrics port (127.0.0.1)\n"
    "      --no-direct      never punch: all traffic through the relay\n"
    "      --log-format F   text or json (one JSON object per line)\n"
    "      --user U         run as user U (NAME or UID[:GID]) once set up\n"
    "  -h, --help           this text\n"
    "\n"
    "Every option but --help and --check can also come from the\n"
    "environment as ZTNA_<OPTION> (ZTNA_SERVICE=web=10.0.0.1,db=10.0.0.2);\n"
    "flags win over the configuration file, which wins over the\n"
    "environment. The original's --ca-cert and --service ID --service-ip IP\n"
    "are accepted.\n";

enum adrop { A_NO_SERVICE, A_NOT_REGISTERED, A_TOO_LARGE, A_QUEUE_FULL,
             A_NOT_CONNECTED, A_MALFORMED, A_TUN_FULL, A_CTL_LIMITED,
             A_FOREIGN_SOURCE, A_FOREIGN_DEST, A_LINK_FROM_TUN, A_COUNT };
static const char *const adrop_names[A_COUNT] = {
  "no_service", "not_registered", "too_large", "queue_full",
  "not_connected", "malformed", "tun_full", "control_limited",
  /* Into the TUN only from a virtual IP of a service the path carries, to
   * our tunnel address; link requests never come from the TUN. */
  "foreign_source", "foreign_destination", "link_from_tun",
};

struct vip {
  int family;
  uint8_t addr[16];
  int prefix;
  size_t svc;
};

#define DIRECT_SILENCE_MS 1500      /* no answer this long: path lost */
#define DIRECT_KEEPALIVE_MS 15000    /* protocol.md 5 */
#define DIRECT_KEEPALIVE_WAIT_MS 5000
#define DIRECT_KEEPALIVE_MISSES 3
#define DIRECT_PING_MS 5000          /* QUIC PING when idle */
#define PUNCH_COOLDOWN_MS 30000      /* then doubling ... */
#define PUNCH_COOLDOWN_MAX_MS (8 * PUNCH_COOLDOWN_MS) /* ... up to 4 min */
#define DIRECT_STABLE_MS 60000       /* a path this old resets the backoff */
#define LINK_INTERVAL_MS 250
#define LINK_TRIES 12
#define P2P_TICK_MS 250

enum apath { AP_RELAY, AP_PUNCHING, AP_CONNECTING, AP_LINKING, AP_DIRECT };
/* Why a punch did not give a direct path. */
enum pfail { PF_TIMEOUT, PF_NO_CANDIDATES, PF_PEER_ERROR, PF_HANDSHAKE,
             PF_LINK, PF_COUNT };
static const char *const pfail_names[PF_COUNT] = {
  "timeout", "no_candidates", "peer_error", "handshake", "link",
};
static const char *const apath_names[] = { "relay", "punching", "connecting",
                                           "linking", "direct" };

struct actx;

/* A direct connection to one connector, shared by every service whose
 * punch found that connector's address. */
struct adirect {
  struct actx *x;
  struct quic_conn *c; /* NULL: a free slot */
  struct tls_identity id; /* the connector's certificate, once up */
  struct sockaddr_storage peer;
  int up;
  uint32_t ka_seq;
  int ka_wait, ka_misses;
  uint64_t ka_sent_ms, ka_next_ms;
};

/* One service's path: the relay, or a direct connection to its connector
 * once a punch found one and the connector linked it. */
struct asvc {
  struct actx *x;
  size_t idx;
  enum apath state;
  struct p2p_client *pc;
  struct adirect *d;
  struct sockaddr_storage peer;
  uint8_t token[P2P_LINK_TOKEN_LEN];
  int link_tries, vip;
  int relink;               /* link requests left to send while direct */
  uint64_t punch_ms, direct_since_ms;
  uint64_t cooldown_ms, retry_at_ms;
  uint64_t punches_ok, punches_failed, fallbacks, fails[PF_COUNT];
};

struct actx {
  uv_loop_t *loop;
  struct cfg_agent cfg;
  char config_path[CFG_PATH_MAX];
  char tun_name[64];
  int tun_fd;
  uv_poll_t poll;
  struct tls_ctx *tls;
  struct quic_endpoint *ep;
  struct uplink *up;
  struct vip vips[CFG_MAX_SERVICES];
  size_t nvips;
  struct asvc svcs[CFG_MAX_SERVICES];
  struct adirect directs[CFG_MAX_SERVICES];
  struct sockaddr_storage observed; /* QAD */
  int has_observed, no_direct;
  struct tunguard guard;    /* what may enter the TUN */
  uv_timer_t p2p_tick;
  uint64_t direct_tx, direct_rx;
  struct punch_rate ctl_rate;
  struct metric *mx_direct_tx, *mx_direct_rx;
  size_t max_idlen;
  int mtu;
  uint64_t drops[A_COUNT], tx_packets, rx_packets, tx_bytes, rx_bytes;
  struct metrics *m;
  struct metrics_http *http;
  struct metric *mx_drops[A_COUNT], *mx_tx, *mx_rx, *mx_txb, *mx_rxb,
      *mx_up, *mx_reconn;
  struct daemon_signals sig;
  struct daemon_drain drain;
  int stopping;
  uint8_t buf[65536];
};

static void schedule_punch(struct asvc *a, uint64_t delay_ms);

static void drop(struct actx *x, enum adrop d)
{
  x->drops[d]++;
  log_debug("packet dropped: %s", adrop_names[d]);
}

static const struct vip *lookup(struct actx *x, const struct ippkt *ip)
{
  const struct vip *best = NULL;
  for (size_t i = 0; i < x->nvips; i++) {
    const struct vip *v = &x->vips[i];
    if (v->family == ip->version && tunguard_prefix_match(v->addr, ip->dst,
                                                        v->prefix)
        && (!best || v->prefix > best->prefix))
      best = v;
  }
  return best;
}

/* The largest IP packet that fits one DATAGRAM with the largest wrapper. */
static int tunnel_mtu(struct actx *x)
{
  size_t max = x->up ? uplink_max_datagram(x->up) : 0;
  if (!max)
    max = QUIC_DATAGRAM_MAX;
  return (int)(max - 2 - x->max_idlen);
}

static void write_tun(struct actx *x, const uint8_t *pkt, size_t n)
{
  ssize_t w = write(x->tun_fd, pkt, n);
  if (w < 0)
    drop(x, A_TUN_FULL);
}

/* A packet from a path (via: its direct connection, NULL for the relay,
 * which carries every service) goes into the TUN if tunguard admits it;
 * what it refuses is counted by reason. */
static void to_tun(struct actx *x, const uint8_t *pkt, size_t n,
                   const struct adirect *via)
{
  static const enum adrop why[] = {
    [TUNGUARD_MALFORMED] = A_MALFORMED,
    [TUNGUARD_FOREIGN_SOURCE] = A_FOREIGN_SOURCE,
    [TUNGUARD_FOREIGN_DEST] = A_FOREIGN_DEST,
  };
  uint8_t carried[CFG_MAX_SERVICES] = { 0 };
  enum tunguard_verdict v;
  size_t len = 0;

  if (via)
    for (size_t i = 0; i < x->cfg.nservices; i++)
      carried[i] = x->svcs[i].d == via;
  v = tunguard_check(&x->guard, pkt, n, via ? carried : NULL,
                     x->cfg.nservices, &len);
  if (v == TUNGUARD_LINK)
    return; /* the relay's answer to our link request: ours, not the OS's */
  if (v != TUNGUARD_OK) {
    drop(x, why[v]);
    return;
  }
  if (via)
    x->direct_rx++;
  x->rx_packets++;
  x->rx_bytes += len;
  write_tun(x, pkt, len);
}

/* A packet the user's machine sent into the TUN. */
static void from_tun(struct actx *x, uint8_t *pkt, size_t n)
{
  struct ippkt ip;
  const struct vip *v;
  const char *id;
  uint8_t hdr[2 + WIRE_SERVICE_ID_MAX];
  struct iovec iov[2];
  uint8_t token[P2P_LINK_TOKEN_LEN];
  int h, rv;

  if (ippkt_parse(pkt, n, &ip) < 0) {
    drop(x, A_MALFORMED);
    return;
  }
  /* Only this process links paths: a local program must not send the
   * connector a link request of its own making. */
  if (p2p_link_token(pkt, ip.totlen, token) >= 0) {
    drop(x, A_LINK_FROM_TUN);
    return;
  }
  v = lookup(x, &ip);
  if (!v) {
    drop(x, A_NO_SERVICE);
    return;
  }
  if (uplink_is_up(x->up) &&
      uplink_reg_state(x->up, v->svc) != UPLINK_REG_OK &&
      uplink_reg_state(x->up, v->svc) != UPLINK_REG_PENDING) {
    drop(x, A_NOT_REGISTERED);
    return;
  }
  id = x->cfg.services[v->svc].id;
  h = wire_routed_encode_header(hdr, sizeof(hdr), id, strlen(id));
  iov[0].iov_base = hdr;
  iov[0].iov_len = (size_t)h;
  iov[1].iov_base = pkt;
  iov[1].iov_len = ip.totlen;
  /* The direct path when it is up; the relay otherwise, and for any
   * packet the direct connection does not take. */
  if (x->svcs[v->svc].state == AP_DIRECT &&
      quic_conn_send_datagramv(x->svcs[v->svc].d->c, iov, 2) == 0) {
    x->direct_tx++;
    x->tx_packets++;
    x->tx_bytes += ip.totlen;
    return;
  }
  rv = uplink_send(x->up, iov, 2);
  if (rv == 0) {
    x->tx_packets++;
    x->tx_bytes += ip.totlen;
    return;
  }
  if (rv == ZTNA_ERR_TOO_LARGE) {
    /* Never a silent black hole: tell the sender the size that fits. */
    uint8_t icmp[1400];
    int mtu = (int)uplink_max_datagram(x->up) - h;
    int k = ippkt_build_too_big(icmp, sizeof(icmp), pkt, ip.totlen,
                                (uint16_t)(mtu > 0 ? mtu : 576), ip.dst);
    drop(x, A_TOO_LARGE);
    if (k > 0)
      write_tun(x, icmp, (size_t)k);
    return;
  }
  drop(x, rv == ZTNA_ERR_QUEUE_FULL ? A_QUEUE_FULL : A_NOT_CONNECTED);
}

static void tun_readable(uv_poll_t *p, int status, int events)
{
  struct actx *x = p->data;
  (void)events;

  if (status < 0)
    return;
  /* Bounded, so that the loop also serves the network side. */
  for (int i = 0; i < 256; i++) {
    ssize_t n = read(x->tun_fd, x->buf, sizeof(x->buf));
    if (n <= 0)
      break;
    from_tun(x, x->buf, (size_t)n);
  }
}

/* A DATAGRAM from the intermediate: a raw IP packet for the TUN. */
static void on_datagram(struct uplink *u, const uint8_t *d, size_t n,
                        void *ud)
{
  struct actx *x = ud;
  (void)u;

  if (wire_classify(d, n) != WIRE_KIND_IPV4 &&
      wire_classify(d, n) != WIRE_KIND_IPV6) {
    drop(x, A_MALFORMED);
    return;
  }
  to_tun(x, d, n, NULL);
}

static void on_up(struct uplink *u, void *ud)
{
  struct actx *x = ud;
  int mtu = tunnel_mtu(x);
  (void)u;

  if (mtu != x->mtu && mtu >= 576) {
    /* The path decides: a full-size packet plus the wrapper must fit. */
    if (tun_set_mtu(x->tun_name, mtu) == 0) {
      log_info("%s: MTU %d", x->tun_name, mtu);
      x->mtu = mtu;
    }
  }
}

static void on_qad(struct uplink *u, const struct sockaddr *sa, void *ud)
{
  struct actx *x = ud;
  char a[80];
  size_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                         : sizeof(struct sockaddr_in);
  int changed = x->has_observed && memcmp(&x->observed, sa, len);
  (void)u;

  log_info("the intermediate sees us at %s", netaddr_str(sa, a, sizeof(a)));
  memset(&x->observed, 0, sizeof(x->observed));
  memcpy(&x->observed, sa, len);
  x->has_observed = 1;
  /* A new public address is a new network: punch again now. */
  for (size_t i = 0; changed && !x->no_direct && i < x->cfg.nservices; i++)
    if (x->svcs[i].state == AP_RELAY) {
      x->svcs[i].cooldown_ms = 0;
      schedule_punch(&x->svcs[i], 0);
    }
}

/* --- direct paths (protocol.md 5) --------------------------------------------- */

static void schedule_punch(struct asvc *a, uint64_t delay_ms)
{
  a->retry_at_ms = uv_now(a->x->loop) + delay_ms;
}

/* After a failure: try again after the cooldown, which doubles up to its
 * cap; a path that held for a while resets it. */
static void back_off(struct asvc *a)
{
  uint64_t now = uv_now(a->x->loop);

  if (!a->cooldown_ms ||
      (a->direct_since_ms && now - a->direct_since_ms >= DIRECT_STABLE_MS))
    a->cooldown_ms = PUNCH_COOLDOWN_MS;
  schedule_punch(a, a->cooldown_ms);
  log_info("%s: next punch in %llu s", a->x->cfg.services[a->idx].id,
           (unsigned long long)a->cooldown_ms / 1000);
  a->cooldown_ms *= 2;
  if (a->cooldown_ms > PUNCH_COOLDOWN_MAX_MS)
    a->cooldown_ms = PUNCH_COOLDOWN_MAX_MS;
  a->direct_since_ms = 0;
}

static void set_relay(struct asvc *a, const char *why)
{
  enum apath was = a->state;

  a->state = AP_RELAY;
  a->relink = 0;
  if (was != AP_DIRECT) {
    enum pfail f = PF_TIMEOUT;
    if (strstr(why, "no candidates"))
      f = PF_NO_CANDIDATES;
    else if (strstr(why, "refused"))
      f = PF_PEER_ERROR;
    else if (was == AP_CONNECTING || strstr(why, "cannot connect"))
      f = PF_HANDSHAKE;
    else if (was == AP_LINKING)
      f = PF_LINK;
    a->fails[f]++;
  }
  if (was == AP_DIRECT) {
    a->fallbacks++;
    log_info("%s: path: relay (direct path lost: %s)",
             a->x->cfg.services[a->idx].id, why);
  } else {
    log_info("%s: no direct path: %s; traffic stays on the relay",
             a->x->cfg.services[a->idx].id, why);
  }
  back_off(a);
}

/* Closes a direct connection: every service on it moves to the relay at
 * once. */
static void fail_conn(struct adirect *d, const char *why)
{
  struct actx *x = d->x;
  struct quic_conn *c = d->c;

  d->c = NULL; /* its close_cb finds nothing left to do */
  d->up = 0;
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].d == d) {
      x->svcs[i].d = NULL;
      set_relay(&x->svcs[i], why);
    }
  if (c)
    quic_conn_close(c, 0, why);
}

/* Moves one service off its direct connection; the connection goes when
 * no service uses it. */
static void fail_direct(struct asvc *a, const char *why)
{
  struct adirect *d = a->d;
  struct actx *x = a->x;

  a->d = NULL;
  set_relay(a, why);
  for (size_t i = 0; d && i < x->cfg.nservices; i++)
    if (x->svcs[i].d == d)
      return;
  if (d)
    fail_conn(d, "no service left on it");
}

static void pc_closed(uv_handle_t *h)
{
  free(h->data);
}

static void on_punch_done(struct p2p_client *pc, void *ud);

static void start_punch(struct asvc *a)
{
  struct actx *x = a->x;
  struct p2p_client *pc = calloc(1, sizeof(*pc));
  int rv;

  a->retry_at_ms = 0;
  if (!pc)
    return;
  rv = p2p_client_start(pc, x->loop, x->ep, x->up, x->cfg.services[a->idx].id,
                        (struct sockaddr *)&x->observed, on_punch_done, a);
  if (rv < 0) {
    free(pc);
    schedule_punch(a, PUNCH_COOLDOWN_MS);
    return;
  }
  pc->timer.data = pc;
  a->pc = pc;
  a->state = AP_PUNCHING;
  log_debug("%s: punching (%zu candidates offered)",
            x->cfg.services[a->idx].id, pc->nlocal);
}

static const struct quic_conn_cbs direct_cbs;
static void begin_link(struct asvc *a);
static int direct_grants(const struct adirect *d, const struct asvc *a);

static void on_punch_done(struct p2p_client *pc, void *ud)
{
  struct asvc *a = ud;
  struct actx *x = a->x;
  char addr[64];
  int rv;

  a->pc = NULL;
  a->punch_ms = pc->end_ms - pc->offer_ms;
  if (pc->success) {
    a->punches_ok++;
    a->peer = pc->punch.pairs[pc->punch.winner].remote;
    log_info("%s: punch succeeded in %llu ms: the connector answers at %s "
             "(%u ms)", x->cfg.services[a->idx].id,
             (unsigned long long)a->punch_ms,
             netaddr_str((struct sockaddr *)&a->peer, addr, sizeof(addr)),
             pc->punch.pairs[pc->punch.winner].rtt_ms);
  } else {
    a->punches_failed++;
  }
  /* The timer handle's memory goes when it is closed. */
  if (pc->success) {
    char why[sizeof(pc->why)];
    struct adirect *d = NULL, *free_slot = NULL;
    p2p_client_stop(pc, pc_closed);
    /* One connection per connector: join one that is there already. */
    for (size_t i = 0; i < CFG_MAX_SERVICES && !d; i++) {
      if (x->directs[i].c &&
          punch_addr_eq((struct sockaddr *)&x->directs[i].peer,
                        (struct sockaddr *)&a->peer))
        d = &x->directs[i];
      else if (!x->directs[i].c && !free_slot)
        free_slot = &x->directs[i];
    }
    if (!d && !free_slot) {
      set_relay(a, "too many direct connections");
      return;
    }
    if (!d) {
      d = free_slot;
      memset(d, 0, sizeof(*d));
      d->x = x;
      d->peer = a->peer;
      rv = quic_connect(&d->c, x->ep, x->tls, (struct sockaddr *)&a->peer,
                        "ztna-connector", &direct_cbs, d);
      if (rv < 0) {
        d->c = NULL;
        snprintf(why, sizeof(why), "cannot connect: %s", ztna_strerror(rv));
        set_relay(a, why);
        return;
      }
    }
    if (d->up && !direct_grants(d, a)) {
      set_relay(a, "the peer's certificate does not grant the service");
      return;
    }
    a->d = d;
    a->state = AP_CONNECTING;
    if (d->up)
      begin_link(a);
  } else {
    char why[sizeof(pc->why)];
    snprintf(why, sizeof(why), "%s", pc->why);
    p2p_client_stop(pc, pc_closed);
    set_relay(a, why);
  }
}

static void send_link(struct asvc *a)
{
  struct actx *x = a->x;
  const struct vip *v = &x->vips[a->vip];
  uint8_t pkt[128], payload[P2P_LINK_PAYLOAD_LEN], hdr[2 + WIRE_SERVICE_ID_MAX];
  uint8_t src[16];
  const char *id = x->cfg.services[a->idx].id;
  struct iovec iov[2];
  int n, h;

  memset(src, 0, sizeof(src));
  if (v->family == 4)
    inet_pton(AF_INET, x->cfg.tunnel_addr, src);
  else
    inet_pton(AF_INET6, x->cfg.tunnel_addr6, src);
  memcpy(payload, P2P_LINK_MAGIC, P2P_LINK_MAGIC_LEN);
  memcpy(payload + P2P_LINK_MAGIC_LEN, a->token, P2P_LINK_TOKEN_LEN);
  n = ippkt_build_echo(pkt, sizeof(pkt), v->family, src, v->addr, 0x7a74,
                       (uint16_t)a->link_tries, payload, sizeof(payload));
  h = wire_routed_encode_header(hdr, sizeof(hdr), id, strlen(id));
  if (n < 0 || h < 0)
    return;
  iov[0].iov_base = hdr;
  iov[0].iov_len = (size_t)h;
  iov[1].iov_base = pkt;
  iov[1].iov_len = (size_t)n;
  uplink_send(x->up, iov, 2);
  if (a->d && a->d->c)
    quic_conn_send_datagramv(a->d->c, iov, 2);
  a->link_tries++;
}

static void begin_link(struct asvc *a)
{
  /* The token is the link's only proof: never a predictable one. */
  if (uv_random(NULL, NULL, a->token, sizeof(a->token), 0, NULL) < 0) {
    fail_direct(a, "no random bytes for the link token");
    return;
  }
  a->state = AP_LINKING;
  a->link_tries = 0;
  send_link(a);
}

/* 1 when the direct connection's certificate lets it provide a's
 * service (connector.<service>.ztna): every connector certificate is
 * valid for ztna-connector, so the name alone proves nothing. */
static int direct_grants(const struct adirect *d, const struct asvc *a)
{
  const char *id = a->x->cfg.services[a->idx].id;
  return policy_cert_grants(&d->id, POLICY_CONNECTOR, (const uint8_t *)id,
                            strlen(id));
}

static void on_direct_handshake(struct quic_conn *c, void *ud)
{
  struct adirect *d = ud;
  struct actx *x = d->x;
  size_t granted = 0;

  if (quic_conn_peer_identity(c, &d->id) < 0)
    memset(&d->id, 0, sizeof(d->id));
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *a = &x->svcs[i];
    if (a->d != d)
      continue;
    if (direct_grants(d, a)) {
      granted++;
      continue;
    }
    log_warnx("%s: the direct peer (%s) is no connector of this service",
              x->cfg.services[i].id, d->id.cn[0] ? d->id.cn : "no name");
    a->d = NULL;
    set_relay(a, "the peer's certificate does not grant the service");
  }
  if (!granted) {
    fail_conn(d, "not a connector of our services");
    return;
  }
  quic_conn_set_keepalive(c, DIRECT_PING_MS);
  d->up = 1;
  d->ka_next_ms = uv_now(x->loop) + DIRECT_KEEPALIVE_MS;
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].d == d && x->svcs[i].state == AP_CONNECTING)
      begin_link(&x->svcs[i]);
}

static void on_direct_datagram(struct quic_conn *c, const uint8_t *d,
                               size_t n, void *ud)
{
  struct adirect *dc = ud;
  struct actx *x = dc->x;
  struct ippkt ip;
  uint8_t token[P2P_LINK_TOKEN_LEN];
  char addr[64];
  int kind;

  if ((wire_classify(d, n) != WIRE_KIND_IPV4 &&
       wire_classify(d, n) != WIRE_KIND_IPV6) ||
      ippkt_parse(d, n, &ip) < 0) {
    drop(x, A_MALFORMED);
    return;
  }
  kind = p2p_link_token(d, ip.totlen, token);
  if (kind == 0)
    return; /* a connector does not ask us to link */
  if (kind == 1) {
    for (size_t i = 0; i < x->cfg.nservices; i++) {
      struct asvc *a = &x->svcs[i];
      if (a->d != dc || memcmp(token, a->token, sizeof(token)))
        continue;
      if (a->state == AP_DIRECT && a->relink) {
        a->relink = 0;
        log_info("%s: direct path linked to our new relay connection",
                 x->cfg.services[a->idx].id);
        continue;
      }
      if (a->state != AP_LINKING)
        continue;
      a->state = AP_DIRECT;
      a->direct_since_ms = uv_now(x->loop);
      log_info("%s: path: direct to %s (punch %llu ms, round trip %llu us)",
               x->cfg.services[a->idx].id,
               netaddr_str((struct sockaddr *)&a->peer, addr, sizeof(addr)),
               (unsigned long long)a->punch_ms,
               (unsigned long long)quic_conn_rtt_us(c));
    }
    return;
  }
  to_tun(x, d, n, dc);
}

static void on_direct_close(struct quic_conn *c,
                            const struct quic_close_info *i, void *ud)
{
  struct adirect *d = ud;
  char why[200];

  if (d->c != c)
    return; /* we ended it ourselves: its services are on the relay */
  snprintf(why, sizeof(why), "direct connection %s: %s",
           d->up ? "closed" : "failed",
           i->reason[0] ? i->reason : ztna_strerror(i->err));
  d->c = NULL; /* gone already: nothing to close */
  fail_conn(d, why);
}

static const struct quic_conn_cbs direct_cbs = {
  .handshake_cb = on_direct_handshake,
  .datagram_cb = on_direct_datagram,
  .close_cb = on_direct_close,
};

static void send_keepalive(struct adirect *d)
{
  struct wire_ctl c = { .kind = WIRE_CTL_KA_REQ };
  uint8_t buf[WIRE_KEEPALIVE_LEN];
  int n;

  c.seq = ++d->ka_seq;
  n = wire_ctl_encode(buf, sizeof(buf), &c);
  if (n > 0)
    quic_endpoint_send_raw(d->x->ep, (struct sockaddr *)&d->peer, buf,
                           (size_t)n);
  d->ka_wait = 1;
  d->ka_sent_ms = uv_now(d->x->loop);
  d->ka_next_ms = d->ka_sent_ms + DIRECT_KEEPALIVE_MS;
}

static void p2p_tick(uv_timer_t *t)
{
  struct actx *x = t->data;
  uint64_t now = uv_now(x->loop);

  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *a = &x->svcs[i];
    switch (a->state) {
    case AP_RELAY:
      if (a->retry_at_ms && now >= a->retry_at_ms && x->has_observed &&
          uplink_is_up(x->up) && uplink_reg_state(x->up, i) == UPLINK_REG_OK)
        start_punch(a);
      break;
    case AP_DIRECT:
      if (a->relink > 0) {
        a->relink--;
        send_link(a);
      }
      break;
    case AP_LINKING:
      if (a->link_tries >= LINK_TRIES)
        fail_direct(a, "the connector did not link the direct connection "
                       "to our relay path");
      else
        send_link(a);
      break;
    default:
      break;
    }
  }
  /* The connections: silence and keepalives. */
  for (size_t i = 0; i < CFG_MAX_SERVICES; i++) {
    struct adirect *d = &x->directs[i];
    if (!d->c || !d->up)
      continue;
    if (quic_conn_silence_ms(d->c) >= DIRECT_SILENCE_MS) {
      fail_conn(d, "no answer on the direct path for 1.5 s");
      continue;
    }
    if (d->ka_wait && now - d->ka_sent_ms >= DIRECT_KEEPALIVE_WAIT_MS) {
      d->ka_wait = 0;
      if (++d->ka_misses >= DIRECT_KEEPALIVE_MISSES) {
        fail_conn(d, "3 keepalives unanswered");
        continue;
      }
    }
    if (now >= d->ka_next_ms)
      send_keepalive(d);
  }
}

static void send_raw(const struct sockaddr *to, const uint8_t *d, size_t n,
                     void *ud)
{
  struct actx *x = ud;
  quic_endpoint_send_raw(x->ep, to, d, n);
}

/* Control packets on our socket: the connector's checks, answers to ours,
 * keepalive answers. */
static void on_raw_packet(struct quic_endpoint *ep, const uint8_t *d,
                          size_t n, const struct sockaddr *from, void *ud)
{
  struct actx *x = ud;
  struct wire_ctl c;
  uint64_t now = uv_now(x->loop);
  (void)ep;

  if (wire_ctl_decode(d, n, &c) < 0)
    return;
  /* The connector's checks: answer them (at most 200 a second). */
  if (c.kind == WIRE_CTL_BIND_REQ) {
    struct punch_io io = { send_raw, x };
    if (punch_rate_ok(&x->ctl_rate, 200, now))
      punch_answer(&io, &c, from);
    else
      drop(x, A_CTL_LIMITED);
  }
  if (c.kind == WIRE_CTL_KA_RESP) {
    for (size_t i = 0; i < CFG_MAX_SERVICES; i++) {
      struct adirect *dc = &x->directs[i];
      if (dc->c && dc->ka_wait && c.seq == dc->ka_seq &&
          punch_addr_eq(from, (struct sockaddr *)&dc->peer)) {
        dc->ka_wait = 0;
        dc->ka_misses = 0;
      }
    }
    return;
  }
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].pc && p2p_client_packet(x->svcs[i].pc, &c, from))
      break;
}

static void on_signal(struct uplink *u, const struct wire_sig *m, void *ud)
{
  struct actx *x = ud;
  (void)u;
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].pc && p2p_client_signal(x->svcs[i].pc, m))
      return;
}

static void on_registered(struct uplink *u, size_t svc, enum uplink_reg r,
                          void *ud)
{
  struct actx *x = ud;
  (void)u;
  /* Punch as soon as the service is registered; data does not wait. */
  if (r == UPLINK_REG_OK && !x->no_direct && x->svcs[svc].state == AP_RELAY &&
      !x->svcs[svc].retry_at_ms)
    schedule_punch(&x->svcs[svc], 0);
  /* A new relay connection while on the direct path: the intermediate
   * knows us by a new address; link again so that the connector keeps
   * our connections and can still fall back to the relay. */
  if (r == UPLINK_REG_OK && x->svcs[svc].state == AP_DIRECT) {
    struct asvc *a = &x->svcs[svc];
    a->link_tries = 0;
    a->relink = uv_random(NULL, NULL, a->token, sizeof(a->token), 0, NULL)
                    ? 0 /* no token: the next punch links anew */
                    : LINK_TRIES;
  }
}

static const struct uplink_cbs uplink_cbs = {
  .up = on_up,
  .datagram = on_datagram,
  .qad = on_qad,
  .registered = on_registered,
  .signal = on_signal,
};

static const struct quic_endpoint_cbs ep_cbs = { .packet_cb = on_raw_packet };

/* --- setup and teardown ---------------------------------------------------- */

static void routes(struct actx *x, int add)
{
  for (size_t i = 0; i < x->nvips; i++) {
    int rv = tun_route(x->tun_name, add, x->vips[i].family, x->vips[i].addr,
                       x->vips[i].prefix);
    if (rv < 0 && add)
      log_warnx("route for service '%s' through %s: %s",
                x->cfg.services[x->vips[i].svc].id, x->tun_name,
                strerror(-rv));
  }
}

static void collect(void *ud)
{
  struct actx *x = ud;
  for (int i = 0; i < A_COUNT; i++)
    metric_set(x->mx_drops[i], (int64_t)x->drops[i]);
  metric_set(x->mx_tx, (int64_t)x->tx_packets);
  metric_set(x->mx_rx, (int64_t)x->rx_packets);
  metric_set(x->mx_txb, (int64_t)x->tx_bytes);
  metric_set(x->mx_rxb, (int64_t)x->rx_bytes);
  metric_set(x->mx_up, uplink_is_up(x->up));
  metric_set(x->mx_direct_tx, (int64_t)x->direct_tx);
  metric_set(x->mx_direct_rx, (int64_t)x->direct_rx);
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    const struct asvc *a = &x->svcs[i];
    char l[WIRE_SERVICE_ID_MAX * 2 + 64], esc[WIRE_SERVICE_ID_MAX * 2 + 8];
    const char *id = x->cfg.services[i].id;
    metrics_label_escape(esc, sizeof(esc), id, strlen(id));
    for (int k = 0; k <= AP_DIRECT; k++) {
      snprintf(l, sizeof(l), "service=\"%s\",path=\"%s\"", esc,
               apath_names[k]);
      metric_set(metrics_gauge(x->m, "ztna_agent_path", l,
                               "The path a service's traffic takes "
                               "(1 for the current one)"),
                 a->state == (enum apath)k);
    }
    snprintf(l, sizeof(l), "service=\"%s\",result=\"success\"", esc);
    metric_set(metrics_counter(x->m, "ztna_agent_punches_total", l,
                               "Punches by result"),
               (int64_t)a->punches_ok);
    snprintf(l, sizeof(l), "service=\"%s\",result=\"failed\"", esc);
    metric_set(metrics_counter(x->m, "ztna_agent_punches_total", l,
                               "Punches by result"),
               (int64_t)a->punches_failed);
    for (int k = 0; k < PF_COUNT; k++) {
      snprintf(l, sizeof(l), "service=\"%s\",reason=\"%s\"", esc,
               pfail_names[k]);
      metric_set(metrics_counter(x->m, "ztna_agent_direct_failures_total", l,
                                 "Attempts at a direct path that failed, "
                                 "by why"),
                 (int64_t)a->fails[k]);
    }
    snprintf(l, sizeof(l), "service=\"%s\"", esc);
    metric_set(metrics_gauge(x->m, "ztna_agent_punch_duration_ms", l,
                             "How long the last punch took"),
               (int64_t)a->punch_ms);
    metric_set(metrics_counter(x->m, "ztna_agent_direct_fallbacks_total", l,
                               "Direct paths lost (traffic back to the "
                               "relay)"),
               (int64_t)a->fallbacks);
    metric_set(metrics_gauge(x->m, "ztna_agent_direct_rtt_us", l,
                             "Smoothed round trip of the direct path"),
               a->state == AP_DIRECT && a->d && a->d->c
                   ? (int64_t)quic_conn_rtt_us(a->d->c)
                   : 0);
  }
  metric_set(x->mx_reconn, (int64_t)uplink_reconnects(x->up));
}

/* /readyz: connected, and every service registered. */
static int ready(void *ud, char *why, size_t cap)
{
  struct actx *x = ud;

  if (x->stopping) {
    snprintf(why, cap, "shutting down");
    return 0;
  }
  if (!uplink_is_up(x->up)) {
    snprintf(why, cap, "not connected to the intermediate");
    return 0;
  }
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (uplink_reg_state(x->up, i) != UPLINK_REG_OK) {
      snprintf(why, cap, "service '%s': not registered",
               x->cfg.services[i].id);
      return 0;
    }
  return 1;
}

static void metrics_init(struct actx *x)
{
  char labels[64];
  for (int i = 0; i < A_COUNT; i++) {
    snprintf(labels, sizeof(labels), "reason=\"%s\"", adrop_names[i]);
    x->mx_drops[i] = metrics_counter(x->m, "ztna_agent_drops_total", labels,
                                     "Packets dropped, by reason");
  }
  x->mx_tx = metrics_counter(x->m, "ztna_agent_tunnel_packets_sent_total",
                             NULL, "Packets sent into the tunnel");
  x->mx_rx = metrics_counter(x->m,
                             "ztna_agent_tunnel_packets_received_total",
                             NULL, "Packets received from the tunnel");
  x->mx_txb = metrics_counter(x->m, "ztna_agent_tunnel_bytes_sent_total",
                              NULL, "Bytes sent into the tunnel");
  x->mx_rxb = metrics_counter(x->m, "ztna_agent_tunnel_bytes_received_total",
                              NULL, "Bytes received from the tunnel");
  x->mx_up = metrics_gauge(x->m, "ztna_agent_connected", NULL,
                           "1 while connected to the intermediate");
  x->mx_direct_tx = metrics_counter(x->m,
                                    "ztna_agent_direct_packets_sent_total",
                                    NULL, "Packets sent on direct paths");
  x->mx_direct_rx = metrics_counter(
      x->m, "ztna_agent_direct_packets_received_total", NULL,
      "Packets received on direct paths");
  x->mx_reconn = metrics_counter(x->m, "ztna_agent_reconnections_total",
                                 NULL, "Reconnections to the intermediate");
  metrics_set_collect(x->m, collect, x);
  metrics_set_ready(x->m, ready, x);
}

static void close_handle(uv_handle_t *h)
{
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* The drain is over: every close packet has left. */
static void stop_done(void *ud)
{
  struct actx *x = ud;

  quic_endpoint_del(x->ep);
  x->ep = NULL;
  daemon_signals_close(&x->sig);
}

static void on_terminate(void *ud, int signum)
{
  struct actx *x = ud;

  if (x->stopping)
    return;
  x->stopping = 1;
  log_info("signal %d: shutting down", signum);
  /* Nothing may call into what goes away below: no metrics, no packets
   * from the TUN (on_hup ignores reloads from now on). */
  metrics_http_stop(x->http);
  x->http = NULL;
  routes(x, 0);
  uv_poll_stop(&x->poll);
  close_handle((uv_handle_t *)&x->poll);
  close_handle((uv_handle_t *)&x->p2p_tick);
  for (size_t i = 0; i < CFG_MAX_SERVICES; i++) {
    struct adirect *d = &x->directs[i];
    struct quic_conn *c = d->c;
    d->c = NULL;
    if (c)
      quic_conn_close(c, 0, "agent shutting down");
  }
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *a = &x->svcs[i];
    a->d = NULL;
    a->state = AP_RELAY;
    if (a->pc) {
      p2p_client_stop(a->pc, pc_closed);
      a->pc = NULL;
    }
  }
  uplink_del(x->up, "agent shutting down");
  x->up = NULL;
  daemon_drain_start(&x->drain, x->loop, &x->ep, 1, stop_done, x);
}

static int make_tls(struct actx *x, struct tls_ctx **out)
{
  struct tls_config tc;
  char err[512];
  int rv;

  tls_config_init(&tc);
  tc.cert_file = x->cfg.cert[0] ? x->cfg.cert : NULL;
  tc.key_file = x->cfg.key[0] ? x->cfg.key : NULL;
  tc.ca_file = x->cfg.ca_cert[0] ? x->cfg.ca_cert : NULL;
  tc.verify_peer = x->cfg.verify_peer;
  rv = tls_ctx_new(out, 0, &tc, err, sizeof(err));
  if (rv < 0)
    log_warnx("%s", err);
  return rv;
}

static void on_hup(void *ud)
{
  struct actx *x = ud;
  struct tls_ctx *tls;

  if (x->stopping)
    return;
  if (make_tls(x, &tls) < 0) {
    log_warnx("reload failed: keeping the certificates in use");
    return;
  }
  uplink_set_tls(x->up, tls);
  tls_ctx_unref(x->tls);
  x->tls = tls;
  log_info("reloaded certificates");
}

static int parse_vip(const char *s, struct vip *v)
{
  char addr[128], *slash;
  snprintf(addr, sizeof(addr), "%s", s);
  slash = strchr(addr, '/');
  if (slash)
    *slash++ = '\0';
  if (inet_pton(AF_INET, addr, v->addr) == 1) {
    v->family = 4;
    v->prefix = 32;
  } else if (inet_pton(AF_INET6, addr, v->addr) == 1) {
    v->family = 6;
    v->prefix = 128;
  } else {
    return -1;
  }
  if (slash) {
    char *end;
    long p = strtol(slash, &end, 10);
    if (*end || p < 1 || p > v->prefix)
      return -1;
    v->prefix = (int)p;
  }
  return 0;
}

enum { OPT_SERVER = 256, OPT_SERVICE, OPT_CERT, OPT_KEY, OPT_CA, OPT_TUN,
       OPT_TUNNEL_ADDR, OPT_TUNNEL_ADDR6, OPT_METRICS_PORT, OPT_NO_DIRECT,
       OPT_METRICS_BIND, OPT_LOG_FORMAT, OPT_USER, OPT_SERVICE_IP };

static const struct option opts[] = {
  { "config", required_argument, NULL, 'c' },
  { "check", no_argument, NULL, 'n' },
  { "verbose", no_argument, NULL, 'v' },
  { "server", required_argument, NULL, OPT_SERVER },
  { "service", required_argument, NULL, OPT_SERVICE },
  { "cert", required_argument, NULL, OPT_CERT },
  { "key", required_argument, NULL, OPT_KEY },
  { "ca", required_argument, NULL, OPT_CA },
  { "tun", required_argument, NULL, OPT_TUN },
  { "tunnel-addr", required_argument, NULL, OPT_TUNNEL_ADDR },
  { "tunnel-addr6", required_argument, NULL, OPT_TUNNEL_ADDR6 },
  { "no-direct", no_argument, NULL, OPT_NO_DIRECT },
  { "metrics-port", required_argument, NULL, OPT_METRICS_PORT },
  { "metrics-bind", required_argument, NULL, OPT_METRICS_BIND },
  { "log-format", required_argument, NULL, OPT_LOG_FORMAT },
  { "user", required_argument, NULL, OPT_USER },
  { "help", no_argument, NULL, 'h' },
  /* The original's spellings (docs/migrating.md): --service ID
   * --service-ip IP is --service ID=IP. */
  { "ca-cert", required_argument, NULL, OPT_CA },
  { "service-ip", required_argument, NULL, OPT_SERVICE_IP },
  { NULL, 0, NULL, 0 },
};
#define N_ENV_OPTS 17 /* the entries above before the original's */

struct aopts {
  const char *config, *server, *cert, *key, *ca, *tun, *taddr, *taddr6,
      *mport, *mbind, *logfmt, *user;
  const char *svc[CFG_MAX_SERVICES];
  const char *svcip[CFG_MAX_SERVICES]; /* --service-ip of svc[i] or NULL */
  size_t nsvc;
  int check, verbose, help, no_direct;
};

static int usage_error(const char *fmt, const char *arg)
{
  return daemon_usage_error("agent", fmt, arg);
}

/* 0, or -1 after saying why. */
static int parse_opts(int argc, char **argv, struct aopts *o)
{
  int ch;

  daemon_getopt_reset();
  while ((ch = getopt_long(argc, argv, "c:nvh", opts, NULL)) != -1) {
    switch (ch) {
    case 'c': o->config = optarg; break;
    case 'n': o->check = 1; break;
    case 'v': o->verbose++; break;
    case OPT_SERVER: o->server = optarg; break;
    case OPT_SERVICE:
      if (o->nsvc >= CFG_MAX_SERVICES) {
        usage_error("%s", "too many --service options");
        return -1;
      }
      o->svcip[o->nsvc] = NULL;
      o->svc[o->nsvc++] = optarg;
      break;
    case OPT_SERVICE_IP:
      if (!o->nsvc || o->svcip[o->nsvc - 1] ||
          strchr(o->svc[o->nsvc - 1], '=')) {
        usage_error("--service-ip '%s' must follow a --service ID without "
                    "an address", optarg);
        return -1;
      }
      o->svcip[o->nsvc - 1] = optarg;
      break;
    case OPT_CERT: o->cert = optarg; break;
    case OPT_KEY: o->key = optarg; break;
    case OPT_CA: o->ca = optarg; break;
    case OPT_TUN: o->tun = optarg; break;
    case OPT_TUNNEL_ADDR: o->taddr = optarg; break;
    case OPT_TUNNEL_ADDR6: o->taddr6 = optarg; break;
    case OPT_NO_DIRECT: o->no_direct = 1; break;
    case OPT_METRICS_PORT: o->mport = optarg; break;
    case OPT_METRICS_BIND: o->mbind = optarg; break;
    case OPT_LOG_FORMAT: o->logfmt = optarg; break;
    case OPT_USER: o->user = optarg; break;
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

static int apply_opts(struct actx *x, const struct aopts *o)
{
  if (o->logfmt && log_set_format(o->logfmt) < 0)
    return usage_error("--log-format '%s' is not text or json", o->logfmt);
  if (o->server && cfg_split_hostport(o->server, x->cfg.server_host,
                                      sizeof(x->cfg.server_host),
                                      &x->cfg.server_port) < 0)
    return usage_error("--server '%s' is not HOST:PORT", o->server);
  if (o->nsvc)
    x->cfg.nservices = 0;
  for (size_t i = 0; i < o->nsvc; i++) {
    struct cfg_service *s = &x->cfg.services[x->cfg.nservices++];
    const char *arg = o->svc[i], *eq = strchr(arg, '=');
    size_t idlen = eq ? (size_t)(eq - arg) : strlen(arg);
    const char *ip = eq ? eq + 1 : o->svcip[i];

    memset(s, 0, sizeof(*s));
    if (!idlen || !ip || !*ip || idlen >= sizeof(s->id))
      return usage_error("--service '%s' is not ID=VIRTUAL_IP", arg);
    memcpy(s->id, arg, idlen);
    snprintf(s->virtual_ip, sizeof(s->virtual_ip), "%s", ip);
  }
  if (o->cert)
    snprintf(x->cfg.cert, sizeof(x->cfg.cert), "%s", o->cert);
  if (o->key)
    snprintf(x->cfg.key, sizeof(x->cfg.key), "%s", o->key);
  if (o->ca)
    snprintf(x->cfg.ca_cert, sizeof(x->cfg.ca_cert), "%s", o->ca);
  if (o->tun)
    snprintf(x->cfg.tun_name, sizeof(x->cfg.tun_name), "%s", o->tun);
  if (o->taddr)
    snprintf(x->cfg.tunnel_addr, sizeof(x->cfg.tunnel_addr), "%s", o->taddr);
  if (o->taddr6)
    snprintf(x->cfg.tunnel_addr6, sizeof(x->cfg.tunnel_addr6), "%s",
             o->taddr6);
  if (o->no_direct)
    x->cfg.direct = 0;
  if (o->mport && cfg_parse_port(o->mport, &x->cfg.metrics_port, 1) < 0)
    return usage_error("--metrics-port '%s' is not a port (0-65535)",
                       o->mport);
  if (o->mbind)
    snprintf(x->cfg.metrics_bind, sizeof(x->cfg.metrics_bind), "%s",
             o->mbind);
  return 0;
}

int agent_main(int argc, char **argv)
{
  static const char *const repeat[] = { "service", NULL };
  static struct actx x;
  static struct daemon_env env;
  static struct aopts eo, o;
  const char *config;
  int rv;
  char err[512];
  struct sockaddr_storage server_addr, bind_addr;
  struct quic_endpoint_config qc = { 0 };
  struct uplink_config uc = { 0 };

  if (parse_opts(argc, argv, &o) < 0)
    return 1;
  if (o.help) {
    fputs(usage_text, stdout);
    return 0;
  }
  if (daemon_env_args(&env, "agent", opts, N_ENV_OPTS, repeat, err,
                      sizeof(err)) < 0)
    return daemon_fail("agent", "%s", err);
  daemon_env_phase(1);
  if (parse_opts(env.argc, env.argv, &eo) < 0)
    return 1;
  log_init("agent", LOG_LVL_INFO + (o.verbose ? o.verbose : eo.verbose));
  cfg_agent_defaults(&x.cfg);
  if (apply_opts(&x, &eo))
    return 1;
  daemon_env_phase(0);
  config = o.config ? o.config : eo.config;
  if ((config || !(o.nsvc || eo.nsvc)) &&
      daemon_config_load("agent", config, x.config_path,
                         sizeof(x.config_path), &x.cfg) < 0)
    return 1;
  if (apply_opts(&x, &o))
    return 1;
  x.no_direct = !x.cfg.direct;
  if (!x.cfg.server_host[0])
    return usage_error("%s", "no intermediate: give --server HOST:PORT (or "
                       "serverHost in the configuration)");
  if (!x.cfg.nservices)
    return usage_error("%s", "no service: give --service ID=VIRTUAL_IP");
  for (size_t i = 0; i < x.cfg.nservices; i++) {
    struct cfg_service *s = &x.cfg.services[i];
    if (!s->virtual_ip[0] || parse_vip(s->virtual_ip, &x.vips[x.nvips]) < 0)
      return usage_error("service '%s' needs a virtual IP address "
                         "(virtualIp, or --service ID=IP)", s->id);
    x.vips[x.nvips++].svc = i;
    if (strlen(s->id) > x.max_idlen)
      x.max_idlen = strlen(s->id);
  }
  {
    struct in_addr a;
    struct in6_addr a6;
    if (inet_pton(AF_INET, x.cfg.tunnel_addr, &a) != 1)
      return usage_error("tunnel address '%s' is not an IPv4 address",
                         x.cfg.tunnel_addr);
    if (x.cfg.tunnel_addr6[0] &&
        inet_pton(AF_INET6, x.cfg.tunnel_addr6, &a6) != 1)
      return usage_error("IPv6 tunnel address '%s' is not an IPv6 address",
                         x.cfg.tunnel_addr6);
    for (size_t i = 0; i < x.nvips && !x.cfg.tunnel_addr6[0]; i++)
      if (x.vips[i].family == 6)
        snprintf(x.cfg.tunnel_addr6, sizeof(x.cfg.tunnel_addr6), "%s",
                 AGENT_TUNNEL_ADDR6);
    memcpy(x.guard.tun4, &a, 4);
    x.guard.has_tun6 = x.cfg.tunnel_addr6[0] &&
                       inet_pton(AF_INET6, x.cfg.tunnel_addr6,
                                 x.guard.tun6) == 1;
    for (size_t i = 0; i < x.nvips && i < TUNGUARD_MAX_VIPS; i++) {
      x.guard.vips[i].family = x.vips[i].family;
      memcpy(x.guard.vips[i].addr, x.vips[i].addr, 16);
      x.guard.vips[i].prefix = x.vips[i].prefix;
      x.guard.vips[i].svc = (unsigned)x.vips[i].svc;
    }
    x.guard.nvips = x.nvips;
  }
  if (make_tls(&x, &x.tls) < 0)
    return 1;
  {
    int literal;
    if (netaddr_resolve(x.cfg.server_host, x.cfg.server_port, &server_addr,
                        &literal, err, sizeof(err)) < 0) {
      fprintf(stderr, "ztna agent: the intermediate: %s\n", err);
      return 1;
    }
  }
  if (!x.cfg.verify_peer)
    log_warnx("verify_peer is off: the intermediate's and connectors' certificates are not checked; anyone on the path can pose as "
              "them (set it to true with a CA)");
  if (o.check) {
    printf("configuration OK\n");
    return 0;
  }

  x.tun_fd = tun_open(x.cfg.tun_name, x.tun_name, sizeof(x.tun_name));
  if (x.tun_fd < 0) {
    fprintf(stderr, "ztna agent: cannot create TUN device '%s': %s%s\n",
            x.cfg.tun_name, strerror(-x.tun_fd),
            x.tun_fd == -EPERM ? " (run as root or with CAP_NET_ADMIN)" : "");
    return 1;
  }
  x.mtu = tunnel_mtu(&x);
  rv = tun_configure(x.tun_name, x.cfg.tunnel_addr, x.mtu);
  if (rv < 0) {
    fprintf(stderr, "ztna agent: cannot configure %s: %s\n", x.tun_name,
            strerror(-rv));
    return 1;
  }
  if (x.cfg.tunnel_addr6[0] &&
      (rv = tun_add_addr6(x.tun_name, x.cfg.tunnel_addr6)) < 0) {
    fprintf(stderr, "ztna agent: cannot give %s the IPv6 address %s: %s%s\n",
            x.tun_name, x.cfg.tunnel_addr6, strerror(-rv),
            rv == -EACCES || rv == -EADDRNOTAVAIL
                ? " (is IPv6 disabled? see sysctl net.ipv6.conf.all."
                  "disable_ipv6)"
                : "");
    return 1;
  }
  x.loop = uv_default_loop();
  memset(&bind_addr, 0, sizeof(bind_addr));
  if (server_addr.ss_family == AF_INET6)
    uv_ip6_addr("::", 0, (struct sockaddr_in6 *)&bind_addr);
  else
    uv_ip4_addr("0.0.0.0", 0, (struct sockaddr_in *)&bind_addr);
  qc.keepalive_ms = 10000;
  qc.cbs = &ep_cbs;
  qc.ud = &x;
  rv = quic_endpoint_new(&x.ep, x.loop, (struct sockaddr *)&bind_addr, &qc);
  if (rv < 0)
    fatalx("cannot open a UDP socket: %s", ztna_strerror(rv));
  uc.ep = x.ep;
  uc.tls = x.tls;
  uc.server = server_addr;
  uc.host = x.cfg.server_host; /* looked up again on every reconnect */
  uc.port = x.cfg.server_port;
  uc.sni = "ztna-server";
  uc.role = WIRE_REG_AGENT;
  for (size_t i = 0; i < x.cfg.nservices; i++)
    uc.services[i] = x.cfg.services[i].id;
  uc.nservices = x.cfg.nservices;
  uc.name = "intermediate";
  if (uplink_new(&x.up, x.loop, &uc, &uplink_cbs, &x) < 0)
    fatalx("out of memory");
  for (size_t i = 0; i < x.cfg.nservices; i++) {
    x.svcs[i].x = &x;
    x.svcs[i].idx = i;
    for (size_t k = 0; k < x.nvips; k++)
      if (x.vips[k].svc == i)
        x.svcs[i].vip = (int)k;
  }
  uv_timer_init(x.loop, &x.p2p_tick);
  x.p2p_tick.data = &x;
  if (!x.no_direct)
    uv_timer_start(&x.p2p_tick, p2p_tick, P2P_TICK_MS, P2P_TICK_MS);
  routes(&x, 1);
  log_info("%s up (%s%s%s, MTU %d), %zu services routed", x.tun_name,
           x.cfg.tunnel_addr, x.cfg.tunnel_addr6[0] ? ", " : "",
           x.cfg.tunnel_addr6, x.mtu, x.nvips);
  uv_poll_init(x.loop, &x.poll, x.tun_fd);
  x.poll.data = &x;
  uv_poll_start(&x.poll, UV_READABLE, tun_readable);
  x.m = metrics_new();
  if (!x.m)
    fatalx("out of memory");
  metrics_init(&x);
  if (x.cfg.metrics_port &&
      metrics_http_listen(&x.http, x.loop, x.cfg.metrics_bind,
                          x.cfg.metrics_port,
                          x.m, err, sizeof(err)) < 0)
    return daemon_fail("agent", "%s", err);
  daemon_signals_start(&x.sig, x.loop, on_terminate, on_hup, &x);
  /* Everything that needed privileges is done (sockets bound, keys
   * read, the TUN up: it keeps CAP_NET_ADMIN for its MTU and routes); SIGHUP later reads the files as this user. */
  if (daemon_drop_privileges(o.user ? o.user : eo.user, DAEMON_CAP_NET_ADMIN, err,
                             sizeof(err)) < 0)
    fatalx("%s", err);
  uv_run(x.loop, UV_RUN_DEFAULT);
  close(x.tun_fd);
  metrics_del(x.m);
  tls_ctx_unref(x.tls);
  if (daemon_loop_close(x.loop) < 0)
    return 1;
  log_info("stopped");
  return 0;
}
