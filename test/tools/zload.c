/* zload.c - many simulated agents from one process, for the cluster's
 * capacity figures (test/bench/cluster_load.py, docs/cluster.md).
 *
 * usage: zload --server IP:PORT --ca FILE --cert FILE --key FILE
 *              --service ID -n N [--no-open]
 *
 * Opens N connections to the intermediate (at most 32 handshakes at a
 * time: the intermediate bounds those per source address), registers
 * each as an agent of the service and asks for a relay session (OPEN),
 * asking again every 250 ms while the answer is "no connector" (as the
 * agent does while its intermediate looks the service up), 40 times at
 * most. With --no-open they stay idle once registered (the intermediate's
 * memory per idle connection, test/bench/conn_memory.py).
 * Prints one line per stage reached by all of them:
 *   connected N SECONDS | registered N SECONDS |
 *   opened N SECONDS OK OTHER OPENS_SENT
 * then "ready" and keeps every connection until stdin closes or says
 * quit (then closes them all). Exits 1 when a connection fails.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "err.h"
#include "quic.h"
#include "tls.h"
#include "wire.h"

#define WAVE 32

struct agent {
  struct quic_conn *c;
  int state; /* 0 connecting, 1 up, 2 registered, 3 opened */
  int again; /* "no connector": ask again at the next tick */
  uint32_t req;
};

static struct {
  uv_loop_t *loop;
  struct quic_endpoint *ep;
  struct tls_ctx *tls;
  struct sockaddr_storage server;
  struct agent *a;
  size_t n, started, up, registered, opened, ok;
  const char *svc;
  uint64_t t0;
  uv_pipe_t in;
  uv_timer_t tick;
  int failed;
  int quitting; /* closing every connection before exiting */
  int no_open;  /* stop at registered */
  size_t asked;
} z;

static void ask(struct agent *a)
{
  uint8_t b[300];
  int k = wire_session_open_encode(b, sizeof(b), ++a->req, z.svc,
                                   strlen(z.svc));
  z.asked++;
  quic_conn_send_datagram(a->c, b, (size_t)k);
}

static void on_tick(uv_timer_t *t)
{
  (void)t;
  for (size_t i = 0; i < z.started; i++)
    if (z.a[i].again && z.a[i].c) {
      z.a[i].again = 0;
      ask(&z.a[i]);
    }
}

static double secs(void)
{
  return (double)(uv_now(z.loop) - z.t0) / 1000.0;
}

static void start_more(void);

static void on_handshake(struct quic_conn *c, void *ud)
{
  struct agent *a = ud;
  uint8_t b[300];
  int k = wire_register_encode(b, sizeof(b), WIRE_REG_AGENT, z.svc,
                               strlen(z.svc));
  a->state = 1;
  a->c = c;
  if (++z.up == z.n)
    printf("connected %zu %.2f\n", z.n, secs()), fflush(stdout);
  quic_conn_send_datagram(c, b, (size_t)k);
  start_more();
}

static void on_datagram(struct quic_conn *c, const uint8_t *d, size_t n,
                        void *ud)
{
  struct agent *a = ud;
  uint8_t status;
  uint32_t req;
  uint64_t sid;
  (void)c;

  if (a->state == 1 && wire_classify(d, n) == WIRE_KIND_ACK) {
    a->state = z.no_open ? 3 : 2;
    if (++z.registered == z.n)
      printf("registered %zu %.2f\n%s", z.n, secs(),
             z.no_open ? "ready\n" : ""), fflush(stdout);
    if (!z.no_open)
      ask(a);
  } else if (a->state == 2 && wire_classify(d, n) == WIRE_KIND_SESSION_OPENED
             && wire_session_opened_decode(d, n, &req, &status, &sid) == 0 &&
             req == a->req) {
    if (status == WIRE_SESSION_NO_CONNECTOR && a->req < 40) {
      a->again = 1;
      return;
    }
    a->state = 3;
    z.ok += status == WIRE_SESSION_OK;
    if (++z.opened == z.n) {
      printf("opened %zu %.2f %zu %zu %zu\nready\n", z.n, secs(), z.ok,
             z.n - z.ok, z.asked);
      fflush(stdout);
    }
  }
}

static void on_close(struct quic_conn *c, const struct quic_close_info *i,
                     void *ud)
{
  struct agent *a = ud;
  (void)c;
  a->c = NULL;
  if (z.quitting)
    return;
  if (!z.failed++)
    fprintf(stderr, "zload: a connection ended: %s\n",
            i->reason[0] ? i->reason : ztna_strerror(i->err));
  uv_stop(z.loop);
}

static const struct quic_conn_cbs cbs = {
  .handshake_cb = on_handshake,
  .datagram_cb = on_datagram,
  .close_cb = on_close,
};

/* Keeps WAVE handshakes in flight until all N are started. */
static void start_more(void)
{
  while (z.started < z.n && z.started - z.up < WAVE) {
    struct agent *a = &z.a[z.started++];
    if (quic_connect(&a->c, z.ep, z.tls, (struct sockaddr *)&z.server,
                     "ztna-server", &cbs, a) < 0) {
      fprintf(stderr, "zload: cannot connect\n");
      exit(1);
    }
  }
}

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
  static char buf[256];
  (void)h, (void)s;
  b->base = buf;
  b->len = sizeof(buf);
}

static void on_quit(uv_timer_t *t)
{
  uv_stop(t->loop);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
  if (n < 0 || (n > 0 && !strncmp(b->base, "quit", 4))) {
    /* Each connection closed (the intermediate sees them leave at once,
     * not at their idle timeout), then a second to send the closes. */
    uv_read_stop(s);
    z.quitting = 1;
    for (size_t i = 0; i < z.started; i++)
      if (z.a[i].c)
        quic_conn_close(z.a[i].c, 0, "bye");
    uv_timer_start(&z.tick, on_quit, 1000, 0);
  }
}

int main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "server", required_argument, NULL, 's' },
    { "cert", required_argument, NULL, 'c' },
    { "key", required_argument, NULL, 'k' },
    { "ca", required_argument, NULL, 'a' },
    { "service", required_argument, NULL, 'v' },
    { "no-open", no_argument, NULL, 'o' },
    { NULL, 0, NULL, 0 },
  };
  struct tls_config tc;
  struct quic_endpoint_config qc = { 0 };
  struct sockaddr_in any = { .sin_family = AF_INET };
  char err[512], host[64];
  const char *srv = NULL, *colon;
  int ch;

  tls_config_init(&tc);
  while ((ch = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
    switch (ch) {
    case 's': srv = optarg; break;
    case 'c': tc.cert_file = optarg; break;
    case 'k': tc.key_file = optarg; break;
    case 'a': tc.ca_file = optarg; break;
    case 'v': z.svc = optarg; break;
    case 'n': z.n = strtoul(optarg, NULL, 10); break;
    case 'o': z.no_open = 1; break;
    default: return 2;
    }
  }
  colon = srv ? strrchr(srv, ':') : NULL;
  if (!colon || !z.svc || z.n == 0 || (size_t)(colon - srv) >= sizeof(host)) {
    fprintf(stderr, "zload: --server IP:PORT --ca --cert --key --service ID "
            "-n N [--no-open]\n");
    return 2;
  }
  memcpy(host, srv, (size_t)(colon - srv));
  host[colon - srv] = '\0';
  if (uv_ip4_addr(host, atoi(colon + 1), (struct sockaddr_in *)&z.server)) {
    fprintf(stderr, "zload: --server must be an IPv4 address and port\n");
    return 2;
  }
  if (tls_ctx_new(&z.tls, 0, &tc, err, sizeof(err)) < 0) {
    fprintf(stderr, "zload: %s\n", err);
    return 2;
  }
  z.a = calloc(z.n, sizeof(*z.a));
  z.loop = uv_default_loop();
  qc.keepalive_ms = 10000;
  qc.max_conns = z.n;
  qc.idle_timeout_ms = 120000;
  if (!z.a || quic_endpoint_new(&z.ep, z.loop, (struct sockaddr *)&any,
                                &qc) < 0) {
    fprintf(stderr, "zload: no endpoint\n");
    return 2;
  }
  z.t0 = uv_now(z.loop);
  uv_pipe_init(z.loop, &z.in, 0);
  uv_pipe_open(&z.in, 0);
  uv_read_start((uv_stream_t *)&z.in, on_alloc, on_read);
  uv_timer_init(z.loop, &z.tick);
  uv_timer_start(&z.tick, on_tick, 250, 250);
  start_more();
  uv_run(z.loop, UV_RUN_DEFAULT);
  return z.failed ? 1 : 0;
}
