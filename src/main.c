/* main.c - multi-call dispatch: on basename(argv[0]) ("agent", "ztna-agent")
 * or, for "ztna", on the first argument. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lwip/init.h>
#include <ngtcp2/ngtcp2.h>
#include <uv.h>
#include <wolfssl/options.h>
#include <wolfssl/version.h>
#include <nghttp3/nghttp3.h>
#include <hiredis/hiredis.h>

#include "applets.h"
#include "version.h"

struct applet {
  const char *name;
  int (*entry)(int, char **);
  const char *desc;
};

static const struct applet applets[] = {
#define APPLET(n, d) { #n, n##_main, d },
  ZTNA_APPLETS
#undef APPLET
};

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: ztna APPLET [ARGS...]\n"
          "       ztna --version | --install DIR\n\n"
          "ztna is a Zero Trust Network Access system: private applications "
          "are reached\nonly through authenticated, per-service QUIC "
          "tunnels.\n\nApplets:\n");
  for (size_t i = 0; i < sizeof(applets) / sizeof(applets[0]); i++)
    fprintf(f, "  %-13s %s\n", applets[i].name, applets[i].desc);
  fprintf(f, "\nRun 'ztna APPLET --help' for an applet's usage.\n");
}

static void version(void)
{
  const ngtcp2_info *ng = ngtcp2_version(0);

  printf("ztna %s\n", ZTNA_VERSION);
  printf("ngtcp2 %s\n", ng->version_str);
  printf("wolfSSL %s\n", LIBWOLFSSL_VERSION_STRING);
  printf("libuv %s\n", uv_version_string());
  printf("lwIP %s\n", LWIP_VERSION_STRING);
  printf("nghttp3 %s\n", nghttp3_version(0)->version_str);
  printf("hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
}

/* Creates DIR/<applet> -> ztna for every applet, for minimal containers. */
static int install_links(const char *dir)
{
  char self[PATH_MAX], path[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  int rc = 0;

  if (n < 0) {
    fprintf(stderr, "ztna: cannot find own executable: %s\n",
            strerror(errno));
    return 1;
  }
  self[n] = '\0';
  /* Beside the binary: relative links, which survive a move of the
   * directory (an image's layer, a package's staging root). */
  {
    char real[PATH_MAX];
    const char *slash = strrchr(self, '/');
    if (slash && realpath(dir, real) &&
        strlen(real) == (size_t)(slash - self) &&
        !strncmp(real, self, (size_t)(slash - self)))
      memmove(self, slash + 1, strlen(slash + 1) + 1);
  }
  for (size_t i = 0; i < sizeof(applets) / sizeof(applets[0]); i++) {
    int w = snprintf(path, sizeof(path), "%s/%s", dir, applets[i].name);
    if (w < 0 || (size_t)w >= sizeof(path)) {
      fprintf(stderr, "ztna: path too long: %s\n", dir);
      return 1;
    }
    unlink(path);
    if (symlink(self, path) < 0) {
      fprintf(stderr, "ztna: cannot create %s: %s\n", path, strerror(errno));
      rc = 1;
    }
  }
  return rc;
}

static const struct applet *find(const char *name)
{
  if (strncmp(name, "ztna-", 5) == 0)
    name += 5;
  for (size_t i = 0; i < sizeof(applets) / sizeof(applets[0]); i++)
    if (strcmp(applets[i].name, name) == 0)
      return &applets[i];
  return NULL;
}

int main(int argc, char **argv)
{
  const char *base = argc > 0 ? strrchr(argv[0], '/') : NULL;
  const struct applet *a;

  /* A peer closing a socket is an error to handle where it happens, not a
   * reason to die: every applet writes to sockets others may close. */
  signal(SIGPIPE, SIG_IGN);
  base = base ? base + 1 : (argc > 0 ? argv[0] : "ztna");
  a = find(base);
  if (a)
    return a->entry(argc, argv);

  if (argc < 2) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
      !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
    version();
    return 0;
  }
  if (!strcmp(argv[1], "--install")) {
    if (argc != 3) {
      fprintf(stderr, "ztna: --install needs exactly one directory\n");
      return 1;
    }
    return install_links(argv[2]);
  }
  a = find(argv[1]);
  if (!a) {
    fprintf(stderr, "ztna: '%s' is not an applet; run 'ztna --help' for "
            "the list\n", argv[1]);
    return 127;
  }
  return a->entry(argc - 1, argv + 1);
}

int applet_usage_error(const char *applet, const char *fmt, const char *arg)
{
  fprintf(stderr, "ztna %s: ", applet);
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nRun 'ztna %s --help' for usage.\n", applet);
  return 1;
}
