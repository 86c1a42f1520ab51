/* api.h - the status and admin API (docs/api.md), sans-IO: a JSON writer
 * and the request router that the HTTP/3 server (h3.c) and the local
 * HTTP/1.1 listener (metrics.c) share.
 *
 * Routes:
 *   GET    /v1/status            the daemon's status (JSON)
 *   GET    /v1/peers[?offset=N]  its peers, API_PEERS_MAX at a time
 *   GET    /v1/peers/{who}       those whose CN is who, or whose
 *                                certificate SHA-256 starts with who (hex,
 *                                at least 8 digits); 404 when none
 *   DELETE /v1/peers/{who}[?reason=...]  disconnects them
 *   POST   /v1/reload            what SIGHUP does; says what changed or
 *                                why the new files were refused
 *   GET    /metrics              the Prometheus text
 * Over HTTP/3 every route needs an admin certificate (the caller decides
 * and says so in api_request.admin); the local listener, which has no
 * authentication, serves only GET /v1/status and the GET /v1/peers ones.
 */
#ifndef ZTNA_API_H
#define ZTNA_API_H

#include <stddef.h>
#include <stdint.h>

#include "h3.h"

/* --- JSON writer ---------------------------------------------------------- */

#define JW_DEPTH 16
/* Peers in one answer (the status lists as many, and their total): the
 * answer of a daemon with 100,000 peers stays a few hundred KB. */
#define API_PEERS_MAX 1000

/* An indented JSON document in a growing buffer; on allocation failure
 * it stops writing and jw_finish returns NULL. Strings are written as
 * valid UTF-8 (invalid bytes become U+FFFD) with control characters
 * escaped, whatever the input. */
struct jw {
  char *b;
  size_t len, cap;
  int oom;
  int depth;
  int first[JW_DEPTH + 1];  /* nothing written at this depth yet */
  char close[JW_DEPTH + 1]; /* what closes it */
};

void jw_init(struct jw *w);
/* key: the member's name inside an object, NULL inside an array (or for
 * the top level). */
void jw_obj(struct jw *w, const char *key);
void jw_arr(struct jw *w, const char *key);
void jw_end(struct jw *w); /* closes the innermost object or array */
void jw_str(struct jw *w, const char *key, const char *v);
void jw_strn(struct jw *w, const char *key, const char *v, size_t n);
void jw_u64(struct jw *w, const char *key, uint64_t v);
void jw_i64(struct jw *w, const char *key, int64_t v);
void jw_bool(struct jw *w, const char *key, int v);
void jw_null(struct jw *w, const char *key);
/* A fixed-point number: v / 10^decimals (an RTT in ms from us, ...). */
void jw_fixed(struct jw *w, const char *key, uint64_t v, int decimals);
/* Returns the document (malloc'd, NUL-terminated, newline at the end)
 * and its length, or NULL; the writer is empty afterwards. */
char *jw_finish(struct jw *w, size_t *len);
void jw_free(struct jw *w);

/* {"name": {"max": max, "used": used}}: a bound and its use. */
void jw_limit(struct jw *w, const char *name, uint64_t max, uint64_t used);
/* A SHA-256 (32 bytes) as 64 lower-case hex digits into out[65]. */
void api_hex32(char *out, const uint8_t *b);
/* "changed": the names[i] whose sums differ between was and now. */
void jw_changed(struct jw *w, const char *const *names,
                const uint8_t (*was)[32], const uint8_t (*now)[32],
                size_t n);

/* --- router ----------------------------------------------------------------- */

struct tls_identity;

struct api_ops {
  /* HTTP/3: whether the client's certificate may use the API (looked at
   * on every request, so a reload of the policy counts at once); 0 with
   * why filled if not. */
  int (*authorize)(void *ud, const struct tls_identity *id, char *why,
                   size_t cap);
  /* Writes the status members into the open top-level object. */
  void (*status)(void *ud, struct jw *w);
  /* Writes the peers matching who (NULL: all), from the offset-th on
   * and at most limit of them, as objects into the open array; returns
   * how many match in all. */
  size_t (*peers)(void *ud, const char *who, size_t offset, size_t limit,
                  struct jw *w);
  /* Disconnects every peer matching who with reason; returns how many
   * (NULL: the daemon has no peers to disconnect). */
  size_t (*disconnect)(void *ud, const char *who, const char *reason);
  /* Reloads; returns 0 with what changed written as members into the
   * open object, or -1 with why in err (the old state stays). NULL: the
   * daemon has nothing to reload. */
  int (*reload)(void *ud, struct jw *w, char *err, size_t errlen);
  /* The Prometheus text (malloc'd), or NULL. */
  char *(*metrics)(void *ud, size_t *len);
};

struct api_request {
  const char *method;
  const char *path;   /* as received: percent-encoded, with any query */
  int local;          /* the unauthenticated local listener */
  int admin;          /* HTTP/3: the client's certificate is an admin's */
  const char *denied; /* HTTP/3, not admin: why (for the 403 body) */
};

/* Answers rq into rs (status, JSON or text body). */
void api_handle(const struct api_ops *ops, void *ud,
                const struct api_request *rq, struct h3_response *rs);

/* Serves the API on c, an h3 connection whose handshake is done (the
 * glue in h3.c): every request is authorized, answered by api_handle
 * and logged. Returns 0, or a ZTNA_ERR_* after closing c. */
struct quic_conn;
int api_attach(struct quic_conn *c, const struct api_ops *ops, void *ud);

/* Percent-decodes a path segment src[0..n) into out (cap bytes with the
 * NUL; '+' stays '+', a query's '+' is a space); refuses malformed
 * escapes, NUL and control bytes. Returns the length or -1. */
int api_pct_decode(const char *src, size_t n, char *out, size_t cap);

/* Whether a peer named by cn with certificate fingerprint fp matches who
 * (the CN, or at least 8 leading hex digits of the fingerprint). */
int api_peer_matches(const char *who, const char *cn, const uint8_t fp[32]);

#endif
