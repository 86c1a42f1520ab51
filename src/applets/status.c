/* status.c - `ztna diag status` and `ztna diag api`: the status and admin
 * API (docs/api.md) from the command line.
 *
 * Locally it asks a daemon's metrics listener over plain HTTP/1.1 (no
 * certificate needed; read-only). With --server it speaks HTTP/3 to an
 * intermediate's or a connector's QUIC port with an admin certificate:
 * the same connection kind as the daemons' own, verified the same way
 * (the server's certificate must chain to --ca and carry the
 * intermediate's or a connector's name).
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <uv.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include "../applets.h"
#include "config.h"
#include "err.h"
#include "h3.h"
#include "identity.h"
#include "log.h"
#include "netaddr.h"
#include "quic.h"
#include "tls.h"

#define FETCH_TIMEOUT_MS 10000
#define LOCAL_MAX (4 * 1024 * 1024)

static const char status_usage[] =
    "Usage: ztna diag status [--local HOST:PORT] [--json]\n"
    "       ztna diag status --server HOST:PORT --cert FILE --key FILE\n"
    "                        --ca FILE [--json]\n"
    "       ztna diag api [--local HOST:PORT | --server HOST:PORT --cert FILE\n"
    "                     --key FILE --ca FILE] METHOD PATH\n"
    "\n"
    "What a running daemon is doing: its peers, services, paths and\n"
    "limits (docs/api.md).\n"
    "\n"
    "Without --server, asks the daemons on this machine through their\n"
    "local metrics listeners (the intermediate's 9090, the connector's 9091,\n"
    "and 9092: the agent has no metrics port unless given one; or --local),\n"
    "read-only and without certificates.\n"
    "With --server, asks an intermediate or connector over HTTP/3 on its\n"
    "QUIC port with an admin certificate (ztna keygen issue --role admin).\n"
    "\n"
    "  --local H:P     one local listener\n"
    "  --server H:P    an intermediate's or connector's QUIC port\n"
    "  --cert FILE     the admin certificate\n"
    "  --key FILE      its key\n"
    "  --ca FILE       the CA the server's certificate chains to\n"
    "  --json          the JSON as the daemon sent it\n"
    "  -v, --verbose   more logging\n"
    "  -h, --help      this text\n"
    "\n"
    "diag api sends one request (GET /v1/peers/alice, DELETE\n"
    "/v1/peers/alice?reason=lost+laptop, POST /v1/reload) and prints the\n"
    "answer.\n"
    "\n"
    "Exit status: 0 answered with 2xx, 1 usage error or no answer, 2 the\n"
    "daemon answered with an error (4xx or 5xx; the answer says why).\n";

static int usage_error(const char *fmt, const char *arg)
{
  return applet_usage_error("diag", fmt, arg);
}

struct answer {
  int status;
  char *body;
  size_t len;
  char err[600];
};

/* --- local: HTTP/1.1 to a metrics listener -------------------------------- */

static int wait_fd(int fd, short ev, uint64_t deadline)
{
  struct pollfd p = { .fd = fd, .events = ev };
  uint64_t now = uv_hrtime() / 1000000;
  int ms = deadline > now ? (int)(deadline - now) : 0;
  return poll(&p, 1, ms) == 1 ? 0 : -1;
}

static int fetch_local(const struct sockaddr *sa, const char *method,
                       const char *path, struct answer *out)
{
  uint64_t deadline = uv_hrtime() / 1000000 + FETCH_TIMEOUT_MS;
  char req[1400], a[64];
  size_t cap = 65536, len = 0;
  char *buf = NULL, *p;
  int fd, n;

  memset(out, 0, sizeof(*out));
  fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    snprintf(out->err, sizeof(out->err), "socket: %s", strerror(errno));
    return -1;
  }
  if (connect(fd, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : sizeof(struct sockaddr_in)) <
          0 &&
      errno != EINPROGRESS)
    goto fail;
  if (wait_fd(fd, POLLOUT, deadline) < 0)
    goto timeout;
  {
    int e = 0;
    socklen_t el = sizeof(e);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el);
    if (e) {
      errno = e;
      goto fail;
    }
  }
  n = snprintf(req, sizeof(req),
               "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
               method, path, netaddr_str(sa, a, sizeof(a)));
  if (n < 0 || (size_t)n >= sizeof(req)) {
    snprintf(out->err, sizeof(out->err), "the path is too long");
    close(fd);
    return -1;
  }
  if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
    goto fail;
  buf = malloc(cap + 1);
  if (!buf)
    goto fail;
  for (;;) {
    ssize_t r;
    if (wait_fd(fd, POLLIN, deadline) < 0)
      goto timeout;
    r = recv(fd, buf + len, cap - len, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    if (r < 0)
      goto fail;
    if (r == 0)
      break;
    len += (size_t)r;
    if (len == cap) {
      char *nb;
      if (cap >= LOCAL_MAX) {
        snprintf(out->err, sizeof(out->err), "answer larger than %d bytes",
                 LOCAL_MAX);
        goto out;
      }
      cap *= 2;
      nb = realloc(buf, cap + 1);
      if (!nb)
        goto fail;
      buf = nb;
    }
  }
  close(fd);
  buf[len] = '\0';
  if (sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1 ||
      !(p = strstr(buf, "\r\n\r\n"))) {
    snprintf(out->err, sizeof(out->err), "not an HTTP answer");
    free(buf);
    return -1;
  }
  p += 4;
  out->len = len - (size_t)(p - buf);
  out->body = malloc(out->len + 1);
  if (!out->body) {
    free(buf);
    return -1;
  }
  memcpy(out->body, p, out->len);
  out->body[out->len] = '\0';
  free(buf);
  return 0;

timeout:
  snprintf(out->err, sizeof(out->err), "no answer within %d s",
           FETCH_TIMEOUT_MS / 1000);
  goto out;
fail:
  snprintf(out->err, sizeof(out->err), "%s", strerror(errno));
out:
  free(buf);
  close(fd);
  return -1;
}

/* --- remote: HTTP/3 ---------------------------------------------------------- */

struct h3ctx {
  uv_loop_t *loop;
  struct quic_endpoint *ep;
  struct quic_conn *c;
  uv_timer_t timer;
  const char *method, *path;
  char authority[300];
  struct answer *out;
  int done;
};

static void h3_answer(int status, const uint8_t *body, size_t len,
                      const char *err, void *ud)
{
  struct h3ctx *x = ud;

  x->done = 1;
  x->out->status = status;
  if (err)
    snprintf(x->out->err, sizeof(x->out->err), "%s", err);
  if (status) {
    x->out->body = malloc(len + 1);
    if (x->out->body) {
      memcpy(x->out->body, body, len);
      x->out->body[len] = '\0';
      x->out->len = len;
    }
  }
}

static void on_handshake(struct quic_conn *c, void *ud)
{
  struct h3ctx *x = ud;
  struct tls_identity id;
  int named = 0;

  /* Chained to the CA (wolfSSL checked); it must also be a server of
   * the API: the intermediate or a connector. */
  if (quic_conn_peer_identity(c, &id) == 0)
    for (size_t i = 0; i < id.ndns; i++)
      if (!strcmp(id.dns[i], ID_SERVER_NAME) ||
          !strcmp(id.dns[i], ID_CONNECTOR_NAME))
        named = 1;
  if (!named) {
    snprintf(x->out->err, sizeof(x->out->err), "the server's certificate is "
             "neither the intermediate's (%s) nor a connector's (%s)",
             ID_SERVER_NAME, ID_CONNECTOR_NAME);
    x->done = 1;
    quic_conn_close(c, 0x100, "not a ztna server");
    return;
  }
  if (h3_client_request(c, x->method, x->authority, x->path, h3_answer, x) <
      0 && !x->done) {
    snprintf(x->out->err, sizeof(x->out->err), "cannot send the request");
    x->done = 1;
  }
}

static void on_close(struct quic_conn *c, const struct quic_close_info *info,
                     void *ud)
{
  struct h3ctx *x = ud;
  (void)c;

  x->c = NULL;
  if (!x->done) {
    x->done = 1;
    snprintf(x->out->err, sizeof(x->out->err), "%s",
             info->tls_alert == 116
                 ? "the server wants a client certificate (--cert, --key)"
             : info->tls_alert == 120
                 ? "the server does not speak HTTP/3 here"
             : info->reason[0] ? info->reason : "connection closed");
  }
}

static const struct quic_conn_cbs h3_cbs = {
  .handshake_cb = on_handshake,
  .close_cb = on_close,
};

static void on_timeout(uv_timer_t *t)
{
  struct h3ctx *x = t->data;

  if (!x->done) {
    x->done = 1;
    snprintf(x->out->err, sizeof(x->out->err), "no answer within %d s",
             FETCH_TIMEOUT_MS / 1000);
  }
}

static int fetch_h3(const char *server, const char *cert, const char *key,
                    const char *ca, const char *method, const char *path,
                    struct answer *out)
{
  static struct h3ctx x;
  struct tls_config tc;
  struct tls_ctx *tls;
  struct quic_endpoint_config qc = { 0 };
  struct sockaddr_storage remote, bind;
  char host[256], err[512];
  uint16_t port;
  int literal, rv;

  memset(out, 0, sizeof(*out));
  memset(&x, 0, sizeof(x));
  if (cfg_split_hostport(server, host, sizeof(host), &port) < 0) {
    snprintf(out->err, sizeof(out->err), "--server '%s' is not HOST:PORT",
             server);
    return -1;
  }
  if (netaddr_resolve(host, port, &remote, &literal, err, sizeof(err)) < 0) {
    snprintf(out->err, sizeof(out->err), "%s", err);
    return -1;
  }
  tls_config_init(&tc);
  tc.cert_file = cert;
  tc.key_file = key;
  tc.ca_file = ca;
  tc.alpn = TLS_ALPN_H3;
  if (tls_ctx_new(&tls, 0, &tc, err, sizeof(err)) < 0) {
    snprintf(out->err, sizeof(out->err), "%s", err);
    return -1;
  }
  x.loop = uv_default_loop();
  x.method = method;
  x.path = path;
  x.out = out;
  snprintf(x.authority, sizeof(x.authority), "%s", server);
  memset(&bind, 0, sizeof(bind));
  if (remote.ss_family == AF_INET6)
    uv_ip6_addr("::", 0, (struct sockaddr_in6 *)&bind);
  else
    uv_ip4_addr("0.0.0.0", 0, (struct sockaddr_in *)&bind);
  rv = quic_endpoint_new(&x.ep, x.loop, (struct sockaddr *)&bind, &qc);
  if (rv < 0) {
    snprintf(out->err, sizeof(out->err), "cannot open a UDP socket: %s",
             ztna_strerror(rv));
    tls_ctx_unref(tls);
    return -1;
  }
  uv_timer_init(x.loop, &x.timer);
  x.timer.data = &x;
  uv_timer_start(&x.timer, on_timeout, FETCH_TIMEOUT_MS, 0);
  rv = quic_connect(&x.c, x.ep, tls, (struct sockaddr *)&remote, NULL,
                    &h3_cbs, &x);
  if (rv < 0) {
    snprintf(out->err, sizeof(out->err), "cannot connect: %s",
             ztna_strerror(rv));
    x.done = 1;
  }
  while (!x.done)
    uv_run(x.loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&x.timer, NULL);
  quic_endpoint_del(x.ep);
  uv_run(x.loop, UV_RUN_DEFAULT);
  tls_ctx_unref(tls);
  return out->status ? 0 : -1;
}

/* --- rendering ------------------------------------------------------------------ */

struct doc {
  const char *js;
  jsmntok_t *t;
  int n;
};

/* The token after the subtree at i. */
static int skip(const struct doc *d, int i)
{
  int end = i + 1;
  if (d->t[i].type == JSMN_OBJECT)
    for (int k = 0; k < d->t[i].size; k++)
      end = skip(d, skip(d, end));
  else if (d->t[i].type == JSMN_ARRAY)
    for (int k = 0; k < d->t[i].size; k++)
      end = skip(d, end);
  return end;
}

static int tok_is(const struct doc *d, int i, const char *s)
{
  size_t n = (size_t)(d->t[i].end - d->t[i].start);
  return d->t[i].type == JSMN_STRING && strlen(s) == n &&
         !memcmp(d->js + d->t[i].start, s, n);
}

/* The value of key in the object at obj, or -1. */
static int get(const struct doc *d, int obj, const char *key)
{
  int i = obj + 1;
  if (obj < 0 || d->t[obj].type != JSMN_OBJECT)
    return -1;
  for (int k = 0; k < d->t[obj].size; k++) {
    if (tok_is(d, i, key))
      return i + 1;
    i = skip(d, i + 1);
  }
  return -1;
}

/* A scalar as text (strings without quotes; escapes shown as sent);
 * arrays of scalars or of objects with an "id" as a comma list. */
static void text(const struct doc *d, int i, char *out, size_t cap)
{
  size_t k = 0;

  out[0] = '\0';
  if (i < 0)
    return;
  if (d->t[i].type == JSMN_ARRAY) {
    int j = i + 1;
    for (int e = 0; e < d->t[i].size && k + 2 < cap; e++) {
      char one[128];
      int v = d->t[j].type == JSMN_OBJECT ? get(d, j, "id") : j;
      text(d, v, one, sizeof(one));
      k += (size_t)snprintf(out + k, cap - k, "%s%s", e ? "," : "", one);
      if (k >= cap)
        k = cap - 1;
      j = skip(d, j);
    }
    return;
  }
  if (d->t[i].type == JSMN_OBJECT) {
    snprintf(out, cap, "{...}");
    return;
  }
  snprintf(out, cap, "%.*s", d->t[i].end - d->t[i].start,
           d->js + d->t[i].start);
}

/* An array of objects as a table: a column per member of the first. */
#define MAXCOL 14
static void table(const struct doc *d, const char *title, int arr)
{
  char head[MAXCOL][40];
  int ncol = 0, first, row;
  size_t width[MAXCOL];
  static char cell[256][MAXCOL][96];
  int nrows = 0;

  if (arr < 0 || d->t[arr].type != JSMN_ARRAY)
    return;
  printf("\n%s (%d)\n", title, d->t[arr].size);
  if (d->t[arr].size == 0)
    return;
  first = arr + 1;
  if (d->t[first].type != JSMN_OBJECT)
    return;
  /* The columns: every member name of any row, in order of appearance. */
  row = first;
  for (int r = 0; r < d->t[arr].size; r++) {
    for (int k = 0, i = row + 1; k < d->t[row].size && ncol < MAXCOL; k++) {
      char name[40];
      int seen = 0;
      snprintf(name, sizeof(name), "%.*s", d->t[i].end - d->t[i].start,
               d->js + d->t[i].start);
      for (int c = 0; c < ncol; c++)
        seen |= !strcmp(head[c], name);
      /* Long hashes do not fit a table: --json has them. */
      if (!seen && strcmp(name, "fingerprint")) {
        memcpy(head[ncol], name, sizeof(name));
        width[ncol] = strlen(name);
        ncol++;
      }
      i = skip(d, i + 1);
    }
    row = skip(d, row);
  }
  row = first;
  for (int r = 0; r < d->t[arr].size && nrows < 256; r++, nrows++) {
    for (int c = 0; c < ncol; c++) {
      size_t l;
      text(d, get(d, row, head[c]), cell[nrows][c], sizeof(cell[0][0]));
      if (!cell[nrows][c][0])
        snprintf(cell[nrows][c], sizeof(cell[0][0]), "-");
      l = strlen(cell[nrows][c]);
      if (l > width[c])
        width[c] = l;
    }
    row = skip(d, row);
  }
  for (int c = 0; c < ncol; c++)
    printf("%-*s%s", c + 1 < ncol ? (int)width[c] : 0, head[c],
           c + 1 < ncol ? "  " : "\n");
  for (int r = 0; r < nrows; r++)
    for (int c = 0; c < ncol; c++)
      printf("%-*s%s", c + 1 < ncol ? (int)width[c] : 0, cell[r][c],
             c + 1 < ncol ? "  " : "\n");
}

/* How deep the document nests (outside strings): the renderer recurses
 * once per level, and whatever listens on a local port may answer. */
#define RENDER_DEPTH_MAX 16
static int too_deep(const char *js, size_t len)
{
  int depth = 0, in_str = 0;

  for (size_t i = 0; i < len; i++) {
    if (in_str) {
      if (js[i] == '\\')
        i++;
      else if (js[i] == '"')
        in_str = 0;
    } else if (js[i] == '"') {
      in_str = 1;
    } else if (js[i] == '{' || js[i] == '[') {
      if (++depth > RENDER_DEPTH_MAX)
        return 1;
    } else if (js[i] == '}' || js[i] == ']') {
      depth--;
    }
  }
  return 0;
}

static int render(const char *from, const char *js, size_t len)
{
  jsmn_parser p;
  struct doc d = { .js = js };
  char v[256];
  int n;

  if (too_deep(js, len))
    return -1; /* printed as it came */
  jsmn_init(&p);
  n = jsmn_parse(&p, js, len, NULL, 0);
  if (n <= 0)
    return -1;
  d.t = calloc((size_t)n, sizeof(*d.t));
  if (!d.t)
    return -1;
  jsmn_init(&p);
  d.n = jsmn_parse(&p, js, len, d.t, (unsigned)n);
  if (d.n <= 0 || d.t[0].type != JSMN_OBJECT) {
    free(d.t);
    return -1;
  }
  /* The scalars first, then each array as a table, each object as
   * "name: key=value ...". */
  printf("%s\n", from);
  for (int k = 0, i = 1; k < d.t[0].size; k++) {
    int val = i + 1;
    if (d.t[val].type != JSMN_ARRAY && d.t[val].type != JSMN_OBJECT) {
      text(&d, val, v, sizeof(v));
      printf("  %.*s: %s\n", d.t[i].end - d.t[i].start, js + d.t[i].start,
             v);
    }
    i = skip(&d, val);
  }
  for (int k = 0, i = 1; k < d.t[0].size; k++) {
    int val = i + 1;
    char name[64];
    snprintf(name, sizeof(name), "%.*s", d.t[i].end - d.t[i].start,
             js + d.t[i].start);
    if (d.t[val].type == JSMN_ARRAY) {
      table(&d, name, val);
    } else if (d.t[val].type == JSMN_OBJECT) {
      printf("\n%s\n", name);
      for (int m = 0, j = val + 1; m < d.t[val].size; m++) {
        int mv = j + 1;
        if (d.t[mv].type == JSMN_OBJECT) {
          char mx[64], us[64];
          text(&d, get(&d, mv, "max"), mx, sizeof(mx));
          text(&d, get(&d, mv, "used"), us, sizeof(us));
          printf("  %.*s: %s of %s\n", d.t[j].end - d.t[j].start,
                 js + d.t[j].start, us, mx);
        } else {
          text(&d, mv, v, sizeof(v));
          printf("  %.*s: %s\n", d.t[j].end - d.t[j].start,
                 js + d.t[j].start, v);
        }
        j = skip(&d, mv);
      }
    }
    i = skip(&d, val);
  }
  free(d.t);
  return 0;
}

/* --- main ------------------------------------------------------------------------ */

enum { OPT_LOCAL = 256, OPT_SERVER, OPT_CERT, OPT_KEY, OPT_CA, OPT_JSON };

static int report(const char *from, const struct answer *a, int json)
{
  if (a->status >= 200 && a->status < 300 && !json && a->body &&
      render(from, a->body, a->len) == 0)
    return 0;
  if (a->status < 200 || a->status >= 300)
    fprintf(stderr, "ztna diag: %s answered %d\n", from, a->status);
  if (a->body)
    fwrite(a->body, 1, a->len, a->status >= 300 ? stderr : stdout);
  return a->status >= 200 && a->status < 300 ? 0 : 2;
}

int diag_status_main(int argc, char **argv, int api)
{
  static const struct option opts[] = {
    { "local", required_argument, NULL, OPT_LOCAL },
    { "server", required_argument, NULL, OPT_SERVER },
    { "cert", required_argument, NULL, OPT_CERT },
    { "key", required_argument, NULL, OPT_KEY },
    { "ca", required_argument, NULL, OPT_CA },
    { "json", no_argument, NULL, OPT_JSON },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *local = NULL, *server = NULL, *cert = NULL, *key = NULL,
             *ca = NULL, *method = "GET", *path = "/v1/status";
  int ch, json = api, verbose = LOG_LVL_WARN, rv = 1, found = 0;
  struct answer a;

  optind = 1;
  while ((ch = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
    switch (ch) {
    case OPT_LOCAL: local = optarg; break;
    case OPT_SERVER: server = optarg; break;
    case OPT_CERT: cert = optarg; break;
    case OPT_KEY: key = optarg; break;
    case OPT_CA: ca = optarg; break;
    case OPT_JSON: json = 1; break;
    case 'v': verbose++; break;
    case 'h':
      fputs(status_usage, stdout);
      return 0;
    default:
      fputs(status_usage, stderr);
      return 1;
    }
  }
  if (api) {
    if (argc - optind != 2)
      return usage_error("%s", "diag api needs METHOD PATH (GET /v1/status)");
    method = argv[optind];
    path = argv[optind + 1];
    if (path[0] != '/')
      return usage_error("PATH '%s' must start with /", path);
  } else if (optind < argc) {
    return usage_error("unexpected argument '%s'", argv[optind]);
  }
  log_init("diag", verbose);
  if (server) {
    char from[300];
    if (!cert || !key || !ca)
      return usage_error("%s", "--server needs --cert, --key and --ca (an "
                         "admin certificate: ztna keygen issue --role "
                         "admin)");
    if (local)
      return usage_error("%s", "--local or --server, not both");
    snprintf(from, sizeof(from), "%s (HTTP/3)", server);
    if (fetch_h3(server, cert, key, ca, method, path, &a) < 0) {
      fprintf(stderr, "ztna diag: %s: %s\n", server, a.err);
      free(a.body);
      return 1;
    }
    rv = report(from, &a, json);
    free(a.body);
    return rv;
  }
  {
    static const char *const defaults[] = { "127.0.0.1:9090",
                                            "127.0.0.1:9091",
                                            "127.0.0.1:9092" };
    const char *const *list = local ? &local : defaults;
    size_t n = local ? 1 : 3;
    for (size_t i = 0; i < n; i++) {
      char host[256], err[256];
      uint16_t port;
      struct sockaddr_storage ss;
      int literal;

      if (cfg_split_hostport(list[i], host, sizeof(host), &port) < 0)
        return usage_error("--local '%s' is not HOST:PORT", list[i]);
      if (netaddr_resolve(host, port, &ss, &literal, err, sizeof(err)) < 0) {
        fprintf(stderr, "ztna diag: %s: %s\n", list[i], err);
        return 1;
      }
      if (fetch_local((struct sockaddr *)&ss, method, path, &a) < 0) {
        if (local)
          fprintf(stderr, "ztna diag: %s: %s\n", list[i], a.err);
        free(a.body);
        continue;
      }
      if (found && !json)
        printf("\n");
      found = 1;
      rv = report(list[i], &a, json);
      free(a.body);
    }
  }
  if (!found) {
    if (!local)
      fprintf(stderr, "ztna diag: no daemon answered on 127.0.0.1:9090, "
              "9091 or 9092 (is one running with its metrics port on? "
              "--local HOST:PORT names another)\n");
    return 1;
  }
  return rv;
}
