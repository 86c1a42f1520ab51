/* api.c - JSON writer and request router of the status and admin API
 * (api.h, docs/api.md). */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

/* --- JSON writer ------------------------------------------------------------ */

void jw_init(struct jw *w)
{
  memset(w, 0, sizeof(*w));
  w->first[0] = 1;
}

static void put(struct jw *w, const char *s, size_t n)
{
  if (w->oom)
    return;
  if (w->len + n + 2 > w->cap) {
    size_t cap = w->cap ? w->cap : 1024;
    char *nb;
    while (w->len + n + 2 > cap)
      cap *= 2;
    nb = realloc(w->b, cap);
    if (!nb) {
      w->oom = 1;
      return;
    }
    w->b = nb;
    w->cap = cap;
  }
  memcpy(w->b + w->len, s, n);
  w->len += n;
}

static void puts_(struct jw *w, const char *s)
{
  put(w, s, strlen(s));
}

/* The length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
  size_t need;
  uint32_t cp;

  if (s[0] < 0x80)
    return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf)
    need = 2, cp = s[0] & 0x1f;
  else if (s[0] >= 0xe0 && s[0] <= 0xef)
    need = 3, cp = s[0] & 0x0f;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4)
    need = 4, cp = s[0] & 0x07;
  else
    return 0;
  if (n < need)
    return 0;
  for (size_t i = 1; i < need; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  /* Overlong forms, surrogates and past U+10FFFF are not UTF-8. */
  if ((need == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
      (need == 4 && (cp < 0x10000 || cp > 0x10ffff)))
    return 0;
  return need;
}

static void put_string(struct jw *w, const char *v, size_t n)
{
  const unsigned char *s = (const unsigned char *)v;

  put(w, "\"", 1);
  for (size_t i = 0; i < n;) {
    size_t k;
    char esc[8];

    if (s[i] == '"' || s[i] == '\\') {
      esc[0] = '\\';
      esc[1] = (char)s[i];
      put(w, esc, 2);
      i++;
    } else if (s[i] < 0x20 || s[i] == 0x7f) {
      snprintf(esc, sizeof(esc), "\\u%04x", s[i]);
      put(w, esc, 6);
      i++;
    } else if ((k = utf8_len(s + i, n - i)) > 0) {
      put(w, (const char *)s + i, k);
      i += k;
    } else {
      put(w, "\xef\xbf\xbd", 3); /* U+FFFD */
      i++;
    }
  }
  put(w, "\"", 1);
}

/* A new item at the current depth: the comma, the line, the key. */
static void item(struct jw *w, const char *key)
{
  if (!w->first[w->depth])
    put(w, ",", 1);
  w->first[w->depth] = 0;
  if (w->depth > 0) {
    put(w, "\n", 1);
    for (int i = 0; i < w->depth; i++)
      put(w, "  ", 2);
  }
  if (key) {
    put_string(w, key, strlen(key));
    put(w, ": ", 2);
  }
}

static void open_(struct jw *w, const char *key, char brace, char close)
{
  item(w, key);
  put(w, &brace, 1);
  if (w->depth >= JW_DEPTH) {
    w->oom = 1; /* deeper than any document here: a bug, not data */
    return;
  }
  w->depth++;
  w->first[w->depth] = 1;
  w->close[w->depth] = close;
}

void jw_obj(struct jw *w, const char *key)
{
  open_(w, key, '{', '}');
}

void jw_arr(struct jw *w, const char *key)
{
  open_(w, key, '[', ']');
}

void jw_end(struct jw *w)
{
  int empty = w->first[w->depth];
  char close = w->close[w->depth];

  if (w->depth == 0)
    return;
  w->depth--;
  if (!empty) {
    put(w, "\n", 1);
    for (int i = 0; i < w->depth; i++)
      put(w, "  ", 2);
  }
  put(w, &close, 1);
}

void jw_strn(struct jw *w, const char *key, const char *v, size_t n)
{
  item(w, key);
  put_string(w, v, n);
}

void jw_str(struct jw *w, const char *key, const char *v)
{
  if (!v) {
    jw_null(w, key);
    return;
  }
  jw_strn(w, key, v, strlen(v));
}

void jw_u64(struct jw *w, const char *key, uint64_t v)
{
  char n[24];
  item(w, key);
  snprintf(n, sizeof(n), "%llu", (unsigned long long)v);
  puts_(w, n);
}

void jw_i64(struct jw *w, const char *key, int64_t v)
{
  char n[24];
  item(w, key);
  snprintf(n, sizeof(n), "%lld", (long long)v);
  puts_(w, n);
}

void jw_bool(struct jw *w, const char *key, int v)
{
  item(w, key);
  puts_(w, v ? "true" : "false");
}

void jw_null(struct jw *w, const char *key)
{
  item(w, key);
  puts_(w, "null");
}

void jw_fixed(struct jw *w, const char *key, uint64_t v, int decimals)
{
  uint64_t div = 1;
  char n[64];

  if (decimals < 0 || decimals > 6)
    decimals = 0;
  for (int i = 0; i < decimals; i++)
    div *= 10;
  item(w, key);
  if (decimals > 0)
    snprintf(n, sizeof(n), "%llu.%0*llu", (unsigned long long)(v / div),
             decimals, (unsigned long long)(v % div));
  else
    snprintf(n, sizeof(n), "%llu", (unsigned long long)v);
  puts_(w, n);
}

char *jw_finish(struct jw *w, size_t *len)
{
  char *b;

  put(w, "\n", 1);
  if (w->oom) {
    jw_free(w);
    return NULL;
  }
  w->b[w->len] = '\0';
  b = w->b;
  *len = w->len;
  w->b = NULL;
  w->len = w->cap = 0;
  return b;
}

void jw_free(struct jw *w)
{
  free(w->b);
  jw_init(w);
}

void jw_limit(struct jw *w, const char *name, uint64_t max, uint64_t used)
{
  jw_obj(w, name);
  jw_u64(w, "max", max);
  jw_u64(w, "used", used);
  jw_end(w);
}

void api_hex32(char *out, const uint8_t *b)
{
  static const char hx[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hx[b[i] >> 4];
    out[2 * i + 1] = hx[b[i] & 15];
  }
  out[64] = '\0';
}

void jw_changed(struct jw *w, const char *const *names,
                const uint8_t (*was)[32], const uint8_t (*now)[32],
                size_t n)
{
  jw_arr(w, "changed");
  for (size_t i = 0; i < n; i++)
    if (memcmp(was[i], now[i], 32))
      jw_str(w, NULL, names[i]);
  jw_end(w);
}

/* --- helpers ------------------------------------------------------------------ */

static int hexval(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  c = tolower(c);
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

static int pct_decode(const char *src, size_t n, char *out, size_t cap,
                      int plus_is_space)
{
  size_t k = 0;

  for (size_t i = 0; i < n; i++) {
    int ch = (unsigned char)src[i];
    if (ch == '%') {
      int hi, lo;
      if (i + 2 >= n)
        return -1;
      hi = hexval((unsigned char)src[i + 1]);
      lo = hexval((unsigned char)src[i + 2]);
      if (hi < 0 || lo < 0)
        return -1;
      ch = hi * 16 + lo;
      i += 2;
    } else if (ch == '+' && plus_is_space) {
      ch = ' ';
    }
    if (ch < 0x20 || ch == 0x7f)
      return -1;
    if (k + 1 >= cap)
      return -1;
    out[k++] = (char)ch;
  }
  out[k] = '\0';
  return (int)k;
}

int api_pct_decode(const char *src, size_t n, char *out, size_t cap)
{
  return pct_decode(src, n, out, cap, 0);
}

int api_peer_matches(const char *who, const char *cn, const uint8_t fp[32])
{
  size_t n = strlen(who);

  if (!n)
    return 0;
  if (cn && cn[0] && !strcmp(who, cn))
    return 1;
  if (n < 8 || n > 64)
    return 0;
  for (size_t i = 0; i < n; i++) {
    int v = hexval((unsigned char)who[i]);
    int b = (fp[i / 2] >> (i % 2 ? 0 : 4)) & 0xf;
    if (v < 0 || v != b)
      return 0;
  }
  return 1;
}

/* The query parameter name from q ("a=1&b=2"), decoded into out. 1 found,
 * 0 absent, -1 malformed. */
static int query_param(const char *q, const char *name, char *out, size_t cap)
{
  size_t nl = strlen(name);

  while (q && *q) {
    const char *amp = strchr(q, '&');
    size_t len = amp ? (size_t)(amp - q) : strlen(q);
    if (len > nl && !strncmp(q, name, nl) && q[nl] == '=')
      return pct_decode(q + nl + 1, len - nl - 1, out, cap, 1) < 0 ? -1 : 1;
    q = amp ? amp + 1 : NULL;
  }
  return 0;
}

/* --- router -------------------------------------------------------------------- */

static void json_error(struct h3_response *rs, int status, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));

static void json_error(struct h3_response *rs, int status, const char *fmt,
                       ...)
{
  struct jw w;
  char msg[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  jw_init(&w);
  jw_obj(&w, NULL);
  jw_str(&w, "error", msg);
  jw_end(&w);
  rs->status = status;
  rs->content_type = "application/json";
  rs->body = jw_finish(&w, &rs->len);
  if (!rs->body) {
    rs->status = 500;
    rs->len = 0;
  }
}

static void json_done(struct h3_response *rs, int status, struct jw *w)
{
  rs->status = status;
  rs->content_type = "application/json";
  rs->body = jw_finish(w, &rs->len);
  if (!rs->body) {
    rs->status = 500;
    rs->len = 0;
  }
}

static int method_is(const struct api_request *rq, const char *m)
{
  return !strcmp(rq->method, m);
}

static void not_allowed(struct h3_response *rs, const char *allow)
{
  json_error(rs, 405, "method not allowed here; allowed: %s", allow);
  rs->allow = allow;
}

void api_handle(const struct api_ops *ops, void *ud,
                const struct api_request *rq, struct h3_response *rs)
{
  char path[H3_PATH_MAX + 1], who[256];
  const char *query;
  size_t plen;
  struct jw w;

  memset(rs, 0, sizeof(*rs));
  if (!rq->local && !rq->admin) {
    json_error(rs, 403, "%s", rq->denied ? rq->denied
               : "this API needs an admin certificate");
    return;
  }
  query = strchr(rq->path, '?');
  plen = query ? (size_t)(query - rq->path) : strlen(rq->path);
  if (query)
    query++;
  if (plen >= sizeof(path) || plen == 0 || rq->path[0] != '/') {
    json_error(rs, 400, "bad path");
    return;
  }
  memcpy(path, rq->path, plen);
  path[plen] = '\0';

  if (!strcmp(path, "/v1/status")) {
    if (!method_is(rq, "GET") && !method_is(rq, "HEAD")) {
      not_allowed(rs, "GET");
      return;
    }
    jw_init(&w);
    jw_obj(&w, NULL);
    ops->status(ud, &w);
    jw_end(&w);
    json_done(rs, 200, &w);
    return;
  }
  if (!strcmp(path, "/v1/peers") || !strncmp(path, "/v1/peers/", 10)) {
    const char *raw = path[9] == '/' ? path + 10 : NULL;
    size_t n;

    if (raw && (api_pct_decode(raw, strlen(raw), who, sizeof(who)) <= 0 ||
                strchr(who, '/'))) {
      json_error(rs, 400, "bad peer name in the path: a certificate CN or "
                 "at least 8 hex digits of its SHA-256");
      return;
    }
    if (!ops->peers) {
      json_error(rs, 404, "this daemon has no peers");
      return;
    }
    if (method_is(rq, "GET") || method_is(rq, "HEAD")) {
      char num[24], *end;
      unsigned long long offset = 0;
      int q = query_param(query, "offset", num, sizeof(num));

      if (q < 0 || (q > 0 && (!num[0] || num[0] == '-' ||
                              (offset = strtoull(num, &end, 10),
                               *end != '\0')))) {
        json_error(rs, 400, "bad offset: a number of peers to skip");
        return;
      }
      jw_init(&w);
      jw_obj(&w, NULL);
      jw_arr(&w, "peers");
      n = ops->peers(ud, raw ? who : NULL, (size_t)offset, API_PEERS_MAX,
                     &w);
      jw_end(&w);
      jw_u64(&w, "total", n);
      if (offset + API_PEERS_MAX < n)
        jw_u64(&w, "next_offset", offset + API_PEERS_MAX);
      jw_end(&w);
      if (raw && n == 0) {
        jw_free(&w);
        json_error(rs, 404, "no peer matches '%s'", who);
        return;
      }
      json_done(rs, 200, &w);
      return;
    }
    if (method_is(rq, "DELETE") && raw) {
      char reason[101];
      int q;

      if (rq->local) {
        json_error(rs, 403, "DELETE needs the authenticated HTTP/3 API");
        return;
      }
      if (!ops->disconnect) {
        not_allowed(rs, "GET");
        return;
      }
      q = query_param(query, "reason", reason, sizeof(reason));
      if (q < 0) {
        json_error(rs, 400, "bad reason: printable text, at most 100 "
                   "bytes, percent-encoded");
        return;
      }
      if (q == 0)
        snprintf(reason, sizeof(reason), "disconnected by an administrator");
      n = ops->disconnect(ud, who, reason);
      if (n == 0) {
        json_error(rs, 404, "no peer matches '%s'", who);
        return;
      }
      jw_init(&w);
      jw_obj(&w, NULL);
      jw_u64(&w, "disconnected", n);
      jw_str(&w, "reason", reason);
      jw_end(&w);
      json_done(rs, 200, &w);
      return;
    }
    not_allowed(rs, raw && ops->disconnect ? "GET, DELETE" : "GET");
    return;
  }
  if (!strcmp(path, "/v1/reload")) {
    char err[512];

    if (!method_is(rq, "POST")) {
      not_allowed(rs, "POST");
      return;
    }
    if (rq->local) {
      json_error(rs, 403, "POST needs the authenticated HTTP/3 API");
      return;
    }
    if (!ops->reload) {
      json_error(rs, 404, "this daemon has nothing to reload");
      return;
    }
    jw_init(&w);
    jw_obj(&w, NULL);
    err[0] = '\0';
    if (ops->reload(ud, &w, err, sizeof(err)) < 0) {
      jw_free(&w);
      jw_init(&w);
      jw_obj(&w, NULL);
      jw_bool(&w, "reloaded", 0);
      jw_str(&w, "error", err[0] ? err : "refused");
      jw_str(&w, "kept", "the configuration in use before");
      jw_end(&w);
      json_done(rs, 422, &w);
      return;
    }
    jw_end(&w);
    json_done(rs, 200, &w);
    return;
  }
  if (!strcmp(path, "/metrics") && !rq->local) {
    if (!method_is(rq, "GET") && !method_is(rq, "HEAD")) {
      not_allowed(rs, "GET");
      return;
    }
    rs->body = ops->metrics ? ops->metrics(ud, &rs->len) : NULL;
    if (!rs->body) {
      json_error(rs, 500, "cannot render the metrics");
      return;
    }
    rs->status = 200;
    rs->content_type = "text/plain; version=0.0.4";
    return;
  }
  json_error(rs, 404, "no such resource: %s (see docs/api.md)", path);
}
