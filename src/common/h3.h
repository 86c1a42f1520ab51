/* h3.h - HTTP/3 (nghttp3) over ztna's QUIC connections: the server side
 * of the status and admin API and the client side of `ztna diag status`.
 *
 * A connection whose ALPN is h3 (quic_conn_is_h3) is handed to
 * h3_server_attach once its handshake is done; from then on its
 * callbacks are this module's, and each request is answered by the
 * handler the caller gave, synchronously, before anything else runs.
 * Bounded: a request's path, headers and body (H3_*_MAX) and at most
 * H3_MAX_REQUESTS at once; past a bound the answer is an HTTP error, a
 * malformed stream ends the connection with an HTTP/3 error code.
 */
#ifndef ZTNA_H3_H
#define ZTNA_H3_H

#include <stddef.h>
#include <stdint.h>

struct quic_conn;

#define H3_PATH_MAX 1024
#define H3_BODY_MAX (64 * 1024)
#define H3_HEADERS_MAX 64
#define H3_MAX_REQUESTS 4

struct h3_request {
  char method[16];
  char path[H3_PATH_MAX + 1];
  const uint8_t *body;
  size_t body_len;
};

struct h3_response {
  int status;
  const char *content_type; /* static; NULL: none */
  const char *allow;        /* static; the Allow header of a 405 */
  char *body;               /* malloc'd; the module frees it */
  size_t len;
};

typedef void (*h3_handler)(struct quic_conn *c, const struct h3_request *rq,
                           struct h3_response *rs, void *ud);

/* Takes over c (an h3 connection whose handshake is done). closed(c, ud)
 * runs when it is gone, last (at once when this fails). Returns 0, or a
 * negative error after closing c. */
int h3_server_attach(struct quic_conn *c, h3_handler fn,
                     void (*closed)(struct quic_conn *c, void *ud), void *ud);

/* Client: one request on an h3 connection whose handshake is done; done
 * runs once, with the status (0 when there is none: err says why) and
 * the body (at most H3_RESPONSE_MAX bytes). The connection is closed
 * after done returns. */
#define H3_RESPONSE_MAX (4 * 1024 * 1024)
typedef void (*h3_done)(int status, const uint8_t *body, size_t len,
                        const char *err, void *ud);
int h3_client_request(struct quic_conn *c, const char *method,
                      const char *authority, const char *path, h3_done done,
                      void *ud);

/* Sans-IO for the fuzzer: feeds bytes as if they arrived on stream sid
 * of a server connection, answering with fn; returns 0 or -1 when the
 * connection would have been closed. */
struct h3_fuzz;
struct h3_fuzz *h3_fuzz_new(h3_handler fn, void *ud);
int h3_fuzz_feed(struct h3_fuzz *f, int64_t sid, const uint8_t *d, size_t n,
                 int fin);
void h3_fuzz_del(struct h3_fuzz *f);

#endif
