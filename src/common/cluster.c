/* cluster.c - registry writes and lookups in Redis (cluster.h). */
#include "cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>

#include "err.h"
#include "log.h"
#include "redistls.h"
#include "wire.h"

struct held { /* a service with a connector here */
  struct held *next;
  uint64_t since_ms;
  size_t len;
  char id[WIRE_SERVICE_ID_MAX + 1];
};

struct cached { /* what a lookup said */
  size_t len;
  char id[WIRE_SERVICE_ID_MAX + 1]; /* lowercased */
  int found, inflight;
  uint64_t asked_ms, answered_ms; /* loop time */
  char node[REG_NODE_MAX + 1];
  struct sockaddr_storage addr;
};

struct lookup { /* privdata of one lookup's reply */
  struct cluster *cl;
  size_t len;
  char id[WIRE_SERVICE_ID_MAX + 1];
};

struct cluster {
  uv_loop_t *loop;
  char host[256], user[128], password[256], prefix[REG_NS_MAX + 1];
  char node[REG_NODE_MAX + 1];
  char tls_name[256];
  struct redis_tls *tls; /* NULL: plain TCP */
  int has_user, has_password;
  int refused; /* the last connection's first command was refused (said) */
  int demoted; /* the last connection's Redis turned replica (said) */
  unsigned role_refusals; /* replicas found since the last time up */
  uint16_t port;
  struct sockaddr_storage advertise;
  redisAsyncContext *ac;
  int connected;
  uv_timer_t timer;
  uint64_t next_connect_ms, last_beat_ms, last_check_ms;
  uv_getaddrinfo_t gai; /* a name, looked up off the loop */
  int resolving;
  char resolving_host[256];
  char rip[256];        /* what it resolved to */
  char ip[256];         /* the address of the Redis in use */
  uint16_t rport;       /* the port of the Redis in use */
  char where[400];      /* the Redis in use, for the logs */
  /* Sentinel (nsentinels > 0): asked in turn where the primary is. */
  struct cluster_endpoint sentinels[CLUSTER_SENTINELS_MAX];
  size_t nsentinels, next_sentinel;
  const struct cluster_endpoint *asking;
  char swhere[300];     /* the sentinel asked, for the logs */
  char master[REG_NODE_MAX + 1];
  redisAsyncContext *sac; /* the connection to it */
  struct held *held;
  struct cached *cache;
  size_t ncache;
  size_t inflight;
  int closing;
  int refs; /* the timer, and a Redis connection closing */
  struct cluster_stats st;
};

static void release(struct cluster *cl)
{
  if (--cl->refs == 0) {
    redis_tls_free(cl->tls);
    free(cl->cache);
    free(cl);
  }
}

static uint64_t wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void fold(char *dst, const char *src, size_t len)
{
  for (size_t i = 0; i < len; i++)
    dst[i] = (src[i] >= 'A' && src[i] <= 'Z') ? (char)(src[i] - 'A' + 'a')
                                              : src[i];
  dst[len] = '\0';
}

/* --- writes ------------------------------------------------------------- */

static void on_write(redisAsyncContext *ac, void *r, void *priv)
{
  struct cluster *cl = ac->data;
  redisReply *reply = r;
  const char *what = priv;

  if (!cl)
    return;
  if (!reply || reply->type == REDIS_REPLY_ERROR) {
    cl->st.write_errors++;
    if (reply && !strncmp(reply->str, "READONLY", 8)) {
      /* The primary became a replica (a failover): write elsewhere. */
      if (!cl->demoted) {
        cl->demoted = 1;
        cl->st.not_primary++;
        log_warnx("cluster: Redis at %s is a replica now (%s); %s",
                  cl->where, reply->str, cl->nsentinels
                  ? "asking the sentinels where the primary is"
                  : "connecting again");
        redisAsyncDisconnect(ac);
      }
    } else if (reply) {
      log_warnx("cluster: registry %s refused by Redis: %s", what,
                reply->str);
    }
  }
}

static void write_node(struct cluster *cl, uint64_t now)
{
  char key[REG_KEY_MAX], val[REG_VALUE_MAX + 1];

  if (registry_key(key, sizeof(key), cl->prefix, "node", cl->node,
                   strlen(cl->node)) < 0 ||
      registry_node_encode(val, sizeof(val),
                           (struct sockaddr *)&cl->advertise, now) < 0)
    return;
  cl->st.writes++;
  redisAsyncCommand(cl->ac, on_write, (void *)"heartbeat", "SET %s %s PX %d",
                    key, val, CLUSTER_TTL_MS);
}

static void write_service(struct cluster *cl, const struct held *h,
                          uint64_t now)
{
  char key[REG_KEY_MAX], val[REG_VALUE_MAX + 1], since[24];
  int kl = registry_key(key, sizeof(key), cl->prefix, "svc", h->id, h->len);

  if (kl < 0 ||
      registry_svc_encode(val, sizeof(val), cl->node, h->since_ms, now) < 0)
    return;
  snprintf(since, sizeof(since), "%llu", (unsigned long long)h->since_ms);
  cl->st.writes++;
  redisAsyncCommand(cl->ac, on_write, (void *)"service entry",
                    "EVAL %s 1 %b %s %s %s %d %s", registry_lua_set_svc,
                    key, (size_t)kl, val, cl->node, since, CLUSTER_TTL_MS,
                    cl->prefix);
}

static void heartbeat(struct cluster *cl)
{
  uint64_t now = wall_ms();

  if (!cl->connected)
    return;
  cl->last_beat_ms = uv_now(cl->loop);
  write_node(cl, now);
  for (struct held *h = cl->held; h; h = h->next)
    write_service(cl, h, now);
}

void cluster_service(struct cluster *cl, const char *id, size_t len, int up)
{
  struct held **pp, *h;

  if (len > WIRE_SERVICE_ID_MAX)
    return;
  for (pp = &cl->held; *pp; pp = &(*pp)->next)
    if ((*pp)->len == len && !strncasecmp((*pp)->id, id, len))
      break;
  if (up && !*pp) {
    if (cl->st.services >= CLUSTER_SERVICES_MAX)
      return;
    h = calloc(1, sizeof(*h));
    if (!h)
      return;
    memcpy(h->id, id, len);
    h->len = len;
    h->since_ms = wall_ms();
    h->next = cl->held;
    cl->held = h;
    cl->st.services++;
    if (cl->connected)
      write_service(cl, h, wall_ms());
  } else if (!up && *pp) {
    char key[REG_KEY_MAX];
    int kl;
    h = *pp;
    *pp = h->next;
    cl->st.services--;
    kl = registry_key(key, sizeof(key), cl->prefix, "svc", h->id, h->len);
    if (cl->connected && kl >= 0) {
      cl->st.writes++;
      redisAsyncCommand(cl->ac, on_write, (void *)"service removal",
                        "EVAL %s 1 %b %s", registry_lua_del_svc, key,
                        (size_t)kl, cl->node);
    }
    free(h);
  }
  /* Answers about it may be out of date now. */
  for (size_t i = 0; i < cl->ncache; i++)
    if (cl->cache[i].len == len && !strncasecmp(cl->cache[i].id, id, len))
      cl->cache[i].answered_ms = 0;
}

/* --- lookups ------------------------------------------------------------ */

static const char lua_lookup[] =
  "local s = redis.call('GET', KEYS[1]) "
  "if not s then return false end "
  "local n = string.match(s, '^1 ([%w%.%-_]+) ') "
  "if not n then return {s, false} end "
  "return {s, redis.call('GET', ARGV[1] .. ':node:' .. n)}";

static struct cached *cache_find(struct cluster *cl, const char *folded,
                                 size_t len)
{
  for (size_t i = 0; i < cl->ncache; i++)
    if (cl->cache[i].len == len && !memcmp(cl->cache[i].id, folded, len))
      return &cl->cache[i];
  return NULL;
}

static void on_lookup(redisAsyncContext *ac, void *r, void *priv)
{
  struct lookup *lk = priv;
  struct cluster *cl = lk->cl;
  redisReply *reply = r;
  struct cached *c = cache_find(cl, lk->id, lk->len);
  struct reg_svc_entry se;
  struct reg_node_entry ne;
  uint64_t now = wall_ms();

  (void)ac;
  cl->inflight--;
  if (!c) { /* evicted meanwhile */
    free(lk);
    return;
  }
  c->inflight = 0;
  if (!reply || reply->type == REDIS_REPLY_ERROR) {
    cl->st.lookup_errors++;
    free(lk);
    return; /* asked again at the next route; the old answer stays */
  }
  c->answered_ms = uv_now(cl->loop);
  c->found = 0;
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
      reply->element[0]->type == REDIS_REPLY_STRING) {
    redisReply *s = reply->element[0], *n = reply->element[1];
    if (registry_svc_decode(s->str, s->len, &se) < 0 ||
        !registry_fresh(se.heartbeat_ms, now, CLUSTER_TTL_MS) ||
        n->type != REDIS_REPLY_STRING ||
        registry_node_decode(n->str, n->len, &ne) < 0 ||
        !registry_fresh(ne.heartbeat_ms, now, CLUSTER_TTL_MS)) {
      cl->st.stale_entries++;
      log_debug("cluster: registry entry for '%s' not believed", lk->id);
    } else {
      c->found = 1;
      memcpy(c->node, se.node, sizeof(c->node));
      c->addr = ne.addr;
    }
  }
  free(lk);
}

static int answer(const struct cached *c, char node[REG_NODE_MAX + 1],
                  struct sockaddr_storage *addr)
{
  if (!c || !c->found)
    return 0;
  memcpy(node, c->node, REG_NODE_MAX + 1);
  *addr = c->addr;
  return 1;
}

int cluster_route(struct cluster *cl, const char *id, size_t len,
                  char node[REG_NODE_MAX + 1], struct sockaddr_storage *addr)
{
  char folded[WIRE_SERVICE_ID_MAX + 1], key[REG_KEY_MAX];
  uint64_t now = uv_now(cl->loop);
  struct cached *c;
  struct lookup *lk;
  int kl;

  if (len > WIRE_SERVICE_ID_MAX)
    return 0;
  fold(folded, id, len);
  c = cache_find(cl, folded, len);
  if (c && c->answered_ms && now - c->answered_ms < CLUSTER_CACHE_MS)
    return answer(c, node, addr);
  /* Older answers stay in use while a new one is asked for (or while
   * Redis is away): a route that went stale fails at the far end, and
   * the agent asks again. */
  if (!cl->connected || (c && c->inflight))
    return answer(c, node, addr);
  if (cl->inflight >= CLUSTER_LOOKUPS_MAX) {
    cl->st.lookups_dropped++;
    return answer(c, node, addr);
  }
  if (!c) {
    if (cl->ncache == CLUSTER_CACHE_MAX) {
      /* The entry asked least recently goes. */
      size_t old = 0;
      for (size_t i = 1; i < cl->ncache; i++)
        if (!cl->cache[i].inflight &&
            cl->cache[i].asked_ms < cl->cache[old].asked_ms)
          old = i;
      if (cl->cache[old].inflight)
        return 0;
      cl->cache[old] = cl->cache[--cl->ncache];
    }
    c = &cl->cache[cl->ncache++];
    memset(c, 0, sizeof(*c));
    memcpy(c->id, folded, len + 1);
    c->len = len;
  }
  kl = registry_key(key, sizeof(key), cl->prefix, "svc", id, len);
  if (kl < 0 || !(lk = calloc(1, sizeof(*lk))))
    return 0;
  lk->cl = cl;
  lk->len = len;
  memcpy(lk->id, folded, len + 1);
  c->inflight = 1;
  c->asked_ms = now;
  cl->inflight++;
  cl->st.lookups++;
  if (redisAsyncCommand(cl->ac, on_lookup, lk, "EVAL %s 1 %b %s", lua_lookup,
                        key, (size_t)kl, cl->prefix) != REDIS_OK) {
    cl->inflight--;
    c->inflight = 0;
    cl->st.lookup_errors++;
    free(lk);
  }
  return answer(c, node, addr);
}

/* --- the connection ----------------------------------------------------- */

static void connect_redis(struct cluster *cl);

static void up(struct cluster *cl)
{
  cl->connected = 1;
  cl->role_refusals = 0;
  cl->st.redis_up = 1;
  cl->st.redis_connects++;
  log_info("cluster: connected to Redis at %s%s as node %s", cl->where,
           cl->tls ? " (TLS)" : "", cl->node);
  heartbeat(cl);
}

/* Registry writes go to the primary only: a replica (an old primary
 * still reachable after a failover, or a wrong address) is left at once.
 * A ROLE refused by Redis' ACL is no answer either way: writes tell. */
static void on_role(redisAsyncContext *ac, void *r, void *priv)
{
  struct cluster *cl = ac->data;
  redisReply *reply = r, *role;
  (void)priv;

  if (!cl || !reply)
    return;
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
      (role = reply->element[0])->type == REDIS_REPLY_STRING &&
      strcmp(role->str, "master")) {
    cl->refused = 1;
    cl->st.not_primary++;
    if (cl->role_refusals++ % 60 == 0)
      log_warnx("cluster: Redis at %s is a %s, not the primary: nothing is "
                "written there (%s)", cl->where, role->str, cl->nsentinels
                ? "asking the sentinels again every second"
                : "point cluster_redis at the primary, or use "
                  "cluster_redis_sentinels");
    redisAsyncDisconnect(ac);
    return;
  }
  up(cl);
}

/* Nothing is written or looked up before Redis answered the first
 * command (AUTH, or PING without a password): the connection is then
 * known to work end to end, TLS included. A refusal is said once a minute
 * while it is tried every second. */
static void on_first(redisAsyncContext *ac, void *r, void *priv)
{
  struct cluster *cl = ac->data;
  redisReply *reply = r;
  (void)priv;

  if (!cl || !reply)
    return; /* the connection failed: on_disconnect says why */
  if (reply->type != REDIS_REPLY_ERROR) {
    redisAsyncCommand(ac, on_role, NULL, "ROLE");
    return;
  }
  cl->refused = 1;
  if (!cl->st.redis_failures || cl->st.redis_failures % 60 == 0) {
    if (cl->has_password)
      log_warnx("cluster: Redis at %s refused our credentials: %s "
                "(check cluster_redis_user and the password file)",
                cl->where, reply->str);
    else
      log_warnx("cluster: Redis at %s refused us: %s (does it need a "
                "password? set cluster_redis_password_file)", cl->where,
                reply->str);
  }
  redisAsyncDisconnect(ac);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
  struct cluster *cl = ac->data;

  if (!cl)
    return;
  if (status != REDIS_OK) {
    /* hiredis frees the context after this callback. */
    if (!cl->st.redis_failures++ || cl->st.redis_failures % 60 == 0)
      log_warnx("cluster: cannot connect to Redis at %s: %s (trying "
                "every second)", cl->where, ac->errstr);
    cl->ac = NULL;
    cl->st.redis_up = 0;
    return;
  }
  /* up once the first command is answered (on_first) */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
  struct cluster *cl = ac->data;

  if (!cl)
    return;
  if (!cl->closing) {
    if (cl->connected)
      log_warnx("cluster: lost Redis at %s: %s; registry writes and "
                "lookups wait until it is back", cl->where,
                status == REDIS_OK ? "closed" : ac->errstr);
    else if (!cl->refused &&
             (!cl->st.redis_failures || cl->st.redis_failures % 60 == 0))
      /* TCP was up, what came after failed (TLS, or Redis went away) */
      log_warnx("cluster: cannot connect to Redis at %s: %s%s (trying "
                "every second)", cl->where,
                status == REDIS_OK ? "closed" : ac->errstr,
                redis_tls_pending(ac) ? " before the TLS handshake ended "
                "(is that Redis' TLS port?)" : "");
    cl->st.redis_failures++;
  }
  cl->ac = NULL;
  cl->connected = 0;
  cl->st.redis_up = 0;
  if (cl->closing)
    release(cl);
  /* What is cached stays in use until it ages; new lookups wait. */
}

/* "host:port", brackets around an IPv6 address. */
static void host_port(char *buf, size_t cap, const char *host, unsigned port)
{
  snprintf(buf, cap, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
}

/* A connection to ip:port (Redis, or a sentinel) started on the loop,
 * under TLS when it is set, with these callbacks; NULL when it cannot
 * even start (said, and counted in *failures). */
static redisAsyncContext *open_ctx(struct cluster *cl, const char *ip,
                                   uint16_t port, const char *what,
                                   uint64_t *failures,
                                   redisConnectCallback *on_conn,
                                   redisDisconnectCallback *on_disc)
{
  redisOptions o = { 0 };
  struct timeval tv = { 2, 0 };
  redisAsyncContext *ac;

  /* An address: hiredis never resolves a name on the loop. */
  REDIS_OPTIONS_SET_TCP(&o, ip, port);
  o.connect_timeout = &tv;
  o.command_timeout = &tv;
  ac = redisAsyncConnectWithOptions(&o);
  if (!ac)
    return NULL;
  if (ac->err ||
      (cl->tls && redis_tls_attach(ac, cl->tls, cl->tls_name) < 0)) {
    if (!(*failures)++ || *failures % 60 == 0)
      log_warnx("cluster: cannot connect to %s: %s", what,
                ac->err ? ac->errstr : "out of memory for TLS");
    redisAsyncFree(ac);
    return NULL;
  }
  /* Every answer here is a few short strings: a peer that sends
   * aggregates of more than 1024 elements is a protocol error (the
   * connection ends) rather than memory allocated for them. */
  ac->c.reader->maxelements = 1024;
  ac->data = cl;
  redisLibuvAttach(ac, cl->loop);
  redisAsyncSetConnectCallback(ac, on_conn);
  redisAsyncSetDisconnectCallback(ac, on_disc);
  return ac;
}

static void connect_redis(struct cluster *cl)
{
  if (cl->nsentinels) {
    char hp[300];
    host_port(hp, sizeof(hp), cl->ip, cl->rport);
    snprintf(cl->where, sizeof(cl->where), "%s (primary of %s)", hp,
             cl->master);
  }
  cl->ac = open_ctx(cl, cl->ip, cl->rport, cl->where, &cl->st.redis_failures,
                    on_connect, on_disconnect);
  if (!cl->ac)
    return;
  cl->refused = cl->demoted = 0;
  /* Sent as soon as the connection is up (after the TLS handshake),
   * before anything else; its answer brings the member up. The command
   * timeout bounds a handshake that never ends, too. */
  if (cl->has_password && cl->has_user)
    redisAsyncCommand(cl->ac, on_first, NULL, "AUTH %s %s", cl->user,
                      cl->password);
  else if (cl->has_password)
    redisAsyncCommand(cl->ac, on_first, NULL, "AUTH %s", cl->password);
  else
    redisAsyncCommand(cl->ac, on_first, NULL, "PING");
}

/* --- Sentinel: asking where the primary is --------------------------------- */

static void on_sentinel_connect(const redisAsyncContext *ac, int status)
{
  struct cluster *cl = ac->data;

  if (!cl || status == REDIS_OK)
    return;
  /* hiredis frees the context after this callback */
  cl->sac = NULL;
  if (!cl->st.sentinel_failures++ || cl->st.sentinel_failures % 60 == 0)
    log_warnx("cluster: cannot reach sentinel %s: %s (trying the next "
              "every second)", cl->swhere, ac->errstr);
}

static void on_sentinel_disconnect(const redisAsyncContext *ac, int status)
{
  struct cluster *cl = ac->data;

  if (!cl)
    return;
  cl->sac = NULL;
  if (status != REDIS_OK &&
      (!cl->st.sentinel_failures++ || cl->st.sentinel_failures % 60 == 0))
    log_warnx("cluster: sentinel %s: %s (trying the next every second)",
              cl->swhere, ac->errstr);
}

/* SENTINEL get-master-addr-by-name answers [ip, port]; Redis is then
 * reached there (connect_redis checks that it is the primary). */
static void on_sentinel_reply(redisAsyncContext *ac, void *r, void *priv)
{
  struct cluster *cl = ac->data;
  redisReply *reply = r;
  struct sockaddr_storage ss;
  char ip[64];
  unsigned port;
  (void)priv;

  if (!cl || !reply)
    return;
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
      reply->element[0]->type == REDIS_REPLY_STRING &&
      reply->element[1]->type == REDIS_REPLY_STRING &&
      registry_primary_parse(reply->element[0]->str, reply->element[0]->len,
                             reply->element[1]->str, reply->element[1]->len,
                             &ss) == 0) {
    int moved;
    if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    moved = strcmp(cl->ip, ip) || cl->rport != port;
    redisAsyncDisconnect(ac);
    if (cl->ac) {
      /* The periodic check: still where we write? A primary that lost
       * a failover may not know it yet (and takes writes nobody reads):
       * leave it, and ask again at the next tick. */
      if (moved && !cl->demoted) {
        cl->demoted = 1;
        cl->st.not_primary++;
        log_warnx("cluster: sentinel %s: the primary of %s moved to %s:%u; "
                  "leaving %s", cl->swhere, cl->master, ip, port, cl->where);
        redisAsyncDisconnect(cl->ac);
        cl->next_connect_ms = 0;
      }
      return;
    }
    if (moved)
      log_info("cluster: sentinel %s: the primary of %s is at %s:%u",
               cl->swhere, cl->master, ip, port);
    snprintf(cl->ip, sizeof(cl->ip), "%s", ip);
    cl->rport = (uint16_t)port;
    connect_redis(cl);
    return;
  }
  if (!cl->st.sentinel_failures++ || cl->st.sentinel_failures % 60 == 0)
    log_warnx("cluster: sentinel %s does not tell the primary of '%s' (%s; "
              "check cluster_redis_master); trying the next every second",
              cl->swhere, cl->master,
              reply->type == REDIS_REPLY_ERROR ? reply->str
              : reply->type == REDIS_REPLY_NIL ? "it monitors no such name"
                                               : "not an address and port");
  redisAsyncDisconnect(ac);
}

static void connect_sentinel(struct cluster *cl)
{
  char what[320];

  snprintf(what, sizeof(what), "sentinel %s", cl->swhere);
  cl->sac = open_ctx(cl, cl->rip, cl->asking->port, what,
                     &cl->st.sentinel_failures, on_sentinel_connect,
                     on_sentinel_disconnect);
  if (!cl->sac)
    return;
  cl->st.sentinel_queries++;
  redisAsyncCommand(cl->sac, on_sentinel_reply, NULL,
                    "SENTINEL get-master-addr-by-name %s", cl->master);
}

/* --- finding Redis ------------------------------------------------------ */

/* The name looked up is connected to: Redis itself, or the sentinel
 * being asked. */
static void resolved(struct cluster *cl)
{
  if (cl->nsentinels) {
    connect_sentinel(cl);
  } else {
    memcpy(cl->ip, cl->rip, sizeof(cl->ip));
    connect_redis(cl);
  }
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res)
{
  struct cluster *cl = req->data;

  cl->resolving = 0;
  if (cl->closing) {
    uv_freeaddrinfo(res);
    release(cl);
    return;
  }
  if (status < 0 || !res) {
    uint64_t *n = cl->nsentinels ? &cl->st.sentinel_failures
                                 : &cl->st.redis_failures;
    if (!(*n)++ || *n % 60 == 0)
      log_warnx("cluster: cannot resolve %s name %s: %s (trying every "
                "second)", cl->nsentinels ? "a sentinel's" : "Redis'",
                cl->resolving_host, uv_strerror(status));
  } else {
    if (res->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, cl->rip,
                  sizeof(cl->rip));
    else
      uv_ip4_name((struct sockaddr_in *)res->ai_addr, cl->rip,
                  sizeof(cl->rip));
    resolved(cl);
  }
  uv_freeaddrinfo(res);
  release(cl);
}

/* Connects to Redis, or with sentinels to the next sentinel to ask where
 * it is, after looking the name up again (in libuv's thread pool: a slow
 * name server never stalls the relay). */
static void reconnect(struct cluster *cl)
{
  struct addrinfo hints;
  unsigned char buf[16];
  const char *host = cl->host;

  if (cl->resolving || cl->sac)
    return;
  if (cl->nsentinels) {
    cl->asking = &cl->sentinels[cl->next_sentinel++ % cl->nsentinels];
    host = cl->asking->host;
    host_port(cl->swhere, sizeof(cl->swhere), host, cl->asking->port);
  }
  if (inet_pton(AF_INET, host, buf) == 1 ||
      inet_pton(AF_INET6, host, buf) == 1) {
    snprintf(cl->rip, sizeof(cl->rip), "%s", host);
    resolved(cl);
    return;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  cl->gai.data = cl;
  snprintf(cl->resolving_host, sizeof(cl->resolving_host), "%s", host);
  if (uv_getaddrinfo(cl->loop, &cl->gai, on_resolved, host, NULL,
                     &hints) == 0) {
    cl->resolving = 1;
    cl->refs++; /* released by on_resolved */
  }
}

static void on_timer(uv_timer_t *t)
{
  struct cluster *cl = t->data;
  uint64_t now = uv_now(cl->loop);

  if (!cl->ac) {
    if (now >= cl->next_connect_ms) {
      cl->next_connect_ms = now + 1000;
      reconnect(cl);
    }
    return;
  }
  /* The timer runs every second; a beat every CLUSTER_HEARTBEAT_MS. */
  if (cl->connected && now - cl->last_beat_ms + 100 >= CLUSTER_HEARTBEAT_MS)
    heartbeat(cl);
  /* With Sentinel, whether the primary is still the one we write to. */
  if (cl->nsentinels && cl->connected &&
      now - cl->last_check_ms + 100 >= CLUSTER_SENTINEL_CHECK_MS) {
    cl->last_check_ms = now;
    reconnect(cl);
  }
}

int cluster_new(struct cluster **out, uv_loop_t *loop,
                const struct cluster_config *cfg)
{
  struct cluster *cl = calloc(1, sizeof(*cl));
  size_t al;

  if (!cl) {
    redis_tls_free(cfg->tls);
    return -ENOMEM;
  }
  cl->loop = loop;
  if (cfg->nsentinels) {
    cl->nsentinels = cfg->nsentinels < CLUSTER_SENTINELS_MAX
                         ? cfg->nsentinels : CLUSTER_SENTINELS_MAX;
    memcpy(cl->sentinels, cfg->sentinels,
           cl->nsentinels * sizeof(*cl->sentinels));
    snprintf(cl->master, sizeof(cl->master), "%s", cfg->master);
    snprintf(cl->where, sizeof(cl->where), "'%s' (the primary the "
             "sentinels name)", cl->master);
  } else {
    snprintf(cl->host, sizeof(cl->host), "%s", cfg->redis_host);
    cl->port = cl->rport = cfg->redis_port;
    host_port(cl->where, sizeof(cl->where), cl->host, cl->port);
  }
  if (cfg->redis_user) {
    snprintf(cl->user, sizeof(cl->user), "%s", cfg->redis_user);
    cl->has_user = 1;
  }
  if (cfg->redis_password) {
    snprintf(cl->password, sizeof(cl->password), "%s", cfg->redis_password);
    cl->has_password = 1;
  }
  cl->tls = cfg->tls;
  if (cfg->tls_name)
    snprintf(cl->tls_name, sizeof(cl->tls_name), "%s", cfg->tls_name);
  snprintf(cl->prefix, sizeof(cl->prefix), "%s", cfg->prefix);
  snprintf(cl->node, sizeof(cl->node), "%s", cfg->node);
  al = cfg->advertise->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                             : sizeof(struct sockaddr_in);
  memcpy(&cl->advertise, cfg->advertise, al);
  cl->cache = calloc(CLUSTER_CACHE_MAX, sizeof(*cl->cache));
  if (!cl->cache) {
    redis_tls_free(cl->tls);
    free(cl);
    return -ENOMEM;
  }
  uv_timer_init(loop, &cl->timer);
  cl->timer.data = cl;
  cl->refs = 1;
  reconnect(cl);
  cl->next_connect_ms = uv_now(loop) + 1000;
  uv_timer_start(&cl->timer, on_timer, 1000, 1000);
  *out = cl;
  return 0;
}

static void timer_closed(uv_handle_t *h)
{
  release(h->data);
}

void cluster_del(struct cluster *cl)
{
  char key[REG_KEY_MAX];

  if (!cl)
    return;
  cl->closing = 1;
  if (cl->ac && cl->connected) {
    /* Leaving: our entries go now rather than at their expiry, so that
     * nobody is routed here meanwhile; the connection closes once Redis
     * answered (or the command timeout passed). */
    for (struct held *h = cl->held; h; h = h->next) {
      int kl = registry_key(key, sizeof(key), cl->prefix, "svc", h->id,
                            h->len);
      if (kl >= 0)
        redisAsyncCommand(cl->ac, on_write, (void *)"service removal",
                          "EVAL %s 1 %b %s", registry_lua_del_svc, key,
                          (size_t)kl, cl->node);
    }
    if (registry_key(key, sizeof(key), cl->prefix, "node", cl->node,
                     strlen(cl->node)) >= 0)
      redisAsyncCommand(cl->ac, on_write, (void *)"node removal", "DEL %s",
                        key);
    cl->refs++; /* released by on_disconnect */
    redisAsyncDisconnect(cl->ac);
  } else if (cl->ac) {
    redisAsyncContext *ac = cl->ac;
    cl->ac = NULL;
    ac->data = NULL; /* its callbacks find no cluster */
    redisAsyncFree(ac);
  }
  if (cl->sac) {
    redisAsyncContext *ac = cl->sac;
    cl->sac = NULL;
    ac->data = NULL;
    redisAsyncFree(ac);
  }
  while (cl->held) {
    struct held *h = cl->held;
    cl->held = h->next;
    free(h);
  }
  uv_close((uv_handle_t *)&cl->timer, timer_closed);
}

void cluster_set_tls(struct cluster *cl, struct redis_tls *tls)
{
  redis_tls_free(cl->tls);
  cl->tls = tls;
}

const struct cluster_stats *cluster_stats(const struct cluster *cl)
{
  return &cl->st;
}

const char *cluster_redis_where(const struct cluster *cl)
{
  return cl->where;
}

const char *cluster_node(const struct cluster *cl)
{
  return cl->node;
}
