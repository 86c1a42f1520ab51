/* redistls.c - hiredis over wolfSSL (redistls.h).
 *
 * hiredis makes the TCP connection and tells us, through the event
 * adapter, when the socket is readable or writable. Until the handshake is
 * done those events drive wolfSSL_connect, asking for whichever event it
 * waits for; then hiredis' own async read and write take over and reach
 * the socket through t_read and t_write. wolfSSL reads exactly the record
 * it needs from the socket and hiredis reads 16 KB at a time (a whole
 * record's plaintext), so nothing waits in wolfSSL unseen by the loop.
 */
#include "redistls.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "pki.h"

struct redis_tls {
  WOLFSSL_CTX *ctx;
};

struct conn {
  WOLFSSL *ssl;
  int ready;       /* handshake done */
  int failed;      /* handshake failed (the reason is in errstr) */
  size_t last_len; /* a write that must be retried with this length */
};

static void set_err(redisContext *c, const char *fmt, ...)
{
  va_list ap;

  c->err = REDIS_ERR_IO;
  va_start(ap, fmt);
  vsnprintf(c->errstr, sizeof(c->errstr), fmt, ap);
  va_end(ap);
}

/* The reason in c->errstr; a connection cut in the handshake is most
 * often Redis refusing our certificate, or a port without TLS. */
static void ssl_err(redisContext *c, WOLFSSL *ssl, int rv, const char *what,
                    int handshake)
{
  char buf[WOLFSSL_MAX_ERROR_SZ];
  const char *hint = handshake ? " (does Redis take our certificate? is "
                                 "that its TLS port?)" : "";
  int e = wolfSSL_get_error(ssl, rv);

  if (e == SOCKET_PEER_CLOSED_E || e == WOLFSSL_ERROR_ZERO_RETURN) {
    c->err = REDIS_ERR_EOF;
    snprintf(c->errstr, sizeof(c->errstr), "%s: Redis closed the "
             "connection%s", what, hint);
  } else if (e == SOCKET_ERROR_E && errno) {
    set_err(c, "%s: %s%s", what, strerror(errno), hint);
  } else {
    set_err(c, "%s: %s", what,
            wolfSSL_ERR_error_string((unsigned long)e, buf));
  }
}

static void ev_read(redisAsyncContext *ac, int on)
{
  if (on && ac->ev.addRead)
    ac->ev.addRead(ac->ev.data);
  else if (!on && ac->ev.delRead)
    ac->ev.delRead(ac->ev.data);
}

static void ev_write(redisAsyncContext *ac, int on)
{
  if (on && ac->ev.addWrite)
    ac->ev.addWrite(ac->ev.data);
  else if (!on && ac->ev.delWrite)
    ac->ev.delWrite(ac->ev.data);
}

static ssize_t t_read(redisContext *c, char *buf, size_t cap)
{
  struct conn *t = c->privctx;
  int n;

  if (!t->ready) { /* a handshake failure, reported through hiredis */
    if (!c->err)
      set_err(c, "TLS handshake with Redis not finished");
    return -1;
  }
  n = wolfSSL_read(t->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
  if (n > 0)
    return n;
  switch (wolfSSL_get_error(t->ssl, n)) {
  case WOLFSSL_ERROR_WANT_READ:
  case WOLFSSL_ERROR_WANT_WRITE:
    return 0; /* a record not whole yet, or only a ticket */
  default:
    ssl_err(c, t->ssl, n, "reading from Redis", 0);
    return -1;
  }
}

static ssize_t t_write(redisContext *c)
{
  struct conn *t = c->privctx;
  /* A write wolfSSL could not finish is repeated with the same length
   * (the buffer may have grown meanwhile). */
  size_t len = t->last_len ? t->last_len : sdslen(c->obuf);
  int n = wolfSSL_write(t->ssl, c->obuf, len > INT_MAX ? INT_MAX : (int)len);

  if (n > 0) {
    t->last_len = 0;
    return n;
  }
  t->last_len = len;
  switch (wolfSSL_get_error(t->ssl, n)) {
  case WOLFSSL_ERROR_WANT_READ:
  case WOLFSSL_ERROR_WANT_WRITE:
    return 0;
  default:
    ssl_err(c, t->ssl, n, "writing to Redis", 0);
    return -1;
  }
}

/* One step of the handshake, on any socket event. */
static void handshake(redisAsyncContext *ac)
{
  redisContext *c = &ac->c;
  struct conn *t = c->privctx;
  int rv = wolfSSL_connect(t->ssl);

  if (rv == WOLFSSL_SUCCESS) {
    t->ready = 1;
    redisAsyncWrite(ac); /* what was queued meanwhile; then reads */
    return;
  }
  switch (wolfSSL_get_error(t->ssl, rv)) {
  case WOLFSSL_ERROR_WANT_READ:
    ev_write(ac, 0);
    ev_read(ac, 1);
    return;
  case WOLFSSL_ERROR_WANT_WRITE:
    ev_write(ac, 1);
    return;
  default:
    ssl_err(c, t->ssl, rv, "TLS handshake with Redis", 1);
    t->failed = 1;
    /* hiredis disconnects on a failed read, with c->errstr as the
     * reason (t_read refuses while not ready). */
    redisAsyncRead(ac);
  }
}

static void t_async_read(redisAsyncContext *ac)
{
  struct conn *t = ac->c.privctx;

  if (!t->ready)
    handshake(ac);
  else
    redisAsyncRead(ac);
}

static void t_async_write(redisAsyncContext *ac)
{
  struct conn *t = ac->c.privctx;

  if (!t->ready)
    handshake(ac);
  else
    redisAsyncWrite(ac);
}

static void t_close(redisContext *c)
{
  if (c->fd != REDIS_INVALID_FD) {
    close(c->fd);
    c->fd = REDIS_INVALID_FD;
  }
}

static void t_free(void *priv)
{
  struct conn *t = priv;

  if (!t)
    return;
  wolfSSL_free(t->ssl);
  free(t);
}

static const redisContextFuncs funcs = {
  .close = t_close,
  .free_privctx = t_free,
  .async_read = t_async_read,
  .async_write = t_async_write,
  .read = t_read,
  .write = t_write,
};

int redis_tls_attach(redisAsyncContext *ac, struct redis_tls *rt,
                     const char *name)
{
  struct conn *t = calloc(1, sizeof(*t));

  if (!t)
    return -1;
  t->ssl = wolfSSL_new(rt->ctx);
  if (!t->ssl ||
      wolfSSL_set_fd(t->ssl, ac->c.fd) != WOLFSSL_SUCCESS ||
      wolfSSL_UseSNI(t->ssl, WOLFSSL_SNI_HOST_NAME, name,
                     (unsigned short)strlen(name)) != WOLFSSL_SUCCESS ||
      wolfSSL_check_domain_name(t->ssl, name) != WOLFSSL_SUCCESS) {
    t_free(t);
    return -1;
  }
  wolfSSL_set_connect_state(t->ssl);
  if (ac->c.funcs && ac->c.funcs->free_privctx && ac->c.privctx)
    ac->c.funcs->free_privctx(ac->c.privctx);
  ac->c.privctx = t;
  ac->c.funcs = &funcs;
  return 0;
}

int redis_tls_pending(const redisAsyncContext *ac)
{
  const struct conn *t = ac->c.privctx;

  return ac->c.funcs == &funcs && t && !t->ready && !t->failed;
}

int redis_tls_new(struct redis_tls **out, const char *ca, const char *cert,
                  const char *key, char *err, size_t errlen)
{
  struct redis_tls *t = calloc(1, sizeof(*t));
  int rv = -1;

  if (!t) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  /* TLS 1.2 or 1.3 (the build has nothing older). */
  t->ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
  if (!t->ctx) {
    snprintf(err, errlen, "wolfSSL_CTX_new failed");
    goto fail;
  }
  if (wolfSSL_CTX_load_verify_locations(t->ctx, ca, NULL) !=
      WOLFSSL_SUCCESS) {
    snprintf(err, errlen, "Redis CA file %s: cannot be read or has no "
             "valid PEM certificate", ca);
    goto fail;
  }
  if (cert) {
    if (wolfSSL_CTX_use_certificate_chain_file(t->ctx, cert) !=
        WOLFSSL_SUCCESS) {
      snprintf(err, errlen, "certificate %s: not a valid PEM certificate",
               cert);
      goto fail;
    }
    if (wolfSSL_CTX_use_PrivateKey_file(t->ctx, key, WOLFSSL_FILETYPE_PEM) !=
        WOLFSSL_SUCCESS) {
      snprintf(err, errlen, "private key %s: not a valid PEM key", key);
      goto fail;
    }
    if (pki_key_matches_cert(key, cert, err, errlen) < 0)
      goto fail;
  }
  wolfSSL_CTX_set_verify(t->ctx, WOLFSSL_VERIFY_PEER, NULL);
  *out = t;
  return 0;
fail:
  redis_tls_free(t);
  return rv;
}

void redis_tls_free(struct redis_tls *t)
{
  if (!t)
    return;
  if (t->ctx)
    wolfSSL_CTX_free(t->ctx); /* sessions hold their own reference */
  free(t);
}
