/* uplink.h - a client's connection to the intermediate, kept up.
 *
 * Connects, registers its services (resending every 2 s, 3 attempts per
 * connection; a NACK is final until the next connection), reports the
 * observed address (QAD), hands every other DATAGRAM to the owner, and
 * reconnects with exponential backoff (1 s doubling to 30 s, reset only
 * after a handshake completes) without ever blocking the loop, looking
 * the intermediate's name up again before each attempt. A name with
 * several addresses (a cluster of intermediates, docs/cluster.md) is
 * tried one address after the other: each failed or lost connection
 * moves to the next.
 */
#ifndef ZTNA_UPLINK_H
#define ZTNA_UPLINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <uv.h>

struct uplink;
struct quic_endpoint;
struct quic_conn;
struct quic_close_info;
struct tls_ctx;
struct wire_sig;

#define UPLINK_MAX_SERVICES 64
#define UPLINK_BACKOFF_MIN_MS 1000
#define UPLINK_BACKOFF_MAX_MS 30000
#define UPLINK_REG_INTERVAL_MS 2000
#define UPLINK_REG_ATTEMPTS 3
/* Given up when the intermediate answered nothing for this long while it
 * owed an answer (see watch_cb in uplink.c). */
#define UPLINK_SILENCE_MS 8000

enum uplink_reg { UPLINK_REG_PENDING, UPLINK_REG_OK, UPLINK_REG_DENIED,
                  UPLINK_REG_INVALID, UPLINK_REG_NO_ANSWER };

struct uplink_cbs {
  void (*up)(struct uplink *u, void *ud);
  void (*down)(struct uplink *u, const struct quic_close_info *i, void *ud);
  /* A DATAGRAM that is not QAD, ACK or NACK. */
  void (*datagram)(struct uplink *u, const uint8_t *d, size_t n, void *ud);
  void (*registered)(struct uplink *u, size_t svc, enum uplink_reg r,
                     void *ud);
  void (*qad)(struct uplink *u, const struct sockaddr *observed, void *ud);
  /* A P2P signaling message from the intermediate. */
  void (*signal)(struct uplink *u, const struct wire_sig *m, void *ud);
};

struct uplink_config {
  struct quic_endpoint *ep;
  struct tls_ctx *tls;           /* a reference is taken */
  struct sockaddr_storage server;
  /* When set, the intermediate's name: resolved again (asynchronously,
   * /etc/hosts and DNS) before every connection attempt, so a relay that
   * moved to another address is found; server is the first address and
   * the family to keep. Copied. */
  const char *host;
  uint16_t port;
  const char *sni;               /* NULL: none */
  uint8_t role;                  /* WIRE_REG_AGENT or WIRE_REG_CONNECTOR */
  const char *services[UPLINK_MAX_SERVICES]; /* not copied: must outlive */
  size_t nservices;
  const char *name;              /* for logs */
  /* Appended to every registration (wire_register_flags), 0: none. */
  uint8_t reg_flags;
};

int uplink_new(struct uplink **out, uv_loop_t *loop,
               const struct uplink_config *cfg, const struct uplink_cbs *cbs,
               void *ud);
/* Closes the connection (code 0, reason) and stops reconnecting; the
 * memory goes once the loop has run, so the caller forgets u at once.
 * uplink_send, uplink_send_signal, uplink_is_up, uplink_max_datagram and
 * uplink_conn take a NULL uplink (down). */
void uplink_del(struct uplink *u, const char *reason);
/* Sends one DATAGRAM on the current connection: 0 or ZTNA_ERR_STATE when
 * it is down, or quic_conn_send_datagramv's errors. */
int uplink_send(struct uplink *u, const struct iovec *iov, int iovcnt);
/* Sends one packet of an end-to-end connection on relay session sid
 * (WIRE_SESSION_DATA): the header, then the packet as it is. */
int uplink_send_session(struct uplink *u, uint64_t sid, const uint8_t *d,
                        size_t n);
/* Sends one signaling message on the connection's signaling stream (the
 * first bidirectional stream; opened here if the server has not). */
int uplink_send_signal(struct uplink *u, const struct wire_sig *m);
size_t uplink_max_datagram(struct uplink *u);
int uplink_is_up(struct uplink *u);
enum uplink_reg uplink_reg_state(struct uplink *u, size_t svc);
void uplink_set_tls(struct uplink *u, struct tls_ctx *tls);
/* Registers service svc again on the current connection (the
 * intermediate forgot it, or refused it and may not any more). */
void uplink_register_again(struct uplink *u, size_t svc);
uint64_t uplink_reconnects(struct uplink *u);
struct quic_conn *uplink_conn(struct uplink *u);
/* The intermediate's address (the last one its name resolved to). */
const struct sockaddr_storage *uplink_server(struct uplink *u);

#endif
