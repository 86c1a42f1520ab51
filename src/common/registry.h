/* registry.h - the cluster registry's entries in Redis (docs/cluster.md):
 * keys, values and when an entry is too old to believe. Pure functions:
 * cluster.c does the talking.
 *
 *   <ns>:node:<node>     "1 <address> <heartbeat>"
 *   <ns>:svc:<service>   "1 <node> <since> <heartbeat>"
 *
 * <node> is an intermediate's name ([A-Za-z0-9._-], 1-63), <address>
 * where the others reach it ("192.0.2.1:4433", "[2001:db8::1]:4433"),
 * <since> when the service's connector registered there and <heartbeat>
 * when the entry was last written, both Unix milliseconds. Service ids are
 * lowercased in keys (the relay matches them without case). Redis expires
 * every entry a few heartbeats after its last write; a reader also checks
 * the heartbeat itself, so an entry restored from an old snapshot, or
 * written with a clock far off, is not believed. An entry only says where
 * to ask: it grants nothing (the peer link is authenticated, and every
 * intermediate authorizes its own clients).
 */
#ifndef ZTNA_REGISTRY_H
#define ZTNA_REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define REG_NODE_MAX 63
#define REG_NS_MAX 32
#define REG_VALUE_MAX 160
#define REG_KEY_MAX (REG_NS_MAX + 6 + 255 + 1)

struct reg_node_entry {
  struct sockaddr_storage addr;
  uint64_t heartbeat_ms;
};

struct reg_svc_entry {
  char node[REG_NODE_MAX + 1];
  uint64_t since_ms, heartbeat_ms;
};

/* 1 when s is a valid node name (also used for the key prefix). */
int registry_name_ok(const char *s, size_t max);
/* "<ns>:<kind>:<name>", name lowercased; returns the length or
 * ZTNA_ERR_TOO_LARGE. name may hold any bytes (a service id). */
int registry_key(char *buf, size_t cap, const char *ns, const char *kind,
                 const char *name, size_t len);
/* Values; the encoders return the length or ZTNA_ERR_TOO_LARGE /
 * ZTNA_ERR_MALFORMED (a bad name or address). The decoders take the exact
 * value and return 0 or ZTNA_ERR_MALFORMED: every field is checked. */
int registry_node_encode(char *buf, size_t cap, const struct sockaddr *addr,
                         uint64_t heartbeat_ms);
int registry_node_decode(const char *v, size_t n, struct reg_node_entry *out);
int registry_svc_encode(char *buf, size_t cap, const char *node,
                        uint64_t since_ms, uint64_t heartbeat_ms);
int registry_svc_decode(const char *v, size_t n, struct reg_svc_entry *out);
/* "a.b.c.d:port" or "[v6]:port" (len bytes): 0, or -1 when it is not
 * exactly an IP literal and a port from 1 to 65535. */
int registry_addr_parse(const char *s, size_t len,
                        struct sockaddr_storage *out);
/* A sentinel's answer to SENTINEL get-master-addr-by-name, its two
 * strings: an IPv4 or IPv6 literal (no brackets) and a port from 1 to
 * 65535 in plain digits. 0, or -1 for anything else. */
int registry_primary_parse(const char *ip, size_t iplen, const char *port,
                           size_t portlen, struct sockaddr_storage *out);
/* 1 when an entry last written at heartbeat_ms is to be believed at
 * now_ms with entries living ttl_ms: not older than ttl_ms, and not more
 * than ttl_ms in the future (a writer's clock that runs ahead). */
int registry_fresh(uint64_t heartbeat_ms, uint64_t now_ms, uint64_t ttl_ms);

/* Lua run by Redis (EVAL), so that a write and the check it depends on
 * are one step:
 * - SET_SVC KEYS[1] = service key, ARGV = value, node, since, ttl ms,
 *   prefix: writes unless another live node (its node entry exists)
 *   holds a newer registration (a connector that moved on must not be
 *   taken back by the intermediate it left); returns 1 when written.
 * - DEL_SVC KEYS[1], ARGV[1] = node: deletes the entry if it is node's. */
extern const char registry_lua_set_svc[];
extern const char registry_lua_del_svc[];

#endif
