/* path.h - which path one end-to-end connection takes, sans-IO.
 *
 * An agent's end-to-end connection to a connector starts on a relay
 * session (through the intermediate) and moves to a direct path when a
 * punch finds one and QUIC validates it; it moves back to the relay when
 * the direct path goes silent. This module decides when: it owns the
 * state, the cooldowns and the counters, takes events and the time in
 * milliseconds, and answers with what to do. It never touches a socket,
 * a connection or a clock, so its unit tests run on a fake clock.
 *
 *   NONE --connected--> RELAY --punch--> PUNCHING --found--> VALIDATING
 *    ^                    ^  \                |                  |
 *    |                    |   `<--failed------'   <---refused----'
 *    `---lost (any)       `<----silent (fallback)---- DIRECT <--validated
 */
#ifndef ZTNA_PATH_H
#define ZTNA_PATH_H

#include <stdint.h>

#define PATH_SILENCE_MS 1500        /* direct path without answers: lost */
#define PATH_VALIDATE_MS 3000       /* a found path must validate in time */
#define PATH_COOLDOWN_MS 30000      /* after a failure; doubles ... */
#define PATH_COOLDOWN_MAX_MS (8 * PATH_COOLDOWN_MS) /* ... up to 4 min */
#define PATH_STABLE_MS 60000        /* a direct path this old resets it */

enum path_state { PATH_NONE, PATH_RELAY, PATH_PUNCHING, PATH_VALIDATING,
                  PATH_DIRECT, PATH_STATE_COUNT };

/* Why an attempt at a direct path failed. */
enum path_fail { PATH_FAIL_TIMEOUT, PATH_FAIL_NO_CANDIDATES,
                 PATH_FAIL_PEER_ERROR, PATH_FAIL_VALIDATION,
                 PATH_FAIL_COUNT };

enum path_action {
  PATH_ACT_NONE,
  PATH_ACT_PUNCH,    /* start a punch now */
  PATH_ACT_FALLBACK, /* move the connection to the relay session now */
};

struct path {
  enum path_state state;
  int no_direct;            /* never punch */
  uint64_t retry_at_ms;     /* RELAY: punch at (0: not scheduled) */
  uint64_t cooldown_ms;     /* the next cooldown */
  uint64_t since_ms;        /* when the current state began */
  uint64_t direct_since_ms; /* DIRECT: since */
  uint64_t punches_ok, punches_failed, fallbacks, fails[PATH_FAIL_COUNT];
  enum path_fail last_fail;
};

const char *path_state_name(enum path_state s);
const char *path_fail_name(enum path_fail f);

void path_init(struct path *p, int no_direct);
/* The connection is up on its relay session: punch at once. */
void path_connected(struct path *p, uint64_t now);
/* The connection is gone: nothing until it is up again. */
void path_lost(struct path *p);
/* The network changed (a new public address): on the relay, punch at
 * once, whatever the cooldown. */
void path_network_changed(struct path *p, uint64_t now);
/* The relay session changed (a new intermediate connection, a new
 * session after the old one ended). Returns 1 when the connection runs on
 * the relay and must move to the new session now, 0 when it is direct and
 * keeps the new session for a fallback. */
int path_relay_changed(const struct path *p);
void path_punch_started(struct path *p, uint64_t now);
/* The punch found the connector's address; the connection validates it. */
void path_punch_found(struct path *p, uint64_t now);
/* The punch, or the migration it led to, failed: back to the relay and
 * try again after the cooldown. */
void path_failed(struct path *p, enum path_fail why, uint64_t now);
/* The connection now runs on the direct path. */
void path_validated(struct path *p, uint64_t now);
/* What to do now. silence_ms is how long the connection's peer has owed
 * an answer (quic_conn_silence_ms); can_punch says whether a punch may
 * start (signaling up, observed address known). FALLBACK has already
 * moved the state to RELAY. */
enum path_action path_tick(struct path *p, uint64_t now, uint64_t silence_ms,
                           int can_punch);

#endif
