/* log.c - leveled logging to stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

static const char *log_name = "ztna";
static int log_level = LOG_LVL_INFO;
static int log_json;

void log_init(const char *name, int verbosity)
{
  log_name = name;
  log_level = verbosity;
}

int log_set_format(const char *name)
{
  if (!strcmp(name, "text"))
    log_json = 0;
  else if (!strcmp(name, "json"))
    log_json = 1;
  else
    return -1;
  return 0;
}

/* One JSON string: quotes, backslashes and every byte that is not
 * printable ASCII escaped, so a line is valid JSON whatever the message
 * carried (names from certificates, close reasons from peers). */
static void json_str(const char *s)
{
  fputc('"', stderr);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(stderr, "\\%c", *p);
    else if (*p < 0x20 || *p >= 0x7f)
      fprintf(stderr, "\\u%04x", *p);
    else
      fputc(*p, stderr);
  }
  fputc('"', stderr);
}

int log_verbosity(void)
{
  return log_level;
}

static void emit(const char *tag, const char *fmt, va_list ap,
                 const char *suffix)
{
  char ts[32], msg[2048];
  struct timespec now;
  struct tm tm;

  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  /* Lines often carry what a peer sent (close reasons, error texts, names
   * from certificates): no control character of theirs reaches a terminal
   * or forges a line of its own. */
  for (char *p = msg; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = '?';
  flockfile(stderr);
  if (log_json) {
    fprintf(stderr, "{\"ts\":\"%s.%03ldZ\",\"app\":", ts,
            now.tv_nsec / 1000000);
    json_str(log_name);
    fprintf(stderr, ",\"level\":\"%s\",\"msg\":", tag);
    json_str(msg);
    if (suffix) {
      fputs(",\"error\":", stderr);
      json_str(suffix);
    }
    fputs("}\n", stderr);
  } else {
    fprintf(stderr, "%s.%03ldZ %s %s: %s", ts, now.tv_nsec / 1000000,
            log_name, tag, msg);
    if (suffix)
      fprintf(stderr, ": %s", suffix);
    fputc('\n', stderr);
  }
  funlockfile(stderr);
}

void log_vmsg(int level, const char *fmt, va_list ap)
{
  static const char *const tags[] = { "warning", "info", "debug", "trace" };

  if (level > log_level)
    return;
  emit(tags[level < 0 ? 0 : level > 3 ? 3 : level], fmt, ap, NULL);
}

void log_warn(const char *fmt, ...)
{
  const char *why = strerror(errno);
  va_list ap;

  va_start(ap, fmt);
  emit("warning", fmt, ap, why);
  va_end(ap);
}

#define LOG_FN(fn, lvl)                                                       \
  void fn(const char *fmt, ...)                                               \
  {                                                                           \
    va_list ap;                                                               \
    va_start(ap, fmt);                                                        \
    log_vmsg(lvl, fmt, ap);                                                   \
    va_end(ap);                                                               \
  }
LOG_FN(log_warnx, LOG_LVL_WARN)
LOG_FN(log_info, LOG_LVL_INFO)
LOG_FN(log_debug, LOG_LVL_DEBUG)
LOG_FN(log_trace, LOG_LVL_TRACE)

void fatal(const char *fmt, ...)
{
  const char *why = strerror(errno);
  va_list ap;

  va_start(ap, fmt);
  emit("fatal", fmt, ap, why);
  va_end(ap);
  exit(1);
}

void fatalx(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  emit("fatal", fmt, ap, NULL);
  va_end(ap);
  exit(1);
}
