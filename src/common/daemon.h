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

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

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

/* SIGTERM and SIGINT call stop(ud, signum) once; SIGHUP calls
 * reload(ud) until stop was called. daemon_signals_close closes the
 * handles (at the end of the drain) and ignores SIGHUP from then on, so a
 * late reload request cannot kill a daemon that is on its way out. */
struct daemon_signals {
  uv_signal_t term, intr, hup;
  void (*stop)(void *ud, int signum);
  void (*reload)(void *ud);
  void *ud;
  int stopping;
};
void daemon_signals_start(struct daemon_signals *s, uv_loop_t *loop,
                          void (*stop)(void *ud, int signum),
                          void (*reload)(void *ud), void *ud);
void daemon_signals_close(struct daemon_signals *s);

/* Start-up failures, the same way in every daemon: "ztna APPLET: what"
 * on stderr; returns 1, the exit code. */
int daemon_fail(const char *applet, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The daemon's configuration file: explicit (--config, ZTNA_CONFIG), else
 * /etc/ztna/<applet>.json, else ./<applet>.json (cfg_find). cfg is the
 * applet's struct cfg_<applet>, with what lies below the file (defaults,
 * the environment) in it already; the file is read over it and its path
 * goes into path (empty when none). Unknown keys are warned about in the
 * log. Returns 0, 1 when there is no file and none was named, or -1 after
 * daemon_fail said why. */
int daemon_config_load(const char *applet, const char *explicit_path,
                       char *path, size_t pathlen, void *cfg);

/* Options from the environment, for containers. Every long option NAME of
 * a daemon (the first nopts of opts, but help and check) can be given as ZTNA_NAME, upper case with
 * '-' as '_': ZTNA_METRICS_BIND=0.0.0.0 is --metrics-bind 0.0.0.0. A
 * switch takes 1/true/yes (on), 0/false/no/empty (off) or a count (-v).
 * Options listed in repeat take several values separated by ','. The
 * result is an argv (argv[0] = prog) for the daemon's own getopt loop, so
 * the environment is checked by the same code as the command line; the
 * daemon applies it below its configuration file, which is below its
 * flags. */
#define DAEMON_ENV_MAX_ARGS 256
struct daemon_env {
  int argc;
  char *argv[DAEMON_ENV_MAX_ARGS + 1];
  char names[DAEMON_ENV_MAX_ARGS][48];
  char values[8192];
  size_t used;
};

/* Returns 0, or -1 with err filled (a bad switch value, too many values). */
int daemon_env_args(struct daemon_env *e, const char *prog,
                    const struct option *opts, size_t nopts,
                    const char *const *repeat, char *err, size_t errlen);

/* Gives up privileges once a daemon holds what needed them (its sockets,
 * its TUN): with user ("NAME" or "UID[:GID]") it becomes that user (its
 * groups too); then it keeps only the capabilities in keep (a mask of
 * 1 << CAP_*), in its permitted, effective and bounding sets, clears the
 * inheritable and ambient ones and sets no_new_privs. Root without a user
 * keeps uid 0 with those capabilities (and is warned about). Returns 0 or
 * -1 with err filled. */
#define DAEMON_CAP_NET_ADMIN (1ULL << 12) /* CAP_NET_ADMIN */
int daemon_drop_privileges(const char *user, uint64_t keep, char *err,
                           size_t errlen);

/* A usage error of applet, "ztna APPLET: " fmt (with one %s for arg) and
 * a pointer to --help, exit code 1 returned; while daemon_env_phase(1)
 * is on, it adds that the option came from the environment. */
int daemon_usage_error(const char *applet, const char *fmt, const char *arg);
void daemon_env_phase(int on);

/* Runs getopt_long from the start over argv (resets its state). */
void daemon_getopt_reset(void);

/* Gives freed heap memory back to the system when much of it is free
 * (glibc keeps the memory of connections that left in its arena, so the
 * resident size stays at its peak after a storm of clients is gone).
 * Call it periodically; it looks at most every 10 s and trims when at
 * least 4 MB and half as much as is in use are free, and 1 MB more than
 * at the last trim or a minute after it. 1 if it trimmed. */
int daemon_heap_trim(uint64_t now_ms);

#endif
