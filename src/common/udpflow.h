/* udpflow.h - the connector's UDP flows (protocol.md 7).
 *
 * Every flow (agent, the agent's address and port, the virtual address
 * and port it sent to) gets a connected UDP socket to the service's
 * backend; the backend's answers go back to that agent as IP packets from
 * the virtual address and port, with a correct checksum. A flow ends after
 * a minute of silence, or with its agent. Flows are bounded in all and
 * per agent, so that one agent cannot take every socket; lookups are
 * hashed. The owner is opaque: an agent as the connector knows it, which
 * keeps its own count of flows (owner_n).
 */
#ifndef ZTNA_UDPFLOW_H
#define ZTNA_UDPFLOW_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

struct udpflows;
struct ippkt;

enum udpflow_drop {
  UDPFLOW_LIMIT,      /* no flow: a bound was reached, or no socket */
  UDPFLOW_QUEUE_FULL, /* the socket did not take the datagram */
  UDPFLOW_TOO_LARGE,  /* an answer too large for one IP packet */
};

struct udpflow_io {
  /* An answer for owner, as a whole IP packet. */
  void (*reply)(void *owner, const uint8_t *pkt, size_t n, void *ud);
  void (*drop)(enum udpflow_drop why, void *ud);
  void *ud;
};

int udpflows_new(struct udpflows **out, uv_loop_t *loop,
                 const struct udpflow_io *io, size_t max, size_t per_owner);
/* Closes every flow; the sockets' memory goes once the loop has run. */
void udpflows_del(struct udpflows *u);
/* A UDP packet (ip parsed, l4 its UDP header and payload) from owner for
 * a service whose backend is backend. */
void udpflows_input(struct udpflows *u, void *owner, size_t *owner_n,
                    const struct sockaddr *backend, const struct ippkt *ip,
                    const uint8_t *l4, size_t l4len);
/* owner is gone: its flows close. */
void udpflows_owner_gone(struct udpflows *u, void *owner, size_t *owner_n);
/* Closes the flows silent for idle_ms. */
void udpflows_sweep(struct udpflows *u, uint64_t idle_ms);
size_t udpflows_count(const struct udpflows *u);

#endif
