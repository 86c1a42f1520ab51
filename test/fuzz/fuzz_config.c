/* fuzz_config.c - the JSON loader of each role on hostile text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
  char err[512];
  char *text = malloc(n + 1);
  struct cfg_intermediate *i = malloc(sizeof(*i));
  struct cfg_connector *c = malloc(sizeof(*c));
  struct cfg_agent *a = malloc(sizeof(*a));
  char host[64];
  uint16_t port;

  memcpy(text, d, n);
  text[n] = '\0';
  cfg_intermediate_defaults(i);
  cfg_intermediate_parse(i, "f", text, n, err, sizeof(err), NULL);
  cfg_connector_defaults(c);
  cfg_connector_parse(c, "f", text, n, err, sizeof(err), NULL);
  cfg_agent_defaults(a);
  cfg_agent_parse(a, "f", text, n, err, sizeof(err), NULL);
  cfg_split_hostport(text, host, sizeof(host), &port);
  free(text);
  free(i);
  free(c);
  free(a);
  return 0;
}
