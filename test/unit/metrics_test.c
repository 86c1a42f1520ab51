/* metrics_test.c - registry and Prometheus text, the request parser, and
 * the HTTP endpoint over real loopback TCP with split, garbage, oversized
 * and slow requests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "metrics.h"

static void test_metrics_render(void **state)
{
  struct metrics *m = metrics_new();
  struct metric *a, *b, *c;
  size_t len;
  char *text;
  (void)state;

  a = metrics_counter(m, "ztna_drops_total", "reason=\"no_route\"", "Drops");
  b = metrics_gauge(m, "ztna_active_connections", NULL, "Connections");
  c = metrics_counter(m, "ztna_drops_total", "reason=\"denied\"", "Drops");
  assert_ptr_equal(a, metrics_counter(m, "ztna_drops_total",
                                      "reason=\"no_route\"", "Drops"));
  metric_add(a, 3);
  metric_inc(c);
  metric_set(b, 42);
  text = metrics_render(m, &len);
  assert_non_null(strstr(text, "# HELP ztna_drops_total Drops\n"
                               "# TYPE ztna_drops_total counter\n"
                               "ztna_drops_total{reason=\"no_route\"} 3\n"
                               "ztna_drops_total{reason=\"denied\"} 1\n"));
  assert_non_null(strstr(text, "# TYPE ztna_active_connections gauge\n"
                               "ztna_active_connections 42\n"));
  /* HELP/TYPE once per name. */
  {
    int k = 0;
    for (const char *p = text; (p = strstr(p, "# TYPE ztna_drops_total"));
         p++)
      k++;
    assert_int_equal(k, 1);
  }
  assert_int_equal(strlen(text), len);
  free(text);
  metrics_del(m);
}

static void test_metrics_bounded(void **state)
{
  struct metrics *m = metrics_new();
  char labels[64];
  struct metric *x = NULL;
  size_t len;
  char *text;
  (void)state;

  for (int i = 0; i < METRICS_MAX + 10; i++) {
    snprintf(labels, sizeof(labels), "service=\"s%d\"", i);
    x = metrics_counter(m, "ztna_x_total", labels, "x");
    metric_inc(x); /* never NULL, even past the bound */
  }
  text = metrics_render(m, &len);
  assert_non_null(strstr(text, "ztna_metrics_overflow_total 11\n"));
  free(text);
  metrics_del(m);
}

static void test_metrics_http_parse(void **state)
{
  char method[16], path[64];
  const char *r;
  (void)state;

  r = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_int_equal(metrics_http_parse(r, strlen(r), method, sizeof(method),
                                      path, sizeof(path)), 1);
  assert_string_equal(method, "GET");
  assert_string_equal(path, "/metrics");
  r = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  assert_int_equal(metrics_http_parse(r, strlen(r), method, sizeof(method),
                                      path, sizeof(path)), 0);
  r = "GET /metrics HTTP/1.1\r\n\r\n"; /* no headers at all */
  assert_int_equal(metrics_http_parse(r, strlen(r), method, sizeof(method),
                                      path, sizeof(path)), 1);
  assert_string_equal(path, "/metrics");
  r = "GET /healthz HTTP/1.0\n\n";
  assert_int_equal(metrics_http_parse(r, strlen(r), method, sizeof(method),
                                      path, sizeof(path)), 1);
  const char *bad[] = {
    "GET\r\n\r\n", "GET /x\r\n\r\n", "get /x HTTP/1.1\r\n\r\n",
    "GET x HTTP/1.1\r\n\r\n", "GET /x FTP/1.1\r\n\r\n",
    "GET /a b HTTP/1.1\r\n\r\n", " /x HTTP/1.1\r\n\r\n",
    "GET /\x01 HTTP/1.1\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(metrics_http_parse(bad[i], strlen(bad[i]), method,
                                        sizeof(method), path, sizeof(path)),
                     -1);
  /* A path longer than the caller's buffer is refused, not cut. */
  r = "GET /0123456789012345678901234567890123456789012345678901234567890123"
      "456789 HTTP/1.1\r\n\r\n";
  assert_int_equal(metrics_http_parse(r, strlen(r), method, sizeof(method),
                                      path, sizeof(path)), -1);
}

/* --- live endpoint ------------------------------------------------------ */

struct req {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t w1, w2;
  uv_timer_t later;
  const char *part1, *part2;
  char resp[65536];
  size_t len;
  int done, closed;
};

static void on_close(uv_handle_t *h)
{
  ((struct req *)h->data)->closed = 1;
}

static void r_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
  struct req *r = h->data;
  (void)hint;
  *b = uv_buf_init(r->resp + r->len, (unsigned)(sizeof(r->resp) - 1 - r->len));
}

static void r_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
  struct req *r = s->data;
  (void)b;
  if (n > 0) {
    r->len += (size_t)n;
    r->resp[r->len] = '\0';
    return;
  }
  if (n < 0) {
    r->done = 1;
    uv_close((uv_handle_t *)&r->tcp, on_close);
  }
}

static void r_write_done(uv_write_t *w, int status)
{
  (void)w;
  (void)status;
}

static void send_part2(uv_timer_t *t)
{
  struct req *r = t->data;
  uv_buf_t b = uv_buf_init((char *)(uintptr_t)r->part2, (unsigned)strlen(r->part2));
  uv_write(&r->w2, (uv_stream_t *)&r->tcp, &b, 1, r_write_done);
}

static void r_connected(uv_connect_t *c, int status)
{
  struct req *r = c->data;
  uv_buf_t b = uv_buf_init((char *)(uintptr_t)r->part1, (unsigned)strlen(r->part1));

  assert_int_equal(status, 0);
  uv_read_start((uv_stream_t *)&r->tcp, r_alloc, r_read);
  if (*r->part1)
    uv_write(&r->w1, (uv_stream_t *)&r->tcp, &b, 1, r_write_done);
  if (r->part2)
    uv_timer_start(&r->later, send_part2, 50, 0);
}

/* Sends part1, then part2 50 ms later (NULL: nothing more), and returns
 * the whole response once the server closes. */
static struct req *request(uv_loop_t *loop, int port, const char *part1,
                           const char *part2)
{
  struct req *r = calloc(1, sizeof(*r));
  struct sockaddr_in a;

  r->part1 = part1;
  r->part2 = part2;
  uv_tcp_init(loop, &r->tcp);
  uv_timer_init(loop, &r->later);
  r->tcp.data = r->later.data = r->conn.data = r;
  uv_ip4_addr("127.0.0.1", port, &a);
  uv_tcp_connect(&r->conn, &r->tcp, (struct sockaddr *)&a, r_connected);
  while (!r->closed)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&r->later, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return r;
}

static int ready_flag;

static int not_ready(void *ud, char *why, size_t cap)
{
  if (*(int *)ud)
    return 1;
  snprintf(why, cap, "service 'web': not registered");
  return 0;
}

static void test_metrics_http_live(void **state)
{
  uv_loop_t loop;
  struct metrics *m = metrics_new();
  struct metrics_http *h;
  struct sockaddr_in a;
  struct req *r;
  char big[6000];
  uint64_t t0;
  (void)state;

  metric_set(metrics_gauge(m, "ztna_active_connections", NULL, "c"), 5);
  uv_loop_init(&loop);
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(metrics_http_start(&h, &loop, (struct sockaddr *)&a, m),
                   0);

  r = request(&loop, metrics_http_port(h), "GET /met", "rics HTTP/1.1\r\n\r\n");
  if (!strstr(r->resp, "HTTP/1.1 200 OK\r\n"))
    fail_msg("response: [%s]", r->resp);
  assert_non_null(strstr(r->resp, "Content-Type: text/plain; "
                                  "version=0.0.4\r\n"));
  assert_non_null(strstr(r->resp, "\r\n\r\n"));
  assert_non_null(strstr(r->resp, "ztna_active_connections 5\n"));
  free(r);

  r = request(&loop, metrics_http_port(h), "GET /healthz HTTP/1.1\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "200 OK"));
  assert_non_null(strstr(r->resp, "\r\n\r\nok\n"));
  free(r);

  /* /readyz: like /healthz until the daemon says what ready means. */
  r = request(&loop, metrics_http_port(h), "GET /readyz HTTP/1.1\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "200 OK"));
  assert_non_null(strstr(r->resp, "\r\n\r\nready\n"));
  free(r);
  metrics_set_ready(m, not_ready, &ready_flag);
  r = request(&loop, metrics_http_port(h), "GET /readyz HTTP/1.1\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "503 Service Unavailable"));
  assert_non_null(strstr(r->resp, "\r\n\r\nservice 'web': not registered\n"));
  free(r);
  ready_flag = 1;
  r = request(&loop, metrics_http_port(h), "GET /readyz HTTP/1.1\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "200 OK"));
  free(r);

  r = request(&loop, metrics_http_port(h), "HEAD /metrics HTTP/1.1\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "200 OK"));
  assert_null(strstr(r->resp, "ztna_active_connections"));
  free(r);

  r = request(&loop, metrics_http_port(h), "\x16\x03\x01garbage\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "400 Bad Request"));
  free(r);

  r = request(&loop, metrics_http_port(h), "POST /metrics HTTP/1.1\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "405"));
  free(r);

  r = request(&loop, metrics_http_port(h), "GET /nope HTTP/1.1\r\n\r\n",
              NULL);
  assert_non_null(strstr(r->resp, "404"));
  free(r);

  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  memcpy(big, "GET /", 5);
  r = request(&loop, metrics_http_port(h), big, NULL);
  assert_true(strstr(r->resp, "400") || strstr(r->resp, "431"));
  free(r);

  /* A client that never finishes its request is dropped after the
   * timeout, with no answer. */
  t0 = uv_hrtime();
  r = request(&loop, metrics_http_port(h), "GET /metrics HTTP/1.1\r\n", NULL);
  assert_int_equal(r->len, 0);
  assert_true(uv_hrtime() - t0 >= (METRICS_TIMEOUT_MS - 100) * 1000000ull);
  free(r);

  metrics_http_stop(h);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  metrics_del(m);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_metrics_render),
    cmocka_unit_test(test_metrics_bounded),
    cmocka_unit_test(test_metrics_http_parse),
    cmocka_unit_test(test_metrics_http_live),
  };
  return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
