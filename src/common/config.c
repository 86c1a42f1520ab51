/* config.c - jsmn-based JSON loading with precise error messages. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include "config.h"
#include "err.h"
#include "wire.h"

static int hexval(char c);

struct doc {
  const char *name;
  const char *text;
  size_t len;
  jsmntok_t *tok;
  int ntok;
  char *err;
  size_t errlen;
  cfg_warn_fn warn;
  char path[160]; /* key path for messages, e.g. services[1].backend */
};

static void pos_of(const struct doc *d, int off, int *line, int *col)
{
  *line = 1;
  *col = 1;
  for (int i = 0; i < off && (size_t)i < d->len; i++) {
    if (d->text[i] == '\n') {
      (*line)++;
      *col = 1;
    } else {
      (*col)++;
    }
  }
}

/* Where a token begins in the text: a string at its opening quote. */
static int tok_pos(const struct doc *d, int t)
{
  if (t < 0)
    return 0;
  return d->tok[t].start - (d->tok[t].type == JSMN_STRING ? 1 : 0);
}

__attribute__((format(printf, 3, 4))) static int fail(struct doc *d, int t,
                                                      const char *fmt, ...)
{
  int line, col, n;
  va_list ap;

  pos_of(d, tok_pos(d, t), &line, &col);
  if (d->path[0])
    n = snprintf(d->err, d->errlen, "%s:%d:%d: %s: ", d->name, line, col,
                 d->path);
  else
    n = snprintf(d->err, d->errlen, "%s:%d:%d: ", d->name, line, col);
  if (n >= 0 && (size_t)n < d->errlen) {
    va_start(ap, fmt);
    vsnprintf(d->err + n, d->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return ZTNA_ERR_CONFIG;
}

static const char *type_name(const struct doc *d, int t)
{
  const jsmntok_t *k = &d->tok[t];
  switch (k->type) {
  case JSMN_OBJECT:
    return "an object";
  case JSMN_ARRAY:
    return "an array";
  case JSMN_STRING:
    return "a string";
  case JSMN_PRIMITIVE:
    switch (d->text[k->start]) {
    case 't':
    case 'f':
      return "a boolean";
    case 'n':
      return "null";
    default:
      return "a number";
    }
  default:
    return "nothing";
  }
}

/* Index of the token after t's whole subtree. */
static int skip(const struct doc *d, int t)
{
  int end = t + 1;
  int pending = d->tok[t].size;

  while (pending > 0 && end < d->ntok) {
    pending--;
    pending += d->tok[end].size;
    end++;
  }
  return end;
}

static int is_null(const struct doc *d, int t)
{
  return d->tok[t].type == JSMN_PRIMITIVE && d->text[d->tok[t].start] == 'n';
}

static int key_is(const struct doc *d, int t, const char *key)
{
  size_t n = (size_t)(d->tok[t].end - d->tok[t].start);
  return strlen(key) == n && memcmp(d->text + d->tok[t].start, key, n) == 0;
}

/* Unescapes a JSON string token into out (cap bytes with the NUL). */
static int get_str(struct doc *d, int t, char *out, size_t cap)
{
  const char *s = d->text + d->tok[t].start;
  size_t n = (size_t)(d->tok[t].end - d->tok[t].start), o = 0;

  if (d->tok[t].type != JSMN_STRING)
    return fail(d, t, "expected a string, got %s", type_name(d, t));
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    unsigned cp = 0;
    char enc[3];
    size_t el = 1;

    if (ch < 0x20)
      return fail(d, t, "control character in string");
    enc[0] = (char)ch;
    if (ch == '\\') {
      if (++i >= n)
        return fail(d, t, "unfinished escape in string");
      switch (s[i]) {
      case '"': enc[0] = '"'; break;
      case '\\': enc[0] = '\\'; break;
      case '/': enc[0] = '/'; break;
      case 'b': enc[0] = '\b'; break;
      case 'f': enc[0] = '\f'; break;
      case 'n': enc[0] = '\n'; break;
      case 'r': enc[0] = '\r'; break;
      case 't': enc[0] = '\t'; break;
      case 'u':
        if (n - i < 5)
          return fail(d, t, "short \\u escape in string");
        for (int k = 1; k <= 4; k++) {
          int h = hexval(s[i + k]);
          if (h < 0)
            return fail(d, t, "bad \\u escape in string");
          cp = cp << 4 | (unsigned)h;
        }
        i += 4;
        if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
          return fail(d, t, "\\u%04x is not allowed in a string", cp);
        if (cp < 0x80) {
          enc[0] = (char)cp;
        } else if (cp < 0x800) {
          enc[0] = (char)(0xc0 | cp >> 6);
          enc[1] = (char)(0x80 | (cp & 0x3f));
          el = 2;
        } else {
          enc[0] = (char)(0xe0 | cp >> 12);
          enc[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
          enc[2] = (char)(0x80 | (cp & 0x3f));
          el = 3;
        }
        break;
      default:
        return fail(d, t, "unknown escape \\%c in string", s[i]);
      }
    }
    if (o + el >= cap)
      return fail(d, t, "string longer than %zu bytes", cap - 1);
    memcpy(out + o, enc, el);
    o += el;
  }
  out[o] = '\0';
  if (!wire_utf8_valid((const uint8_t *)out, o))
    return fail(d, t, "string is not valid UTF-8");
  return 0;
}

static int get_bool(struct doc *d, int t, int *out)
{
  const char *s = d->text + d->tok[t].start;
  if (d->tok[t].type == JSMN_PRIMITIVE && (*s == 't' || *s == 'f')) {
    *out = *s == 't';
    return 0;
  }
  return fail(d, t, "expected true or false, got %s", type_name(d, t));
}

static int get_uint(struct doc *d, int t, long min, long max, long *out)
{
  char buf[32], *end;
  size_t n = (size_t)(d->tok[t].end - d->tok[t].start);
  long v;

  if (d->tok[t].type != JSMN_PRIMITIVE || n == 0 || n >= sizeof(buf) ||
      !(d->text[d->tok[t].start] == '-' ||
        (d->text[d->tok[t].start] >= '0' && d->text[d->tok[t].start] <= '9')))
    return fail(d, t, "expected a whole number from %ld to %ld, got %s", min,
                max, type_name(d, t));
  memcpy(buf, d->text + d->tok[t].start, n);
  buf[n] = '\0';
  errno = 0;
  v = strtol(buf, &end, 10);
  if (errno || *end || v < min || v > max)
    return fail(d, t, "expected a whole number from %ld to %ld, got %s", min,
                max, buf);
  *out = v;
  return 0;
}

static int get_port(struct doc *d, int t, uint16_t *out, int allow_zero)
{
  long v = 0;
  int rv = get_uint(d, t, allow_zero ? 0 : 1, 65535, &v);
  if (rv == 0)
    *out = (uint16_t)v;
  return rv;
}

/* Optional string: null leaves it empty. */
static int get_ostr(struct doc *d, int t, char *out, size_t cap)
{
  if (is_null(d, t)) {
    out[0] = '\0';
    return 0;
  }
  return get_str(d, t, out, cap);
}

/* A whole number from 1 to hi. */
static int get_u32(struct doc *d, int t, long hi, uint32_t *out)
{
  long v;
  int rv = get_uint(d, t, 1, hi, &v);

  if (rv == 0)
    *out = (uint32_t)v;
  return rv;
}

/* A string that must be an IPv4 or IPv6 address literal. */
static int get_ip(struct doc *d, int t, char *out, size_t cap)
{
  unsigned char buf[16];
  int rv = get_str(d, t, out, cap);

  if (rv == 0 && inet_pton(AF_INET, out, buf) != 1 &&
      inet_pton(AF_INET6, out, buf) != 1)
    return fail(d, t, "'%s' is not an IP address (0.0.0.0 or :: listens "
                "on every address)", out);
  return rv;
}

static void set_path(struct doc *d, const char *prefix, int keytok)
{
  int kl = d->tok[keytok].end - d->tok[keytok].start;
  snprintf(d->path, sizeof(d->path), "%s%s%.*s", prefix,
           prefix[0] ? "." : "", kl > 64 ? 64 : kl,
           d->text + d->tok[keytok].start);
}

static void unknown_key(struct doc *d, int keytok)
{
  char msg[512];
  int line, col;

  if (!d->warn || d->text[d->tok[keytok].start] == '_')
    return;
  pos_of(d, tok_pos(d, keytok), &line, &col);
  snprintf(msg, sizeof(msg), "%s:%d:%d: unknown key '%s' ignored", d->name,
           line, col, d->path);
  d->warn(msg);
}

static int hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* A strict RFC 8259 syntax check: jsmn alone accepts things such as
 * "{"a": 1,,}" and missing commas. Returns 0, or -1 with *pos at the first
 * byte that is wrong. Nesting is bounded so hostile input cannot exhaust
 * the stack. */
struct vj {
  const char *s;
  size_t n, i;
  int depth;
  const char *why;
};

static int vj_fail(struct vj *v, const char *why)
{
  if (!v->why)
    v->why = v->i >= v->n ? "JSON ends too early (unclosed { [ or \")" : why;
  return -1;
}

static void vj_ws(struct vj *v)
{
  while (v->i < v->n && (v->s[v->i] == ' ' || v->s[v->i] == '\t' ||
                         v->s[v->i] == '\n' || v->s[v->i] == '\r'))
    v->i++;
}

static int vj_value(struct vj *v);

static int vj_string(struct vj *v, const char *what)
{
  if (v->i >= v->n || v->s[v->i] != '"')
    return vj_fail(v, what);
  for (v->i++; v->i < v->n; v->i++) {
    unsigned char c = (unsigned char)v->s[v->i];
    if (c == '"') {
      v->i++;
      return 0;
    }
    if (c < 0x20)
      return vj_fail(v, "control character in string (escape it)");
    if (c != '\\')
      continue;
    if (++v->i >= v->n)
      break;
    if (v->s[v->i] == 'u') {
      for (int k = 1; k <= 4; k++)
        if (v->i + (size_t)k >= v->n || hexval(v->s[v->i + (size_t)k]) < 0)
          return vj_fail(v, "\\u needs four hex digits");
      v->i += 4;
    } else if (!strchr("\"\\/bfnrt", v->s[v->i]) || !v->s[v->i]) {
      v->i--;
      return vj_fail(v, "unknown escape in string");
    }
  }
  return vj_fail(v, "unterminated string");
}

static int vj_digits(struct vj *v)
{
  size_t start = v->i;
  while (v->i < v->n && v->s[v->i] >= '0' && v->s[v->i] <= '9')
    v->i++;
  return v->i > start ? 0 : vj_fail(v, "bad number");
}

static int vj_number(struct vj *v)
{
  if (v->i < v->n && v->s[v->i] == '-')
    v->i++;
  if (v->i >= v->n ||
      !(v->s[v->i] >= '0' && v->s[v->i] <= '9'))
    return vj_fail(v, "expected a value (string, number, object, array, "
                      "true, false or null)");
  if (v->s[v->i] == '0') {
    v->i++;
    if (v->i < v->n && v->s[v->i] >= '0' && v->s[v->i] <= '9')
      return vj_fail(v, "numbers do not start with 0");
  } else if (vj_digits(v) < 0) {
    return -1;
  }
  if (v->i < v->n && v->s[v->i] == '.') {
    v->i++;
    if (vj_digits(v) < 0)
      return -1;
  }
  if (v->i < v->n && (v->s[v->i] == 'e' || v->s[v->i] == 'E')) {
    v->i++;
    if (v->i < v->n && (v->s[v->i] == '+' || v->s[v->i] == '-'))
      v->i++;
    if (vj_digits(v) < 0)
      return -1;
  }
  return 0;
}

static int vj_word(struct vj *v, const char *w)
{
  size_t k = strlen(w);
  if (v->n - v->i < k || memcmp(v->s + v->i, w, k) != 0)
    return vj_fail(v, "expected a value (string, number, object, array, "
                      "true, false or null)");
  v->i += k;
  return 0;
}

static int vj_container(struct vj *v, char close)
{
  if (++v->depth > 32)
    return vj_fail(v, "nested deeper than 32 levels");
  v->i++;
  vj_ws(v);
  if (v->i < v->n && v->s[v->i] == close) {
    v->i++;
    v->depth--;
    return 0;
  }
  for (;;) {
    vj_ws(v);
    if (close == '}') {
      if (vj_string(v, "expected a quoted key") < 0)
        return -1;
      vj_ws(v);
      if (v->i >= v->n || v->s[v->i] != ':')
        return vj_fail(v, "expected ':' after the key");
      v->i++;
      vj_ws(v);
    }
    if (vj_value(v) < 0)
      return -1;
    vj_ws(v);
    if (v->i < v->n && v->s[v->i] == ',') {
      v->i++;
      continue;
    }
    if (v->i < v->n && v->s[v->i] == close) {
      v->i++;
      v->depth--;
      return 0;
    }
    return vj_fail(v, close == '}' ? "expected ',' or '}'"
                                   : "expected ',' or ']'");
  }
}

static int vj_value(struct vj *v)
{
  if (v->i >= v->n)
    return vj_fail(v, "");
  switch (v->s[v->i]) {
  case '{':
    return vj_container(v, '}');
  case '[':
    return vj_container(v, ']');
  case '"':
    return vj_string(v, "");
  case 't':
    return vj_word(v, "true");
  case 'f':
    return vj_word(v, "false");
  case 'n':
    return vj_word(v, "null");
  default:
    return vj_number(v);
  }
}

/* Returns NULL when s is one JSON value, else why not with *pos set. */
static const char *json_syntax_error(const char *s, size_t n, size_t *pos)
{
  struct vj v = { s, n, 0, 0, NULL };

  vj_ws(&v);
  if (vj_value(&v) == 0) {
    vj_ws(&v);
    if (v.i == n)
      return NULL;
    v.why = "unexpected data after the top-level value";
  }
  *pos = v.i;
  return v.why;
}

static int jsmn_failure(struct doc *d, int code, unsigned pos)
{
  int line, col;

  pos_of(d, (int)pos, &line, &col);
  snprintf(d->err, d->errlen, "%s:%d:%d: %s", d->name, line, col,
           code == JSMN_ERROR_PART ? "JSON ends too early (unclosed { [ or \")"
                                   : "invalid JSON here");
  return ZTNA_ERR_CONFIG;
}

static int parse_doc(struct doc *d, const char *name, const char *text,
                     size_t len, char *err, size_t errlen, cfg_warn_fn warn)
{
  jsmn_parser p;
  const char *why;
  size_t bad;
  int n;

  memset(d, 0, sizeof(*d));
  d->name = name;
  d->text = text;
  d->len = len;
  d->err = err;
  d->errlen = errlen;
  d->warn = warn;
  if (len > CFG_FILE_MAX)
    return fail(d, -1, "file larger than %d bytes", CFG_FILE_MAX);
  if (memchr(text, '\0', len))
    return fail(d, -1, "file contains a NUL byte; is it JSON?");
  if (strspn(text, " \t\r\n") >= len)
    return fail(d, -1, "empty file: expected a JSON object");
  if ((why = json_syntax_error(text, len, &bad)) != NULL) {
    int line, col;
    pos_of(d, (int)bad, &line, &col);
    snprintf(err, errlen, "%s:%d:%d: %s", name, line, col, why);
    return ZTNA_ERR_CONFIG;
  }
  jsmn_init(&p);
  n = jsmn_parse(&p, text, len, NULL, 0);
  if (n < 0)
    return jsmn_failure(d, n, p.pos);
  if (n == 0)
    return fail(d, -1, "empty file: expected a JSON object");
  d->tok = calloc((size_t)n, sizeof(*d->tok));
  if (!d->tok)
    return fail(d, -1, "out of memory");
  jsmn_init(&p);
  d->ntok = jsmn_parse(&p, text, len, d->tok, (unsigned)n);
  if (d->ntok != n) {
    /* Only this pass sees unclosed objects: the counting pass does not. */
    free(d->tok);
    d->tok = NULL;
    return jsmn_failure(d, d->ntok < 0 ? d->ntok : JSMN_ERROR_INVAL, p.pos);
  }
  if (d->tok[0].type != JSMN_OBJECT)
    return fail(d, 0, "expected a JSON object at the top, got %s",
                type_name(d, 0));
  if (skip(d, 0) != d->ntok)
    return fail(d, skip(d, 0), "unexpected data after the top-level object");
  return 0;
}

/* Calls fn for each member of object t; fn returns 0, 1 for "unknown key"
 * or an error. */
typedef int (*member_fn)(struct doc *d, int key, int val, void *out);

static int each_member(struct doc *d, int t, const char *prefix, member_fn fn,
                       void *out)
{
  int i = t + 1, rv;

  if (d->tok[t].type != JSMN_OBJECT)
    return fail(d, t, "expected an object, got %s", type_name(d, t));
  for (int k = 0; k < d->tok[t].size; k++) {
    int key = i, val = i + 1;
    if (val >= d->ntok || d->tok[key].type != JSMN_STRING)
      return fail(d, key, "expected a quoted key");
    set_path(d, prefix, key);
    rv = fn(d, key, val, out);
    if (rv == 1)
      unknown_key(d, key);
    else if (rv < 0)
      return rv;
    i = skip(d, val);
  }
  d->path[0] = '\0';
  return 0;
}

/* --- shared pieces ---------------------------------------------------- */

static int hostport_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_connector *c = out;
  if (key_is(d, key, "host"))
    return get_str(d, val, c->server_host, sizeof(c->server_host));
  if (key_is(d, key, "port"))
    return get_port(d, val, &c->server_port, 0);
  return 1;
}

static int p2p_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_connector *c = out;
  if (key_is(d, key, "cert"))
    return get_ostr(d, val, c->p2p_cert, sizeof(c->p2p_cert));
  if (key_is(d, key, "key"))
    return get_ostr(d, val, c->p2p_key, sizeof(c->p2p_key));
  if (key_is(d, key, "port"))
    return get_port(d, val, &c->p2p_port, 0);
  return 1;
}

static int service_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_service *s = out;
  char proto[16];
  int rv;

  if (key_is(d, key, "id"))
    return get_str(d, val, s->id, sizeof(s->id));
  if (key_is(d, key, "backend"))
    return get_str(d, val, s->backend, sizeof(s->backend));
  if (key_is(d, key, "virtualIp") || key_is(d, key, "virtual_ip"))
    return get_str(d, val, s->virtual_ip, sizeof(s->virtual_ip));
  if (key_is(d, key, "protocol")) {
    rv = get_str(d, val, proto, sizeof(proto));
    if (rv < 0)
      return rv;
    if (!strcmp(proto, "udp"))
      s->protocol = CFG_PROTO_UDP;
    else if (!strcmp(proto, "tcp"))
      s->protocol = CFG_PROTO_TCP;
    else if (!strcmp(proto, "both"))
      s->protocol = CFG_PROTO_BOTH;
    else
      return fail(d, val, "expected \"udp\", \"tcp\" or \"both\", got "
                  "\"%s\"", proto);
    return 0;
  }
  return 1;
}

static int get_services(struct doc *d, int t, struct cfg_service *svc,
                        size_t *n)
{
  int i = t + 1, rv;
  char prefix[48];

  if (d->tok[t].type != JSMN_ARRAY)
    return fail(d, t, "expected an array of services, got %s",
                type_name(d, t));
  if (d->tok[t].size > CFG_MAX_SERVICES)
    return fail(d, t, "more than %d services", CFG_MAX_SERVICES);
  *n = 0;
  for (int k = 0; k < d->tok[t].size; k++) {
    struct cfg_service *s = &svc[*n];
    memset(s, 0, sizeof(*s));
    s->protocol = CFG_PROTO_BOTH;
    snprintf(prefix, sizeof(prefix), "services[%d]", k);
    rv = each_member(d, i, prefix, service_member, s);
    if (rv < 0)
      return rv;
    snprintf(d->path, sizeof(d->path), "%s", prefix);
    if (!s->id[0])
      return fail(d, i, "a service needs a non-empty \"id\"");
    for (size_t j = 0; j < *n; j++)
      if (!strcmp(svc[j].id, s->id))
        return fail(d, i, "service \"%s\" is listed twice", s->id);
    d->path[0] = '\0';
    (*n)++;
    i = skip(d, i);
  }
  return 0;
}

/* --- intermediate ------------------------------------------------------- */

void cfg_intermediate_defaults(struct cfg_intermediate *c)
{
  memset(c, 0, sizeof(*c));
  c->port = 4433;
  snprintf(c->bind_addr, sizeof(c->bind_addr), "0.0.0.0");
  c->verify_peer = 1;
  c->require_client_cert = 1;
  c->metrics_port = 9090;
  snprintf(c->metrics_bind, sizeof(c->metrics_bind), "127.0.0.1");
  c->max_connections = 4096;
  c->max_translations = 65536;
  c->translation_quarantine_s = 900;
  snprintf(c->cluster_prefix, sizeof(c->cluster_prefix), "ztna");
}

static int intermediate_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_intermediate *c = out;

  if (key_is(d, key, "port"))
    return get_port(d, val, &c->port, 0);
  if (key_is(d, key, "bind_addr"))
    return get_str(d, val, c->bind_addr, sizeof(c->bind_addr));
  if (key_is(d, key, "external_ip"))
    return get_ostr(d, val, c->external_ip, sizeof(c->external_ip));
  if (key_is(d, key, "cert_path"))
    return get_str(d, val, c->cert_path, sizeof(c->cert_path));
  if (key_is(d, key, "key_path"))
    return get_str(d, val, c->key_path, sizeof(c->key_path));
  if (key_is(d, key, "ca_cert_path"))
    return get_ostr(d, val, c->ca_cert_path, sizeof(c->ca_cert_path));
  if (key_is(d, key, "policy_path"))
    return get_ostr(d, val, c->policy_path, sizeof(c->policy_path));
  if (key_is(d, key, "verify_peer"))
    return get_bool(d, val, &c->verify_peer);
  if (key_is(d, key, "require_client_cert"))
    return get_bool(d, val, &c->require_client_cert);
  if (key_is(d, key, "disable_retry"))
    return get_bool(d, val, &c->disable_retry);
  if (key_is(d, key, "metrics_port"))
    return get_port(d, val, &c->metrics_port, 1);
  if (key_is(d, key, "metrics_bind"))
    return get_ip(d, val, c->metrics_bind, sizeof(c->metrics_bind));
  if (key_is(d, key, "diag_port"))
    return get_port(d, val, &c->diag_port, 1);
  if (key_is(d, key, "max_connections"))
    return get_u32(d, val, 1000000, &c->max_connections);
  if (key_is(d, key, "max_translations"))
    return get_u32(d, val, CFG_MAX_TRANSLATIONS, &c->max_translations);
  if (key_is(d, key, "translation_quarantine_s"))
    return get_u32(d, val, 86400, &c->translation_quarantine_s);
  if (key_is(d, key, "cluster_redis"))
    return get_ostr(d, val, c->cluster_redis, sizeof(c->cluster_redis));
  if (key_is(d, key, "cluster_node"))
    return get_ostr(d, val, c->cluster_node, sizeof(c->cluster_node));
  if (key_is(d, key, "cluster_advertise"))
    return get_ostr(d, val, c->cluster_advertise,
                    sizeof(c->cluster_advertise));
  if (key_is(d, key, "cluster_prefix"))
    return get_str(d, val, c->cluster_prefix, sizeof(c->cluster_prefix));
  if (key_is(d, key, "cluster_redis_user"))
    return get_ostr(d, val, c->cluster_redis_user,
                    sizeof(c->cluster_redis_user));
  if (key_is(d, key, "cluster_redis_password_file"))
    return get_ostr(d, val, c->cluster_redis_password_file,
                    sizeof(c->cluster_redis_password_file));
  if (key_is(d, key, "cluster_redis_ca"))
    return get_ostr(d, val, c->cluster_redis_ca, sizeof(c->cluster_redis_ca));
  if (key_is(d, key, "cluster_redis_sentinels"))
    return get_ostr(d, val, c->cluster_redis_sentinels,
                    sizeof(c->cluster_redis_sentinels));
  if (key_is(d, key, "cluster_redis_master"))
    return get_ostr(d, val, c->cluster_redis_master,
                    sizeof(c->cluster_redis_master));
  if (key_is(d, key, "cluster_redis_name"))
    return get_ostr(d, val, c->cluster_redis_name,
                    sizeof(c->cluster_redis_name));
  return 1;
}

int cfg_intermediate_parse(struct cfg_intermediate *out, const char *name,
                           const char *text, size_t len, char *err,
                           size_t errlen, cfg_warn_fn warn)
{
  struct doc d;
  int rv = parse_doc(&d, name, text, len, err, errlen, warn);
  if (rv == 0)
    rv = each_member(&d, 0, "", intermediate_member, out);
  free(d.tok);
  return rv;
}

/* --- connector ---------------------------------------------------------- */

void cfg_connector_defaults(struct cfg_connector *c)
{
  memset(c, 0, sizeof(*c));
  c->server_port = 4433;
  c->p2p_port = 4434;
  c->verify_peer = 1;
  c->metrics_port = 9091;
  snprintf(c->metrics_bind, sizeof(c->metrics_bind), "127.0.0.1");
}

static int connector_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_connector *c = out;
  char prefix[32];

  if (key_is(d, key, "intermediate_server")) {
    snprintf(prefix, sizeof(prefix), "intermediate_server");
    return each_member(d, val, prefix, hostport_member, c);
  }
  if (key_is(d, key, "p2p")) {
    if (is_null(d, val))
      return 0;
    return each_member(d, val, "p2p", p2p_member, c);
  }
  if (key_is(d, key, "services"))
    return get_services(d, val, c->services, &c->nservices);
  if (key_is(d, key, "ca_cert"))
    return get_ostr(d, val, c->ca_cert, sizeof(c->ca_cert));
  if (key_is(d, key, "cert"))
    return get_ostr(d, val, c->cert, sizeof(c->cert));
  if (key_is(d, key, "key"))
    return get_ostr(d, val, c->key, sizeof(c->key));
  if (key_is(d, key, "verify_peer"))
    return get_bool(d, val, &c->verify_peer);
  if (key_is(d, key, "metrics_port"))
    return get_port(d, val, &c->metrics_port, 1);
  if (key_is(d, key, "metrics_bind"))
    return get_ip(d, val, c->metrics_bind, sizeof(c->metrics_bind));
  if (key_is(d, key, "policy_path"))
    return get_ostr(d, val, c->policy_path, sizeof(c->policy_path));
  return 1;
}

int cfg_connector_parse(struct cfg_connector *out, const char *name,
                        const char *text, size_t len, char *err, size_t errlen,
                        cfg_warn_fn warn)
{
  struct doc d;
  int rv = parse_doc(&d, name, text, len, err, errlen, warn);

  if (rv == 0)
    rv = each_member(&d, 0, "", connector_member, out);
  if (rv == 0) {
    for (size_t i = 0; i < out->nservices; i++) {
      if (!out->services[i].backend[0]) {
        snprintf(d.path, sizeof(d.path), "services[%zu]", i);
        rv = fail(&d, 0, "service \"%s\" needs a \"backend\" "
                  "(\"ip:port\" or \"host:port\")", out->services[i].id);
        break;
      }
    }
  }
  free(d.tok);
  return rv;
}

/* --- agent ---------------------------------------------------------------- */

void cfg_agent_defaults(struct cfg_agent *c)
{
  memset(c, 0, sizeof(*c));
  c->server_port = 4433;
  c->verify_peer = 1;
  snprintf(c->tun_name, sizeof(c->tun_name), "ztna0");
  snprintf(c->tunnel_addr, sizeof(c->tunnel_addr), "100.64.0.1");
  snprintf(c->metrics_bind, sizeof(c->metrics_bind), "127.0.0.1");
  c->direct = 1;
  c->tun_offload = 1;
}

static int agent_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_agent *c = out;
  char hp[CFG_STR_MAX + 8];
  int rv;

  if (key_is(d, key, "server")) {
    rv = get_str(d, val, hp, sizeof(hp));
    if (rv == 0 && cfg_split_hostport(hp, c->server_host,
                                      sizeof(c->server_host),
                                      &c->server_port) < 0)
      return fail(d, val, "expected \"host:port\", got \"%s\"", hp);
    return rv;
  }
  if (key_is(d, key, "serverHost") || key_is(d, key, "server_host"))
    return get_str(d, val, c->server_host, sizeof(c->server_host));
  if (key_is(d, key, "serverPort") || key_is(d, key, "server_port"))
    return get_port(d, val, &c->server_port, 0);
  if (key_is(d, key, "serviceId") || key_is(d, key, "service_id")) {
    struct cfg_service *s;
    char id[CFG_STR_MAX];
    rv = get_ostr(d, val, id, sizeof(id));
    if (rv < 0 || !id[0])
      return rv;
    for (size_t i = 0; i < c->nservices; i++)
      if (!strcmp(c->services[i].id, id))
        return 0;
    if (c->nservices >= CFG_MAX_SERVICES)
      return fail(d, val, "more than %d services", CFG_MAX_SERVICES);
    s = &c->services[c->nservices++];
    memset(s, 0, sizeof(*s));
    memcpy(s->id, id, sizeof(id));
    return 0;
  }
  if (key_is(d, key, "services")) {
    /* Keep a serviceId seen earlier if services does not list it. */
    struct cfg_service legacy;
    size_t had = c->nservices;
    if (had)
      legacy = c->services[0];
    rv = get_services(d, val, c->services, &c->nservices);
    if (rv == 0 && had) {
      for (size_t i = 0; i < c->nservices; i++)
        if (!strcmp(c->services[i].id, legacy.id))
          return 0;
      if (c->nservices >= CFG_MAX_SERVICES)
        return fail(d, val, "more than %d services", CFG_MAX_SERVICES);
      c->services[c->nservices++] = legacy;
    }
    return rv;
  }
  if (key_is(d, key, "verifyPeer") || key_is(d, key, "verify_peer"))
    return get_bool(d, val, &c->verify_peer);
  if (key_is(d, key, "caCertPath") || key_is(d, key, "ca_cert"))
    return get_ostr(d, val, c->ca_cert, sizeof(c->ca_cert));
  if (key_is(d, key, "certPath") || key_is(d, key, "cert"))
    return get_ostr(d, val, c->cert, sizeof(c->cert));
  if (key_is(d, key, "keyPath") || key_is(d, key, "key"))
    return get_ostr(d, val, c->key, sizeof(c->key));
  if (key_is(d, key, "tunName") || key_is(d, key, "tun_name"))
    return get_str(d, val, c->tun_name, sizeof(c->tun_name));
  if (key_is(d, key, "tunnelAddr") || key_is(d, key, "tunnel_addr"))
    return get_str(d, val, c->tunnel_addr, sizeof(c->tunnel_addr));
  if (key_is(d, key, "direct"))
    return get_bool(d, val, &c->direct);
  if (key_is(d, key, "raw_relay"))
    return get_bool(d, val, &c->raw_relay);
  if (key_is(d, key, "tun_offload"))
    return get_bool(d, val, &c->tun_offload);
  if (key_is(d, key, "tunnelAddr6") || key_is(d, key, "tunnel_addr6"))
    return get_str(d, val, c->tunnel_addr6, sizeof(c->tunnel_addr6));
  if (key_is(d, key, "metrics_port"))
    return get_port(d, val, &c->metrics_port, 1);
  if (key_is(d, key, "metrics_bind"))
    return get_ip(d, val, c->metrics_bind, sizeof(c->metrics_bind));
  return 1;
}

int cfg_agent_load(struct cfg_agent *out, const char *explicit_path,
                   char *path, size_t pathlen, char *err, size_t errlen,
                   cfg_warn_fn warn)
{
  char *text;
  size_t len;
  int rv;

  if (cfg_find(explicit_path, "agent", path, pathlen) < 0)
    return 1;
  rv = cfg_read_file(path, &text, &len, err, errlen);
  if (rv < 0)
    return rv;
  rv = cfg_agent_parse(out, path, text, len, err, errlen, warn);
  free(text);
  return rv;
}

int cfg_agent_parse(struct cfg_agent *out, const char *name, const char *text,
                    size_t len, char *err, size_t errlen, cfg_warn_fn warn)
{
  struct doc d;
  int rv = parse_doc(&d, name, text, len, err, errlen, warn);
  if (rv == 0)
    rv = each_member(&d, 0, "", agent_member, out);
  free(d.tok);
  return rv;
}

/* --- policy ------------------------------------------------------------ */

/* A list of names: "CN", "group:OU" or "*". */
static int name_list(struct doc *d, int val, char (*names)[CFG_NAME_MAX + 1],
                     size_t *n, const char *who)
{
  int i = val + 1, rv;

  if (d->tok[val].type != JSMN_ARRAY)
    return fail(d, val, "expected an array of names, got %s",
                type_name(d, val));
  if (d->tok[val].size > CFG_POLICY_MAX_ALLOW)
    return fail(d, val, "more than %d names", CFG_POLICY_MAX_ALLOW);
  *n = 0;
  for (int k = 0; k < d->tok[val].size; k++, i++) {
    char *name = names[*n];
    rv = get_str(d, i, name, CFG_NAME_MAX + 1);
    if (rv < 0)
      return rv;
    if (!name[0] || !strcmp(name, "group:"))
      return fail(d, i, "an empty name allows nobody; use \"*\" for every "
                  "%s the certificate allows", who);
    (*n)++;
  }
  return 0;
}

static int allow_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_policy_service *ps = out;

  if (!key_is(d, key, "allow"))
    return 1;
  return name_list(d, val, ps->allow, &ps->nallow, "agent");
}

static int policy_service(struct doc *d, int key, int val, void *out)
{
  struct cfg_policy *p = out;
  struct cfg_policy_service *ps;
  char prefix[CFG_STR_MAX + 16];
  int rv;

  if (p->nservices >= CFG_POLICY_MAX_SERVICES)
    return fail(d, key, "more than %d services", CFG_POLICY_MAX_SERVICES);
  ps = &p->services[p->nservices];
  memset(ps, 0, sizeof(*ps));
  rv = get_str(d, key, ps->id, sizeof(ps->id));
  if (rv < 0)
    return rv;
  if (!ps->id[0])
    return fail(d, key, "empty service id");
  for (size_t i = 0; i < p->nservices; i++)
    if (!strcmp(p->services[i].id, ps->id))
      return fail(d, key, "service \"%s\" is listed twice", ps->id);
  snprintf(prefix, sizeof(prefix), "services.%s", ps->id);
  rv = each_member(d, val, prefix, allow_member, ps);
  if (rv < 0)
    return rv;
  p->nservices++;
  return 0;
}

static int policy_member(struct doc *d, int key, int val, void *out)
{
  struct cfg_policy *p = out;

  if (key_is(d, key, "services"))
    return each_member(d, val, "services", policy_service, out);
  if (key_is(d, key, "admins")) {
    p->has_admins = 1;
    return name_list(d, val, p->admins, &p->nadmins, "admin");
  }
  return 1;
}

int cfg_policy_parse(struct cfg_policy *out, const char *name, const char *text,
                     size_t len, char *err, size_t errlen, cfg_warn_fn warn)
{
  struct doc d;
  int rv;

  memset(out, 0, sizeof(*out));
  out->services = calloc(CFG_POLICY_MAX_SERVICES, sizeof(*out->services));
  if (!out->services) {
    snprintf(err, errlen, "%s: out of memory", name);
    return -ENOMEM;
  }
  rv = parse_doc(&d, name, text, len, err, errlen, warn);
  if (rv == 0)
    rv = each_member(&d, 0, "", policy_member, out);
  free(d.tok);
  if (rv < 0)
    cfg_policy_free(out);
  return rv;
}

void cfg_policy_free(struct cfg_policy *p)
{
  if (!p)
    return;
  free(p->services);
  p->services = NULL;
  p->nservices = 0;
}

/* --- files ---------------------------------------------------------------- */

int cfg_read_file(const char *path, char **text, size_t *len, char *err,
                  size_t errlen)
{
  struct stat st;
  char *buf;
  ssize_t r;
  size_t got = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  *text = NULL;
  if (fd < 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -errno;
  }
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > CFG_FILE_MAX) {
    snprintf(err, errlen, "%s: not a regular file of at most %d bytes", path,
             CFG_FILE_MAX);
    close(fd);
    return ZTNA_ERR_CONFIG;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    close(fd);
    snprintf(err, errlen, "%s: out of memory", path);
    return -ENOMEM;
  }
  while (got < (size_t)st.st_size &&
         (r = read(fd, buf + got, (size_t)st.st_size - got)) > 0)
    got += (size_t)r;
  close(fd);
  buf[got] = '\0';
  *text = buf;
  *len = got;
  return 0;
}

int cfg_find(const char *explicit_path, const char *role, char *out,
             size_t outlen)
{
  if (explicit_path) {
    snprintf(out, outlen, "%s", explicit_path);
    return 0;
  }
  snprintf(out, outlen, "/etc/ztna/%s.json", role);
  if (access(out, F_OK) == 0)
    return 0;
  snprintf(out, outlen, "./%s.json", role);
  if (access(out, F_OK) == 0)
    return 0;
  out[0] = '\0';
  return ZTNA_ERR_NOT_FOUND;
}

int cfg_parse_uint(const char *s, long lo, long hi, long *out)
{
  char *end;
  long v;

  errno = 0;
  v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < lo || v > hi)
    return ZTNA_ERR_MALFORMED;
  *out = v;
  return 0;
}

int cfg_parse_port(const char *s, uint16_t *out, int allow_zero)
{
  long p;

  if (cfg_parse_uint(s, allow_zero ? 0 : 1, 65535, &p) < 0)
    return ZTNA_ERR_MALFORMED;
  *out = (uint16_t)p;
  return 0;
}

int cfg_split_hostport(const char *s, char *host, size_t hostlen,
                       uint16_t *port)
{
  const char *colon, *h = s;
  size_t hl;
  uint16_t p;

  if (s[0] == '[') {
    const char *rb = strchr(s, ']');
    if (!rb || rb[1] != ':')
      return ZTNA_ERR_MALFORMED;
    h = s + 1;
    hl = (size_t)(rb - h);
    colon = rb + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon || strchr(s, ':') != colon)
      return ZTNA_ERR_MALFORMED;
    hl = (size_t)(colon - s);
  }
  if (hl == 0 || hl >= hostlen)
    return ZTNA_ERR_MALFORMED;
  if (cfg_parse_port(colon + 1, &p, 0) < 0)
    return ZTNA_ERR_MALFORMED;
  memcpy(host, h, hl);
  host[hl] = '\0';
  *port = p;
  return 0;
}
