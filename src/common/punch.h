/* punch.h - ICE-style connectivity checks between an agent and a connector
 * (protocol.md 5), sans I/O.
 *
 * Each side gathers its candidates (punch_gather: every usable local
 * address of the shared socket, and the address the intermediate observed),
 * swaps them through the intermediate, and after StartPunching sends
 * binding requests from the same socket that carries its relay connection,
 * so the NAT mappings the checks open are the ones the relay uses. Both
 * sides send checks (a connector behind NAT must open its own mapping);
 * both answer the peer's requests; the connector (controlled) learns
 * peer-reflexive candidates from them, the agent never does. The agent
 * controls: its first check that gets an answer wins.
 *
 * A punch bound to an end-to-end connection (protocol.md 10) is
 * authenticated (punch_set_auth): every check and answer it sends carries
 * a tag keyed from that connection's TLS exporter, and it takes only
 * tagged packets with a valid tag for its session, so a stranger (or an
 * intermediate that forges candidates) can neither answer a check nor
 * become a peer-reflexive candidate. An unbound punch (diag punch, original
 * agents) sends and takes the original untagged checks; it can only ever
 * produce a report, since a path is adopted only by QUIC path validation
 * of the end-to-end connection.
 *
 * Checks are paced every 20 ms, retransmitted after 100 ms doubling to at
 * most 1600 ms, 5 transmissions per pair; the check list gives up after
 * 5 s. Time comes in as milliseconds from the caller; packets leave through
 * the send callback.
 */
#ifndef ZTNA_PUNCH_H
#define ZTNA_PUNCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "wire.h"

#define PUNCH_MAX_PAIRS 32
#define PUNCH_PACE_MS 20
#define PUNCH_RTO_MS 100
#define PUNCH_RTO_MAX_MS 1600
#define PUNCH_TRANSMISSIONS 5
#define PUNCH_CHECK_TIMEOUT_MS 5000
#define PUNCH_TOTAL_TIMEOUT_MS 10000

/* Same family, address and port. */
int punch_addr_eq(const struct sockaddr *a, const struct sockaddr *b);
/* 0 for an address checks must never go to, whoever offers it: loopback,
 * link-local (the cloud metadata address among them), unspecified,
 * multicast and broadcast (IPv4-mapped IPv6 judged as IPv4); host
 * candidates on private LANs stay usable. Else 1. */
int punch_addr_usable(const struct sockaddr *sa);

/* RFC 8445 priorities (protocol.md 5). */
uint32_t punch_cand_priority(uint32_t type, int family);
uint64_t punch_pair_priority(uint32_t controlling, uint32_t controlled);

/* Fills cand with host candidates (every non-loopback, non-link-local
 * address of family (AF_INET/AF_INET6) on this machine, with port), the
 * server-reflexive one if observed is set, and the relay one (the
 * intermediate's address) if relay is set. Returns how many (at most
 * max). */
size_t punch_gather(struct wire_candidate *cand, size_t max, int family,
                    uint16_t port, const struct sockaddr *observed,
                    const struct sockaddr *relay);

enum punch_state { PUNCH_CHECKING, PUNCH_SUCCEEDED, PUNCH_FAILED };

enum pair_state { PAIR_WAITING, PAIR_PROGRESS, PAIR_SUCCEEDED, PAIR_FAILED };

struct punch_pair {
  struct sockaddr_storage remote;
  uint32_t remote_type;   /* WIRE_CAND_* */
  uint64_t priority;
  enum pair_state state;
  int tx;                 /* transmissions so far */
  uint64_t next_ms;       /* when the next transmission is due */
  uint64_t sent_ms;       /* the last transmission */
  uint8_t txn[12];
  uint32_t rtt_ms;        /* once succeeded */
  struct sockaddr_storage mapped; /* our address as the peer saw it */
  int has_mapped;
};

#define PUNCH_KEY_LEN 32

/* The key of an authenticated punch: HMAC-SHA256 keyed with the end-to-end
 * connection's exporter value (quic.h), over "ztna punch" and the session
 * id (8 bytes, big-endian); the session id and a connection ID the peer
 * knows the connection by go into our requests. */
struct punch_auth {
  int on;
  uint8_t key[PUNCH_KEY_LEN];
  uint64_t session;
  uint8_t cid[WIRE_CTL_CID_MAX];
  size_t cidlen;
};

int punch_key_derive(const uint8_t *root, uint64_t session, uint8_t *key);
/* Writes the tag over buf[0..n-16) into its last 16 bytes. */
void punch_auth_sign(const struct punch_auth *a, uint8_t *buf, size_t n);
/* 1 when c is an authenticated packet with a valid tag under a's key
 * (and, for a request, a's session); else 0. */
int punch_auth_verify(const struct punch_auth *a, const struct wire_ctl *c);

struct punch_io {
  /* One raw UDP datagram from the shared socket. */
  void (*send)(const struct sockaddr *to, const uint8_t *d, size_t n,
               void *ud);
  void *ud;
  /* The same with an IP TTL (hop limit) of ttl; NULL: no priming. */
  void (*send_ttl)(const struct sockaddr *to, const uint8_t *d, size_t n,
                   int ttl, void *ud);
};

/* Priming (protocol.md 5): a check that reaches a NAT before that side's
 * own first packet to the sender left makes a conntrack entry there
 * (plain Linux masquerade with no input filter keeps one for any packet
 * to itself) that then takes the port the mapping needs, and the side
 * behind it sends its checks from another port. So as soon as StartPunching
 * arrives, each side sends one binding request to every peer candidate
 * with a TTL that lets it out through its own NAT (creating the mapping)
 * but expires before the peer's; its checks begin after the start delay.
 * A peer that the primer does reach (same LAN) answers it like any
 * request, and the answer matches nothing. */
#define PUNCH_PRIME_TTL 2
void punch_prime(const struct punch_io *io, int family,
                 const struct wire_candidate *peer, size_t n,
                 const struct punch_auth *auth);

struct punch {
  struct punch_io io;
  int controlling;          /* the agent */
  int family;               /* of our socket */
  uint32_t local_priority;  /* of our host candidate */
  enum punch_state state;
  uint64_t start_ms, last_pace_ms;
  struct punch_pair pairs[PUNCH_MAX_PAIRS];
  size_t npairs;
  int winner;               /* index of the pair that won, -1 none */
  size_t refused;           /* peer candidates refused: punch_addr_usable */
  struct punch_auth auth;   /* on: authenticated */
  size_t rejected;          /* packets whose tag did not verify */
  char why[160];            /* why it failed */
};

/* Starts checks toward the peer's candidates (relay candidates are not
 * checked: the relay always works). family: of our socket. */
void punch_start(struct punch *p, const struct punch_io *io, int controlling,
                 int family, const struct wire_candidate *peer, size_t n,
                 uint64_t now_ms);
/* Makes the punch authenticated (call right after punch_start). */
void punch_set_auth(struct punch *p, const struct punch_auth *a);
/* Sends what is due; returns ms until it wants to run again (0: done). */
uint64_t punch_tick(struct punch *p, uint64_t now_ms);
/* A control packet that arrived on the shared socket. Returns 1 if it
 * belonged to this punch (a request answered or a response matched). */
int punch_input(struct punch *p, const struct wire_ctl *c,
                const struct sockaddr *from, uint64_t now_ms);
/* Answers to strangers' control packets are bounded: at most per_sec a
 * second. Returns 1 when this one may go. */
struct punch_rate {
  uint64_t window_ms;
  unsigned n;
};
int punch_rate_ok(struct punch_rate *r, unsigned per_sec, uint64_t now_ms);

/* Answers a binding request with our view of its source (also when no
 * punch is running for it: the answer only tells the asker its own
 * address). An authenticated request is answered, tagged, only when auth
 * verifies it; an untagged one untagged. Returns 1 when it answered. */
int punch_answer(const struct punch_io *io, const struct wire_ctl *req,
                 const struct sockaddr *from, const struct punch_auth *auth);

#endif
