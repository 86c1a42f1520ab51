/* registry.c - encoding and checks of the cluster registry's entries
 * (registry.h). */
#include "registry.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "netaddr.h"

const char registry_lua_set_svc[] =
  "local v = redis.call('GET', KEYS[1]) "
  "if v then "
  "  local n, s = string.match(v, '^1 ([%w%.%-_]+) (%d+) %d+$') "
  "  if n and n ~= ARGV[2] and tonumber(s) > tonumber(ARGV[3]) and "
  "     redis.call('EXISTS', ARGV[5] .. ':node:' .. n) == 1 then "
  "    return 0 "
  "  end "
  "end "
  "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4]) "
  "return 1";

const char registry_lua_del_svc[] =
  "local v = redis.call('GET', KEYS[1]) "
  "if v and string.match(v, '^1 (%S+) ') == ARGV[1] then "
  "  return redis.call('DEL', KEYS[1]) "
  "end "
  "return 0";

int registry_name_ok(const char *s, size_t max)
{
  size_t n = 0;

  for (; s[n]; n++) {
    char c = s[n];
    if (n >= max || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                      c == '-'))
      return 0;
  }
  return n > 0;
}

int registry_key(char *buf, size_t cap, const char *ns, const char *kind,
                 const char *name, size_t len)
{
  int n = snprintf(buf, cap, "%s:%s:", ns, kind);

  if (n < 0 || (size_t)n + len >= cap)
    return ZTNA_ERR_TOO_LARGE;
  for (size_t i = 0; i < len; i++) {
    char c = name[i];
    buf[n + i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
  }
  buf[n + len] = '\0';
  return n + (int)len;
}

int registry_node_encode(char *buf, size_t cap, const struct sockaddr *addr,
                         uint64_t heartbeat_ms)
{
  char a[64];
  int n;

  if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)
    return ZTNA_ERR_MALFORMED;
  n = snprintf(buf, cap, "1 %s %llu", netaddr_str(addr, a, sizeof(a)),
               (unsigned long long)heartbeat_ms);
  return n < 0 || (size_t)n >= cap ? ZTNA_ERR_TOO_LARGE : n;
}

int registry_svc_encode(char *buf, size_t cap, const char *node,
                        uint64_t since_ms, uint64_t heartbeat_ms)
{
  int n;

  if (!registry_name_ok(node, REG_NODE_MAX))
    return ZTNA_ERR_MALFORMED;
  n = snprintf(buf, cap, "1 %s %llu %llu", node,
               (unsigned long long)since_ms, (unsigned long long)heartbeat_ms);
  return n < 0 || (size_t)n >= cap ? ZTNA_ERR_TOO_LARGE : n;
}

/* The next space-separated field of v[*i..n): at least one byte, no
 * other spaces or control bytes. */
static int field(const char *v, size_t n, size_t *i, const char **f,
                 size_t *len)
{
  size_t s = *i;

  while (*i < n && v[*i] != ' ') {
    if ((unsigned char)v[*i] <= 0x20 || (unsigned char)v[*i] >= 0x7f)
      return -1;
    (*i)++;
  }
  if (*i == s)
    return -1;
  *f = v + s;
  *len = *i - s;
  if (*i < n)
    (*i)++; /* the space */
  return 0;
}

/* A decimal of 1 to 15 digits, no sign or leading zero (Unix ms fit). */
static int number(const char *f, size_t len, uint64_t *out)
{
  uint64_t x = 0;

  if (len == 0 || len > 15 || (f[0] == '0' && len > 1))
    return -1;
  for (size_t k = 0; k < len; k++) {
    if (f[k] < '0' || f[k] > '9')
      return -1;
    x = x * 10 + (uint64_t)(f[k] - '0');
  }
  *out = x;
  return 0;
}

/* "a.b.c.d:port" or "[v6]:port" (what registry_node_encode writes). */
int registry_addr_parse(const char *f, size_t len,
                        struct sockaddr_storage *out)
{
  char host[64];
  const char *colon, *ps;
  size_t hl;
  uint64_t port;

  memset(out, 0, sizeof(*out));
  colon = memrchr(f, ':', len);
  if (!colon)
    return -1;
  ps = colon + 1;
  if (number(ps, len - (size_t)(ps - f), &port) < 0 || port == 0 ||
      port > 65535)
    return -1;
  hl = (size_t)(colon - f);
  if (hl >= 2 && f[0] == '[' && f[hl - 1] == ']') {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
    if (hl - 2 >= sizeof(host))
      return -1;
    memcpy(host, f + 1, hl - 2);
    host[hl - 2] = '\0';
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
      return -1;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    return 0;
  }
  struct sockaddr_in *s4 = (struct sockaddr_in *)out;
  if (hl == 0 || hl >= sizeof(host))
    return -1;
  memcpy(host, f, hl);
  host[hl] = '\0';
  if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
    return -1;
  s4->sin_family = AF_INET;
  s4->sin_port = htons((uint16_t)port);
  return 0;
}

int registry_primary_parse(const char *ip, size_t iplen, const char *port,
                           size_t portlen, struct sockaddr_storage *out)
{
  char host[64];
  uint64_t p;
  struct sockaddr_in *s4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;

  memset(out, 0, sizeof(*out));
  if (iplen == 0 || iplen >= sizeof(host) || memchr(ip, '\0', iplen) ||
      number(port, portlen, &p) < 0 || p == 0 || p > 65535)
    return -1;
  memcpy(host, ip, iplen);
  host[iplen] = '\0';
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)p);
    return 0;
  }
  if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)p);
    return 0;
  }
  memset(out, 0, sizeof(*out));
  return -1;
}

int registry_node_decode(const char *v, size_t n, struct reg_node_entry *out)
{
  const char *f;
  size_t i = 0, len;

  if (n > REG_VALUE_MAX || field(v, n, &i, &f, &len) < 0 || len != 1 ||
      f[0] != '1' || field(v, n, &i, &f, &len) < 0 ||
      registry_addr_parse(f, len, &out->addr) < 0 ||
      field(v, n, &i, &f, &len) < 0 ||
      number(f, len, &out->heartbeat_ms) < 0 || i != n || v[n - 1] == ' ')
    return ZTNA_ERR_MALFORMED;
  return 0;
}

int registry_svc_decode(const char *v, size_t n, struct reg_svc_entry *out)
{
  const char *f;
  size_t i = 0, len;

  if (n > REG_VALUE_MAX || field(v, n, &i, &f, &len) < 0 || len != 1 ||
      f[0] != '1' || field(v, n, &i, &f, &len) < 0 || len > REG_NODE_MAX)
    return ZTNA_ERR_MALFORMED;
  memcpy(out->node, f, len);
  out->node[len] = '\0';
  if (!registry_name_ok(out->node, REG_NODE_MAX) ||
      field(v, n, &i, &f, &len) < 0 || number(f, len, &out->since_ms) < 0 ||
      field(v, n, &i, &f, &len) < 0 ||
      number(f, len, &out->heartbeat_ms) < 0 || i != n || v[n - 1] == ' ')
    return ZTNA_ERR_MALFORMED;
  return 0;
}

int registry_fresh(uint64_t heartbeat_ms, uint64_t now_ms, uint64_t ttl_ms)
{
  if (heartbeat_ms > now_ms)
    return heartbeat_ms - now_ms <= ttl_ms;
  return now_ms - heartbeat_ms <= ttl_ms;
}
