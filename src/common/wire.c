/* wire.c - ztna wire messages. Every decoder treats its input as hostile. */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "wire.h"

enum wire_kind wire_classify(const uint8_t *p, size_t n)
{
  if (n == 0)
    return WIRE_KIND_UNKNOWN;
  switch (p[0]) {
  case WIRE_QAD_V4:
  case WIRE_QAD_V6:
    return WIRE_KIND_QAD;
  case WIRE_REG_AGENT:
  case WIRE_REG_CONNECTOR:
    return WIRE_KIND_REGISTER;
  case WIRE_REG_ACK:
    return WIRE_KIND_ACK;
  case WIRE_REG_NACK:
    return WIRE_KIND_NACK;
  case WIRE_ROUTED:
    return WIRE_KIND_ROUTED;
  case WIRE_AGENT_GONE:
    return WIRE_KIND_AGENT_GONE;
  case WIRE_SESSION_OPEN:
    return WIRE_KIND_SESSION_OPEN;
  case WIRE_SESSION_OPENED:
    return WIRE_KIND_SESSION_OPENED;
  case WIRE_SESSION_DATA:
    return WIRE_KIND_SESSION_DATA;
  case WIRE_SESSION_CLOSED:
    return WIRE_KIND_SESSION_CLOSED;
  case WIRE_PUNCH_BIND:
    return WIRE_KIND_PUNCH_BIND;
  case WIRE_SERVICES:
    return WIRE_KIND_SERVICES;
  case WIRE_REVOKED:
    return WIRE_KIND_REVOKED;
  }
  if (p[0] >= 0x45 && p[0] <= 0x4f)
    return WIRE_KIND_IPV4;
  if ((p[0] >> 4) == 6)
    return WIRE_KIND_IPV6;
  return WIRE_KIND_UNKNOWN;
}

int wire_agent_gone_encode(uint8_t *buf, size_t cap, int family,
                           const uint8_t *addr)
{
  size_t alen = family == 4 ? 4 : 16;

  if (family != 4 && family != 6)
    return ZTNA_ERR_MALFORMED;
  if (cap < 2 + alen)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_AGENT_GONE;
  buf[1] = (uint8_t)family;
  memcpy(buf + 2, addr, alen);
  return (int)(2 + alen);
}

int wire_agent_gone_decode(const uint8_t *p, size_t n, int *family,
                           uint8_t *addr)
{
  if (n < 2 || p[0] != WIRE_AGENT_GONE)
    return ZTNA_ERR_MALFORMED;
  if (!(p[1] == 4 && n == WIRE_AGENT_GONE_V4_LEN) &&
      !(p[1] == 6 && n == WIRE_AGENT_GONE_V6_LEN))
    return ZTNA_ERR_MALFORMED;
  *family = p[1];
  memcpy(addr, p + 2, n - 2);
  return 0;
}

static void put_u32(uint8_t *b, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    b[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_u64(uint8_t *b, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint32_t get_u32(const uint8_t *b)
{
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
         b[3];
}

static uint64_t get_u64(const uint8_t *b)
{
  return (uint64_t)get_u32(b) << 32 | get_u32(b + 4);
}

uint8_t wire_register_flags(const uint8_t *p, size_t n)
{
  size_t end;

  if (n < 2 || (p[0] != WIRE_REG_AGENT && p[0] != WIRE_REG_CONNECTOR))
    return 0;
  end = 2 + (size_t)p[1];
  if (n < end + 2 || p[end] != WIRE_REG_EXT_MAGIC)
    return 0;
  return p[end + 1];
}

int wire_session_open_encode(uint8_t *buf, size_t cap, uint32_t req,
                             const void *id, size_t idlen)
{
  if (idlen == 0 || idlen > WIRE_SERVICE_ID_MAX)
    return ZTNA_ERR_MALFORMED;
  if (cap < 6 + idlen)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_SESSION_OPEN;
  put_u32(buf + 1, req);
  buf[5] = (uint8_t)idlen;
  memcpy(buf + 6, id, idlen);
  return (int)(6 + idlen);
}

int wire_session_open_decode(const uint8_t *p, size_t n, uint32_t *req,
                             const uint8_t **id, size_t *idlen)
{
  if (n < 6 || p[0] != WIRE_SESSION_OPEN || p[5] == 0 ||
      n != 6 + (size_t)p[5] || !wire_utf8_valid(p + 6, p[5]))
    return ZTNA_ERR_MALFORMED;
  *req = get_u32(p + 1);
  *id = p + 6;
  *idlen = p[5];
  return 0;
}

int wire_session_opened_encode(uint8_t *buf, size_t cap, uint32_t req,
                               uint8_t status, uint64_t sid)
{
  if (cap < WIRE_SESSION_OPENED_LEN)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_SESSION_OPENED;
  put_u32(buf + 1, req);
  buf[5] = status;
  put_u64(buf + 6, sid);
  return WIRE_SESSION_OPENED_LEN;
}

int wire_session_opened_decode(const uint8_t *p, size_t n, uint32_t *req,
                               uint8_t *status, uint64_t *sid)
{
  if (n != WIRE_SESSION_OPENED_LEN || p[0] != WIRE_SESSION_OPENED)
    return ZTNA_ERR_MALFORMED;
  *req = get_u32(p + 1);
  *status = p[5];
  *sid = get_u64(p + 6);
  return 0;
}

int wire_session_data_header(uint8_t *buf, size_t cap, uint64_t sid)
{
  if (cap < WIRE_SESSION_HDR_LEN)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_SESSION_DATA;
  put_u64(buf + 1, sid);
  return WIRE_SESSION_HDR_LEN;
}

int wire_session_data_decode(const uint8_t *p, size_t n, uint64_t *sid,
                             const uint8_t **pkt, size_t *pktlen)
{
  if (n <= WIRE_SESSION_HDR_LEN || p[0] != WIRE_SESSION_DATA)
    return ZTNA_ERR_MALFORMED;
  *sid = get_u64(p + 1);
  *pkt = p + WIRE_SESSION_HDR_LEN;
  *pktlen = n - WIRE_SESSION_HDR_LEN;
  return 0;
}

int wire_session_closed_encode(uint8_t *buf, size_t cap, uint64_t sid,
                               uint8_t reason)
{
  if (cap < WIRE_SESSION_CLOSED_LEN)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_SESSION_CLOSED;
  put_u64(buf + 1, sid);
  buf[9] = reason;
  return WIRE_SESSION_CLOSED_LEN;
}

int wire_session_closed_decode(const uint8_t *p, size_t n, uint64_t *sid,
                               uint8_t *reason)
{
  if (n != WIRE_SESSION_CLOSED_LEN || p[0] != WIRE_SESSION_CLOSED)
    return ZTNA_ERR_MALFORMED;
  *sid = get_u64(p + 1);
  *reason = p[9];
  return 0;
}

int wire_services_encode(uint8_t *buf, size_t cap, const struct wire_id *ids,
                         size_t n)
{
  size_t off = 2;

  if (n > 255 || cap < 2)
    return n > 255 ? ZTNA_ERR_MALFORMED : ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_SERVICES;
  buf[1] = (uint8_t)n;
  for (size_t i = 0; i < n; i++) {
    if (ids[i].n == 0 || ids[i].n > WIRE_SERVICE_ID_MAX)
      return ZTNA_ERR_MALFORMED;
    if (cap - off < 1 + ids[i].n)
      return ZTNA_ERR_TOO_LARGE;
    buf[off++] = (uint8_t)ids[i].n;
    memcpy(buf + off, ids[i].p, ids[i].n);
    off += ids[i].n;
  }
  return (int)off;
}

int wire_services_decode(const uint8_t *p, size_t n, struct wire_id *out,
                         size_t max)
{
  size_t off = 2, count;

  if (n < 2 || p[0] != WIRE_SERVICES)
    return ZTNA_ERR_MALFORMED;
  count = p[1];
  if (count > max)
    return ZTNA_ERR_MALFORMED;
  for (size_t i = 0; i < count; i++) {
    size_t len;
    if (off >= n)
      return ZTNA_ERR_MALFORMED;
    len = p[off++];
    if (len == 0 || n - off < len || !wire_utf8_valid(p + off, len))
      return ZTNA_ERR_MALFORMED;
    out[i].p = p + off;
    out[i].n = len;
    off += len;
  }
  return off == n ? (int)count : ZTNA_ERR_MALFORMED;
}

int wire_revoked_encode(uint8_t *buf, size_t cap, const uint8_t *fp)
{
  if (cap < WIRE_REVOKED_LEN)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_REVOKED;
  memcpy(buf + 1, fp, 32);
  return WIRE_REVOKED_LEN;
}

int wire_revoked_decode(const uint8_t *p, size_t n, const uint8_t **fp)
{
  if (n != WIRE_REVOKED_LEN || p[0] != WIRE_REVOKED)
    return ZTNA_ERR_MALFORMED;
  *fp = p + 1;
  return 0;
}

int wire_punch_bind_encode(uint8_t *buf, size_t cap, uint64_t session)
{
  if (cap < WIRE_PUNCH_BIND_LEN)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_PUNCH_BIND;
  put_u64(buf + 1, session);
  return WIRE_PUNCH_BIND_LEN;
}

int wire_punch_bind_decode(const uint8_t *p, size_t n, uint64_t *session)
{
  if (n != WIRE_PUNCH_BIND_LEN || p[0] != WIRE_PUNCH_BIND)
    return ZTNA_ERR_MALFORMED;
  *session = get_u64(p + 1);
  return 0;
}

int wire_utf8_valid(const uint8_t *p, size_t n)
{
  size_t i = 0;

  while (i < n) {
    uint8_t c = p[i];
    size_t len;
    uint32_t cp, min;

    if (c < 0x80) {
      i++;
      continue;
    }
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return 0;
    }
    if (n - i < len)
      return 0;
    for (size_t k = 1; k < len; k++) {
      if ((p[i + k] & 0xc0) != 0x80)
        return 0;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
    i += len;
  }
  return 1;
}

/* --- QAD ------------------------------------------------------------- */

int wire_qad_encode(uint8_t *buf, size_t cap, const struct sockaddr *sa)
{
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (cap < WIRE_QAD_V4_LEN)
      return ZTNA_ERR_TOO_LARGE;
    buf[0] = WIRE_QAD_V4;
    memcpy(buf + 1, &in->sin_addr, 4);
    memcpy(buf + 5, &in->sin_port, 2);
    return WIRE_QAD_V4_LEN;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      if (cap < WIRE_QAD_V4_LEN)
        return ZTNA_ERR_TOO_LARGE;
      buf[0] = WIRE_QAD_V4;
      memcpy(buf + 1, in6->sin6_addr.s6_addr + 12, 4);
      memcpy(buf + 5, &in6->sin6_port, 2);
      return WIRE_QAD_V4_LEN;
    }
    if (cap < WIRE_QAD_V6_LEN)
      return ZTNA_ERR_TOO_LARGE;
    buf[0] = WIRE_QAD_V6;
    memcpy(buf + 1, &in6->sin6_addr, 16);
    memcpy(buf + 17, &in6->sin6_port, 2);
    return WIRE_QAD_V6_LEN;
  }
  return ZTNA_ERR_MALFORMED;
}

int wire_qad_decode(const uint8_t *p, size_t n, struct sockaddr_storage *out)
{
  memset(out, 0, sizeof(*out));
  if (n < 1)
    return ZTNA_ERR_SHORT;
  if (p[0] == WIRE_QAD_V4) {
    struct sockaddr_in *in = (struct sockaddr_in *)out;
    if (n < WIRE_QAD_V4_LEN)
      return ZTNA_ERR_SHORT;
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, p + 1, 4);
    memcpy(&in->sin_port, p + 5, 2);
    return 0;
  }
  if (p[0] == WIRE_QAD_V6) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    if (n < WIRE_QAD_V6_LEN)
      return ZTNA_ERR_SHORT;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, p + 1, 16);
    memcpy(&in6->sin6_port, p + 17, 2);
    return 0;
  }
  return ZTNA_ERR_MALFORMED;
}

/* --- Registration, ACK/NACK, routed ------------------------------------ */

static int put_id(uint8_t *buf, size_t cap, size_t off, const void *id,
                  size_t idlen)
{
  if (idlen > WIRE_SERVICE_ID_MAX || cap < off + 1 + idlen)
    return ZTNA_ERR_TOO_LARGE;
  buf[off] = (uint8_t)idlen;
  if (idlen)
    memcpy(buf + off + 1, id, idlen);
  return (int)(off + 1 + idlen);
}

int wire_register_encode(uint8_t *buf, size_t cap, uint8_t type,
                         const void *id, size_t idlen)
{
  if (type != WIRE_REG_AGENT && type != WIRE_REG_CONNECTOR)
    return ZTNA_ERR_MALFORMED;
  if (cap < 1)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = type;
  return put_id(buf, cap, 1, id, idlen);
}

int wire_register_decode(const uint8_t *p, size_t n, uint8_t *type,
                         const uint8_t **id, size_t *idlen)
{
  if (n < 2 || (p[0] != WIRE_REG_AGENT && p[0] != WIRE_REG_CONNECTOR))
    return n < 2 ? ZTNA_ERR_SHORT : ZTNA_ERR_MALFORMED;
  if (n < 2 + (size_t)p[1])
    return ZTNA_ERR_SHORT;
  *type = p[0];
  *id = p + 2;
  *idlen = p[1];
  if (*idlen == 0)
    return ZTNA_ERR_MALFORMED;
  if (!wire_utf8_valid(*id, *idlen))
    return ZTNA_ERR_UTF8;
  return 0;
}

int wire_status_encode(uint8_t *buf, size_t cap, uint8_t type, uint8_t status,
                       const void *id, size_t idlen)
{
  if (type != WIRE_REG_ACK && type != WIRE_REG_NACK)
    return ZTNA_ERR_MALFORMED;
  if (cap < 2)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = type;
  buf[1] = status;
  return put_id(buf, cap, 2, id, idlen);
}

int wire_status_decode(const uint8_t *p, size_t n, uint8_t *type,
                       uint8_t *status, const uint8_t **id, size_t *idlen)
{
  if (n < 3)
    return ZTNA_ERR_SHORT;
  if (p[0] != WIRE_REG_ACK && p[0] != WIRE_REG_NACK)
    return ZTNA_ERR_MALFORMED;
  if (n < 3 + (size_t)p[2])
    return ZTNA_ERR_SHORT;
  *type = p[0];
  *status = p[1];
  *id = p + 3;
  *idlen = p[2];
  return 0;
}

int wire_routed_encode_header(uint8_t *buf, size_t cap, const void *id,
                              size_t idlen)
{
  if (idlen == 0)
    return ZTNA_ERR_MALFORMED;
  if (cap < 1)
    return ZTNA_ERR_TOO_LARGE;
  buf[0] = WIRE_ROUTED;
  return put_id(buf, cap, 1, id, idlen);
}

int wire_routed_decode(const uint8_t *p, size_t n, const uint8_t **id,
                       size_t *idlen, const uint8_t **pkt, size_t *pktlen)
{
  if (n < 2)
    return ZTNA_ERR_SHORT;
  if (p[0] != WIRE_ROUTED)
    return ZTNA_ERR_MALFORMED;
  if (p[1] == 0)
    return ZTNA_ERR_MALFORMED;
  if (n <= 2 + (size_t)p[1])
    return ZTNA_ERR_SHORT;
  *id = p + 2;
  *idlen = p[1];
  *pkt = p + 2 + p[1];
  *pktlen = n - 2 - p[1];
  return 0;
}

/* --- bincode ------------------------------------------------------------ */

struct wbuf {
  uint8_t *p;
  size_t cap, len;
  int err;
};

static void w_bytes(struct wbuf *w, const void *d, size_t n)
{
  if (w->err || w->cap - w->len < n) {
    w->err = 1;
    return;
  }
  if (n)
    memcpy(w->p + w->len, d, n);
  w->len += n;
}

static void w_le(struct wbuf *w, uint64_t v, size_t width)
{
  uint8_t b[8];
  for (size_t i = 0; i < width; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  w_bytes(w, b, width);
}

static void w_str(struct wbuf *w, const char *s, size_t n)
{
  w_le(w, n, 8);
  w_bytes(w, s, n);
}

static void w_addr(struct wbuf *w, const struct sockaddr_storage *ss)
{
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    w_le(w, 0, 4);
    w_bytes(w, &in->sin_addr, 4);
    w_le(w, ntohs(in->sin_port), 2);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    w_le(w, 1, 4);
    w_bytes(w, &in6->sin6_addr, 16);
    w_le(w, ntohs(in6->sin6_port), 2);
  } else {
    w->err = 1;
  }
}

static void w_candidate(struct wbuf *w, const struct wire_candidate *c)
{
  w_le(w, c->type, 4);
  w_addr(w, &c->addr);
  w_le(w, c->priority, 4);
  w_str(w, c->foundation, strlen(c->foundation));
  w_le(w, c->has_related ? 1 : 0, 1);
  if (c->has_related)
    w_addr(w, &c->related);
}

static void w_candidates(struct wbuf *w, const struct wire_sig *m)
{
  if (m->ncand > WIRE_SIG_MAX_CANDIDATES) {
    w->err = 1;
    return;
  }
  w_le(w, m->ncand, 8);
  for (size_t i = 0; i < m->ncand; i++)
    w_candidate(w, &m->cand[i]);
}

int wire_sig_encode(uint8_t *buf, size_t cap, const struct wire_sig *m)
{
  struct wbuf w = { buf, cap, 0, 0 };

  w_le(&w, m->tag, 4);
  switch (m->tag) {
  case WIRE_SIG_OFFER:
    w_le(&w, m->session_id, 8);
    w_str(&w, m->service_id, m->service_id_len);
    w_candidates(&w, m);
    break;
  case WIRE_SIG_ANSWER:
    w_le(&w, m->session_id, 8);
    w_candidates(&w, m);
    break;
  case WIRE_SIG_START:
    w_le(&w, m->session_id, 8);
    w_le(&w, m->start_delay_ms, 8);
    w_candidates(&w, m);
    break;
  case WIRE_SIG_RESULT:
    w_le(&w, m->session_id, 8);
    w_le(&w, m->success ? 1 : 0, 1);
    w_le(&w, m->has_working ? 1 : 0, 1);
    if (m->has_working)
      w_addr(&w, &m->working);
    break;
  case WIRE_SIG_ERROR:
    w_le(&w, m->has_session_id ? 1 : 0, 1);
    if (m->has_session_id)
      w_le(&w, m->session_id, 8);
    w_le(&w, m->code, 4);
    w_str(&w, m->message, m->message_len);
    break;
  default:
    return ZTNA_ERR_MALFORMED;
  }
  if (w.err)
    return ZTNA_ERR_TOO_LARGE;
  if (w.len > WIRE_SIG_PAYLOAD_MAX)
    return ZTNA_ERR_TOO_LARGE;
  return (int)w.len;
}

int wire_sig_frame(uint8_t *buf, size_t cap, const struct wire_sig *m)
{
  int n;

  if (cap < 4)
    return ZTNA_ERR_TOO_LARGE;
  n = wire_sig_encode(buf + 4, cap - 4, m);
  if (n < 0)
    return n;
  buf[0] = (uint8_t)(n >> 24);
  buf[1] = (uint8_t)(n >> 16);
  buf[2] = (uint8_t)(n >> 8);
  buf[3] = (uint8_t)n;
  return n + 4;
}

struct rbuf {
  const uint8_t *p;
  size_t n, off;
  int err;
};

static int r_need(struct rbuf *r, size_t k)
{
  if (r->err || r->n - r->off < k) {
    r->err = r->err ? r->err : ZTNA_ERR_SHORT;
    return 0;
  }
  return 1;
}

static uint64_t r_le(struct rbuf *r, size_t width)
{
  uint64_t v = 0;
  if (!r_need(r, width))
    return 0;
  for (size_t i = 0; i < width; i++)
    v |= (uint64_t)r->p[r->off + i] << (8 * i);
  r->off += width;
  return v;
}

static int r_bool(struct rbuf *r)
{
  uint64_t b = r_le(r, 1);
  if (b > 1 && !r->err)
    r->err = ZTNA_ERR_MALFORMED;
  return (int)b;
}

/* Reads a String into out (capacity cap including the NUL). When truncate is
 * set an over-long string is cut; otherwise it is an error. */
static size_t r_str(struct rbuf *r, char *out, size_t cap, int truncate)
{
  uint64_t len = r_le(r, 8);
  size_t keep;

  if (r->err)
    return 0;
  if (len > r->n - r->off) {
    r->err = ZTNA_ERR_SHORT;
    return 0;
  }
  if (!wire_utf8_valid(r->p + r->off, (size_t)len)) {
    r->err = ZTNA_ERR_UTF8;
    return 0;
  }
  keep = (size_t)len;
  if (keep > cap - 1) {
    if (!truncate) {
      r->err = ZTNA_ERR_TOO_LARGE;
      return 0;
    }
    keep = cap - 1;
    /* Never cut inside a UTF-8 sequence. */
    while (keep > 0 && (r->p[r->off + keep] & 0xc0) == 0x80)
      keep--;
  }
  memcpy(out, r->p + r->off, keep);
  out[keep] = '\0';
  r->off += (size_t)len;
  return keep;
}

static void r_addr(struct rbuf *r, struct sockaddr_storage *ss)
{
  uint64_t tag = r_le(r, 4);

  memset(ss, 0, sizeof(*ss));
  if (r->err)
    return;
  if (tag == 0) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    if (!r_need(r, 4))
      return;
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, r->p + r->off, 4);
    r->off += 4;
    in->sin_port = htons((uint16_t)r_le(r, 2));
  } else if (tag == 1) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (!r_need(r, 16))
      return;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, r->p + r->off, 16);
    r->off += 16;
    in6->sin6_port = htons((uint16_t)r_le(r, 2));
  } else {
    r->err = ZTNA_ERR_MALFORMED;
  }
}

static void r_candidates(struct rbuf *r, struct wire_sig *m)
{
  uint64_t count = r_le(r, 8);

  if (r->err)
    return;
  if (count > WIRE_SIG_MAX_CANDIDATES) {
    r->err = ZTNA_ERR_LIMIT;
    return;
  }
  m->ncand = (size_t)count;
  for (size_t i = 0; i < m->ncand && !r->err; i++) {
    struct wire_candidate *c = &m->cand[i];
    c->type = (uint32_t)r_le(r, 4);
    if (!r->err && c->type > WIRE_CAND_RELAY)
      r->err = ZTNA_ERR_MALFORMED;
    r_addr(r, &c->addr);
    c->priority = (uint32_t)r_le(r, 4);
    r_str(r, c->foundation, sizeof(c->foundation), 0);
    c->has_related = r_bool(r);
    if (c->has_related)
      r_addr(r, &c->related);
  }
}

int wire_sig_decode(const uint8_t *p, size_t n, struct wire_sig *m)
{
  struct rbuf r = { p, n, 0, 0 };

  memset(m, 0, sizeof(*m));
  m->tag = (uint32_t)r_le(&r, 4);
  if (r.err)
    return r.err;
  switch (m->tag) {
  case WIRE_SIG_OFFER:
    m->session_id = r_le(&r, 8);
    m->service_id_len = r_str(&r, m->service_id, sizeof(m->service_id), 0);
    r_candidates(&r, m);
    break;
  case WIRE_SIG_ANSWER:
    m->session_id = r_le(&r, 8);
    r_candidates(&r, m);
    break;
  case WIRE_SIG_START:
    m->session_id = r_le(&r, 8);
    m->start_delay_ms = r_le(&r, 8);
    r_candidates(&r, m);
    break;
  case WIRE_SIG_RESULT:
    m->session_id = r_le(&r, 8);
    m->success = r_bool(&r);
    m->has_working = r_bool(&r);
    if (m->has_working)
      r_addr(&r, &m->working);
    break;
  case WIRE_SIG_ERROR:
    m->has_session_id = r_bool(&r);
    if (m->has_session_id)
      m->session_id = r_le(&r, 8);
    m->code = (uint32_t)r_le(&r, 4);
    m->message_len = r_str(&r, m->message, sizeof(m->message), 1);
    break;
  default:
    return ZTNA_ERR_MALFORMED;
  }
  return r.err;
}

int wire_sigbuf_init(struct wire_sigbuf *sb)
{
  sb->buf = NULL;
  sb->len = sb->cap = 0;
  sb->failed = 0;
  return 0;
}

/* Room for want bytes (at most the largest frame). */
static int sigbuf_reserve(struct wire_sigbuf *sb, size_t want)
{
  const size_t max = 4 + WIRE_SIG_PAYLOAD_MAX;
  size_t cap = sb->cap ? sb->cap : 512;
  uint8_t *b;

  if (want > max)
    want = max;
  if (want <= sb->cap)
    return 0;
  while (cap < want)
    cap *= 2;
  if (cap > max)
    cap = max;
  b = realloc(sb->buf, cap);
  if (!b)
    return -12; /* -ENOMEM */
  sb->buf = b;
  sb->cap = cap;
  return 0;
}

void wire_sigbuf_free(struct wire_sigbuf *sb)
{
  if (!sb)
    return;
  free(sb->buf);
  sb->buf = NULL;
  sb->len = sb->cap = 0;
}

int wire_sigbuf_feed(struct wire_sigbuf *sb, const uint8_t *p, size_t n,
                     wire_sig_cb cb, void *ud)
{
  const size_t cap = 4 + WIRE_SIG_PAYLOAD_MAX;
  struct wire_sig *m;
  int rv = 0;

  if (sb->failed)
    return ZTNA_ERR_STATE;
  if (n == 0 && sb->len < 4)
    return 0;
  m = malloc(sizeof(*m));
  if (!m)
    return -12;
  while (n > 0 || sb->len >= 4) {
    size_t take = cap - sb->len < n ? cap - sb->len : n;
    uint32_t flen;

    if (sigbuf_reserve(sb, sb->len + take) < 0) {
      rv = -12;
      break;
    }
    memcpy(sb->buf + sb->len, p, take);
    sb->len += take;
    p += take;
    n -= take;
    if (sb->len < 4)
      break;
    flen = (uint32_t)sb->buf[0] << 24 | (uint32_t)sb->buf[1] << 16 |
           (uint32_t)sb->buf[2] << 8 | sb->buf[3];
    if (flen > WIRE_SIG_PAYLOAD_MAX) {
      rv = ZTNA_ERR_TOO_LARGE;
      break;
    }
    if (sb->len < 4 + (size_t)flen) {
      if (n == 0)
        break;
      continue;
    }
    rv = wire_sig_decode(sb->buf + 4, flen, m);
    if (rv < 0)
      break;
    memmove(sb->buf, sb->buf + 4 + flen, sb->len - 4 - flen);
    sb->len -= 4 + flen;
    cb(m, ud);
  }
  free(m);
  if (rv < 0) {
    sb->failed = 1;
    sb->len = 0;
  }
  if (sb->len == 0 && sb->cap > 4096) {
    free(sb->buf); /* an idle stream keeps no large buffer */
    sb->buf = NULL;
    sb->cap = 0;
  }
  return rv;
}

/* --- P2P control ---------------------------------------------------------- */

int wire_ctl_encode(uint8_t *buf, size_t cap, const struct wire_ctl *c)
{
  struct wbuf w = { buf, cap, 0, 0 };
  uint8_t be[4];

  w_le(&w, WIRE_CTL_MAGIC, 1);
  switch (c->kind) {
  case WIRE_CTL_BIND_REQ:
    w_le(&w, c->auth ? 2 : 0, 4);
    w_bytes(&w, c->txn, 12);
    w_le(&w, c->priority, 8);
    w_le(&w, c->use_candidate ? 1 : 0, 1);
    if (c->auth) {
      uint8_t cid[WIRE_CTL_CID_MAX] = { 0 };
      if (c->cidlen > WIRE_CTL_CID_MAX)
        return ZTNA_ERR_MALFORMED;
      memcpy(cid, c->cid, c->cidlen);
      w_le(&w, c->session, 8);
      w_le(&w, c->cidlen, 1);
      w_bytes(&w, cid, sizeof(cid));
      w_bytes(&w, c->tag, WIRE_CTL_TAG_LEN);
    }
    break;
  case WIRE_CTL_BIND_RESP:
    w_le(&w, c->auth ? 3 : 1, 4);
    w_bytes(&w, c->txn, 12);
    w_le(&w, c->success ? 1 : 0, 1);
    w_le(&w, c->has_mapped ? 1 : 0, 1);
    if (c->has_mapped)
      w_addr(&w, &c->mapped);
    if (c->auth)
      w_bytes(&w, c->tag, WIRE_CTL_TAG_LEN);
    break;
  case WIRE_CTL_KA_REQ:
  case WIRE_CTL_KA_RESP:
    w_le(&w, c->kind == WIRE_CTL_KA_REQ ? 0x10 : 0x11, 1);
    be[0] = (uint8_t)(c->seq >> 24);
    be[1] = (uint8_t)(c->seq >> 16);
    be[2] = (uint8_t)(c->seq >> 8);
    be[3] = (uint8_t)c->seq;
    w_bytes(&w, be, 4);
    break;
  default:
    return ZTNA_ERR_MALFORMED;
  }
  return w.err ? ZTNA_ERR_TOO_LARGE : (int)w.len;
}

int wire_ctl_decode(const uint8_t *p, size_t n, struct wire_ctl *c)
{
  struct rbuf r = { p, n, 1, 0 };

  memset(c, 0, sizeof(*c));
  if (n < 1 || p[0] != WIRE_CTL_MAGIC)
    return ZTNA_ERR_MALFORMED;
  c->raw = p;
  c->rawlen = n;
  if (n == WIRE_KEEPALIVE_LEN && (p[1] == 0x10 || p[1] == 0x11)) {
    c->kind = p[1] == 0x10 ? WIRE_CTL_KA_REQ : WIRE_CTL_KA_RESP;
    c->seq = (uint32_t)p[2] << 24 | (uint32_t)p[3] << 16 |
             (uint32_t)p[4] << 8 | p[5];
    return 0;
  }
  if (n == WIRE_BIND_REQ_LEN && r_le(&r, 4) == 0) {
    memcpy(c->txn, p + 5, 12);
    r.off = 17;
    c->priority = r_le(&r, 8);
    c->use_candidate = r_bool(&r);
    c->kind = WIRE_CTL_BIND_REQ;
    return r.err ? ZTNA_ERR_MALFORMED : 0;
  }
  r.off = 1;
  if (n == WIRE_ABIND_REQ_LEN && r_le(&r, 4) == 2) {
    memcpy(c->txn, p + 5, 12);
    r.off = 17;
    c->priority = r_le(&r, 8);
    c->use_candidate = r_bool(&r);
    c->session = r_le(&r, 8);
    c->cidlen = (size_t)r_le(&r, 1);
    if (r.err || c->cidlen > WIRE_CTL_CID_MAX)
      return ZTNA_ERR_MALFORMED;
    memcpy(c->cid, p + r.off, c->cidlen);
    for (size_t i = c->cidlen; i < WIRE_CTL_CID_MAX; i++)
      if (p[r.off + i])
        return ZTNA_ERR_MALFORMED; /* padding is zero: one encoding */
    memcpy(c->tag, p + n - WIRE_CTL_TAG_LEN, WIRE_CTL_TAG_LEN);
    c->auth = 1;
    c->kind = WIRE_CTL_BIND_REQ;
    return 0;
  }
  r.off = 1;
  if (n >= 19) {
    uint64_t t = r_le(&r, 4);
    int auth = t == 3;
    size_t body = auth ? n - WIRE_CTL_TAG_LEN : n;
    if ((t == 1 || t == 3) && (body == 19 || body == 29 || body == 41)) {
      memcpy(c->txn, p + 5, 12);
      r.off = 17;
      r.n = body;
      c->success = r_bool(&r);
      c->has_mapped = r_bool(&r);
      if (c->has_mapped)
        r_addr(&r, &c->mapped);
      if (r.err || r.off != body)
        return ZTNA_ERR_MALFORMED;
      if (auth)
        memcpy(c->tag, p + body, WIRE_CTL_TAG_LEN);
      c->auth = auth;
      c->kind = WIRE_CTL_BIND_RESP;
      return 0;
    }
  }
  return ZTNA_ERR_MALFORMED;
}
