/* metrics.h - counters and gauges, Prometheus text, /metrics and /healthz.
 *
 * A metric is identified by name and label set ('service="echo"'). The
 * table is bounded (METRICS_MAX); past it, metrics_counter/gauge return a
 * shared overflow slot and ztna_metrics_overflow_total counts the misses,
 * so callers never need to check for NULL.
 *
 * The HTTP side speaks just enough HTTP/1.1: one request per connection,
 * request head at most METRICS_REQ_MAX bytes, 5 s to send it, at most
 * METRICS_CLIENTS_MAX clients at once. Everything else is refused.
 */
#ifndef ZTNA_METRICS_H
#define ZTNA_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#define METRICS_MAX 1024
#define METRICS_REQ_MAX 4096
#define METRICS_CLIENTS_MAX 32
#define METRICS_TIMEOUT_MS 5000

enum metric_type { METRIC_COUNTER, METRIC_GAUGE };

struct metric {
  char name[96];
  char labels[560];
  const char *help; /* static string */
  enum metric_type type;
  int64_t value;
};

struct metrics;

struct metrics *metrics_new(void);
void metrics_del(struct metrics *m);
struct metric *metrics_counter(struct metrics *m, const char *name,
                               const char *labels, const char *help);
struct metric *metrics_gauge(struct metrics *m, const char *name,
                             const char *labels, const char *help);
static inline void metric_add(struct metric *x, int64_t n) { x->value += n; }
static inline void metric_inc(struct metric *x) { x->value++; }
static inline void metric_set(struct metric *x, int64_t v) { x->value = v; }

/* Sets every metric of this name to 0 (before gauges are refilled). */
void metrics_zero(struct metrics *m, const char *name);

/* Writes v as a Prometheus label value (quotes not included), escaping
 * backslash, double quote and newline and replacing other control bytes.
 * Returns out. */
char *metrics_label_escape(char *out, size_t cap, const char *v, size_t len);

/* Called before each rendering so gauges can be brought up to date. */
void metrics_set_collect(struct metrics *m, void (*fn)(void *), void *ud);

/* What GET /readyz answers: fn returns 1 when the daemon does its job
 * (200 "ready"), else 0 after writing why into why (503 and that text).
 * Without fn, /readyz answers like /healthz. */
void metrics_set_ready(struct metrics *m,
                       int (*fn)(void *ud, char *why, size_t cap), void *ud);

/* The status API on this listener (docs/api.md): requests for /v1/...
 * go to api_handle as local ones (read-only, no authentication). Without
 * ops they are 404. */
struct api_ops;
void metrics_set_api(struct metrics *m, const struct api_ops *ops,
                     void *ud);

/* Renders the Prometheus text format into a malloc'd buffer; the caller
 * frees it. Returns NULL on allocation failure. */
char *metrics_render(struct metrics *m, size_t *len);

/* Sans-IO request parser. Returns 1 with the method and path copied out
 * when a complete request head is in buf, 0 when more bytes are needed,
 * -1 for a malformed or oversized request. */
int metrics_http_parse(const char *buf, size_t len, char *method,
                       size_t methodcap, char *path, size_t pathcap);

struct metrics_http;
/* Listens on bind (TCP). Returns 0 or -errno. */
int metrics_http_start(struct metrics_http **out, uv_loop_t *loop,
                       const struct sockaddr *bind, struct metrics *m);
/* The same from an address string and a port, with a message in err on
 * failure ("metrics address 'x' is not an IP address", "cannot listen on
 * TCP a:p: reason"). */
int metrics_http_listen(struct metrics_http **out, uv_loop_t *loop,
                        const char *addr, uint16_t port, struct metrics *m,
                        char *err, size_t errlen);
/* Stops listening and drops clients; memory goes once the loop has run. */
void metrics_http_stop(struct metrics_http *h);
int metrics_http_port(struct metrics_http *h);

#endif
