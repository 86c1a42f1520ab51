/* fuzz_vnet.c - any TUN read through vnet_split: it never reads or writes
 * outside the read and its output buffer, and every segment it cuts from
 * a TCP segmentation read is a whole packet whose IP and TCP checksums
 * hold, no longer than the headers and the segment size, the payloads
 * adding up to the read's. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ippkt.h"
#include "vnet.h"

struct seen {
  size_t packets, bytes, max;
  int gso;
};

static void take(void *ud, uint8_t *pkt, size_t n)
{
  struct seen *s = ud;

  s->packets++;
  s->bytes += n;
  if (s->gso && (n > s->max || ippkt_verify(pkt, n) != 0))
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  static uint8_t out[65536 + 64];
  uint8_t *rd;
  struct seen s = { 0 };
  size_t cap;
  int rv;

  if (n < 2)
    return 0;
  cap = 60 + 20 + (size_t)d[0] * 8; /* output room varies: 80..2120 */
  rd = malloc(n - 1);
  if (!rd)
    return 0;
  memcpy(rd, d + 1, n - 1);
  s.gso = n - 1 > VNET_HDR_LEN && (rd[1] & 0x7f) != 0;
  if (s.gso) {
    uint16_t mss;
    memcpy(&mss, rd + 4, 2);
    s.max = (size_t)mss + 120; /* headers are at most 60 + 60 bytes */
  }
  rv = vnet_split(rd, n - 1, out, cap, take, &s);
  if (rv < 0 ? s.packets != 0 : s.packets != (size_t)rv)
    abort();
  free(rd);
  return 0;
}
