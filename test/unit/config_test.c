/* config_test.c - reference files load; every error names file, line,
 * column and key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "err.h"

static char warned[4][512];
static int nwarned;

static void warn_cb(const char *msg)
{
  if (nwarned < 4)
    snprintf(warned[nwarned], sizeof(warned[0]), "%s", msg);
  nwarned++;
}

static char *load(const char *path, size_t *len)
{
  char err[256], *text;
  int rv = cfg_read_file(path, &text, len, err, sizeof(err));
  if (rv < 0)
    fail_msg("%s", err);
  return text;
}

static void test_config_original_intermediate(void **state)
{
  struct cfg_intermediate c;
  char err[512];
  size_t len;
  char *text = load("examples/original/intermediate.json", &len);
  (void)state;

  nwarned = 0;
  cfg_intermediate_defaults(&c);
  assert_int_equal(cfg_intermediate_parse(&c, "intermediate.json", text, len,
                                          err, sizeof(err), warn_cb), 0);
  assert_int_equal(nwarned, 0); /* _comment is not a typo */
  assert_int_equal(c.port, 4433);
  assert_string_equal(c.bind_addr, "0.0.0.0");
  assert_string_equal(c.external_ip, "");
  assert_string_equal(c.cert_path, "certs/cert.pem");
  assert_string_equal(c.key_path, "certs/key.pem");
  assert_string_equal(c.ca_cert_path, "certs/ca-cert.pem");
  assert_int_equal(c.verify_peer, 0);
  assert_int_equal(c.require_client_cert, 0);
  assert_int_equal(c.disable_retry, 0);
  assert_int_equal(c.metrics_port, 9090);
  free(text);
}

static void test_config_original_connector(void **state)
{
  struct cfg_connector *c = malloc(sizeof(*c));
  char err[512];
  size_t len;
  char *text = load("examples/original/connector.json", &len);
  (void)state;

  cfg_connector_defaults(c);
  assert_int_equal(cfg_connector_parse(c, "connector.json", text, len, err,
                                       sizeof(err), warn_cb), 0);
  assert_string_equal(c->server_host, "203.0.113.10");
  assert_int_equal(c->server_port, 4433);
  /* Every service, not only the first. */
  assert_int_equal(c->nservices, 2);
  assert_string_equal(c->services[0].id, "echo-service");
  assert_string_equal(c->services[0].backend, "127.0.0.1:9999");
  assert_int_equal(c->services[0].protocol, CFG_PROTO_UDP);
  assert_string_equal(c->services[1].id, "web-app");
  assert_int_equal(c->services[1].protocol, CFG_PROTO_TCP);
  assert_string_equal(c->p2p_cert, "certs/connector-cert.pem");
  assert_int_equal(c->p2p_port, 4434);
  assert_string_equal(c->ca_cert, "certs/ca-cert.pem");
  assert_int_equal(c->verify_peer, 0);
  assert_int_equal(c->metrics_port, 9091);
  free(text);
  free(c);
}

static void test_config_original_agent(void **state)
{
  struct cfg_agent *c = malloc(sizeof(*c));
  char err[512];
  size_t len;
  char *text = load("examples/original/agent.json", &len);
  (void)state;

  cfg_agent_defaults(c);
  assert_int_equal(cfg_agent_parse(c, "agent.json", text, len, err,
                                   sizeof(err), warn_cb), 0);
  assert_string_equal(c->server_host, "203.0.113.10");
  assert_int_equal(c->server_port, 4433);
  assert_int_equal(c->nservices, 2);
  assert_string_equal(c->services[0].id, "echo-service");
  assert_string_equal(c->services[0].virtual_ip, "10.100.0.1");
  assert_string_equal(c->services[1].virtual_ip, "10.100.0.2");
  assert_int_equal(c->verify_peer, 0);
  assert_string_equal(c->ca_cert, "");
  assert_string_equal(c->tun_name, "ztna0");
  free(text);
  free(c);
}

/* Parses text as an intermediate config and checks the error message. */
static void expect_error(const char *text, const char *want)
{
  struct cfg_intermediate c;
  char err[512];

  cfg_intermediate_defaults(&c);
  assert_int_equal(cfg_intermediate_parse(&c, "x.json", text, strlen(text),
                                          err, sizeof(err), NULL),
                   ZTNA_ERR_CONFIG);
  if (!strstr(err, want))
    fail_msg("error \"%s\" does not contain \"%s\"", err, want);
}

static void test_config_errors(void **state)
{
  (void)state;
  expect_error("{\n  \"port\": \"4433\"\n}",
               "x.json:2:11: port: expected a whole number from 1 to 65535, "
               "got a string");
  expect_error("{\"port\": 70000}", "x.json:1:10: port: expected a whole "
               "number from 1 to 65535, got 70000");
  expect_error("{\"port\": 44.5}", "got 44.5");
  expect_error("{\"verify_peer\": \"yes\"}",
               "verify_peer: expected true or false, got a string");
  expect_error("{\"bind_addr\": 1}", "bind_addr: expected a string, got a "
               "number");
  expect_error("{\n\"port\": 4433,\n", "x.json:3:1: JSON ends too early");
  expect_error("{\"port\": 4433,,}", "x.json:1:15: expected a quoted key");
  expect_error("{\"port\": 4433 \"x\": 1}", "x.json:1:15: expected ',' or '}'");
  expect_error("{\"port\": 01}", "x.json:1:11: numbers do not start with 0");
  expect_error("{\"port\" 1}", "x.json:1:9: expected ':' after the key");
  expect_error("[1, 2]", "expected a JSON object at the top, got an array");
  expect_error("", "empty file");
  expect_error("{} {}", "x.json:1:4: unexpected data after the top-level value");
  expect_error("{\"cert_path\": \"a\\qb\"}", "x.json:1:17: unknown escape in string");
  expect_error("{\"cert_path\": \"\\u0000\"}", "\\u0000 is not allowed");
  expect_error("{\"cert_path\": \"\xc3\x28\"}", "not valid UTF-8");
  expect_error("{\"port\": 1, \"x\": \"\0\"}", "");
  expect_error("{\n \"metrics_bind\": \"localhost\"}",
               "x.json:2:18: metrics_bind: 'localhost' is not an IP address");
}

/* metrics_bind for every daemon (containers need more than loopback). */
static void test_config_metrics_bind(void **state)
{
  struct cfg_intermediate i;
  struct cfg_connector *c = malloc(sizeof(*c));
  struct cfg_agent *a = malloc(sizeof(*a));
  const char *ti = "{\"metrics_bind\": \"0.0.0.0\"}";
  const char *tc = "{\"metrics_bind\": \"::\"}";
  const char *ta = "{\"metrics_bind\": \"192.0.2.2\"}";
  char err[512];
  (void)state;

  cfg_intermediate_defaults(&i);
  cfg_connector_defaults(c);
  cfg_agent_defaults(a);
  assert_string_equal(i.metrics_bind, "127.0.0.1");
  assert_string_equal(c->metrics_bind, "127.0.0.1");
  assert_string_equal(a->metrics_bind, "127.0.0.1");
  assert_int_equal(cfg_intermediate_parse(&i, "i.json", ti, strlen(ti), err,
                                          sizeof(err), NULL), 0);
  assert_int_equal(cfg_connector_parse(c, "c.json", tc, strlen(tc), err,
                                       sizeof(err), NULL), 0);
  assert_int_equal(cfg_agent_parse(a, "a.json", ta, strlen(ta), err,
                                   sizeof(err), NULL), 0);
  assert_string_equal(i.metrics_bind, "0.0.0.0");
  assert_string_equal(c->metrics_bind, "::");
  assert_string_equal(a->metrics_bind, "192.0.2.2");
  free(c);
  free(a);
}

static void test_config_connector_errors(void **state)
{
  struct cfg_connector *c = malloc(sizeof(*c));
  char err[512];
  const char *t1 = "{\"services\": [{\"id\": \"a\"}]}";
  const char *t2 = "{\"services\": [{\"id\": \"a\", \"backend\": \"x:1\"},\n"
                   " {\"id\": \"a\", \"backend\": \"x:1\"}]}";
  const char *t3 = "{\"services\": [{\"id\": \"a\", \"backend\": \"x:1\", "
                   "\"protocol\": \"sctp\"}]}";
  (void)state;

  cfg_connector_defaults(c);
  assert_int_equal(cfg_connector_parse(c, "c.json", t1, strlen(t1), err,
                                       sizeof(err), NULL), ZTNA_ERR_CONFIG);
  assert_non_null(strstr(err, "services[0]: service \"a\" needs a "
                              "\"backend\""));
  cfg_connector_defaults(c);
  assert_int_equal(cfg_connector_parse(c, "c.json", t2, strlen(t2), err,
                                       sizeof(err), NULL), ZTNA_ERR_CONFIG);
  assert_non_null(strstr(err, "c.json:2:2: services[1]: service \"a\" is "
                              "listed twice"));
  cfg_connector_defaults(c);
  assert_int_equal(cfg_connector_parse(c, "c.json", t3, strlen(t3), err,
                                       sizeof(err), NULL), ZTNA_ERR_CONFIG);
  assert_non_null(strstr(err, "services[0].protocol: expected \"udp\", "
                              "\"tcp\" or \"both\", got \"sctp\""));
  free(c);
}

static void test_config_unknown_keys_warn(void **state)
{
  struct cfg_intermediate c;
  char err[256];
  const char *t = "{\n  \"_note\": 1,\n  \"prot\": 4433,\n  \"port\": 5}";
  (void)state;

  nwarned = 0;
  cfg_intermediate_defaults(&c);
  assert_int_equal(cfg_intermediate_parse(&c, "i.json", t, strlen(t), err,
                                          sizeof(err), warn_cb), 0);
  assert_int_equal(nwarned, 1);
  assert_string_equal(warned[0], "i.json:3:3: unknown key 'prot' ignored");
  assert_int_equal(c.port, 5);
}

/* The cluster's keys (docs/cluster.md), and their default prefix. */
static void test_config_cluster_keys(void **state)
{
  struct cfg_intermediate c;
  char err[256];
  const char *t = "{\"cluster_redis\": \"redis.example:6379\", "
                  "\"cluster_node\": \"i1\", \"cluster_advertise\": "
                  "\"198.51.100.2:4433\", \"cluster_redis_user\": \"ztna\", "
                  "\"cluster_redis_password_file\": \"/etc/ztna/redis.pw\", "
                  "\"cluster_redis_ca\": \"/etc/ztna/redis-ca.crt\", "
                  "\"cluster_redis_name\": \"redis.example\"}";
  const char *bad = "{\"cluster_prefix\": 7}";
  (void)state;

  cfg_intermediate_defaults(&c);
  assert_string_equal(c.cluster_prefix, "ztna");
  assert_string_equal(c.cluster_redis, "");
  assert_int_equal(cfg_intermediate_parse(&c, "i.json", t, strlen(t), err,
                                          sizeof(err), NULL), 0);
  assert_string_equal(c.cluster_redis, "redis.example:6379");
  assert_string_equal(c.cluster_node, "i1");
  assert_string_equal(c.cluster_advertise, "198.51.100.2:4433");
  assert_string_equal(c.cluster_redis_user, "ztna");
  assert_string_equal(c.cluster_redis_password_file, "/etc/ztna/redis.pw");
  assert_string_equal(c.cluster_redis_ca, "/etc/ztna/redis-ca.crt");
  assert_string_equal(c.cluster_redis_name, "redis.example");
  assert_int_equal(cfg_intermediate_parse(&c, "i.json", bad, strlen(bad),
                                          err, sizeof(err), NULL),
                   ZTNA_ERR_CONFIG);
  assert_non_null(strstr(err, "i.json:1:"));
  assert_non_null(strstr(err, "cluster_prefix"));
}

static void test_config_escapes_and_agent_forms(void **state)
{
  struct cfg_agent *c = malloc(sizeof(*c));
  char err[256];
  const char *t = "{\"server\": \"[2001:db8::1]:4500\", \"tun_name\": "
                  "\"zt\\u00e9\\u20ac\\/\", \"services\": [{\"id\": \"web\", "
                  "\"virtual_ip\": \"10.100.0.2\"}], \"serviceId\": \"echo\", "
                  "\"tunnel_addr6\": \"fd00::5\", \"tun_offload\": false}";
  (void)state;

  cfg_agent_defaults(c);
  assert_int_equal(c->tun_offload, 1);
  assert_int_equal(cfg_agent_parse(c, "a.json", t, strlen(t), err,
                                   sizeof(err), NULL), 0);
  assert_int_equal(c->tun_offload, 0);
  assert_string_equal(c->server_host, "2001:db8::1");
  assert_int_equal(c->server_port, 4500);
  assert_string_equal(c->tun_name, "zt\xc3\xa9\xe2\x82\xac/");
  assert_int_equal(c->nservices, 2);
  assert_string_equal(c->services[1].id, "echo");
  assert_string_equal(c->tunnel_addr6, "fd00::5");
  free(c);
}

static void test_config_hostport(void **state)
{
  char host[64];
  uint16_t port;
  (void)state;

  assert_int_equal(cfg_split_hostport("example.org:443", host, sizeof(host),
                                      &port), 0);
  assert_string_equal(host, "example.org");
  assert_int_equal(port, 443);
  assert_int_equal(cfg_split_hostport("[::1]:80", host, sizeof(host), &port),
                   0);
  assert_string_equal(host, "::1");
  assert_true(cfg_split_hostport("::1:80", host, sizeof(host), &port) < 0);
  assert_true(cfg_split_hostport("h:0", host, sizeof(host), &port) < 0);
  assert_true(cfg_split_hostport("h:65536", host, sizeof(host), &port) < 0);
  assert_int_equal(cfg_parse_port("4433", &port, 0), 0);
  assert_int_equal(port, 4433);
  assert_int_equal(cfg_parse_port("0", &port, 1), 0);
  assert_int_equal(port, 0);
  assert_true(cfg_parse_port("0", &port, 0) < 0);
  assert_true(cfg_parse_port("", &port, 1) < 0);
  assert_true(cfg_parse_port("12x", &port, 1) < 0);
  assert_true(cfg_parse_port("-1", &port, 1) < 0);
  assert_true(cfg_parse_port("99999999999999999999", &port, 1) < 0);
  assert_true(cfg_split_hostport("h:", host, sizeof(host), &port) < 0);
  assert_true(cfg_split_hostport(":80", host, sizeof(host), &port) < 0);
  assert_true(cfg_split_hostport("h:8x", host, sizeof(host), &port) < 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_config_original_intermediate),
    cmocka_unit_test(test_config_cluster_keys),
    cmocka_unit_test(test_config_original_connector),
    cmocka_unit_test(test_config_original_agent),
    cmocka_unit_test(test_config_errors),
    cmocka_unit_test(test_config_connector_errors),
    cmocka_unit_test(test_config_unknown_keys_warn),
    cmocka_unit_test(test_config_escapes_and_agent_forms),
    cmocka_unit_test(test_config_hostport),
    cmocka_unit_test(test_config_metrics_bind),
  };
  return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
