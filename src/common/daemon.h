/* daemon.h - what every daemon does the same way at shutdown.
 *
 * A daemon that got SIGTERM closes its connections, then drains: its QUIC
 * endpoints keep the loop alive until the close packets have left (no
 * connection and no queued send left), at most DAEMON_DRAIN_MS, and then
 * the daemon closes every handle it owns. Once uv_run returns,
 * daemon_loop_close checks that nothing was left open.
 */
#ifndef ZTNA_DAEMON_H
#define ZTNA_DAEMON_H

#include <stddef.h>

#include <uv.h>

struct quic_endpoint;

#define DAEMON_DRAIN_MS 3000
#define DAEMON_DRAIN_MAX_EPS 4

struct daemon_drain {
  uv_timer_t timer;
  uint64_t started_ms;
  struct quic_endpoint *eps[DAEMON_DRAIN_MAX_EPS];
  size_t neps;
  void (*done)(void *ud);
  void *ud;
};

/* Calls done(ud) from the loop once every endpoint of eps (NULL entries
 * are skipped) is idle or DAEMON_DRAIN_MS have passed; the drain's timer
 * is closed by then. d must live until the loop ends. */
void daemon_drain_start(struct daemon_drain *d, uv_loop_t *loop,
                        struct quic_endpoint *const *eps, size_t neps,
                        void (*done)(void *ud), void *ud);

/* uv_loop_close; on failure logs every handle still open. Returns 0 or
 * -1. */
int daemon_loop_close(uv_loop_t *loop);

#endif
