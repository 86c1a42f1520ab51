/* fuzz_h3.c - HTTP/3 request handling (h3.c with nghttp3) and the API
 * router (api.c) on hostile stream bytes.
 *
 * Input: records of [selector][length, 2 bytes big-endian][bytes]. The
 * selector picks the stream (the client's control and QPACK streams 2,
 * 6, 10, or request streams 0, 4, 8, 12) and, with bit 0x80, ends it.
 * Every request that completes goes through api_handle as an admin or
 * not (bit 0x40 of the first byte), so paths, methods, queries and
 * percent-escapes from the input all reach the router.
 *
 * The connection side of h3.c is never reached without a quic_conn; the
 * stubs below abort if it were.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "h3.h"
#include "quic.h"

/* --- unreachable without a connection --------------------------------------- */

int quic_conn_stream_send(struct quic_conn *c, int64_t sid, const uint8_t *d,
                          size_t n, int fin)
{
  (void)c, (void)sid, (void)d, (void)n, (void)fin;
  abort();
}
void quic_conn_close(struct quic_conn *c, uint64_t code, const char *reason)
{
  (void)c, (void)code, (void)reason;
  abort();
}
void quic_conn_set_cbs(struct quic_conn *c, const struct quic_conn_cbs *cbs,
                       void *ud)
{
  (void)c, (void)cbs, (void)ud;
  abort();
}
int quic_conn_open_uni_stream(struct quic_conn *c, int64_t *sid)
{
  (void)c, (void)sid;
  abort();
}
int quic_conn_open_stream(struct quic_conn *c, int64_t *sid)
{
  (void)c, (void)sid;
  abort();
}
void quic_conn_shutdown_stream(struct quic_conn *c, int64_t sid,
                               uint64_t code, int read, int write)
{
  (void)c, (void)sid, (void)code, (void)read, (void)write;
  abort();
}
int quic_conn_peer_identity(struct quic_conn *c, struct tls_identity *id)
{
  (void)c, (void)id;
  abort();
}
size_t quic_conn_stream_room(struct quic_conn *c, int64_t sid)
{
  (void)c, (void)sid;
  abort();
}
const struct sockaddr *quic_conn_peer(struct quic_conn *c)
{
  (void)c;
  abort();
}

/* --- a daemon behind the router ---------------------------------------------- */

static int authorize(void *ud, const struct tls_identity *id, char *why,
                     size_t cap)
{
  (void)ud, (void)id, (void)why, (void)cap;
  return 1;
}

static void status(void *ud, struct jw *w)
{
  (void)ud;
  jw_str(w, "role", "fuzz");
}

static size_t peers(void *ud, const char *who, size_t offset, size_t limit,
                    struct jw *w)
{
  static const uint8_t fp[32] = { 0x12, 0x34, 0x56, 0x78 };
  (void)ud;
  if ((who && !api_peer_matches(who, "alice", fp)) || offset || !limit)
    return 0;
  jw_obj(w, NULL);
  jw_str(w, "identity", who ? who : "alice");
  jw_end(w);
  return 1;
}

static size_t disconnect(void *ud, const char *who, const char *reason)
{
  (void)ud;
  return strlen(who) + strlen(reason) > 0;
}

static int reload(void *ud, struct jw *w, char *err, size_t errlen)
{
  (void)ud, (void)err, (void)errlen;
  jw_bool(w, "reloaded", 1);
  return 0;
}

static char *metrics(void *ud, size_t *len)
{
  (void)ud;
  *len = 2;
  return strdup("x\n");
}

static const struct api_ops ops = { authorize, status, peers, disconnect,
                                    reload, metrics };
static int admin;

static void handler(struct quic_conn *c, const struct h3_request *rq,
                    struct h3_response *rs, void *ud)
{
  struct api_request arq = { .method = rq->method, .path = rq->path,
                             .admin = admin, .denied = "no" };
  (void)c, (void)ud;
  if (!rq->method[0] || !rq->path[0]) {
    rs->status = 400;
    return;
  }
  api_handle(&ops, NULL, &arq, rs);
  /* FUZZ_H3_SHOW=1: what the seeds ask and get (checking a corpus). */
  if (getenv("FUZZ_H3_SHOW"))
    fprintf(stderr, "%s %s -> %d\n", rq->method, rq->path, rs->status);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  static const int64_t sids[] = { 2, 6, 10, 0, 4, 8, 12 };
  struct h3_fuzz *f;
  size_t i = 0;

  if (n < 1)
    return 0;
  admin = (d[0] & 0x40) != 0;
  f = h3_fuzz_new(handler, NULL);
  if (!f)
    return 0;
  while (i + 3 <= n) {
    uint8_t sel = d[i];
    size_t len = (size_t)d[i + 1] << 8 | d[i + 2];
    i += 3;
    if (len > n - i)
      len = n - i;
    if (h3_fuzz_feed(f, sids[(sel & 0x3f) % 7], d + i, len,
                     (sel & 0x80) != 0) < 0)
      break;
    i += len;
  }
  h3_fuzz_del(f);
  return 0;
}
