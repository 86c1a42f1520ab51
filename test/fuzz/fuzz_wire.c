/* fuzz_wire.c - every wire decoder on hostile bytes; what decodes must
 * encode back to bytes that decode to the same thing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

static void sig_cb(const struct wire_sig *m, void *ud)
{
  uint8_t buf[WIRE_SIG_PAYLOAD_MAX + 4];
  struct wire_sig *back = ud;
  int n = wire_sig_encode(buf, sizeof(buf), m);

  if (n < 0)
    abort(); /* whatever decodes must encode */
  if (wire_sig_decode(buf, (size_t)n, back) != 0 || back->tag != m->tag ||
      back->session_id != m->session_id || back->ncand != m->ncand)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  struct sockaddr_storage ss;
  struct wire_ctl ctl;
  struct wire_sigbuf sb;
  struct wire_sig *m = malloc(sizeof(*m)), *back = malloc(sizeof(*back));
  const uint8_t *id, *pkt;
  size_t idlen, pktlen;
  uint8_t type, status, buf[512];

  wire_classify(d, n);
  wire_utf8_valid(d, n);
  if (wire_qad_decode(d, n, &ss) == 0 &&
      wire_qad_encode(buf, sizeof(buf), (struct sockaddr *)&ss) < 0)
    abort();
  wire_register_decode(d, n, &type, &id, &idlen);
  wire_status_decode(d, n, &type, &status, &id, &idlen);
  wire_routed_decode(d, n, &id, &idlen, &pkt, &pktlen);
  {
    uint8_t addr[16];
    int family;
    if (wire_agent_gone_decode(d, n, &family, addr) == 0) {
      int k = wire_agent_gone_encode(buf, sizeof(buf), family, addr);
      if (k != (int)n || memcmp(buf, d, n) != 0)
        abort(); /* one encoding */
    }
  }
  {
    /* Relay sessions: one encoding each. */
    uint32_t req;
    uint64_t sid;
    uint8_t st;
    int k = -1;
    wire_register_flags(d, n);
    if (wire_session_open_decode(d, n, &req, &id, &idlen) == 0)
      k = wire_session_open_encode(buf, sizeof(buf), req, id, idlen);
    else if (wire_session_opened_decode(d, n, &req, &st, &sid) == 0)
      k = wire_session_opened_encode(buf, sizeof(buf), req, st, sid);
    else if (wire_session_closed_decode(d, n, &sid, &st) == 0)
      k = wire_session_closed_encode(buf, sizeof(buf), sid, st);
    else if (wire_punch_bind_decode(d, n, &sid) == 0)
      k = wire_punch_bind_encode(buf, sizeof(buf), sid);
    else if (wire_revoked_decode(d, n, &pkt) == 0)
      k = wire_revoked_encode(buf, sizeof(buf), pkt);
    else if (wire_session_data_decode(d, n, &sid, &pkt, &pktlen) == 0) {
      k = wire_session_data_header(buf, sizeof(buf), sid);
      if (pkt != d + k || pktlen != n - (size_t)k)
        abort();
      memcpy(buf + k, pkt, pktlen < sizeof(buf) - (size_t)k
                               ? pktlen : sizeof(buf) - (size_t)k);
      k = (int)n < (int)sizeof(buf) ? (int)n : -2;
    } else {
      struct wire_id ids[255];
      int c = wire_services_decode(d, n, ids, 255);
      if (c >= 0)
        k = wire_services_encode(buf, sizeof(buf), ids, (size_t)c);
    }
    if (k >= 0 && (k != (int)n || memcmp(buf, d, n) != 0))
      abort();
  }
  if (wire_ctl_decode(d, n, &ctl) == 0) {
    int k = wire_ctl_encode(buf, sizeof(buf), &ctl);
    if (k != (int)n || memcmp(buf, d, n) != 0)
      abort(); /* control packets have one encoding */
  }
  if (wire_sig_decode(d, n, m) == 0)
    sig_cb(m, back);
  /* Reassembly, fed in two uneven pieces. */
  if (wire_sigbuf_init(&sb) == 0) {
    size_t cut = n ? d[0] % (n + 1) : 0;
    if (wire_sigbuf_feed(&sb, d, cut, sig_cb, back) == 0)
      wire_sigbuf_feed(&sb, d + cut, n - cut, sig_cb, back);
    wire_sigbuf_free(&sb);
  }
  free(m);
  free(back);
  return 0;
}
