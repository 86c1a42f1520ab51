/* api_test.c - the status and admin API's JSON writer and router
 * (api.c), against golden files in test/unit/golden/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"
#include "tls.h"

#define GOLDEN "test/unit/golden/"

/* Compares text with a golden file; ZTNA_UPDATE_GOLDEN=1 rewrites it. */
static void golden(const char *name, const char *text, size_t len)
{
  char path[256], *want;
  FILE *f;
  long n;

  snprintf(path, sizeof(path), GOLDEN "%s", name);
  if (getenv("ZTNA_UPDATE_GOLDEN")) {
    f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(text, 1, len, f);
    fclose(f);
  }
  f = fopen(path, "rb");
  if (!f)
    fail_msg("golden file %s missing", path);
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  want = malloc((size_t)n + 1);
  assert_non_null(want);
  assert_int_equal(fread(want, 1, (size_t)n, f), (size_t)n);
  want[n] = '\0';
  fclose(f);
  if ((size_t)n != len || memcmp(want, text, len))
    fail_msg("%s differs:\n--- want\n%s--- got\n%.*s", path, want, (int)len,
             text);
  free(want);
}

/* --- a daemon for the router ------------------------------------------------ */

struct fake {
  int reload_fails;
  size_t disconnected;
  char last_who[256], last_reason[128];
  int authorize_calls;
};

static const uint8_t alice_fp[32] = { 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45,
                                      0x67, 0x89 };
static const uint8_t bob_fp[32] = { 0x01, 0x02 };

static int f_authorize(void *ud, const struct tls_identity *id, char *why,
                       size_t cap)
{
  struct fake *f = ud;
  (void)id;
  f->authorize_calls++;
  snprintf(why, cap, "not an admin");
  return 0;
}

static void f_status(void *ud, struct jw *w)
{
  (void)ud;
  jw_str(w, "role", "intermediate");
  jw_u64(w, "uptime_s", 42);
  jw_fixed(w, "rtt_ms", 1234, 3);
  jw_bool(w, "draining", 0);
  jw_arr(w, "peers");
  jw_end(w);
  jw_obj(w, "limits");
  jw_obj(w, "connections");
  jw_u64(w, "max", 4096);
  jw_u64(w, "used", 2);
  jw_end(w);
  jw_end(w);
}

static size_t crowd; /* more peers named "peerN", for paging */

static size_t f_peers(void *ud, const char *who, size_t offset, size_t limit,
                      struct jw *w)
{
  static const char *const names[2] = { "alice", "bob smith" };
  static const char *const roles[2] = { "agent", "connector" };
  const uint8_t *fps[2] = { alice_fp, bob_fp };
  size_t n = 0;
  (void)ud;

  for (size_t i = 0; i < 2 + crowd; i++) {
    char name[32];
    if (i < 2)
      snprintf(name, sizeof(name), "%s", names[i]);
    else
      snprintf(name, sizeof(name), "peer%zu", i);
    if (who && !api_peer_matches(who, name, i < 2 ? fps[i] : bob_fp))
      continue;
    if (n >= offset && n - offset < limit) {
      jw_obj(w, NULL);
      jw_str(w, "identity", name);
      jw_str(w, "role", i < 2 ? roles[i] : "agent");
      jw_end(w);
    }
    n++;
  }
  return n;
}

static size_t f_disconnect(void *ud, const char *who, const char *reason)
{
  struct fake *f = ud;
  snprintf(f->last_who, sizeof(f->last_who), "%s", who);
  snprintf(f->last_reason, sizeof(f->last_reason), "%s", reason);
  return !strcmp(who, "alice") ? 1 : 0;
}

static int f_reload(void *ud, struct jw *w, char *err, size_t errlen)
{
  struct fake *f = ud;
  if (f->reload_fails) {
    snprintf(err, errlen, "policy.json:3: expected an array of names, got "
             "string");
    return -1;
  }
  jw_bool(w, "reloaded", 1);
  jw_arr(w, "changed");
  jw_str(w, NULL, "policy");
  jw_end(w);
  return 0;
}

static char *f_metrics(void *ud, size_t *len)
{
  (void)ud;
  *len = 9;
  return strdup("x_total 1");
}

static const struct api_ops ops = {
  .authorize = f_authorize,
  .status = f_status,
  .peers = f_peers,
  .disconnect = f_disconnect,
  .reload = f_reload,
  .metrics = f_metrics,
};

static int call(struct fake *f, const char *method, const char *path,
                int local, int admin, struct h3_response *rs)
{
  struct api_request rq = { .method = method, .path = path, .local = local,
                            .admin = admin, .denied = "certificate 'eve' has "
                            "no admin role" };
  api_handle(&ops, f, &rq, rs);
  return rs->status;
}

static void test_status_golden(void **state)
{
  struct fake f = { 0 };
  struct h3_response rs;
  (void)state;

  assert_int_equal(call(&f, "GET", "/v1/status", 0, 1, &rs), 200);
  assert_string_equal(rs.content_type, "application/json");
  golden("api_status.json", rs.body, rs.len);
  free(rs.body);
  /* The local listener serves the same status. */
  assert_int_equal(call(&f, "GET", "/v1/status", 1, 0, &rs), 200);
  golden("api_status.json", rs.body, rs.len);
  free(rs.body);
}

static void test_peers(void **state)
{
  struct fake f = { 0 };
  struct h3_response rs;
  (void)state;

  assert_int_equal(call(&f, "GET", "/v1/peers", 0, 1, &rs), 200);
  golden("api_peers.json", rs.body, rs.len);
  free(rs.body);
  /* By CN (percent-encoded), and by 8+ hex digits of the fingerprint. */
  assert_int_equal(call(&f, "GET", "/v1/peers/bob%20smith", 0, 1, &rs), 200);
  assert_non_null(strstr(rs.body, "\"bob smith\""));
  assert_null(strstr(rs.body, "alice"));
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/peers/ABCDEF01", 1, 0, &rs), 200);
  assert_non_null(strstr(rs.body, "alice"));
  free(rs.body);
  /* Seven digits are not enough; nobody matches: 404 with why. */
  assert_int_equal(call(&f, "GET", "/v1/peers/abcdef0", 0, 1, &rs), 404);
  golden("api_peer_unknown.json", rs.body, rs.len);
  free(rs.body);
  /* Malformed escapes, NUL, control bytes and slashes are refused. */
  assert_int_equal(call(&f, "GET", "/v1/peers/a%2", 0, 1, &rs), 400);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/peers/a%00b", 0, 1, &rs), 400);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/peers/a%0ab", 0, 1, &rs), 400);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/peers/a%2fb", 0, 1, &rs), 400);
  free(rs.body);
}

/* A daemon with more peers than one answer holds: pages of
 * API_PEERS_MAX, the total, and where the next page starts. */
static void test_peers_paging(void **state)
{
  struct fake f = { 0 };
  struct h3_response rs;
  (void)state;

  crowd = API_PEERS_MAX + 500;
  assert_int_equal(call(&f, "GET", "/v1/peers", 0, 1, &rs), 200);
  assert_non_null(strstr(rs.body, "\"total\": 1502"));
  assert_non_null(strstr(rs.body, "\"next_offset\": 1000"));
  assert_non_null(strstr(rs.body, "\"peer999\""));
  assert_null(strstr(rs.body, "\"peer1000\""));
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/peers?offset=1000", 0, 1, &rs), 200);
  assert_non_null(strstr(rs.body, "\"peer1000\""));
  assert_non_null(strstr(rs.body, "\"peer1501\""));
  assert_null(strstr(rs.body, "\"alice\""));
  assert_null(strstr(rs.body, "next_offset"));
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/peers?offset=-1", 0, 1, &rs), 400);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/peers?offset=12x", 0, 1, &rs), 400);
  free(rs.body);
  crowd = 0;
}

static void test_delete(void **state)
{
  struct fake f = { 0 };
  struct h3_response rs;
  (void)state;

  assert_int_equal(call(&f, "DELETE", "/v1/peers/alice?reason=lost+laptop%21",
                        0, 1, &rs), 200);
  golden("api_delete.json", rs.body, rs.len);
  assert_string_equal(f.last_reason, "lost laptop!");
  free(rs.body);
  assert_int_equal(call(&f, "DELETE", "/v1/peers/alice", 0, 1, &rs), 200);
  assert_string_equal(f.last_reason, "disconnected by an administrator");
  free(rs.body);
  assert_int_equal(call(&f, "DELETE", "/v1/peers/carol", 0, 1, &rs), 404);
  free(rs.body);
  /* A reason with a control byte is refused before anything happens. */
  f.last_who[0] = '\0';
  assert_int_equal(call(&f, "DELETE", "/v1/peers/alice?reason=a%0d%0ab", 0,
                        1, &rs), 400);
  assert_string_equal(f.last_who, "");
  free(rs.body);
  /* The local listener has no authentication: read-only. */
  assert_int_equal(call(&f, "DELETE", "/v1/peers/alice", 1, 0, &rs), 403);
  assert_string_equal(f.last_who, "");
  free(rs.body);
  /* DELETE of the collection is not a thing. */
  assert_int_equal(call(&f, "DELETE", "/v1/peers", 0, 1, &rs), 405);
  assert_string_equal(rs.allow, "GET");
  free(rs.body);
}

static void test_reload(void **state)
{
  struct fake f = { 0 };
  struct h3_response rs;
  (void)state;

  assert_int_equal(call(&f, "POST", "/v1/reload", 0, 1, &rs), 200);
  golden("api_reload_ok.json", rs.body, rs.len);
  free(rs.body);
  f.reload_fails = 1;
  assert_int_equal(call(&f, "POST", "/v1/reload", 0, 1, &rs), 422);
  golden("api_reload_refused.json", rs.body, rs.len);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/reload", 0, 1, &rs), 405);
  assert_string_equal(rs.allow, "POST");
  free(rs.body);
  assert_int_equal(call(&f, "POST", "/v1/reload", 1, 0, &rs), 403);
  free(rs.body);
}

static void test_refusals(void **state)
{
  struct fake f = { 0 };
  struct h3_response rs;
  (void)state;

  /* Over HTTP/3 without the admin role: 403 with why, on every route. */
  assert_int_equal(call(&f, "GET", "/v1/status", 0, 0, &rs), 403);
  golden("api_forbidden.json", rs.body, rs.len);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/metrics", 0, 0, &rs), 403);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/v1/nothing", 0, 1, &rs), 404);
  free(rs.body);
  assert_int_equal(call(&f, "PUT", "/v1/status", 0, 1, &rs), 405);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "relative", 0, 1, &rs), 400);
  free(rs.body);
  assert_int_equal(call(&f, "GET", "/metrics", 0, 1, &rs), 200);
  assert_string_equal(rs.content_type, "text/plain; version=0.0.4");
  assert_memory_equal(rs.body, "x_total 1", 9);
  free(rs.body);
  /* The local listener has its own /metrics; the router leaves it be. */
  assert_int_equal(call(&f, "GET", "/metrics", 1, 0, &rs), 404);
  free(rs.body);
}

/* --- the writer ------------------------------------------------------------------ */

static void test_json_escaping(void **state)
{
  struct jw w;
  char *s;
  size_t n;
  (void)state;

  jw_init(&w);
  jw_obj(&w, NULL);
  jw_str(&w, "quote", "a\"b\\c");
  jw_str(&w, "control", "tab\there\x01\x7f");
  jw_strn(&w, "nul", "a\0b", 3);
  jw_str(&w, "utf8", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91");
  /* Not UTF-8: a lone continuation byte, an overlong '/', a surrogate, a
   * truncated sequence. */
  jw_str(&w, "bad", "\x80 \xc0\xaf \xed\xa0\x80 \xe2\x82");
  jw_str(&w, "null", NULL);
  jw_i64(&w, "neg", -5);
  jw_fixed(&w, "ms", 5, 3);
  jw_arr(&w, "empty");
  jw_end(&w);
  jw_obj(&w, "nested");
  jw_arr(&w, "list");
  jw_u64(&w, NULL, 1);
  jw_u64(&w, NULL, 2);
  jw_end(&w);
  jw_end(&w);
  jw_end(&w);
  s = jw_finish(&w, &n);
  assert_non_null(s);
  golden("json_escaping.json", s, n);
  free(s);
}

static void test_pct_and_match(void **state)
{
  char out[16];
  (void)state;

  /* In a path '+' is itself (a query's is a space: test_delete). */
  assert_int_equal(api_pct_decode("a%41+b", 6, out, sizeof(out)), 4);
  assert_string_equal(out, "aA+b");
  assert_int_equal(api_pct_decode("a%20b", 5, out, sizeof(out)), 3);
  assert_string_equal(out, "a b");
  assert_int_equal(api_pct_decode("%4", 2, out, sizeof(out)), -1);
  assert_int_equal(api_pct_decode("%zz", 3, out, sizeof(out)), -1);
  assert_int_equal(api_pct_decode("0123456789abcdefX", 17, out, sizeof(out)),
                   -1); /* too long for out */
  assert_true(api_peer_matches("alice", "alice", alice_fp));
  assert_false(api_peer_matches("Alice", "alice", alice_fp));
  assert_true(api_peer_matches("abcdef0123456789", "x", alice_fp));
  assert_false(api_peer_matches("abcdef02", "x", alice_fp));
  assert_false(api_peer_matches("", "", alice_fp));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_status_golden),
    cmocka_unit_test(test_peers),
    cmocka_unit_test(test_peers_paging),
    cmocka_unit_test(test_delete),
    cmocka_unit_test(test_reload),
    cmocka_unit_test(test_refusals),
    cmocka_unit_test(test_json_escaping),
    cmocka_unit_test(test_pct_and_match),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
