/* quic.h - QUIC endpoints on libuv + ngtcp2 + wolfSSL.
 *
 * An endpoint owns one UDP socket and any number of connections on it, as
 * server (when it has a server tls_ctx) and as client (quic_connect) at the
 * same time. Every connection has one timer driven by ngtcp2's expiry.
 *
 * Callbacks run on the loop thread. Inside a connection's callbacks the
 * application may queue datagrams and stream data and ask to close any
 * connection; the work is done when ngtcp2 has returned. A connection's
 * memory stays valid until its close_cb has returned and the loop has turned
 * once; after close_cb the application must not use it.
 *
 * Datagrams not of QUIC (or of unknown connections with a short header) go
 * to the endpoint's packet_cb: the P2P control packets share the socket.
 */
#ifndef ZTNA_QUIC_H
#define ZTNA_QUIC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <uv.h>

struct quic_endpoint;
struct quic_conn;
struct tls_ctx;
struct tls_identity;

#define QUIC_MAX_UDP_PAYLOAD 1350
/* The largest packet path MTU discovery tries (IPv6 on a 1500-byte
 * link); connections start at 1200 and grow as probes get through. */
#define QUIC_MAX_UDP_PAYLOAD_PROBED 1452
#define QUIC_SCID_LEN 20
/* The DATAGRAM payload that fits a QUIC_MAX_UDP_PAYLOAD packet whose DCID
 * is QUIC_SCID_LEN bytes (protocol.md 1): what quic_conn_max_datagram
 * returns on such a path, for use before a connection exists. */
#define QUIC_DATAGRAM_MAX (QUIC_MAX_UDP_PAYLOAD - 1 - QUIC_SCID_LEN - 4 - 16 - 3)
#define QUIC_DGRAM_QUEUE_MAX 1024
#define QUIC_CID_ROTATE_MS (300 * 1000) /* protocol.md 1 */
#define QUIC_STREAM_BUF_MAX (1024 * 1024)

/* Virtual paths: a path through another connection (the relay) is named
 * by an address in 100::/64 (RFC 6666, discard-only: never a real peer)
 * whose last 64 bits are the path's id (the relay session). The send
 * function hands packets for such an address to the endpoint's vsend_cb,
 * and the application feeds what arrives for it to quic_endpoint_input;
 * ngtcp2 migrates a connection between virtual and real paths like
 * between any two paths, validating each under the connection's keys. */
#define QUIC_VIRTUAL_LOCAL_PORT 1  /* a client's own end of a virtual path */
#define QUIC_VIRTUAL_PEER_PORT 2   /* the far end */
/* The packets of a connection that starts on a virtual path: 1350 bytes
 * (1306-byte DATAGRAMs, a tunnel MTU of 1304 less the service id), which
 * with the 9-byte session header needs a relay DATAGRAM of 1359 bytes:
 * an outer path of at least 1403 bytes, which path MTU discovery finds
 * on a 1500-byte underlay. */
#define QUIC_VIRTUAL_MAX_UDP_PAYLOAD QUIC_MAX_UDP_PAYLOAD
/* What the relay's DATAGRAMs must carry for a packet of n bytes. */
#define QUIC_VIRTUAL_DGRAM_NEED(n) ((n) + 9)
void quic_virtual_addr(struct sockaddr_storage *out, uint64_t id,
                       uint16_t port);
/* 1 if sa is virtual (then *id, if id is set, is its id), else 0. */
int quic_addr_virtual(const struct sockaddr *sa, uint64_t *id);

/* Why a connection ended. */
struct quic_close_info {
  int local;         /* 1: we closed it (or failed); 0: the peer did */
  int idle;          /* idle timeout, nothing was sent */
  int app;           /* code is an application error code */
  uint64_t code;     /* transport or application error code */
  uint8_t tls_alert; /* TLS alert if the handshake failed (0 if none) */
  int err;           /* ZTNA_ERR_* summary, 0 for a clean close */
  int reset;         /* ended by the peer's stateless reset */
  char reason[128];  /* the reason phrase, printable */
};

struct quic_conn_cbs {
  /* Handshake done and peer verified (ALPN checked). */
  void (*handshake_cb)(struct quic_conn *c, void *ud);
  void (*datagram_cb)(struct quic_conn *c, const uint8_t *d, size_t n,
                      void *ud);
  void (*stream_cb)(struct quic_conn *c, int64_t sid, const uint8_t *d,
                    size_t n, int fin, void *ud);
  /* The peer's address as this connection sees it changed (after the
   * handshake: NAT rebinding or migration). */
  void (*path_cb)(struct quic_conn *c, const struct sockaddr *peer, void *ud);
  /* Optional: a stream is closed both ways (code: the application error
   * code of a reset, else 0), or the peer reset its sending side. */
  void (*stream_close_cb)(struct quic_conn *c, int64_t sid, uint64_t code,
                          void *ud);
  void (*stream_reset_cb)(struct quic_conn *c, int64_t sid, uint64_t code,
                          void *ud);
  /* Optional: the peer acknowledged data of sid, so there is room to
   * send more (quic_conn_stream_room). */
  void (*stream_acked_cb)(struct quic_conn *c, int64_t sid, void *ud);
  /* The connection is gone; last callback. */
  void (*close_cb)(struct quic_conn *c, const struct quic_close_info *info,
                   void *ud);
};

struct quic_endpoint_cbs {
  /* A client's first packet arrived. Set the connection's callbacks with
   * quic_conn_set_cbs; return nonzero to refuse it. */
  int (*accept_cb)(struct quic_endpoint *ep, struct quic_conn *c, void *ud);
  /* A datagram that is not for any QUIC connection here. */
  void (*packet_cb)(struct quic_endpoint *ep, const uint8_t *d, size_t n,
                    const struct sockaddr *from, void *ud);
};

struct quic_endpoint_config {
  struct tls_ctx *server_tls; /* NULL: client role only (a ref is taken) */
  int retry;                  /* stateless Retry for new clients */
  size_t max_conns;           /* established connections, 0: 4096 */
  /* Server handshakes in progress, apart from max_conns: at most
   * max_half_open (0: 1024), max_half_open_per_source from one address
   * (0: 64, room for a crowd behind one NAT reconnecting at once); the
   * handshake timeout bounds how long each may last. */
  size_t max_half_open, max_half_open_per_source;
  uint64_t idle_timeout_ms;   /* 0: 30000 */
  uint64_t keepalive_ms;      /* client PING interval, 0: none */
  uint64_t handshake_timeout_ms; /* 0: 4000 with server_tls, else 10000 */
  uint64_t cid_rotate_ms;        /* move to a new CID, 0: QUIC_CID_ROTATE_MS */
  /* 32 bytes for Retry and stateless-reset tokens; NULL: random. A secret
   * that survives restarts lets a restarted server reset the connections
   * of its previous life at once instead of leaving them to time out. */
  const uint8_t *secret;
  /* Answer short-header packets of unknown connections with a stateless
   * reset (rate-limited). Only for endpoints whose packet_cb takes no
   * other short-header traffic. */
  int stateless_reset;
  const struct quic_endpoint_cbs *cbs;
  void *ud;
  /* Virtual paths (see quic_virtual_addr): a packet for a virtual
   * address goes to vsend_cb instead of the socket; returns 0 or a
   * ZTNA_ERR_*. Connections that start on a virtual path send packets of
   * at most virtual_max_udp_payload bytes on every path (0:
   * QUIC_VIRTUAL_MAX_UDP_PAYLOAD). */
  int (*vsend_cb)(struct quic_endpoint *ep, const struct sockaddr *to,
                  const uint8_t *d, size_t n, void *ud);
  size_t virtual_max_udp_payload;
};

struct quic_stats {
  uint64_t retry_sent, retry_ok, retry_fail;
  uint64_t vn_sent;
  uint64_t refused_limit;       /* connections refused by max_conns */
  uint64_t refused_half_open;   /* by the half-open bounds */
  uint64_t dgram_too_large;     /* datagrams refused: do not fit */
  uint64_t dgram_queue_full;    /* datagrams refused: queue full */
  uint64_t dgram_rejected;      /* datagrams ngtcp2 refused when sending */
  uint64_t udp_send_errors;     /* packets the socket would not take */
  uint64_t resets_sent;         /* stateless resets sent */
  uint64_t cid_rotations;       /* timed moves to a new CID */
  uint64_t rx_packets, tx_packets, rx_bytes, tx_bytes;
  uint64_t gso_sends;           /* sendmsg calls that carried a burst */
  uint64_t gro_reads;           /* reads that were several datagrams */
  uint64_t rx_errors;           /* failed or truncated reads */
  uint64_t vtx_packets, vrx_packets; /* on virtual paths */
  uint64_t vsend_errors;        /* packets vsend_cb did not take */
};

/* Creates an endpoint bound to bind (port 0 picks one). Returns 0 or
 * -errno/ZTNA_ERR_*. */
int quic_endpoint_new(struct quic_endpoint **out, uv_loop_t *loop,
                      const struct sockaddr *bind,
                      const struct quic_endpoint_config *cfg);
/* Drops every connection without a word (close them first to tell peers)
 * and closes the socket; the memory goes when the loop has run. */
void quic_endpoint_del(struct quic_endpoint *ep);
int quic_endpoint_local_addr(struct quic_endpoint *ep,
                             struct sockaddr_storage *out);
/* Replaces the server TLS context for new connections (SIGHUP reload). */
void quic_endpoint_set_server_tls(struct quic_endpoint *ep,
                                  struct tls_ctx *tls);
const struct quic_stats *quic_endpoint_stats(struct quic_endpoint *ep);
/* Sets the endpoint's counters in m (a metrics collect function calls
 * this), each named prefix + name: UDP datagrams and bytes each way,
 * send and receive errors, GSO sends and GRO reads, DATAGRAMs dropped by
 * reason, stateless resets sent. */
struct metrics;
void quic_endpoint_metrics(struct quic_endpoint *ep, struct metrics *m,
                           const char *prefix);
size_t quic_endpoint_conn_count(struct quic_endpoint *ep);
/* Server handshakes in progress. */
size_t quic_endpoint_half_open(struct quic_endpoint *ep);
/* 1 when the endpoint has no connection and no send queued in libuv
 * (close packets included): what a shutdown drain waits for. */
int quic_endpoint_idle(struct quic_endpoint *ep);
/* Sends one raw UDP datagram from the endpoint's socket (P2P control). */
int quic_endpoint_send_raw(struct quic_endpoint *ep, const struct sockaddr *to,
                           const uint8_t *d, size_t n);
/* The same with an IP TTL (IPv6 hop limit) of ttl for this one datagram
 * (punch priming). */
int quic_endpoint_send_raw_ttl(struct quic_endpoint *ep,
                               const struct sockaddr *to, const uint8_t *d,
                               size_t n, int ttl);
/* Closes every connection with an application close; returns how many. */
size_t quic_endpoint_close_all(struct quic_endpoint *ep, uint64_t code,
                               const char *reason);

/* Starts a client connection to remote from the endpoint's socket. */
int quic_connect(struct quic_conn **out, struct quic_endpoint *ep,
                 struct tls_ctx *tls, const struct sockaddr *remote,
                 const char *sni, const struct quic_conn_cbs *cbs, void *ud);

void quic_conn_set_cbs(struct quic_conn *c, const struct quic_conn_cbs *cbs,
                       void *ud);
void *quic_conn_ud(struct quic_conn *c);
int quic_conn_is_server(struct quic_conn *c);
int quic_conn_handshake_done(struct quic_conn *c);
const struct sockaddr *quic_conn_peer(struct quic_conn *c);
struct quic_endpoint *quic_conn_endpoint(struct quic_conn *c);
/* The connection's ngtcp2 state, for tests and diagnostics that drive the
 * transport directly (key updates, hand-made frames). */
struct ngtcp2_conn;
struct ngtcp2_conn *quic_conn_ngtcp2(struct quic_conn *c);
/* The peer's certificate identity. A server frees its TLS session once
 * handshake_cb has returned: copy what you need there (later: -ENOENT). */
int quic_conn_peer_identity(struct quic_conn *c, struct tls_identity *id);
/* Copies the connection ID packets to the peer carry now; returns its
 * length. */
size_t quic_conn_dcid(struct quic_conn *c, uint8_t *out, size_t cap);
/* The connection one of this endpoint's connection IDs belongs to (NULL:
 * none, or it is closing). */
struct quic_conn *quic_endpoint_find_cid(struct quic_endpoint *ep,
                                         const uint8_t *cid, size_t len);
/* The connection's TLS exporter value (RFC 8446 7.5) for
 * QUIC_EXPORTER_LABEL with no context, QUIC_EXPORTER_LEN bytes, equal at
 * both ends and secret to everyone else; what needs a key bound to the
 * connection derives it from this (punch checks: punch.h). It is taken
 * when the handshake completes, and the handshake data wolfSSL kept for
 * it is freed then. 0, or ZTNA_ERR_STATE before that. */
#define QUIC_EXPORTER_LABEL "EXPORTER-ztna-v1"
#define QUIC_EXPORTER_LEN 32
int quic_conn_exporter(struct quic_conn *c, uint8_t *out);
/* How long (ms) the peer has been silent while we wait for it to
 * acknowledge something: 0 when nothing is outstanding. A path that has
 * gone dark shows here within one round trip plus this time. */
uint64_t quic_conn_silence_ms(struct quic_conn *c);
/* Sends a PING whenever the connection was idle for ms (0: never). */
void quic_conn_set_keepalive(struct quic_conn *c, uint64_t ms);
/* Smoothed RTT in microseconds (0 before any sample). */
uint64_t quic_conn_rtt_us(struct quic_conn *c);

/* The largest DATAGRAM payload that fits the current path (0 before the
 * handshake or when the peer does not take DATAGRAMs). */
size_t quic_conn_max_datagram(struct quic_conn *c);
/* Queues one DATAGRAM built from iov (copied). Returns 0, or
 * ZTNA_ERR_TOO_LARGE (does not fit: see quic_conn_max_datagram),
 * ZTNA_ERR_QUEUE_FULL, ZTNA_ERR_STATE (handshake not done),
 * ZTNA_ERR_CLOSED. */
int quic_conn_send_datagramv(struct quic_conn *c, const struct iovec *iov,
                             int iovcnt);
int quic_conn_send_datagram(struct quic_conn *c, const uint8_t *d, size_t n);
/* Number of datagrams waiting to be sent. */
size_t quic_conn_datagram_queued(struct quic_conn *c);

/* The packet size of connections made from now on that start on a
 * virtual path: clamped to 1200..QUIC_MAX_UDP_PAYLOAD (a smaller outer
 * path MTU makes smaller inner packets). */
void quic_endpoint_set_virtual_max(struct quic_endpoint *ep, size_t n);
/* A packet that arrived on a virtual path from `from` (a virtual
 * address): handled as if the socket had received it. Others are
 * ignored. */
void quic_endpoint_input(struct quic_endpoint *ep, const uint8_t *d, size_t n,
                         const struct sockaddr *from);
/* Client: moves the connection to the path to remote (real or virtual).
 * validate: ngtcp2 validates the new path first (PATH_CHALLENGE under
 * the connection's keys) and moves only when the peer answers there; 0:
 * moves at once and validates on the way (a path known to work). path_cb
 * reports the move. Returns 0, ZTNA_ERR_STATE (not a confirmed client, or
 * no spare connection ID from the peer yet) or ZTNA_ERR_CLOSED. */
int quic_conn_migrate(struct quic_conn *c, const struct sockaddr *remote,
                      int validate);
/* 1 when the connection's current path is virtual. */
int quic_conn_path_virtual(struct quic_conn *c);

/* What a status page shows of a connection. */
struct quic_conn_info {
  uint64_t rtt_us;             /* smoothed */
  uint64_t rx_bytes, tx_bytes; /* UDP payloads */
  uint64_t age_ms;             /* since the first packet */
};
void quic_conn_get_info(struct quic_conn *c, struct quic_conn_info *out);

/* HTTP/3 (ALPN h3, TLS_ALPN_H3): a client whose TLS context asks only for
 * h3, and a server connection whose client chose it, allow the peer three
 * unidirectional streams (RFC 9114 6.2) and may open their own; every
 * other connection allows none and opens none. */
int quic_conn_is_h3(struct quic_conn *c);
/* Opens a unidirectional stream (h3 connections only: ZTNA_ERR_STATE). */
int quic_conn_open_uni_stream(struct quic_conn *c, int64_t *sid);

/* Stops reading (STOP_SENDING) and/or sending (RESET_STREAM) a stream
 * with an application error code. */
void quic_conn_shutdown_stream(struct quic_conn *c, int64_t sid,
                               uint64_t code, int read, int write);

/* Opens a bidirectional stream (client-initiated on a client). */
int quic_conn_open_stream(struct quic_conn *c, int64_t *sid);
/* Queues stream data (copied), with fin after it if fin is set. Returns 0,
 * ZTNA_ERR_QUEUE_FULL past QUIC_STREAM_BUF_MAX unacknowledged bytes, or
 * ZTNA_ERR_CLOSED. */
int quic_conn_stream_send(struct quic_conn *c, int64_t sid, const uint8_t *d,
                          size_t n, int fin);

/* How many bytes quic_conn_stream_send would take on sid now. */
size_t quic_conn_stream_room(struct quic_conn *c, int64_t sid);

/* Closes with an application error code and reason. */
void quic_conn_close(struct quic_conn *c, uint64_t code, const char *reason);

#endif
