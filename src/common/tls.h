/* tls.h - wolfSSL contexts for ztna's QUIC connections.
 *
 * A tls_ctx is a reference-counted wolfSSL context for one role (server or
 * client) with its certificate, key, CA and verification policy. Peer
 * verification is on by default; a server requires a client certificate by
 * default. ALPN is "ztna-v1" unless the config says otherwise (tests only).
 * Reload: build a new tls_ctx from disk and swap it in; sessions already
 * made keep the context they were made with.
 */
#ifndef ZTNA_TLS_H
#define ZTNA_TLS_H

#include <stddef.h>
#include <stdint.h>

#define TLS_ALPN "ztna-v1"
/* An agent's end-to-end connection to a connector (protocol.md 10). */
#define TLS_ALPN_E2E "ztna-e2e-v1"
/* The HTTP/3 status and admin API (docs/api.md): a server that offers
 * it lists it after its own ALPN ("ztna-v1,h3"); each connection gets
 * the one its client asked for. */
#define TLS_ALPN_H3 "h3"
#define TLS_ALPN_MAX 32
#define TLS_MAX_SANS 32
#define TLS_NAME_MAX 253

struct tls_config {
  const char *cert_file; /* PEM chain; required for a server */
  const char *key_file;  /* PEM private key (EC P-256 or Ed25519) */
  const char *ca_file;   /* PEM CA bundle to verify the peer */
  int verify_peer;       /* 1 by default (set by tls_config_init) */
  int require_client_cert; /* server: 1 by default */
  const char *alpn;      /* NULL: TLS_ALPN; a server may list several,
                          * comma-separated */
  /* client: the name the server certificate must be valid for when no SNI
   * is sent (the connector sends none to the intermediate) */
  const char *verify_name;
};

/* The identity a peer proved with its certificate. DNS SANs are lowercased;
 * names longer than TLS_NAME_MAX and SANs beyond TLS_MAX_SANS are ignored. */
struct tls_identity {
  unsigned char fp[32]; /* SHA-256 of the certificate (DER) */
  char cn[TLS_NAME_MAX + 1];
  char ou[TLS_NAME_MAX + 1];
  int64_t not_after; /* the certificate's end, Unix seconds (0: unknown) */
  size_t ndns;
  char dns[TLS_MAX_SANS][TLS_NAME_MAX + 1];
};

struct tls_ctx;
typedef struct WOLFSSL WOLFSSL;

void tls_config_init(struct tls_config *cfg);

/* Creates a context for the server (server = 1) or client role. On failure
 * returns ZTNA_ERR_CERT/ZTNA_ERR_TLS/-errno and writes a message naming the
 * file and the problem into err. The new context has one reference. */
int tls_ctx_new(struct tls_ctx **out, int server, const struct tls_config *cfg,
                char *err, size_t errlen);
struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx);
/* Drops a reference; frees on the last. Accepts NULL. */
void tls_ctx_unref(struct tls_ctx *ctx);
int tls_ctx_is_server(const struct tls_ctx *ctx);
/* The context's ALPN (a server's may be a comma-separated list). */
const char *tls_ctx_alpn(const struct tls_ctx *ctx);

/* Creates a session for one QUIC connection. For a client, sni (if any) is
 * sent, and when verifying the server certificate must be valid for sni,
 * or for the context's verify_name when sni is NULL. The caller
 * frees the session with wolfSSL_free. Returns NULL on allocation failure. */
WOLFSSL *tls_session_new(struct tls_ctx *ctx, const char *sni);

/* Returns 1 if the session negotiated the context's ALPN (one of them),
 * else 0. */
int tls_session_alpn_ok(struct tls_ctx *ctx, WOLFSSL *ssl);
/* Copies the negotiated ALPN into out; returns its length (0: none). */
size_t tls_session_alpn(WOLFSSL *ssl, char *out, size_t cap);

/* Fills id from the peer's certificate. Returns 0, or ZTNA_ERR_CERT when
 * the peer presented none. */
int tls_peer_identity(WOLFSSL *ssl, struct tls_identity *id);

#endif
