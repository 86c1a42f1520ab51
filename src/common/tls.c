/* tls.c - wolfSSL contexts, sessions and peer identities. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_wolfssl.h>

#include "err.h"
#include "log.h"
#include "pki.h"
#include "tls.h"

struct tls_ctx {
  WOLFSSL_CTX *ctx;
  int refs;
  int server;
  int verify;
  char alpn[64];
  char verify_name[256];
};

void tls_config_init(struct tls_config *cfg)
{
  memset(cfg, 0, sizeof(*cfg));
  cfg->verify_peer = 1;
  cfg->require_client_cert = 1;
}

static int wolfssl_ready(void)
{
  static int done;

  if (!done) {
    if (wolfSSL_Init() != WOLFSSL_SUCCESS)
      return ZTNA_ERR_TLS;
    done = 1;
  }
  return 0;
}

static int readable(const char *what, const char *path, char *err,
                    size_t errlen)
{
  if (access(path, R_OK) == 0)
    return 0;
  snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
  return -errno;
}

/* A private key others on the machine can read is a key they may hold. */
static void warn_if_exposed(const char *path)
{
  struct stat st;

  if (stat(path, &st) == 0 && (st.st_mode & 077))
    log_warnx("private key %s is readable by %s (mode %04o): chmod 600 it",
              path, st.st_mode & 007 ? "everyone" : "its group",
              (unsigned)(st.st_mode & 07777));
}

int tls_ctx_new(struct tls_ctx **out, int server, const struct tls_config *cfg,
                char *err, size_t errlen)
{
  struct tls_ctx *t;
  int rv = ZTNA_ERR_TLS, mode;

  *out = NULL;
  if (wolfssl_ready() < 0) {
    snprintf(err, errlen, "wolfSSL_Init failed");
    return ZTNA_ERR_TLS;
  }
  if (server && (!cfg->cert_file || !cfg->key_file)) {
    snprintf(err, errlen, "a server needs a certificate and a key");
    return ZTNA_ERR_CERT;
  }
  if (!!cfg->cert_file != !!cfg->key_file) {
    snprintf(err, errlen, "a certificate needs its key and a key its "
             "certificate");
    return ZTNA_ERR_CERT;
  }
  if (cfg->verify_peer && !cfg->ca_file) {
    snprintf(err, errlen, "peer verification is on but no CA file is set "
             "(set one, or turn verification off explicitly)");
    return ZTNA_ERR_CERT;
  }
  if ((cfg->cert_file &&
       (rv = readable("certificate", cfg->cert_file, err, errlen)) < 0) ||
      (cfg->key_file &&
       (rv = readable("private key", cfg->key_file, err, errlen)) < 0) ||
      (cfg->ca_file && (rv = readable("CA file", cfg->ca_file, err, errlen)) <
                           0))
    return rv;

  t = calloc(1, sizeof(*t));
  if (!t) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  t->refs = 1;
  t->server = server;
  snprintf(t->alpn, sizeof(t->alpn), "%s", cfg->alpn ? cfg->alpn : TLS_ALPN);
  snprintf(t->verify_name, sizeof(t->verify_name), "%s",
           cfg->verify_name ? cfg->verify_name : "");
  t->verify = cfg->verify_peer;
  t->ctx = wolfSSL_CTX_new(server ? wolfTLSv1_3_server_method()
                                  : wolfTLSv1_3_client_method());
  if (!t->ctx) {
    snprintf(err, errlen, "wolfSSL_CTX_new failed");
    goto fail;
  }
  if ((server ? ngtcp2_crypto_wolfssl_configure_server_context(t->ctx)
              : ngtcp2_crypto_wolfssl_configure_client_context(t->ctx)) != 0) {
    snprintf(err, errlen, "cannot configure the TLS context for QUIC");
    goto fail;
  }
  if (cfg->cert_file) {
    if (wolfSSL_CTX_use_certificate_chain_file(t->ctx, cfg->cert_file) !=
        WOLFSSL_SUCCESS) {
      snprintf(err, errlen, "certificate %s: not a valid PEM certificate",
               cfg->cert_file);
      rv = ZTNA_ERR_CERT;
      goto fail;
    }
    if (wolfSSL_CTX_use_PrivateKey_file(t->ctx, cfg->key_file,
                                        WOLFSSL_FILETYPE_PEM) !=
        WOLFSSL_SUCCESS) {
      snprintf(err, errlen, "private key %s: not a valid PEM key",
               cfg->key_file);
      rv = ZTNA_ERR_CERT;
      goto fail;
    }
    rv = pki_key_matches_cert(cfg->key_file, cfg->cert_file, err, errlen);
    if (rv < 0)
      goto fail;
    warn_if_exposed(cfg->key_file);
  }
  if (cfg->ca_file &&
      wolfSSL_CTX_load_verify_locations(t->ctx, cfg->ca_file, NULL) !=
          WOLFSSL_SUCCESS) {
    snprintf(err, errlen, "CA file %s: no valid PEM certificate in it",
             cfg->ca_file);
    rv = ZTNA_ERR_CERT;
    goto fail;
  }
  if (server && cfg->require_client_cert)
    mode = WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  else if (cfg->verify_peer)
    mode = WOLFSSL_VERIFY_PEER;
  else
    mode = WOLFSSL_VERIFY_NONE;
  /* No verify callback: wolfSSL's own verdict (chain, dates) stands. */
  wolfSSL_CTX_set_verify(t->ctx, mode, NULL);
  *out = t;
  return 0;

fail:
  tls_ctx_unref(t);
  return rv;
}

struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx)
{
  ctx->refs++;
  return ctx;
}

void tls_ctx_unref(struct tls_ctx *ctx)
{
  if (!ctx || --ctx->refs > 0)
    return;
  if (ctx->ctx)
    wolfSSL_CTX_free(ctx->ctx);
  free(ctx);
}

int tls_ctx_is_server(const struct tls_ctx *ctx)
{
  return ctx->server;
}

const char *tls_ctx_alpn(const struct tls_ctx *ctx)
{
  return ctx->alpn;
}

WOLFSSL *tls_session_new(struct tls_ctx *ctx, const char *sni)
{
  WOLFSSL *ssl = wolfSSL_new(ctx->ctx);

  if (!ssl)
    return NULL;
  if (ctx->server)
    wolfSSL_set_accept_state(ssl);
  else
    wolfSSL_set_connect_state(ssl);
  /* Native ALPN: the OpenSSL-style calls negotiate nothing in wolfSSL. */
  if (wolfSSL_UseALPN(ssl, ctx->alpn, (unsigned)strlen(ctx->alpn),
                      WOLFSSL_ALPN_FAILED_ON_MISMATCH) != WOLFSSL_SUCCESS)
    goto fail;
  if (!ctx->server) {
    const char *name = sni && *sni ? sni : ctx->verify_name;
    if (sni && *sni &&
        wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, sni,
                       (unsigned short)strlen(sni)) != WOLFSSL_SUCCESS)
      goto fail;
    if (ctx->verify && *name &&
        wolfSSL_check_domain_name(ssl, name) != WOLFSSL_SUCCESS)
      goto fail;
  }
  wolfSSL_set_quic_transport_version(ssl, 0x39);
  return ssl;
fail:
  wolfSSL_free(ssl);
  return NULL;
}

int tls_session_alpn_ok(struct tls_ctx *ctx, WOLFSSL *ssl)
{
  char name[TLS_ALPN_MAX + 1];
  size_t len = tls_session_alpn(ssl, name, sizeof(name));

  if (!len)
    return 0;
  /* ctx->alpn is one name or a comma-separated list (a server). */
  for (const char *p = ctx->alpn; *p;) {
    size_t n = strcspn(p, ",");
    if (n == len && !memcmp(p, name, n))
      return 1;
    p += n;
    if (*p)
      p++;
  }
  return 0;
}

size_t tls_session_alpn(WOLFSSL *ssl, char *out, size_t cap)
{
  char *name = NULL;
  unsigned short len = 0;

  out[0] = '\0';
  if (wolfSSL_ALPN_GetProtocol(ssl, &name, &len) != WOLFSSL_SUCCESS ||
      !name || !len || len >= cap)
    return 0;
  memcpy(out, name, len);
  out[len] = '\0';
  return len;
}

static void copy_lower(char *dst, size_t cap, const unsigned char *src,
                       size_t n)
{
  if (n >= cap)
    n = cap - 1;
  for (size_t i = 0; i < n; i++)
    dst[i] = (char)tolower(src[i]);
  dst[n] = '\0';
}

int tls_peer_identity(WOLFSSL *ssl, struct tls_identity *id)
{
  WOLFSSL_X509 *cert;
  WOLFSSL_X509_NAME *subj;
  WOLFSSL_STACK *sans;

  memset(id, 0, sizeof(*id));
  cert = wolfSSL_get_peer_certificate(ssl);
  if (!cert)
    return ZTNA_ERR_CERT;
  {
    int derlen = 0;
    const unsigned char *der = wolfSSL_X509_get_der(cert, &derlen);
    if (!der || derlen <= 0 ||
        wc_Sha256Hash(der, (word32)derlen, id->fp) != 0) {
      wolfSSL_X509_free(cert);
      return ZTNA_ERR_CERT;
    }
  }
  {
    /* A connection outlives nothing its certificate does not: daemons
     * close those whose certificate has expired since the handshake. */
    const WOLFSSL_ASN1_TIME *na = wolfSSL_X509_get_notAfter(cert);
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (na && wolfSSL_ASN1_TIME_to_tm(na, &tm) == WOLFSSL_SUCCESS)
      id->not_after = (int64_t)timegm(&tm);
  }
  subj = wolfSSL_X509_get_subject_name(cert);
  if (subj) {
    if (wolfSSL_X509_NAME_get_text_by_NID(subj, NID_commonName, id->cn,
                                          sizeof(id->cn)) < 0)
      id->cn[0] = '\0';
    if (wolfSSL_X509_NAME_get_text_by_NID(subj, NID_organizationalUnitName,
                                          id->ou, sizeof(id->ou)) < 0)
      id->ou[0] = '\0';
  }
  sans = wolfSSL_X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  if (sans) {
    int n = wolfSSL_sk_GENERAL_NAME_num(sans);
    for (int i = 0; i < n && id->ndns < TLS_MAX_SANS; i++) {
      WOLFSSL_GENERAL_NAME *gn = wolfSSL_sk_GENERAL_NAME_value(sans, i);
      unsigned char *s;
      int len;

      if (!gn || gn->type != 2 /* GEN_DNS */ || !gn->d.dNSName)
        continue;
      s = wolfSSL_ASN1_STRING_data(gn->d.dNSName);
      len = wolfSSL_ASN1_STRING_length(gn->d.dNSName);
      if (!s || len <= 0 || len > TLS_NAME_MAX || memchr(s, 0, (size_t)len))
        continue;
      copy_lower(id->dns[id->ndns++], sizeof(id->dns[0]), s, (size_t)len);
    }
    wolfSSL_GENERAL_NAMES_free(sans);
  }
  wolfSSL_X509_free(cert);
  return 0;
}
