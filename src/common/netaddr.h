/* netaddr.h - socket addresses for logs and configuration. */
#ifndef ZTNA_NETADDR_H
#define ZTNA_NETADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "192.0.2.1:4433" or "[2001:db8::1]:4433"; returns buf. */
const char *netaddr_str(const struct sockaddr *sa, char *buf, size_t len);

/* host (an IP literal or a name) and port into out. Sets *literal when
 * host was an address itself. Names are resolved with getaddrinfo, which
 * blocks: for start-up only. Returns 0, or ZTNA_ERR_NOT_FOUND with a
 * message in err. */
int netaddr_resolve(const char *host, uint16_t port,
                    struct sockaddr_storage *out, int *literal, char *err,
                    size_t errlen);

/* One DNS label (1-63 letters, digits, '-' or '_'); allow_star takes "*"
 * alone, allow_dot dots inside (not first or last). */
int netaddr_label_ok(const char *s, int allow_star, int allow_dot);
/* A DNS name: labels as above, 253 characters at most, no empty label;
 * allow_wildcard takes a leading "*." too. */
int netaddr_dns_name_ok(const char *s, int allow_wildcard);

#endif
