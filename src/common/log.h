/* log.h - leveled logging in relayd's shape.
 *
 * Every line starts with a UTC timestamp and the applet name. log_warn adds
 * strerror(errno); log_warnx does not. fatal/fatalx log and exit(1) and are
 * for applets only: nothing under src/common calls them.
 */
#ifndef ZTNA_LOG_H
#define ZTNA_LOG_H

#include <stdarg.h>

enum log_level { LOG_LVL_WARN = 0, LOG_LVL_INFO = 1, LOG_LVL_DEBUG = 2,
                 LOG_LVL_TRACE = 3 };

/* Sets the name printed on each line and the verbosity (0 warnings only,
 * 1 info, 2 debug, 3 trace). The name is not copied. */
void log_init(const char *name, int verbosity);
int log_verbosity(void);
/* "text" (the default: time, applet, level, message) or "json" (one JSON
 * object per line: ts, app, level, msg and error). Returns 0 or -1 for an
 * unknown name. */
int log_set_format(const char *name);

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))
void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warnx(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_trace(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_vmsg(int level, const char *fmt, va_list ap);
_Noreturn void fatal(const char *fmt, ...) LOG_PRINTF(1, 2);
_Noreturn void fatalx(const char *fmt, ...) LOG_PRINTF(1, 2);

#endif
