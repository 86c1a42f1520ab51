/* diag.c - NAT troubleshooting: `ztna diag punch`.
 *
 * From one UDP socket, as an agent's relay socket would be, it connects to
 * the intermediate's main port and to its diag port (RFC 5780's alternate
 * port) and compares the addresses both report (QAD). The same public
 * address and port for both destinations is an endpoint-independent
 * mapping: hole punching works from behind it. Different ones mean the NAT
 * maps per destination ("symmetric"): a peer cannot predict the mapping
 * and a direct path needs the other side to be reachable. It then sends a
 * packet to its own public address to see whether the NAT hairpins
 * (needed when both ends sit behind the same NAT and only know each
 * other's public addresses).
 *
 * With --service it then connects as an agent of that service, as the
 * agent would, and runs a real punch to the service's connector through
 * the intermediate (p2p.c): which candidates each side offered, which
 * pairs were checked, which one won and its round trip, or why none did
 * and what that means.
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <ifaddrs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "../applets.h"
#include "config.h"
#include "err.h"
#include "identity.h"
#include "log.h"
#include "netaddr.h"
#include "p2p.h"
#include "quic.h"
#include "tls.h"
#include "uplink.h"
#include "wire.h"

#define STEP_TIMEOUT_MS 5000
#define HAIRPIN_WAIT_MS 1000
#define HAIRPIN_TRIES 3
#define SERVICE_TIMEOUT_MS 30000
#define LINGER_MS 1000

static const char usage_text[] =
    "Usage: ztna diag status [OPTIONS]   a daemon's peers, services, paths\n"
    "       ztna diag api [OPTIONS] METHOD PATH   one API request\n"
    "       (ztna diag status --help for both)\n"
    "       ztna diag punch [--server HOST:PORT] [--diag-port N]\n"
    "                       [--cert FILE --key FILE --ca FILE] [-c FILE]\n"
    "                       [--service ID] [--json] [-v]...\n"
    "\n"
    "What kind of NAT is this machine behind, and can a direct path work?\n"
    "Asks the intermediate for this socket's public address on its main\n"
    "port and on its diag port (the intermediate's --diag-port), then\n"
    "reports the NAT's mapping behaviour (endpoint-independent or\n"
    "dependent), whether it keeps the local port, whether it hairpins, and\n"
    "what that means for direct paths.\n"
    "\n"
    "  -c, --config FILE    take the server and certificates from an agent\n"
    "                       configuration (default: the agent's, if any)\n"
    "      --server H:P     the intermediate\n"
    "      --diag-port N    its diag port (default: the server's port + 2,\n"
    "                       4435 beside 4433; + 1 is the connector's 4434)\n"
    "      --cert FILE      an agent certificate (the intermediate requires\n"
    "      --key FILE       client certificates)\n"
    "      --ca FILE        CA the intermediate's certificate chains to\n"
    "      --service ID     then punch to the service's connector, as an\n"
    "                       agent of it (the certificate must grant it)\n"
    "      --json           one JSON object for scripts\n"
    "  -v, --verbose        more logging\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 report made (with --service: a direct path found),\n"
    "1 usage error or the intermediate not reached, 3 --service found no\n"
    "direct path (the report says why).\n";

enum step { S_MAIN, S_ALT, S_HAIRPIN, S_SERVICE, S_CLOSING, S_DONE };

struct dctx;

struct probe {
  struct dctx *x;
  struct sockaddr_storage server;
  struct quic_conn *c;
  int up, got, failed;
  struct sockaddr_storage seen;   /* the QAD answer */
  char error[200];
};

struct dctx {
  uv_loop_t *loop;
  struct quic_endpoint *ep;
  struct tls_ctx *tls;
  uv_timer_t timer;
  enum step step;
  struct probe main, alt;
  struct sockaddr_storage local;
  uint32_t hairpin_seq;
  int hairpin_tries, hairpin_ok;
  /* --service: a real punch over a relay connection as an agent */
  const char *service;
  struct uplink *up;
  struct sockaddr_storage up_seen;
  int up_has_seen, up_registered, pc_started, pc_done;
  struct p2p_client pc;
  char svc_error[256];
};

static void next_step(struct dctx *x);
static void finish(struct dctx *x);
static void timer_cb(uv_timer_t *t);
static int same_addr(const struct sockaddr_storage *a,
                     const struct sockaddr_storage *b);

static void send_raw(const struct sockaddr *to, const uint8_t *d, size_t n,
                     void *ud)
{
  struct dctx *x = ud;
  quic_endpoint_send_raw(x->ep, to, d, n);
}

/* --- probes --------------------------------------------------------------- */

static void probe_handshake(struct quic_conn *c, void *ud)
{
  struct probe *p = ud;
  (void)c;
  p->up = 1;
}

static void probe_datagram(struct quic_conn *c, const uint8_t *d, size_t n,
                           void *ud)
{
  struct probe *p = ud;
  (void)c;

  if (p->got || wire_qad_decode(d, n, &p->seen) < 0)
    return;
  p->got = 1;
  next_step(p->x);
}

static void probe_close(struct quic_conn *c, const struct quic_close_info *i,
                        void *ud)
{
  struct probe *p = ud;
  (void)c;

  p->c = NULL;
  if (p->got || p->failed)
    return;
  p->failed = 1;
  if (i->tls_alert)
    snprintf(p->error, sizeof(p->error), "handshake failed: %s (TLS alert "
             "%u)", i->reason, i->tls_alert);
  else
    snprintf(p->error, sizeof(p->error), "%s", i->reason[0] ? i->reason :
             "connection closed");
  next_step(p->x);
}

static const struct quic_conn_cbs probe_cbs = {
  .handshake_cb = probe_handshake,
  .datagram_cb = probe_datagram,
  .close_cb = probe_close,
};

static void start_probe(struct dctx *x, struct probe *p)
{
  int rv = quic_connect(&p->c, x->ep, x->tls, (struct sockaddr *)&p->server,
                        ID_SERVER_NAME, &probe_cbs, p);
  if (rv < 0) {
    p->failed = 1;
    snprintf(p->error, sizeof(p->error), "%s", ztna_strerror(rv));
  }
}

/* --- hairpinning ------------------------------------------------------------ */

static void packet_cb(struct quic_endpoint *ep, const uint8_t *d, size_t n,
                      const struct sockaddr *from, void *ud)
{
  struct dctx *x = ud;
  struct wire_ctl ctl;
  (void)ep;

  if (wire_ctl_decode(d, n, &ctl) < 0)
    return;
  if (x->step == S_SERVICE && x->pc_started) {
    /* Answer the connector's checks, as an agent does, and feed ours. */
    if (ctl.kind == WIRE_CTL_BIND_REQ) {
      struct punch_io io = { send_raw, x, NULL };
      if (!ctl.auth)
        punch_answer(&io, &ctl, from, NULL);
      if (x->pc_done && x->pc.success &&
          same_addr((const struct sockaddr_storage *)&x->pc.punch
                        .pairs[x->pc.punch.winner].remote,
                    (const struct sockaddr_storage *)from))
        finish(x); /* the connector's check got through as well */
    }
    if (!x->pc_done)
      p2p_client_packet(&x->pc, &ctl, from);
    return;
  }
  if (x->step != S_HAIRPIN || ctl.kind != WIRE_CTL_KA_REQ ||
      ctl.seq != x->hairpin_seq)
    return;
  x->hairpin_ok = 1;
  next_step(x);
}

/* --- the punch to a service (--service) ----------------------------------------- */

static void pc_done(struct p2p_client *pc, void *ud)
{
  struct dctx *x = ud;
  x->pc_done = 1;
  if (!pc->success) {
    finish(x);
    return;
  }
  /* Linger a moment to answer the connector's own checks, as a running
   * agent would: its side of the punch needs them. */
  uv_timer_start(&x->timer, timer_cb, LINGER_MS, 0);
}

static void maybe_punch(struct dctx *x)
{
  int rv;

  if (x->pc_started || !x->up_has_seen || !x->up_registered)
    return;
  rv = p2p_client_start(&x->pc, x->loop, x->ep, x->up, x->service,
                        (struct sockaddr *)&x->up_seen, pc_done, x);
  if (rv < 0) {
    snprintf(x->svc_error, sizeof(x->svc_error), "cannot send the offer: %s",
             ztna_strerror(rv));
    finish(x);
    return;
  }
  x->pc_started = 1;
}

static void up_qad(struct uplink *u, const struct sockaddr *sa, void *ud)
{
  struct dctx *x = ud;
  (void)u;
  memset(&x->up_seen, 0, sizeof(x->up_seen));
  memcpy(&x->up_seen, sa, sa->sa_family == AF_INET6
                              ? sizeof(struct sockaddr_in6)
                              : sizeof(struct sockaddr_in));
  x->up_has_seen = 1;
  maybe_punch(x);
}

static void up_registered(struct uplink *u, size_t svc, enum uplink_reg r,
                          void *ud)
{
  struct dctx *x = ud;
  (void)u;
  (void)svc;

  if (r == UPLINK_REG_OK) {
    x->up_registered = 1;
    maybe_punch(x);
    return;
  }
  snprintf(x->svc_error, sizeof(x->svc_error),
           r == UPLINK_REG_DENIED
               ? "the intermediate does not let this certificate reach "
                 "service '%s' (its SANs or the policy)"
               : "the intermediate did not register service '%s'",
           x->service);
  finish(x);
}

static void up_signal(struct uplink *u, const struct wire_sig *m, void *ud)
{
  struct dctx *x = ud;
  (void)u;
  if (x->pc_started)
    p2p_client_signal(&x->pc, m);
}

static void up_down(struct uplink *u, const struct quic_close_info *i,
                    void *ud)
{
  struct dctx *x = ud;
  (void)u;
  if (x->step != S_SERVICE || x->pc_done)
    return;
  snprintf(x->svc_error, sizeof(x->svc_error), "the relay connection "
           "closed: %s", i->reason[0] ? i->reason : "no reason");
  finish(x);
}

static const struct uplink_cbs up_cbs = {
  .down = up_down,
  .registered = up_registered,
  .qad = up_qad,
  .signal = up_signal,
};

static void start_service(struct dctx *x)
{
  struct uplink_config uc;

  memset(&uc, 0, sizeof(uc));
  uc.ep = x->ep;
  uc.tls = x->tls;
  uc.server = x->main.server;
  uc.sni = ID_SERVER_NAME;
  uc.role = WIRE_REG_AGENT;
  uc.services[0] = x->service;
  uc.nservices = 1;
  uc.name = "intermediate";
  x->step = S_SERVICE;
  if (uplink_new(&x->up, x->loop, &uc, &up_cbs, x) < 0) {
    snprintf(x->svc_error, sizeof(x->svc_error), "out of memory");
    finish(x);
    return;
  }
  uv_timer_start(&x->timer, timer_cb, SERVICE_TIMEOUT_MS, 0);
}

static void send_hairpin(struct dctx *x)
{
  struct wire_ctl ctl = { .kind = WIRE_CTL_KA_REQ, .seq = x->hairpin_seq };
  uint8_t buf[WIRE_KEEPALIVE_LEN];
  int n = wire_ctl_encode(buf, sizeof(buf), &ctl);

  if (n > 0)
    quic_endpoint_send_raw(x->ep, (struct sockaddr *)&x->main.seen, buf,
                           (size_t)n);
  x->hairpin_tries++;
}

/* --- the steps ----------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t)
{
  struct dctx *x = t->data;

  switch (x->step) {
  case S_MAIN:
  case S_ALT: {
    struct probe *p = x->step == S_MAIN ? &x->main : &x->alt;
    p->failed = 1;
    snprintf(p->error, sizeof(p->error), p->up
             ? "connected, but no observed address came within %d s"
             : "no answer within %d s", STEP_TIMEOUT_MS / 1000);
    next_step(x);
    break;
  }
  case S_HAIRPIN:
    if (x->hairpin_tries < HAIRPIN_TRIES) {
      send_hairpin(x);
      uv_timer_start(&x->timer, timer_cb, HAIRPIN_WAIT_MS / HAIRPIN_TRIES, 0);
    } else {
      next_step(x);
    }
    break;
  case S_SERVICE:
    if (x->pc_done)
      ; /* the linger after a success is over */
    else if (!x->pc_started)
      snprintf(x->svc_error, sizeof(x->svc_error), "%s",
               !x->up_has_seen ? "no relay connection as an agent within "
                                 "30 s"
                               : "no registration answer within 30 s");
    else if (!x->pc_done)
      snprintf(x->svc_error, sizeof(x->svc_error), "the punch did not end "
               "within 30 s");
    finish(x);
    break;
  case S_CLOSING:
    x->step = S_DONE;
    break;
  case S_DONE:
    break;
  }
}

static void close_probes(struct dctx *x)
{
  if (x->main.c)
    quic_conn_close(x->main.c, 0, "diag done");
  if (x->alt.c)
    quic_conn_close(x->alt.c, 0, "diag done");
}

static void finish(struct dctx *x)
{
  if (x->step == S_CLOSING || x->step == S_DONE)
    return;
  x->step = S_CLOSING;
  close_probes(x);
  if (x->up)
    uplink_del(x->up, "diag done");
  x->up = NULL;
  /* Let the close packets leave, then stop. */
  uv_timer_start(&x->timer, timer_cb, 100, 0);
}

/* Moves on when the current step has its answer or has failed. */
static void next_step(struct dctx *x)
{
  switch (x->step) {
  case S_MAIN:
    if (!x->main.got && !x->main.failed)
      return;
    if (x->main.failed) {
      finish(x);
      return;
    }
    x->step = S_ALT;
    start_probe(x, &x->alt);
    uv_timer_start(&x->timer, timer_cb, STEP_TIMEOUT_MS, 0);
    if (x->alt.failed)
      next_step(x);
    return;
  case S_ALT:
    if (!x->alt.got && !x->alt.failed)
      return;
    x->step = S_HAIRPIN;
    /* Only tells our own echo apart from others: no secret. */
    if (uv_random(NULL, NULL, &x->hairpin_seq, sizeof(x->hairpin_seq), 0,
                  NULL) < 0)
      x->hairpin_seq = (uint32_t)uv_hrtime();
    send_hairpin(x);
    uv_timer_start(&x->timer, timer_cb, HAIRPIN_WAIT_MS / HAIRPIN_TRIES, 0);
    return;
  case S_HAIRPIN:
    if (x->service) {
      close_probes(x);
      start_service(x);
    } else {
      finish(x);
    }
    return;
  case S_SERVICE:
  case S_CLOSING:
  case S_DONE:
    return;
  }
}

/* --- the report ------------------------------------------------------------------ */

static uint16_t sa_port(const struct sockaddr_storage *ss)
{
  if (ss->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static int same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
  if (a->sa_family != b->sa_family)
    return 0;
  if (a->sa_family == AF_INET)
    return !memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                   &((const struct sockaddr_in *)b)->sin_addr, 4);
  if (a->sa_family == AF_INET6)
    return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                   &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
  return 0;
}

/* Is sa one of this machine's own addresses? */
static int is_local_ip(const struct sockaddr *sa)
{
  struct ifaddrs *ifa, *i;
  int found = 0;

  if (getifaddrs(&ifa) < 0)
    return 0;
  for (i = ifa; i && !found; i = i->ifa_next)
    if (i->ifa_addr && same_ip(i->ifa_addr, sa))
      found = 1;
  freeifaddrs(ifa);
  return found;
}

static int same_addr(const struct sockaddr_storage *a,
                     const struct sockaddr_storage *b)
{
  return same_ip((const struct sockaddr *)a, (const struct sockaddr *)b) &&
         sa_port(a) == sa_port(b);
}

struct verdict {
  int nat;             /* 1 NAT, 0 none */
  const char *mapping; /* none, endpoint-independent, endpoint-dependent,
                          unknown */
  int port_preserved;
  int hairpin;         /* 1, 0, -1 not needed (no NAT) */
  const char *direct;  /* likely, needs-peer, unknown */
  const char *text;
};

static void judge(const struct dctx *x, struct verdict *v)
{
  memset(v, 0, sizeof(*v));
  v->nat = !(is_local_ip((const struct sockaddr *)&x->main.seen) &&
             sa_port(&x->main.seen) == sa_port(&x->local));
  v->port_preserved = sa_port(&x->main.seen) == sa_port(&x->local);
  v->hairpin = v->nat ? x->hairpin_ok : -1;
  if (!v->nat) {
    v->mapping = "none";
    v->direct = "likely";
    v->text = "no NAT between this machine and the intermediate: peers can "
              "reach this socket directly unless a firewall filters it";
  } else if (!x->alt.got) {
    v->mapping = "unknown";
    v->direct = "unknown";
    v->text = "behind a NAT, but the intermediate's diag port did not "
              "answer, so its mapping behaviour is unknown; ask the "
              "operator to set diag_port (--diag-port) on the intermediate";
  } else if (same_addr(&x->main.seen, &x->alt.seen)) {
    v->mapping = "endpoint-independent";
    v->direct = "likely";
    v->text = "your NAT keeps one public address and port for every "
              "destination (endpoint-independent mapping): hole punching "
              "works from here; a direct path is likely unless the other "
              "side's NAT maps per destination";
  } else {
    v->mapping = "endpoint-dependent";
    v->direct = "needs-peer";
    v->text = "your NAT maps per destination (symmetric): a peer cannot "
              "predict the address to punch to, so a direct path needs the "
              "other side to be reachable (no NAT, or a port forward); "
              "otherwise traffic will use the relay";
  }
}

static void json_str(const char *k, const char *v, int comma)
{
  printf("\"%s\": \"", k);
  for (const char *p = v; *p; p++) {
    if (*p == '"' || *p == '\\')
      printf("\\%c", *p);
    else if ((unsigned char)*p < 0x20)
      printf("\\u%04x", *p);
    else
      putchar(*p);
  }
  printf("\"%s", comma ? ", " : "");
}

static const char *const cand_type[] = { "host", "srflx", "prflx", "relay" };
static const char *const pair_state_name[] = { "waiting", "in progress",
                                               "succeeded", "failed" };

static const char *ctype(uint32_t t)
{
  return t <= WIRE_CAND_RELAY ? cand_type[t] : "?";
}

/* Why a punch failed, and what it means. */
static const char *advice(const struct dctx *x, const struct verdict *v)
{
  if (x->svc_error[0] || !x->pc_done)
    return "traffic to the service uses the relay";
  if (strstr(x->pc.why, "the intermediate refused"))
    return "there was nothing to punch to: check that the service's "
           "connector runs and is registered";
  if (!strcmp(v->mapping, "endpoint-dependent"))
    return "your NAT maps per destination (symmetric); a direct path needs "
           "the other side to be reachable; traffic will use the relay";
  return "the connector did not answer from any of its addresses: its NAT "
         "may map per destination, or a firewall drops UDP between you; "
         "traffic will use the relay";
}

static int service_ok(const struct dctx *x)
{
  return x->pc_done && x->pc.success && !x->svc_error[0];
}

static void service_text(const struct dctx *x, const struct verdict *v)
{
  const struct p2p_client *pc = &x->pc;
  char a[64];

  printf("\nservice %s: ", x->service);
  if (service_ok(x)) {
    const struct punch_pair *w = &pc->punch.pairs[pc->punch.winner];
    printf("direct path found in %llu ms: %s (%s), round trip %u ms\n",
           (unsigned long long)(pc->end_ms - pc->offer_ms),
           netaddr_str((const struct sockaddr *)&w->remote, a, sizeof(a)),
           ctype(w->remote_type), w->rtt_ms);
  } else {
    printf("no direct path: %s; %s.\n",
           x->svc_error[0] ? x->svc_error
           : pc->why[0]    ? pc->why
                           : "the punch did not end",
           advice(x, v));
  }
  if (!x->pc_started)
    return;
  printf("  our candidates:");
  for (size_t i = 0; i < pc->nlocal; i++)
    printf(" %s %s", ctype(pc->local[i].type),
           netaddr_str((const struct sockaddr *)&pc->local[i].addr, a,
                       sizeof(a)));
  printf("\n  the connector's:");
  for (size_t i = 0; i < pc->npeer; i++)
    printf(" %s %s", ctype(pc->peer[i].type),
           netaddr_str((const struct sockaddr *)&pc->peer[i].addr, a,
                       sizeof(a)));
  printf("%s\n", pc->npeer ? "" : " (none came)");
  for (size_t i = 0; i < pc->punch.npairs; i++) {
    const struct punch_pair *pp = &pc->punch.pairs[i];
    printf("  pair %-24s %-6s %-11s %d check%s",
           netaddr_str((const struct sockaddr *)&pp->remote, a, sizeof(a)),
           ctype(pp->remote_type), pair_state_name[pp->state], pp->tx,
           pp->tx == 1 ? "" : "s");
    if (pp->state == PAIR_SUCCEEDED)
      printf(", %u ms", pp->rtt_ms);
    printf("\n");
  }
}

static void service_json(const struct dctx *x, const struct verdict *v)
{
  const struct p2p_client *pc = &x->pc;
  char a[64];

  printf("\"service\": {");
  json_str("id", x->service, 1);
  printf("\"direct\": %s, ", service_ok(x) ? "true" : "false");
  if (service_ok(x)) {
    const struct punch_pair *w = &pc->punch.pairs[pc->punch.winner];
    json_str("working", netaddr_str((const struct sockaddr *)&w->remote, a,
                                    sizeof(a)), 1);
    json_str("working_type", ctype(w->remote_type), 1);
    printf("\"rtt_ms\": %u, \"punch_ms\": %llu, ", w->rtt_ms,
           (unsigned long long)(pc->end_ms - pc->offer_ms));
  } else {
    json_str("why", x->svc_error[0] ? x->svc_error
                    : pc->why[0]    ? pc->why
                                    : "the punch did not end", 1);
    json_str("advice", advice(x, v), 1);
  }
  printf("\"local_candidates\": [");
  for (size_t i = 0; x->pc_started && i < pc->nlocal; i++) {
    printf("%s{", i ? ", " : "");
    json_str("type", ctype(pc->local[i].type), 1);
    json_str("address", netaddr_str((const struct sockaddr *)&pc->local[i]
                                        .addr, a, sizeof(a)), 0);
    printf("}");
  }
  printf("], \"peer_candidates\": [");
  for (size_t i = 0; x->pc_started && i < pc->npeer; i++) {
    printf("%s{", i ? ", " : "");
    json_str("type", ctype(pc->peer[i].type), 1);
    json_str("address", netaddr_str((const struct sockaddr *)&pc->peer[i]
                                        .addr, a, sizeof(a)), 0);
    printf("}");
  }
  printf("], \"pairs\": [");
  for (size_t i = 0; x->pc_started && i < pc->punch.npairs; i++) {
    const struct punch_pair *pp = &pc->punch.pairs[i];
    printf("%s{", i ? ", " : "");
    json_str("remote", netaddr_str((const struct sockaddr *)&pp->remote, a,
                                   sizeof(a)), 1);
    json_str("type", ctype(pp->remote_type), 1);
    json_str("state", pair_state_name[pp->state], 1);
    printf("\"checks\": %d, \"rtt_ms\": %u}", pp->tx,
           pp->state == PAIR_SUCCEEDED ? pp->rtt_ms : 0);
  }
  printf("]}, ");
}

static void report(const struct dctx *x, const char *service, int json)
{
  struct verdict v;
  char a[64], b[64], c[64], d[64], e[200];
  static const char *const tri[] = { "no", "yes", "not needed (no NAT)" };

  judge(x, &v);
  netaddr_str((const struct sockaddr *)&x->local, a, sizeof(a));
  netaddr_str((const struct sockaddr *)&x->main.server, b, sizeof(b));
  netaddr_str((const struct sockaddr *)&x->main.seen, c, sizeof(c));
  netaddr_str((const struct sockaddr *)&x->alt.server, d, sizeof(d));
  if (x->alt.got)
    netaddr_str((const struct sockaddr *)&x->alt.seen, e, sizeof(e));
  else
    snprintf(e, sizeof(e), "%s", x->alt.error);
  if (json) {
    printf("{");
    json_str("local", a, 1);
    json_str("server", b, 1);
    json_str("observed", c, 1);
    json_str("diag_server", d, 1);
    if (x->alt.got)
      json_str("observed_diag", e, 1);
    else
      printf("\"observed_diag\": null, ");
    printf("\"nat\": %s, ", v.nat ? "true" : "false");
    json_str("mapping", v.mapping, 1);
    printf("\"port_preserved\": %s, ", v.port_preserved ? "true" : "false");
    printf("\"hairpin\": %s, ", v.hairpin < 0 ? "null"
                                : v.hairpin ? "true" : "false");
    json_str("direct", v.direct, 1);
    if (service)
      service_json(x, &v);
    json_str("verdict", v.text, 0);
    printf("}\n");
    return;
  }
  {
    char l1[96], l2[96];
    snprintf(l1, sizeof(l1), "seen by %s", b);
    snprintf(l2, sizeof(l2), "seen by %s", d);
    printf("%-30s %s\n", "local socket", a);
    printf("%-30s %s\n", l1, c);
    if (x->alt.got)
      printf("%-30s %s\n", l2, e);
    else
      printf("%-30s (no answer: %s)\n", l2, e);
    printf("%-30s %s\n", "NAT", v.nat ? "yes" : "no");
    printf("%-30s %s\n", "mapping", v.mapping);
    printf("%-30s %s\n", "port preserved", v.port_preserved ? "yes" : "no");
    printf("%-30s %s\n", "hairpinning", tri[v.hairpin < 0 ? 2 : v.hairpin]);
    printf("%-30s %s\n", "direct path", v.direct);
  }
  printf("\n%s.\n", v.text);
  if (service)
    service_text(x, &v);
}

/* --- main --------------------------------------------------------------------------- */

enum { OPT_SERVER = 256, OPT_DIAG_PORT, OPT_CERT, OPT_KEY, OPT_CA,
       OPT_SERVICE, OPT_JSON };

static int usage_error(const char *fmt, const char *arg)
{
  return applet_usage_error("diag", fmt, arg);
}

static void warn_cb(const char *msg)
{
  log_warnx("%s", msg);
}

static int punch_main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "config", required_argument, NULL, 'c' },
    { "verbose", no_argument, NULL, 'v' },
    { "server", required_argument, NULL, OPT_SERVER },
    { "diag-port", required_argument, NULL, OPT_DIAG_PORT },
    { "cert", required_argument, NULL, OPT_CERT },
    { "key", required_argument, NULL, OPT_KEY },
    { "ca", required_argument, NULL, OPT_CA },
    { "service", required_argument, NULL, OPT_SERVICE },
    { "json", no_argument, NULL, OPT_JSON },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  static struct dctx x;
  static const struct quic_endpoint_cbs ep_cbs = { .packet_cb = packet_cb };
  struct cfg_agent *cfg;
  const char *config = NULL, *server = NULL, *dport = NULL, *cert = NULL,
             *key = NULL, *ca = NULL, *service = NULL;
  char path[CFG_PATH_MAX], err[512];
  int ch, json = 0, verbose = LOG_LVL_WARN, rv, literal;
  uint16_t alt_port = 0;
  struct tls_config tc;
  struct quic_endpoint_config qc = { 0 };
  struct sockaddr_storage bind;

  optind = 1;
  while ((ch = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
    switch (ch) {
    case 'c': config = optarg; break;
    case 'v': verbose++; break;
    case OPT_SERVER: server = optarg; break;
    case OPT_DIAG_PORT: dport = optarg; break;
    case OPT_CERT: cert = optarg; break;
    case OPT_KEY: key = optarg; break;
    case OPT_CA: ca = optarg; break;
    case OPT_SERVICE: service = optarg; break;
    case OPT_JSON: json = 1; break;
    case 'h':
      fputs(usage_text, stdout);
      return 0;
    default:
      fputs(usage_text, stderr);
      return 1;
    }
  }
  if (optind < argc)
    return usage_error("unexpected argument '%s'", argv[optind]);
  log_init("diag", verbose);
  cfg = calloc(1, sizeof(*cfg));
  if (!cfg)
    return usage_error("%s", "out of memory");
  cfg_agent_defaults(cfg);
  if ((config || !server) &&
      cfg_agent_load(cfg, config, path, sizeof(path), err, sizeof(err),
                     warn_cb) < 0) {
    fprintf(stderr, "ztna diag: %s\n", err);
    return 1;
  }
  if (server && cfg_split_hostport(server, cfg->server_host,
                                   sizeof(cfg->server_host),
                                   &cfg->server_port) < 0)
    return usage_error("--server '%s' is not HOST:PORT", server);
  if (!cfg->server_host[0])
    return usage_error("%s", "no intermediate: give --server HOST:PORT (or "
                       "-c with an agent configuration)");
  if (dport) {
    if (cfg_parse_port(dport, &alt_port, 0) < 0)
      return usage_error("--diag-port '%s' is not a port (1-65535)", dport);
  } else {
    alt_port = cfg->server_port >= 65534 ? cfg->server_port - 2
                                         : cfg->server_port + 2;
  }
  if (cert)
    snprintf(cfg->cert, sizeof(cfg->cert), "%s", cert);
  if (key)
    snprintf(cfg->key, sizeof(cfg->key), "%s", key);
  if (ca)
    snprintf(cfg->ca_cert, sizeof(cfg->ca_cert), "%s", ca);
  if (netaddr_resolve(cfg->server_host, cfg->server_port, &x.main.server,
                      &literal, err, sizeof(err)) < 0) {
    fprintf(stderr, "ztna diag: the intermediate: %s\n", err);
    return 1;
  }
  x.alt.server = x.main.server;
  if (x.alt.server.ss_family == AF_INET6)
    ((struct sockaddr_in6 *)&x.alt.server)->sin6_port = htons(alt_port);
  else
    ((struct sockaddr_in *)&x.alt.server)->sin_port = htons(alt_port);
  x.main.x = x.alt.x = &x;
  x.service = service;

  tls_config_init(&tc);
  tc.cert_file = cfg->cert[0] ? cfg->cert : NULL;
  tc.key_file = cfg->key[0] ? cfg->key : NULL;
  tc.ca_file = cfg->ca_cert[0] ? cfg->ca_cert : NULL;
  tc.verify_peer = cfg->verify_peer;
  if (tls_ctx_new(&x.tls, 0, &tc, err, sizeof(err)) < 0) {
    fprintf(stderr, "ztna diag: %s\n", err);
    return 1;
  }

  x.loop = uv_default_loop();
  memset(&bind, 0, sizeof(bind));
  if (x.main.server.ss_family == AF_INET6)
    uv_ip6_addr("::", 0, (struct sockaddr_in6 *)&bind);
  else
    uv_ip4_addr("0.0.0.0", 0, (struct sockaddr_in *)&bind);
  qc.cbs = &ep_cbs;
  qc.ud = &x;
  rv = quic_endpoint_new(&x.ep, x.loop, (struct sockaddr *)&bind, &qc);
  if (rv < 0) {
    fprintf(stderr, "ztna diag: cannot open a UDP socket: %s\n",
            ztna_strerror(rv));
    return 1;
  }
  quic_endpoint_local_addr(x.ep, &x.local);
  uv_timer_init(x.loop, &x.timer);
  x.timer.data = &x;
  x.step = S_MAIN;
  start_probe(&x, &x.main);
  uv_timer_start(&x.timer, timer_cb, STEP_TIMEOUT_MS, 0);
  if (x.main.failed)
    next_step(&x);
  while (x.step != S_DONE)
    uv_run(x.loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&x.timer, NULL);
  if (x.pc_started)
    p2p_client_stop(&x.pc, NULL); /* the report reads it; memory is ours */
  quic_endpoint_del(x.ep);
  uv_run(x.loop, UV_RUN_DEFAULT);
  tls_ctx_unref(x.tls);
  if (!x.main.got) {
    char a[64];
    fprintf(stderr, "ztna diag: the intermediate at %s did not tell this "
            "machine its address: %s\n",
            netaddr_str((struct sockaddr *)&x.main.server, a, sizeof(a)),
            x.main.error);
    free(cfg);
    return 1;
  }
  report(&x, service, json);
  free(cfg);
  return service && !service_ok(&x) ? 3 : 0;
}

int diag_main(int argc, char **argv)
{
  if (argc > 1 && !strcmp(argv[1], "punch"))
    return punch_main(argc - 1, argv + 1);
  if (argc > 1 && !strcmp(argv[1], "status"))
    return diag_status_main(argc - 1, argv + 1, 0);
  if (argc > 1 && !strcmp(argv[1], "api"))
    return diag_status_main(argc - 1, argv + 1, 1);
  if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    fputs(usage_text, stdout);
    return 0;
  }
  if (argc < 2)
    return usage_error("%s", "which one? punch, status or api");
  return usage_error("unknown command '%s' (punch, status or api)",
                     argv[1]);
}
