/* identity.h - the names ztna's certificates and handshakes use
 * (protocol.md 1 and 3), in one place for keygen, the policy, the
 * intermediate, the connector and the agent.
 *
 * A role is proved by a DNS SAN: "ztna-server" for the intermediate (the
 * SNI an agent sends it; a connector sends no SNI and verifies this name),
 * "ztna-connector" on every connector certificate (the SNI of end-to-end
 * connections; it proves nothing about a service), and
 * "<role>.<service>.ztna" (or "<role>.*.ztna") for each service a
 * certificate grants; "admin.ztna" for the admin API. keygen refuses other
 * names in the reserved ones.
 */
#ifndef ZTNA_IDENTITY_H
#define ZTNA_IDENTITY_H

#define ID_SERVER_NAME "ztna-server"       /* the intermediate */
#define ID_CONNECTOR_NAME "ztna-connector" /* any connector */
/* An administrator of the HTTP/3 status and admin API (docs/api.md). */
#define ID_ADMIN_NAME "admin.ztna"
#define ID_GRANT_SUFFIX ".ztna"            /* <role>.<service>.ztna */
#define ID_GRANT_SUFFIX_LEN 5
#define ID_ROLE_AGENT "agent"
#define ID_ROLE_CONNECTOR "connector"

#endif
