/* err.h - ztna error codes and their messages.
 *
 * Functions return 0 on success, -errno for operating-system failures and a
 * ZTNA_ERR_* code (all negative, below -4095) for domain failures. Library
 * codes (ngtcp2, libuv, wolfSSL) are translated where they are met.
 */
#ifndef ZTNA_ERR_H
#define ZTNA_ERR_H

enum {
  ZTNA_ERR_BASE = -5000,
  ZTNA_ERR_SHORT = ZTNA_ERR_BASE,  /* input ends before the message does */
  ZTNA_ERR_MALFORMED = -5001,      /* input is not a valid message */
  ZTNA_ERR_TOO_LARGE = -5002,      /* does not fit the buffer, path or limit */
  ZTNA_ERR_QUEUE_FULL = -5003,     /* a bounded queue is full */
  ZTNA_ERR_STATE = -5004,          /* not possible in the current state */
  ZTNA_ERR_TLS = -5005,            /* TLS library failure */
  ZTNA_ERR_QUIC = -5006,           /* QUIC library failure */
  ZTNA_ERR_CONFIG = -5007,         /* invalid configuration */
  ZTNA_ERR_LIMIT = -5008,          /* a resource limit was reached */
  ZTNA_ERR_NOT_FOUND = -5009,      /* no such entry */
  ZTNA_ERR_DENIED = -5010,         /* refused by authorization */
  ZTNA_ERR_UTF8 = -5011,           /* invalid UTF-8 */
  ZTNA_ERR_CLOSED = -5012,         /* the connection is closed */
  ZTNA_ERR_CERT = -5013,           /* certificate missing, invalid or rejected */
  ZTNA_ERR_ALPN = -5014,           /* no common application protocol */
  ZTNA_ERR_HANDSHAKE = -5015,      /* the handshake failed or timed out */
  ZTNA_ERR_END = -5016
};

/* Returns a static, human-readable message for any code this project uses:
 * 0, -errno or ZTNA_ERR_*. Never NULL. */
const char *ztna_strerror(int err);

#endif
