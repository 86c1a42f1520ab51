/* config.h - JSON configuration files into typed structs.
 *
 * The JSON text is tokenized with jsmn and walked once. Errors are written
 * as "FILE:LINE:COL: KEY: what was expected" into the caller's buffer.
 * Unknown keys are ignored (protocol.md 9); those not starting with '_' are
 * reported through the optional warn callback, since they are usually typos.
 * All three reference files of the original design load unchanged.
 */
#ifndef ZTNA_CONFIG_H
#define ZTNA_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CFG_STR_MAX 256
#define CFG_PATH_MAX 1024
#define CFG_MAX_SERVICES 64
#define CFG_FILE_MAX (1024 * 1024)

typedef void (*cfg_warn_fn)(const char *msg);

enum cfg_proto { CFG_PROTO_UDP = 1, CFG_PROTO_TCP = 2, CFG_PROTO_BOTH = 3 };

struct cfg_intermediate {
  uint16_t port;                  /* 4433 */
  char bind_addr[CFG_STR_MAX];    /* "0.0.0.0" */
  char external_ip[CFG_STR_MAX];  /* "" when absent or null */
  char cert_path[CFG_PATH_MAX];
  char key_path[CFG_PATH_MAX];
  char ca_cert_path[CFG_PATH_MAX];
  char policy_path[CFG_PATH_MAX]; /* ztna: optional policy file */
  int verify_peer;                /* 1 */
  int require_client_cert;        /* 1 (ztna; the original defaulted to 0) */
  int disable_retry;              /* 0 */
  uint16_t metrics_port;          /* 9090; 0 disables */
  char metrics_bind[CFG_STR_MAX]; /* ztna: "127.0.0.1" */
  uint16_t diag_port;             /* ztna: second port for diag; 0 none */
  uint32_t max_connections;       /* ztna: 4096 */
  uint32_t max_translations;      /* ztna: agent addresses at once, 65536 */
  uint32_t translation_quarantine_s; /* ztna: rest of a freed one, 900 */
  /* ztna: a cluster of intermediates (docs/cluster.md); off when
   * cluster_redis is empty. */
  char cluster_redis[CFG_STR_MAX];     /* "HOST:PORT" of Redis */
  char cluster_node[CFG_STR_MAX];      /* this one's name (host name) */
  char cluster_advertise[CFG_STR_MAX]; /* "IP:PORT" the others reach */
  char cluster_prefix[CFG_STR_MAX];    /* Redis key prefix, "ztna" */
  char cluster_redis_user[CFG_STR_MAX];
  char cluster_redis_password_file[CFG_PATH_MAX];
  /* Redis over TLS when set: the CA its certificate is checked against,
   * and the name it must carry (the host of cluster_redis by default). */
  char cluster_redis_ca[CFG_PATH_MAX];
  char cluster_redis_name[CFG_STR_MAX];
  /* or Sentinel: "HOST:PORT,HOST:PORT..." asked where the primary of
   * cluster_redis_master is */
  char cluster_redis_sentinels[CFG_PATH_MAX];
  char cluster_redis_master[CFG_STR_MAX];
};

/* Translated agent addresses come from 100.64.1.0 up to the end of
 * 100.64.0.0/10. */
#define CFG_MAX_TRANSLATIONS (4194304L - 256)

struct cfg_service {
  char id[CFG_STR_MAX];
  char backend[CFG_STR_MAX];    /* connector: "ip:port" or "host:port" */
  int protocol;                 /* connector: enum cfg_proto */
  char virtual_ip[CFG_STR_MAX]; /* agent */
};

struct cfg_connector {
  char server_host[CFG_STR_MAX];
  uint16_t server_port;         /* 4433 */
  size_t nservices;
  struct cfg_service services[CFG_MAX_SERVICES];
  char p2p_cert[CFG_PATH_MAX];
  char p2p_key[CFG_PATH_MAX];
  uint16_t p2p_port;            /* 4434 */
  char ca_cert[CFG_PATH_MAX];
  char cert[CFG_PATH_MAX];      /* ztna: client certificate for the relay */
  char key[CFG_PATH_MAX];
  int verify_peer;              /* 1 */
  uint16_t metrics_port;        /* 9091 */
  char metrics_bind[CFG_STR_MAX]; /* ztna: "127.0.0.1" */
  char policy_path[CFG_PATH_MAX]; /* ztna: optional policy file */
};

struct cfg_agent {
  char server_host[CFG_STR_MAX];
  uint16_t server_port;         /* 4433 */
  size_t nservices;
  struct cfg_service services[CFG_MAX_SERVICES];
  int verify_peer;              /* 1 */
  char ca_cert[CFG_PATH_MAX];
  char cert[CFG_PATH_MAX];
  char key[CFG_PATH_MAX];
  char tun_name[CFG_STR_MAX];   /* "ztna0" */
  char tunnel_addr[CFG_STR_MAX]; /* "100.64.0.1" */
  char tunnel_addr6[CFG_STR_MAX]; /* "": AGENT_TUNNEL_ADDR6 if needed */
  int direct;                   /* 1: punch for direct paths */
  int raw_relay;                /* 1: raw IP through the relay where the
                                   connector takes no relay sessions */
  int tun_offload;              /* 1: TSO reads and joined writes */
  uint16_t metrics_port;        /* 0: off */
  char metrics_bind[CFG_STR_MAX]; /* "127.0.0.1" */
};

/* Policy file: which agent identities may reach which service.
 *   {"services": {"echo": {"allow": ["alice", "group:engineering", "*"]}}}
 * "name" matches the certificate's CN, "group:NAME" its OU, "*" any agent
 * whose certificate grants the service. A service not listed is denied to
 * every agent. An optional "admins": [names] (the same forms) restricts
 * the admin API to those admin certificates. */
#define CFG_POLICY_MAX_SERVICES 256
#define CFG_POLICY_MAX_ALLOW 64
#define CFG_NAME_MAX 64

struct cfg_policy_service {
  char id[CFG_STR_MAX];
  size_t nallow;
  char allow[CFG_POLICY_MAX_ALLOW][CFG_NAME_MAX + 1];
};

struct cfg_policy {
  size_t nservices;
  struct cfg_policy_service *services; /* malloc'd */
  /* "admins": who of the certificates with the admin role may use the
   * HTTP/3 admin API (docs/api.md); without the key, all of them. */
  int has_admins;
  size_t nadmins;
  char admins[CFG_POLICY_MAX_ALLOW][CFG_NAME_MAX + 1];
};

int cfg_policy_parse(struct cfg_policy *out, const char *name, const char *text,
                     size_t len, char *err, size_t errlen, cfg_warn_fn warn);
/* Frees what cfg_policy_parse allocated. Accepts NULL. */
void cfg_policy_free(struct cfg_policy *p);

/* Fill the defaults above. */
void cfg_intermediate_defaults(struct cfg_intermediate *c);
void cfg_connector_defaults(struct cfg_connector *c);
void cfg_agent_defaults(struct cfg_agent *c);

/* Parse text (len bytes; name is used in messages) over the defaults
 * already in *out. Returns 0 or ZTNA_ERR_CONFIG with err filled. */
int cfg_intermediate_parse(struct cfg_intermediate *out, const char *name,
                           const char *text, size_t len, char *err,
                           size_t errlen, cfg_warn_fn warn);
int cfg_connector_parse(struct cfg_connector *out, const char *name,
                        const char *text, size_t len, char *err, size_t errlen,
                        cfg_warn_fn warn);
/* Finds the agent configuration (cfg_find: explicit_path, else the
 * default places; the one used goes into path) and parses it into out.
 * Returns 0, 1 when there is none (and none was named), or an error with
 * err filled. */
int cfg_agent_load(struct cfg_agent *out, const char *explicit_path,
                   char *path, size_t pathlen, char *err, size_t errlen,
                   cfg_warn_fn warn);
int cfg_agent_parse(struct cfg_agent *out, const char *name, const char *text,
                    size_t len, char *err, size_t errlen, cfg_warn_fn warn);

/* Reads a whole file (at most CFG_FILE_MAX bytes). *text is malloc'd and
 * NUL-terminated; the caller frees it. */
int cfg_read_file(const char *path, char **text, size_t *len, char *err,
                  size_t errlen);

/* The lookup order of protocol.md 9: explicit path, else
 * /etc/ztna/<role>.json, else ./<role>.json. Writes the chosen path into
 * out, or returns ZTNA_ERR_NOT_FOUND when none exists. */
int cfg_find(const char *explicit_path, const char *role, char *out,
             size_t outlen);

/* Splits "host:port" or "[v6]:port" into host and port. */
/* A decimal port, 1-65535 (0 too with allow_zero), nothing else. */
int cfg_parse_port(const char *s, uint16_t *out, int allow_zero);
/* A decimal number from lo to hi, nothing else: 0 or ZTNA_ERR_MALFORMED. */
int cfg_parse_uint(const char *s, long lo, long hi, long *out);
int cfg_split_hostport(const char *s, char *host, size_t hostlen,
                       uint16_t *port);

#endif
