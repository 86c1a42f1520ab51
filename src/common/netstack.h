/* netstack.h - the connector's userspace TCP: lwIP (NO_SYS=1) on the libuv
 * loop, each agent TCP connection spliced to a real TCP connection to the
 * service's backend.
 *
 * lwIP is one instance per process, so there is one netstack. Packets go
 * in with their real addresses; inside, each (connection, agent address,
 * virtual address) gets a synthetic source address and every destination
 * becomes the netif's own address, so lwIP accepts connections to any
 * virtual address and port without patches, and agents that share tunnel
 * addresses never share a TCP connection. Replies get the real addresses
 * back before they leave.
 *
 * The SYN of a new connection waits until the backend accepts; a refusal
 * or 5 s without an answer gets a RST. Data moves with backpressure both
 * ways: the window to the agent reopens only when the backend took the
 * bytes, and the backend is read only as far as lwIP can send.
 * IPv4 and IPv6 alike; the backend may be of either family.
 */
#ifndef ZTNA_NETSTACK_H
#define ZTNA_NETSTACK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

struct netstack;

struct netstack_io {
  /* An IP packet for the agent behind conn (real addresses). */
  void (*send)(void *conn, const uint8_t *pkt, size_t n, void *ud);
  void *ud;
};

struct netstack_stats {
  uint64_t sessions_total;  /* spliced connections made */
  uint64_t sessions_active;
  uint64_t refused;         /* backend refused: RST sent */
  uint64_t timeouts;        /* backend did not answer in 5 s: RST sent */
  uint64_t resets;          /* connections ended by a reset either way */
  uint64_t syn_limited;     /* SYNs dropped by the per-source rate */
  uint64_t limit;           /* SYNs refused: too many sessions */
  uint64_t stray;           /* segments of no connection: RST sent */
  uint64_t to_backend, to_agent; /* bytes spliced */
  uint64_t backend_writes;  /* writes to_backend took (a round's bytes of
                             * a connection go in one) */
};

#define NETSTACK_CONNECT_TIMEOUT_MS 5000

/* max_sessions: spliced connections at once; max_per_owner: of those, for
 * one conn (one agent), so that one agent cannot starve the others (0: no
 * own bound); syn_rate: new connections per second per conn, whatever
 * addresses it uses. Lookups are hashed. Only one netstack may exist. */
int netstack_new(struct netstack **out, uv_loop_t *loop,
                 const struct netstack_io *io, size_t max_sessions,
                 size_t max_per_owner, unsigned syn_rate);
/* Aborts every session; memory goes once the loop has run. */
void netstack_del(struct netstack *ns);

/* A TCP packet (checksums verified) from the agent behind conn, for a
 * service whose backend is backend. The packet is copied. */
void netstack_input(struct netstack *ns, void *conn,
                    const struct sockaddr *backend, const uint8_t *pkt,
                    size_t n);
/* How many TCP connections conn has. */
size_t netstack_conn_sessions(struct netstack *ns, void *conn);
/* conn is gone: its sessions are reset. */
void netstack_conn_gone(struct netstack *ns, void *conn);

const struct netstack_stats *netstack_stats(struct netstack *ns);

#endif
