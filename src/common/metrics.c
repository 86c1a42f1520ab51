/* metrics.c - metric table, Prometheus rendering and the HTTP endpoint. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "metrics.h"

struct metrics {
  struct metric *v;
  size_t n;
  struct metric overflow;
  struct metric *overflow_count;
  void (*collect)(void *);
  void *collect_ud;
  int (*ready)(void *ud, char *why, size_t cap);
  void *ready_ud;
  const struct api_ops *api;
  void *api_ud;
};

void metrics_set_api(struct metrics *m, const struct api_ops *ops, void *ud)
{
  m->api = ops;
  m->api_ud = ud;
}

struct metrics *metrics_new(void)
{
  struct metrics *m = calloc(1, sizeof(*m));

  if (!m)
    return NULL;
  m->v = calloc(METRICS_MAX, sizeof(*m->v));
  if (!m->v) {
    free(m);
    return NULL;
  }
  m->overflow_count = metrics_counter(m, "ztna_metrics_overflow_total", NULL,
                                      "Metrics not recorded because the "
                                      "metric table was full");
  return m;
}

void metrics_del(struct metrics *m)
{
  if (!m)
    return;
  free(m->v);
  free(m);
}

static struct metric *get(struct metrics *m, const char *name,
                          const char *labels, const char *help,
                          enum metric_type type)
{
  struct metric *x;

  if (!labels)
    labels = "";
  for (size_t i = 0; i < m->n; i++)
    if (!strcmp(m->v[i].name, name) && !strcmp(m->v[i].labels, labels))
      return &m->v[i];
  if (m->n >= METRICS_MAX || strlen(name) >= sizeof(x->name) ||
      strlen(labels) >= sizeof(x->labels)) {
    if (m->overflow_count)
      m->overflow_count->value++;
    return &m->overflow;
  }
  x = &m->v[m->n++];
  snprintf(x->name, sizeof(x->name), "%s", name);
  snprintf(x->labels, sizeof(x->labels), "%s", labels);
  x->help = help;
  x->type = type;
  x->value = 0;
  return x;
}

struct metric *metrics_counter(struct metrics *m, const char *name,
                               const char *labels, const char *help)
{
  return get(m, name, labels, help, METRIC_COUNTER);
}

struct metric *metrics_gauge(struct metrics *m, const char *name,
                             const char *labels, const char *help)
{
  return get(m, name, labels, help, METRIC_GAUGE);
}

void metrics_zero(struct metrics *m, const char *name)
{
  for (size_t i = 0; i < m->n; i++)
    if (!strcmp(m->v[i].name, name))
      m->v[i].value = 0;
}

char *metrics_label_escape(char *out, size_t cap, const char *v, size_t len)
{
  size_t o = 0;

  for (size_t i = 0; i < len && o + 3 < cap; i++) {
    unsigned char ch = (unsigned char)v[i];
    if (ch == '\\' || ch == '"') {
      out[o++] = '\\';
      out[o++] = (char)ch;
    } else if (ch == '\n') {
      out[o++] = '\\';
      out[o++] = 'n';
    } else {
      out[o++] = ch < 0x20 ? '?' : (char)ch;
    }
  }
  out[o] = '\0';
  return out;
}

void metrics_set_collect(struct metrics *m, void (*fn)(void *), void *ud)
{
  m->collect = fn;
  m->collect_ud = ud;
}

void metrics_set_ready(struct metrics *m,
                       int (*fn)(void *ud, char *why, size_t cap), void *ud)
{
  m->ready = fn;
  m->ready_ud = ud;
}

char *metrics_render(struct metrics *m, size_t *len)
{
  size_t cap = 256 + m->n * 400, off = 0;
  char *buf;

  if (m->collect)
    m->collect(m->collect_ud);
  buf = malloc(cap);
  if (!buf)
    return NULL;
  for (size_t i = 0; i < m->n; i++) {
    const struct metric *x = &m->v[i];
    int first = 1, w;

    /* HELP and TYPE once per name, before its first sample. */
    for (size_t j = 0; j < i; j++)
      if (!strcmp(m->v[j].name, x->name)) {
        first = 0;
        break;
      }
    if (first) {
      w = snprintf(buf + off, cap - off, "# HELP %s %s\n# TYPE %s %s\n",
                   x->name, x->help ? x->help : x->name, x->name,
                   x->type == METRIC_COUNTER ? "counter" : "gauge");
      if (w > 0 && (size_t)w < cap - off)
        off += (size_t)w;
    }
    /* Samples of the same name follow each other in the output. */
    for (size_t j = i; j < m->n; j++) {
      const struct metric *y = &m->v[j];
      if (strcmp(y->name, x->name) || !first)
        continue;
      if (y->labels[0])
        w = snprintf(buf + off, cap - off, "%s{%s} %lld\n", y->name,
                     y->labels, (long long)y->value);
      else
        w = snprintf(buf + off, cap - off, "%s %lld\n", y->name,
                     (long long)y->value);
      if (w > 0 && (size_t)w < cap - off)
        off += (size_t)w;
    }
  }
  *len = off;
  return buf;
}

int metrics_http_parse(const char *buf, size_t len, char *method,
                       size_t methodcap, char *path, size_t pathcap)
{
  const char *end = NULL, *sp1, *sp2, *eol;
  size_t ml, pl;

  for (size_t i = 0; i + 1 < len; i++) {
    if (buf[i] == '\n' && buf[i + 1] == '\n') {
      end = buf + i;
      break;
    }
    if (i + 3 < len && !memcmp(buf + i, "\r\n\r\n", 4)) {
      end = buf + i;
      break;
    }
  }
  if (memchr(buf, '\0', len))
    return -1;
  if (!end)
    return len >= METRICS_REQ_MAX ? -1 : 0;
  eol = memchr(buf, '\n', len); /* there is one: end was found */
  if (!eol)
    return -1;
  if (eol > buf && eol[-1] == '\r')
    eol--;
  sp1 = memchr(buf, ' ', (size_t)(eol - buf));
  if (!sp1)
    return -1;
  sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
  if (!sp2)
    return -1;
  ml = (size_t)(sp1 - buf);
  pl = (size_t)(sp2 - sp1 - 1);
  if (ml == 0 || ml >= methodcap || pl == 0 || pl >= pathcap ||
      sp1[1] != '/' || (size_t)(eol - sp2 - 1) < 8 ||
      memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
    return -1;
  for (size_t i = 0; i < ml; i++)
    if (buf[i] < 'A' || buf[i] > 'Z')
      return -1;
  for (size_t i = 0; i < pl; i++)
    if ((unsigned char)sp1[1 + i] <= 0x20 || (unsigned char)sp1[1 + i] >= 0x7f)
      return -1;
  memcpy(method, buf, ml);
  method[ml] = '\0';
  memcpy(path, sp1 + 1, pl);
  path[pl] = '\0';
  return 1;
}

/* --- HTTP over libuv --------------------------------------------------- */

struct metrics_http {
  uv_tcp_t listener;
  struct metrics *m;
  struct client *clients;
  size_t nclients;
  int port;
  int stopping;
};

struct client {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t wreq;
  struct metrics_http *h;
  struct client *next, *prev;
  char buf[METRICS_REQ_MAX];
  size_t len;
  char *resp;
  int closing, handles;
};

static void client_handle_closed(uv_handle_t *hd)
{
  struct client *c = hd->data;
  if (--c->handles == 0) {
    free(c->resp);
    free(c);
  }
}

static void client_close(struct client *c)
{
  struct metrics_http *h = c->h;

  if (c->closing)
    return;
  c->closing = 1;
  if (c->prev)
    c->prev->next = c->next;
  else
    h->clients = c->next;
  if (c->next)
    c->next->prev = c->prev;
  h->nclients--;
  uv_close((uv_handle_t *)&c->timer, client_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, client_handle_closed);
}

static void write_cb(uv_write_t *req, int status)
{
  (void)status;
  client_close(req->data);
}

static void respond(struct client *c, int code, const char *reason,
                    const char *ctype, const char *body, size_t blen,
                    int head_only)
{
  size_t cap = 256 + blen, n;
  uv_buf_t b;
  int w;

  uv_read_stop((uv_stream_t *)&c->tcp);
  c->resp = malloc(cap);
  if (!c->resp) {
    client_close(c);
    return;
  }
  w = snprintf(c->resp, cap,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Connection: close\r\n\r\n",
               code, reason, ctype, blen);
  n = (size_t)w;
  if (!head_only && blen) {
    memcpy(c->resp + n, body, blen);
    n += blen;
  }
  b = uv_buf_init(c->resp, (unsigned)n);
  c->wreq.data = c;
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, write_cb) < 0)
    client_close(c);
}

static const char *reason_phrase(int code)
{
  switch (code) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 422: return "Unprocessable Content";
  default: return code >= 500 ? "Internal Server Error" : "Error";
  }
}

static void handle_request(struct client *c)
{
  char method[16], path[1024];
  int rv = metrics_http_parse(c->buf, c->len, method, sizeof(method), path,
                              sizeof(path));
  int head;

  if (rv == 0)
    return;
  if (rv < 0) {
    respond(c, 400, "Bad Request", "text/plain", "bad request\n", 12, 0);
    return;
  }
  head = !strcmp(method, "HEAD");
  if (!strncmp(path, "/v1/", 4) && c->h->m->api) {
    struct h3_response rs;
    struct metrics *m = c->h->m;
    struct api_request rq = { .method = method, .path = path, .local = 1 };
    api_handle(m->api, m->api_ud, &rq, &rs);
    respond(c, rs.status, reason_phrase(rs.status),
            rs.content_type ? rs.content_type : "text/plain", rs.body,
            rs.len, head);
    free(rs.body);
    return;
  }
  if (strcmp(method, "GET") && !head) {
    respond(c, 405, "Method Not Allowed", "text/plain",
            "method not allowed\n", 19, 0);
    return;
  }
  if (!strcmp(path, "/metrics")) {
    size_t len;
    char *body = metrics_render(c->h->m, &len);
    if (!body) {
      respond(c, 500, "Internal Server Error", "text/plain", "", 0, 0);
      return;
    }
    respond(c, 200, "OK", "text/plain; version=0.0.4", body, len, head);
    free(body);
  } else if (!strcmp(path, "/healthz")) {
    respond(c, 200, "OK", "text/plain", "ok\n", 3, head);
  } else if (!strcmp(path, "/readyz")) {
    char why[240];
    struct metrics *m = c->h->m;
    int n;
    if (!m->ready || m->ready(m->ready_ud, why, sizeof(why) - 1)) {
      respond(c, 200, "OK", "text/plain", "ready\n", 6, head);
      return;
    }
    n = (int)strnlen(why, sizeof(why) - 1);
    why[n++] = '\n';
    respond(c, 503, "Service Unavailable", "text/plain", why, (size_t)n,
            head);
  } else {
    respond(c, 404, "Not Found", "text/plain", "not found\n", 10, head);
  }
}

static void alloc_cb(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
  struct client *c = hd->data;
  (void)hint;
  *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
  struct client *c = s->data;
  (void)buf;

  if (n < 0) {
    client_close(c);
    return;
  }
  c->len += (size_t)n;
  handle_request(c);
  if (!c->closing && !c->resp && c->len >= sizeof(c->buf))
    respond(c, 431, "Request Header Fields Too Large", "text/plain", "", 0, 0);
}

static void timeout_cb(uv_timer_t *t)
{
  client_close(t->data);
}

static void connection_cb(uv_stream_t *server, int status)
{
  struct metrics_http *h = server->data;
  struct client *c;

  if (status < 0)
    return;
  c = calloc(1, sizeof(*c));
  if (!c)
    return;
  c->h = h;
  uv_tcp_init(server->loop, &c->tcp);
  uv_timer_init(server->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles = 2;
  c->next = h->clients;
  if (h->clients)
    h->clients->prev = c;
  h->clients = c;
  h->nclients++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 ||
      h->nclients > METRICS_CLIENTS_MAX) {
    client_close(c);
    return;
  }
  uv_timer_start(&c->timer, timeout_cb, METRICS_TIMEOUT_MS, 0);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

int metrics_http_listen(struct metrics_http **out, uv_loop_t *loop,
                        const char *addr, uint16_t port, struct metrics *m,
                        char *err, size_t errlen)
{
  struct sockaddr_storage ss;
  int rv;

  memset(&ss, 0, sizeof(ss));
  if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) < 0 &&
      uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) < 0) {
    snprintf(err, errlen, "metrics address '%s' is not an IP address", addr);
    return -EINVAL;
  }
  rv = metrics_http_start(out, loop, (struct sockaddr *)&ss, m);
  if (rv < 0)
    snprintf(err, errlen, "cannot listen on TCP %s:%u for metrics: %s", addr,
             port, uv_strerror(rv));
  return rv;
}

static void listener_closed(uv_handle_t *hd)
{
  free(hd->data);
}

int metrics_http_start(struct metrics_http **out, uv_loop_t *loop,
                       const struct sockaddr *bind, struct metrics *m)
{
  struct metrics_http *h = calloc(1, sizeof(*h));
  struct sockaddr_storage ss;
  int len = sizeof(ss), rv;

  *out = NULL;
  if (!h)
    return -ENOMEM;
  h->m = m;
  uv_tcp_init(loop, &h->listener);
  h->listener.data = h;
  rv = uv_tcp_bind(&h->listener, bind, 0);
  if (rv == 0)
    rv = uv_listen((uv_stream_t *)&h->listener, 64, connection_cb);
  if (rv == 0)
    rv = uv_tcp_getsockname(&h->listener, (struct sockaddr *)&ss, &len);
  if (rv < 0) {
    uv_close((uv_handle_t *)&h->listener, listener_closed);
    return rv;
  }
  h->port = ntohs(ss.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *)&ss)->sin6_port
                      : ((struct sockaddr_in *)&ss)->sin_port);
  *out = h;
  return 0;
}

void metrics_http_stop(struct metrics_http *h)
{
  if (!h)
    return;
  while (h->clients)
    client_close(h->clients);
  uv_close((uv_handle_t *)&h->listener, listener_closed);
}

int metrics_http_port(struct metrics_http *h)
{
  return h->port;
}
