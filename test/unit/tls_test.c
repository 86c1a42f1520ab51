/* tls_test.c - contexts from keygen's files, the errors users meet, and
 * peer identities read from certificates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "testutil.h"
#include "tls.h"


static int make(struct tls_ctx **t, int server, const char *crt,
                const char *key, const char *ca, int verify, char *err)
{
  struct tls_config cfg;
  tls_config_init(&cfg);
  cfg.cert_file = crt;
  cfg.key_file = key;
  cfg.ca_file = ca;
  cfg.verify_peer = verify;
  err[0] = '\0';
  return tls_ctx_new(t, server, &cfg, err, 256);
}

static void test_tls_defaults(void **state)
{
  struct tls_config cfg;
  (void)state;
  tls_config_init(&cfg);
  assert_int_equal(cfg.verify_peer, 1);
  assert_int_equal(cfg.require_client_cert, 1);
  assert_null(cfg.alpn);
  assert_string_equal(TLS_ALPN, "ztna-v1");
}

static void test_tls_contexts(void **state)
{
  struct tls_ctx *t;
  char err[256];
  (void)state;

  assert_int_equal(make(&t, 1, cert("server.crt"), cert("server.key"),
                        cert("ca.crt"), 1, err), 0);
  assert_int_equal(tls_ctx_is_server(t), 1);
  /* References: the context lives until the last one goes. */
  assert_ptr_equal(tls_ctx_ref(t), t);
  tls_ctx_unref(t);
  tls_ctx_unref(t);
  tls_ctx_unref(NULL);
  assert_int_equal(make(&t, 0, NULL, NULL, cert("ca.crt"), 1, err), 0);
  assert_int_equal(tls_ctx_is_server(t), 0);
  tls_ctx_unref(t);
}

static void test_tls_errors(void **state)
{
  struct tls_ctx *t;
  char err[256];
  (void)state;

  assert_true(make(&t, 1, "/nonexistent.crt", cert("server.key"),
                   cert("ca.crt"), 1, err) < 0);
  assert_null(t);
  assert_non_null(strstr(err, "certificate /nonexistent.crt: No such file"));
  assert_int_equal(make(&t, 1, NULL, NULL, cert("ca.crt"), 1, err),
                   ZTNA_ERR_CERT);
  assert_non_null(strstr(err, "needs a certificate and a key"));
  assert_int_equal(make(&t, 0, NULL, NULL, NULL, 1, err), ZTNA_ERR_CERT);
  assert_non_null(strstr(err, "no CA file"));
  /* The key of another certificate. */
  assert_int_equal(make(&t, 1, cert("server.crt"), cert("client.key"),
                        cert("ca.crt"), 1, err), ZTNA_ERR_CERT);
  assert_non_null(strstr(err, "does not match"));
  /* A key file given as the certificate. */
  assert_int_equal(make(&t, 1, cert("server.key"), cert("server.key"),
                        cert("ca.crt"), 1, err), ZTNA_ERR_CERT);
  assert_non_null(strstr(err, "not a valid PEM certificate"));
  assert_int_equal(make(&t, 0, NULL, NULL, cert("server.key"), 1, err),
                   ZTNA_ERR_CERT);
  assert_non_null(strstr(err, "CA file"));
  /* Verification off needs no CA (an explicit choice). */
  if (make(&t, 0, NULL, NULL, NULL, 0, err) != 0)
    fail_msg("%s", err);
  tls_ctx_unref(t);
}

int main(void)
{
  const char *d = getenv("ZTNA_TEST_CERTS");
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_tls_defaults),
    cmocka_unit_test(test_tls_contexts),
    cmocka_unit_test(test_tls_errors),
  };
  if (!d) {
    fprintf(stderr, "tls_test: set ZTNA_TEST_CERTS\n");
    return 1;
  }
  snprintf(cert_dir, sizeof(cert_dir), "%s", d);
  return cmocka_run_group_tests_name("tls", tests, NULL, NULL);
}
