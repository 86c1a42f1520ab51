/* diag.c - NAT troubleshooting.
 *
 * This applet is not in this version of ztna yet; it comes with the
 * project's issue 5. Until then it says so and exits 2 (1 is kept for
 * usage errors, as in every applet).
 */
#include <stdio.h>
#include <string.h>

#include "../applets.h"

int diag_main(int argc, char **argv)
{
  if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    printf("Usage: ztna diag ...\n\n"
           "ztna diag (NAT troubleshooting) is not available in this version of ztna yet.\n");
    return 0;
  }
  fprintf(stderr, "ztna diag: NAT troubleshooting is not available in this version of "
          "ztna yet\n");
  return 2;
}
