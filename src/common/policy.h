/* policy.h - who may provide or reach a service (protocol.md 3).
 *
 * Deny by default: a certificate grants a role for a service only through
 * a SAN DNS name agent.<service>.ztna or connector.<service>.ztna (or the
 * wildcards agent.*.ztna / connector.*.ztna); the optional policy file
 * further restricts which agents may reach a service. Sans-IO.
 */
#ifndef ZTNA_POLICY_H
#define ZTNA_POLICY_H

#include <stddef.h>
#include <stdint.h>

struct tls_identity;
struct cfg_policy;

enum policy_role { POLICY_AGENT = 0, POLICY_CONNECTOR = 1 };

/* 1 when the certificate's SANs grant role for the service, else 0. The
 * service id is compared case-insensitively (SANs are DNS names). */
int policy_cert_grants(const struct tls_identity *id, enum policy_role role,
                       const uint8_t *svc, size_t len);

/* 1 when the policy file (NULL: none in use) lets this agent reach the
 * service, else 0. */
int policy_file_allows(const struct cfg_policy *p,
                       const struct tls_identity *id, const uint8_t *svc,
                       size_t len);

/* Both of the above (the file restricts agents only). */
int policy_allows(const struct cfg_policy *p, const struct tls_identity *id,
                  enum policy_role role, const uint8_t *svc, size_t len);

/* 1 when id may use the admin API: its certificate has the admin role
 * (SAN admin.ztna) and the policy file (NULL: none) lists it in
 * "admins" or has no such list; else 0 with why filled. */
int policy_admin_allowed(const struct cfg_policy *p,
                         const struct tls_identity *id, char *why,
                         size_t cap);

/* Reads and parses a policy file into *out (malloc'd; free with
 * cfg_policy_free and free). Returns 0, or a negative error with a
 * message naming the file, line and problem in err. */
int policy_load(const char *path, struct cfg_policy **out, char *err,
                size_t errlen, void (*warn)(const char *msg));

#endif
