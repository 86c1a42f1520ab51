/* daemon.c - the shutdown drain and the final loop check. */
#include "daemon.h"
#include "log.h"
#include "quic.h"

static void drain_closed(uv_handle_t *h)
{
  struct daemon_drain *d = h->data;
  d->done(d->ud);
}

static void drain_cb(uv_timer_t *t)
{
  struct daemon_drain *d = t->data;
  int idle = 1;

  for (size_t i = 0; i < d->neps; i++)
    if (d->eps[i] && !quic_endpoint_idle(d->eps[i]))
      idle = 0;
  if (!idle && uv_now(t->loop) - d->started_ms < DAEMON_DRAIN_MS)
    return;
  if (!idle)
    log_info("drain: gave up after %d ms", DAEMON_DRAIN_MS);
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, drain_closed);
}

void daemon_drain_start(struct daemon_drain *d, uv_loop_t *loop,
                        struct quic_endpoint *const *eps, size_t neps,
                        void (*done)(void *ud), void *ud)
{
  d->neps = neps < DAEMON_DRAIN_MAX_EPS ? neps : DAEMON_DRAIN_MAX_EPS;
  for (size_t i = 0; i < d->neps; i++)
    d->eps[i] = eps[i];
  d->done = done;
  d->ud = ud;
  d->started_ms = uv_now(loop);
  uv_timer_init(loop, &d->timer);
  d->timer.data = d;
  /* At once if already idle, then every 10 ms. */
  uv_timer_start(&d->timer, drain_cb, 0, 10);
}

static void walk_cb(uv_handle_t *h, void *arg)
{
  (void)arg;
  log_warnx("at exit: a %s handle is still open%s",
            uv_handle_type_name(uv_handle_get_type(h)),
            uv_is_closing(h) ? " (closing)" : "");
}

int daemon_loop_close(uv_loop_t *loop)
{
  if (uv_loop_close(loop) == 0)
    return 0;
  uv_walk(loop, walk_cb, NULL);
  return -1;
}
