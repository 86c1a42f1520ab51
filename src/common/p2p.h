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
/* Linking a direct connection to the agent the connector already knows
 * from the relay: the agent sends the same ICMP echo request, carrying a
 * random token after P2P_LINK_MAGIC, through the relay and through the
 * direct connection. The connector, seeing the token on both, knows which
 * relay-side address (the intermediate's per-agent translation) the
 * direct connection's agent has, keeps that agent's TCP and UDP state
 * when its packets change path, and answers the direct request only then:
 * the answer tells the agent it may move traffic. Any connector answers
 * such a request like any ping; nothing reaches a backend. */
#define P2P_LINK_MAGIC "ztna-link-v1"
#define P2P_LINK_MAGIC_LEN 12
#define P2P_LINK_TOKEN_LEN 16
#define P2P_LINK_PAYLOAD_LEN (P2P_LINK_MAGIC_LEN + P2P_LINK_TOKEN_LEN)
/* If pkt (n: its IP total length) is an ICMP/ICMPv6 echo carrying a link
 * token: copies the token and returns 1 for a reply, 0 for a request.
 * Otherwise -1; cheap for every other size. */
int p2p_link_token(const uint8_t *pkt, size_t n, uint8_t *token);

/* Stops the timer; close_cb (may be NULL) runs when it is closed. */
void p2p_client_stop(struct p2p_client *pc, uv_close_cb close_cb);

#endif
