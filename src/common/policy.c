/* policy.c - certificate grants and the policy file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "identity.h"
#include "policy.h"
#include "tls.h"

int policy_cert_grants(const struct tls_identity *id, enum policy_role role,
                       const uint8_t *svc, size_t len)
{
  const char *prefix = role == POLICY_AGENT ? ID_ROLE_AGENT "."
                                            : ID_ROLE_CONNECTOR ".";
  size_t pl = strlen(prefix);

  if (len == 0)
    return 0;
  for (size_t i = 0; i < id->ndns; i++) {
    const char *san = id->dns[i];
    size_t sl = strlen(san);

    if (sl < pl + ID_GRANT_SUFFIX_LEN || strncmp(san, prefix, pl) != 0 ||
        strcmp(san + sl - ID_GRANT_SUFFIX_LEN, ID_GRANT_SUFFIX) != 0)
      continue;
    /* The middle is the service id; it may itself contain dots. */
    sl -= pl + ID_GRANT_SUFFIX_LEN;
    if (sl == 1 && san[pl] == '*')
      return 1;
    if (sl == len && strncasecmp(san + pl, (const char *)svc, len) == 0)
      return 1;
  }
  return 0;
}

/* Whether a name of a policy list ("CN", "group:OU", "*") names id. */
static int name_matches(const char *a, const struct tls_identity *id)
{
  if (!strcmp(a, "*"))
    return 1;
  if (!strncmp(a, "group:", 6))
    return id->ou[0] && !strcmp(a + 6, id->ou);
  return id->cn[0] && !strcmp(a, id->cn);
}

int policy_file_allows(const struct cfg_policy *p,
                       const struct tls_identity *id, const uint8_t *svc,
                       size_t len)
{
  if (!p)
    return 1;
  for (size_t i = 0; i < p->nservices; i++) {
    const struct cfg_policy_service *ps = &p->services[i];

    /* Service ids ignore ASCII case, like the SANs that grant them. */
    if (strlen(ps->id) != len || strncasecmp(ps->id, (const char *)svc, len))
      continue;
    for (size_t k = 0; k < ps->nallow; k++)
      if (name_matches(ps->allow[k], id))
        return 1;
    return 0;
  }
  return 0; /* not listed: denied */
}

int policy_admin_allowed(const struct cfg_policy *p,
                         const struct tls_identity *id, char *why,
                         size_t cap)
{
  int granted = 0;

  for (size_t i = 0; i < id->ndns; i++)
    if (!strcmp(id->dns[i], ID_ADMIN_NAME))
      granted = 1;
  if (!granted) {
    snprintf(why, cap, "certificate '%s' has no admin role (issue one "
             "with: ztna keygen issue --role admin)",
             id->cn[0] ? id->cn : "?");
    return 0;
  }
  if (!p || !p->has_admins)
    return 1;
  for (size_t k = 0; k < p->nadmins; k++)
    if (name_matches(p->admins[k], id))
      return 1;
  snprintf(why, cap, "admin '%s' is not in the policy file's \"admins\"",
           id->cn[0] ? id->cn : "?");
  return 0;
}

int policy_allows(const struct cfg_policy *p, const struct tls_identity *id,
                  enum policy_role role, const uint8_t *svc, size_t len)
{
  if (!policy_cert_grants(id, role, svc, len))
    return 0;
  return role == POLICY_CONNECTOR || policy_file_allows(p, id, svc, len);
}

int policy_load(const char *path, struct cfg_policy **out, char *err,
                size_t errlen, void (*warn)(const char *msg))
{
  char *text;
  size_t len;
  struct cfg_policy *p;
  int rv;

  *out = NULL;
  rv = cfg_read_file(path, &text, &len, err, errlen);
  if (rv < 0)
    return rv;
  p = calloc(1, sizeof(*p));
  if (!p) {
    free(text);
    snprintf(err, errlen, "%s: out of memory", path);
    return -ENOMEM;
  }
  rv = cfg_policy_parse(p, path, text, len, err, errlen, warn);
  free(text);
  if (rv < 0) {
    free(p);
    return rv;
  }
  *out = p;
  return 0;
}
