/* h3.c - HTTP/3 with nghttp3 on quic.c's connections (h3.h).
 *
 * quic.c copies what it is given to send, so every byte nghttp3 hands
 * over is written and acknowledged to nghttp3 at once: nghttp3 never
 * holds data for us, and a response body is freed when its stream
 * closes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nghttp3/nghttp3.h>

#include "api.h"
#include "err.h"
#include "h3.h"
#include "log.h"
#include "netaddr.h"
#include "quic.h"
#include "tls.h"

struct h3;

struct h3_stream {
  struct h3_stream *next;
  int64_t id;
  struct h3_request rq;
  uint8_t *body;         /* request body (server) or response (client) */
  size_t body_len;
  int too_large;         /* the request broke a bound: 413/414/431 */
  size_t nheaders;
  int answered;
  struct h3_response rs;
  size_t sent;           /* of rs.body, handed to nghttp3 */
  int blocked;           /* waiting for room in quic.c's send buffer */
  int status;            /* client: the response's :status */
};

struct h3 {
  nghttp3_conn *conn;
  struct quic_conn *c;   /* NULL for the fuzzer */
  int server;
  h3_handler fn;
  void (*closed)(struct quic_conn *c, void *ud);
  h3_done done;
  void *ud;
  struct h3_stream *streams;
  size_t nstreams;
  int failed;
};

static struct h3_stream *stream_get(struct h3 *h, int64_t id)
{
  for (struct h3_stream *s = h->streams; s; s = s->next)
    if (s->id == id)
      return s;
  return NULL;
}

static void stream_free(struct h3 *h, int64_t id)
{
  for (struct h3_stream **pp = &h->streams; *pp; pp = &(*pp)->next) {
    struct h3_stream *s = *pp;
    if (s->id == id) {
      *pp = s->next;
      free(s->body);
      free(s->rs.body);
      free(s);
      h->nstreams--;
      return;
    }
  }
}

static void h3_fail(struct h3 *h, uint64_t code, const char *why)
{
  if (h->failed)
    return;
  h->failed = 1;
  log_debug("h3: %s", why);
  if (h->c)
    quic_conn_close(h->c, code, why);
}

/* --- sending ------------------------------------------------------------- */

static void flush(struct h3 *h)
{
  while (!h->failed) {
    int64_t sid = -1;
    int fin = 0;
    nghttp3_vec vec[16];
    nghttp3_ssize n = nghttp3_conn_writev_stream(h->conn, &sid, &fin, vec,
                                                 sizeof(vec) / sizeof(vec[0]));
    size_t total = 0;

    if (n < 0) {
      h3_fail(h, nghttp3_err_infer_quic_app_error_code((int)n),
              nghttp3_strerror((int)n));
      return;
    }
    if (sid < 0 || (n == 0 && !fin))
      return; /* nothing more now (never spin on an empty stream) */
    for (nghttp3_ssize i = 0; i < n; i++) {
      int last = i == n - 1;
      if (h->c && quic_conn_stream_send(h->c, sid, vec[i].base, vec[i].len,
                                        last && fin) < 0) {
        h3_fail(h, NGHTTP3_H3_INTERNAL_ERROR, "stream send failed");
        return;
      }
      total += vec[i].len;
    }
    if (n == 0 && fin && h->c &&
        quic_conn_stream_send(h->c, sid, NULL, 0, 1) < 0) {
      h3_fail(h, NGHTTP3_H3_INTERNAL_ERROR, "stream send failed");
      return;
    }
    if (nghttp3_conn_add_write_offset(h->conn, sid, total) != 0 ||
        nghttp3_conn_add_ack_offset(h->conn, sid, total) != 0) {
      h3_fail(h, NGHTTP3_H3_INTERNAL_ERROR, "nghttp3 refused an offset");
      return;
    }
  }
}

/* Room kept for the DATA frame's header when a body is cut to fit. */
#define FRAME_SLACK 64

/* The body in pieces that fit quic.c's send buffer: a large answer goes
 * out as the peer acknowledges, never all at once. */
static nghttp3_ssize read_body(nghttp3_conn *conn, int64_t sid,
                               nghttp3_vec *vec, size_t veccnt,
                               uint32_t *pflags, void *ud, void *sud)
{
  struct h3 *h = ud;
  struct h3_stream *s = stream_get(h, sid);
  size_t left, room;
  (void)conn;
  (void)sud;

  *pflags = 0;
  if (!s || !veccnt) {
    *pflags = NGHTTP3_DATA_FLAG_EOF;
    return 0;
  }
  left = s->rs.len - s->sent;
  room = h->c ? quic_conn_stream_room(h->c, sid) : left + FRAME_SLACK;
  if (left && room <= FRAME_SLACK) {
    s->blocked = 1;
    return NGHTTP3_ERR_WOULDBLOCK;
  }
  if (left > room - FRAME_SLACK)
    left = room - FRAME_SLACK;
  vec[0].base = (uint8_t *)s->rs.body + s->sent;
  vec[0].len = left;
  s->sent += left;
  if (s->sent == s->rs.len)
    *pflags = NGHTTP3_DATA_FLAG_EOF;
  return left ? 1 : 0;
}

static const nghttp3_data_reader body_reader = { read_body };

#define NV(n, v, vl) { (const uint8_t *)(n), (const uint8_t *)(v), \
                       sizeof(n) - 1, (vl), NGHTTP3_NV_FLAG_NONE }

static void respond(struct h3 *h, struct h3_stream *s)
{
  char status[4], clen[24];
  nghttp3_nv nv[4];
  size_t nnv = 0;
  int rv;

  if (s->answered)
    return;
  s->answered = 1;
  if (s->too_large) {
    s->rs.status = s->too_large;
  } else {
    s->rq.body = s->body;
    s->rq.body_len = s->body_len;
    h->fn(h->c, &s->rq, &s->rs, h->ud);
  }
  if (s->rs.status < 100 || s->rs.status > 599)
    s->rs.status = 500;
  snprintf(status, sizeof(status), "%d", s->rs.status);
  snprintf(clen, sizeof(clen), "%zu", s->rs.len);
  nv[nnv++] = (nghttp3_nv)NV(":status", status, strlen(status));
  if (s->rs.content_type)
    nv[nnv++] = (nghttp3_nv)NV("content-type", s->rs.content_type,
                               strlen(s->rs.content_type));
  nv[nnv++] = (nghttp3_nv)NV("content-length", clen, strlen(clen));
  if (s->rs.allow)
    nv[nnv++] = (nghttp3_nv)NV("allow", s->rs.allow, strlen(s->rs.allow));
  /* HEAD: the GET's headers, no content (RFC 9110 9.3.2). */
  rv = nghttp3_conn_submit_response(h->conn, s->id, nv, nnv,
                                    strcmp(s->rq.method, "HEAD")
                                        ? &body_reader : NULL);
  if (rv != 0)
    h3_fail(h, NGHTTP3_H3_INTERNAL_ERROR, nghttp3_strerror(rv));
}

/* --- nghttp3 callbacks ---------------------------------------------------- */

static int begin_headers(nghttp3_conn *conn, int64_t sid, void *ud, void *sud)
{
  struct h3 *h = ud;
  struct h3_stream *s;
  (void)conn;
  (void)sud;

  if (stream_get(h, sid))
    return 0;
  if (h->nstreams >= H3_MAX_REQUESTS + 1)
    return NGHTTP3_ERR_CALLBACK_FAILURE;
  s = calloc(1, sizeof(*s));
  if (!s)
    return NGHTTP3_ERR_NOMEM;
  s->id = sid;
  s->next = h->streams;
  h->streams = s;
  h->nstreams++;
  return 0;
}

static int recv_header(nghttp3_conn *conn, int64_t sid, int32_t token,
                       nghttp3_rcbuf *name, nghttp3_rcbuf *value,
                       uint8_t flags, void *ud, void *sud)
{
  struct h3 *h = ud;
  struct h3_stream *s = stream_get(h, sid);
  nghttp3_vec v = nghttp3_rcbuf_get_buf(value);
  (void)conn;
  (void)name;
  (void)flags;
  (void)sud;

  if (!s)
    return 0;
  if (++s->nheaders > H3_HEADERS_MAX) {
    if (!s->too_large)
      s->too_large = 431;
    return 0;
  }
  if (!h->server) {
    if (token == NGHTTP3_QPACK_TOKEN__STATUS && v.len == 3 &&
        v.base[0] >= '1' && v.base[0] <= '5' && v.base[1] >= '0' &&
        v.base[1] <= '9' && v.base[2] >= '0' && v.base[2] <= '9')
      s->status = (v.base[0] - '0') * 100 + (v.base[1] - '0') * 10 +
                  (v.base[2] - '0');
    return 0;
  }
  if (token == NGHTTP3_QPACK_TOKEN__METHOD) {
    if (v.len >= sizeof(s->rq.method)) {
      if (!s->too_large)
        s->too_large = 501;
      return 0;
    }
    memcpy(s->rq.method, v.base, v.len);
    s->rq.method[v.len] = '\0';
  } else if (token == NGHTTP3_QPACK_TOKEN__PATH) {
    if (v.len > H3_PATH_MAX) {
      if (!s->too_large)
        s->too_large = 414;
      return 0;
    }
    memcpy(s->rq.path, v.base, v.len);
    s->rq.path[v.len] = '\0';
  }
  return 0;
}

static int recv_data(nghttp3_conn *conn, int64_t sid, const uint8_t *d,
                     size_t n, void *ud, void *sud)
{
  struct h3 *h = ud;
  struct h3_stream *s = stream_get(h, sid);
  size_t cap = h->server ? H3_BODY_MAX : H3_RESPONSE_MAX;
  uint8_t *nb;
  (void)conn;
  (void)sud;

  if (!s || s->too_large)
    return 0;
  if (s->body_len + n > cap) {
    if (h->server) {
      s->too_large = 413;
      return 0;
    }
    return NGHTTP3_ERR_CALLBACK_FAILURE;
  }
  nb = realloc(s->body, s->body_len + n + 1);
  if (!nb)
    return NGHTTP3_ERR_NOMEM;
  s->body = nb;
  memcpy(s->body + s->body_len, d, n);
  s->body_len += n;
  s->body[s->body_len] = 0;
  return 0;
}

static int end_stream(nghttp3_conn *conn, int64_t sid, void *ud, void *sud)
{
  struct h3 *h = ud;
  struct h3_stream *s = stream_get(h, sid);
  (void)conn;
  (void)sud;

  if (!s)
    return 0;
  if (h->server) {
    respond(h, s);
  } else if (h->done) {
    h3_done done = h->done;
    h->done = NULL;
    done(s->status, s->body, s->body_len, s->status ? NULL
             : "the response had no status", h->ud);
    if (h->c)
      quic_conn_close(h->c, NGHTTP3_H3_NO_ERROR, "done");
  }
  return 0;
}

static int stream_close(nghttp3_conn *conn, int64_t sid, uint64_t code,
                        void *ud, void *sud)
{
  struct h3 *h = ud;
  (void)conn;
  (void)code;
  (void)sud;

  if (!h->server && h->done && stream_get(h, sid)) {
    h3_done done = h->done;
    h->done = NULL;
    done(0, NULL, 0, "the server reset the request", h->ud);
    if (h->c)
      quic_conn_close(h->c, NGHTTP3_H3_NO_ERROR, "done");
  }
  stream_free(h, sid);
  return 0;
}

/* nghttp3 asks to stop a stream (a malformed request, say). */
static int stop_sending(nghttp3_conn *conn, int64_t sid, uint64_t code,
                        void *ud, void *sud)
{
  struct h3 *h = ud;
  (void)conn;
  (void)sud;
  if (h->c)
    quic_conn_shutdown_stream(h->c, sid, code, 1, 0);
  return 0;
}

static int reset_stream(nghttp3_conn *conn, int64_t sid, uint64_t code,
                        void *ud, void *sud)
{
  struct h3 *h = ud;
  (void)conn;
  (void)sud;
  if (h->c)
    quic_conn_shutdown_stream(h->c, sid, code, 0, 1);
  return 0;
}

static const nghttp3_callbacks callbacks = {
  .stream_close = stream_close,
  .recv_data = recv_data,
  .begin_headers = begin_headers,
  .recv_header = recv_header,
  .end_stream = end_stream,
  .stop_sending = stop_sending,
  .reset_stream = reset_stream,
};

/* --- quic.c callbacks ------------------------------------------------------ */

static void on_stream(struct quic_conn *c, int64_t sid, const uint8_t *d,
                      size_t n, int fin, void *ud)
{
  struct h3 *h = ud;
  nghttp3_ssize rv;
  (void)c;

  if (h->failed)
    return;
  rv = nghttp3_conn_read_stream(h->conn, sid, d, n, fin);
  if (rv < 0) {
    h3_fail(h, nghttp3_err_infer_quic_app_error_code((int)rv),
            nghttp3_strerror((int)rv));
    return;
  }
  flush(h);
}

static void on_stream_close(struct quic_conn *c, int64_t sid, uint64_t code,
                            void *ud)
{
  struct h3 *h = ud;
  int rv;
  (void)c;

  if (h->failed)
    return;
  if (!code)
    code = NGHTTP3_H3_NO_ERROR;
  rv = nghttp3_conn_close_stream(h->conn, sid, code);
  if (rv != 0 && rv != NGHTTP3_ERR_STREAM_NOT_FOUND &&
      nghttp3_err_is_fatal(rv)) {
    h3_fail(h, nghttp3_err_infer_quic_app_error_code(rv),
            nghttp3_strerror(rv));
    return;
  }
  flush(h);
}

static void on_stream_reset(struct quic_conn *c, int64_t sid, uint64_t code,
                            void *ud)
{
  struct h3 *h = ud;
  (void)c;
  (void)code;

  if (!h->failed)
    nghttp3_conn_shutdown_stream_read(h->conn, sid);
}

static void on_stream_acked(struct quic_conn *c, int64_t sid, void *ud)
{
  struct h3 *h = ud;
  struct h3_stream *s = stream_get(h, sid);
  (void)c;

  if (h->failed || !s || !s->blocked ||
      quic_conn_stream_room(h->c, sid) <= FRAME_SLACK)
    return;
  s->blocked = 0;
  nghttp3_conn_resume_stream(h->conn, sid);
  flush(h);
}

static void h3_free(struct h3 *h)
{
  while (h->streams)
    stream_free(h, h->streams->id);
  nghttp3_conn_del(h->conn);
  free(h);
}

static void on_close(struct quic_conn *c, const struct quic_close_info *info,
                     void *ud)
{
  struct h3 *h = ud;

  if (h->done) {
    h3_done done = h->done;
    h->done = NULL;
    done(0, NULL, 0, info->reason[0] ? info->reason : "connection closed",
         h->ud);
  }
  if (h->closed)
    h->closed(c, h->ud);
  h3_free(h);
}

static const struct quic_conn_cbs h3_cbs = {
  .stream_cb = on_stream,
  .stream_close_cb = on_stream_close,
  .stream_reset_cb = on_stream_reset,
  .stream_acked_cb = on_stream_acked,
  .close_cb = on_close,
};

/* --- set-up ---------------------------------------------------------------- */

static int h3_new(struct h3 **out, int server, struct quic_conn *c)
{
  nghttp3_settings st;
  struct h3 *h = calloc(1, sizeof(*h));
  int rv;

  if (!h)
    return -1;
  h->server = server;
  h->c = c;
  nghttp3_settings_default(&st);
  /* No dynamic table: headers are few and small, and nothing is kept
   * between requests. */
  st.qpack_max_dtable_capacity = 0;
  st.qpack_blocked_streams = 0;
  st.max_field_section_size = 16 * 1024;
  rv = server ? nghttp3_conn_server_new(&h->conn, &callbacks, &st,
                                        NULL, h)
              : nghttp3_conn_client_new(&h->conn, &callbacks, &st, NULL, h);
  if (rv != 0) {
    free(h);
    return -1;
  }
  if (server)
    nghttp3_conn_set_max_client_streams_bidi(h->conn, H3_MAX_REQUESTS);
  *out = h;
  return 0;
}

/* The control stream and the QPACK encoder and decoder streams. */
static int bind_streams(struct h3 *h)
{
  int64_t ctrl, enc, dec;

  if (quic_conn_open_uni_stream(h->c, &ctrl) < 0 ||
      quic_conn_open_uni_stream(h->c, &enc) < 0 ||
      quic_conn_open_uni_stream(h->c, &dec) < 0)
    return -1;
  if (nghttp3_conn_bind_control_stream(h->conn, ctrl) != 0 ||
      nghttp3_conn_bind_qpack_streams(h->conn, enc, dec) != 0)
    return -1;
  return 0;
}

int h3_server_attach(struct quic_conn *c, h3_handler fn,
                     void (*closed)(struct quic_conn *c, void *ud), void *ud)
{
  struct h3 *h;

  if (h3_new(&h, 1, c) < 0) {
    /* The caller's callbacks stay: its close_cb runs, closed does not. */
    if (closed)
      closed(c, ud);
    quic_conn_set_cbs(c, NULL, NULL);
    quic_conn_close(c, NGHTTP3_H3_INTERNAL_ERROR, "out of memory");
    return -ENOMEM;
  }
  h->fn = fn;
  h->closed = closed;
  h->ud = ud;
  quic_conn_set_cbs(c, &h3_cbs, h);
  if (bind_streams(h) < 0) {
    h3_fail(h, NGHTTP3_H3_INTERNAL_ERROR, "cannot open the control streams");
    return ZTNA_ERR_QUIC;
  }
  flush(h);
  return 0;
}

int h3_client_request(struct quic_conn *c, const char *method,
                      const char *authority, const char *path, h3_done done,
                      void *ud)
{
  struct h3 *h;
  struct h3_stream *s;
  int64_t sid;
  nghttp3_nv nv[5] = {
    NV(":method", method, strlen(method)),
    NV(":scheme", "https", 5),
    NV(":authority", authority, strlen(authority)),
    NV(":path", path, strlen(path)),
    NV("user-agent", "ztna-diag", 9),
  };

  if (h3_new(&h, 0, c) < 0)
    return -1;
  h->done = done;
  h->ud = ud;
  quic_conn_set_cbs(c, &h3_cbs, h);
  s = calloc(1, sizeof(*s));
  if (!s || bind_streams(h) < 0 || quic_conn_open_stream(c, &sid) < 0) {
    free(s);
    h3_fail(h, NGHTTP3_H3_INTERNAL_ERROR, "cannot open the streams");
    return ZTNA_ERR_QUIC;
  }
  s->id = sid;
  s->next = h->streams;
  h->streams = s;
  h->nstreams++;
  if (nghttp3_conn_submit_request(h->conn, sid, nv, 5, NULL, NULL) != 0) {
    h3_fail(h, NGHTTP3_H3_INTERNAL_ERROR, "cannot submit the request");
    return ZTNA_ERR_QUIC;
  }
  flush(h);
  return 0;
}

/* --- the API on an h3 connection ------------------------------------------ */

struct apiconn {
  const struct api_ops *ops;
  void *ud;
  struct tls_identity *id; /* NULL: no certificate */
  char name[320];
};

static void api_request_cb(struct quic_conn *c, const struct h3_request *rq,
                           struct h3_response *rs, void *ud)
{
  struct apiconn *ac = ud;
  struct api_request arq = { .method = rq->method, .path = rq->path };
  char why[320];
  (void)c;

  why[0] = '\0';
  if (!rq->method[0] || !rq->path[0]) {
    memset(rs, 0, sizeof(*rs));
    rs->status = 400;
    return;
  }
  if (!ac->id)
    snprintf(why, sizeof(why), "no client certificate");
  else if (ac->id->not_after && (int64_t)time(NULL) >= ac->id->not_after)
    snprintf(why, sizeof(why), "certificate '%s' has expired",
             ac->id->cn);
  else
    arq.admin = ac->ops->authorize(ac->ud, ac->id, why, sizeof(why));
  arq.denied = why;
  api_handle(ac->ops, ac->ud, &arq, rs);
  /* Every admin action is on record; refusals too. */
  if (rs->status >= 400 || strcmp(rq->method, "GET"))
    log_info("api: %s %s %s -> %d%s%s", ac->name, rq->method, rq->path,
             rs->status, arq.admin ? "" : ": ", arq.admin ? "" : why);
  else
    log_debug("api: %s %s %s -> %d", ac->name, rq->method, rq->path,
              rs->status);
}

static void api_closed_cb(struct quic_conn *c, void *ud)
{
  struct apiconn *ac = ud;
  (void)c;
  free(ac->id);
  free(ac);
}

int api_attach(struct quic_conn *c, const struct api_ops *ops, void *ud)
{
  struct apiconn *ac = calloc(1, sizeof(*ac));
  char a[64];

  if (!ac) {
    quic_conn_set_cbs(c, NULL, NULL);
    quic_conn_close(c, NGHTTP3_H3_INTERNAL_ERROR, "out of memory");
    return -ENOMEM;
  }
  ac->ops = ops;
  ac->ud = ud;
  ac->id = malloc(sizeof(*ac->id));
  if (ac->id && quic_conn_peer_identity(c, ac->id) < 0) {
    free(ac->id);
    ac->id = NULL;
  }
  snprintf(ac->name, sizeof(ac->name), "%s (%s)",
           netaddr_str(quic_conn_peer(c), a, sizeof(a)),
           ac->id && ac->id->cn[0] ? ac->id->cn : "no certificate");
  log_info("api: %s connected over HTTP/3", ac->name);
  return h3_server_attach(c, api_request_cb, api_closed_cb, ac);
}

/* --- fuzzing ----------------------------------------------------------------- */

struct h3_fuzz {
  struct h3 *h;
};

struct h3_fuzz *h3_fuzz_new(h3_handler fn, void *ud)
{
  struct h3_fuzz *f = calloc(1, sizeof(*f));

  if (!f || h3_new(&f->h, 1, NULL) < 0) {
    free(f);
    return NULL;
  }
  f->h->fn = fn;
  f->h->ud = ud;
  /* The server's own streams (3, 7, 11), as if opened. */
  if (nghttp3_conn_bind_control_stream(f->h->conn, 3) != 0 ||
      nghttp3_conn_bind_qpack_streams(f->h->conn, 7, 11) != 0) {
    h3_fuzz_del(f);
    return NULL;
  }
  return f;
}

int h3_fuzz_feed(struct h3_fuzz *f, int64_t sid, const uint8_t *d, size_t n,
                 int fin)
{
  nghttp3_ssize rv;

  if (f->h->failed)
    return -1;
  rv = nghttp3_conn_read_stream(f->h->conn, sid, d, n, fin);
  if (rv < 0) {
    f->h->failed = 1;
    return -1;
  }
  flush(f->h);
  if (fin && !f->h->failed)
    nghttp3_conn_close_stream(f->h->conn, sid, NGHTTP3_H3_NO_ERROR);
  return f->h->failed ? -1 : 0;
}

void h3_fuzz_del(struct h3_fuzz *f)
{
  if (!f)
    return;
  h3_free(f->h);
  free(f);
}
