/* redistls.h - the cluster's connection to Redis under TLS, on wolfSSL.
 *
 * hiredis' own TLS is written for OpenSSL; ztna links wolfSSL, so this is
 * a transport of hiredis' (its redisContextFuncs) over wolfSSL's native
 * calls. TLS 1.2 or 1.3, Redis' certificate verified against a CA and a
 * name, and a client certificate (Redis asks for one by default).
 */
#ifndef ZTNA_REDISTLS_H
#define ZTNA_REDISTLS_H

#include <stddef.h>

struct redisAsyncContext;
struct redis_tls;

/* A context: ca verifies Redis, cert and key are presented to it (both
 * NULL: none). 0, or <0 with a message naming the file in err. */
int redis_tls_new(struct redis_tls **out, const char *ca, const char *cert,
                  const char *key, char *err, size_t errlen);
void redis_tls_free(struct redis_tls *t);

/* Puts a connection hiredis has just started (redisAsyncConnect*) under
 * TLS; Redis' certificate must be valid for name. The handshake runs when
 * the TCP connection is up; commands queued meanwhile are sent after it.
 * A failure disconnects the context with the reason in its errstr.
 * Connections keep the context they were made with (redis_tls_free may
 * follow at once). 0, or -1 (out of memory). */
int redis_tls_attach(struct redisAsyncContext *ac, struct redis_tls *t,
                     const char *name);

/* 1 if ac's connection is under TLS and was cut before its handshake
 * finished or failed (a timeout: a port that does not speak TLS). */
int redis_tls_pending(const struct redisAsyncContext *ac);

#endif
