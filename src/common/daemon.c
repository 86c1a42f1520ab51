/* daemon.c - the shutdown drain, the final loop check, options from the
 * environment. */
#include <ctype.h>
#include <signal.h>
#include <stdarg.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
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

static int listed(const char *name, const char *const *list)
{
  for (; list && *list; list++)
    if (!strcmp(*list, name))
      return 1;
  return 0;
}

/* argv[argc++] = s, or -1 when full. */
static int push(struct daemon_env *e, char *s)
{
  if (e->argc >= DAEMON_ENV_MAX_ARGS)
    return -1;
  e->argv[e->argc++] = s;
  e->argv[e->argc] = NULL;
  return 0;
}

int daemon_env_args(struct daemon_env *e, const char *prog,
                    const struct option *opts, size_t nopts,
                    const char *const *repeat, char *err, size_t errlen)
{
  memset(e, 0, sizeof(*e));
  snprintf(e->names[0], sizeof(e->names[0]), "%s", prog);
  e->argv[e->argc++] = e->names[0];
  for (const struct option *o = opts; o < opts + nopts && o->name; o++) {
    char var[64], *flag, *val;
    size_t n = strlen(o->name);

    if (!strcmp(o->name, "help") || !strcmp(o->name, "check") ||
        n + 6 > sizeof(var) || n + 3 > sizeof(e->names[0]))
      continue;
    snprintf(var, sizeof(var), "ZTNA_%s", o->name);
    for (char *p = var + 5; *p; p++)
      *p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    val = getenv(var);
    if (!val)
      continue;
    if (e->argc >= DAEMON_ENV_MAX_ARGS)
      goto full;
    flag = e->names[e->argc];
    snprintf(flag, sizeof(e->names[0]), "--%s", o->name);
    if (o->has_arg == no_argument) {
      long count;
      char *end;
      if (!strcasecmp(val, "true") || !strcasecmp(val, "yes"))
        count = 1;
      else if (!*val || !strcasecmp(val, "false") || !strcasecmp(val, "no"))
        count = 0;
      else if ((count = strtol(val, &end, 10)) < 0 || count > 8 || *end ||
               !isdigit((unsigned char)*val)) {
        snprintf(err, errlen, "%s='%s': a switch takes 1, true, yes, 0, "
                 "false or no", var, val);
        return -1;
      }
      while (count-- > 0)
        if (push(e, flag) < 0)
          goto full;
      continue;
    }
    if (!listed(o->name, repeat)) {
      if (push(e, flag) < 0 || push(e, val) < 0)
        goto full;
      continue;
    }
    /* NAME=a,b,c: one option per value, empty values skipped. */
    for (const char *p = val; *p;) {
      size_t len = strcspn(p, ",");
      if (len) {
        char *copy = e->values + e->used;
        if (e->used + len + 1 > sizeof(e->values))
          goto full;
        memcpy(copy, p, len);
        copy[len] = '\0';
        e->used += len + 1;
        if (push(e, flag) < 0 || push(e, copy) < 0)
          goto full;
      }
      p += len;
      if (*p == ',')
        p++;
    }
  }
  return 0;
full:
  snprintf(err, errlen, "too many options in ZTNA_* environment variables");
  return -1;
}

static int in_env;

void daemon_env_phase(int on)
{
  in_env = on;
}

/* The format of main.c's applet_usage_error, which the unit tests (they
 * link the modules without main.c) cannot call. */
int daemon_usage_error(const char *applet, const char *fmt, const char *arg)
{
  char f[256];

  snprintf(f, sizeof(f), "%s%s", fmt,
           in_env ? " (in the ZTNA_* environment)" : "");
  fprintf(stderr, "ztna %s: ", applet);
  fprintf(stderr, f, arg);
  fprintf(stderr, "\nRun 'ztna %s --help' for usage.\n", applet);
  return 1;
}

void daemon_getopt_reset(void)
{
  optind = 0; /* glibc: 0 reinitializes getopt completely */
}

/* "UID[:GID]" or a name from the passwd database. */
static int lookup_user(const char *user, uid_t *uid, gid_t *gid)
{
  char *end;
  unsigned long u, g;
  struct passwd *pw;

  u = strtoul(user, &end, 10);
  if (end != user && isdigit((unsigned char)*user) && (!*end || *end == ':')) {
    g = u;
    if (*end == ':') {
      const char *gs = end + 1;
      g = strtoul(gs, &end, 10);
      if (end == gs || *end || !isdigit((unsigned char)*gs))
        return -1;
    }
    if (u >= 0xffffffffUL || g >= 0xffffffffUL)
      return -1;
    *uid = (uid_t)u;
    *gid = (gid_t)g;
    return 0;
  }
  pw = getpwnam(user);
  if (!pw)
    return -1;
  *uid = pw->pw_uid;
  *gid = pw->pw_gid;
  return 0;
}

int daemon_drop_privileges(const char *user, uint64_t keep, char *err,
                           size_t errlen)
{
  struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct data[2];
  uid_t uid = 0;
  gid_t gid = 0;

  /* The bounding set first, while CAP_SETPCAP is still effective (a
   * daemon that never had it, under systemd say, gets EPERM: its unit's
   * CapabilityBoundingSet does this job). */
  for (int c = 0; c <= CAP_LAST_CAP; c++)
    if (!(keep & (1ULL << c)) && prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1 &&
        prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EPERM) {
      snprintf(err, errlen, "cannot drop capability %d: %s", c,
               strerror(errno));
      return -1;
    }
  if (user && *user) {
    if (lookup_user(user, &uid, &gid) < 0) {
      snprintf(err, errlen, "user '%s' is neither UID[:GID] nor a known "
               "user name", user);
      return -1;
    }
    /* Keep the permitted capabilities across setuid; trimmed below. */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 ||
        setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
      snprintf(err, errlen, "cannot become user '%s': %s", user,
               strerror(errno));
      return -1;
    }
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
  }
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  memset(data, 0, sizeof(data));
  if (syscall(SYS_capget, &hdr, data) < 0) {
    snprintf(err, errlen, "capget: %s", strerror(errno));
    return -1;
  }
  {
    int change = 0;
    for (int i = 0; i < 2; i++) {
      uint32_t k = (uint32_t)(keep >> (32 * i));
      change |= (data[i].permitted & ~k) || data[i].inheritable ||
                data[i].effective != (data[i].permitted & k);
      data[i].permitted &= k;
      data[i].effective = data[i].permitted;
      data[i].inheritable = 0;
    }
    /* Nothing to give up (a service manager did it): no capset, which a
     * seccomp filter may forbid. */
    if (!change)
      goto caps_done;
  }
  if (syscall(SYS_capset, &hdr, data) < 0) {
    snprintf(err, errlen, "capset: %s", strerror(errno));
    return -1;
  }
caps_done:
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    snprintf(err, errlen, "no_new_privs: %s", strerror(errno));
    return -1;
  }
  if (user && *user && uid != 0 && setuid(0) == 0) {
    snprintf(err, errlen, "still able to become root after dropping to "
             "'%s'", user);
    return -1;
  }
  if (getuid() == 0 || geteuid() == 0)
    log_warnx("running as root (with only the capabilities it needs); "
              "give --user to run as an unprivileged user");
  {
    uint64_t have = data[0].permitted | (uint64_t)data[1].permitted << 32;
    log_info("privileges dropped: uid %u, gid %u, capabilities %s",
             (unsigned)getuid(), (unsigned)getgid(),
             !have ? "none"
             : have == 1ULL << CAP_NET_ADMIN ? "net_admin (for the TUN)"
                                              : "other");
  }
  return 0;
}

static void term_cb(uv_signal_t *h, int signum)
{
  struct daemon_signals *s = h->data;

  if (s->stopping)
    return;
  s->stopping = 1;
  s->stop(s->ud, signum);
}

static void hup_cb(uv_signal_t *h, int signum)
{
  struct daemon_signals *s = h->data;
  (void)signum;

  if (!s->stopping && s->reload)
    s->reload(s->ud);
}

void daemon_signals_start(struct daemon_signals *s, uv_loop_t *loop,
                          void (*stop)(void *ud, int signum),
                          void (*reload)(void *ud), void *ud)
{
  s->stop = stop;
  s->reload = reload;
  s->ud = ud;
  s->stopping = 0;
  uv_signal_init(loop, &s->term);
  uv_signal_init(loop, &s->intr);
  uv_signal_init(loop, &s->hup);
  s->term.data = s->intr.data = s->hup.data = s;
  uv_signal_start(&s->term, term_cb, SIGTERM);
  uv_signal_start(&s->intr, term_cb, SIGINT);
  uv_signal_start(&s->hup, hup_cb, SIGHUP);
}

void daemon_signals_close(struct daemon_signals *s)
{
  uv_handle_t *hs[3] = { (uv_handle_t *)&s->term, (uv_handle_t *)&s->intr,
                         (uv_handle_t *)&s->hup };

  s->stopping = 1;
  for (int i = 0; i < 3; i++)
    if (!uv_is_closing(hs[i]))
      uv_close(hs[i], NULL);
  signal(SIGHUP, SIG_IGN);
}

int daemon_fail(const char *applet, const char *fmt, ...)
{
  va_list ap;

  fprintf(stderr, "ztna %s: ", applet);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return 1;
}

static void config_warn(const char *msg)
{
  log_warnx("%s", msg);
}

int daemon_config_load(const char *applet, const char *explicit_path,
                       char *path, size_t pathlen, void *cfg)
{
  char err[512], *text;
  size_t len;
  int rv;

  if (cfg_find(explicit_path, applet, path, pathlen) < 0) {
    path[0] = '\0';
    return 1;
  }
  rv = cfg_read_file(path, &text, &len, err, sizeof(err));
  if (rv == 0) {
    if (!strcmp(applet, "intermediate"))
      rv = cfg_intermediate_parse(cfg, path, text, len, err, sizeof(err),
                                  config_warn);
    else if (!strcmp(applet, "connector"))
      rv = cfg_connector_parse(cfg, path, text, len, err, sizeof(err),
                               config_warn);
    else
      rv = cfg_agent_parse(cfg, path, text, len, err, sizeof(err),
                           config_warn);
    free(text);
  }
  if (rv < 0) {
    daemon_fail(applet, "%s", err);
    return -1;
  }
  return 0;
}

int daemon_heap_trim(uint64_t now_ms)
{
#ifdef __GLIBC__
  /* The free chunks stay free chunks after a trim (their pages are only
   * given back), so a trim is repeated when more was freed since, or a
   * minute later for memory reused and freed again meanwhile. */
  static uint64_t last_look, last_trim;
  static size_t free_then;
  struct mallinfo2 mi;

  if (last_look && now_ms - last_look < 10000)
    return 0;
  last_look = now_ms;
  mi = mallinfo2();
  if (mi.fordblks < (size_t)4 << 20 || mi.fordblks < mi.uordblks / 2)
    return 0;
  if (last_trim && mi.fordblks < free_then + ((size_t)1 << 20) &&
      now_ms - last_trim < 60000)
    return 0;
  malloc_trim(0);
  last_trim = now_ms;
  free_then = mi.fordblks;
  log_debug("heap: %zu KB free of %zu KB given back", mi.fordblks >> 10,
            mi.arena >> 10);
  return 1;
#else
  (void)now_ms;
  return 0;
#endif
}
