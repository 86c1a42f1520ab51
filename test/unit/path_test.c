/* path_test.c - the end-to-end connection's path decisions on a fake
 * clock: silence sends it to the relay, cooldowns grow and reset, a new
 * network punches at once, a relay session change moves only a
 * connection that is on the relay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "path.h"

static void test_path_punch_and_cooldown_growth(void **state)
{
  struct path p;
  uint64_t t = 1000;
  uint64_t expect[] = { 30000, 60000, 120000, 240000, 240000 };
  (void)state;

  path_init(&p, 0);
  assert_int_equal(path_tick(&p, t, 0, 1), PATH_ACT_NONE); /* no connection */
  path_connected(&p, t);
  assert_int_equal(p.state, PATH_RELAY);
  /* Up on the relay: punch at once, but only when a punch can start. */
  assert_int_equal(path_tick(&p, t, 0, 0), PATH_ACT_NONE);
  assert_int_equal(path_tick(&p, t, 0, 1), PATH_ACT_PUNCH);
  for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
    path_punch_started(&p, t);
    assert_int_equal(p.state, PATH_PUNCHING);
    assert_int_equal(path_tick(&p, t + 5000, 0, 1), PATH_ACT_NONE);
    t += 10000;
    path_failed(&p, PATH_FAIL_TIMEOUT, t);
    assert_int_equal(p.state, PATH_RELAY);
    assert_int_equal(path_tick(&p, t + expect[i] - 1, 0, 1), PATH_ACT_NONE);
    t += expect[i];
    assert_int_equal(path_tick(&p, t, 0, 1), PATH_ACT_PUNCH);
  }
  assert_int_equal(p.punches_failed, 5);
  assert_int_equal(p.fails[PATH_FAIL_TIMEOUT], 5);
}

static void direct(struct path *p, uint64_t t)
{
  path_punch_started(p, t);
  path_punch_found(p, t + 100);
  assert_int_equal(p->state, PATH_VALIDATING);
  path_validated(p, t + 150);
  assert_int_equal(p->state, PATH_DIRECT);
}

static void test_path_silence_falls_back(void **state)
{
  struct path p;
  uint64_t t = 0;
  (void)state;

  path_init(&p, 0);
  path_connected(&p, t);
  direct(&p, t);
  /* Answers owed for 1.499 s: still direct. 1.5 s: the relay, now. */
  assert_int_equal(path_tick(&p, t + 5000, PATH_SILENCE_MS - 1, 1),
                   PATH_ACT_NONE);
  assert_int_equal(path_tick(&p, t + 5000, PATH_SILENCE_MS, 1),
                   PATH_ACT_FALLBACK);
  assert_int_equal(p.state, PATH_RELAY);
  assert_int_equal(p.fallbacks, 1);
  /* The next punch after the first cooldown. */
  assert_int_equal(path_tick(&p, t + 5000 + PATH_COOLDOWN_MS - 1, 0, 1),
                   PATH_ACT_NONE);
  assert_int_equal(path_tick(&p, t + 5000 + PATH_COOLDOWN_MS, 0, 1),
                   PATH_ACT_PUNCH);
  /* A second loss soon after: the cooldown has doubled. */
  t += 5000 + PATH_COOLDOWN_MS;
  direct(&p, t);
  assert_int_equal(path_tick(&p, t + 1000, PATH_SILENCE_MS, 1),
                   PATH_ACT_FALLBACK);
  assert_int_equal(p.retry_at_ms, t + 1000 + 2 * PATH_COOLDOWN_MS);
  /* A direct path that held for a minute starts the cooldown over. */
  t += 1000 + 2 * PATH_COOLDOWN_MS;
  direct(&p, t);
  assert_int_equal(path_tick(&p, t + 150 + PATH_STABLE_MS, PATH_SILENCE_MS,
                             1),
                   PATH_ACT_FALLBACK);
  assert_int_equal(p.retry_at_ms, t + 150 + PATH_STABLE_MS + PATH_COOLDOWN_MS);
  assert_int_equal(p.fallbacks, 3);
}

static void test_path_validation_must_finish(void **state)
{
  struct path p;
  (void)state;

  path_init(&p, 0);
  path_connected(&p, 0);
  path_punch_started(&p, 0);
  path_punch_found(&p, 2000);
  assert_int_equal(path_tick(&p, 2000 + PATH_VALIDATE_MS - 1, 0, 1),
                   PATH_ACT_NONE);
  assert_int_equal(path_tick(&p, 2000 + PATH_VALIDATE_MS, 0, 1),
                   PATH_ACT_FALLBACK);
  assert_int_equal(p.state, PATH_RELAY);
  assert_int_equal(p.fails[PATH_FAIL_VALIDATION], 1);
  assert_int_equal(p.punches_ok, 1);
  /* A late validation changes nothing. */
  path_validated(&p, 6000);
  assert_int_equal(p.state, PATH_RELAY);
}

static void test_path_network_change_punches_now(void **state)
{
  struct path p;
  (void)state;

  path_init(&p, 0);
  path_connected(&p, 0);
  path_punch_started(&p, 0);
  path_failed(&p, PATH_FAIL_NO_CANDIDATES, 1000);
  assert_int_equal(path_tick(&p, 2000, 0, 1), PATH_ACT_NONE);
  path_network_changed(&p, 2000);
  assert_int_equal(path_tick(&p, 2000, 0, 1), PATH_ACT_PUNCH);
  /* Direct: a new address of ours does not end a working path. */
  direct(&p, 2000);
  path_network_changed(&p, 3000);
  assert_int_equal(p.state, PATH_DIRECT);
  assert_int_equal(path_tick(&p, 3000, 0, 1), PATH_ACT_NONE);
}

static void test_path_relay_session_change(void **state)
{
  struct path p;
  (void)state;

  path_init(&p, 0);
  assert_int_equal(path_relay_changed(&p), 0); /* no connection yet */
  path_connected(&p, 0);
  assert_int_equal(path_relay_changed(&p), 1); /* on the relay: move */
  path_punch_started(&p, 0);
  assert_int_equal(path_relay_changed(&p), 1);
  direct(&p, 0);
  assert_int_equal(path_relay_changed(&p), 0); /* direct: keep for later */
  assert_int_equal(path_tick(&p, 1000, 0, 1), PATH_ACT_NONE);
  path_lost(&p);
  assert_int_equal(p.state, PATH_NONE);
  assert_int_equal(path_tick(&p, 2000, 99999, 1), PATH_ACT_NONE);
}

static void test_path_no_direct(void **state)
{
  struct path p;
  (void)state;

  path_init(&p, 1);
  path_connected(&p, 0);
  path_network_changed(&p, 10);
  for (uint64_t t = 0; t < 1000000; t += 10000)
    assert_int_equal(path_tick(&p, t, 0, 1), PATH_ACT_NONE);
  assert_string_equal(path_state_name(p.state), "relay");
  assert_string_equal(path_fail_name(PATH_FAIL_VALIDATION), "validation");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_path_punch_and_cooldown_growth),
    cmocka_unit_test(test_path_silence_falls_back),
    cmocka_unit_test(test_path_validation_must_finish),
    cmocka_unit_test(test_path_network_change_punches_now),
    cmocka_unit_test(test_path_relay_session_change),
    cmocka_unit_test(test_path_no_direct),
  };
  return cmocka_run_group_tests_name("path", tests, NULL, NULL);
}
