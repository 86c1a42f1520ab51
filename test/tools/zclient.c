/* zclient.c - a test client on ztna's own quic and wire modules, driven by
 * the e2e tests one line at a time.
 *
 * usage: zclient --server IP:PORT --ca FILE [--cert FILE --key FILE]
 *                [--sni NAME] [--bind IP:PORT]
 *
 * Commands on stdin:            Events on stdout:
 *   reg agent|connector ID        up CN            handshake done
 *   raw HEX       (a DATAGRAM)    qad IP PORT      observed address
 *   routed ID HEX (0x2F + HEX)    ack ID | nack STATUS HEXID
 *   sig HEX       (stream bytes)  dgram HEX        any other DATAGRAM
 *   close CODE REASON             sig HEX          signaling bytes
 *   quit                          closed LOCAL APP CODE ALERT REASON
 *                                 err MESSAGE      a command failed
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "config.h"
#include "err.h"
#include "quic.h"
#include "tls.h"
#include "wire.h"

struct client {
  uv_loop_t *loop;
  uv_pipe_t in;
  struct quic_endpoint *ep;
  struct tls_ctx *tls;
  struct quic_conn *c;
  int64_t sid;
  char line[200000];
  size_t len;
};

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

static void hex_out(const char *tag, const uint8_t *d, size_t n)
{
  char *s = malloc(2 * n + 1);
  for (size_t i = 0; i < n; i++)
    sprintf(s + 2 * i, "%02x", d[i]);
  s[2 * n] = '\0';
  emit("%s %s", tag, s);
  free(s);
}

static size_t hex_in(const char *s, uint8_t *out, size_t cap)
{
  size_t n = 0;
  while (s[0] && s[1] && n < cap) {
    unsigned v;
    if (sscanf(s, "%2x", &v) != 1)
      break;
    out[n++] = (uint8_t)v;
    s += 2;
  }
  return n;
}

static void on_handshake(struct quic_conn *c, void *ud)
{
  struct tls_identity id;
  char sans[2048] = "";
  size_t o = 0;
  (void)ud;
  quic_conn_peer_identity(c, &id);
  for (size_t i = 0; i < id.ndns && o < sizeof(sans) - 300; i++)
    o += (size_t)snprintf(sans + o, sizeof(sans) - o, "%s%s", i ? "," : "",
                          id.dns[i]);
  emit("up %s %s", id.cn, sans);
}

static void on_datagram(struct quic_conn *c, const uint8_t *d, size_t n,
                        void *ud)
{
  struct sockaddr_storage ss;
  const uint8_t *id;
  size_t idlen;
  uint8_t type, status;
  char ip[64], hid[600];
  (void)c;
  (void)ud;

  if (wire_classify(d, n) == WIRE_KIND_QAD &&
      wire_qad_decode(d, n, &ss) == 0) {
    int port;
    if (ss.ss_family == AF_INET) {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    emit("qad %s %d", ip, port);
    return;
  }
  if ((wire_classify(d, n) == WIRE_KIND_ACK ||
       wire_classify(d, n) == WIRE_KIND_NACK) &&
      wire_status_decode(d, n, &type, &status, &id, &idlen) == 0) {
    for (size_t i = 0; i < idlen; i++)
      sprintf(hid + 2 * i, "%02x", id[i]);
    hid[2 * idlen] = '\0';
    if (type == WIRE_REG_ACK)
      emit("ack %.*s", (int)idlen, (const char *)id);
    else
      emit("nack %u %s", status, idlen ? hid : "-");
    return;
  }
  hex_out("dgram", d, n);
}

static void on_stream(struct quic_conn *c, int64_t sid, const uint8_t *d,
                      size_t n, int fin, void *ud)
{
  struct client *cl = ud;
  (void)c;
  (void)fin;
  if (cl->sid < 0 && !(sid & 0x2))
    cl->sid = sid; /* the intermediate opened one toward us (h3's
                      unidirectional streams take no bytes from us) */
  if (n)
    hex_out("sig", d, n);
}

static void on_close(struct quic_conn *c, const struct quic_close_info *i,
                     void *ud)
{
  struct client *cl = ud;
  (void)c;
  emit("closed %d %d %llu %u %s", i->local, i->app,
       (unsigned long long)i->code, i->tls_alert,
       i->reason[0] ? i->reason : "-");
  cl->c = NULL;
}

static const struct quic_conn_cbs cbs = {
  .handshake_cb = on_handshake,
  .datagram_cb = on_datagram,
  .stream_cb = on_stream,
  .close_cb = on_close,
};

static void command(struct client *cl, char *line)
{
  static uint8_t buf[70000];
  char *arg = strchr(line, ' ');
  size_t n;
  int rv = 0;

  if (arg)
    *arg++ = '\0';
  if (!strcmp(line, "quit")) {
    if (cl->c)
      quic_conn_close(cl->c, 0, "bye");
    uv_read_stop((uv_stream_t *)&cl->in);
    uv_close((uv_handle_t *)&cl->in, NULL);
    quic_endpoint_del(cl->ep);
    return;
  }
  if (!cl->c) {
    emit("err not connected");
    return;
  }
  if (!strcmp(line, "reg") && arg) {
    char *id = strchr(arg, ' ');
    if (!id) {
      emit("err reg ROLE ID");
      return;
    }
    *id++ = '\0';
    rv = wire_register_encode(buf, sizeof(buf),
                              !strcmp(arg, "agent") ? WIRE_REG_AGENT
                                                    : WIRE_REG_CONNECTOR,
                              id, strlen(id));
    if (rv > 0)
      rv = quic_conn_send_datagram(cl->c, buf, (size_t)rv);
  } else if (!strcmp(line, "raw") && arg) {
    n = hex_in(arg, buf, sizeof(buf));
    rv = quic_conn_send_datagram(cl->c, buf, n);
  } else if (!strcmp(line, "routed") && arg) {
    char *hex = strchr(arg, ' ');
    int h;
    if (!hex) {
      emit("err routed ID HEX");
      return;
    }
    *hex++ = '\0';
    h = wire_routed_encode_header(buf, sizeof(buf), arg, strlen(arg));
    n = hex_in(hex, buf + h, sizeof(buf) - (size_t)h);
    rv = quic_conn_send_datagram(cl->c, buf, (size_t)h + n);
  } else if (!strcmp(line, "sig") && arg) {
    n = hex_in(arg, buf, sizeof(buf));
    if (cl->sid < 0)
      rv = quic_conn_open_stream(cl->c, &cl->sid);
    if (rv == 0)
      rv = quic_conn_stream_send(cl->c, cl->sid, buf, n, 0);
  } else if (!strcmp(line, "close")) {
    quic_conn_close(cl->c, arg ? strtoull(arg, NULL, 10) : 0,
                    arg && strchr(arg, ' ') ? strchr(arg, ' ') + 1 : "");
  } else {
    emit("err unknown command %s", line);
    return;
  }
  if (rv < 0)
    emit("err %s", ztna_strerror(rv));
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
  struct client *cl = h->data;
  (void)hint;
  *b = uv_buf_init(cl->line + cl->len,
                   (unsigned)(sizeof(cl->line) - 1 - cl->len));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
  struct client *cl = s->data;
  char *nl;
  (void)b;

  if (nread < 0) {
    command(cl, (char[]){ "quit" });
    return;
  }
  cl->len += (size_t)nread;
  cl->line[cl->len] = '\0';
  while ((nl = strchr(cl->line, '\n'))) {
    *nl = '\0';
    command(cl, cl->line);
    if (uv_is_closing((uv_handle_t *)&cl->in))
      return;
    memmove(cl->line, nl + 1, cl->len - (size_t)(nl + 1 - cl->line) + 1);
    cl->len -= (size_t)(nl + 1 - cl->line);
  }
}

/* IP:PORT or [IPv6]:PORT; port 0 is allowed (any port for --bind). */
static int parse_addr(const char *s, struct sockaddr_storage *ss)
{
  char host[256];
  const char *colon = strrchr(s, ':');
  size_t hl;
  int port;

  if (!colon || colon == s)
    return -1;
  hl = (size_t)(colon - s);
  if (s[0] == '[' && colon[-1] == ']') {
    s++;
    hl -= 2;
  }
  if (hl >= sizeof(host))
    return -1;
  memcpy(host, s, hl);
  host[hl] = '\0';
  port = atoi(colon + 1);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
}

int main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "server", required_argument, NULL, 's' },
    { "cert", required_argument, NULL, 'c' },
    { "key", required_argument, NULL, 'k' },
    { "ca", required_argument, NULL, 'a' },
    { "sni", required_argument, NULL, 'n' },
    { "bind", required_argument, NULL, 'b' },
    { "alpn", required_argument, NULL, 'l' },
    { NULL, 0, NULL, 0 },
  };
  struct client cl = { 0 };
  struct tls_config tc;
  struct quic_endpoint_config qc = { 0 };
  struct sockaddr_storage server, bind;
  const char *srv = NULL, *sni = "ztna-server", *bindarg = "0.0.0.0:0";
  char err[512];
  int ch, rv;

  tls_config_init(&tc);
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
    case 's': srv = optarg; break;
    case 'c': tc.cert_file = optarg; break;
    case 'k': tc.key_file = optarg; break;
    case 'a': tc.ca_file = optarg; break;
    case 'n': sni = optarg; break;
    case 'b': bindarg = optarg; break;
    case 'l': tc.alpn = optarg; break;
    default: return 2;
    }
  }
  if (!srv || parse_addr(srv, &server) < 0 || parse_addr(bindarg, &bind) < 0) {
    fprintf(stderr, "zclient: --server IP:PORT (and --bind IP:PORT)\n");
    return 2;
  }
  if (tls_ctx_new(&cl.tls, 0, &tc, err, sizeof(err)) < 0) {
    fprintf(stderr, "zclient: %s\n", err);
    return 2;
  }
  cl.loop = uv_default_loop();
  cl.sid = -1;
  qc.keepalive_ms = 10000;
  rv = quic_endpoint_new(&cl.ep, cl.loop, (struct sockaddr *)&bind, &qc);
  if (rv < 0) {
    fprintf(stderr, "zclient: bind: %s\n", ztna_strerror(rv));
    return 2;
  }
  rv = quic_connect(&cl.c, cl.ep, cl.tls, (struct sockaddr *)&server, sni,
                    &cbs, &cl);
  if (rv < 0) {
    fprintf(stderr, "zclient: connect: %s\n", ztna_strerror(rv));
    return 2;
  }
  uv_pipe_init(cl.loop, &cl.in, 0);
  uv_pipe_open(&cl.in, 0);
  cl.in.data = &cl;
  uv_read_start((uv_stream_t *)&cl.in, alloc_cb, read_cb);
  uv_run(cl.loop, UV_RUN_DEFAULT);
  tls_ctx_unref(cl.tls);
  return 0;
}
