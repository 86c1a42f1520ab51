/* agent.c - the user endpoint with its TUN device.
 *
 * This applet is not in this version of ztna yet; it comes with the
 * project's issue 4. Until then it says so and exits 2 (1 is kept for
 * usage errors, as in every applet).
 */
#include <stdio.h>
#include <string.h>

#include "../applets.h"

int agent_main(int argc, char **argv)
{
  if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    printf("Usage: ztna agent ...\n\n"
           "ztna agent (the user endpoint with its TUN device) is not available in this version of ztna yet.\n");
    return 0;
  }
  fprintf(stderr, "ztna agent: the user endpoint with its TUN device is not available in this version of "
          "ztna yet\n");
  return 2;
}
