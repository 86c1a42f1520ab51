/* netaddr.c - formatting and resolving socket addresses. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "netaddr.h"

const char *netaddr_str(const struct sockaddr *sa, char *buf, size_t len)
{
  char ip[INET6_ADDRSTRLEN] = "?";

  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    snprintf(buf, len, "%s:%u", ip, ntohs(in->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    snprintf(buf, len, "[%s]:%u", ip, ntohs(in6->sin6_port));
  } else {
    snprintf(buf, len, "(address family %d)", sa->sa_family);
  }
  return buf;
}

int netaddr_resolve(const char *host, uint16_t port,
                    struct sockaddr_storage *out, int *literal, char *err,
                    size_t errlen)
{
  struct sockaddr_in *in = (struct sockaddr_in *)out;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
  struct addrinfo hints, *res = NULL;
  int rv;

  memset(out, 0, sizeof(*out));
  *literal = 1;
  if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    return 0;
  }
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    return 0;
  }
  *literal = 0;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  rv = getaddrinfo(host, NULL, &hints, &res);
  if (rv != 0 || !res) {
    snprintf(err, errlen, "cannot resolve '%s': %s", host, gai_strerror(rv));
    return ZTNA_ERR_NOT_FOUND;
  }
  memcpy(out, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (out->ss_family == AF_INET)
    in->sin_port = htons(port);
  else
    in6->sin6_port = htons(port);
  return 0;
}

int netaddr_label_ok(const char *s, int allow_star, int allow_dot)
{
  size_t n = strlen(s);
  if (n == 0 || n > 63)
    return 0;
  if (allow_star && !strcmp(s, "*"))
    return 1;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '_' ||
          (allow_dot && c == '.')))
      return 0;
  }
  return s[0] != '.' && s[n - 1] != '.';
}

int netaddr_dns_name_ok(const char *s, int allow_wildcard)
{
  char copy[256], *save = NULL, *label;
  size_t n = strlen(s);

  if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.' || strstr(s, ".."))
    return 0;
  memcpy(copy, s, n + 1);
  if (allow_wildcard && !strncmp(copy, "*.", 2))
    copy[0] = 'x';
  for (label = strtok_r(copy, ".", &save); label;
       label = strtok_r(NULL, ".", &save))
    if (!netaddr_label_ok(label, 0, 0))
      return 0;
  return 1;
}
