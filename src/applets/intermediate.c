/* intermediate.c - the public QUIC relay.
 *
 * This applet is not in this version of ztna yet; it comes with the
 * project's issue 3. Until then it says so and exits 2 (1 is kept for
 * usage errors, as in every applet).
 */
#include <stdio.h>
#include <string.h>

#include "../applets.h"

int intermediate_main(int argc, char **argv)
{
  if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    printf("Usage: ztna intermediate ...\n\n"
           "ztna intermediate (the public QUIC relay) is not available in this version of ztna yet.\n");
    return 0;
  }
  fprintf(stderr, "ztna intermediate: the public QUIC relay is not available in this version of "
          "ztna yet\n");
  return 2;
}
