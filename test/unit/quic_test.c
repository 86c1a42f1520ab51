/* quic_test.c - the transport over real loopback sockets: mTLS handshakes,
 * 10,000 DATAGRAMs each way and 1 MiB of stream data each way checked byte
 * for byte, CID rotation under load, silence detection, Retry, version
 * negotiation, close codes, idle timeout, and the
 * handshakes that must fail (wrong ALPN, untrusted CA, no client
 * certificate, expired certificates, wrong server name).
 *
 * Certificates come from ztna keygen (the Makefile makes them); the
 * directory is in ZTNA_TEST_CERTS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <ngtcp2/ngtcp2.h>
#include <uv.h>

#include "err.h"
#include "testutil.h"
#include "h3.h"
#include "log.h"
#include "quic.h"
#include "tls.h"

#define NDGRAMS 10000
#define STREAM_BYTES (1024 * 1024)
#define TIMEOUT_MS 30000


/* One side of a test connection. */
struct side {
  struct quic_conn *c;
  int handshake, closed;
  struct quic_close_info info;
  uint32_t sent, received, bad;
  uint8_t *seen;          /* NDGRAMS flags */
  int64_t sid;
  size_t stream_rx;
  int stream_fin, stream_bad;
  size_t stream_tx;       /* bytes queued so far */
  int echo_stream;        /* server: send the stream back */
  struct tls_identity peer;
  struct sockaddr_storage peer_addr;
  int path_changes;
  struct sockaddr_storage new_peer;
};

struct world {
  uv_loop_t loop;
  struct quic_endpoint *server_ep, *client_ep;
  struct tls_ctx *server_tls, *client_tls;
  struct side srv, cli;
  int pump; /* keep sending datagrams */
  uv_idle_t idle;
};

static struct world *W;
static uint64_t rotate_ms; /* CID rotation period for world_init, 0: default */

static uint8_t pattern(uint32_t seq, size_t i)
{
  return (uint8_t)(seq * 31 + i * 7 + 1);
}

static size_t dgram_len(uint32_t seq, size_t max)
{
  return 8 + (seq * 131) % (max - 8 + 1); /* 8 .. max, varied */
}

static void fill_dgram(uint8_t *b, uint32_t seq, size_t len)
{
  b[0] = (uint8_t)(seq >> 24);
  b[1] = (uint8_t)(seq >> 16);
  b[2] = (uint8_t)(seq >> 8);
  b[3] = (uint8_t)seq;
  b[4] = (uint8_t)(len >> 8);
  b[5] = (uint8_t)len;
  b[6] = b[7] = 0x5c;
  for (size_t i = 8; i < len; i++)
    b[i] = pattern(seq, i);
}

static void check_dgram(struct side *s, const uint8_t *d, size_t n)
{
  uint32_t seq;

  if (n < 8) {
    s->bad++;
    return;
  }
  seq = (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 |
        d[3];
  if (seq >= NDGRAMS || ((size_t)d[4] << 8 | d[5]) != n || d[6] != 0x5c) {
    s->bad++;
    return;
  }
  for (size_t i = 8; i < n; i++)
    if (d[i] != pattern(seq, i)) {
      s->bad++;
      return;
    }
  if (!s->seen[seq]) {
    s->seen[seq] = 1;
    s->received++;
  }
}

static uint8_t stream_byte(size_t off)
{
  return (uint8_t)(off * 13 + (off >> 11));
}

/* Sends datagrams while the queue has room: the sender respects
 * backpressure instead of overrunning a bounded queue. */
static void pump(struct side *s)
{
  uint8_t buf[2048];
  size_t max;

  if (!s->c || !s->handshake || s->closed)
    return;
  max = quic_conn_max_datagram(s->c);
  while (s->sent < NDGRAMS &&
         quic_conn_datagram_queued(s->c) < QUIC_DGRAM_QUEUE_MAX / 2) {
    size_t len = dgram_len(s->sent, max);
    fill_dgram(buf, s->sent, len);
    if (quic_conn_send_datagram(s->c, buf, len) != 0)
      break;
    s->sent++;
  }
}

static void pump_stream(struct side *s)
{
  uint8_t buf[16384];

  while (s->sid >= 0 && s->stream_tx < STREAM_BYTES && !s->echo_stream) {
    size_t n = STREAM_BYTES - s->stream_tx;
    if (n > sizeof(buf))
      n = sizeof(buf);
    for (size_t i = 0; i < n; i++)
      buf[i] = stream_byte(s->stream_tx + i);
    if (quic_conn_stream_send(s->c, s->sid, buf, n,
                              s->stream_tx + n == STREAM_BYTES) != 0)
      break;
    s->stream_tx += n;
  }
}

static void idle_cb(uv_idle_t *h)
{
  struct world *w = h->data;
  if (w->pump) {
    pump(&w->cli);
    pump(&w->srv);
    pump_stream(&w->cli);
  }
}

static void handshake_cb(struct quic_conn *c, void *ud)
{
  struct side *s = ud;
  s->handshake = 1;
  s->c = c;
  quic_conn_peer_identity(c, &s->peer);
  memcpy(&s->peer_addr, quic_conn_peer(c),
         quic_conn_peer(c)->sa_family == AF_INET6
             ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
}

static void datagram_cb(struct quic_conn *c, const uint8_t *d, size_t n,
                        void *ud)
{
  (void)c;
  check_dgram(ud, d, n);
}

static void stream_cb(struct quic_conn *c, int64_t sid, const uint8_t *d,
                      size_t n, int fin, void *ud)
{
  struct side *s = ud;

  for (size_t i = 0; i < n; i++)
    if (d[i] != stream_byte(s->stream_rx + i))
      s->stream_bad++;
  s->stream_rx += n;
  if (fin)
    s->stream_fin = 1;
  if (s->echo_stream && quic_conn_stream_send(c, sid, d, n, fin) != 0)
    s->stream_bad++;
}

static void close_cb(struct quic_conn *c, const struct quic_close_info *info,
                     void *ud)
{
  struct side *s = ud;
  (void)c;
  s->closed = 1;
  s->info = *info;
  s->c = NULL;
}

static void path_cb(struct quic_conn *c, const struct sockaddr *peer,
                    void *ud)
{
  struct side *s = ud;
  (void)c;
  s->path_changes++;
  memcpy(&s->new_peer, peer, peer->sa_family == AF_INET6
                                 ? sizeof(struct sockaddr_in6)
                                 : sizeof(struct sockaddr_in));
}

static const struct quic_conn_cbs side_cbs = {
  .handshake_cb = handshake_cb,
  .path_cb = path_cb,
  .datagram_cb = datagram_cb,
  .stream_cb = stream_cb,
  .close_cb = close_cb,
};

static int accept_cb(struct quic_endpoint *ep, struct quic_conn *c, void *ud)
{
  struct world *w = ud;
  (void)ep;
  w->srv.c = c;
  quic_conn_set_cbs(c, &side_cbs, &w->srv);
  return 0;
}

static const struct quic_endpoint_cbs server_cbs = { .accept_cb = accept_cb };

static int tls_make(struct tls_ctx **out, int server, const char *crt,
                    const char *key, const char *ca, const char *alpn)
{
  struct tls_config cfg;
  char err[256];
  int rv;

  tls_config_init(&cfg);
  cfg.cert_file = crt;
  cfg.key_file = key;
  cfg.ca_file = ca;
  cfg.alpn = alpn;
  rv = tls_ctx_new(out, server, &cfg, err, sizeof(err));
  if (rv < 0)
    fail_msg("tls_ctx_new: %s", err);
  return rv;
}

static size_t max_conns_cfg, half_per_source_cfg; /* for world_init */
static const char *server_alpn_cfg; /* for world_init, NULL: ztna-v1 */
static int (*vsend_cfg)(struct quic_endpoint *, const struct sockaddr *,
                        const uint8_t *, size_t, void *);

static const uint8_t *secret_cfg; /* for world_init: the server's secret */

static void world_init(struct world *w, int retry, uint64_t idle_ms)
{
  struct quic_endpoint_config cfg = { 0 };
  struct sockaddr_in any;

  memset(w, 0, sizeof(*w));
  W = w;
  assert_int_equal(uv_loop_init(&w->loop), 0);
  w->srv.seen = calloc(NDGRAMS, 1);
  w->cli.seen = calloc(NDGRAMS, 1);
  w->srv.sid = w->cli.sid = -1;
  tls_make(&w->server_tls, 1, cert("server.crt"), cert("server.key"),
           cert("ca.crt"), server_alpn_cfg);
  uv_ip4_addr("127.0.0.1", 0, &any);
  cfg.server_tls = w->server_tls;
  cfg.retry = retry;
  cfg.idle_timeout_ms = idle_ms;
  cfg.cid_rotate_ms = rotate_ms;
  cfg.max_conns = max_conns_cfg;
  cfg.max_half_open_per_source = half_per_source_cfg;
  cfg.cbs = &server_cbs;
  cfg.ud = w;
  cfg.vsend_cb = vsend_cfg;
  cfg.secret = secret_cfg;
  cfg.stateless_reset = secret_cfg != NULL;
  assert_int_equal(quic_endpoint_new(&w->server_ep, &w->loop,
                                     (struct sockaddr *)&any, &cfg), 0);
  memset(&cfg, 0, sizeof(cfg));
  cfg.idle_timeout_ms = idle_ms;
  cfg.cid_rotate_ms = rotate_ms;
  cfg.vsend_cb = vsend_cfg;
  cfg.ud = w;
  assert_int_equal(quic_endpoint_new(&w->client_ep, &w->loop,
                                     (struct sockaddr *)&any, &cfg), 0);
  uv_idle_init(&w->loop, &w->idle);
  w->idle.data = w;
}

static void world_free(struct world *w)
{
  quic_endpoint_del(w->server_ep);
  quic_endpoint_del(w->client_ep);
  uv_close((uv_handle_t *)&w->idle, NULL);
  tls_ctx_unref(w->server_tls);
  tls_ctx_unref(w->client_tls);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&w->loop), 0);
  free(w->srv.seen);
  free(w->cli.seen);
}

static void timeout_cb(uv_timer_t *t)
{
  *(int *)t->data = 1;
}

/* Runs the loop until cond() holds or TIMEOUT_MS pass; returns cond(). */
static int run_until(struct world *w, int (*cond)(struct world *))
{
  uv_timer_t t;
  int expired = 0;

  uv_timer_init(&w->loop, &t);
  t.data = &expired;
  uv_timer_start(&t, timeout_cb, TIMEOUT_MS, 0);
  while (!cond(w) && !expired)
    uv_run(&w->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&w->loop, UV_RUN_NOWAIT);
  return cond(w);
}

static int both_up(struct world *w)
{
  return (w->srv.handshake && w->cli.handshake) || w->cli.closed ||
         w->srv.closed;
}

static int client_closed(struct world *w)
{
  return w->cli.closed;
}

static int both_closed(struct world *w)
{
  return w->cli.closed && w->srv.closed;
}

static int got_one_each(struct world *w)
{
  return (w->srv.received >= 1 && w->cli.received >= 1) || w->cli.closed ||
         w->srv.closed;
}

static int transfer_done(struct world *w)
{
  return (w->srv.received == NDGRAMS && w->cli.received == NDGRAMS &&
          w->cli.stream_fin && w->srv.stream_fin) ||
         w->cli.closed || w->srv.closed;
}

static void connect_client(struct world *w, const char *crt, const char *key,
                           const char *ca, const char *alpn, const char *sni)
{
  struct sockaddr_storage srv;

  tls_make(&w->client_tls, 0, crt, key, ca, alpn);
  quic_endpoint_local_addr(w->server_ep, &srv);
  assert_int_equal(quic_connect(&w->cli.c, w->client_ep, w->client_tls,
                                (struct sockaddr *)&srv, sni, &side_cbs,
                                &w->cli), 0);
}

static int probed(struct world *w)
{
  return (quic_conn_max_datagram(w->cli.c) >= 1408 &&
          quic_conn_max_datagram(w->srv.c) >= 1408) ||
         w->cli.closed || w->srv.closed;
}

static void test_quic_transfer(void **state)
{
  struct world w;
  struct sockaddr_storage cli_addr;
  (void)state;

  world_init(&w, 0, 0);
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_true(w.srv.handshake && w.cli.handshake);

  /* The server saw the client's identity and real source address. */
  assert_string_equal(w.srv.peer.cn, "client");
  assert_string_equal(w.srv.peer.ou, "agent");
  assert_int_equal(w.srv.peer.ndns, 1);
  assert_string_equal(w.srv.peer.dns[0], "agent.echo.ztna");
  quic_endpoint_local_addr(w.client_ep, &cli_addr);
  assert_int_equal(((struct sockaddr_in *)&w.srv.peer_addr)->sin_port,
                   ((struct sockaddr_in *)&cli_addr)->sin_port);
  assert_string_equal(w.cli.peer.dns[0], "ztna-server");
  /* Certificates' ends (keygen's default: 365 days from issue), which
   * the daemons enforce on established connections. */
  assert_true(w.srv.peer.not_after > (int64_t)time(NULL) + 300 * 86400);
  assert_true(w.srv.peer.not_after <= (int64_t)time(NULL) + 366 * 86400);
  assert_true(w.cli.peer.not_after > (int64_t)time(NULL));

  /* Path MTU discovery takes the loopback path to 1452-byte packets:
   * with 20-byte CIDs, 1408-byte datagrams (protocol.md 1). Before it,
   * 1200-byte packets carry 1156 bytes. */
  assert_true(run_until(&w, probed));
  assert_int_equal(quic_conn_max_datagram(w.cli.c), 1408);
  assert_int_equal(QUIC_DATAGRAM_MAX, 1306);
  assert_int_equal(quic_conn_max_datagram(w.srv.c), 1408);
  {
    uint8_t big[1409] = { 0 };
    assert_int_equal(quic_conn_send_datagram(w.cli.c, big, sizeof(big)),
                     ZTNA_ERR_TOO_LARGE);
    assert_int_equal(quic_conn_send_datagram(w.cli.c, big, 0),
                     ZTNA_ERR_TOO_LARGE);
  }

  /* 10,000 datagrams each way and 1 MiB echoed on a stream. */
  assert_int_equal(quic_conn_open_stream(w.cli.c, &w.cli.sid), 0);
  w.srv.echo_stream = 1;
  w.pump = 1;
  uv_idle_start(&w.idle, idle_cb);
  assert_true(run_until(&w, transfer_done));
  uv_idle_stop(&w.idle);
  assert_false(w.cli.closed);
  assert_int_equal(w.srv.bad, 0);
  assert_int_equal(w.cli.bad, 0);
  assert_int_equal(w.srv.received, NDGRAMS);
  assert_int_equal(w.cli.received, NDGRAMS);
  assert_int_equal(w.srv.stream_rx, STREAM_BYTES);
  assert_int_equal(w.cli.stream_rx, STREAM_BYTES);
  assert_int_equal(w.srv.stream_bad + w.cli.stream_bad, 0);
  assert_int_equal(quic_endpoint_stats(w.client_ep)->dgram_rejected, 0);
  /* Both sides sent bursts with UDP_SEGMENT, and loopback hands such a
   * burst to a UDP_GRO socket whole: each side read runs of several
   * datagrams at once, cut them apart, and lost or garbled nothing (the
   * counts and patterns above). */
  assert_true(quic_endpoint_stats(w.client_ep)->gso_sends > 0);
  assert_true(quic_endpoint_stats(w.server_ep)->gso_sends > 0);
  assert_true(quic_endpoint_stats(w.server_ep)->gro_reads > 0);
  assert_true(quic_endpoint_stats(w.client_ep)->gro_reads > 0);
  assert_int_equal(quic_endpoint_stats(w.server_ep)->rx_errors, 0);
  assert_int_equal(quic_endpoint_stats(w.client_ep)->rx_errors, 0);

  /* An application close reaches the peer with its code and reason. */
  quic_conn_close(w.cli.c, 7, "bye");
  assert_true(run_until(&w, both_closed));
  assert_int_equal(w.cli.info.local, 1);
  assert_int_equal(w.srv.info.local, 0);
  assert_int_equal(w.srv.info.app, 1);
  assert_int_equal(w.srv.info.code, 7);
  assert_string_equal(w.srv.info.reason, "bye");
  world_free(&w);
}

/* One datagram each way, and both see it. */
static void exchange(struct world *w, uint32_t seq)
{
  uint8_t ping[64];

  w->srv.received = w->cli.received = 0;
  memset(w->srv.seen, 0, NDGRAMS);
  memset(w->cli.seen, 0, NDGRAMS);
  fill_dgram(ping, seq, sizeof(ping));
  assert_int_equal(quic_conn_send_datagram(w->cli.c, ping, sizeof(ping)), 0);
  assert_int_equal(quic_conn_send_datagram(w->srv.c, ping, sizeof(ping)), 0);
  assert_true(run_until(w, got_one_each));
  assert_false(w->cli.closed || w->srv.closed);
}

static void wake_cb(uv_timer_t *t)
{
  (void)t;
}

/* Traffic both ways: ngtcp2 prepares the next keys as it reads and
 * writes. */
static void traffic_cb(uv_timer_t *t)
{
  struct world *w = t->data;
  uint8_t ping[16];

  fill_dgram(ping, 0, sizeof(ping));
  if (!w->cli.closed && !w->srv.closed) {
    quic_conn_send_datagram(w->cli.c, ping, sizeof(ping));
    quic_conn_send_datagram(w->srv.c, ping, sizeof(ping));
  }
}

static int srv_key_update; /* the server started one */

static int server_updated_keys(struct world *w)
{
  if (!srv_key_update && !w->cli.closed && !w->srv.closed)
    srv_key_update = ngtcp2_conn_initiate_key_update(
                       quic_conn_ngtcp2(w->srv.c), uv_hrtime()) == 0;
  return srv_key_update || w->cli.closed || w->srv.closed;
}

/* A server frees its TLS session once the handshake is done (the memory
 * per idle connection): key updates from either side still work on the
 * keys ngtcp2 holds, and TLS bytes a client sends after the handshake end
 * the connection with unexpected_message instead of reaching a freed
 * session. */
static void test_quic_server_drops_tls(void **state)
{
  struct world w;
  uv_timer_t tick;
  struct tls_identity id;
  static const uint8_t junk[] = { 0x04, 0x00, 0x00, 0x01, 0x00 };
  (void)state;

  world_init(&w, 0, 0);
  connect_client(&w, cert("client.crt"), cert("client.key"),
                 cert("ca.crt"), NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_string_equal(w.srv.peer.cn, "client"); /* read in handshake_cb */
  exchange(&w, 1);
  assert_int_equal(quic_conn_peer_identity(w.srv.c, &id), -ENOENT);
  assert_int_equal(quic_conn_peer_identity(w.cli.c, &id), 0);

  /* Key updates: the client's, then (once confirmed) the server's. */
  assert_int_equal(ngtcp2_conn_initiate_key_update(
                     quic_conn_ngtcp2(w.cli.c), uv_hrtime()), 0);
  exchange(&w, 2);
  exchange(&w, 3);
  /* ngtcp2 allows the next update three PTOs after the last: poll. */
  uv_timer_init(&w.loop, &tick);
  tick.data = &w;
  uv_timer_start(&tick, traffic_cb, 10, 10);
  assert_true(run_until(&w, server_updated_keys));
  uv_close((uv_handle_t *)&tick, NULL);
  assert_true(srv_key_update);
  exchange(&w, 4);
  exchange(&w, 5);

  /* A TLS message in a 1-RTT CRYPTO frame. */
  assert_int_equal(ngtcp2_conn_submit_crypto_data(
                     quic_conn_ngtcp2(w.cli.c),
                     NGTCP2_ENCRYPTION_LEVEL_1RTT, junk, sizeof(junk)), 0);
  {
    uint8_t ping[64];
    fill_dgram(ping, 6, sizeof(ping));
    assert_int_equal(quic_conn_send_datagram(w.cli.c, ping, sizeof(ping)),
                     0);
  }
  assert_true(run_until(&w, both_closed));
  assert_int_equal(w.srv.info.local, 1);
  assert_int_equal(w.cli.info.local, 0);
  assert_int_equal(w.cli.info.app, 0);
  assert_int_equal(w.cli.info.code, NGTCP2_CRYPTO_ERROR | 10);
  world_free(&w);
}

/* Keys of the next phase are derived when first needed: a packet whose
 * key phase looks flipped and whose number is newer than any received
 * makes the server derive them. Forged short-header packets with the
 * connection's ID (what someone who saw its packets can send; the
 * header protection turns their key phase bit into a coin flip) make it
 * do so and fail to decrypt: they are dropped, the connection goes on,
 * and the real key updates of both sides that follow still decrypt. */
static void test_quic_forged_key_phase(void **state)
{
  struct world w;
  struct sockaddr_storage srv;
  uv_timer_t tick;
  uint8_t pkt[64];
  size_t dl;
  int fd;
  (void)state;

  world_init(&w, 0, 0);
  connect_client(&w, cert("client.crt"), cert("client.key"),
                 cert("ca.crt"), NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  exchange(&w, 1);
  quic_endpoint_local_addr(w.server_ep, &srv);
  fd = socket(srv.ss_family, SOCK_DGRAM, 0);
  assert_true(fd >= 0);
  dl = quic_conn_dcid(w.cli.c, pkt + 1, sizeof(pkt) - 1);
  assert_true(dl > 0);
  for (int i = 0; i < 256; i++) {
    for (size_t k = 1 + dl; k < sizeof(pkt); k++)
      pkt[k] = (uint8_t)rand();
    pkt[0] = (uint8_t)(0x40 | (rand() & 0x3f)); /* short header */
    assert_int_equal(sendto(fd, pkt, sizeof(pkt), 0,
                            (struct sockaddr *)&srv, sizeof(srv)),
                     (ssize_t)sizeof(pkt));
  }
  close(fd);
  exchange(&w, 2);

  /* The client's key update, then (once confirmed) the server's. */
  assert_int_equal(ngtcp2_conn_initiate_key_update(
                     quic_conn_ngtcp2(w.cli.c), uv_hrtime()), 0);
  exchange(&w, 3);
  exchange(&w, 4);
  srv_key_update = 0;
  uv_timer_init(&w.loop, &tick);
  tick.data = &w;
  uv_timer_start(&tick, traffic_cb, 10, 10);
  assert_true(run_until(&w, server_updated_keys));
  uv_close((uv_handle_t *)&tick, NULL);
  exchange(&w, 5);
  exchange(&w, 6);
  assert_false(w.cli.closed || w.srv.closed);
  world_free(&w);
}

/* BBR's ProbeRTT on a path that keeps showing its minimum RTT. Stock BBR
 * drops to half a BDP for 200 ms whenever its minimum has not been beaten
 * for 5 s; ztna's third_party/ngtcp2-bbr.patch lets a sample within an
 * eighth of the minimum plus 1 ms count as seeing it (the relay path's
 * three nested connections each probed on their own clock and every probe
 * stalled the whole path). Datagrams both ways for 12 s over loopback,
 * two of stock BBR's intervals: ngtcp2's own trace (stderr, captured to a
 * file) shows both sides' BBR at work and neither entering ProbeRTT
 * (stock ngtcp2: once or twice). */
static int steady_done;
static int trace_saved = -1, trace_level; /* stderr while it is captured */
static char trace_path[64];

/* Gives stderr back (also when an assertion ended the test early) and
 * removes the captured trace. */
static int trace_restore(void **state)
{
  (void)state;
  if (trace_saved >= 0) {
    fflush(stderr);
    dup2(trace_saved, 2);
    close(trace_saved);
    trace_saved = -1;
    log_init("quic_test", trace_level);
  }
  if (trace_path[0])
    unlink(trace_path);
  trace_path[0] = 0;
  return 0;
}

/* 1000-byte datagrams: with the 16-byte ones of traffic_cb stock ngtcp2
 * beat its minimum often enough to skip ProbeRTT in one run of four. */
static void steady_cb(uv_timer_t *t)
{
  struct world *w = t->data;
  uint8_t d[1000];

  fill_dgram(d, 0, sizeof(d));
  if (!w->cli.closed && !w->srv.closed) {
    quic_conn_send_datagram(w->cli.c, d, sizeof(d));
    quic_conn_send_datagram(w->srv.c, d, sizeof(d));
  }
}

static int steady_over(struct world *w)
{
  return steady_done || w->cli.closed || w->srv.closed;
}

static void test_quic_no_probe_rtt_at_the_minimum(void **state)
{
  int fd, up, over, closed;
  unsigned probe_rtt = 0, startup = 0, lines = 0;
  uv_timer_t tick, end;
  struct world w;
  char line[1024];
  FILE *f;
  (void)state;

  snprintf(trace_path, sizeof(trace_path), "/tmp/quic_test_trace_XXXXXX");
  fd = mkstemp(trace_path);
  assert_true(fd >= 0);
  fflush(stderr);
  trace_level = log_verbosity();
  trace_saved = dup(2);
  assert_true(trace_saved >= 0);
  assert_true(dup2(fd, 2) == 2);
  log_init("quic_test", LOG_LVL_TRACE); /* ngtcp2's log_printf set */

  world_init(&w, 0, 0);
  connect_client(&w, cert("client.crt"), cert("client.key"),
                 cert("ca.crt"), NULL, "ztna-server");
  up = run_until(&w, both_up) && !w.cli.closed && !w.srv.closed;
  over = 0;
  if (up) {
    steady_done = 0;
    uv_timer_init(&w.loop, &tick);
    uv_timer_init(&w.loop, &end);
    tick.data = &w;
    end.data = &steady_done;
    uv_timer_start(&tick, steady_cb, 2, 2);
    uv_timer_start(&end, timeout_cb, 12000, 0);
    over = run_until(&w, steady_over);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_close((uv_handle_t *)&end, NULL);
  }
  closed = w.cli.closed || w.srv.closed;
  world_free(&w);

  trace_restore(NULL);
  f = fdopen(fd, "r");
  assert_non_null(f);
  rewind(f);
  while (fgets(line, sizeof(line), f)) {
    lines++;
    if (strstr(line, "bbr enter ProbeRTT"))
      probe_rtt++;
    if (strstr(line, "bbr enter Startup"))
      startup++;
  }
  fclose(f);
  assert_true(up);
  assert_true(over);
  assert_false(closed);
  print_message("trace: %u lines, BBR started %u times, %u ProbeRTT\n",
                lines, startup, probe_rtt);
  assert_true(startup >= 2); /* the trace has both sides' BBR events */
  assert_int_equal(probe_rtt, 0);
}

/* One source starts many handshakes and never finishes them: it gets at
 * most max_half_open_per_source of them, they do not count against the
 * established connections, and a client from elsewhere still gets in. */
static struct quic_endpoint *flood_ep;

static int flood_started(struct world *w)
{
  return quic_endpoint_stats(w->server_ep)->refused_half_open > 0;
}

static void test_quic_half_open_flood(void **state)
{
  struct quic_endpoint_config cfg = { 0 };
  struct sockaddr_storage srv;
  struct sockaddr_in a;
  struct quic_conn *c;
  struct world w;
  (void)state;

  max_conns_cfg = 8;
  half_per_source_cfg = 4;
  world_init(&w, 0, 0);
  max_conns_cfg = half_per_source_cfg = 0;
  tls_make(&w.client_tls, 0, cert("client.crt"), cert("client.key"),
           cert("ca.crt"), NULL);
  quic_endpoint_local_addr(w.server_ep, &srv);
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(quic_endpoint_new(&flood_ep, &w.loop,
                                     (struct sockaddr *)&a, &cfg), 0);
  for (int i = 0; i < 40; i++)
    assert_int_equal(quic_connect(&c, flood_ep, w.client_tls,
                                  (struct sockaddr *)&srv, "ztna-server",
                                  NULL, NULL), 0);
  assert_true(run_until(&w, flood_started));
  /* The flooder goes silent: its handshakes stay half-open until the
   * server's handshake timeout. */
  quic_endpoint_del(flood_ep);
  assert_true(quic_endpoint_conn_count(w.server_ep) <= 4);
  /* A client from another address is served at once. */
  quic_endpoint_del(w.client_ep);
  uv_ip4_addr("127.0.0.2", 0, &a);
  memset(&cfg, 0, sizeof(cfg));
  assert_int_equal(quic_endpoint_new(&w.client_ep, &w.loop,
                                     (struct sockaddr *)&a, &cfg), 0);
  assert_int_equal(quic_connect(&w.cli.c, w.client_ep, w.client_tls,
                                (struct sockaddr *)&srv, "ztna-server",
                                &side_cbs, &w.cli), 0);
  assert_true(run_until(&w, both_up));
  assert_true(w.cli.handshake && w.srv.handshake);
  world_free(&w);
}

static int saw_socket_error(struct world *w)
{
  return quic_endpoint_stats(w->server_ep)->rx_errors > 0;
}

/* A socket error (here an ICMP port unreachable queued with IP_RECVERR)
 * makes libuv stop a poll watcher: the endpoint takes the error off and
 * goes on reading, so a client still gets in afterwards. */
static void test_quic_socket_error_keeps_reading(void **state)
{
  struct world w;
  struct sockaddr_storage srv;
  struct sockaddr_in closed;
  socklen_t len = sizeof(closed);
  uv_timer_t tick;
  int one = 1, n = 0, s;
  (void)state;

  world_init(&w, 0, 0);
  quic_endpoint_local_addr(w.server_ep, &srv);
  for (int fd = 3; fd < 1024; fd++) {
    struct sockaddr_storage a;
    socklen_t alen = sizeof(a);
    if (getsockname(fd, (struct sockaddr *)&a, &alen) == 0 &&
        a.ss_family == AF_INET &&
        ((struct sockaddr_in *)&a)->sin_port ==
            ((struct sockaddr_in *)&srv)->sin_port &&
        setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one)) == 0)
      n++;
  }
  assert_true(n >= 1);
  /* A port nobody listens on. */
  s = socket(AF_INET, SOCK_DGRAM, 0);
  memset(&closed, 0, sizeof(closed));
  closed.sin_family = AF_INET;
  closed.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(s, (struct sockaddr *)&closed, sizeof(closed)), 0);
  assert_int_equal(getsockname(s, (struct sockaddr *)&closed, &len), 0);
  close(s);
  assert_int_equal(quic_endpoint_send_raw(w.server_ep,
                                          (struct sockaddr *)&closed,
                                          (const uint8_t *)"x", 1), 0);
  uv_timer_init(&w.loop, &tick);
  uv_timer_start(&tick, wake_cb, 10, 10);
  assert_true(run_until(&w, saw_socket_error));
  uv_close((uv_handle_t *)&tick, NULL);

  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_true(w.srv.handshake && w.cli.handshake);
  exchange(&w, 1);
  world_free(&w);
}

static void test_quic_retry(void **state)
{
  struct world w;
  const struct quic_stats *st;
  (void)state;

  world_init(&w, 1, 0);
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_true(w.srv.handshake && w.cli.handshake);
  st = quic_endpoint_stats(w.server_ep);
  assert_int_equal(st->retry_sent, 1);
  assert_int_equal(st->retry_ok, 1);
  assert_int_equal(st->retry_fail, 0);
  world_free(&w);
}

/* The TLS exporter value both ends key punch checks from: equal at both
 * ends, not zero, none before the handshake; and the server finds the
 * connection by the connection ID the client sends to. */
static void test_quic_exporter(void **state)
{
  struct world w;
  static const uint8_t zero[QUIC_EXPORTER_LEN];
  uint8_t a[QUIC_EXPORTER_LEN], b[QUIC_EXPORTER_LEN];
  (void)state;

  world_init(&w, 0, 0);
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_int_equal(quic_conn_exporter(w.cli.c, a), ZTNA_ERR_STATE);
  assert_true(run_until(&w, both_up));
  assert_int_equal(quic_conn_exporter(w.cli.c, a), 0);
  assert_int_equal(quic_conn_exporter(w.srv.c, b), 0);
  assert_memory_equal(a, b, sizeof(a));
  assert_memory_not_equal(a, zero, sizeof(a));
  {
    /* The server finds the connection by the ID the client sends to. */
    uint8_t cid[20];
    size_t n = quic_conn_dcid(w.cli.c, cid, sizeof(cid));
    assert_ptr_equal(quic_endpoint_find_cid(w.server_ep, cid, n), w.srv.c);
    cid[0] ^= 0xff;
    assert_null(quic_endpoint_find_cid(w.server_ep, cid, n));
  }
  world_free(&w);
}

/* A server that restarts (a new endpoint on the same port with the same
 * secret) answers the old connection's next packet with a stateless
 * reset, and the client ends at once instead of after its idle timeout
 * (two minutes here). Before, the client's endpoint found no connection
 * for the reset's random connection ID and dropped it. */
static void test_quic_stateless_reset(void **state)
{
  static const uint8_t secret[32] = { 7, 7, 7 };
  static const uint8_t ping[] = "are you there";
  struct quic_endpoint_config cfg = { 0 };
  struct sockaddr_storage srv;
  struct world w;
  (void)state;

  secret_cfg = secret;
  world_init(&w, 0, 120000);
  secret_cfg = NULL;
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_false(w.cli.closed);
  /* The server goes without a word and comes back on its port. */
  quic_endpoint_local_addr(w.server_ep, &srv);
  quic_endpoint_del(w.server_ep);
  w.srv.c = NULL;
  uv_run(&w.loop, UV_RUN_NOWAIT);
  cfg.server_tls = w.server_tls;
  cfg.secret = secret;
  cfg.stateless_reset = 1;
  cfg.cbs = &server_cbs;
  cfg.ud = &w;
  assert_int_equal(quic_endpoint_new(&w.server_ep, &w.loop,
                                     (struct sockaddr *)&srv, &cfg), 0);
  assert_int_equal(quic_conn_send_datagram(w.cli.c, ping, sizeof(ping)), 0);
  assert_true(run_until(&w, client_closed));
  assert_int_equal(w.cli.info.reset, 1);
  assert_int_equal(w.cli.info.idle, 0);
  assert_int_equal(w.cli.info.local, 0);
  assert_true(quic_endpoint_stats(w.server_ep)->resets_sent >= 1);
  world_free(&w);
}

static void test_quic_idle_timeout(void **state)
{
  struct world w;
  (void)state;

  world_init(&w, 0, 300);
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_true(run_until(&w, both_closed));
  assert_int_equal(w.cli.info.idle, 1);
  assert_int_equal(w.srv.info.idle, 1);
  world_free(&w);
}

static void vn_recv_cb(uv_udp_t *h, ssize_t n, const uv_buf_t *buf,
                       const struct sockaddr *from, unsigned flags)
{
  int *got = h->data;
  (void)from;
  (void)flags;
  /* Long header, version 0: a Version Negotiation packet. */
  if (n >= 7 && (buf->base[0] & 0x80) && !buf->base[1] && !buf->base[2] &&
      !buf->base[3] && !buf->base[4])
    *got = 1;
}

static void vn_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
  static char b[2048];
  (void)h;
  (void)hint;
  *buf = uv_buf_init(b, sizeof(b));
}

static int vn_seen;
static int got_vn(struct world *w)
{
  (void)w;
  return vn_seen;
}

static void test_quic_version_negotiation(void **state)
{
  struct world w;
  struct sockaddr_storage srv;
  struct sockaddr_in any;
  uv_udp_t u;
  uint8_t pkt[1200] = { 0 };
  uv_buf_t b = uv_buf_init((char *)pkt, sizeof(pkt));
  (void)state;

  world_init(&w, 0, 0);
  quic_endpoint_local_addr(w.server_ep, &srv);
  uv_udp_init(&w.loop, &u);
  uv_ip4_addr("127.0.0.1", 0, &any);
  uv_udp_bind(&u, (struct sockaddr *)&any, 0);
  vn_seen = 0;
  u.data = &vn_seen;
  uv_udp_recv_start(&u, vn_alloc_cb, vn_recv_cb);
  /* An Initial-shaped packet of an unknown version 0x0a0a0a0a. */
  pkt[0] = 0xc0;
  pkt[1] = pkt[2] = pkt[3] = pkt[4] = 0x0a;
  pkt[5] = 8;
  memset(pkt + 6, 0x11, 8);
  pkt[14] = 8;
  memset(pkt + 15, 0x22, 8);
  assert_true(uv_udp_try_send(&u, &b, 1, (struct sockaddr *)&srv) > 0);
  assert_true(run_until(&w, got_vn));
  assert_int_equal(quic_endpoint_stats(w.server_ep)->vn_sent, 1);
  assert_int_equal(quic_endpoint_conn_count(w.server_ep), 0);
  uv_close((uv_handle_t *)&u, NULL);
  world_free(&w);
}

/* Runs a handshake that must fail and returns what the client saw. */
static void failing(struct world *w, const char *crt, const char *key,
                    const char *ca, const char *alpn, const char *sni)
{
  world_init(w, 0, 0);
  connect_client(w, crt, key, ca, alpn, sni);
  assert_true(run_until(w, client_closed));
  assert_false(w->srv.handshake);
  assert_false(w->cli.handshake);
}

/* --- HTTP/3 beside ztna-v1 ---------------------------------------------- */

static int h3_status;
static const char *h3_method = "GET";
static const char *h3_path = "/v1/x?y=1";
static char h3_body[256];
static size_t h3_len, h3_bad;
static char h3_seen_path[H3_PATH_MAX + 32];

static void test_h3_handler(struct quic_conn *c, const struct h3_request *rq,
                       struct h3_response *rs, void *ud)
{
  (void)c;
  (void)ud;
  snprintf(h3_seen_path, sizeof(h3_seen_path), "%s %s", rq->method,
           rq->path);
  rs->status = 207;
  rs->content_type = "text/plain";
  if (strstr(rq->path, "/big")) {
    /* Three times what quic.c buffers per stream: it must go out as
     * the client acknowledges. */
    rs->len = 3 * QUIC_STREAM_BUF_MAX + 17;
    rs->body = malloc(rs->len);
    for (size_t i = 0; i < rs->len; i++)
      rs->body[i] = (char)('a' + i % 23);
    return;
  }
  rs->body = strdup("hello over h3");
  rs->len = strlen(rs->body);
}

static void h3_server_closed(struct quic_conn *c, void *ud)
{
  (void)c;
  ((struct side *)ud)->closed = 1;
}

static void h3_srv_handshake(struct quic_conn *c, void *ud)
{
  struct side *s = ud;
  s->handshake = 1;
  if (quic_conn_is_h3(c))
    h3_server_attach(c, test_h3_handler, h3_server_closed, s);
}

static const struct quic_conn_cbs h3_srv_cbs = {
  .handshake_cb = h3_srv_handshake,
  .close_cb = close_cb,
};

static int h3_accept(struct quic_endpoint *ep, struct quic_conn *c, void *ud)
{
  struct world *w = ud;
  (void)ep;
  w->srv.c = c;
  quic_conn_set_cbs(c, &h3_srv_cbs, &w->srv);
  return 0;
}

static void h3_done_cb(int status, const uint8_t *body, size_t len,
                       const char *err, void *ud)
{
  (void)ud;
  h3_status = status ? status : -1;
  h3_len = len;
  h3_bad = 0;
  for (size_t i = 0; len > 1000 && i < len; i++)
    h3_bad += body[i] != (uint8_t)('a' + i % 23);
  if (status)
    snprintf(h3_body, sizeof(h3_body), "%.*s", (int)len, (const char *)body);
  else
    snprintf(h3_body, sizeof(h3_body), "error: %s", err);
}

static void h3_cli_handshake(struct quic_conn *c, void *ud)
{
  struct side *s = ud;
  s->handshake = 1;
  assert_true(quic_conn_is_h3(c));
  assert_int_equal(h3_client_request(c, h3_method, "ztna-server", h3_path,
                                     h3_done_cb, s), 0);
}

static const struct quic_conn_cbs h3_cli_cbs = {
  .handshake_cb = h3_cli_handshake,
  .close_cb = close_cb,
};

static int h3_answered(struct world *w)
{
  return h3_status != 0 || w->srv.closed;
}

/* One server offers ztna-v1 and h3: each client gets what it asked for,
 * and only h3 connections allow the unidirectional streams HTTP/3 needs
 * (nghttp3's control and QPACK streams open both ways, or no answer). */
static void test_quic_h3_beside_ztna(void **state)
{
  static const struct quic_endpoint_cbs cbs = { .accept_cb = h3_accept };
  struct world w;
  struct sockaddr_storage srv;
  int64_t sid;
  (void)state;

  server_alpn_cfg = TLS_ALPN "," TLS_ALPN_H3;
  world_init(&w, 0, 0);
  server_alpn_cfg = NULL;
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_true(w.srv.handshake && w.cli.handshake);
  assert_false(quic_conn_is_h3(w.srv.c));
  assert_false(quic_conn_is_h3(w.cli.c));
  assert_int_equal(quic_conn_open_uni_stream(w.cli.c, &sid), ZTNA_ERR_STATE);
  world_free(&w);

  /* GET gets the body; HEAD the same status and no content; a body
   * larger than the stream's send buffer arrives whole. */
  for (int k = 0; k < 3; k++) {
    h3_method = k == 1 ? "HEAD" : "GET";
    h3_path = k == 2 ? "/big" : "/v1/x?y=1";
    server_alpn_cfg = TLS_ALPN "," TLS_ALPN_H3;
    world_init(&w, 0, 0);
    server_alpn_cfg = NULL;
    quic_endpoint_del(w.server_ep);
    {
      struct quic_endpoint_config cfg = { 0 };
      struct sockaddr_in any;
      uv_ip4_addr("127.0.0.1", 0, &any);
      cfg.server_tls = w.server_tls;
      cfg.cbs = &cbs;
      cfg.ud = &w;
      assert_int_equal(quic_endpoint_new(&w.server_ep, &w.loop,
                                         (struct sockaddr *)&any, &cfg), 0);
    }
    tls_make(&w.client_tls, 0, cert("client.crt"), cert("client.key"),
             cert("ca.crt"), TLS_ALPN_H3);
    quic_endpoint_local_addr(w.server_ep, &srv);
    h3_status = 0;
    assert_int_equal(quic_connect(&w.cli.c, w.client_ep, w.client_tls,
                                  (struct sockaddr *)&srv, "ztna-server",
                                  &h3_cli_cbs, &w.cli), 0);
    assert_true(run_until(&w, h3_answered));
    assert_int_equal(h3_status, 207);
    if (k == 2) {
      assert_int_equal(h3_len, 3 * QUIC_STREAM_BUF_MAX + 17);
      assert_int_equal(h3_bad, 0);
    } else {
      assert_string_equal(h3_body, k ? "" : "hello over h3");
      assert_string_equal(h3_seen_path, k ? "HEAD /v1/x?y=1"
                                          : "GET /v1/x?y=1");
    }
    world_free(&w);
  }
  h3_method = "GET";
  h3_path = "/v1/x?y=1";
}

static void test_quic_wrong_alpn(void **state)
{
  struct world w;
  (void)state;
  failing(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
          "h3", "ztna-server");
  assert_int_equal(w.cli.info.err, ZTNA_ERR_ALPN);
  assert_int_equal(w.cli.info.tls_alert, 120); /* no_application_protocol */
  world_free(&w);
}

static void test_quic_untrusted_client(void **state)
{
  struct world w;
  (void)state;
  /* A client certificate from another CA: the server refuses it. */
  failing(&w, cert("other/rogue.crt"), cert("other/rogue.key"),
          cert("ca.crt"), NULL, "ztna-server");
  assert_int_equal(w.cli.info.err, ZTNA_ERR_CERT);
  assert_int_equal(w.cli.info.local, 0);
  assert_true(w.cli.info.tls_alert != 0);
  world_free(&w);
}

static void test_quic_untrusted_server(void **state)
{
  struct world w;
  (void)state;
  /* The client trusts another CA only: it refuses the server. */
  failing(&w, cert("client.crt"), cert("client.key"), cert("other/ca.crt"),
          NULL, "ztna-server");
  assert_int_equal(w.cli.info.err, ZTNA_ERR_CERT);
  assert_int_equal(w.cli.info.local, 1);
  world_free(&w);
}

static void test_quic_no_client_cert(void **state)
{
  struct world w;
  (void)state;
  failing(&w, NULL, NULL, cert("ca.crt"), NULL, "ztna-server");
  assert_int_equal(w.cli.info.err, ZTNA_ERR_CERT);
  assert_int_equal(w.cli.info.tls_alert, 116); /* certificate_required */
  world_free(&w);
}

static void test_quic_expired_client(void **state)
{
  struct world w;
  (void)state;
  failing(&w, cert("expired.crt"), cert("expired.key"), cert("ca.crt"), NULL,
          "ztna-server");
  assert_int_equal(w.cli.info.err, ZTNA_ERR_CERT);
  assert_int_equal(w.cli.info.local, 0);
  world_free(&w);
}

static void test_quic_expired_server(void **state)
{
  struct world w;
  (void)state;

  /* Swap the server's certificate for an expired one (as a reload would). */
  world_init(&w, 0, 0);
  tls_ctx_unref(w.server_tls);
  tls_make(&w.server_tls, 1, cert("expired-server.crt"),
           cert("expired-server.key"), cert("ca.crt"), NULL);
  quic_endpoint_set_server_tls(w.server_ep, w.server_tls);
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, client_closed));
  assert_false(w.cli.handshake);
  assert_int_equal(w.cli.info.err, ZTNA_ERR_CERT);
  assert_int_equal(w.cli.info.local, 1);
  world_free(&w);
}

static void test_quic_wrong_server_name(void **state)
{
  struct world w;
  (void)state;
  /* The server's certificate is not valid for the name asked for. */
  failing(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"), NULL,
          "ztna-connector");
  assert_int_equal(w.cli.info.err, ZTNA_ERR_CERT);
  world_free(&w);
}


/* --- a NAT that rebinds: a UDP forwarder whose outside socket changes -- */

struct nat {
  uv_udp_t inside, out1, out2;
  uv_udp_t *out;               /* the current outside socket */
  struct sockaddr_storage client, server;
  int have_client;
  int blackhole; /* drop everything */
};

static void nat_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
  static char b[65536];
  (void)h;
  (void)hint;
  *buf = uv_buf_init(b, sizeof(b));
}

static void nat_inside_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf,
                            const struct sockaddr *from, unsigned flags)
{
  struct nat *nat = h->data;
  uv_buf_t b = uv_buf_init(buf->base, (unsigned)n);
  (void)flags;
  if (n <= 0 || !from || nat->blackhole)
    return;
  memcpy(&nat->client, from, sizeof(struct sockaddr_in));
  nat->have_client = 1;
  uv_udp_try_send(nat->out, &b, 1, (struct sockaddr *)&nat->server);
}

static void nat_outside_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf,
                             const struct sockaddr *from, unsigned flags)
{
  struct nat *nat = h->data;
  uv_buf_t b = uv_buf_init(buf->base, (unsigned)n);
  (void)flags;
  (void)from;
  if (n <= 0 || !nat->have_client || nat->blackhole)
    return;
  uv_udp_try_send(&nat->inside, &b, 1, (struct sockaddr *)&nat->client);
}

static void nat_init(struct nat *nat, uv_loop_t *loop,
                     const struct sockaddr_storage *server)
{
  struct sockaddr_in any;
  uv_udp_t *socks[3] = { &nat->inside, &nat->out1, &nat->out2 };

  memset(nat, 0, sizeof(*nat));
  memcpy(&nat->server, server, sizeof(struct sockaddr_in));
  uv_ip4_addr("127.0.0.1", 0, &any);
  for (int i = 0; i < 3; i++) {
    uv_udp_init(loop, socks[i]);
    socks[i]->data = nat;
    assert_int_equal(uv_udp_bind(socks[i], (struct sockaddr *)&any, 0), 0);
    uv_udp_recv_start(socks[i], nat_alloc,
                      i == 0 ? nat_inside_recv : nat_outside_recv);
  }
  nat->out = &nat->out1;
}

static uint16_t sock_port(uv_udp_t *u)
{
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  uv_udp_getsockname(u, (struct sockaddr *)&ss, &len);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Connects the world's client to its server through a new nat. */
static void connect_via_nat(struct world *w, struct nat *nat)
{
  struct sockaddr_storage srv, front;
  int len = sizeof(front);

  quic_endpoint_local_addr(w->server_ep, &srv);
  nat_init(nat, &w->loop, &srv);
  uv_udp_getsockname(&nat->inside, (struct sockaddr *)&front, &len);
  tls_make(&w->client_tls, 0, cert("client.crt"), cert("client.key"),
           cert("ca.crt"), NULL);
  assert_int_equal(quic_connect(&w->cli.c, w->client_ep, w->client_tls,
                                (struct sockaddr *)&front, "ztna-server",
                                &side_cbs, &w->cli), 0);
  assert_true(run_until(w, both_up));
}

static int server_saw_rebind(struct world *w)
{
  return w->srv.path_changes > 0 || w->cli.closed;
}

static void test_quic_rebinding_observed(void **state)
{
  struct world w;
  struct nat nat;
  uint8_t ping[16] = { 0 };
  (void)state;

  world_init(&w, 0, 0);
  connect_via_nat(&w, &nat);
  assert_true(w.srv.handshake);
  /* The server observes the NAT's outside address, not the client's. */
  assert_int_equal(ntohs(((struct sockaddr_in *)&w.srv.peer_addr)->sin_port),
                   sock_port(&nat.out1));
  assert_int_equal(w.srv.path_changes, 0);

  /* The NAT rebinds: the same client now comes from another port. */
  nat.out = &nat.out2;
  fill_dgram(ping, 1, sizeof(ping));
  assert_int_equal(quic_conn_send_datagram(w.cli.c, ping, sizeof(ping)), 0);
  assert_true(run_until(&w, server_saw_rebind));
  assert_false(w.cli.closed);
  assert_int_equal(w.srv.path_changes, 1);
  assert_int_equal(ntohs(((struct sockaddr_in *)&w.srv.new_peer)->sin_port),
                   sock_port(&nat.out2));
  assert_int_equal(ntohs(((const struct sockaddr_in *)quic_conn_peer(w.srv.c))
                             ->sin_port),
                   sock_port(&nat.out2));
  /* The connection still carries data both ways on the new path. */
  w.srv.received = w.cli.received = 0;
  memset(w.srv.seen, 0, NDGRAMS);
  memset(w.cli.seen, 0, NDGRAMS);
  fill_dgram(ping, 2, sizeof(ping));
  assert_int_equal(quic_conn_send_datagram(w.cli.c, ping, sizeof(ping)), 0);
  assert_int_equal(quic_conn_send_datagram(w.srv.c, ping, sizeof(ping)), 0);
  assert_true(run_until(&w, got_one_each));

  uv_close((uv_handle_t *)&nat.inside, NULL);
  uv_close((uv_handle_t *)&nat.out1, NULL);
  uv_close((uv_handle_t *)&nat.out2, NULL);
  world_free(&w);
}

static uint64_t silence_min;

static int client_silent(struct world *w)
{
  return quic_conn_silence_ms(w->cli.c) >= silence_min || w->cli.closed;
}

static int client_heard(struct world *w)
{
  return quic_conn_silence_ms(w->cli.c) == 0 || w->cli.closed;
}

static void wait_ms(struct world *w, uint64_t ms)
{
  uv_timer_t t;
  int expired = 0;

  uv_timer_init(&w->loop, &t);
  t.data = &expired;
  uv_timer_start(&t, timeout_cb, ms, 0);
  while (!expired)
    uv_run(&w->loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&w->loop, UV_RUN_NOWAIT);
}

/* quic_conn_silence_ms: 0 while nothing is owed, even after a long idle
 * spell; grows when the path goes dark with something outstanding; back
 * to 0 once the path carries answers again. */
static void test_quic_silence(void **state)
{
  struct world w;
  struct nat nat;
  uint8_t ping[16];
  (void)state;

  world_init(&w, 0, 0);
  connect_via_nat(&w, &nat);
  assert_true(run_until(&w, client_heard));
  /* Idle for a while, then one datagram: no alarm while its answer is on
   * its way. */
  wait_ms(&w, 600);
  assert_int_equal(quic_conn_silence_ms(w.cli.c), 0);
  fill_dgram(ping, 1, sizeof(ping));
  assert_int_equal(quic_conn_send_datagram(w.cli.c, ping, sizeof(ping)), 0);
  assert_true(quic_conn_silence_ms(w.cli.c) < 100);
  assert_true(run_until(&w, client_heard));
  /* The path goes dark with a datagram outstanding. */
  nat.blackhole = 1;
  fill_dgram(ping, 2, sizeof(ping));
  assert_int_equal(quic_conn_send_datagram(w.cli.c, ping, sizeof(ping)), 0);
  silence_min = 400;
  assert_true(run_until(&w, client_silent));
  assert_false(w.cli.closed);
  /* Light again: ngtcp2's probes get answered. */
  nat.blackhole = 0;
  assert_true(run_until(&w, client_heard));
  assert_false(w.cli.closed);

  uv_close((uv_handle_t *)&nat.inside, NULL);
  uv_close((uv_handle_t *)&nat.out1, NULL);
  uv_close((uv_handle_t *)&nat.out2, NULL);
  world_free(&w);
}

#define MAX_CIDS 64

/* The distinct DCIDs one end has put on its packets. */
struct cidset {
  uint8_t cid[MAX_CIDS][QUIC_SCID_LEN];
  size_t n;
};

static struct cidset cids_cli, cids_srv;

static void cidset_sample(struct cidset *s, struct quic_conn *c)
{
  uint8_t d[QUIC_SCID_LEN];

  if (!c || quic_conn_dcid(c, d, sizeof(d)) != QUIC_SCID_LEN)
    return;
  for (size_t i = 0; i < s->n; i++)
    if (!memcmp(s->cid[i], d, sizeof(d)))
      return;
  if (s->n < MAX_CIDS)
    memcpy(s->cid[s->n++], d, sizeof(d));
}

static int rotated_thrice(struct world *w)
{
  const struct quic_stats *cs = quic_endpoint_stats(w->client_ep);
  const struct quic_stats *ss = quic_endpoint_stats(w->server_ep);
  return (transfer_done(w) && cs->cid_rotations >= 3 &&
          ss->cid_rotations >= 3 && cids_cli.n >= 4 && cids_srv.n >= 4) ||
         w->cli.closed || w->srv.closed;
}

/* Every 20 ms: note the DCIDs in use and keep a little traffic going, so
 * the server has packets to follow the client with. */
static void tick_cb(uv_timer_t *t)
{
  struct world *w = t->data;
  uint8_t ping[16];

  fill_dgram(ping, 0, sizeof(ping));
  if (w->cli.c && !w->cli.closed) {
    cidset_sample(&cids_cli, w->cli.c);
    quic_conn_send_datagram(w->cli.c, ping, sizeof(ping));
  }
  if (w->srv.c && !w->srv.closed) {
    cidset_sample(&cids_srv, w->srv.c);
    quic_conn_send_datagram(w->srv.c, ping, sizeof(ping));
  }
}

/* Both ends move to new connection IDs on a timer (protocol.md 1: every
 * 300 s; 100 ms here) while 10,000 DATAGRAMs each way and 1 MiB on a
 * stream go through: each end addresses its peer by several IDs in turn,
 * and nothing is lost or corrupted. */
static void test_quic_cid_rotation(void **state)
{
  struct world w;
  uv_timer_t tick;
  (void)state;

  rotate_ms = 100;
  world_init(&w, 0, 0);
  rotate_ms = 0;
  connect_client(&w, cert("client.crt"), cert("client.key"), cert("ca.crt"),
                 NULL, "ztna-server");
  assert_true(run_until(&w, both_up));
  assert_true(w.srv.handshake && w.cli.handshake);

  assert_int_equal(quic_conn_open_stream(w.cli.c, &w.cli.sid), 0);
  w.srv.echo_stream = 1;
  w.pump = 1;
  uv_idle_start(&w.idle, idle_cb);
  uv_timer_init(&w.loop, &tick);
  tick.data = &w;
  uv_timer_start(&tick, tick_cb, 0, 20);
  if (!run_until(&w, rotated_thrice))
    fail_msg("rotations client %llu server %llu, DCIDs client %zu, server "
             "%zu, datagrams %u/%u, stream %zu/%zu, closed %d/%d",
             (unsigned long long)quic_endpoint_stats(w.client_ep)
                 ->cid_rotations,
             (unsigned long long)quic_endpoint_stats(w.server_ep)
                 ->cid_rotations,
             cids_cli.n, cids_srv.n, w.srv.received, w.cli.received,
             w.srv.stream_rx, w.cli.stream_rx, w.cli.closed, w.srv.closed);
  uv_timer_stop(&tick);
  uv_idle_stop(&w.idle);
  assert_false(w.cli.closed);
  assert_false(w.srv.closed);
  assert_int_equal(w.srv.bad + w.cli.bad, 0);
  assert_int_equal(w.srv.received, NDGRAMS);
  assert_int_equal(w.cli.received, NDGRAMS);
  assert_int_equal(w.srv.stream_rx, STREAM_BYTES);
  assert_int_equal(w.cli.stream_rx, STREAM_BYTES);
  assert_int_equal(w.srv.stream_bad + w.cli.stream_bad, 0);
  /* The second name the connection moves to is never seen by the peer:
   * the server still sees the client's one socket. */
  assert_int_equal(w.srv.path_changes, 0);
  assert_int_equal(w.cli.path_changes, 0);

  uv_close((uv_handle_t *)&tick, NULL);
  world_free(&w);
}

/* --- virtual paths: a stand-in for the relay -------------------------------- */

#define VQ_MAX 4096
struct vpkt {
  int to_server;
  size_t n;
  uint8_t d[1500];
};
static struct vpkt *vq;
static size_t vq_len, vq_dropped;
static int relay_dark;
static uint64_t relay_carried;

/* Packets for a virtual address are queued like a relay would carry them
 * (asynchronously, in order) and delivered on the next loop turn. */
static int vsend(struct quic_endpoint *ep, const struct sockaddr *to,
                 const uint8_t *d, size_t n, void *ud)
{
  struct world *w = ud;
  uint64_t id;

  assert_true(quic_addr_virtual(to, &id));
  assert_int_equal(id, 42);
  assert_true(n <= QUIC_VIRTUAL_MAX_UDP_PAYLOAD);
  if (relay_dark || vq_len >= VQ_MAX) {
    vq_dropped++;
    return 0;
  }
  vq[vq_len].to_server = ep == w->client_ep;
  vq[vq_len].n = n;
  memcpy(vq[vq_len].d, d, n);
  vq_len++;
  return 0;
}

static void vq_deliver(struct world *w)
{
  static struct vpkt batch[64];
  struct sockaddr_storage from;

  while (vq_len) {
    size_t k = vq_len < 64 ? vq_len : 64;
    memcpy(batch, vq, k * sizeof(*vq));
    memmove(vq, vq + k, (vq_len - k) * sizeof(*vq));
    vq_len -= k;
    for (size_t i = 0; i < k; i++) {
      relay_carried++;
      if (batch[i].to_server) {
        quic_virtual_addr(&from, 42, QUIC_VIRTUAL_LOCAL_PORT);
        quic_endpoint_input(w->server_ep, batch[i].d, batch[i].n,
                            (struct sockaddr *)&from);
      } else {
        quic_virtual_addr(&from, 42, QUIC_VIRTUAL_PEER_PORT);
        quic_endpoint_input(w->client_ep, batch[i].d, batch[i].n,
                            (struct sockaddr *)&from);
      }
    }
  }
}

static void vidle_cb(uv_idle_t *h)
{
  struct world *w = h->data;
  vq_deliver(w);
  if (w->pump) {
    pump(&w->cli);
    pump(&w->srv);
    pump_stream(&w->cli);
  }
}

static int stream_at(struct world *w, size_t bytes)
{
  return w->cli.stream_rx >= bytes || w->cli.closed || w->srv.closed;
}
static int at_third(struct world *w) { return stream_at(w, STREAM_BYTES / 3); }
static int at_two_thirds(struct world *w)
{
  return stream_at(w, 2 * STREAM_BYTES / 3);
}

static int both_real(struct world *w)
{
  return (!quic_conn_path_virtual(w->cli.c) &&
          !quic_conn_path_virtual(w->srv.c) && w->srv.path_changes) ||
         w->cli.closed || w->srv.closed;
}

static int both_virtual(struct world *w)
{
  return (quic_conn_path_virtual(w->cli.c) &&
          quic_conn_path_virtual(w->srv.c)) ||
         w->cli.closed || w->srv.closed;
}

static int stream_done(struct world *w)
{
  return (w->cli.stream_fin && w->srv.stream_fin &&
          w->cli.sent == NDGRAMS && w->srv.sent == NDGRAMS) ||
         w->cli.closed || w->srv.closed;
}

/* One connection, made through a stand-in for the relay (a virtual
 * path), moves to the direct UDP path by QUIC path migration and back,
 * during one transfer: the stream arrives whole, nothing is reset, the
 * packets fit the relay, and a path to an address that does not answer
 * under the connection's keys never becomes the path. */
static void test_quic_virtual_path_migration(void **state)
{
  struct world w;
  struct sockaddr_storage via, srv_real, nowhere;
  uv_udp_t mute;
  struct sockaddr_in any;
  uint64_t carried;
  (void)state;

  vq = calloc(VQ_MAX, sizeof(*vq));
  vq_len = vq_dropped = 0;
  relay_dark = 0;
  relay_carried = 0;
  vsend_cfg = vsend;
  world_init(&w, 1, 0); /* Retry too: tokens for a virtual address */
  vsend_cfg = NULL;
  uv_idle_stop(&w.idle);
  uv_idle_start(&w.idle, vidle_cb);
  tls_make(&w.client_tls, 0, cert("client.crt"), cert("client.key"),
           cert("ca.crt"), NULL);
  quic_virtual_addr(&via, 42, QUIC_VIRTUAL_PEER_PORT);
  assert_int_equal(quic_connect(&w.cli.c, w.client_ep, w.client_tls,
                                (struct sockaddr *)&via, "ztna-server",
                                &side_cbs, &w.cli), 0);
  assert_true(run_until(&w, both_up));
  assert_true(w.srv.handshake && w.cli.handshake);
  /* The server knows the client by the virtual address, and no packet
   * touched the network. */
  assert_true(quic_addr_virtual((struct sockaddr *)&w.srv.peer_addr, NULL));
  assert_true(quic_conn_path_virtual(w.cli.c));
  assert_int_equal(quic_endpoint_stats(w.client_ep)->tx_packets, 0);
  assert_int_equal(quic_endpoint_stats(w.server_ep)->tx_packets, 0);
  assert_true(relay_carried > 0);
  /* 1350-byte packets on every path: 1306-byte datagrams. */
  assert_int_equal(quic_conn_max_datagram(w.cli.c), 1306);

  assert_int_equal(quic_conn_open_stream(w.cli.c, &w.cli.sid), 0);
  w.srv.echo_stream = 1;
  w.pump = 1;
  assert_true(run_until(&w, at_third));

  /* A path to a socket that never answers is validated and refused: the
   * connection stays on the relay and goes on. */
  uv_ip4_addr("127.0.0.1", 0, &any);
  uv_udp_init(&w.loop, &mute);
  assert_int_equal(uv_udp_bind(&mute, (struct sockaddr *)&any, 0), 0);
  {
    int len = sizeof(nowhere);
    uv_udp_getsockname(&mute, (struct sockaddr *)&nowhere, &len);
  }
  assert_int_equal(quic_conn_migrate(w.cli.c, (struct sockaddr *)&nowhere, 1),
                   0);
  wait_ms(&w, 3000);
  assert_false(w.cli.closed);
  assert_true(quic_conn_path_virtual(w.cli.c));

  /* To the direct path: validated, then both ends are on it. */
  quic_endpoint_local_addr(w.server_ep, &srv_real);
  assert_int_equal(quic_conn_migrate(w.cli.c, (struct sockaddr *)&srv_real, 1),
                   0);
  assert_true(run_until(&w, both_real));
  assert_false(w.cli.closed || w.srv.closed);
  assert_int_equal(((struct sockaddr_in *)&w.cli.new_peer)->sin_port,
                   ((struct sockaddr_in *)&srv_real)->sin_port);
  assert_true(quic_endpoint_stats(w.client_ep)->tx_packets > 0);
  assert_true(quic_endpoint_stats(w.server_ep)->rx_packets > 0);
  /* The relay goes dark: the transfer goes on directly. */
  relay_dark = 1;
  carried = relay_carried;
  assert_true(run_until(&w, at_two_thirds));
  assert_false(w.cli.closed);
  relay_dark = 0;

  /* Back to the relay at once (what a silent direct path gets). */
  assert_int_equal(quic_conn_migrate(w.cli.c, (struct sockaddr *)&via, 0), 0);
  assert_true(run_until(&w, both_virtual));
  assert_true(run_until(&w, stream_done));
  assert_false(w.cli.closed || w.srv.closed);
  assert_true(relay_carried > carried);
  assert_int_equal(w.cli.stream_rx, STREAM_BYTES);
  assert_int_equal(w.srv.stream_rx, STREAM_BYTES);
  assert_int_equal(w.srv.stream_bad + w.cli.stream_bad, 0);
  assert_int_equal(w.srv.bad + w.cli.bad, 0);
  assert_true(w.cli.received > 0 && w.srv.received > 0);

  uv_close((uv_handle_t *)&mute, NULL);
  uv_idle_stop(&w.idle);
  world_free(&w);
  free(vq);
}

int main(void)
{
  const char *d = getenv("ZTNA_TEST_CERTS");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_quic_transfer),
    cmocka_unit_test(test_quic_server_drops_tls),
    cmocka_unit_test(test_quic_forged_key_phase),
    cmocka_unit_test_teardown(test_quic_no_probe_rtt_at_the_minimum,
                              trace_restore),
    cmocka_unit_test(test_quic_socket_error_keeps_reading),
    cmocka_unit_test(test_quic_retry),
    cmocka_unit_test(test_quic_exporter),
    cmocka_unit_test(test_quic_h3_beside_ztna),
    cmocka_unit_test(test_quic_half_open_flood),
    cmocka_unit_test(test_quic_rebinding_observed),
    cmocka_unit_test(test_quic_cid_rotation),
    cmocka_unit_test(test_quic_silence),
    cmocka_unit_test(test_quic_stateless_reset),
    cmocka_unit_test(test_quic_idle_timeout),
    cmocka_unit_test(test_quic_version_negotiation),
    cmocka_unit_test(test_quic_wrong_alpn),
    cmocka_unit_test(test_quic_untrusted_client),
    cmocka_unit_test(test_quic_untrusted_server),
    cmocka_unit_test(test_quic_no_client_cert),
    cmocka_unit_test(test_quic_expired_client),
    cmocka_unit_test(test_quic_expired_server),
    cmocka_unit_test(test_quic_wrong_server_name),
    cmocka_unit_test(test_quic_virtual_path_migration),
  };

  if (!d) {
    fprintf(stderr, "quic_test: set ZTNA_TEST_CERTS to the directory made "
            "by 'make build/test/certs/.done'\n");
    return 1;
  }
  snprintf(cert_dir, sizeof(cert_dir), "%s", d);
  return cmocka_run_group_tests_name("quic", tests, NULL, NULL);
}
