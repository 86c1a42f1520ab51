/* quic.c - one UDP socket, many ngtcp2 connections, both roles.
 *
 * The shape follows ngtcp2's examples: decode the version and CIDs of every
 * datagram, find the connection by DCID or accept a new one, read, then run
 * the write loop and re-arm the connection's timer to ngtcp2's expiry.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_wolfssl.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "err.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "quic.h"
#include "tls.h"

#define CIDMAP_BUCKETS 4096
#define CONN_MAX_CIDS 16
#define SEND_PENDING_MAX 1024

/* One of a connection's connection IDs: in the endpoint's map (next) and
 * in the connection's own list (cnext), which is what removes them. */
struct cident {
  struct cident *next;
  struct cident *cnext;
  struct quic_conn *conn;
  uint8_t len;
  uint8_t cid[NGTCP2_MAX_CIDLEN];
};

/* An IPv4 or IPv6 address: 28 bytes where a sockaddr_storage takes 128
 * (a connection keeps four). */
union quic_sa {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
};

struct dgram {
  struct dgram *next;
  size_t len;
  uint8_t data[];
};

struct chunk {
  struct chunk *next;
  uint64_t off; /* stream offset of data[0] */
  size_t len;
  uint8_t data[];
};

struct qstream {
  struct qstream *next;
  int64_t id;
  struct chunk *head, *tail, *cur; /* cur: first chunk with unsent bytes */
  size_t cur_off;                  /* unsent bytes start here in cur */
  uint64_t end;                    /* stream offset after the last byte */
  size_t buffered;                 /* unacknowledged bytes held */
  int fin, fin_sent, skip;
};

struct quic_conn {
  struct quic_endpoint *ep;
  struct quic_conn *next, *prev;
  ngtcp2_conn *conn;
  WOLFSSL *ssl;
  struct tls_ctx *tls;
  ngtcp2_crypto_conn_ref ref;
  uv_timer_t timer;
  union quic_sa remote;
  union quic_sa observed;
  int server, handshake_done, dying, in_ngtcp2;
  int wqueued;          /* on ep->wq: written at the end of this round */
  struct quic_conn *wnext;
  int half_open;        /* counted in ep->half_open and ep->srcs */
  uint8_t src_key[16];  /* the source it was counted under */
  int want_close;
  int free_arrays;      /* the exporter is taken: let wolfSSL free the rest */
  int has_exporter;
  uint8_t exporter[QUIC_EXPORTER_LEN];
  int rotate_pending;   /* server: read the next packet on the other label */
  /* Client: the path it last asked to move to (quic_conn_migrate): what
   * packets from that peer are read on while ngtcp2 validates it. */
  union quic_sa mig_local, mig_remote;
  int h3;               /* ALPN h3: uni streams allowed (quic.h) */
  uint64_t created;     /* now_ns() when it was made */
  uint64_t rx_bytes, tx_bytes; /* UDP payloads, for the status API */
  uint64_t last_rx;     /* uv_hrtime of the last packet from the peer */
  uint64_t waiting_since; /* something ack-eliciting outstanding since */
  uint64_t rotate_at;   /* uv_hrtime of the next CID rotation */
  uint64_t rotations;
  uint64_t close_code;  /* its reason phrase is in info.reason */
  struct dgram *dq_head, *dq_tail;
  size_t dq_len;
  struct qstream *streams;
  struct cident *cids;  /* its connection IDs in ep->map */
  size_t ncids;
  const struct quic_conn_cbs *cbs;
  void *ud;
  struct quic_close_info info;
};

/* Half-open (server, handshake not done) connections per source address. */
#define SRC_BUCKETS 1024
struct src_count {
  struct src_count *next;
  uint8_t addr[16];
  size_t n;
};

struct quic_endpoint {
  uv_loop_t *loop;
  uv_udp_t udp;
  struct sockaddr_storage local;
  /* A second name for the same socket, see rotate_cid. */
  struct sockaddr_storage local_alt;
  struct quic_endpoint_config cfg;
  struct tls_ctx *server_tls;
  uint8_t secret[32];
  uint32_t hash_seed;
  struct cident *map[CIDMAP_BUCKETS];
  /* Client connections first, then the servers': a stateless reset is
   * looked for among the clients only (is_stateless_reset). */
  struct quic_conn *conns, *last_client;
  size_t nconns;
  size_t half_open; /* of nconns: servers' handshakes in progress */
  struct src_count *srcs[SRC_BUCKETS];
  size_t send_pending;
  /* Connections to write once this loop round's I/O is handled (uv_check):
   * what a burst of reads queued leaves in one write, in as few packets
   * and sends as the congestion controller allows. What timers queued is
   * written before the loop waits for I/O again (uv_prepare). */
  uv_check_t flush;
  uv_prepare_t flush_pre;
  struct quic_conn *wq;
  int open_handles;
  int gso_off; /* the kernel refused UDP_SEGMENT once: per packet */
  struct quic_stats stats;
  uint64_t reset_window_ms; /* stateless resets: at most 100 a second */
  unsigned resets_in_window;
  /* The receive path is ztna's own (recv_io_cb): libuv's does not pass up
   * the segment size of a coalesced read. The socket stays libuv's for
   * sending; a duplicate of its descriptor is what rpoll watches, so the
   * two watchers never share one (libuv allows one per descriptor). */
  uv_poll_t rpoll;
  int rfd;
  int closing;          /* quic_endpoint_del ran: read nothing more */
  /* Receive buffer: up to RECV_BATCH reads with one recvmmsg, each into a
   * 64 KiB slice (only the pages a read lands on are ever touched). */
  uint8_t *rbuf;
};

#define RECV_BATCH 16
#define RECV_SLICE 65536

struct send_req {
  uv_udp_send_t req;
  struct quic_endpoint *ep;
  uint8_t data[];
};

static void conn_destroy(struct quic_conn *c);
static int conn_write(struct quic_conn *c);
static void conn_write_soon(struct quic_conn *c);

/* Takes c off its endpoint's list of connections to write this round. */
static void wq_remove(struct quic_conn *c)
{
  struct quic_conn **pp = &c->ep->wq;

  if (!c->wqueued)
    return;
  while (*pp && *pp != c)
    pp = &(*pp)->wnext;
  if (*pp)
    *pp = c->wnext;
  c->wqueued = 0;
  c->wnext = NULL;
}
static void fill_close_info(struct quic_conn *c, int rv);
static void conn_fail(struct quic_conn *c, const ngtcp2_ccerr *cc);

static uint64_t now_ns(void)
{
  return uv_hrtime();
}

/* Retry tokens carry wall-clock time, as ngtcp2's examples do. */
static uint64_t wall_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * NGTCP2_SECONDS + (uint64_t)ts.tv_nsec;
}

static void fill_random(void *p, size_t n)
{
  uint8_t *b = p;
  while (n > 0) {
    ssize_t r = getrandom(b, n, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      /* getrandom cannot fail on Linux >= 3.17 with a valid buffer; fall
       * back to wolfSSL's RNG rather than leave bytes unset, and say so
       * if that fails too (CIDs and tokens would be predictable). */
      if (wolfSSL_RAND_bytes(b, (int)n) != 1)
        log_warnx("no random bytes from getrandom or wolfSSL: %s",
                  strerror(errno));
      return;
    }
    b += r;
    n -= (size_t)r;
  }
}

static socklen_t sa_len(const struct sockaddr *sa)
{
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                   : sizeof(struct sockaddr_in);
}

/* Virtual addresses: 100::/64 (RFC 6666, discard-only) followed by a
 * 64-bit path id. */
void quic_virtual_addr(struct sockaddr_storage *out, uint64_t id,
                       uint16_t port)
{
  struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;

  memset(out, 0, sizeof(*out));
  a->sin6_family = AF_INET6;
  a->sin6_port = htons(port);
  a->sin6_addr.s6_addr[0] = 0x01;
  for (int i = 0; i < 8; i++)
    a->sin6_addr.s6_addr[8 + i] = (uint8_t)(id >> (56 - 8 * i));
}

int quic_addr_virtual(const struct sockaddr *sa, uint64_t *id)
{
  const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
  static const uint8_t prefix[8] = { 0x01 };

  if (sa->sa_family != AF_INET6 ||
      memcmp(a->sin6_addr.s6_addr, prefix, sizeof(prefix)))
    return 0;
  if (id) {
    *id = 0;
    for (int i = 0; i < 8; i++)
      *id = *id << 8 | a->sin6_addr.s6_addr[8 + i];
  }
  return 1;
}

static int sa_equal(const struct sockaddr *a, const struct sockaddr *b)
{
  if (a->sa_family != b->sa_family)
    return 0;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port &&
           x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
  }
  return 0;
}

/* Copies an IPv4 or IPv6 address into dst (a sockaddr_storage or a union
 * quic_sa), zeroing what the family does not use: Retry tokens compare
 * the address's bytes. */
static void sa_copy(void *dst, const struct sockaddr *src)
{
  memset(dst, 0, sizeof(union quic_sa));
  if (src->sa_family == AF_INET) {
    struct sockaddr_in *d = (void *)dst;
    const struct sockaddr_in *s = (const void *)src;
    d->sin_family = AF_INET;
    d->sin_port = s->sin_port;
    d->sin_addr = s->sin_addr;
  } else if (src->sa_family == AF_INET6) {
    struct sockaddr_in6 *d = (void *)dst;
    const struct sockaddr_in6 *s = (const void *)src;
    d->sin6_family = AF_INET6;
    d->sin6_port = s->sin6_port;
    d->sin6_addr = s->sin6_addr;
    d->sin6_scope_id = s->sin6_scope_id;
  }
}

/* --- CID map ----------------------------------------------------------- */

static uint32_t cid_hash(struct quic_endpoint *ep, const uint8_t *cid,
                         size_t len)
{
  uint32_t h = 2166136261u ^ ep->hash_seed;
  for (size_t i = 0; i < len; i++)
    h = (h ^ cid[i]) * 16777619u;
  h ^= h >> 15;
  return h & (CIDMAP_BUCKETS - 1);
}

static struct quic_conn *cidmap_find(struct quic_endpoint *ep,
                                     const uint8_t *cid, size_t len)
{
  for (struct cident *e = ep->map[cid_hash(ep, cid, len)]; e; e = e->next)
    if (e->len == len && memcmp(e->cid, cid, len) == 0)
      return e->conn;
  return NULL;
}

static int cidmap_add(struct quic_conn *c, const ngtcp2_cid *cid)
{
  struct quic_endpoint *ep = c->ep;
  struct cident *e;
  uint32_t h;

  if (c->ncids >= CONN_MAX_CIDS || cidmap_find(ep, cid->data, cid->datalen))
    return ZTNA_ERR_LIMIT;
  e = calloc(1, sizeof(*e));
  if (!e)
    return -ENOMEM;
  e->len = (uint8_t)cid->datalen;
  memcpy(e->cid, cid->data, cid->datalen);
  e->conn = c;
  h = cid_hash(ep, cid->data, cid->datalen);
  e->next = ep->map[h];
  ep->map[h] = e;
  e->cnext = c->cids;
  c->cids = e;
  c->ncids++;
  return 0;
}

static void cident_del(struct quic_conn *c, struct cident *e)
{
  struct quic_endpoint *ep = c->ep;
  struct cident **pp = &ep->map[cid_hash(ep, e->cid, e->len)];

  while (*pp != e)
    pp = &(*pp)->next;
  *pp = e->next;
  for (pp = &c->cids; *pp != e; pp = &(*pp)->cnext)
    ;
  *pp = e->cnext;
  c->ncids--;
  free(e);
}

static void cidmap_remove(struct quic_conn *c, const ngtcp2_cid *cid)
{
  for (struct cident *e = c->cids; e; e = e->cnext)
    if (e->len == cid->datalen && memcmp(e->cid, cid->data, e->len) == 0) {
      cident_del(c, e);
      return;
    }
}

/* --- UDP send ------------------------------------------------------------ */

static void send_done_cb(uv_udp_send_t *req, int status)
{
  struct send_req *sr = (struct send_req *)req;
  if (status < 0)
    sr->ep->stats.udp_send_errors++;
  sr->ep->send_pending--;
  free(sr);
}

static int ep_send(struct quic_endpoint *ep, const struct sockaddr *to,
                   const uint8_t *d, size_t n)
{
  uv_buf_t b = uv_buf_init((char *)(uintptr_t)d, (unsigned)n);
  struct send_req *sr;
  int rv;

  if (quic_addr_virtual(to, NULL)) {
    /* A path through somebody else's connection (the relay). */
    rv = ep->cfg.vsend_cb ? ep->cfg.vsend_cb(ep, to, d, n, ep->cfg.ud)
                          : ZTNA_ERR_STATE;
    if (rv < 0) {
      ep->stats.vsend_errors++;
      return rv;
    }
    ep->stats.vtx_packets++;
    return 0;
  }
  rv = uv_udp_try_send(&ep->udp, &b, 1, to);
  if (rv >= 0) {
    ep->stats.tx_packets++;
    ep->stats.tx_bytes += n;
    return 0;
  }
  if (rv != UV_EAGAIN && rv != UV_ENOSYS) {
    ep->stats.udp_send_errors++;
    return rv;
  }
  /* The socket is full (or try_send has work queued): hand a copy to
   * libuv, bounded so that a stuck socket cannot eat memory. */
  if (ep->send_pending >= SEND_PENDING_MAX) {
    ep->stats.udp_send_errors++;
    return ZTNA_ERR_QUEUE_FULL;
  }
  sr = malloc(sizeof(*sr) + n);
  if (!sr) {
    ep->stats.udp_send_errors++;
    return -ENOMEM;
  }
  sr->ep = ep;
  memcpy(sr->data, d, n);
  b = uv_buf_init((char *)sr->data, (unsigned)n);
  rv = uv_udp_send(&sr->req, &ep->udp, &b, 1, to, send_done_cb);
  if (rv < 0) {
    free(sr);
    ep->stats.udp_send_errors++;
    return rv;
  }
  ep->send_pending++;
  ep->stats.tx_packets++;
  ep->stats.tx_bytes += n;
  return 0;
}

/* Packets of one connection's write burst, sent with one sendmsg and UDP
 * generic segmentation offload (UDP_SEGMENT): equal-sized segments, the
 * last one possibly shorter, to one address. The kernel carries the burst
 * as one buffer through the stack (and through veths, bridges, NAT and
 * forwarding) and cuts it into datagrams at the end, which costs a
 * fraction of one send per packet. A kernel or device that refuses it
 * turns it off for the endpoint; a socket that is full, or libuv holding
 * queued sends (order must be kept), gets the packets one by one. */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65000

struct gso_batch {
  struct sockaddr_storage to;
  size_t off, seg, count;
  uint8_t buf[GSO_MAX_BYTES];
};

static void gso_flush(struct quic_endpoint *ep, struct gso_batch *b)
{
  const struct sockaddr *to = (const struct sockaddr *)&b->to;
  size_t done = 0;

  if (!b->count)
    return;
  if (b->count > 1 && !ep->gso_off && !ep->send_pending &&
      !quic_addr_virtual(to, NULL)) {
    char cbuf[CMSG_SPACE(sizeof(uint16_t))];
    struct iovec iov = { b->buf, b->off };
    struct msghdr mh;
    struct cmsghdr *cm;
    uv_os_fd_t fd;
    uint16_t seg = (uint16_t)b->seg;
    ssize_t w;

    memset(&mh, 0, sizeof(mh));
    memset(cbuf, 0, sizeof(cbuf));
    mh.msg_name = (void *)(uintptr_t)to;
    mh.msg_namelen = to->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(seg));
    memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
    if (uv_fileno((uv_handle_t *)&ep->udp, &fd) == 0) {
      do
        w = sendmsg(fd, &mh, MSG_DONTWAIT);
      while (w < 0 && errno == EINTR);
      if (w == (ssize_t)b->off) {
        ep->stats.tx_packets += b->count;
        ep->stats.tx_bytes += b->off;
        ep->stats.gso_sends++;
        b->off = b->count = 0;
        return;
      }
      if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
          errno != ENOBUFS) {
        log_info("UDP segmentation offload refused (%s): sending packet "
                 "by packet", strerror(errno));
        ep->gso_off = 1;
      }
    }
  }
  while (done < b->off) {
    size_t n = b->off - done < b->seg ? b->off - done : b->seg;
    ep_send(ep, to, b->buf + done, n);
    done += n;
  }
  b->off = b->count = 0;
}

/* Takes the packet of n bytes just written at b->buf + b->off, bound for
 * to: sends what it cannot join first, and the batch once it is full or
 * ends with a short packet. */
static void gso_add(struct quic_endpoint *ep, struct gso_batch *b,
                    const struct sockaddr *to, size_t n)
{
  size_t alen = to->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                          : sizeof(struct sockaddr_in);

  if (b->count && (n > b->seg || memcmp(&b->to, to, alen))) {
    uint8_t *pkt = b->buf + b->off;
    /* Send the others, then this one starts a batch of its own. */
    gso_flush(ep, b);
    memmove(b->buf, pkt, n);
  }
  if (!b->count) {
    memset(&b->to, 0, sizeof(b->to));
    memcpy(&b->to, to, alen);
    b->seg = n;
  }
  b->off += n;
  b->count++;
  if (n < b->seg || b->count >= GSO_MAX_SEGS ||
      sizeof(b->buf) - b->off < QUIC_MAX_UDP_PAYLOAD_PROBED)
    gso_flush(ep, b);
}

int quic_endpoint_send_raw(struct quic_endpoint *ep, const struct sockaddr *to,
                           const uint8_t *d, size_t n)
{
  return ep_send(ep, to, d, n);
}

int quic_endpoint_send_raw_ttl(struct quic_endpoint *ep,
                               const struct sockaddr *to, const uint8_t *d,
                               size_t n, int ttl)
{
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = { (void *)(uintptr_t)d, n };
  struct msghdr mh;
  struct cmsghdr *cm;
  uv_os_fd_t fd;
  ssize_t w;

  if (quic_addr_virtual(to, NULL) ||
      uv_fileno((uv_handle_t *)&ep->udp, &fd) != 0)
    return ZTNA_ERR_STATE;
  memset(&mh, 0, sizeof(mh));
  memset(cbuf, 0, sizeof(cbuf));
  mh.msg_name = (void *)(uintptr_t)to;
  mh.msg_namelen = sa_len(to);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof(cbuf);
  cm = CMSG_FIRSTHDR(&mh);
  if (ep->local.ss_family == AF_INET6) {
    cm->cmsg_level = IPPROTO_IPV6;
    cm->cmsg_type = IPV6_HOPLIMIT;
  } else {
    cm->cmsg_level = IPPROTO_IP;
    cm->cmsg_type = IP_TTL;
  }
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &ttl, sizeof(int));
  do
    w = sendmsg(fd, &mh, MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  if (w < 0) {
    ep->stats.udp_send_errors++;
    return -errno;
  }
  ep->stats.tx_packets++;
  ep->stats.tx_bytes += n;
  return 0;
}

/* --- ngtcp2 callbacks ---------------------------------------------------- */

static ngtcp2_conn *get_conn_cb(ngtcp2_crypto_conn_ref *ref)
{
  struct quic_conn *c = ref->user_data;
  return c->conn;
}

static void rand_cb(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx)
{
  (void)ctx;
  fill_random(dest, len);
}

static int get_new_cid_cb(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token,
                          size_t cidlen, void *ud)
{
  struct quic_conn *c = ud;
  (void)conn;

  do {
    fill_random(cid->data, cidlen);
    cid->datalen = cidlen;
  } while (cidmap_find(c->ep, cid->data, cidlen));
  if (ngtcp2_crypto_generate_stateless_reset_token(
          token, c->ep->secret, sizeof(c->ep->secret), cid) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  if (cidmap_add(c, cid) < 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static int remove_cid_cb(ngtcp2_conn *conn, const ngtcp2_cid *cid, void *ud)
{
  (void)conn;
  cidmap_remove(ud, cid);
  return 0;
}

/* The connection is up for the application: on a server when the
 * handshake completes, on a client only when the server confirms it. In TLS
 * 1.3 a client finishes before the server has judged its certificate, so
 * "completed" alone would report connections the server then refuses. */
static void half_open_done(struct quic_conn *c);

static int conn_up(struct quic_conn *c)
{
  half_open_done(c);
  if (c->server &&
      c->ep->nconns - c->ep->half_open > c->ep->cfg.max_conns) {
    /* Established connections have max_conns slots of their own. */
    c->ep->stats.refused_limit++;
    c->info.err = ZTNA_ERR_LIMIT;
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  c->handshake_done = 1;
  c->rotate_at = now_ns() + c->ep->cfg.cid_rotate_ms * NGTCP2_MILLISECONDS;
  c->observed = c->remote;
  if (c->cbs && c->cbs->handshake_cb)
    c->cbs->handshake_cb(c, c->ud);
  /* A server has what it keeps of the TLS session now (the application
   * copied the peer's identity in handshake_cb, the exporter is taken) and
   * a QUIC client sends nothing more at the TLS layer: conn_read frees the
   * session once ngtcp2 is done with this read (tls_drop). */
  return 0;
}

/* A server's TLS session after the handshake: some 14 KB per connection
 * (the session object, its record buffers, cipher state QUIC never uses,
 * the peer's decoded certificate) that nothing reads again. ngtcp2 keeps
 * the packet keys itself, and key updates derive from them. */
static void tls_drop(struct quic_conn *c)
{
  c->free_arrays = 0;
  ngtcp2_conn_set_tls_native_handle(c->conn, NULL);
  wolfSSL_free(c->ssl);
  c->ssl = NULL;
}

/* CRYPTO frames after the session was dropped: a client has no TLS
 * message to send after its Finished in QUIC (no post-handshake
 * authentication, no KeyUpdate), so this is a peer breaking the protocol:
 * unexpected_message, as a TLS stack would answer. */
static int recv_crypto_data_cb(ngtcp2_conn *conn,
                               ngtcp2_encryption_level level,
                               uint64_t offset, const uint8_t *data,
                               size_t len, void *ud)
{
  struct quic_conn *c = ud;

  if (c->ssl)
    return ngtcp2_crypto_recv_crypto_data_cb(conn, level, offset, data, len,
                                             ud);
  log_debug("quic: %zu bytes of TLS data after the handshake: refused",
            len);
  ngtcp2_conn_set_tls_alert(conn, 10 /* unexpected_message */);
  return NGTCP2_ERR_CRYPTO;
}

static int handshake_completed_cb(ngtcp2_conn *conn, void *ud)
{
  struct quic_conn *c = ud;
  (void)conn;

  if (!tls_session_alpn_ok(c->tls, c->ssl)) {
    c->info.err = ZTNA_ERR_ALPN;
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  /* The one exporter value anything here keys from (quic.h); the
   * handshake data kept for it goes once ngtcp2 is done with this read. */
  c->has_exporter = wolfSSL_export_keying_material(
                        c->ssl, c->exporter, sizeof(c->exporter),
                        QUIC_EXPORTER_LABEL, strlen(QUIC_EXPORTER_LABEL), NULL,
                        0, 0) == WOLFSSL_SUCCESS;
  c->free_arrays = 1;
  return c->server ? conn_up(c) : 0;
}

static int handshake_confirmed_cb(ngtcp2_conn *conn, void *ud)
{
  struct quic_conn *c = ud;
  (void)conn;
  return c->server ? 0 : conn_up(c);
}

static int recv_datagram_cb(ngtcp2_conn *conn, uint32_t flags,
                            const uint8_t *data, size_t len, void *ud)
{
  struct quic_conn *c = ud;
  (void)conn;
  (void)flags;

  if (c->cbs && c->cbs->datagram_cb && !c->want_close)
    c->cbs->datagram_cb(c, data, len, c->ud);
  return 0;
}

static struct qstream *stream_find(struct quic_conn *c, int64_t sid)
{
  for (struct qstream *s = c->streams; s; s = s->next)
    if (s->id == sid)
      return s;
  return NULL;
}

static void stream_free(struct qstream *s)
{
  struct chunk *k = s->head;
  while (k) {
    struct chunk *n = k->next;
    free(k);
    k = n;
  }
  free(s);
}

static int recv_stream_data_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid,
                               uint64_t offset, const uint8_t *data,
                               size_t len, void *ud, void *sud)
{
  struct quic_conn *c = ud;
  (void)offset;
  (void)sud;

  if (c->cbs && c->cbs->stream_cb && !c->want_close)
    c->cbs->stream_cb(c, sid, data, len,
                      (flags & NGTCP2_STREAM_DATA_FLAG_FIN) != 0, c->ud);
  /* The application took the bytes: open the windows again. */
  ngtcp2_conn_extend_max_stream_offset(conn, sid, len);
  ngtcp2_conn_extend_max_offset(conn, len);
  return 0;
}

static int acked_stream_data_cb(ngtcp2_conn *conn, int64_t sid,
                                uint64_t offset, uint64_t len, void *ud,
                                void *sud)
{
  struct quic_conn *c = ud;
  struct qstream *s = stream_find(c, sid);
  uint64_t acked = offset + len;
  size_t before;
  (void)conn;
  (void)sud;

  if (!s)
    return 0;
  before = s->buffered;
  /* ngtcp2 reports acknowledged data in order; a chunk goes when all of it
   * is acknowledged, never before (ngtcp2 keeps pointers into it). */
  while (s->head && s->head->off + s->head->len <= acked &&
         s->head != s->cur) {
    struct chunk *k = s->head;
    s->head = k->next;
    if (!s->head)
      s->tail = NULL;
    s->buffered -= k->len;
    free(k);
  }
  if (s->buffered < before && c->cbs && c->cbs->stream_acked_cb &&
      !c->dying)
    c->cbs->stream_acked_cb(c, sid, c->ud);
  return 0;
}

static int stream_close_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid,
                           uint64_t code, void *ud, void *sud)
{
  struct quic_conn *c = ud;
  struct qstream **pp;
  (void)flags;
  (void)code;
  (void)sud;

  for (pp = &c->streams; *pp; pp = &(*pp)->next) {
    if ((*pp)->id == sid) {
      struct qstream *s = *pp;
      *pp = s->next;
      stream_free(s);
      break;
    }
  }
  if (!ngtcp2_conn_is_local_stream(conn, sid)) {
    if (sid & 0x2)
      ngtcp2_conn_extend_max_streams_uni(conn, 1);
    else
      ngtcp2_conn_extend_max_streams_bidi(conn, 1);
  }
  if (c->cbs && c->cbs->stream_close_cb && !c->dying)
    c->cbs->stream_close_cb(c, sid, (flags &
                            NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET)
                                ? code : 0, c->ud);
  return 0;
}

static int stream_reset_cb(ngtcp2_conn *conn, int64_t sid, uint64_t size,
                           uint64_t code, void *ud, void *sud)
{
  struct quic_conn *c = ud;
  (void)conn;
  (void)size;
  (void)sud;

  if (c->cbs && c->cbs->stream_reset_cb && !c->dying)
    c->cbs->stream_reset_cb(c, sid, code, c->ud);
  return 0;
}

/* HTTP/3 (RFC 9114 6.2) needs three unidirectional streams each way,
 * which the ztna protocols never use: a server allows them only once
 * the client has chosen h3, before its transport parameters are sent
 * (the handshake's receive key is installed just before the send key,
 * and the parameters go out with the latter). */
static void params_h3(ngtcp2_transport_params *p)
{
  p->initial_max_streams_uni = 3;
  p->initial_max_stream_data_uni = 64 * 1024;
}

static int recv_rx_key_cb(ngtcp2_conn *conn, ngtcp2_encryption_level level,
                          void *ud)
{
  struct quic_conn *c = ud;
  char alpn[TLS_ALPN_MAX + 1];
  ngtcp2_transport_params p;

  if (!c->server || level != NGTCP2_ENCRYPTION_LEVEL_HANDSHAKE ||
      !tls_session_alpn(c->ssl, alpn, sizeof(alpn)) ||
      strcmp(alpn, TLS_ALPN_H3))
    return 0;
  p = *ngtcp2_conn_get_local_transport_params(conn);
  params_h3(&p);
  if (ngtcp2_conn_set_local_transport_params(conn, &p) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  c->h3 = 1;
  return 0;
}

static int lost_datagram_cb(ngtcp2_conn *conn, uint64_t id, void *ud)
{
  (void)conn;
  (void)id;
  (void)ud;
  return 0;
}

static void log_printf_cb(void *ud, const char *fmt, ...)
{
  va_list ap;
  (void)ud;
  va_start(ap, fmt);
  log_vmsg(LOG_LVL_TRACE, fmt, ap);
  va_end(ap);
}

/* The peer no longer knows this connection (it restarted, say): ngtcp2
 * matched the reset's token and drains the connection. */
static int recv_stateless_reset_cb(ngtcp2_conn *conn,
                                   const ngtcp2_pkt_stateless_reset *sr,
                                   void *ud)
{
  struct quic_conn *c = ud;
  (void)conn;
  (void)sr;
  c->info.reset = 1;
  return 0;
}

/* ngtcp2 validated a path, or gave up on one (and went back to the path
 * before it, if there was one): worth a line, since a path that fails
 * validation carries nothing. */
static int path_validation_cb(ngtcp2_conn *conn, uint32_t flags,
                              const ngtcp2_path *path,
                              const ngtcp2_path *fallback_path,
                              ngtcp2_path_validation_result res, void *ud)
{
  struct quic_conn *c = ud;
  char a[64], f[64];
  (void)conn;
  (void)flags;

  netaddr_str((const struct sockaddr *)path->remote.addr, a, sizeof(a));
  if (res == NGTCP2_PATH_VALIDATION_RESULT_SUCCESS)
    log_debug("quic: %s: path to %s validated",
              c->server ? "server" : "client", a);
  else
    log_warnx("quic: %s: path to %s failed validation%s%s",
              c->server ? "server" : "client", a,
              fallback_path ? "; back to " : "",
              fallback_path ? netaddr_str((const struct sockaddr *)
                                              fallback_path->remote.addr,
                                          f, sizeof(f))
                            : "");
  return 0;
}

static const ngtcp2_callbacks callbacks_template = {
  .client_initial = ngtcp2_crypto_client_initial_cb,
  .recv_client_initial = ngtcp2_crypto_recv_client_initial_cb,
  .recv_crypto_data = recv_crypto_data_cb,
  .handshake_completed = handshake_completed_cb,
  .handshake_confirmed = handshake_confirmed_cb,
  .encrypt = ngtcp2_crypto_encrypt_cb,
  .decrypt = ngtcp2_crypto_decrypt_cb,
  .hp_mask = ngtcp2_crypto_hp_mask_cb,
  .recv_stream_data = recv_stream_data_cb,
  .acked_stream_data_offset = acked_stream_data_cb,
  .stream_close = stream_close_cb,
  .stream_reset = stream_reset_cb,
  .recv_rx_key = recv_rx_key_cb,
  .recv_retry = ngtcp2_crypto_recv_retry_cb,
  .rand = rand_cb,
  .get_new_connection_id = get_new_cid_cb,
  .remove_connection_id = remove_cid_cb,
  .update_key = ngtcp2_crypto_update_key_cb,
  .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
  .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
  .recv_datagram = recv_datagram_cb,
  .recv_stateless_reset = recv_stateless_reset_cb,
  .lost_datagram = lost_datagram_cb,
  .path_validation = path_validation_cb,
  .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
  .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

/* --- connection lifecycle ---------------------------------------------- */

static void settings_init(struct quic_endpoint *ep, ngtcp2_settings *s,
                          const struct sockaddr *remote)
{
  ngtcp2_settings_default(s);
  s->initial_ts = now_ns();
  if (quic_addr_virtual(remote, NULL)) {
    /* A connection that starts through the relay keeps one packet size,
     * small enough for the relay's DATAGRAMs, on every path it takes. */
    s->max_tx_udp_payload_size = ep->cfg.virtual_max_udp_payload;
    s->no_tx_udp_payload_size_shaping = 1;
    s->no_pmtud = 1;
  } else {
    /* Path MTU discovery: 1200 bytes until a probe of a larger size is
     * acknowledged (1452 fits IPv6 on a 1500-byte link; 1406 and 1350
     * paths with tunnels in them), so that a relay DATAGRAM can carry a
     * whole end-to-end packet (protocol.md 10). */
    static const uint16_t probes[] = { QUIC_MAX_UDP_PAYLOAD_PROBED, 1406,
                                       QUIC_MAX_UDP_PAYLOAD };
    s->max_tx_udp_payload_size = QUIC_MAX_UDP_PAYLOAD_PROBED;
    s->pmtud_probes = probes;
    s->pmtud_probeslen = sizeof(probes) / sizeof(probes[0]);
  }
  /* BBR, not loss-based CUBIC: the packets of a tunnel carry the users'
   * own TCP, which reacts to loss by itself; an outer controller that
   * halves its window on every random loss as well makes the two back off
   * twice (50 MB through 5% loss: 42 s with BBR, 55 s with CUBIC here),
   * and BBR keeps the queue it builds short (ping p99 under a saturating
   * transfer about 1.3 ms direct). Its ProbeRTT is postponed while the
   * path keeps showing its minimum RTT (third_party/ngtcp2-bbr.patch):
   * nested connections each probing on their own clock stalled the relay
   * path. */
  s->cc_algo = NGTCP2_CC_ALGO_BBR;
  s->handshake_timeout = ep->cfg.handshake_timeout_ms * NGTCP2_MILLISECONDS;
  if (log_verbosity() >= LOG_LVL_TRACE)
    s->log_printf = log_printf_cb;
}

static void params_init(struct quic_endpoint *ep, ngtcp2_transport_params *p)
{
  ngtcp2_transport_params_default(p);
  /* What a peer may make us buffer: the protocol has one signaling stream
   * whose messages are at most 64 KiB (its frames 4 more), and user data
   * travels in DATAGRAMs, which flow control does not cover. The
   * original's 10 MB / 1 MB / 100+100 streams let every peer park
   * megabytes here. Windows grow again as data is consumed. */
  p->initial_max_data = 256 * 1024;
  p->initial_max_stream_data_bidi_local = 128 * 1024;
  p->initial_max_stream_data_bidi_remote = 128 * 1024;
  p->initial_max_stream_data_uni = 0;
  p->initial_max_streams_bidi = 4;
  p->initial_max_streams_uni = 0;
  p->max_idle_timeout = ep->cfg.idle_timeout_ms * NGTCP2_MILLISECONDS;
  p->max_udp_payload_size = QUIC_MAX_UDP_PAYLOAD_PROBED;
  p->max_datagram_frame_size = 65536;
  p->active_connection_id_limit = 4;
}

/* Copies into out the local address ngtcp2 knows this connection's
 * current path by or, with other, the endpoint's other name for the same
 * socket (see rotate_cid). A copy: ngtcp2 rewrites its path storage while
 * it reads a packet. */
static socklen_t conn_local(struct quic_conn *c, int other,
                            struct sockaddr_storage *out)
{
  const ngtcp2_path *p = ngtcp2_conn_get_path(c->conn);
  const struct sockaddr *sa = p->local.addr;

  if (other)
    sa = sa_equal(sa, (const struct sockaddr *)&c->ep->local)
             ? (const struct sockaddr *)&c->ep->local_alt
             : (const struct sockaddr *)&c->ep->local;
  sa_copy(out, sa);
  return sa_len(sa);
}

/* CID rotation (protocol.md 1: every 300 s). ngtcp2 1.11 moves to a new
 * DCID only when the path changes: a client migrates, a server follows a
 * peer to a new path. All connections share one socket, so the endpoint
 * has two names for its own address (local and local_alt: same address,
 * another port number that is never bound) and a connection "moves"
 * between them. Packets still leave from the one socket to the same peer.
 * A client switches at once (initiate_immediate_migration: the server
 * sees its next packets under a new DCID and retires the old one, which
 * makes it issue a NEW_CONNECTION_ID with a fresh stateless-reset token);
 * a server reads the next packet on the other name, so ngtcp2 takes a new
 * DCID for the peer and validates the (same) path. Without a spare CID
 * from the peer the rotation waits for the next period. */
static void rotate_cid(struct quic_conn *c)
{
  uint64_t now = now_ns();
  struct sockaddr_storage local;
  ngtcp2_path path;
  int rv;

  c->rotate_at = now + c->ep->cfg.cid_rotate_ms * NGTCP2_MILLISECONDS;
  if (!c->handshake_done)
    return;
  if (c->server) {
    c->rotate_pending = 1;
    c->rotations++;
    c->ep->stats.cid_rotations++;
    return;
  }
  path = *ngtcp2_conn_get_path(c->conn);
  /* Through the relay the outer connection rotates its own IDs; the
   * relay sees the inner ones, not the network. */
  if (quic_addr_virtual(path.local.addr, NULL))
    return;
  path.local.addrlen = conn_local(c, 1, &local);
  path.local.addr = (ngtcp2_sockaddr *)&local;
  path.user_data = NULL;
  c->in_ngtcp2 = 1;
  rv = ngtcp2_conn_initiate_immediate_migration(c->conn, &path, now);
  c->in_ngtcp2 = 0;
  if (rv == 0) {
    c->rotations++;
    c->ep->stats.cid_rotations++;
    log_debug("quic: connection ID rotated (%llu)",
              (unsigned long long)c->rotations);
  } else if (ngtcp2_err_is_fatal(rv)) {
    ngtcp2_ccerr cc;
    fill_close_info(c, rv);
    ngtcp2_ccerr_set_liberr(&cc, rv, NULL, 0);
    conn_fail(c, &cc);
  } else {
    log_debug("quic: connection ID rotation skipped: %s",
              ngtcp2_strerror(rv));
  }
}

static void timer_cb(uv_timer_t *t)
{
  struct quic_conn *c = t->data;
  int rv;

  if (c->dying)
    return;
  if (c->rotate_at && now_ns() >= c->rotate_at) {
    rotate_cid(c);
    if (c->dying)
      return;
  }
  c->in_ngtcp2 = 1;
  rv = ngtcp2_conn_handle_expiry(c->conn, now_ns());
  c->in_ngtcp2 = 0;
  if (rv != 0) {
    c->info.local = 1;
    if (rv == NGTCP2_ERR_IDLE_CLOSE) {
      c->info.idle = 1;
      c->info.err = ZTNA_ERR_CLOSED;
      snprintf(c->info.reason, sizeof(c->info.reason), "idle timeout");
    } else {
      c->info.err = rv == NGTCP2_ERR_HANDSHAKE_TIMEOUT ? ZTNA_ERR_HANDSHAKE
                                                        : ZTNA_ERR_QUIC;
      snprintf(c->info.reason, sizeof(c->info.reason), "%s",
               ngtcp2_strerror(rv));
    }
    conn_destroy(c);
    return;
  }
  conn_write(c);
}

static void arm_timer(struct quic_conn *c)
{
  uint64_t expiry = ngtcp2_conn_get_expiry(c->conn), now = now_ns();
  uint64_t ms;

  if (c->rotate_at && c->rotate_at < expiry)
    expiry = c->rotate_at;
  if (expiry == UINT64_MAX) {
    uv_timer_stop(&c->timer);
    return;
  }
  ms = expiry <= now ? 0 : (expiry - now + NGTCP2_MILLISECONDS - 1) /
                               NGTCP2_MILLISECONDS;
  uv_timer_start(&c->timer, timer_cb, ms, 0);
}

static void conn_free_cb(uv_handle_t *h)
{
  struct quic_conn *c = h->data;
  struct dgram *d = c->dq_head;

  while (d) {
    struct dgram *n = d->next;
    free(d);
    d = n;
  }
  while (c->streams) {
    struct qstream *s = c->streams;
    c->streams = s->next;
    stream_free(s);
  }
  if (c->conn)
    ngtcp2_conn_del(c->conn);
  if (c->ssl)
    wolfSSL_free(c->ssl);
  tls_ctx_unref(c->tls);
  free(c);
}

/* Takes the connection out of the endpoint, tells the application, and
 * frees it once the timer handle is closed. */
/* --- half-open handshakes ---------------------------------------------- */

/* The address bytes a source is counted under (IPv4 as IPv4-mapped). */
static void src_key(const struct sockaddr *sa, uint8_t *key)
{
  memset(key, 0, 16);
  if (sa->sa_family == AF_INET6) {
    memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
  } else {
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  }
}

static struct src_count **src_slot(struct quic_endpoint *ep,
                                   const uint8_t *key)
{
  uint32_t h = ep->hash_seed;
  struct src_count **pp;

  for (int i = 0; i < 16; i++)
    h = (h ^ key[i]) * 16777619u;
  for (pp = &ep->srcs[h % SRC_BUCKETS]; *pp; pp = &(*pp)->next)
    if (!memcmp((*pp)->addr, key, 16))
      break;
  return pp;
}

/* 1 when a new handshake from this source may start: under the
 * endpoint's and the source's bounds for half-open connections. */
static int half_open_allowed(struct quic_endpoint *ep,
                             const struct sockaddr *from)
{
  uint8_t key[16];
  struct src_count *s;

  if (ep->half_open >= ep->cfg.max_half_open)
    return 0;
  src_key(from, key);
  s = *src_slot(ep, key);
  return !s || s->n < ep->cfg.max_half_open_per_source;
}

static int half_open_start(struct quic_conn *c, const struct sockaddr *from)
{
  struct quic_endpoint *ep = c->ep;
  struct src_count **pp;

  src_key(from, c->src_key);
  pp = src_slot(ep, c->src_key);
  if (!*pp) {
    *pp = calloc(1, sizeof(**pp));
    if (!*pp)
      return -ENOMEM;
    memcpy((*pp)->addr, c->src_key, 16);
  }
  (*pp)->n++;
  ep->half_open++;
  c->half_open = 1;
  return 0;
}

static void half_open_done(struct quic_conn *c)
{
  struct src_count **pp, *s;

  if (!c->half_open)
    return;
  c->half_open = 0;
  c->ep->half_open--;
  pp = src_slot(c->ep, c->src_key);
  s = *pp;
  if (s && --s->n == 0) {
    *pp = s->next;
    free(s);
  }
}

static void conn_destroy(struct quic_conn *c)
{
  struct quic_endpoint *ep = c->ep;

  if (c->dying)
    return;
  c->dying = 1;
  wq_remove(c);
  half_open_done(c);
  while (c->cids)
    cident_del(c, c->cids);
  if (ep->last_client == c)
    ep->last_client = c->prev; /* a client too, or none */
  if (c->prev)
    c->prev->next = c->next;
  else
    ep->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  ep->nconns--;
  if (c->cbs && c->cbs->close_cb)
    c->cbs->close_cb(c, &c->info, c->ud);
  uv_close((uv_handle_t *)&c->timer, conn_free_cb);
}

static struct quic_conn *conn_alloc(struct quic_endpoint *ep,
                                    const struct sockaddr *remote, int server)
{
  struct quic_conn *c = calloc(1, sizeof(*c)), **at;

  if (!c)
    return NULL;
  c->ep = ep;
  c->server = server;
  c->created = now_ns();
  sa_copy(&c->remote, remote);
  c->ref.get_conn = get_conn_cb;
  c->ref.user_data = c;
  uv_timer_init(ep->loop, &c->timer);
  c->timer.data = c;
  /* A client at the head, a server after the last client. */
  c->prev = server ? ep->last_client : NULL;
  at = c->prev ? &c->prev->next : &ep->conns;
  c->next = *at;
  if (c->next)
    c->next->prev = c;
  *at = c;
  if (!server && !ep->last_client)
    ep->last_client = c;
  ep->nconns++;
  return c;
}

/* Undoes conn_alloc for a connection that never reached the application. */
static void conn_abandon(struct quic_conn *c)
{
  const struct quic_conn_cbs *cbs = c->cbs;
  c->cbs = NULL;
  conn_destroy(c);
  c->cbs = cbs;
}

static int conn_attach_tls(struct quic_conn *c, struct tls_ctx *tls,
                           const char *sni)
{
  c->tls = tls_ctx_ref(tls);
  c->ssl = tls_session_new(tls, sni);
  if (!c->ssl)
    return ZTNA_ERR_TLS;
  wolfSSL_set_app_data(c->ssl, &c->ref);
  wolfSSL_KeepArrays(c->ssl); /* for the exporter, until the handshake */
  ngtcp2_conn_set_tls_native_handle(c->conn, c->ssl);
  return 0;
}

static void fill_close_info(struct quic_conn *c, int rv)
{
  const ngtcp2_ccerr *cc = ngtcp2_conn_get_ccerr(c->conn);
  size_t rl;

  if (rv == NGTCP2_ERR_DRAINING && c->info.reset) {
    c->info.local = 0;
    c->info.err = ZTNA_ERR_CLOSED;
    snprintf(c->info.reason, sizeof(c->info.reason),
             "stateless reset (the peer lost the connection: restarted?)");
    return;
  }
  if (rv == NGTCP2_ERR_DRAINING) {
    /* The peer closed: report its code and reason. */
    c->info.local = 0;
    c->info.app = cc->type == NGTCP2_CCERR_TYPE_APPLICATION;
    c->info.code = cc->error_code;
    if (!c->info.app && cc->error_code >= NGTCP2_CRYPTO_ERROR &&
        cc->error_code < NGTCP2_CRYPTO_ERROR + 256)
      c->info.tls_alert = (uint8_t)(cc->error_code - NGTCP2_CRYPTO_ERROR);
    rl = cc->reasonlen < sizeof(c->info.reason) - 1
             ? cc->reasonlen
             : sizeof(c->info.reason) - 1;
    for (size_t i = 0; i < rl; i++) {
      uint8_t ch = cc->reason[i];
      c->info.reason[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    c->info.reason[rl] = '\0';
    if (c->info.tls_alert)
      c->info.err = c->info.tls_alert == 120 ? ZTNA_ERR_ALPN
                                             : ZTNA_ERR_CERT;
    else if (c->info.app ? cc->error_code != 0
                         : cc->error_code != NGTCP2_NO_ERROR)
      c->info.err = ZTNA_ERR_CLOSED;
    return;
  }
  c->info.local = 1;
  if (rv == NGTCP2_ERR_CRYPTO) {
    c->info.tls_alert = ngtcp2_conn_get_tls_alert(c->conn);
    c->info.code = NGTCP2_CRYPTO_ERROR + c->info.tls_alert;
    c->info.err = c->info.tls_alert == 120 ? ZTNA_ERR_ALPN : ZTNA_ERR_CERT;
    snprintf(c->info.reason, sizeof(c->info.reason), "TLS alert %u",
             c->info.tls_alert);
    return;
  }
  if (!c->info.err)
    c->info.err = ZTNA_ERR_QUIC;
  snprintf(c->info.reason, sizeof(c->info.reason), "%s", ngtcp2_strerror(rv));
}

/* Sends CONNECTION_CLOSE for a local error (ccerr set) and destroys. */
static void conn_fail(struct quic_conn *c, const ngtcp2_ccerr *cc)
{
  uint8_t buf[QUIC_MAX_UDP_PAYLOAD_PROBED];
  ngtcp2_path_storage ps;
  ngtcp2_pkt_info pi;
  ngtcp2_ssize n;

  if (!ngtcp2_conn_in_closing_period(c->conn) &&
      !ngtcp2_conn_in_draining_period(c->conn)) {
    ngtcp2_path_storage_zero(&ps);
    n = ngtcp2_conn_write_connection_close(c->conn, &ps.path, &pi, buf,
                                           sizeof(buf), cc, now_ns());
    if (n > 0)
      ep_send(c->ep, ps.path.remote.addr, buf, (size_t)n);
  }
  conn_destroy(c);
}

static void conn_read_error(struct quic_conn *c, int rv)
{
  ngtcp2_ccerr cc;

  fill_close_info(c, rv);
  switch (rv) {
  case NGTCP2_ERR_DRAINING:
  case NGTCP2_ERR_DROP_CONN:
  case NGTCP2_ERR_RETRY:
    conn_destroy(c);
    return;
  case NGTCP2_ERR_CRYPTO:
    ngtcp2_ccerr_set_tls_alert(&cc, c->info.tls_alert, NULL, 0);
    break;
  case NGTCP2_ERR_CALLBACK_FAILURE:
    if (c->info.err == ZTNA_ERR_ALPN) {
      ngtcp2_ccerr_set_tls_alert(&cc, 120, NULL, 0);
      c->info.tls_alert = 120;
      c->info.code = NGTCP2_CRYPTO_ERROR + 120;
      snprintf(c->info.reason, sizeof(c->info.reason),
               "no application protocol");
      break;
    }
    /* fall through */
  default:
    ngtcp2_ccerr_set_liberr(&cc, rv, NULL, 0);
  }
  conn_fail(c, &cc);
}

static void do_app_close(struct quic_conn *c)
{
  ngtcp2_ccerr cc;

  /* What was queued before the close goes out before it. */
  if (c->wqueued) {
    wq_remove(c);
    conn_write(c);
    if (c->dying)
      return;
  }
  ngtcp2_ccerr_default(&cc);
  ngtcp2_ccerr_set_application_error(&cc, c->close_code,
                                     (const uint8_t *)c->info.reason,
                                     strlen(c->info.reason));
  c->info.local = 1;
  c->info.app = 1;
  c->info.code = c->close_code;
  conn_fail(c, &cc);
}

static void check_path(struct quic_conn *c)
{
  const ngtcp2_path *p = ngtcp2_conn_get_path(c->conn);

  if (!c->handshake_done || !p->remote.addr)
    return;
  if (!sa_equal(p->remote.addr, &c->observed.sa)) {
    sa_copy(&c->observed, p->remote.addr);
    sa_copy(&c->remote, p->remote.addr);
    if (c->cbs && c->cbs->path_cb)
      c->cbs->path_cb(c, &c->observed.sa, c->ud);
  }
}

/* The local address a packet from `from` arrived on, as ngtcp2 knows the
 * paths. A server's is always its socket (under one of its two names).
 * A client's virtual path (through the relay) has a virtual local address
 * of the same id; its real paths have the socket's, and the path being
 * validated the one quic_conn_migrate chose. */
static socklen_t read_local(struct quic_conn *c, const struct sockaddr *from,
                            struct sockaddr_storage *out)
{
  const ngtcp2_path *p = ngtcp2_conn_get_path(c->conn);
  uint64_t id;

  if (c->server)
    return conn_local(c, c->rotate_pending, out);
  if (quic_addr_virtual(from, &id)) {
    quic_virtual_addr(out, id, QUIC_VIRTUAL_LOCAL_PORT);
    return sizeof(struct sockaddr_in6);
  }
  if (c->mig_remote.sa.sa_family && sa_equal(from, &c->mig_remote.sa)) {
    sa_copy(out, &c->mig_local.sa);
    return sa_len((struct sockaddr *)out);
  }
  if (quic_addr_virtual(p->local.addr, NULL)) {
    sa_copy(out, (struct sockaddr *)&c->ep->local);
    return sa_len((struct sockaddr *)out);
  }
  return conn_local(c, 0, out);
}

/* The path a packet from `from` arrived on, for ngtcp2 (remote and local
 * are its storage). */
static void read_path(struct quic_conn *c, const struct sockaddr *from,
                      ngtcp2_path *path, struct sockaddr_storage *remote,
                      struct sockaddr_storage *local)
{
  sa_copy(remote, from);
  path->local.addrlen = read_local(c, from, local);
  path->local.addr = (ngtcp2_sockaddr *)local;
  c->rotate_pending = 0;
  path->remote.addr = (ngtcp2_sockaddr *)remote;
  path->remote.addrlen = sa_len(from);
  path->user_data = NULL;
}

static void conn_read(struct quic_conn *c, const uint8_t *d, size_t n,
                      const struct sockaddr *from)
{
  struct sockaddr_storage remote, local;
  ngtcp2_path path;
  ngtcp2_pkt_info pi = { 0 };
  int rv;

  read_path(c, from, &path, &remote, &local);
  c->last_rx = now_ns();
  c->rx_bytes += n;
  c->in_ngtcp2 = 1;
  rv = ngtcp2_conn_read_pkt(c->conn, &path, &pi, d, n, now_ns());
  c->in_ngtcp2 = 0;
  if (c->server && c->handshake_done && c->ssl && !c->dying)
    tls_drop(c);
  if (c->free_arrays) {
    c->free_arrays = 0;
    wolfSSL_FreeArrays(c->ssl);
  }
  if (c->dying)
    return;
  if (rv != 0) {
    conn_read_error(c, rv);
    return;
  }
  check_path(c);
  if (c->dying)
    return;
  if (c->want_close) {
    do_app_close(c);
    return;
  }
  conn_write_soon(c);
}

/* --- write loop --------------------------------------------------------- */

static void conn_write_soon(struct quic_conn *c)
{
  struct quic_endpoint *ep = c->ep;

  if (c->dying || c->wqueued)
    return;
  c->wqueued = 1;
  c->wnext = ep->wq;
  ep->wq = c;
}

static void flush_all(struct quic_endpoint *ep)
{
  while (ep->wq) {
    struct quic_conn *c = ep->wq;
    ep->wq = c->wnext;
    c->wqueued = 0;
    c->wnext = NULL;
    conn_write(c);
  }
}

static void flush_cb(uv_check_t *h)
{
  flush_all(h->data);
}

static void flush_pre_cb(uv_prepare_t *h)
{
  flush_all(h->data);
}

static struct qstream *next_stream(struct quic_conn *c)
{
  for (struct qstream *s = c->streams; s; s = s->next)
    if (!s->skip && (s->cur || (s->fin && !s->fin_sent)))
      return s;
  return NULL;
}

static void dq_pop(struct quic_conn *c)
{
  struct dgram *d = c->dq_head;
  c->dq_head = d->next;
  if (!c->dq_head)
    c->dq_tail = NULL;
  c->dq_len--;
  free(d);
}

static void stream_advance(struct qstream *s, size_t n)
{
  while (n > 0 && s->cur) {
    size_t left = s->cur->len - s->cur_off;
    size_t k = n < left ? n : left;
    s->cur_off += k;
    n -= k;
    if (s->cur_off == s->cur->len) {
      s->cur = s->cur->next;
      s->cur_off = 0;
    }
  }
}

/* Keeps waiting_since: when the peer started to owe us an answer. */
static void note_waiting(struct quic_conn *c)
{
  ngtcp2_conn_info ci;

  if (!c->handshake_done)
    return;
  ngtcp2_conn_get_conn_info(c->conn, &ci);
  if (ci.bytes_in_flight == 0)
    c->waiting_since = 0;
  else if (!c->waiting_since)
    c->waiting_since = now_ns();
}

static int conn_write(struct quic_conn *c)
{
  /* Packets are written into the batch where they will be sent from. */
  static struct gso_batch batch_mem[4];
  static unsigned depth;
  struct gso_batch *b;
  uint8_t *buf;
  ngtcp2_path_storage ps;
  ngtcp2_pkt_info pi;
  uint64_t ts = now_ns();
  ngtcp2_ssize n;
  int dgram_ok = c->handshake_done;

  if (c->dying)
    return ZTNA_ERR_CLOSED;
  if (c->in_ngtcp2)
    return 0; /* runs when ngtcp2 returns */
  if (depth >= sizeof(batch_mem) / sizeof(batch_mem[0]))
    return 0; /* never nests this deep; the timer writes later */
  b = &batch_mem[depth++];
  b->off = b->count = 0;
  ngtcp2_path_storage_zero(&ps);
  for (struct qstream *s = c->streams; s; s = s->next)
    s->skip = 0;

  for (;;) {
    struct dgram *d = dgram_ok ? c->dq_head : NULL;
    buf = b->buf + b->off;
    struct qstream *s = d ? NULL : next_stream(c);
    ngtcp2_ssize ndatalen = -1;

    if (d) {
      ngtcp2_vec v = { d->data, d->len };
      int accepted = 0;

      n = ngtcp2_conn_writev_datagram(c->conn, &ps.path, &pi, buf,
                                      QUIC_MAX_UDP_PAYLOAD_PROBED, &accepted,
                                      NGTCP2_WRITE_DATAGRAM_FLAG_MORE, 0, &v,
                                      1, ts);
      if (n == NGTCP2_ERR_WRITE_MORE) {
        dq_pop(c);
        continue;
      }
      if (n == NGTCP2_ERR_INVALID_ARGUMENT || n == NGTCP2_ERR_INVALID_STATE) {
        c->ep->stats.dgram_rejected++;
        dq_pop(c);
        continue;
      }
      if (n < 0)
        goto fail;
      if (accepted)
        dq_pop(c);
      if (n == 0)
        break; /* congestion or pacing: the rest waits for the timer */
    } else if (s) {
      ngtcp2_vec v = { NULL, 0 };
      uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;

      if (s->cur) {
        v.base = s->cur->data + s->cur_off;
        v.len = s->cur->len - s->cur_off;
      }
      if (s->fin && (!s->cur || !s->cur->next))
        flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
      n = ngtcp2_conn_writev_stream(c->conn, &ps.path, &pi, buf,
                                    QUIC_MAX_UDP_PAYLOAD_PROBED,
                                    &ndatalen, flags, s->id, &v,
                                    v.len ? 1 : 0, ts);
      if (n == NGTCP2_ERR_WRITE_MORE) {
        stream_advance(s, (size_t)ndatalen);
        if (!s->cur && (flags & NGTCP2_WRITE_STREAM_FLAG_FIN))
          s->fin_sent = 1;
        continue;
      }
      if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED ||
          n == NGTCP2_ERR_STREAM_SHUT_WR || n == NGTCP2_ERR_STREAM_NOT_FOUND) {
        s->skip = 1;
        continue;
      }
      if (n < 0)
        goto fail;
      if (ndatalen >= 0) {
        stream_advance(s, (size_t)ndatalen);
        if (!s->cur && (flags & NGTCP2_WRITE_STREAM_FLAG_FIN))
          s->fin_sent = 1;
      }
      if (n == 0)
        break;
    } else {
      n = ngtcp2_conn_write_pkt(c->conn, &ps.path, &pi, buf,
                                QUIC_MAX_UDP_PAYLOAD_PROBED, ts);
      if (n < 0)
        goto fail;
      if (n == 0)
        break;
    }
    c->tx_bytes += (uint64_t)n;
    gso_add(c->ep, b, ps.path.remote.addr, (size_t)n);
  }
  gso_flush(c->ep, b);
  depth--;
  note_waiting(c);
  arm_timer(c);
  return 0;

fail: {
  ngtcp2_ccerr cc;
  gso_flush(c->ep, b); /* what was written is in flight for ngtcp2 */
  depth--;
  c->info.local = 1;
  c->info.err = ZTNA_ERR_QUIC;
  snprintf(c->info.reason, sizeof(c->info.reason), "%s",
           ngtcp2_strerror((int)n));
  ngtcp2_ccerr_set_liberr(&cc, (int)n, NULL, 0);
  conn_fail(c, &cc);
  return ZTNA_ERR_QUIC;
}
}

/* --- server accept path --------------------------------------------------- */

static void send_retry(struct quic_endpoint *ep, const ngtcp2_pkt_hd *hd,
                       const struct sockaddr *from)
{
  uint8_t token[NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN2];
  uint8_t buf[QUIC_MAX_UDP_PAYLOAD_PROBED];
  struct sockaddr_storage ss;
  ngtcp2_cid scid;
  ngtcp2_ssize tl, n;

  sa_copy(&ss, from);
  scid.datalen = QUIC_SCID_LEN;
  fill_random(scid.data, scid.datalen);
  tl = ngtcp2_crypto_generate_retry_token2(
      token, ep->secret, sizeof(ep->secret), hd->version,
      (const ngtcp2_sockaddr *)&ss, sa_len(from), &scid, &hd->dcid,
      wall_ns());
  if (tl < 0)
    return;
  n = ngtcp2_crypto_write_retry(buf, sizeof(buf), hd->version, &hd->scid,
                                &scid, &hd->dcid, token, (size_t)tl);
  if (n < 0)
    return;
  ep->stats.retry_sent++;
  ep_send(ep, from, buf, (size_t)n);
}

static void send_close_stateless(struct quic_endpoint *ep,
                                 const ngtcp2_pkt_hd *hd,
                                 const struct sockaddr *from, uint64_t code)
{
  uint8_t buf[QUIC_MAX_UDP_PAYLOAD_PROBED];
  ngtcp2_ssize n = ngtcp2_crypto_write_connection_close(
      buf, sizeof(buf), hd->version, &hd->scid, &hd->dcid, code, NULL, 0);
  if (n > 0)
    ep_send(ep, from, buf, (size_t)n);
}

static void send_version_negotiation(struct quic_endpoint *ep,
                                     const ngtcp2_version_cid *vc,
                                     const struct sockaddr *from)
{
  uint8_t buf[QUIC_MAX_UDP_PAYLOAD_PROBED], r;
  uint32_t sv[2];
  ngtcp2_ssize n;

  fill_random(&r, 1);
  sv[0] = 0x1a2a3a4au; /* a grease version (RFC 9000 15) */
  sv[1] = NGTCP2_PROTO_VER_V1;
  n = ngtcp2_pkt_write_version_negotiation(buf, sizeof(buf), r, vc->scid,
                                           vc->scidlen, vc->dcid, vc->dcidlen,
                                           sv, 2);
  if (n > 0) {
    ep->stats.vn_sent++;
    ep_send(ep, from, buf, (size_t)n);
  }
}

static void accept_conn(struct quic_endpoint *ep, const uint8_t *d, size_t n,
                        const struct sockaddr *from)
{
  ngtcp2_pkt_hd hd;
  ngtcp2_cid odcid, scid;
  const ngtcp2_cid *podcid = NULL;
  ngtcp2_token_type token_type = NGTCP2_TOKEN_TYPE_UNKNOWN;
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  ngtcp2_callbacks cbs = callbacks_template;
  ngtcp2_path path;
  struct sockaddr_storage ss;
  struct quic_conn *c;
  int rv;

  if (ngtcp2_accept(&hd, d, n) != 0)
    return;
  sa_copy(&ss, from);
  if (ep->nconns - ep->half_open >= ep->cfg.max_conns) {
    ep->stats.refused_limit++;
    send_close_stateless(ep, &hd, from, NGTCP2_CONNECTION_REFUSED);
    return;
  }
  if (hd.tokenlen > 0 && hd.token[0] == NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY2) {
    rv = ngtcp2_crypto_verify_retry_token2(
        &odcid, hd.token, hd.tokenlen, ep->secret, sizeof(ep->secret),
        hd.version, (const ngtcp2_sockaddr *)&ss, sa_len(from), &hd.dcid,
        60 * NGTCP2_SECONDS, wall_ns());
    if (rv == 0) {
      ep->stats.retry_ok++;
      podcid = &odcid;
      token_type = NGTCP2_TOKEN_TYPE_RETRY;
    } else {
      ep->stats.retry_fail++;
      if (rv == NGTCP2_CRYPTO_ERR_VERIFY_TOKEN) {
        send_close_stateless(ep, &hd, from, NGTCP2_INVALID_TOKEN);
        return;
      }
      /* Unreadable: as if there were no token. */
      hd.token = NULL;
      hd.tokenlen = 0;
    }
  } else if (hd.tokenlen > 0) {
    hd.token = NULL; /* not ours or not a Retry token: ignore it */
    hd.tokenlen = 0;
  }
  if (!podcid && ep->cfg.retry && hd.type == NGTCP2_PKT_INITIAL) {
    send_retry(ep, &hd, from);
    return;
  }

  /* Handshakes in progress have bounds of their own, overall and per
   * source (a source is proven by the Retry token when Retry is on), so
   * that nobody can fill the table with handshakes that never finish. */
  if (!half_open_allowed(ep, from)) {
    ep->stats.refused_half_open++;
    send_close_stateless(ep, &hd, from, NGTCP2_CONNECTION_REFUSED);
    return;
  }
  c = conn_alloc(ep, from, 1);
  if (!c)
    return;
  if (half_open_start(c, from) < 0)
    goto fail;
  settings_init(ep, &settings, from);
  settings.token = hd.token;
  settings.tokenlen = hd.tokenlen;
  settings.token_type = token_type;
  params_init(ep, &params);
  params.original_dcid = podcid ? *podcid : hd.dcid;
  params.original_dcid_present = 1;
  if (podcid) {
    params.retry_scid = hd.dcid;
    params.retry_scid_present = 1;
  }
  scid.datalen = QUIC_SCID_LEN;
  do
    fill_random(scid.data, scid.datalen);
  while (cidmap_find(ep, scid.data, scid.datalen));
  if (ngtcp2_crypto_generate_stateless_reset_token(
          params.stateless_reset_token, ep->secret, sizeof(ep->secret),
          &scid) != 0)
    goto fail;
  params.stateless_reset_token_present = 1;
  path.local.addr = (ngtcp2_sockaddr *)&ep->local;
  path.local.addrlen = sa_len((struct sockaddr *)&ep->local);
  path.remote.addr = (ngtcp2_sockaddr *)&c->remote;
  path.remote.addrlen = sa_len(from);
  path.user_data = NULL;
  rv = ngtcp2_conn_server_new(&c->conn, &hd.scid, &scid, &path, hd.version,
                              &cbs, &settings, &params, NULL, c);
  if (rv != 0)
    goto fail;
  if (conn_attach_tls(c, ep->server_tls, NULL) < 0)
    goto fail;
  if (cidmap_add(c, &scid) < 0 || cidmap_add(c, &hd.dcid) < 0)
    goto fail;
  if (ep->cfg.cbs && ep->cfg.cbs->accept_cb &&
      ep->cfg.cbs->accept_cb(ep, c, ep->cfg.ud) != 0)
    goto fail;
  conn_read(c, d, n, from);
  return;
fail:
  conn_abandon(c);
}

/* Tells a client whose connection this endpoint does not know (after a
 * restart) that it is gone (RFC 9000 10.3): smaller than the packet that
 * caused it, and rate-limited. */
static void send_stateless_reset(struct quic_endpoint *ep,
                                 const ngtcp2_version_cid *vc, size_t n,
                                 const struct sockaddr *from)
{
  uint8_t buf[64], token[NGTCP2_STATELESS_RESET_TOKENLEN], rnd[40];
  ngtcp2_cid cid;
  size_t randlen;
  ngtcp2_ssize k;
  uint64_t now = uv_now(ep->loop);

  if (vc->dcidlen != QUIC_SCID_LEN ||
      n < 1 + NGTCP2_MIN_STATELESS_RESET_RANDLEN +
              NGTCP2_STATELESS_RESET_TOKENLEN + 1)
    return;
  if (now - ep->reset_window_ms >= 1000) {
    ep->reset_window_ms = now;
    ep->resets_in_window = 0;
  }
  if (++ep->resets_in_window > 100)
    return;
  randlen = n - 1 - NGTCP2_STATELESS_RESET_TOKENLEN - 1;
  if (randlen > sizeof(rnd))
    randlen = sizeof(rnd);
  ngtcp2_cid_init(&cid, vc->dcid, vc->dcidlen);
  if (ngtcp2_crypto_generate_stateless_reset_token(
          token, ep->secret, sizeof(ep->secret), &cid) != 0)
    return;
  fill_random(rnd, randlen);
  k = ngtcp2_pkt_write_stateless_reset(buf, sizeof(buf), token, rnd, randlen);
  if (k > 0) {
    ep->stats.resets_sent++;
    ep_send(ep, from, buf, (size_t)k);
  }
}

/* A short-header datagram that no connection's ID matches may be a
 * stateless reset (RFC 9000 10.3) from the server of one of our client
 * connections: random bytes ending in a token that only that server can
 * make. Each client connection to that address is asked (ngtcp2 compares
 * the token; a packet that is not its own changes nothing there); the one
 * whose token it is drains and ends. Returns 1 if the datagram was one. */
static int is_stateless_reset(struct quic_endpoint *ep, const uint8_t *d,
                              size_t n, const struct sockaddr *from)
{
  struct sockaddr_storage remote, local;
  ngtcp2_path path;
  ngtcp2_pkt_info pi = { 0 };
  struct quic_conn *c;
  int rv;

  if (n < 1 + NGTCP2_MIN_STATELESS_RESET_RANDLEN +
              NGTCP2_STATELESS_RESET_TOKENLEN)
    return 0;
  for (c = ep->conns; c && !c->server; c = c->next) {
    if (c->dying || c->in_ngtcp2 || !c->handshake_done ||
        !sa_equal(from, &c->remote.sa))
      continue;
    read_path(c, from, &path, &remote, &local);
    c->in_ngtcp2 = 1;
    rv = ngtcp2_conn_read_pkt(c->conn, &path, &pi, d, n, now_ns());
    c->in_ngtcp2 = 0;
    if (rv == NGTCP2_ERR_DRAINING || ngtcp2_err_is_fatal(rv)) {
      conn_read_error(c, rv);
      return 1;
    }
  }
  return 0;
}

static void handle_datagram(struct quic_endpoint *ep, const uint8_t *d,
                            size_t n, const struct sockaddr *from)
{
  ngtcp2_version_cid vc;
  struct quic_conn *c;
  int rv;

  ep->stats.rx_packets++;
  ep->stats.rx_bytes += n;
  rv = ngtcp2_pkt_decode_version_cid(&vc, d, n, QUIC_SCID_LEN);
  if (rv == NGTCP2_ERR_VERSION_NEGOTIATION) {
    if (ep->server_tls)
      send_version_negotiation(ep, &vc, from);
    return;
  }
  if (rv != 0)
    goto not_quic;
  c = cidmap_find(ep, vc.dcid, vc.dcidlen);
  if (c) {
    conn_read(c, d, n, from);
    return;
  }
  if (!(d[0] & 0x80)) {
    /* A short header of no connection here. */
    if (is_stateless_reset(ep, d, n, from))
      return;
    if (ep->cfg.stateless_reset)
      send_stateless_reset(ep, &vc, n, from);
    else
      goto not_quic;
    return;
  }
  if (ep->server_tls && vc.version == NGTCP2_PROTO_VER_V1)
    accept_conn(ep, d, n, from);
  return;
not_quic:
  if (ep->cfg.cbs && ep->cfg.cbs->packet_cb)
    ep->cfg.cbs->packet_cb(ep, d, n, from, ep->cfg.ud);
}

/* UDP receive offload: the kernel may hand several datagrams of one
 * sender as one read, all of the size in the UDP_GRO control message but
 * the last (a burst another host sent with UDP_SEGMENT arrives that way,
 * uncut, through veths, NATs and forwarding). One read then stands for
 * many, which is the receive side of what UDP_SEGMENT saves the sender. */
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define RECV_ROUNDS 4 /* recvmmsg calls per wakeup: other watchers get a turn */

static void recv_io_cb(uv_poll_t *h, int status, int events)
{
  struct quic_endpoint *ep = h->data;
  struct mmsghdr mm[RECV_BATCH];
  struct iovec iov[RECV_BATCH];
  struct sockaddr_storage from[RECV_BATCH];
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl[RECV_BATCH];
  int n, rounds = 0;
  (void)events;

  if (status < 0) {
    /* libuv stops the watcher on an error condition (a pending socket
     * error): take the error off the socket and watch again, or every
     * later packet would go unread. */
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(ep->rfd, SOL_SOCKET, SO_ERROR, &err, &len);
    for (int i = 0; i < 64; i++) { /* and an error queue (IP_RECVERR) */
      char cbuf[512];
      struct msghdr mh = { .msg_control = cbuf,
                           .msg_controllen = sizeof(cbuf) };
      if (recvmsg(ep->rfd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
        break;
    }
    ep->stats.rx_errors++;
    log_warnx("quic: UDP socket: %s", err ? strerror(err)
                                          : uv_strerror(status));
    if (!ep->closing)
      uv_poll_start(&ep->rpoll, UV_READABLE, recv_io_cb);
    return;
  }
  do {
    memset(mm, 0, sizeof(mm));
    for (int i = 0; i < RECV_BATCH; i++) {
      iov[i].iov_base = ep->rbuf + (size_t)i * RECV_SLICE;
      iov[i].iov_len = RECV_SLICE;
      mm[i].msg_hdr.msg_name = &from[i];
      mm[i].msg_hdr.msg_namelen = sizeof(from[i]);
      mm[i].msg_hdr.msg_iov = &iov[i];
      mm[i].msg_hdr.msg_iovlen = 1;
      mm[i].msg_hdr.msg_control = ctl[i].buf;
      mm[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
    }
    do
      n = recvmmsg(ep->rfd, mm, RECV_BATCH, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      /* EAGAIN: drained. Anything else (an ICMP error queued on the
       * socket, say) is reported once per read and the next read goes on. */
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        ep->stats.rx_errors++;
      return;
    }
    for (int i = 0; i < n && !ep->closing; i++) {
      const uint8_t *d = iov[i].iov_base;
      size_t len = mm[i].msg_len, seg = len;
      struct cmsghdr *cm;

      if (mm[i].msg_hdr.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        ep->stats.rx_errors++;
        continue;
      }
      for (cm = CMSG_FIRSTHDR(&mm[i].msg_hdr); cm;
           cm = CMSG_NXTHDR(&mm[i].msg_hdr, cm)) {
        int gso;
        if (cm->cmsg_level != SOL_UDP || cm->cmsg_type != UDP_GRO ||
            cm->cmsg_len < CMSG_LEN(sizeof(int)))
          continue;
        memcpy(&gso, CMSG_DATA(cm), sizeof(gso));
        if (gso > 0 && (size_t)gso < len)
          seg = (size_t)gso;
      }
      if (seg < len)
        ep->stats.gro_reads++;
      for (size_t off = 0; off < len && !ep->closing; off += seg)
        handle_datagram(ep, d + off, len - off < seg ? len - off : seg,
                        (const struct sockaddr *)&from[i]);
    }
  } while (n == RECV_BATCH && !ep->closing && ++rounds < RECV_ROUNDS);
}

/* --- public API ---------------------------------------------------------- */

/* Starts the receive path on the bound socket: UDP_GRO where the kernel
 * has it (without it reads are single datagrams, as before), and a
 * readable watcher on a duplicate descriptor. */
static int ep_recv_start(struct quic_endpoint *ep)
{
  uv_os_fd_t fd;
  int one = 1, rv;

  rv = uv_fileno((uv_handle_t *)&ep->udp, &fd);
  if (rv < 0)
    return rv;
  if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0)
    log_debug("quic: no UDP receive offload here (%s)", strerror(errno));
  ep->rfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (ep->rfd < 0)
    return -errno;
  rv = uv_poll_init_socket(ep->loop, &ep->rpoll, ep->rfd);
  if (rv < 0) {
    close(ep->rfd);
    ep->rfd = -1;
    return rv;
  }
  ep->rpoll.data = ep;
  ep->open_handles++;
  return uv_poll_start(&ep->rpoll, UV_READABLE, recv_io_cb);
}

/* The socket and the two flush handles: freed when all are closed. */
static void ep_free_cb(uv_handle_t *h)
{
  struct quic_endpoint *ep = h->data;
  if (--ep->open_handles == 0) {
    if (ep->rfd >= 0)
      close(ep->rfd);
    free(ep->rbuf);
    free(ep);
  }
}

int quic_endpoint_new(struct quic_endpoint **out, uv_loop_t *loop,
                      const struct sockaddr *bind,
                      const struct quic_endpoint_config *cfg)
{
  struct quic_endpoint *ep;
  int namelen = sizeof(struct sockaddr_storage), rv, sz = 4 * 1024 * 1024;

  *out = NULL;
  ep = calloc(1, sizeof(*ep));
  if (!ep)
    return -ENOMEM;
  ep->loop = loop;
  ep->cfg = *cfg;
  if (!ep->cfg.max_conns)
    ep->cfg.max_conns = 4096;
  if (!ep->cfg.virtual_max_udp_payload)
    ep->cfg.virtual_max_udp_payload = QUIC_VIRTUAL_MAX_UDP_PAYLOAD;
  if (!ep->cfg.idle_timeout_ms)
    ep->cfg.idle_timeout_ms = 30000;
  if (!ep->cfg.handshake_timeout_ms)
    ep->cfg.handshake_timeout_ms = ep->cfg.server_tls ? 4000 : 10000;
  if (!ep->cfg.max_half_open)
    ep->cfg.max_half_open = 1024;
  if (!ep->cfg.max_half_open_per_source)
    ep->cfg.max_half_open_per_source = 64;
  if (!ep->cfg.cid_rotate_ms)
    ep->cfg.cid_rotate_ms = QUIC_CID_ROTATE_MS;
  if (cfg->server_tls)
    ep->server_tls = tls_ctx_ref(cfg->server_tls);
  if (cfg->secret)
    memcpy(ep->secret, cfg->secret, sizeof(ep->secret));
  else
    fill_random(ep->secret, sizeof(ep->secret));
  fill_random(&ep->hash_seed, sizeof(ep->hash_seed));
  ep->rfd = -1;
  ep->rbuf = malloc(RECV_BATCH * RECV_SLICE);
  if (!ep->rbuf) {
    tls_ctx_unref(ep->server_tls);
    free(ep);
    return -ENOMEM;
  }
  uv_udp_init_ex(loop, &ep->udp, AF_UNSPEC);
  ep->udp.data = ep;
  uv_check_init(loop, &ep->flush);
  ep->flush.data = ep;
  uv_check_start(&ep->flush, flush_cb);
  uv_unref((uv_handle_t *)&ep->flush); /* keeps no loop alive */
  uv_prepare_init(loop, &ep->flush_pre);
  ep->flush_pre.data = ep;
  uv_prepare_start(&ep->flush_pre, flush_pre_cb);
  uv_unref((uv_handle_t *)&ep->flush_pre);
  ep->open_handles = 3;
  rv = uv_udp_bind(&ep->udp, bind, 0);
  if (rv < 0)
    goto fail;
  rv = ep_recv_start(ep);
  if (rv < 0)
    goto fail;
  rv = uv_udp_getsockname(&ep->udp, (struct sockaddr *)&ep->local, &namelen);
  if (rv < 0)
    goto fail;
  ep->local_alt = ep->local;
  if (ep->local.ss_family == AF_INET6)
    ((struct sockaddr_in6 *)&ep->local_alt)->sin6_port ^= htons(1);
  else
    ((struct sockaddr_in *)&ep->local_alt)->sin_port ^= htons(1);
  /* Bigger socket buffers ride out bursts; the kernel caps them. */
  uv_recv_buffer_size((uv_handle_t *)&ep->udp, &sz);
  sz = 4 * 1024 * 1024;
  uv_send_buffer_size((uv_handle_t *)&ep->udp, &sz);
  *out = ep;
  return 0;
fail:
  tls_ctx_unref(ep->server_tls);
  ep->server_tls = NULL;
  ep->cfg.cbs = NULL;
  ep->closing = 1;
  if (ep->rfd >= 0)
    uv_close((uv_handle_t *)&ep->rpoll, ep_free_cb);
  uv_close((uv_handle_t *)&ep->flush, ep_free_cb);
  uv_close((uv_handle_t *)&ep->flush_pre, ep_free_cb);
  uv_close((uv_handle_t *)&ep->udp, ep_free_cb);
  return rv;
}

void quic_endpoint_del(struct quic_endpoint *ep)
{
  if (!ep)
    return;
  while (ep->conns) {
    struct quic_conn *c = ep->conns;
    c->info.local = 1;
    c->info.err = ZTNA_ERR_CLOSED;
    snprintf(c->info.reason, sizeof(c->info.reason), "endpoint closed");
    conn_destroy(c);
  }
  for (size_t i = 0; i < CIDMAP_BUCKETS; i++)
    while (ep->map[i]) {
      struct cident *e = ep->map[i];
      ep->map[i] = e->next;
      free(e);
    }
  tls_ctx_unref(ep->server_tls);
  ep->server_tls = NULL;
  ep->closing = 1;
  uv_close((uv_handle_t *)&ep->rpoll, ep_free_cb);
  uv_close((uv_handle_t *)&ep->flush, ep_free_cb);
  uv_close((uv_handle_t *)&ep->flush_pre, ep_free_cb);
  uv_close((uv_handle_t *)&ep->udp, ep_free_cb);
}

int quic_endpoint_local_addr(struct quic_endpoint *ep,
                             struct sockaddr_storage *out)
{
  *out = ep->local;
  return 0;
}

void quic_endpoint_set_server_tls(struct quic_endpoint *ep,
                                  struct tls_ctx *tls)
{
  tls_ctx_ref(tls);
  tls_ctx_unref(ep->server_tls);
  ep->server_tls = tls;
}

const struct quic_stats *quic_endpoint_stats(struct quic_endpoint *ep)
{
  return &ep->stats;
}

/* One counter of the endpoint's, named prefix + name. */
static void ep_metric(struct metrics *m, const char *prefix, const char *name,
                      const char *labels, const char *help, uint64_t v)
{
  char full[96];

  snprintf(full, sizeof(full), "%s%s", prefix, name);
  metric_set(metrics_counter(m, full, labels, help), (int64_t)v);
}

void quic_endpoint_metrics(struct quic_endpoint *ep, struct metrics *m,
                           const char *prefix)
{
  const struct quic_stats *s = &ep->stats;

  ep_metric(m, prefix, "udp_packets_total", "direction=\"rx\"",
            "UDP datagrams (GRO segments counted one by one)", s->rx_packets);
  ep_metric(m, prefix, "udp_packets_total", "direction=\"tx\"",
            "UDP datagrams (GRO segments counted one by one)", s->tx_packets);
  ep_metric(m, prefix, "udp_bytes_total", "direction=\"rx\"",
            "UDP payload bytes", s->rx_bytes);
  ep_metric(m, prefix, "udp_bytes_total", "direction=\"tx\"",
            "UDP payload bytes", s->tx_bytes);
  ep_metric(m, prefix, "udp_send_errors_total", NULL,
            "UDP datagrams the socket would not take (dropped)",
            s->udp_send_errors);
  ep_metric(m, prefix, "udp_receive_errors_total", NULL,
            "Failed or truncated socket reads", s->rx_errors);
  ep_metric(m, prefix, "udp_gso_sends_total", NULL,
            "Sends that carried several datagrams (UDP_SEGMENT)",
            s->gso_sends);
  ep_metric(m, prefix, "udp_gro_reads_total", NULL,
            "Reads that returned several datagrams (UDP_GRO)", s->gro_reads);
  ep_metric(m, prefix, "quic_datagrams_dropped_total",
            "reason=\"too_large\"",
            "QUIC DATAGRAMs not sent: larger than the path carries, the "
            "send queue full, or refused by the QUIC stack",
            s->dgram_too_large);
  ep_metric(m, prefix, "quic_datagrams_dropped_total",
            "reason=\"queue_full\"", NULL, s->dgram_queue_full);
  ep_metric(m, prefix, "quic_datagrams_dropped_total",
            "reason=\"rejected\"", NULL, s->dgram_rejected);
  ep_metric(m, prefix, "quic_stateless_resets_sent_total", NULL,
            "Stateless resets sent for packets of unknown connections",
            s->resets_sent);
}

size_t quic_endpoint_conn_count(struct quic_endpoint *ep)
{
  return ep->nconns;
}

size_t quic_endpoint_half_open(struct quic_endpoint *ep)
{
  return ep->half_open;
}

int quic_endpoint_idle(struct quic_endpoint *ep)
{
  return ep->nconns == 0 && ep->send_pending == 0;
}

size_t quic_endpoint_close_all(struct quic_endpoint *ep, uint64_t code,
                               const char *reason)
{
  size_t n = 0;

  while (ep->conns) {
    quic_conn_close(ep->conns, code, reason);
    n++;
  }
  return n;
}

int quic_connect(struct quic_conn **out, struct quic_endpoint *ep,
                 struct tls_ctx *tls, const struct sockaddr *remote,
                 const char *sni, const struct quic_conn_cbs *cbs, void *ud)
{
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  ngtcp2_callbacks ncb = callbacks_template;
  ngtcp2_cid dcid, scid;
  ngtcp2_path path;
  struct sockaddr_storage vlocal;
  struct quic_conn *c;
  uint64_t vid;
  int rv;

  *out = NULL;
  if (ep->nconns >= ep->cfg.max_conns)
    return ZTNA_ERR_LIMIT;
  c = conn_alloc(ep, remote, 0);
  if (!c)
    return -ENOMEM;
  settings_init(ep, &settings, remote);
  params_init(ep, &params);
  if (!strcmp(tls_ctx_alpn(tls), TLS_ALPN_H3)) {
    params_h3(&params);
    c->h3 = 1;
  }
  dcid.datalen = 18;
  fill_random(dcid.data, dcid.datalen);
  scid.datalen = QUIC_SCID_LEN;
  do
    fill_random(scid.data, scid.datalen);
  while (cidmap_find(ep, scid.data, scid.datalen));
  if (quic_addr_virtual(remote, &vid)) {
    quic_virtual_addr(&vlocal, vid, QUIC_VIRTUAL_LOCAL_PORT);
    path.local.addr = (ngtcp2_sockaddr *)&vlocal;
  } else {
    path.local.addr = (ngtcp2_sockaddr *)&ep->local;
  }
  path.local.addrlen = sa_len((struct sockaddr *)path.local.addr);
  path.remote.addr = (ngtcp2_sockaddr *)&c->remote;
  path.remote.addrlen = sa_len(remote);
  path.user_data = NULL;
  rv = ngtcp2_conn_client_new(&c->conn, &dcid, &scid, &path,
                              NGTCP2_PROTO_VER_V1, &ncb, &settings, &params,
                              NULL, c);
  if (rv != 0) {
    rv = ZTNA_ERR_QUIC;
    goto fail;
  }
  rv = conn_attach_tls(c, tls, sni);
  if (rv < 0)
    goto fail;
  rv = cidmap_add(c, &scid);
  if (rv < 0)
    goto fail;
  if (ep->cfg.keepalive_ms)
    ngtcp2_conn_set_keep_alive_timeout(
        c->conn, ep->cfg.keepalive_ms * NGTCP2_MILLISECONDS);
  c->cbs = cbs;
  c->ud = ud;
  *out = c;
  conn_write(c);
  return 0;
fail:
  conn_abandon(c);
  return rv;
}

void quic_endpoint_set_virtual_max(struct quic_endpoint *ep, size_t n)
{
  if (n < 1200)
    n = 1200;
  if (n > QUIC_MAX_UDP_PAYLOAD)
    n = QUIC_MAX_UDP_PAYLOAD;
  ep->cfg.virtual_max_udp_payload = n;
}

void quic_endpoint_input(struct quic_endpoint *ep, const uint8_t *d, size_t n,
                         const struct sockaddr *from)
{
  if (n == 0 || !quic_addr_virtual(from, NULL))
    return;
  ep->stats.vrx_packets++;
  handle_datagram(ep, d, n, from);
}

int quic_conn_migrate(struct quic_conn *c, const struct sockaddr *remote,
                      int validate)
{
  const ngtcp2_path *cur;
  struct sockaddr_storage local, rem;
  ngtcp2_path path;
  uint64_t id;
  int rv;

  if (c->server || c->dying || !c->handshake_done)
    return ZTNA_ERR_STATE;
  cur = ngtcp2_conn_get_path(c->conn);
  if (sa_equal(cur->remote.addr, remote))
    return 0; /* there already */
  if (quic_addr_virtual(remote, &id))
    quic_virtual_addr(&local, id, QUIC_VIRTUAL_LOCAL_PORT);
  else if (quic_addr_virtual(cur->local.addr, NULL))
    sa_copy(&local, (struct sockaddr *)&c->ep->local);
  else
    conn_local(c, 1, &local); /* a real path to a new peer address */
  sa_copy(&rem, remote);
  path.local.addr = (ngtcp2_sockaddr *)&local;
  path.local.addrlen = sa_len((struct sockaddr *)&local);
  path.remote.addr = (ngtcp2_sockaddr *)&rem;
  path.remote.addrlen = sa_len(remote);
  path.user_data = NULL;
  c->in_ngtcp2 = 1;
  rv = validate
           ? ngtcp2_conn_initiate_migration(c->conn, &path, now_ns())
           : ngtcp2_conn_initiate_immediate_migration(c->conn, &path,
                                                      now_ns());
  c->in_ngtcp2 = 0;
  if (rv != 0) {
    log_debug("quic: migration refused: %s", ngtcp2_strerror(rv));
    if (ngtcp2_err_is_fatal(rv)) {
      ngtcp2_ccerr cc;
      fill_close_info(c, rv);
      ngtcp2_ccerr_set_liberr(&cc, rv, NULL, 0);
      conn_fail(c, &cc);
      return ZTNA_ERR_CLOSED;
    }
    return ZTNA_ERR_STATE;
  }
  sa_copy(&c->mig_local, (struct sockaddr *)&local);
  sa_copy(&c->mig_remote, remote);
  check_path(c);
  if (!c->dying)
    conn_write_soon(c);
  return 0;
}

int quic_conn_path_virtual(struct quic_conn *c)
{
  const ngtcp2_path *p = ngtcp2_conn_get_path(c->conn);
  return p->remote.addr && quic_addr_virtual(p->remote.addr, NULL);
}

void quic_conn_set_cbs(struct quic_conn *c, const struct quic_conn_cbs *cbs,
                       void *ud)
{
  c->cbs = cbs;
  c->ud = ud;
}

void *quic_conn_ud(struct quic_conn *c)
{
  return c->ud;
}

int quic_conn_is_server(struct quic_conn *c)
{
  return c->server;
}

int quic_conn_handshake_done(struct quic_conn *c)
{
  return c->handshake_done;
}

const struct sockaddr *quic_conn_peer(struct quic_conn *c)
{
  return &c->remote.sa;
}

struct quic_endpoint *quic_conn_endpoint(struct quic_conn *c)
{
  return c->ep;
}

struct ngtcp2_conn *quic_conn_ngtcp2(struct quic_conn *c)
{
  return c->conn;
}

int quic_conn_peer_identity(struct quic_conn *c, struct tls_identity *id)
{
  if (!c->ssl)
    return -ENOENT; /* a server's session is gone after handshake_cb */
  return tls_peer_identity(c->ssl, id);
}

size_t quic_conn_dcid(struct quic_conn *c, uint8_t *out, size_t cap)
{
  const ngtcp2_cid *cid = ngtcp2_conn_get_dcid(c->conn);
  size_t n = cid->datalen < cap ? cid->datalen : cap;

  memcpy(out, cid->data, n);
  return n;
}

struct quic_conn *quic_endpoint_find_cid(struct quic_endpoint *ep,
                                         const uint8_t *cid, size_t len)
{
  struct quic_conn *c = len ? cidmap_find(ep, cid, len) : NULL;
  return c && !c->dying ? c : NULL;
}

int quic_conn_exporter(struct quic_conn *c, uint8_t *out)
{
  if (!c->has_exporter)
    return ZTNA_ERR_STATE;
  memcpy(out, c->exporter, QUIC_EXPORTER_LEN);
  return 0;
}

uint64_t quic_conn_silence_ms(struct quic_conn *c)
{
  ngtcp2_conn_info ci;
  uint64_t now = now_ns(), since;

  if (!c->handshake_done || c->dying)
    return 0;
  ngtcp2_conn_get_conn_info(c->conn, &ci);
  if (ci.bytes_in_flight == 0 || !c->waiting_since)
    return 0;
  /* Silent since the later of: the last packet heard, the moment we
   * started waiting for an answer. */
  since = c->last_rx > c->waiting_since ? c->last_rx : c->waiting_since;
  return now > since ? (now - since) / NGTCP2_MILLISECONDS : 0;
}

void quic_conn_set_keepalive(struct quic_conn *c, uint64_t ms)
{
  ngtcp2_conn_set_keep_alive_timeout(c->conn, ms ? ms * NGTCP2_MILLISECONDS
                                                 : UINT64_MAX);
}

uint64_t quic_conn_rtt_us(struct quic_conn *c)
{
  ngtcp2_conn_info ci;
  ngtcp2_conn_get_conn_info(c->conn, &ci);
  return ci.smoothed_rtt / 1000;
}

size_t quic_conn_max_datagram(struct quic_conn *c)
{
  const ngtcp2_transport_params *rp;
  size_t frame_max, pkt_max, pmtu, dcidlen;

  if (!c->handshake_done || c->dying)
    return 0;
  rp = ngtcp2_conn_get_remote_transport_params(c->conn);
  if (!rp || rp->max_datagram_frame_size < 4)
    return 0;
  /* Frame: type (1) + length varint (up to 2 for these sizes) + data. */
  frame_max = rp->max_datagram_frame_size > 65536
                  ? 65536 - 3
                  : (size_t)rp->max_datagram_frame_size - 3;
  /* Short header: flags (1) + DCID + packet number (up to 4) + AEAD tag
   * (16), then the frame header (3). */
  pmtu = ngtcp2_conn_get_path_max_tx_udp_payload_size(c->conn);
  dcidlen = ngtcp2_conn_get_dcid(c->conn)->datalen;
  if (pmtu < 1 + dcidlen + 4 + 16 + 3 + 1)
    return 0;
  pkt_max = pmtu - 1 - dcidlen - 4 - 16 - 3;
  return frame_max < pkt_max ? frame_max : pkt_max;
}

int quic_conn_send_datagramv(struct quic_conn *c, const struct iovec *iov,
                             int iovcnt)
{
  struct dgram *d;
  size_t len = 0, off = 0;

  if (c->dying || c->want_close)
    return ZTNA_ERR_CLOSED;
  if (!c->handshake_done)
    return ZTNA_ERR_STATE;
  for (int i = 0; i < iovcnt; i++)
    len += iov[i].iov_len;
  if (len == 0 || len > quic_conn_max_datagram(c)) {
    c->ep->stats.dgram_too_large++;
    return ZTNA_ERR_TOO_LARGE;
  }
  if (c->dq_len >= QUIC_DGRAM_QUEUE_MAX) {
    c->ep->stats.dgram_queue_full++;
    return ZTNA_ERR_QUEUE_FULL;
  }
  d = malloc(sizeof(*d) + len);
  if (!d)
    return -ENOMEM;
  d->next = NULL;
  d->len = len;
  for (int i = 0; i < iovcnt; i++) {
    memcpy(d->data + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  if (c->dq_tail)
    c->dq_tail->next = d;
  else
    c->dq_head = d;
  c->dq_tail = d;
  c->dq_len++;
  conn_write_soon(c);
  return 0;
}

int quic_conn_send_datagram(struct quic_conn *c, const uint8_t *d, size_t n)
{
  struct iovec v = { (void *)(uintptr_t)d, n };
  return quic_conn_send_datagramv(c, &v, 1);
}

size_t quic_conn_datagram_queued(struct quic_conn *c)
{
  return c->dq_len;
}

int quic_conn_open_stream(struct quic_conn *c, int64_t *sid)
{
  int rv;

  if (c->dying || c->want_close)
    return ZTNA_ERR_CLOSED;
  rv = ngtcp2_conn_open_bidi_stream(c->conn, sid, NULL);
  if (rv == NGTCP2_ERR_STREAM_ID_BLOCKED)
    return ZTNA_ERR_LIMIT;
  return rv == 0 ? 0 : ZTNA_ERR_QUIC;
}

int quic_conn_open_uni_stream(struct quic_conn *c, int64_t *sid)
{
  int rv;

  if (c->dying || c->want_close)
    return ZTNA_ERR_CLOSED;
  if (!c->h3)
    return ZTNA_ERR_STATE;
  rv = ngtcp2_conn_open_uni_stream(c->conn, sid, NULL);
  if (rv == NGTCP2_ERR_STREAM_ID_BLOCKED)
    return ZTNA_ERR_LIMIT;
  return rv == 0 ? 0 : ZTNA_ERR_QUIC;
}

void quic_conn_shutdown_stream(struct quic_conn *c, int64_t sid,
                               uint64_t code, int read, int write)
{
  const uint32_t flags = 0;

  if (c->dying || !c->conn)
    return;
  if (read && !write)
    ngtcp2_conn_shutdown_stream_read(c->conn, flags, sid, code);
  else if (write && !read)
    ngtcp2_conn_shutdown_stream_write(c->conn, flags, sid, code);
  else if (read && write)
    ngtcp2_conn_shutdown_stream(c->conn, flags, sid, code);
  conn_write(c);
}

int quic_conn_is_h3(struct quic_conn *c)
{
  return c->h3;
}

void quic_conn_get_info(struct quic_conn *c, struct quic_conn_info *out)
{
  memset(out, 0, sizeof(*out));
  if (c->conn && !c->dying)
    out->rtt_us = quic_conn_rtt_us(c);
  out->rx_bytes = c->rx_bytes;
  out->tx_bytes = c->tx_bytes;
  out->age_ms = (now_ns() - c->created) / NGTCP2_MILLISECONDS;
}

size_t quic_conn_stream_room(struct quic_conn *c, int64_t sid)
{
  struct qstream *s = stream_find(c, sid);
  size_t used = s ? s->buffered : 0;
  return used >= QUIC_STREAM_BUF_MAX ? 0 : QUIC_STREAM_BUF_MAX - used;
}

int quic_conn_stream_send(struct quic_conn *c, int64_t sid, const uint8_t *d,
                          size_t n, int fin)
{
  struct qstream *s;
  struct chunk *k;

  if (c->dying || c->want_close)
    return ZTNA_ERR_CLOSED;
  s = stream_find(c, sid);
  if (!s) {
    s = calloc(1, sizeof(*s));
    if (!s)
      return -ENOMEM;
    s->id = sid;
    s->next = c->streams;
    c->streams = s;
  }
  if (s->fin)
    return ZTNA_ERR_STATE;
  if (s->buffered + n > QUIC_STREAM_BUF_MAX)
    return ZTNA_ERR_QUEUE_FULL;
  if (n > 0) {
    k = malloc(sizeof(*k) + n);
    if (!k)
      return -ENOMEM;
    k->next = NULL;
    k->off = s->end;
    k->len = n;
    memcpy(k->data, d, n);
    if (s->tail)
      s->tail->next = k;
    else
      s->head = k;
    s->tail = k;
    if (!s->cur) {
      s->cur = k;
      s->cur_off = 0;
    }
    s->end += n;
    s->buffered += n;
  }
  s->fin = fin;
  conn_write(c);
  return 0;
}

void quic_conn_close(struct quic_conn *c, uint64_t code, const char *reason)
{
  if (c->dying)
    return;
  c->close_code = code;
  snprintf(c->info.reason, sizeof(c->info.reason), "%s",
           reason ? reason : "");
  if (c->in_ngtcp2) {
    c->want_close = 1;
    return;
  }
  do_app_close(c);
}
