/* err.c - one place that turns every error code into words. */
#include <string.h>

#include "err.h"

static const char *const messages[] = {
  "message is truncated",
  "malformed message",
  "too large",
  "queue full",
  "operation not possible in this state",
  "TLS failure",
  "QUIC failure",
  "invalid configuration",
  "resource limit reached",
  "not found",
  "denied by policy",
  "invalid UTF-8",
  "connection closed",
  "certificate missing, invalid or rejected",
  "no common application protocol (ALPN)",
  "handshake failed",
};

const char *ztna_strerror(int err)
{
  if (err == 0)
    return "success";
  if (err <= ZTNA_ERR_BASE && err > ZTNA_ERR_END)
    return messages[ZTNA_ERR_BASE - err];
  if (err < 0 && err > -4096)
    return strerror(-err);
  return "unknown error";
}
