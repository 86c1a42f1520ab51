/* applets.h - the applet list, in one place (an X-macro, as toybox does).
 * APPLET(name, one-line description) */
#ifndef ZTNA_APPLETS_H
#define ZTNA_APPLETS_H

#define ZTNA_APPLETS                                                          \
  APPLET(intermediate, "public QUIC relay: address discovery, registration, " \
                       "policy, P2P signaling, metrics")                      \
  APPLET(connector, "serve private applications to the tunnel (UDP, TCP, "    \
                    "ICMP to backends)")                                      \
  APPLET(agent, "user endpoint: TUN device, split tunnel to the services")    \
  APPLET(keygen, "create the CA and issue certificates for every role")       \
  APPLET(diag, "NAT troubleshooting: mapping, port, hairpinning")

/* Prints "ztna APPLET: " + fmt (with arg) and where to find the usage,
 * on stderr; returns 1, the exit status of a usage error. */
int applet_usage_error(const char *applet, const char *fmt, const char *arg);

/* diag's status and api commands (status.c); api: 1 for diag api. */
int diag_status_main(int argc, char **argv, int api);

#define APPLET(name, desc) int name##_main(int argc, char **argv);
ZTNA_APPLETS
#undef APPLET

#endif
