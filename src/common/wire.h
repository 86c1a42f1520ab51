/* wire.h - sans-IO encode/decode of every ztna message (protocol.md 2, 4, 5).
 *
 * Nothing here touches sockets, clocks or memory it was not given. Encoders
 * take a buffer and its capacity and return the number of bytes written or
 * ZTNA_ERR_TOO_LARGE. Decoders take untrusted bytes, never read past n, and
 * return 0 or a negative ZTNA_ERR_* code. Pointers a decoder returns point
 * into its input and live as long as the input does.
 */
#ifndef ZTNA_WIRE_H
#define ZTNA_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* DATAGRAM type bytes on relay connections (section 2). */
/* Application close code of a connection an administrator ended (DELETE
 * /v1/peers/..., docs/api.md); the peer may connect again. */
#define WIRE_CLOSE_ADMIN 3
#define WIRE_QAD_V4 0x01
#define WIRE_QAD_V6 0x02
#define WIRE_REG_AGENT 0x10
#define WIRE_REG_CONNECTOR 0x11
#define WIRE_REG_ACK 0x12
#define WIRE_REG_NACK 0x13
#define WIRE_ROUTED 0x2f
/* ztna extension, intermediate to connector: the agent behind a translated
 * address is gone (an original connector ignores the unknown type). */
#define WIRE_AGENT_GONE 0x30
/* ztna extension: relay sessions, the opaque carriage of an agent's
 * end-to-end QUIC connection to a connector (protocol.md 10). */
#define WIRE_SESSION_OPEN 0x31   /* agent -> intermediate */
#define WIRE_SESSION_OPENED 0x32 /* intermediate -> agent */
#define WIRE_SESSION_DATA 0x33   /* both ways, forwarded unchanged */
#define WIRE_SESSION_CLOSED 0x34 /* either way */
/* ztna extension inside an end-to-end connection only (agent to
 * connector): "the punch with this session id is mine", so the connector
 * can key that punch's checks from this connection (protocol.md 10). */
#define WIRE_PUNCH_BIND 0x35
#define WIRE_PUNCH_BIND_LEN 9
/* ztna extension inside an end-to-end connection only (connector to
 * agent): the services this connection may carry (protocol.md 10). */
#define WIRE_SERVICES 0x36
/* ztna extension, intermediate to a connector that takes relay sessions,
 * on its connection for the service: the agent with this certificate
 * (SHA-256) may no longer reach it (protocol.md 10): 37 | fp (32). */
#define WIRE_REVOKED 0x37
#define WIRE_REVOKED_LEN 33

#define WIRE_NACK_INVALID 0x01
#define WIRE_NACK_DENIED 0x02

#define WIRE_SERVICE_ID_MAX 255
#define WIRE_QAD_V4_LEN 7
#define WIRE_QAD_V6_LEN 19
#define WIRE_AGENT_GONE_V4_LEN 6
#define WIRE_AGENT_GONE_V6_LEN 18

enum wire_kind {
  WIRE_KIND_UNKNOWN = 0,
  WIRE_KIND_QAD,
  WIRE_KIND_REGISTER,
  WIRE_KIND_ACK,
  WIRE_KIND_NACK,
  WIRE_KIND_ROUTED,
  WIRE_KIND_IPV4,
  WIRE_KIND_IPV6,
  WIRE_KIND_AGENT_GONE,
  WIRE_KIND_SESSION_OPEN,
  WIRE_KIND_SESSION_OPENED,
  WIRE_KIND_SESSION_DATA,
  WIRE_KIND_SESSION_CLOSED,
  WIRE_KIND_PUNCH_BIND,
  WIRE_KIND_SERVICES,
  WIRE_KIND_REVOKED,
};

/* What a relay DATAGRAM is, from its first byte. An empty one is UNKNOWN. */
enum wire_kind wire_classify(const uint8_t *p, size_t n);

/* Returns 1 when p[0..n) is valid UTF-8 (no overlongs, surrogates or code
 * points above U+10FFFF), else 0. */
int wire_utf8_valid(const uint8_t *p, size_t n);

/* QAD: 0x01 for IPv4 (7 bytes) or 0x02 for IPv6 (19 bytes); an IPv4-mapped
 * IPv6 address is sent as IPv4. Decode fills a sockaddr_in/sockaddr_in6 in
 * out; bytes after the message are ignored. */
int wire_qad_encode(uint8_t *buf, size_t cap, const struct sockaddr *sa);
int wire_qad_decode(const uint8_t *p, size_t n, struct sockaddr_storage *out);

/* Registration 0x10/0x11. Decode results:
 *   0                  valid; *type, *id, *idlen set
 *   ZTNA_ERR_SHORT     too short for its length byte: drop, no answer
 *   ZTNA_ERR_MALFORMED empty id: NACK 01 (id/idlen set, idlen 0)
 *   ZTNA_ERR_UTF8      id is not UTF-8: NACK 01 echoing the bytes received
 * Bytes after the id are ignored. */
int wire_register_encode(uint8_t *buf, size_t cap, uint8_t type,
                         const void *id, size_t idlen);
int wire_register_decode(const uint8_t *p, size_t n, uint8_t *type,
                         const uint8_t **id, size_t *idlen);

/* ACK 0x12 (status 0) and NACK 0x13 (status 1 or 2). */
int wire_status_encode(uint8_t *buf, size_t cap, uint8_t type, uint8_t status,
                       const void *id, size_t idlen);
int wire_status_decode(const uint8_t *p, size_t n, uint8_t *type,
                       uint8_t *status, const uint8_t **id, size_t *idlen);

/* Service-routed packet 0x2F: header encode returns 2 + idlen; the IP packet
 * follows it. Decode requires a non-empty id and a non-empty packet. */
int wire_routed_encode_header(uint8_t *buf, size_t cap, const void *id,
                              size_t idlen);
int wire_routed_decode(const uint8_t *p, size_t n, const uint8_t **id,
                       size_t *idlen, const uint8_t **pkt, size_t *pktlen);

/* Agent gone 0x30: `30 | 04 | IPv4 (4)` or `30 | 06 | IPv6 (16)`, the
 * address the intermediate translated that agent to. family is 4 or 6;
 * decode takes the exact length only and fills addr (16 bytes room). */
int wire_agent_gone_encode(uint8_t *buf, size_t cap, int family,
                           const uint8_t *addr);
int wire_agent_gone_decode(const uint8_t *p, size_t n, int *family,
                           uint8_t *addr);

/* Registration trailer (ztna): a connector that takes relay sessions
 * appends `7A | flags` after the service id; an original intermediate
 * ignores bytes after the id. Returns the flags, 0 when there is none. */
#define WIRE_REG_EXT_MAGIC 0x7a
#define WIRE_REG_FLAG_SESSIONS 0x01
uint8_t wire_register_flags(const uint8_t *p, size_t n);

/* Relay sessions (protocol.md 10):
 *   OPEN    31 | request u32 | len u8 | service id
 *   OPENED  32 | request u32 | status u8 | session u64
 *   DATA    33 | session u64 | one QUIC packet of the inner connection
 *   CLOSED  34 | session u64 | reason u8
 * All integers big-endian. Decoders take exact lengths (DATA: a non-empty
 * packet); OPEN's id must be valid UTF-8. */
enum wire_session_status {
  WIRE_SESSION_OK = 0,
  WIRE_SESSION_INVALID = 1,      /* malformed, or not registered for it */
  WIRE_SESSION_DENIED = 2,       /* no grant for the service */
  WIRE_SESSION_NO_CONNECTOR = 3,
  WIRE_SESSION_UNSUPPORTED = 4,  /* the connector takes no sessions */
  WIRE_SESSION_LIMIT = 5,
};
enum wire_session_reason {
  WIRE_SESSION_GONE = 0,       /* the other side left the intermediate */
  WIRE_SESSION_REPLACED = 1,   /* another connector serves the service */
  WIRE_SESSION_REVOKED = 2,    /* the policy no longer allows it */
  WIRE_SESSION_CLOSED_BY_PEER = 3, /* the agent closed it */
  WIRE_SESSION_UNKNOWN = 4,    /* no such session (here, or any more) */
};
#define WIRE_SESSION_HDR_LEN 9
#define WIRE_SESSION_OPENED_LEN 14
#define WIRE_SESSION_CLOSED_LEN 10
int wire_session_open_encode(uint8_t *buf, size_t cap, uint32_t req,
                             const void *id, size_t idlen);
int wire_session_open_decode(const uint8_t *p, size_t n, uint32_t *req,
                             const uint8_t **id, size_t *idlen);
int wire_session_opened_encode(uint8_t *buf, size_t cap, uint32_t req,
                               uint8_t status, uint64_t sid);
int wire_session_opened_decode(const uint8_t *p, size_t n, uint32_t *req,
                               uint8_t *status, uint64_t *sid);
/* DATA: encodes the 9-byte header; the packet follows it. */
int wire_session_data_header(uint8_t *buf, size_t cap, uint64_t sid);
int wire_session_data_decode(const uint8_t *p, size_t n, uint64_t *sid,
                             const uint8_t **pkt, size_t *pktlen);
int wire_session_closed_encode(uint8_t *buf, size_t cap, uint64_t sid,
                               uint8_t reason);
int wire_session_closed_decode(const uint8_t *p, size_t n, uint64_t *sid,
                               uint8_t *reason);
/* Services, inside an end-to-end connection:
 *   36 | count u8 | (length u8 | service id) x count
 * Every id non-empty UTF-8; decode takes the exact length and fills at
 * most max entries (pointers into p), returning the count or
 * ZTNA_ERR_MALFORMED (also when there are more than max). */
struct wire_id {
  const uint8_t *p;
  size_t n;
};
int wire_services_encode(uint8_t *buf, size_t cap, const struct wire_id *ids,
                         size_t n);
int wire_services_decode(const uint8_t *p, size_t n, struct wire_id *out,
                         size_t max);
/* Revoked agent: 37 | certificate SHA-256 (32); exact length. */
int wire_revoked_encode(uint8_t *buf, size_t cap, const uint8_t *fp);
int wire_revoked_decode(const uint8_t *p, size_t n, const uint8_t **fp);
/* Punch binding, inside an end-to-end connection: 35 | session u64 BE. */
int wire_punch_bind_encode(uint8_t *buf, size_t cap, uint64_t session);
int wire_punch_bind_decode(const uint8_t *p, size_t n, uint64_t *session);

/* --- P2P signaling (section 4): bincode 1.x payloads in u32 BE frames --- */

#define WIRE_SIG_PAYLOAD_MAX 65536
#define WIRE_SIG_MAX_CANDIDATES 16
#define WIRE_FOUNDATION_MAX 127
#define WIRE_MESSAGE_MAX 255

enum wire_cand_type {
  WIRE_CAND_HOST = 0,
  WIRE_CAND_SRFLX = 1,
  WIRE_CAND_PRFLX = 2,
  WIRE_CAND_RELAY = 3,
};

struct wire_candidate {
  uint32_t type;
  struct sockaddr_storage addr;
  uint32_t priority;
  char foundation[WIRE_FOUNDATION_MAX + 1]; /* NUL-terminated */
  int has_related;
  struct sockaddr_storage related;
};

enum wire_sig_tag {
  WIRE_SIG_OFFER = 0,
  WIRE_SIG_ANSWER = 1,
  WIRE_SIG_START = 2,
  WIRE_SIG_RESULT = 3,
  WIRE_SIG_ERROR = 4,
};

enum wire_sig_error {
  WIRE_SIGERR_UNKNOWN = 0,
  WIRE_SIGERR_SERVICE_NOT_FOUND = 1,
  WIRE_SIGERR_NO_CONNECTOR = 2,
  WIRE_SIGERR_SESSION_NOT_FOUND = 3,
  WIRE_SIGERR_SESSION_TIMEOUT = 4,
  WIRE_SIGERR_INVALID_MESSAGE = 5,
  WIRE_SIGERR_PEER_REJECTED = 6,
};

/* One signaling message. Which fields count depends on tag:
 *   OFFER  session_id, service_id, cand
 *   ANSWER session_id, cand
 *   START  session_id, start_delay_ms, cand (the peer's)
 *   RESULT session_id, success, has_working/working
 *   ERROR  has_session_id/session_id, code, message */
struct wire_sig {
  uint32_t tag;
  uint64_t session_id;
  int has_session_id;
  char service_id[WIRE_SERVICE_ID_MAX + 1];
  size_t service_id_len;
  uint64_t start_delay_ms;
  size_t ncand;
  struct wire_candidate cand[WIRE_SIG_MAX_CANDIDATES];
  int success;
  int has_working;
  struct sockaddr_storage working;
  uint32_t code;
  char message[WIRE_MESSAGE_MAX + 1];
  size_t message_len;
};

/* Encodes the bincode payload (no frame header). */
int wire_sig_encode(uint8_t *buf, size_t cap, const struct wire_sig *m);
/* Encodes a whole frame: u32 BE length then the payload. */
int wire_sig_frame(uint8_t *buf, size_t cap, const struct wire_sig *m);
/* Decodes one payload. Trailing bytes are tolerated. Rejects bad tags, bad
 * bools and options, invalid UTF-8, lengths past the input, more than
 * WIRE_SIG_MAX_CANDIDATES candidates and over-long strings (an over-long
 * Error message is cut at WIRE_MESSAGE_MAX bytes instead). */
int wire_sig_decode(const uint8_t *p, size_t n, struct wire_sig *m);

/* Stream reassembly: bounded to one maximal frame. After an error (frame
 * over WIRE_SIG_PAYLOAD_MAX, payload that does not decode) the buffer is
 * closed and every later feed returns ZTNA_ERR_STATE. */
/* The reassembly buffer of one signaling stream. It holds nothing until
 * bytes arrive, grows to what the message being assembled needs (at most
 * 4 + WIRE_SIG_PAYLOAD_MAX) and gives a large buffer back once it is
 * empty again: an idle connection costs no buffer. */
struct wire_sigbuf {
  uint8_t *buf;
  size_t len, cap;
  int failed;
};

typedef void (*wire_sig_cb)(const struct wire_sig *m, void *ud);
int wire_sigbuf_init(struct wire_sigbuf *sb);
void wire_sigbuf_free(struct wire_sigbuf *sb);
/* Appends n bytes and calls cb for every complete message, in order.
 * Returns 0, or the error that closed the buffer. */
int wire_sigbuf_feed(struct wire_sigbuf *sb, const uint8_t *p, size_t n,
                     wire_sig_cb cb, void *ud);

/* --- P2P control packets (section 5), magic 0x5A --- */

#define WIRE_CTL_MAGIC 0x5a
#define WIRE_BIND_REQ_LEN 26
#define WIRE_KEEPALIVE_LEN 6
/* ztna extension: checks of a punch bound to an end-to-end connection
 * carry an integrity tag (protocol.md 10):
 *   request   5a | 02 00 00 00 | txn (12) | priority u64 LE |
 *             use_candidate (1) | punch session u64 LE | cid len (1) |
 *             cid (20, zero padded) | tag (16)                   71 bytes
 *   response  5a | 03 00 00 00 | txn (12) | success (1) |
 *             mapped Option<SocketAddr> | tag (16)          35, 45, 57
 * The tag is the first 16 bytes of HMAC-SHA256 over every byte before
 * it; the encoder leaves it zero for the signer (punch.c). */
#define WIRE_ABIND_REQ_LEN 71
#define WIRE_CTL_TAG_LEN 16
#define WIRE_CTL_CID_MAX 20

enum wire_ctl_kind {
  WIRE_CTL_NONE = 0,
  WIRE_CTL_BIND_REQ,
  WIRE_CTL_BIND_RESP,
  WIRE_CTL_KA_REQ,
  WIRE_CTL_KA_RESP,
};

struct wire_ctl {
  enum wire_ctl_kind kind;
  uint8_t txn[12];
  uint64_t priority;     /* BIND_REQ */
  int use_candidate;     /* BIND_REQ */
  int success;           /* BIND_RESP */
  int has_mapped;        /* BIND_RESP */
  struct sockaddr_storage mapped;
  uint32_t seq;          /* KA_REQ, KA_RESP */
  /* The authenticated forms (BIND_REQ, BIND_RESP with auth set): */
  int auth;
  uint64_t session;      /* BIND_REQ: the punch's session id */
  uint8_t cid[WIRE_CTL_CID_MAX]; /* BIND_REQ: a connection ID of the  */
  size_t cidlen;         /* end-to-end connection at the receiver (0-20) */
  uint8_t tag[WIRE_CTL_TAG_LEN];
  /* Decode: the packet it came from (the tag covers its bytes). */
  const uint8_t *raw;
  size_t rawlen;
};

int wire_ctl_encode(uint8_t *buf, size_t cap, const struct wire_ctl *c);
/* Decodes a control packet of exactly one of the specified sizes. Returns 0
 * with c->kind set, or ZTNA_ERR_MALFORMED when it is not one. */
int wire_ctl_decode(const uint8_t *p, size_t n, struct wire_ctl *c);

#endif
