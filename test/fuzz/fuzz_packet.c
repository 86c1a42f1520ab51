/* fuzz_packet.c - what the connector and the agent do with an IP packet
 * that came out of a tunnel, on hostile bytes: parse, verify checksums,
 * find the transport header, answer an echo, build a RST or a too-big
 * error from it, rewrite its addresses, look for a link token, and judge
 * it for the agent's TUN. Every result must stay inside the buffers, and
 * what one step accepts must hold up in the next. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ippkt.h"
#include "tunguard.h"

static const struct tunguard guard = {
  .tun4 = { 100, 64, 0, 1 },
  .tun6 = { 0xfd, 0x7a, 0x7a, 0x74, 0x6e, 0x61, 0, 0xa, 0, 0, 0, 0, 0, 0, 0,
            1 },
  .has_tun6 = 1,
  .vips = {
    { 4, { 10, 100, 0, 2 }, 32, 0 },
    { 4, { 10, 100, 1, 0 }, 24, 1 },
    { 6, { 0xfd, 0x10, 0x01, 0x00 }, 64, 2 },
  },
  .nvips = 3,
};

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  struct ippkt ip;
  const uint8_t *l4, *pl;
  size_t l4len, pllen, totlen;
  uint8_t *p, out[1500], addr[16] = { 1, 2, 3, 4 };
  uint8_t carried[3] = { 1, 0, 1 };
  enum tunguard_verdict v;

  v = tunguard_check(&guard, d, n, NULL, 0, &totlen);
  if (v == TUNGUARD_OK && (totlen > n || totlen < 20))
    abort();
  tunguard_check(&guard, d, n, carried, sizeof(carried), &totlen);
  if (ippkt_parse(d, n, &ip) < 0)
    return 0;
  if (ip.totlen > n || ip.hdrlen > ip.totlen)
    abort();
  /* The connector works on a copy of its own. */
  p = malloc(ip.totlen ? ip.totlen : 1);
  memcpy(p, d, ip.totlen);
  ippkt_verify(p, ip.totlen);
  ippkt_l4(p, &ip, &l4, &l4len);
  if (l4len && (l4 < p || l4 + l4len > p + ip.totlen))
    abort();
  ippkt_echo_payload(p, ip.totlen, &pl, &pllen);
  ippkt_build_rst(out, sizeof(out), p, ip.totlen);
  ippkt_build_too_big(out, sizeof(out), p, ip.totlen, 1280, addr);
  if (ippkt_rewrite_addr(p, ip.totlen, 0, addr) == 0 &&
      ippkt_rewrite_addr(p, ip.totlen, 1, addr) == 0 &&
      ippkt_parse(p, ip.totlen, &ip) < 0)
    abort(); /* a rewrite keeps a packet a packet */
  if (ippkt_echo_reply(p, ip.totlen) == 0 && ippkt_verify(p, ip.totlen) < 0 &&
      ippkt_verify(d, ip.totlen) == 0)
    abort(); /* the reply to a valid echo is valid */
  free(p);
  return 0;
}
