/* fuzz_path.c - the path module under any sequence of events and clock
 * jumps: it never leaves its states, never asks to punch when it may not,
 * never falls back from a path that is not direct or validating, and its
 * cooldown stays within bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "path.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  struct path p;
  uint64_t now = 1; /* a clock of the loop is never 0 */

  path_init(&p, n && (d[0] & 0x80));
  for (size_t i = 1; i + 2 < n; i += 3) {
    uint8_t op = d[i] % 10;
    uint64_t step = (uint64_t)d[i + 1] * 97; /* up to ~25 s per step */
    uint64_t silence = (uint64_t)d[i + 2] * 16;
    enum path_state was = p.state;
    enum path_action a;

    now += step;
    switch (op) {
    case 0: path_connected(&p, now); break;
    case 1: path_lost(&p); break;
    case 2: path_network_changed(&p, now); break;
    case 3: path_punch_started(&p, now); break;
    case 4: path_punch_found(&p, now); break;
    case 5: path_failed(&p, (enum path_fail)(d[i + 2] % PATH_FAIL_COUNT),
                        now); break;
    case 6: path_validated(&p, now); break;
    case 7: path_relay_changed(&p); break;
    default:
      was = p.state;
      a = path_tick(&p, now, silence, d[i + 2] & 1);
      if (a == PATH_ACT_PUNCH &&
          (was != PATH_RELAY || p.no_direct || !(d[i + 2] & 1)))
        abort();
      if (a == PATH_ACT_FALLBACK &&
          ((was != PATH_DIRECT && was != PATH_VALIDATING) ||
           p.state != PATH_RELAY))
        abort();
      if (a == PATH_ACT_FALLBACK && was == PATH_DIRECT &&
          silence < PATH_SILENCE_MS)
        abort();
    }
    if (p.state >= PATH_STATE_COUNT || p.last_fail >= PATH_FAIL_COUNT)
      abort();
    if (p.cooldown_ms > PATH_COOLDOWN_MAX_MS)
      abort();
    if (p.no_direct && p.retry_at_ms)
      abort();
    if (p.state == PATH_DIRECT && !p.direct_since_ms)
      abort();
  }
  return 0;
}
