/* cluster.h - an intermediate's membership in a cluster (docs/cluster.md):
 * its heartbeat and the services whose connectors it holds, written to
 * the registry in Redis, and lookups of where another service's connector
 * is. Asynchronous on the loop (hiredis and its libuv adapter); Redis
 * going away costs lookups and writes, never the running sessions, and
 * the connection is made again every second until it is back.
 */
#ifndef ZTNA_CLUSTER_H
#define ZTNA_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "registry.h"

struct redis_tls;

#define CLUSTER_TTL_MS 6000        /* entries live this long unwritten */
#define CLUSTER_HEARTBEAT_MS 2000  /* and are written this often */
#define CLUSTER_CACHE_MS 1000      /* a lookup's answer is used this long */
#define CLUSTER_CACHE_MAX 4096     /* services remembered */
#define CLUSTER_LOOKUPS_MAX 256    /* lookups in flight */
#define CLUSTER_SERVICES_MAX 65536 /* services held here */

#define CLUSTER_SENTINELS_MAX 8
#define CLUSTER_SENTINEL_CHECK_MS 5000 /* the primary asked for this often */

struct cluster;

struct cluster_endpoint {
  char host[256]; /* an address or a name */
  uint16_t port;
};

struct cluster_config {
  const char *redis_host;     /* an address or a name */
  uint16_t redis_port;
  /* or Sentinel: these are asked in turn where the primary of master is
   * (nsentinels > 0; redis_host is then unused) */
  const struct cluster_endpoint *sentinels;
  size_t nsentinels;
  const char *master;
  const char *redis_user;     /* AUTH user (NULL: the default user) */
  const char *redis_password; /* AUTH (NULL: none) */
  const char *prefix;         /* key prefix, "ztna" */
  const char *node;           /* this intermediate's name */
  const struct sockaddr *advertise; /* where the others reach it */
  struct redis_tls *tls;      /* Redis over TLS (NULL: plain TCP); the
                               * cluster owns it from cluster_new on */
  const char *tls_name;       /* the name Redis' certificate carries */
};

struct cluster_stats {
  int redis_up;
  uint64_t redis_connects, redis_failures; /* connections made / lost or failed */
  uint64_t writes, write_errors;           /* registry writes */
  uint64_t lookups, lookup_errors;         /* Redis round trips to find one */
  uint64_t stale_entries;                  /* entries read and not believed */
  uint64_t lookups_dropped;                /* too many in flight */
  uint64_t sentinel_queries, sentinel_failures; /* asking where Redis is */
  uint64_t not_primary;                    /* Redis found to be a replica */
  size_t services;                         /* held here */
};

int cluster_new(struct cluster **out, uv_loop_t *loop,
                const struct cluster_config *cfg);
/* Closes the Redis connection (the loop must run once more). */
void cluster_del(struct cluster *cl);

/* A connector of the service id/len registered here (up = 1), or the last
 * one left (0): written to the registry at once and kept there by the
 * heartbeat. */
void cluster_service(struct cluster *cl, const char *id, size_t len, int up);

/* Where the service id/len is served, from what the last lookup said:
 * 1 with the node's name and address, 0 when unknown (a lookup is started
 * if none is running or the answer is older than CLUSTER_CACHE_MS; ask
 * again later). */
int cluster_route(struct cluster *cl, const char *id, size_t len,
                  char node[REG_NODE_MAX + 1], struct sockaddr_storage *addr);

/* A new TLS context for the connections made from now on (a reload);
 * the cluster takes it and frees the one it had. */
void cluster_set_tls(struct cluster *cl, struct redis_tls *tls);

const struct cluster_stats *cluster_stats(const struct cluster *cl);
const char *cluster_node(const struct cluster *cl);
/* The Redis in use, "HOST:PORT", or with Sentinel the primary's address
 * last told (for logs and the status API). */
const char *cluster_redis_where(const struct cluster *cl);

#endif
