/* fuzz_punch.c - connectivity checks on hostile input: a script of control
 * packets from a handful of addresses, with the clock moving between them,
 * into a punch of each role, plain and authenticated (a fixed key), with
 * the answers each would send; and ICMP echo payloads. */
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#include "ippkt.h"
#include "punch.h"
#include "wire.h"

static void drop(const struct sockaddr *to, const uint8_t *d, size_t n,
                 void *ud)
{
  struct wire_ctl c;
  (void)to;
  (void)ud;
  /* Whatever we send must be a well-formed control packet. */
  if (wire_ctl_decode(d, n, &c) != 0)
    __builtin_trap();
}

static void addr(struct sockaddr_storage *ss, uint8_t last, uint16_t port)
{
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  memset(ss, 0, sizeof(*ss));
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  in->sin_addr.s_addr = htonl(0xcb007100u | last);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  static struct punch p[4];
  struct punch_io io = { drop, NULL, NULL };
  struct punch_auth auth;
  struct wire_candidate c[3];
  const uint8_t *pl;
  size_t plen;
  uint64_t now = 1000;

  ippkt_echo_payload(d, n, &pl, &plen);
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 3; i++) {
    c[i].type = (uint32_t)i;
    addr(&c[i].addr, (uint8_t)i, 4434);
    c[i].priority = punch_cand_priority(c[i].type, AF_INET);
  }
  punch_start(&p[0], &io, 1, AF_INET, c, 3, now);
  punch_start(&p[1], &io, 0, AF_INET, c, 2, now);
  memset(&auth, 0, sizeof(auth));
  memset(auth.key, 0x42, sizeof(auth.key));
  auth.session = 7;
  auth.cidlen = 4;
  punch_start(&p[2], &io, 1, AF_INET, c, 3, now);
  punch_set_auth(&p[2], &auth);
  punch_start(&p[3], &io, 0, AF_INET, c, 2, now);
  punch_set_auth(&p[3], &auth);
  punch_prime(&io, AF_INET, c, 3, &auth);
  /* Records: role (bit 0) and authenticated (bit 1), source (1), clock
   * step (1), length (1), bytes. */
  while (n >= 4) {
    struct sockaddr_storage from;
    struct wire_ctl ctl;
    size_t len = d[3];
    struct punch *pp = &p[d[0] & 3];

    if (len > n - 4)
      len = n - 4;
    addr(&from, d[1] & 7, 4434 + (d[1] >> 3));
    now += d[2];
    if (wire_ctl_decode(d + 4, len, &ctl) == 0) {
      if (ctl.kind == WIRE_CTL_BIND_REQ)
        punch_answer(&io, &ctl, (struct sockaddr *)&from,
                     pp->auth.on ? &pp->auth : NULL);
      punch_input(pp, &ctl, (struct sockaddr *)&from, now);
    }
    punch_tick(pp, now);
    if (pp->state == PUNCH_SUCCEEDED &&
        (pp->winner < 0 || (size_t)pp->winner >= pp->npairs))
      __builtin_trap();
    if (pp->npairs > PUNCH_MAX_PAIRS)
      __builtin_trap();
    d += 4 + len;
    n -= 4 + len;
  }
  return 0;
}
