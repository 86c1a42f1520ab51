/* p2p.h - both sides of a punch between an agent and a service's
 * connector (protocol.md 4, 5), on punch.c's checks.
 *
 * The agent (p2p_client, controlling), over its connection to the
 * intermediate: CandidateOffer with its candidates, then, on
 * StartPunching, priming and connectivity checks from the endpoint's
 * socket, then PunchingResult back through the intermediate; the owner
 * hears once, through done, how it ended.
 *
 * The connector (p2p_server, controlled): answers each offer with its
 * candidates on the service's connection, primes and checks on
 * StartPunching, and lets its checks finish after the agent's result.
 * Both sides: the owner passes signaling messages and the endpoint's
 * control packets in.
 */
#ifndef ZTNA_P2P_H
#define ZTNA_P2P_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "punch.h"
#include "wire.h"

struct uplink;
struct quic_endpoint;
struct quic_conn;
struct p2p_client;

enum p2p_phase { P2P_OFFERED, P2P_PUNCHING, P2P_DONE };

struct p2p_client {
  uv_loop_t *loop;
  struct quic_endpoint *ep;
  struct uplink *up;
  uint64_t session_id;
  enum p2p_phase phase;
  int success;
  char why[200];          /* when it failed: why */
  uint64_t offer_ms, start_ms, end_ms;
  size_t nlocal;
  struct wire_candidate local[WIRE_SIG_MAX_CANDIDATES];
  size_t npeer;
  struct wire_candidate peer[WIRE_SIG_MAX_CANDIDATES];
  struct punch punch;
  struct punch_auth auth;  /* on: bound to an end-to-end connection */
  uv_timer_t timer;
  void (*done)(struct p2p_client *pc, void *ud);
  void *ud;
};

/* Sends the offer for service (observed: the address QAD reported).
 * Returns 0 or ZTNA_ERR_*. pc must stay put until p2p_client_stop. */
int p2p_client_start(struct p2p_client *pc, uv_loop_t *loop,
                     struct quic_endpoint *ep, struct uplink *up,
                     const char *service, const struct sockaddr *observed,
                     void (*done)(struct p2p_client *, void *), void *ud);
/* The key of the punch with session id session on end-to-end connection
 * c (punch.h); 0 or ZTNA_ERR_STATE (no handshake yet). */
int p2p_punch_key(struct quic_conn *c, uint64_t session,
                  struct punch_auth *a);
/* Binds the punch to end-to-end connection c, right after start: its
 * checks are tagged and only tagged answers count, and the connector is
 * told inside c (WIRE_PUNCH_BIND). announce tells it again (a DATAGRAM
 * may be lost: the owner repeats it on StartPunching). */
int p2p_client_bind(struct p2p_client *pc, struct quic_conn *c);
void p2p_client_announce(struct p2p_client *pc, struct quic_conn *c);
/* A signaling message from the uplink; returns 1 if it was this punch's. */
int p2p_client_signal(struct p2p_client *pc, const struct wire_sig *m);
/* A control packet from the endpoint; returns 1 if it was this punch's.
 * Authenticated requests for this punch are answered here (the owner
 * answers untagged ones). */
int p2p_client_packet(struct p2p_client *pc, const struct wire_ctl *c,
                      const struct sockaddr *from);
/* Stops the timer; close_cb (may be NULL) runs when it is closed. */
void p2p_client_stop(struct p2p_client *pc, uv_close_cb close_cb);

/* --- the connector's side --- */

#define P2P_MAX_SESSIONS 128
#define P2P_SESSION_MS (PUNCH_TOTAL_TIMEOUT_MS + 5000)

struct p2p_server;

struct p2p_server_io {
  /* Signaling back on the connection of service svc (the owner's). */
  int (*send_signal)(void *svc, const struct wire_sig *m, void *ud);
  /* Where the intermediate sees that connection (NULL: unknown yet), and
   * the intermediate's address (the relay candidate). */
  const struct sockaddr *(*observed)(void *svc, void *ud);
  const struct sockaddr *(*server)(void *svc, void *ud);
  const char *(*name)(void *svc, void *ud); /* for logs */
  /* The key of punch session for service svc (p2p_punch_key): from the
   * end-to-end connection one of our connection IDs cid names, or (cidlen
   * 0) the one that bound session with WIRE_PUNCH_BIND; that agent must
   * be granted svc. 0, or <0 when there is none. */
  int (*key)(void *svc, uint64_t session, const uint8_t *cid, size_t cidlen,
             struct punch_auth *a, void *ud);
  void *ud;
};

/* How long our own checks wait for the punch to be bound (the agent's
 * WIRE_PUNCH_BIND or first tagged check) before they go untagged: a
 * punch no end-to-end connection claims is diag punch's or an original
 * agent's. */
#define P2P_BIND_WAIT_MS 500

struct p2p_session {
  struct p2p_server *srv;
  int used, started, reported, result_seen;
  void *svc;
  uint64_t id, created_ms, start_ms, sig_ms;
  struct punch_auth auth;  /* on: bound to an agent's connection */
  size_t npeer;
  struct wire_candidate peer[WIRE_SIG_MAX_CANDIDATES];
  struct punch punch;
  uv_timer_t timer;
};

struct p2p_server {
  uv_loop_t *loop;
  struct quic_endpoint *ep;
  struct p2p_server_io io;
  uint64_t ok, failed;      /* our checks' outcomes */
  uint64_t bound;           /* punches bound to an end-to-end connection */
  uint64_t rejected;        /* tagged checks whose tag did not verify */
  struct p2p_session sess[P2P_MAX_SESSIONS];
};

void p2p_server_init(struct p2p_server *s, uv_loop_t *loop,
                     struct quic_endpoint *ep, const struct p2p_server_io *io);
/* A signaling message on service svc's connection. */
void p2p_server_signal(struct p2p_server *s, void *svc,
                       const struct wire_sig *m);
/* A control packet from the endpoint (after any answer the owner sent). */
void p2p_server_packet(struct p2p_server *s, const struct wire_ctl *c,
                       const struct sockaddr *from);
/* An agent's connection said session is its punch (WIRE_PUNCH_BIND). */
void p2p_server_bind(struct p2p_server *s, uint64_t session);
/* Ends sessions older than P2P_SESSION_MS, or all of service svc's when
 * svc is set (its connection went). */
void p2p_server_expire(struct p2p_server *s, void *svc);
size_t p2p_server_active(const struct p2p_server *s);
/* Ends every session and closes the timers (shutdown). */
void p2p_server_close(struct p2p_server *s);

#endif
