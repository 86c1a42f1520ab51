/* relay.h - the intermediate's core, sans-IO: registration, authorization,
 * routing, per-agent address translation and the P2P signaling broker
 * (protocol.md 2 to 4).
 *
 * The relay knows connections only as opaque pointers and talks back
 * through relay_io; it never touches sockets or clocks (time comes in as
 * milliseconds). Every datagram it cannot deliver is counted by reason.
 *
 * Relay sessions (protocol.md 10): an agent's end-to-end QUIC connection
 * to a connector crosses the relay as opaque packets, forwarded by session
 * id between the one agent and the one connector connection it was opened
 * for; the relay reads the header and nothing else.
 *
 * Address translation (original peers' raw IP): each agent connection's source address gets a
 * distinct address from 100.64.0.0/10 (IPv6: fd7a:7a74:6e61::/96) on its
 * way to a connector, and replies are routed back by that address, so
 * agents that share a tunnel address never see each other's traffic.
 */
#ifndef ZTNA_RELAY_H
#define ZTNA_RELAY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct relay;
struct relay_client;
struct tls_identity;
struct cfg_policy;

#define RELAY_SESSION_TTL_MS 5000
/* After StartPunching a session waits this long for PunchingResult (the
 * punch itself may take 10 s). */
#define RELAY_PUNCH_TTL_MS 15000
#define RELAY_START_DELAY_MS 100
/* A session asked of another intermediate of the cluster (its connector
 * is there) that has no answer after this long is refused to the agent
 * as "no connector"; it asks again. */
#define RELAY_FORWARD_TTL_MS 3000
/* DATA for a session the sender does not hold is answered with CLOSED
 * (unknown), at most this many times per client between two
 * relay_expire ticks (the intermediate's is 1 s). */
#define RELAY_UNKNOWN_ANSWERS 16

enum relay_drop {
  RELAY_DROP_MALFORMED,      /* not a valid message or IP packet */
  RELAY_DROP_NOT_REGISTERED, /* sender registered nothing that fits */
  RELAY_DROP_DENIED,         /* sender may not use that service */
  RELAY_DROP_NO_CONNECTOR,   /* the service has no connector */
  RELAY_DROP_NO_ROUTE,       /* no agent or service for the address */
  RELAY_DROP_TOO_LARGE,      /* does not fit the next hop's path */
  RELAY_DROP_QUEUE_FULL,     /* the next hop's queue is full */
  RELAY_DROP_LIMIT,          /* a table is full */
  RELAY_DROP_UNEXPECTED,     /* a type the intermediate does not take */
  RELAY_DROP_COUNT
};

const char *relay_drop_name(enum relay_drop d);

struct relay_stats {
  uint64_t registrations;   /* ACKs sent */
  uint64_t rejections;      /* NACK 02 sent */
  uint64_t invalid_regs;    /* NACK 01 sent */
  uint64_t relayed_dgrams, relayed_bytes;
  uint64_t sessions;        /* signaling sessions created */
  uint64_t sessions_expired;
  uint64_t sig_errors;      /* signaling messages refused or streams closed */
  uint64_t limit_hits;      /* a bound was reached */
  uint64_t rsessions_opened;   /* relay sessions made */
  uint64_t rsessions_refused;  /* OPENED with a failure status */
  uint64_t rsessions_closed;   /* relay sessions ended */
  uint64_t rsession_dgrams, rsession_bytes; /* forwarded, opaque */
  uint64_t rsessions_forwarded; /* made at another intermediate for ours */
  uint64_t rsessions_for_peers; /* made here for another's agents */
  uint64_t peer_dgrams;         /* session datagrams sent to a peer link */
  uint64_t drops[RELAY_DROP_COUNT];
};

struct relay_io {
  /* Sends one DATAGRAM; returns 0 or a ZTNA_ERR_* (TOO_LARGE, QUEUE_FULL,
   * ...) that the relay counts as a drop. */
  int (*send_dgram)(void *conn, const struct iovec *iov, int iovcnt,
                    void *ud);
  /* Appends bytes to the connection's signaling stream. */
  int (*send_signal)(void *conn, const uint8_t *d, size_t n, void *ud);
  /* Optional: a datagram from conn was dropped (for debug logs). */
  void (*drop_cb)(void *conn, enum relay_drop why, void *ud);
  void *ud;
  /* Optional: a registration of conn was refused (NACK sent); why says
   * what to fix, id/len is the service id as received. */
  void (*refused_cb)(void *conn, const char *role, const uint8_t *id,
                     size_t len, const char *why, void *ud);
  /* Optional (a cluster): the link to the intermediate that serves the
   * service id/len, for an agent's OPEN when no connector of it is here;
   * NULL when none is known or the link is not up yet (the agent hears
   * "no connector" and asks again). */
  struct relay_client *(*route_cb)(const char *id, size_t len, void *ud);
  /* Optional: the service id/len has a connector here now (up = 1), or
   * no longer (0). */
  void (*service_cb)(const char *id, size_t len, int up, void *ud);
};

/* A translated address is not handed out again for this long after its
 * agent left: longer than a connector keeps an idle agent's state (10
 * minutes). ztna connectors are also told at once (WIRE_AGENT_GONE) and
 * reset that agent's state; the quarantine protects original ones. */
#define RELAY_XLAT_QUARANTINE_MS (15 * 60 * 1000)

struct relay_limits {
  size_t services_per_client; /* 64 */
  size_t sessions_per_client; /* 16 */
  size_t sessions_total;      /* 4096 */
  size_t translations;        /* 65536 agent source addresses */
  uint64_t xlat_quarantine_ms; /* RELAY_XLAT_QUARANTINE_MS */
  size_t rsessions_per_client; /* relay sessions one agent holds: 64 */
  size_t rsessions_total;      /* 65536 */
  /* The first relay session id; ids count up from it and are never
   * handed out twice. The intermediate starts from a random value so
   * that a restart does not hand out its previous life's ids. */
  uint64_t rsession_base;
};

/* lim may be NULL for the defaults; zero fields take their default too.
 * Returns 0 or -ENOMEM. */
int relay_new(struct relay **out, const struct relay_io *io,
              const struct relay_limits *lim);
void relay_del(struct relay *r);

/* Installs a policy (NULL: certificates alone decide); the relay owns it
 * from now on. Registrations the new policy denies are dropped; returns
 * how many. */
size_t relay_set_policy(struct relay *r, struct cfg_policy *p);

/* A connection whose handshake completed, with its certificate identity
 * (copied). Returns NULL when out of memory. */
struct relay_client *relay_client_new(struct relay *r, void *conn,
                                      const struct tls_identity *id);
/* Marks c as a link from or to another intermediate of the cluster
 * (its certificate proved the intermediate role): it carries relay
 * sessions and punch signaling only; OPENs and offers from it are for its
 * agents and go to connectors here, never further. */
void relay_client_set_peer(struct relay_client *c);
/* Forgets the connection: registrations, translations, sessions. */
void relay_client_del(struct relay *r, struct relay_client *c);

void relay_datagram(struct relay *r, struct relay_client *c,
                    const uint8_t *d, size_t n);
void relay_signal(struct relay *r, struct relay_client *c, const uint8_t *d,
                  size_t n, uint64_t now_ms);
/* Expires signaling sessions and tells the relay the time (the
 * translation quarantine counts from it); call about once a second. */
void relay_expire(struct relay *r, uint64_t now_ms);

const struct relay_stats *relay_stats(const struct relay *r);
size_t relay_session_count(const struct relay *r);
size_t relay_client_count(const struct relay *r);
size_t relay_rsession_count(const struct relay *r);
/* Calls fn for every known service. */
void relay_foreach_service(struct relay *r,
                           void (*fn)(const char *id, size_t len,
                                      int has_connector, size_t agents,
                                      void *ud),
                           void *ud);

/* What the status API shows (docs/api.md). */
struct relay_service_info {
  const char *id;
  size_t len;
  int has_connector;
  size_t connectors, agents, relay_sessions;
  void *connector_conn; /* the active connector's connection, or NULL */
};
void relay_describe_services(struct relay *r,
                             void (*fn)(const struct relay_service_info *si,
                                        void *ud),
                             void *ud);
struct relay_client_info {
  const struct tls_identity *id;
  size_t sessions, relay_sessions;
};
void relay_client_describe(const struct relay *r,
                           const struct relay_client *c,
                           struct relay_client_info *out);
/* The i-th registration of c: service id, role (enum policy_role) and
 * whether it is in use (a connector's is not when a newer one took the
 * service). Returns 0, or -1 past the last. */
int relay_client_reg(const struct relay_client *c, size_t i, const char **id,
                     size_t *len, int *role, int *active);
/* The policy in use (NULL: none). */
const struct cfg_policy *relay_policy(const struct relay *r);
void relay_limits_get(const struct relay *r, struct relay_limits *out);
size_t relay_translation_count(const struct relay *r);

#endif
