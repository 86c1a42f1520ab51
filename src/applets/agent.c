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
 * End to end (protocol.md 10): for each service the agent opens a relay
 * session at the intermediate and, through it, a QUIC connection of its
 * own to the service's connector, verified both ways; the service's
 * packets travel in that connection's DATAGRAMs, which the intermediate
 * forwards without being able to read them. A punch (p2p.c, punch.c) from
 * the same socket finds the connector's address, and the connection moves
 * there by QUIC path migration, validated under its own keys; when the
 * direct path goes silent it moves back to the relay session at once
 * (path.c decides when). An original connector or intermediate, which
 * knows no relay sessions, gets the original raw IP through the relay.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <uv.h>

#include "../applets.h"
#include "config.h"
#include "daemon.h"
#include "err.h"
#include "identity.h"
#include "ippkt.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "p2p.h"
#include "path.h"
#include "policy.h"
#include "punch.h"
#include "quic.h"
#include "tls.h"
#include "tun.h"
#include "../version.h"
#include "api.h"
#include "tunguard.h"
#include "uplink.h"
#include "vnet.h"
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
    "      --raw-relay      for a service whose connector is an original one\n"
    "                       (no relay sessions), send raw IP through the\n"
    "                       relay, which the intermediate can read (off: its\n"
    "                       traffic is refused; an intermediate that claims\n"
    "                       so cannot downgrade the others)\n"
    "      --no-tun-offload one packet per TUN read and write (default: the\n"
    "                       kernel hands up TCP segments of up to 64 KB and\n"
    "                       takes joined ones, cut and joined here)\n"
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
             A_FOREIGN_SOURCE, A_FOREIGN_DEST, A_COUNT };
static const char *const adrop_names[A_COUNT] = {
  "no_service", "not_registered", "too_large", "queue_full",
  "not_connected", "malformed", "tun_full", "control_limited",
  /* Into the TUN only from a virtual IP of a service the path carries, to
   * our tunnel address. */
  "foreign_source", "foreign_destination",
};

struct vip {
  int family;
  uint8_t addr[16];
  int prefix;
  size_t svc;
};

#define E2E_PING_MS 5000             /* QUIC PING when idle */
#define OPEN_INTERVAL_MS 1000        /* relay session requests: resent */
#define OPEN_TRIES 5                 /* then the intermediate is original */
#define OPEN_RETRY_MS 2000           /* a table full */
#define NOCONN_RETRY_MS 250          /* no connector yet: doubling ... */
#define NOCONN_RETRY_MAX_MS 4000     /* ... to this */
#define OPEN_REFUSED_MS 10000        /* the intermediate said no */
#define E2E_BACKOFF_MAX_MS 30000     /* connection failures in a row */
#define MTU_WAIT_MS 5000             /* for path MTU discovery */
#define LEGACY_RETRY_MS 30000        /* raw IP: ask for a session again */
#define RAW_REFUSED_RETRY_MS 5000    /* raw IP refused: ask again */
#define REREGISTER_MS 30000          /* a refused registration, again */
/* Packets that arrive while a service's connection is coming up wait for
 * it (the first packets of the first flow are not lost to the ~1 RTT
 * handshake), bounded: */
#define HOLD_PACKETS 64
#define HOLD_BYTES (128 * 1024)
#define HOLD_MS 5000
#define P2P_TICK_MS 250
/* A connection that is up tells which of our services it may carry
 * (WIRE_SERVICES); the others wait this long for it before they connect
 * on their own. */
#define SERVICES_WAIT_MS 1000

/* The end-to-end connection of a service. */
enum estate {
  E_NONE,       /* none (yet) */
  E_CONNECTING, /* handshake through the relay session */
  E_UP,
  E_LEGACY,     /* original peers: raw IP through the relay */
  E_SHARED,     /* on another service's connection to the same connector */
};
static const char *const estate_names[] = { "none", "connecting", "up",
                                            "legacy", "shared" };

struct actx;

/* One service: its end-to-end connection, the relay session that
 * carries it, and the path it takes. One connection per connector: a
 * service whose connector another service's connection reaches already
 * (it says so: WIRE_SERVICES) rides on that connection (E_SHARED, host),
 * and has no session, path or punch of its own. */
struct asvc {
  struct actx *x;
  size_t idx;
  int vip;
  enum estate e;
  struct asvc *host;             /* E_SHARED: whose connection */
  uint8_t serves[CFG_MAX_SERVICES]; /* the connector's WIRE_SERVICES */
  int has_serves;
  uint64_t up_ms;                /* when the connection came up */
  struct quic_conn *ec;
  struct tls_identity peer_id;   /* the connector's certificate */
  uint64_t sid;                  /* relay session, 0: none */
  int opening;                   /* an OPEN is outstanding */
  uint32_t req;
  int open_tries;
  uint64_t open_at_ms;           /* next OPEN (resend, or a new try) */
  uint64_t backoff_ms;           /* after a failed connection */
  uint64_t nocon_ms;             /* the next wait for a connector */
  uint64_t wait_since_ms;        /* for a path big enough for sessions */
  struct path path;
  struct p2p_client *pc;
  struct punch_auth last_auth;   /* of the last punch: its checks from the */
  uint64_t last_auth_ms;         /* connector are answered a while after */
  struct sockaddr_storage peer;  /* the address the last punch found */
  uint64_t punch_ms;
  uint64_t sessions, e2e_ups;
  uint64_t rereg_at_ms;          /* refused: register again then */
  int refused_raw;               /* raw IP was needed and is not allowed */
  struct held *held, **held_tail; /* waiting for the connection */
  size_t nheld, held_bytes;
};

/* A packet from the TUN waiting for its service's connection, wrapped. */
struct held {
  struct held *next;
  uint64_t ms;
  size_t n;
  uint8_t d[];
};

struct actx {
  uv_loop_t *loop;
  struct cfg_agent cfg;
  char config_path[CFG_PATH_MAX];
  char tun_name[64];
  int tun_fd;
  uv_poll_t poll;
  struct tls_ctx *tls;
  struct tls_ctx *etls;     /* end-to-end connections to connectors */
  struct quic_endpoint *ep;
  struct uplink *up;
  struct vip vips[CFG_MAX_SERVICES];
  size_t nvips;
  struct asvc svcs[CFG_MAX_SERVICES];
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
  int offload;            /* the TUN has virtio-net headers and TSO */
  uint64_t tso_reads;     /* reads that were several packets */
  uint64_t gro_writes;    /* writes that were several packets */
  uv_check_t tun_check;   /* write what is joined at the end of each */
  uv_prepare_t tun_prep;  /* loop round, and before the loop waits */
  uint8_t buf[VNET_HDR_LEN + 65536];
  uint8_t seg[4096];      /* one packet cut from such a read */
  struct vnet_gro gro;    /* segments joined for one write */
};

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

/* The service whose connection carries a's packets. */
static struct asvc *carrier(struct asvc *a)
{
  return a->e == E_SHARED && a->host ? a->host : a;
}

/* The largest IP packet that fits one DATAGRAM with the largest wrapper:
 * on end-to-end connections (1350-byte packets, 1306-byte DATAGRAMs),
 * and for services of original peers on the relay connection. */
static int tunnel_mtu(struct actx *x)
{
  size_t max = QUIC_DATAGRAM_MAX;

  for (size_t i = 0; i < x->cfg.nservices; i++) {
    size_t m = 0;
    if (x->svcs[i].e == E_UP)
      m = quic_conn_max_datagram(x->svcs[i].ec);
    else if (x->svcs[i].e == E_LEGACY)
      m = uplink_max_datagram(x->up);
    if (m && m < max)
      max = m;
  }
  return (int)(max - 2 - x->max_idlen);
}

static void flush_tun(struct actx *x);

static void tun_write_cb(void *ud, const uint8_t *hdr, const uint8_t *pkt,
                         size_t n)
{
  struct actx *x = ud;
  struct iovec iov[2] = {
    { (void *)(uintptr_t)hdr, VNET_HDR_LEN },
    { (void *)(uintptr_t)pkt, n },
  };

  if (hdr[1] != VNET_GSO_NONE)
    x->gro_writes++;
  if (writev(x->tun_fd, iov, 2) < 0)
    drop(x, A_TUN_FULL);
}

/* With offload, a TCP flow's consecutive segments of one loop round are
 * joined into one write (vnet.h) and written when the round's I/O is
 * done (flush_tun) or when something that cannot join comes. */
static void write_tun(struct actx *x, const uint8_t *pkt, size_t n)
{
  if (x->offload) {
    if (vnet_gro_add(&x->gro, pkt, n, tun_write_cb, x) < 0)
      drop(x, A_TOO_LARGE);
    if (x->stopping) /* the flush handles are closed */
      flush_tun(x);
    return;
  }
  if (write(x->tun_fd, pkt, n) < 0)
    drop(x, A_TUN_FULL);
}

static void flush_tun(struct actx *x)
{
  vnet_gro_flush(&x->gro, tun_write_cb, x);
}

static void flush_tun_check_cb(uv_check_t *h)
{
  flush_tun(h->data);
}

static void flush_tun_prepare_cb(uv_prepare_t *h)
{
  flush_tun(h->data);
}

/* A packet from a service's end-to-end connection (via), or from the
 * relay connection (NULL: raw IP of original peers, any service), goes
 * into the TUN if tunguard admits it; what it refuses is counted by
 * reason. */
static void to_tun(struct actx *x, const uint8_t *pkt, size_t n,
                   const struct asvc *via)
{
  static const enum adrop why[] = {
    [TUNGUARD_MALFORMED] = A_MALFORMED,
    [TUNGUARD_FOREIGN_SOURCE] = A_FOREIGN_SOURCE,
    [TUNGUARD_FOREIGN_DEST] = A_FOREIGN_DEST,
  };
  uint8_t carried[CFG_MAX_SERVICES] = { 0 };
  enum tunguard_verdict v;
  size_t len = 0;

  if (via) {
    carried[via->idx] = 1;
    for (size_t i = 0; i < x->cfg.nservices; i++)
      if (x->svcs[i].e == E_SHARED && x->svcs[i].host == via)
        carried[i] = 1;
  }
  v = tunguard_check(&x->guard, pkt, n, via ? carried : NULL,
                     x->cfg.nservices, &len);
  if (v != TUNGUARD_OK) {
    drop(x, v < sizeof(why) / sizeof(why[0]) ? why[v] : A_MALFORMED);
    return;
  }
  if (via && via->path.state == PATH_DIRECT)
    x->direct_rx++;
  x->rx_packets++;
  x->rx_bytes += len;
  write_tun(x, pkt, len);
}

static void held_free(struct asvc *a)
{
  while (a->held) {
    struct held *h = a->held;
    a->held = h->next;
    free(h);
  }
  a->held_tail = &a->held;
  a->nheld = a->held_bytes = 0;
}

/* Keeps a wrapped packet until the connection is up (0), or says why not
 * (the bounds: a flood while the connection never comes up must not eat
 * memory). */
static int hold(struct asvc *a, const struct iovec *iov, int iovcnt)
{
  size_t n = 0, off = 0;
  struct held *h;

  for (int i = 0; i < iovcnt; i++)
    n += iov[i].iov_len;
  if (a->nheld >= HOLD_PACKETS || a->held_bytes + n > HOLD_BYTES)
    return ZTNA_ERR_QUEUE_FULL;
  h = malloc(sizeof(*h) + n);
  if (!h)
    return ZTNA_ERR_QUEUE_FULL;
  for (int i = 0; i < iovcnt; i++) {
    memcpy(h->d + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  h->n = n;
  h->ms = uv_now(a->x->loop);
  h->next = NULL;
  if (!a->held_tail)
    a->held_tail = &a->held;
  *a->held_tail = h;
  a->held_tail = &h->next;
  a->nheld++;
  a->held_bytes += n;
  return 0;
}

/* The connection is up (or the service goes raw): what waited leaves, in
 * order; what is too old for anyone to wait for any more is dropped. */
static void release_held(struct asvc *a)
{
  struct actx *x = a->x;
  struct asvc *c = carrier(a);
  uint64_t now = uv_now(x->loop);

  if (c->e != E_UP && c->e != E_LEGACY)
    return; /* still coming up */
  while (a->held) {
    struct held *h = a->held;
    struct iovec v = { h->d, h->n };
    int rv = ZTNA_ERR_STATE;

    if (now - h->ms < HOLD_MS) {
      if (c->e == E_UP)
        rv = quic_conn_send_datagramv(c->ec, &v, 1);
      else if (c->e == E_LEGACY)
        rv = uplink_send(x->up, &v, 1);
    }
    if (rv < 0)
      drop(x, A_NOT_CONNECTED);
    a->held = h->next;
    free(h);
  }
  a->held_tail = &a->held;
  a->nheld = a->held_bytes = 0;
}

/* Tells the sender (through the TUN) the size that fits: never a silent
 * black hole. */
static void too_big(struct actx *x, const uint8_t *pkt, const struct ippkt *ip,
                    int mtu)
{
  uint8_t icmp[1400];
  int k = ippkt_build_too_big(icmp, sizeof(icmp), pkt, ip->totlen,
                              (uint16_t)(mtu >= 576 ? mtu : 576), ip->dst);
  drop(x, A_TOO_LARGE);
  if (k > 0)
    write_tun(x, icmp, (size_t)k);
}

/* A packet the user's machine sent into the TUN: into its service's
 * end-to-end connection, or for an original connector through the relay.
 * Before the connection is up nothing leaves: the intermediate never
 * gets a ztna peer's packet to read. */
static void from_tun(struct actx *x, uint8_t *pkt, size_t n)
{
  struct ippkt ip;
  const struct vip *v;
  struct asvc *a;
  const char *id;
  uint8_t hdr[2 + WIRE_SERVICE_ID_MAX];
  struct iovec iov[2];
  int h, rv;

  if (ippkt_parse(pkt, n, &ip) < 0) {
    drop(x, A_MALFORMED);
    return;
  }
  v = lookup(x, &ip);
  if (!v) {
    drop(x, A_NO_SERVICE);
    return;
  }
  a = &x->svcs[v->svc];
  if (uplink_is_up(x->up) &&
      uplink_reg_state(x->up, v->svc) != UPLINK_REG_OK &&
      uplink_reg_state(x->up, v->svc) != UPLINK_REG_PENDING) {
    drop(x, A_NOT_REGISTERED);
    return;
  }
  a = carrier(a);
  id = x->cfg.services[v->svc].id;
  h = wire_routed_encode_header(hdr, sizeof(hdr), id, strlen(id));
  iov[0].iov_base = hdr;
  iov[0].iov_len = (size_t)h;
  iov[1].iov_base = pkt;
  iov[1].iov_len = ip.totlen;
  if (a->e == E_UP && !a->sid && a->path.state != PATH_DIRECT &&
      uplink_is_up(x->up)) {
    /* On the relay, between sessions (a new connection to the
     * intermediate): the packet waits for the next one. */
    rv = hold(a, iov, 2);
  } else if (a->e == E_UP) {
    rv = quic_conn_send_datagramv(a->ec, iov, 2);
    if (rv == ZTNA_ERR_TOO_LARGE) {
      too_big(x, pkt, &ip, (int)quic_conn_max_datagram(a->ec) - h);
      return;
    }
    if (rv == 0 && a->path.state == PATH_DIRECT)
      x->direct_tx++;
  } else if (a->e == E_LEGACY) {
    rv = uplink_send(x->up, iov, 2);
    if (rv == ZTNA_ERR_TOO_LARGE) {
      too_big(x, pkt, &ip, (int)uplink_max_datagram(x->up) - h);
      return;
    }
  } else if (uplink_is_up(x->up)) {
    rv = hold(a, iov, 2); /* the connection is coming up */
  } else {
    rv = ZTNA_ERR_STATE;
  }
  if (rv == 0) {
    x->tx_packets++;
    x->tx_bytes += ip.totlen;
    return;
  }
  drop(x, rv == ZTNA_ERR_QUEUE_FULL ? A_QUEUE_FULL : A_NOT_CONNECTED);
}

static void from_tun_cb(void *ud, uint8_t *pkt, size_t n)
{
  from_tun(ud, pkt, n);
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
    int k;
    if (n <= 0)
      break;
    if (!x->offload) {
      from_tun(x, x->buf, (size_t)n);
      continue;
    }
    /* With TSO one read may be a TCP segment of up to 64 KB: cut into
     * the packets the tunnel carries (and counted as such). */
    k = vnet_split(x->buf, (size_t)n, x->seg, sizeof(x->seg), from_tun_cb,
                   x);
    if (k < 0)
      drop(x, A_MALFORMED);
    else if (k > 1)
      x->tso_reads++;
  }
}

/* --- relay sessions and end-to-end connections (protocol.md 10) ---------- */

static const char *svc_id(const struct asvc *a)
{
  return a->x->cfg.services[a->idx].id;
}

static struct asvc *by_session(struct actx *x, uint64_t sid)
{
  for (size_t i = 0; sid && i < x->cfg.nservices; i++)
    if (x->svcs[i].sid == sid)
      return &x->svcs[i];
  return NULL;
}

static void set_mtu(struct actx *x)
{
  int mtu = tunnel_mtu(x);

  if (mtu != x->mtu && mtu >= 576 && tun_set_mtu(x->tun_name, mtu) == 0) {
    log_info("%s: MTU %d", x->tun_name, mtu);
    x->mtu = mtu;
  }
}

static void detach_riders(struct asvc *h, const char *why);
static void share(struct actx *x);

/* An original intermediate or connector: the service's packets go as raw
 * IP through the relay, which reads them, as the original design does. */
static void go_legacy(struct asvc *a, const char *why)
{
  /* Asked again now and then: the connector may be replaced by a ztna
   * one, and the service then leaves raw IP behind. */
  a->open_at_ms = uv_now(a->x->loop) + LEGACY_RETRY_MS;
  a->opening = 0;
  if (a->e == E_LEGACY)
    return;
  if (!a->x->cfg.raw_relay) {
    /* Deny by default: "no sessions here" may come from an intermediate
     * that wants to read the traffic. */
    if (!a->refused_raw)
      log_warnx("%s: %s; its traffic is refused rather than sent as raw "
                "IP the intermediate could read (--raw-relay, or raw_relay "
                "in the configuration, allows it for original connectors); "
                "asking for a relay session again every %d s", svc_id(a),
                why, RAW_REFUSED_RETRY_MS / 1000);
    a->refused_raw = 1;
    a->open_at_ms = uv_now(a->x->loop) + RAW_REFUSED_RETRY_MS;
    /* Its connection has no relay session now: the services riding on it
     * find their own way to their connector. */
    detach_riders(a, "it has no relay session");
    return;
  }
  a->e = E_LEGACY;
  if (a->ec) {
    /* To a connector that is gone (an original one serves now). */
    struct quic_conn *old = a->ec;
    a->ec = NULL;
    path_lost(&a->path);
    quic_conn_close(old, 0, "the service's connector takes no sessions");
    detach_riders(a, "its connector is gone");
  }
  log_warnx("%s: %s: its traffic goes through the relay as raw IP, which "
            "the intermediate can read, and takes no direct path",
            svc_id(a), why);
  set_mtu(a->x);
  release_held(a);
}

static void send_open(struct asvc *a)
{
  struct actx *x = a->x;
  uint8_t msg[6 + WIRE_SERVICE_ID_MAX];
  struct iovec v = { msg, 0 };
  int n = wire_session_open_encode(msg, sizeof(msg), a->req, svc_id(a),
                                   strlen(svc_id(a)));

  if (n < 0)
    return;
  v.iov_len = (size_t)n;
  uplink_send(x->up, &v, 1);
  a->open_tries++;
  a->open_at_ms = uv_now(x->loop) + OPEN_INTERVAL_MS;
}

/* Asks the intermediate for a relay session to the service's connector,
 * once its DATAGRAMs can carry a whole end-to-end packet (path MTU
 * discovery on the connection to the intermediate). */
static void start_open(struct asvc *a)
{
  struct actx *x = a->x;
  size_t room = uplink_max_datagram(x->up);
  uint64_t now = uv_now(x->loop);

  if (a->opening || !uplink_is_up(x->up) ||
      uplink_reg_state(x->up, a->idx) != UPLINK_REG_OK)
    return;
  /* A connection that is up moves to the new session at once: its
   * packets are as large as their content (only the handshake's are
   * padded), so while path MTU discovery runs only full-size ones wait. */
  if (!a->ec && room < QUIC_VIRTUAL_DGRAM_NEED(QUIC_MAX_UDP_PAYLOAD)) {
    if (!a->wait_since_ms)
      a->wait_since_ms = now;
    if (now - a->wait_since_ms < MTU_WAIT_MS) {
      a->open_at_ms = now + P2P_TICK_MS;
      return;
    }
    if (room < QUIC_VIRTUAL_DGRAM_NEED(1200)) {
      go_legacy(a, "the path to the intermediate carries no DATAGRAM of "
                   "the 1209 bytes an end-to-end packet needs");
      return;
    }
  }
  a->wait_since_ms = 0;
  if (uv_random(NULL, NULL, &a->req, sizeof(a->req), 0, NULL) < 0)
    a->req = (uint32_t)now ^ (uint32_t)a->idx;
  a->opening = 1;
  a->open_tries = 0;
  send_open(a);
}

static const struct quic_conn_cbs e2e_cbs;

/* Connects through the relay session, or moves the connection there when
 * it runs on the relay (or is still coming up). */
static void use_session(struct asvc *a)
{
  struct actx *x = a->x;
  struct sockaddr_storage via;
  size_t room = uplink_max_datagram(x->up);
  int rv;

  quic_virtual_addr(&via, a->sid, QUIC_VIRTUAL_PEER_PORT);
  if (a->ec && a->e == E_CONNECTING) {
    /* Its session went away during the handshake (a handshake cannot
     * migrate): start over through the new one. */
    struct quic_conn *old = a->ec;
    a->ec = NULL;
    a->e = E_NONE;
    quic_conn_close(old, 0, "relay session replaced during the handshake");
  }
  if (a->ec) {
    if (a->e == E_UP && path_relay_changed(&a->path) &&
        quic_conn_migrate(a->ec, (struct sockaddr *)&via, 0) == 0)
      log_info("%s: relay session %llu carries the connection now",
               svc_id(a), (unsigned long long)a->sid);
    release_held(a);
    return;
  }
  quic_endpoint_set_virtual_max(x->ep, room > 9 ? room - 9 : 0);
  rv = quic_connect(&a->ec, x->ep, x->etls, (struct sockaddr *)&via,
                    ID_CONNECTOR_NAME, &e2e_cbs, a);
  if (rv < 0) {
    a->ec = NULL;
    log_warnx("%s: cannot start the end-to-end connection: %s", svc_id(a),
              ztna_strerror(rv));
    a->open_at_ms = uv_now(x->loop) + OPEN_RETRY_MS;
    return;
  }
  a->e = E_CONNECTING;
}

/* Tells the intermediate we are done with relay session sid. */
static void send_closed(struct actx *x, uint64_t sid)
{
  uint8_t msg[WIRE_SESSION_CLOSED_LEN];
  struct iovec v = { msg, sizeof(msg) };

  if (wire_session_closed_encode(msg, sizeof(msg), sid, 0) > 0)
    uplink_send(x->up, &v, 1);
}

static void on_opened(struct actx *x, const uint8_t *d, size_t n)
{
  uint32_t req;
  uint8_t status;
  uint64_t sid;
  struct asvc *a = NULL;
  uint64_t now = uv_now(x->loop);

  if (wire_session_opened_decode(d, n, &req, &status, &sid) < 0) {
    drop(x, A_MALFORMED);
    return;
  }
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].opening && x->svcs[i].req == req)
      a = &x->svcs[i];
  if (!a) {
    /* An answer we repeated our request for, or no longer need (the
     * service rides on another connection now): a session nobody uses
     * goes back. */
    if (status == WIRE_SESSION_OK && !by_session(x, sid))
      send_closed(x, sid);
    return;
  }
  a->opening = 0;
  switch (status) {
  case WIRE_SESSION_OK:
    if (a->e == E_LEGACY) {
      a->e = E_NONE;
      log_info("%s: the connector takes relay sessions now: leaving raw IP "
               "for an end-to-end connection", svc_id(a));
    }
    a->sid = sid;
    a->sessions++;
    a->nocon_ms = 0;
    if (!a->ec) {
      share(x); /* another connection may carry it by now */
      if (a->e == E_SHARED)
        return; /* (share gave the session back) */
    }
    if (a->refused_raw)
      log_info("%s: relay sessions again: its traffic flows", svc_id(a));
    a->refused_raw = 0;
    log_debug("%s: relay session %llu", svc_id(a), (unsigned long long)sid);
    use_session(a);
    return;
  case WIRE_SESSION_UNSUPPORTED:
    go_legacy(a, "its connector is an original one (it takes no relay "
                 "sessions)");
    return;
  case WIRE_SESSION_NO_CONNECTOR:
    /* It may be registering right now (both came back after a restart of
     * the intermediate): ask again soon, less often as it stays away. */
    a->nocon_ms = a->nocon_ms ? a->nocon_ms * 2 : NOCONN_RETRY_MS;
    if (a->nocon_ms > NOCONN_RETRY_MAX_MS)
      a->nocon_ms = NOCONN_RETRY_MAX_MS;
    log_debug("%s: no connector yet; asking again in %llu ms", svc_id(a),
              (unsigned long long)a->nocon_ms);
    a->open_at_ms = now + a->nocon_ms;
    return;
  case WIRE_SESSION_LIMIT:
    log_warnx("%s: the intermediate has no room for another relay session; "
              "trying again", svc_id(a));
    a->open_at_ms = now + OPEN_RETRY_MS;
    return;
  case WIRE_SESSION_INVALID:
    /* It no longer has our registration (a policy reload dropped it):
     * register again; the answer says whether we may. */
    log_warnx("%s: the intermediate has no registration of ours for it; "
              "registering again", svc_id(a));
    uplink_register_again(x->up, a->idx);
    a->open_at_ms = now + OPEN_RETRY_MS;
    return;
  default:
    log_warnx("%s: the intermediate refused a relay session (no grant for "
              "the service); trying again in %d s", svc_id(a),
              OPEN_REFUSED_MS / 1000);
    a->open_at_ms = now + OPEN_REFUSED_MS;
  }
}

/* Access to a service a's connection carries was revoked (which one, the
 * intermediate does not say): each of them registers again, and only
 * those the intermediate still accepts connect (or ride) again. */
static void reregister_carried(struct asvc *a)
{
  struct actx *x = a->x;
  uint64_t now = uv_now(x->loop);

  log_info("%s: registering the services of its connection again",
           svc_id(a));
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (&x->svcs[i] == a ||
        (x->svcs[i].e == E_SHARED && x->svcs[i].host == a)) {
      uplink_register_again(x->up, i);
      x->svcs[i].rereg_at_ms = now + OPEN_REFUSED_MS;
    }
}

static void on_session_closed(struct actx *x, const uint8_t *d, size_t n)
{
  uint64_t sid;
  uint8_t reason;
  struct asvc *a;

  if (wire_session_closed_decode(d, n, &sid, &reason) < 0) {
    drop(x, A_MALFORMED);
    return;
  }
  a = by_session(x, sid);
  if (!a)
    return;
  a->sid = 0;
  if (reason == WIRE_SESSION_REVOKED) {
    log_warnx("%s: the intermediate revoked our access to a service on "
              "this connection", svc_id(a));
    reregister_carried(a);
    if (a->ec)
      quic_conn_close(a->ec, 2, "access revoked");
    return;
  }
  log_info("%s: relay session %llu ended (%s); opening another", svc_id(a),
           (unsigned long long)sid,
           reason == WIRE_SESSION_REPLACED ? "another connector serves"
           : reason == WIRE_SESSION_GONE   ? "the connector left"
                                           : "unknown to the intermediate");
  start_open(a);
}

/* The end-to-end connection's packets for the relay session leave on the
 * connection to the intermediate, behind the session header. */
static int vsend(struct quic_endpoint *ep, const struct sockaddr *to,
                 const uint8_t *d, size_t n, void *ud)
{
  struct actx *x = ud;
  uint64_t sid;
  (void)ep;

  if (!quic_addr_virtual(to, &sid) || !by_session(x, sid))
    return ZTNA_ERR_STATE;
  return uplink_send_session(x->up, sid, d, n);
}

/* A DATAGRAM from the intermediate: a packet of an end-to-end connection,
 * a relay session's answer or end, or raw IP of an original connector. */
static void on_datagram(struct uplink *u, const uint8_t *d, size_t n,
                        void *ud)
{
  struct actx *x = ud;
  struct sockaddr_storage from;
  const uint8_t *pkt;
  size_t len;
  uint64_t sid;
  (void)u;

  switch (wire_classify(d, n)) {
  case WIRE_KIND_SESSION_DATA:
    if (wire_session_data_decode(d, n, &sid, &pkt, &len) < 0 ||
        !by_session(x, sid)) {
      drop(x, A_MALFORMED);
      return;
    }
    quic_virtual_addr(&from, sid, QUIC_VIRTUAL_PEER_PORT);
    quic_endpoint_input(x->ep, pkt, len, (struct sockaddr *)&from);
    return;
  case WIRE_KIND_SESSION_OPENED:
    on_opened(x, d, n);
    return;
  case WIRE_KIND_SESSION_CLOSED:
    on_session_closed(x, d, n);
    return;
  case WIRE_KIND_IPV4:
  case WIRE_KIND_IPV6:
    to_tun(x, d, n, NULL);
    return;
  default:
    drop(x, A_MALFORMED);
  }
}

/* 1 when the connector's certificate lets it provide a's service
 * (connector.<service>.ztna): every connector certificate is valid for
 * ztna-connector, so the name alone proves nothing. */
static int e2e_grants(const struct asvc *a)
{
  return policy_cert_grants(&a->peer_id, POLICY_CONNECTOR,
                            (const uint8_t *)svc_id(a), strlen(svc_id(a)));
}

static void on_e2e_handshake(struct quic_conn *c, void *ud)
{
  struct asvc *a = ud;
  struct actx *x = a->x;

  if (quic_conn_peer_identity(c, &a->peer_id) < 0)
    memset(&a->peer_id, 0, sizeof(a->peer_id));
  if (!e2e_grants(a)) {
    log_warnx("%s: the connector (%s) has no certificate for this service: "
              "refused", svc_id(a),
              a->peer_id.cn[0] ? a->peer_id.cn : "no name");
    quic_conn_close(c, 2, "not a connector of this service");
    return;
  }
  a->e = E_UP;
  a->e2e_ups++;
  a->backoff_ms = 0;
  a->up_ms = uv_now(x->loop);
  a->has_serves = 0;
  memset(a->serves, 0, sizeof(a->serves));
  quic_conn_set_keepalive(c, E2E_PING_MS);
  path_connected(&a->path, uv_now(x->loop));
  log_info("%s: end-to-end connection to the connector (%s) up through the "
           "relay (session %llu)", svc_id(a), a->peer_id.cn,
           (unsigned long long)a->sid);
  set_mtu(x);
  release_held(a);
}

/* Tells the intermediate we are done with a's relay session. */
static void end_session(struct asvc *a)
{
  if (!a->sid)
    return;
  send_closed(a->x, a->sid);
  a->sid = 0;
}

/* s leaves its host's connection: it connects on its own again (or rides
 * on another one) from the next tick. */
static void detach(struct asvc *s, const char *why)
{
  log_info("%s: off %s's connection (%s)", svc_id(s), svc_id(s->host), why);
  s->e = E_NONE;
  s->host = NULL;
  s->open_at_ms = uv_now(s->x->loop);
}

static void detach_riders(struct asvc *h, const char *why)
{
  struct actx *x = h->x;

  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].e == E_SHARED && x->svcs[i].host == h)
      detach(&x->svcs[i], why);
}

/* A connection others may ride on: not one whose relay session the
 * intermediate refused (a connector of the original kind took its
 * service there), unless it runs directly. */
static int host_usable(const struct asvc *h)
{
  return !h->refused_raw || h->path.state == PATH_DIRECT;
}

/* An up connection whose connector said it serves s for us, and whose
 * certificate grants s (what the connector says proves nothing by
 * itself). */
static struct asvc *find_host(struct actx *x, const struct asvc *s)
{
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *h = &x->svcs[i];
    if (h != s && h->e == E_UP && h->has_serves && h->serves[s->idx] &&
        host_usable(h) &&
        policy_cert_grants(&h->peer_id, POLICY_CONNECTOR,
                           (const uint8_t *)svc_id(s), strlen(svc_id(s))))
      return h;
  }
  return NULL;
}

/* One connection per connector: services that another service's
 * connection can carry ride on it, and leave it when it goes or stops
 * carrying them. Only a service that has no connection up yet moves
 * (one that is up keeps its own, so no flow on it breaks). */
static void share(struct actx *x)
{
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *s = &x->svcs[i], *h;
    enum uplink_reg reg = uplink_reg_state(x->up, i);
    int ok = reg == UPLINK_REG_OK;

    if (s->e == E_SHARED) {
      /* A registration sent again after a reconnect (pending) keeps the
       * service where it is: the connection it rides moves to the new
       * relay session, and its flows with it. */
      if (s->host->e != E_UP || !s->host->serves[i])
        detach(s, "it no longer carries this service");
      else if (!host_usable(s->host))
        detach(s, "it has no relay session");
      else if (reg == UPLINK_REG_NO_ANSWER)
        detach(s, "the intermediate did not answer our registration");
      else if (!ok && reg != UPLINK_REG_PENDING)
        detach(s, "our registration for the service is not accepted");
      continue;
    }
    if ((s->e != E_NONE && s->e != E_CONNECTING) || !ok ||
        !(h = find_host(x, s)))
      continue;
    if (s->ec) {
      struct quic_conn *old = s->ec;
      s->ec = NULL;
      quic_conn_close(old, 0, "the connector is reached on another "
                              "connection");
    }
    end_session(s);
    s->opening = 0;
    s->e = E_SHARED;
    s->host = h;
    log_info("%s: on %s's end-to-end connection (the same connector, %s)",
             svc_id(s), svc_id(h), h->peer_id.cn);
    set_mtu(x);
    release_held(s);
  }
}

/* 1 while another service's connection is on its way (an OPEN out, a
 * handshake running, or up without WIRE_SERVICES yet): a service with no
 * connection waits for it, since it may be able to ride on it. */
static int others_pending(struct actx *x, const struct asvc *a, uint64_t now)
{
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    const struct asvc *t = &x->svcs[i];
    if (t == a)
      continue;
    /* (An OPEN unanswered for a second may never be: an original
     * intermediate. Nobody waits for that.) */
    if ((t->e == E_NONE && t->opening && t->open_tries < 2) ||
        t->e == E_CONNECTING ||
        (t->e == E_UP && !t->has_serves && now - t->up_ms < SERVICES_WAIT_MS))
      return 1;
  }
  return 0;
}

/* What the connector says this connection may carry (WIRE_SERVICES). */
static void on_services(struct asvc *a, const uint8_t *d, size_t n)
{
  struct actx *x = a->x;
  struct wire_id ids[CFG_MAX_SERVICES];
  int k = wire_services_decode(d, n, ids, CFG_MAX_SERVICES);

  if (k < 0) {
    drop(x, A_MALFORMED);
    return;
  }
  memset(a->serves, 0, sizeof(a->serves));
  for (int j = 0; j < k; j++)
    for (size_t i = 0; i < x->cfg.nservices; i++)
      if (strlen(x->cfg.services[i].id) == ids[j].n &&
          !strncasecmp(x->cfg.services[i].id, (const char *)ids[j].p,
                       ids[j].n))
        a->serves[i] = 1;
  a->has_serves = 1;
  share(x);
}

static void on_e2e_datagram(struct quic_conn *c, const uint8_t *d, size_t n,
                            void *ud)
{
  struct asvc *a = ud;
  enum wire_kind k = wire_classify(d, n);
  (void)c;

  if (a->e == E_UP && k == WIRE_KIND_SERVICES) {
    on_services(a, d, n);
    return;
  }
  if (a->e != E_UP || (k != WIRE_KIND_IPV4 && k != WIRE_KIND_IPV6)) {
    drop(a->x, A_MALFORMED);
    return;
  }
  to_tun(a->x, d, n, a);
}

/* The connection moved: to the direct path once ngtcp2 validated it, or
 * back to the relay session. */
static void on_e2e_path(struct quic_conn *c, const struct sockaddr *peer,
                        void *ud)
{
  struct asvc *a = ud;
  char addr[64];

  if (quic_addr_virtual(peer, NULL))
    return;
  path_validated(&a->path, uv_now(a->x->loop));
  /* No round trip here: ngtcp2 starts a new path's estimate afresh (at
   * its initial 333 ms); the metrics carry the measured one. */
  (void)c;
  log_info("%s: path: direct to %s (punch %llu ms)", svc_id(a),
           netaddr_str(peer, addr, sizeof(addr)),
           (unsigned long long)a->punch_ms);
}

static void pc_closed(uv_handle_t *h)
{
  free(h->data);
}

static void on_e2e_close(struct quic_conn *c, const struct quic_close_info *i,
                         void *ud)
{
  struct asvc *a = ud;
  struct actx *x = a->x;

  if (c != a->ec)
    return; /* one we replaced already */
  a->ec = NULL;
  if (a->e == E_LEGACY)
    return;
  log_info("%s: end-to-end connection %s: %s", svc_id(a),
           a->e == E_UP ? "closed" : "failed",
           i->reason[0] ? i->reason : ztna_strerror(i->err));
  /* The connector closes a connection whose access was revoked (code 2)
   * also when the intermediate's word reaches it first, or only it: the
   * services it carried ask the intermediate again. */
  if (!i->local && i->app && i->code == 2 && !x->stopping)
    reregister_carried(a);
  a->e = E_NONE;
  path_lost(&a->path);
  if (a->pc) {
    p2p_client_stop(a->pc, pc_closed);
    a->pc = NULL;
  }
  if (x->stopping)
    return;
  /* Again, after a pause that doubles while it keeps failing. */
  a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : 1000;
  if (a->backoff_ms > E2E_BACKOFF_MAX_MS)
    a->backoff_ms = E2E_BACKOFF_MAX_MS;
  a->open_at_ms = uv_now(x->loop) + a->backoff_ms;
  end_session(a); /* a fresh one for the next connection */
  detach_riders(a, "its connection closed");
}

static const struct quic_conn_cbs e2e_cbs = {
  .handshake_cb = on_e2e_handshake,
  .datagram_cb = on_e2e_datagram,
  .path_cb = on_e2e_path,
  .close_cb = on_e2e_close,
};

static void on_up(struct uplink *u, void *ud)
{
  (void)u;
  set_mtu(ud);
}

static void on_down(struct uplink *u, const struct quic_close_info *i,
                    void *ud)
{
  struct actx *x = ud;
  (void)u;
  (void)i;
  /* The relay sessions went with the connection; the end-to-end
   * connections wait for new ones (or go on directly). */
  for (size_t k = 0; k < x->cfg.nservices; k++) {
    x->svcs[k].sid = 0;
    x->svcs[k].opening = 0;
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
  for (size_t i = 0; changed && i < x->cfg.nservices; i++)
    path_network_changed(&x->svcs[i].path, uv_now(x->loop));
}

/* --- direct paths (protocol.md 5) ---------------------------------------- */

static void on_punch_done(struct p2p_client *pc, void *ud);

static void start_punch(struct asvc *a)
{
  struct actx *x = a->x;
  struct p2p_client *pc = calloc(1, sizeof(*pc));
  uint64_t now = uv_now(x->loop);

  if (!pc)
    return;
  path_punch_started(&a->path, now);
  if (p2p_client_start(pc, x->loop, x->ep, x->up, svc_id(a),
                       (struct sockaddr *)&x->observed, on_punch_done,
                       a) < 0) {
    free(pc);
    path_failed(&a->path, PATH_FAIL_PEER_ERROR, now);
    return;
  }
  pc->timer.data = pc;
  a->pc = pc;
  /* Checks tagged under this connection's keys: a stranger can neither
   * answer them nor make itself a candidate (protocol.md 10). */
  if (p2p_client_bind(pc, a->ec) < 0)
    log_warnx("%s: punch checks cannot be keyed from the end-to-end "
              "connection: no answer will count", svc_id(a));
  log_debug("%s: punching (%zu candidates offered)", svc_id(a), pc->nlocal);
}

static enum path_fail punch_fail_reason(const char *why)
{
  if (strstr(why, "no candidates"))
    return PATH_FAIL_NO_CANDIDATES;
  if (strstr(why, "refused") || strstr(why, "error"))
    return PATH_FAIL_PEER_ERROR;
  return PATH_FAIL_TIMEOUT;
}

/* A punch found the connector's address: the connection validates the
 * new path under its own keys (PATH_CHALLENGE) before it moves. The
 * punch's checks carry no proof; whoever answered them must now answer
 * as the connector, or the path is never used. */
static void on_punch_done(struct p2p_client *pc, void *ud)
{
  struct asvc *a = ud;
  struct actx *x = a->x;
  uint64_t now = uv_now(x->loop);
  char addr[64], why[sizeof(pc->why)];
  int rv;

  a->pc = NULL;
  a->punch_ms = pc->end_ms - pc->offer_ms;
  /* The connector's own checks may still be on their way: they are
   * answered (tagged) for a while, as the punch itself would have. */
  a->last_auth = pc->auth;
  a->last_auth_ms = now;
  snprintf(why, sizeof(why), "%s", pc->why);
  if (pc->success)
    a->peer = pc->punch.pairs[pc->punch.winner].remote;
  p2p_client_stop(pc, pc_closed); /* the timer's memory goes when closed */
  if (!a->ec || a->e != E_UP)
    return;
  if (!pc->success) {
    path_failed(&a->path, punch_fail_reason(why), now);
    log_info("%s: no direct path: %s; traffic stays on the relay "
             "(next punch in %llu s)", svc_id(a), why,
             (unsigned long long)(a->path.retry_at_ms - now) / 1000);
    return;
  }
  path_punch_found(&a->path, now);
  log_info("%s: punch succeeded in %llu ms: the connector answers at %s; "
           "validating the path", svc_id(a), (unsigned long long)a->punch_ms,
           netaddr_str((struct sockaddr *)&a->peer, addr, sizeof(addr)));
  rv = quic_conn_migrate(a->ec, (struct sockaddr *)&a->peer, 1);
  if (rv < 0) {
    path_failed(&a->path, PATH_FAIL_VALIDATION, now);
    log_info("%s: cannot move the connection yet (%s); traffic stays on "
             "the relay", svc_id(a), ztna_strerror(rv));
  }
}

static void p2p_tick(uv_timer_t *t)
{
  struct actx *x = t->data;
  uint64_t now = uv_now(x->loop);

  share(x);
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *a = &x->svcs[i];
    int can_punch;
    struct sockaddr_storage via;

    /* A refused registration is tried again now and then: the policy may
     * allow it by now. */
    if (uplink_is_up(x->up) &&
        uplink_reg_state(x->up, i) == UPLINK_REG_DENIED) {
      if (!a->rereg_at_ms)
        a->rereg_at_ms = now + REREGISTER_MS;
      else if (now >= a->rereg_at_ms) {
        a->rereg_at_ms = 0;
        uplink_register_again(x->up, i);
      }
      continue;
    }
    if (a->held && now - a->held->ms >= HOLD_MS) {
      release_held(a);
      while (a->held && now - a->held->ms >= HOLD_MS) {
        struct held *h = a->held;
        a->held = h->next;
        a->nheld--;
        a->held_bytes -= h->n;
        free(h);
        drop(x, A_NOT_CONNECTED);
      }
      if (!a->held)
        a->held_tail = &a->held;
    }
    if (a->e == E_SHARED)
      continue; /* its host's connection does the work */
    if (a->e == E_NONE && !a->opening && !a->sid && others_pending(x, a, now))
      continue; /* it may ride on the connection coming up */
    if (a->e == E_LEGACY) {
      if (a->opening && now >= a->open_at_ms && a->open_tries < OPEN_TRIES)
        send_open(a);
      else if (a->opening && now >= a->open_at_ms)
        go_legacy(a, "still no relay session");
      else if (!a->opening && now >= a->open_at_ms)
        start_open(a);
      continue;
    }
    if (a->opening && now >= a->open_at_ms) {
      if (a->open_tries >= OPEN_TRIES) {
        a->opening = 0;
        if (a->e == E_NONE && !a->sessions)
          go_legacy(a, "the intermediate does not answer relay session "
                       "requests (an original intermediate?)");
        else
          a->open_at_ms = now + OPEN_RETRY_MS;
      } else {
        send_open(a);
      }
    }
    if (!a->opening && !a->sid && a->open_at_ms && now >= a->open_at_ms)
      start_open(a);
    else if (!a->opening && !a->sid && !a->open_at_ms)
      start_open(a); /* registered, nothing asked yet */
    else if (!a->opening && a->sid && !a->ec && now >= a->open_at_ms)
      use_session(a);
    if (a->e != E_UP)
      continue;
    can_punch = !x->no_direct && x->has_observed && !a->pc && a->sid &&
                uplink_is_up(x->up) &&
                uplink_reg_state(x->up, i) == UPLINK_REG_OK;
    switch (path_tick(&a->path, now, quic_conn_path_virtual(a->ec)
                                         ? 0
                                         : quic_conn_silence_ms(a->ec),
                      can_punch)) {
    case PATH_ACT_PUNCH:
      start_punch(a);
      break;
    case PATH_ACT_FALLBACK:
      if (!a->sid) {
        log_info("%s: direct path lost and no relay session yet",
                 svc_id(a));
        start_open(a);
        break;
      }
      quic_virtual_addr(&via, a->sid, QUIC_VIRTUAL_PEER_PORT);
      if (quic_conn_path_virtual(a->ec)) {
        log_info("%s: the connector did not validate the path found; "
                 "traffic stays on the relay", svc_id(a));
        break;
      }
      quic_conn_migrate(a->ec, (struct sockaddr *)&via, 0);
      log_info("%s: path: relay (direct path silent for %d ms; next punch "
               "in %llu s)", svc_id(a), PATH_SILENCE_MS,
               (unsigned long long)(a->path.retry_at_ms - now) / 1000);
      break;
    default:
      break;
    }
  }
}

static void send_raw(const struct sockaddr *to, const uint8_t *d, size_t n,
                     void *ud)
{
  struct actx *x = ud;
  quic_endpoint_send_raw(x->ep, to, d, n);
}

/* Control packets on our socket: the connector's checks and the answers
 * to ours. */
static void on_raw_packet(struct quic_endpoint *ep, const uint8_t *d,
                          size_t n, const struct sockaddr *from, void *ud)
{
  struct actx *x = ud;
  struct wire_ctl c;
  uint64_t now = uv_now(x->loop);
  (void)ep;

  if (wire_ctl_decode(d, n, &c) < 0)
    return;
  /* The connector's checks: answer them (at most 200 a second); tagged
   * ones only the punch they are for can answer (p2p.c). */
  if (c.kind == WIRE_CTL_BIND_REQ) {
    struct punch_io io = { send_raw, x, NULL };
    if (!punch_rate_ok(&x->ctl_rate, 200, now)) {
      drop(x, A_CTL_LIMITED);
      return;
    }
    if (!c.auth)
      punch_answer(&io, &c, from, NULL);
  }
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].pc && p2p_client_packet(x->svcs[i].pc, &c, from))
      return;
  if (c.auth && c.kind == WIRE_CTL_BIND_REQ)
    for (size_t i = 0; i < x->cfg.nservices; i++) {
      struct asvc *a = &x->svcs[i];
      struct punch_io io = { send_raw, x, NULL };
      if (a->last_auth.on && a->last_auth.session == c.session &&
          now - a->last_auth_ms < P2P_SESSION_MS) {
        punch_answer(&io, &c, from, &a->last_auth);
        return;
      }
    }
}

static void on_signal(struct uplink *u, const struct wire_sig *m, void *ud)
{
  struct actx *x = ud;
  (void)u;
  for (size_t i = 0; i < x->cfg.nservices; i++)
    if (x->svcs[i].pc && p2p_client_signal(x->svcs[i].pc, m)) {
      if (m->tag == WIRE_SIG_START && x->svcs[i].ec)
        p2p_client_announce(x->svcs[i].pc, x->svcs[i].ec);
      return;
    }
}

static void on_registered(struct uplink *u, size_t svc, enum uplink_reg r,
                          void *ud)
{
  struct actx *x = ud;
  (void)u;
  /* A relay session as soon as the service is registered (also after a
   * reconnection: the connection moves to the new session). */
  struct asvc *a = &x->svcs[svc];

  if (r != UPLINK_REG_OK || a->sid || a->e == E_SHARED)
    return;
  share(x);
  if (a->e == E_NONE && others_pending(x, a, uv_now(x->loop)))
    return; /* it may ride on that connection: the tick decides */
  if (a->e != E_SHARED)
    start_open(a);
}

static const struct uplink_cbs uplink_cbs = {
  .up = on_up,
  .down = on_down,
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

  if (x->ep)
    quic_endpoint_metrics(x->ep, x->m, "ztna_agent_");
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
    /* Path and connection: of the connection that carries the service;
     * the counters: its own (a service riding on another's connection
     * punches and opens nothing itself). */
    struct asvc *own = &x->svcs[i];
    const struct asvc *a = carrier(own);
    char l[WIRE_SERVICE_ID_MAX * 2 + 64], esc[WIRE_SERVICE_ID_MAX * 2 + 8];
    const char *id = x->cfg.services[i].id;
    metrics_label_escape(esc, sizeof(esc), id, strlen(id));
    for (int k = PATH_RELAY; k < PATH_STATE_COUNT; k++) {
      snprintf(l, sizeof(l), "service=\"%s\",path=\"%s\"", esc,
               path_state_name((enum path_state)k));
      metric_set(metrics_gauge(x->m, "ztna_agent_path", l,
                               "The path a service's traffic takes "
                               "(1 for the current one)"),
                 a->e == E_LEGACY ? k == PATH_RELAY
                                  : a->path.state == (enum path_state)k);
    }
    for (int k = 0; k <= E_LEGACY; k++) {
      snprintf(l, sizeof(l), "service=\"%s\",state=\"%s\"", esc,
               estate_names[k]);
      metric_set(metrics_gauge(x->m, "ztna_agent_connection", l,
                               "The end-to-end connection to a service's "
                               "connector (legacy: raw IP through the "
                               "relay, for original peers)"),
                 a->e == (enum estate)k);
    }
    snprintf(l, sizeof(l), "service=\"%s\",result=\"success\"", esc);
    metric_set(metrics_counter(x->m, "ztna_agent_punches_total", l,
                               "Punches by result"),
               (int64_t)own->path.punches_ok);
    snprintf(l, sizeof(l), "service=\"%s\",result=\"failed\"", esc);
    metric_set(metrics_counter(x->m, "ztna_agent_punches_total", l,
                               "Punches by result"),
               (int64_t)own->path.punches_failed);
    for (int k = 0; k < PATH_FAIL_COUNT; k++) {
      snprintf(l, sizeof(l), "service=\"%s\",reason=\"%s\"", esc,
               path_fail_name((enum path_fail)k));
      metric_set(metrics_counter(x->m, "ztna_agent_direct_failures_total", l,
                                 "Attempts at a direct path that failed, "
                                 "by why"),
                 (int64_t)own->path.fails[k]);
    }
    snprintf(l, sizeof(l), "service=\"%s\"", esc);
    metric_set(metrics_gauge(x->m, "ztna_agent_punch_duration_ms", l,
                             "How long the last punch took"),
               (int64_t)own->punch_ms);
    metric_set(metrics_counter(x->m, "ztna_agent_direct_fallbacks_total", l,
                               "Direct paths lost (traffic back to the "
                               "relay)"),
               (int64_t)own->path.fallbacks);
    metric_set(metrics_counter(x->m, "ztna_agent_relay_sessions_total", l,
                               "Relay sessions opened for the service"),
               (int64_t)own->sessions);
    metric_set(metrics_gauge(x->m, "ztna_agent_connection_shared", l,
                             "1 when the service rides on the connection "
                             "of another service of the same connector"),
               own->e == E_SHARED);
    metric_set(metrics_gauge(x->m, "ztna_agent_direct_rtt_us", l,
                             "Smoothed round trip of the direct path"),
               a->path.state == PATH_DIRECT && a->ec
                   ? (int64_t)quic_conn_rtt_us(a->ec)
                   : 0);
    metric_set(metrics_gauge(x->m, "ztna_agent_rtt_us", l,
                             "Smoothed round trip of the end-to-end "
                             "connection, on the path it takes"),
               a->e == E_UP ? (int64_t)quic_conn_rtt_us(a->ec) : 0);
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

/* --- status (docs/api.md): local listener only -------------------------- */

static void api_status(void *ud, struct jw *w)
{
  struct actx *x = ud;
  struct quic_conn *uc = uplink_conn(x->up);
  char a[64];

  jw_str(w, "role", "agent");
  jw_str(w, "version", ZTNA_VERSION);
  jw_str(w, "tun", x->tun_name);
  jw_u64(w, "mtu", (uint64_t)x->mtu);
  jw_bool(w, "tun_offload", x->offload);
  jw_obj(w, "intermediate");
  jw_str(w, "address", netaddr_str(
                           (const struct sockaddr *)uplink_server(x->up), a,
                           sizeof(a)));
  jw_bool(w, "connected", uplink_is_up(x->up));
  if (uc && uplink_is_up(x->up))
    jw_fixed(w, "rtt_ms", quic_conn_rtt_us(uc), 3);
  if (x->has_observed)
    jw_str(w, "public_address", netaddr_str(
                                    (struct sockaddr *)&x->observed, a,
                                    sizeof(a)));
  jw_end(w);
  jw_bool(w, "direct_paths", !x->no_direct);
  jw_arr(w, "services");
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *own = &x->svcs[i];
    const struct asvc *c = carrier(own);
    jw_obj(w, NULL);
    jw_str(w, "id", x->cfg.services[i].id);
    jw_str(w, "virtual_ip", x->cfg.services[i].virtual_ip);
    jw_str(w, "connection", estate_names[own->e]);
    if (own->e == E_SHARED && own->host)
      jw_str(w, "carried_by", x->cfg.services[own->host->idx].id);
    jw_str(w, "path", c->e == E_LEGACY ? "relay (raw IP)"
                      : c->e == E_UP ? path_state_name(c->path.state)
                                     : "-");
    if (c->e == E_UP && c->ec) {
      struct quic_conn_info qi;
      quic_conn_get_info(c->ec, &qi);
      jw_str(w, "connector", c->peer_id.cn);
      jw_fixed(w, "rtt_ms", qi.rtt_us, 3);
      jw_u64(w, "rx_bytes", qi.rx_bytes);
      jw_u64(w, "tx_bytes", qi.tx_bytes);
      if (c->path.state == PATH_DIRECT)
        jw_str(w, "direct_address", netaddr_str(
                                        (const struct sockaddr *)&c->peer, a,
                                        sizeof(a)));
    }
    jw_u64(w, "punches_ok", own->path.punches_ok);
    jw_u64(w, "punches_failed", own->path.punches_failed);
    if (own->path.punches_failed)
      jw_str(w, "last_punch_failure", path_fail_name(own->path.last_fail));
    jw_u64(w, "fallbacks", own->path.fallbacks);
    jw_end(w);
  }
  jw_end(w);
  jw_obj(w, "traffic");
  jw_u64(w, "tx_packets", x->tx_packets);
  jw_u64(w, "rx_packets", x->rx_packets);
  jw_u64(w, "direct_tx", x->direct_tx);
  jw_u64(w, "direct_rx", x->direct_rx);
  jw_u64(w, "tso_reads", x->tso_reads);
  jw_u64(w, "gro_writes", x->gro_writes);
  jw_end(w);
}

static char *api_metrics(void *ud, size_t *len)
{
  struct actx *x = ud;
  return metrics_render(x->m, len);
}

static const struct api_ops api_ops = {
  .status = api_status,
  .metrics = api_metrics,
};

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
  flush_tun(x);
  close_handle((uv_handle_t *)&x->tun_check);
  close_handle((uv_handle_t *)&x->tun_prep);
  close_handle((uv_handle_t *)&x->p2p_tick);
  for (size_t i = 0; i < x->cfg.nservices; i++) {
    struct asvc *a = &x->svcs[i];
    if (a->pc) {
      p2p_client_stop(a->pc, pc_closed);
      a->pc = NULL;
    }
    if (a->ec)
      quic_conn_close(a->ec, 0, "agent shutting down");
    held_free(a);
  }
  uplink_del(x->up, "agent shutting down");
  x->up = NULL;
  daemon_drain_start(&x->drain, x->loop, &x->ep, 1, stop_done, x);
}

/* The client context for the intermediate (ALPN ztna-v1) or, with e2e,
 * for connectors (ztna-e2e-v1). */
static int make_tls(struct actx *x, struct tls_ctx **out, int e2e)
{
  struct tls_config tc;
  char err[512];
  int rv;

  tls_config_init(&tc);
  tc.alpn = e2e ? TLS_ALPN_E2E : NULL;
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
  struct tls_ctx *tls, *etls;

  if (x->stopping)
    return;
  if (make_tls(x, &tls, 0) < 0) {
    log_warnx("reload failed: keeping the certificates in use");
    return;
  }
  if (make_tls(x, &etls, 1) < 0) {
    tls_ctx_unref(tls);
    log_warnx("reload failed: keeping the certificates in use");
    return;
  }
  uplink_set_tls(x->up, tls);
  tls_ctx_unref(x->tls);
  x->tls = tls;
  /* Connections made from now on use them; those up keep theirs. */
  tls_ctx_unref(x->etls);
  x->etls = etls;
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
       OPT_METRICS_BIND, OPT_LOG_FORMAT, OPT_USER, OPT_SERVICE_IP,
       OPT_RAW_RELAY, OPT_NO_TUN_OFFLOAD };

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
  { "raw-relay", no_argument, NULL, OPT_RAW_RELAY },
  { "no-tun-offload", no_argument, NULL, OPT_NO_TUN_OFFLOAD },
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
#define N_ENV_OPTS 19 /* the entries above before the original's */

struct aopts {
  const char *config, *server, *cert, *key, *ca, *tun, *taddr, *taddr6,
      *mport, *mbind, *logfmt, *user;
  const char *svc[CFG_MAX_SERVICES];
  const char *svcip[CFG_MAX_SERVICES]; /* --service-ip of svc[i] or NULL */
  size_t nsvc;
  int check, verbose, help, no_direct, raw_relay, no_offload;
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
    case OPT_RAW_RELAY: o->raw_relay = 1; break;
    case OPT_NO_TUN_OFFLOAD: o->no_offload = 1; break;
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
  if (o->raw_relay)
    x->cfg.raw_relay = 1;
  if (o->no_offload)
    x->cfg.tun_offload = 0;
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
  if (make_tls(&x, &x.tls, 0) < 0 || make_tls(&x, &x.etls, 1) < 0)
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

  x.offload = x.cfg.tun_offload;
  x.tun_fd = tun_open(x.cfg.tun_name, x.tun_name, sizeof(x.tun_name),
                      &x.offload);
  if (x.tun_fd < 0) {
    fprintf(stderr, "ztna agent: cannot create TUN device '%s': %s%s\n",
            x.cfg.tun_name, strerror(-x.tun_fd),
            x.tun_fd == -EPERM ? " (run as root or with CAP_NET_ADMIN)" : "");
    return 1;
  }
  log_info("%s: %s", x.tun_name,
           x.offload ? "TCP segmentation offload: reads of up to 64 KB, "
                       "cut into packets here; writes joined"
           : x.cfg.tun_offload ? "no offload (the kernel refused it): a "
                                 "packet per read and write"
                               : "no offload (tun_offload off): a packet "
                                 "per read and write");
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
  qc.vsend_cb = vsend;
  rv = quic_endpoint_new(&x.ep, x.loop, (struct sockaddr *)&bind_addr, &qc);
  if (rv < 0)
    fatalx("cannot open a UDP socket: %s", ztna_strerror(rv));
  uc.ep = x.ep;
  uc.tls = x.tls;
  uc.server = server_addr;
  uc.host = x.cfg.server_host; /* looked up again on every reconnect */
  uc.port = x.cfg.server_port;
  uc.sni = ID_SERVER_NAME;
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
    path_init(&x.svcs[i].path, x.no_direct);
    for (size_t k = 0; k < x.nvips; k++)
      if (x.vips[k].svc == i)
        x.svcs[i].vip = (int)k;
  }
  uv_timer_init(x.loop, &x.p2p_tick);
  x.p2p_tick.data = &x;
  uv_timer_start(&x.p2p_tick, p2p_tick, P2P_TICK_MS, P2P_TICK_MS);
  routes(&x, 1);
  log_info("%s up (%s%s%s, MTU %d), %zu services routed", x.tun_name,
           x.cfg.tunnel_addr, x.cfg.tunnel_addr6[0] ? ", " : "",
           x.cfg.tunnel_addr6, x.mtu, x.nvips);
  uv_poll_init(x.loop, &x.poll, x.tun_fd);
  x.poll.data = &x;
  uv_poll_start(&x.poll, UV_READABLE, tun_readable);
  uv_check_init(x.loop, &x.tun_check);
  x.tun_check.data = &x;
  uv_check_start(&x.tun_check, flush_tun_check_cb);
  uv_unref((uv_handle_t *)&x.tun_check);
  uv_prepare_init(x.loop, &x.tun_prep);
  x.tun_prep.data = &x;
  uv_prepare_start(&x.tun_prep, flush_tun_prepare_cb);
  uv_unref((uv_handle_t *)&x.tun_prep);
  x.m = metrics_new();
  if (!x.m)
    fatalx("out of memory");
  metrics_init(&x);
  metrics_set_api(x.m, &api_ops, &x);
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
  tls_ctx_unref(x.etls);
  if (daemon_loop_close(x.loop) < 0)
    return 1;
  log_info("stopped");
  return 0;
}
