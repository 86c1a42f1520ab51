/* fuzz_http.c - the metrics endpoint's request parser on hostile bytes,
 * as the server sees them: growing one read at a time. */
#include <stdint.h>
#include <string.h>

#include "metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  char method[16], path[256];

  if (n > METRICS_REQ_MAX)
    n = METRICS_REQ_MAX;
  for (size_t k = 1; k <= n; k += 1 + k / 8) {
    int rv = metrics_http_parse((const char *)d, k, method, sizeof(method),
                                path, sizeof(path));
    if (rv == 1 && (path[0] != '/' || strlen(method) == 0))
      __builtin_trap();
    if (rv != 0)
      break;
  }
  return 0;
}
