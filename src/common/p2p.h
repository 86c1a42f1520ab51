/* p2p.h - the agent's side of one punch to a service's connector.
 *
 * Over the agent's relay connection (an uplink registered for the
 * service): CandidateOffer with its candidates, then, on StartPunching,
 * connectivity checks (punch.h) from the endpoint's socket, then
 * PunchingResult back through the intermediate. The owner passes the
 * uplink's signaling messages and the endpoint's control packets in, and
 * hears once, through done, how it ended.
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
/* A signaling message from the uplink; returns 1 if it was this punch's. */
int p2p_client_signal(struct p2p_client *pc, const struct wire_sig *m);
/* A control packet from the endpoint; returns 1 if it was this punch's. */
int p2p_client_packet(struct p2p_client *pc, const struct wire_ctl *c,
                      const struct sockaddr *from);
/* Stops the timer; close_cb (may be NULL) runs when it is closed. */
void p2p_client_stop(struct p2p_client *pc, uv_close_cb close_cb);

#endif
