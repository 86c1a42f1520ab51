/* testutil.h - helpers shared by the unit tests. */
#ifndef ZTNA_TESTUTIL_H
#define ZTNA_TESTUTIL_H

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Parses hex with any separators ("01 cb 00", "|") into out. Quoted text
 * ("abc") is copied as bytes. Returns the length. */
static inline size_t unhex(const char *s, uint8_t *out, size_t cap)
{
  size_t n = 0;
  int hi = -1;

  for (; *s && n < cap; s++) {
    int v = -1;
    if (*s == '"') {
      for (s++; *s && *s != '"' && n < cap; s++)
        out[n++] = (uint8_t)*s;
      if (!*s)
        break;
      continue;
    }
    if (*s >= '0' && *s <= '9')
      v = *s - '0';
    else if (*s >= 'a' && *s <= 'f')
      v = *s - 'a' + 10;
    else if (*s >= 'A' && *s <= 'F')
      v = *s - 'A' + 10;
    if (v < 0)
      continue;
    if (hi < 0) {
      hi = v;
    } else {
      out[n++] = (uint8_t)(hi << 4 | v);
      hi = -1;
    }
  }
  return n;
}

static inline void set_v4(struct sockaddr_storage *ss, const char *ip,
                          uint16_t port)
{
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  memset(ss, 0, sizeof(*ss));
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  inet_pton(AF_INET, ip, &in->sin_addr);
}

static inline void set_v6(struct sockaddr_storage *ss, const char *ip,
                          uint16_t port)
{
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  memset(ss, 0, sizeof(*ss));
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &in6->sin6_addr);
}

/* A file in the certificate directory the Makefile makes (ZTNA_TEST_CERTS):
 * cert_dir is set by the test's main. */
static char cert_dir[512];

static inline const char *cert(const char *name)
{
  static char bufs[8][600];
  static int k;
  char *b = bufs[k++ % 8];
  snprintf(b, sizeof(bufs[0]), "%s/%s", cert_dir, name);
  return b;
}

#endif
