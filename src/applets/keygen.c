/* keygen.c - the deployment's CA and a certificate for every role.
 *
 * usage: ztna keygen ca --out DIR [--name NAME] [--type ec|ed25519]
 *                       [--days N] [--force]
 *        ztna keygen issue --ca DIR --role intermediate|connector|agent|admin
 *                       --name NAME [--service ID]... [--dns NAME]...
 *                       [--ip ADDR]... --out DIR [--type ec|ed25519]
 *                       [--days N] [--not-before YYYY-MM-DD] [--force]
 *
 * Files: ca writes DIR/ca.crt and DIR/ca.key; issue writes DIR/NAME.crt and
 * DIR/NAME.key. Keys are mode 0600; nothing is overwritten without --force.
 * Identities (protocol.md 3) are SAN DNS names:
 *   intermediate  ztna-server, plus --dns/--ip
 *   connector     ztna-connector and connector.<service>.ztna per --service
 *   agent         agent.<service>.ztna per --service ('*' for every service)
 * The role is also written as the subject's OU.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/random.h>

#include "../applets.h"
#include "identity.h"
#include "netaddr.h"
#include "pki.h"

#define MAX_NAMES 32
#define DER_MAX 16384

static const char usage_text[] =
    "Usage: ztna keygen ca --out DIR [--name NAME] [--type ec|ed25519]\n"
    "                      [--days N] [--force]\n"
    "       ztna keygen issue --ca DIR\n"
    "                      --role intermediate|connector|agent|admin\n"
    "                      --name NAME --out DIR [--service ID]...\n"
    "                      [--dns NAME]... [--ip ADDR]... [--type ec|ed25519]\n"
    "                      [--days N] [--not-before YYYY-MM-DD] [--force]\n"
    "\n"
    "Create the deployment's certificate authority, and issue certificates\n"
    "whose SAN DNS names carry each identity's role and services.\n"
    "\n"
    "  ca           write DIR/ca.crt and DIR/ca.key (self-signed, 10 years)\n"
    "  issue        write DIR/NAME.crt and DIR/NAME.key signed by the CA in\n"
    "               the --ca directory\n"
    "\n"
    "  --role R     intermediate: valid for ztna-server (SNI of agents)\n"
    "               connector: ztna-connector plus connector.<ID>.ztna\n"
    "               agent: agent.<ID>.ztna\n"
    "               admin: admin.ztna, for the HTTP/3 status and admin API\n"
    "               of the intermediate and connectors (no --service)\n"
    "  --service ID a service this identity may provide or reach; '*' for\n"
    "               all (repeatable)\n"
    "  --dns NAME   an extra DNS name (repeatable)\n"
    "  --ip ADDR    an IP address SAN (repeatable)\n"
    "  --name NAME  subject CN and file name ([A-Za-z0-9._-], 1-63 chars)\n"
    "  --type T     ec (P-256, default) or ed25519\n"
    "  --days N     validity in days (default 365; CA 3650)\n"
    "  --not-before DATE  start of validity (default: an hour ago)\n"
    "  --not-after DATE   end of validity instead of --days (DATE is\n"
    "               YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC); daemons close\n"
    "               a connection whose certificate has ended\n"
    "  --force      overwrite existing files\n"
    "  -h, --help   this text\n"
    "\n"
    "Keys are written with mode 0600 for the user running keygen. A daemon\n"
    "that runs as another user (the systemd units' ztna, --user, a\n"
    "container's 65532) must own its key: chown ztna: DIR/NAME.key. Keep\n"
    "ca.key off the machines that run daemons.\n";

struct keygen {
  const char *cmd, *out, *ca, *role, *name, *type;
  const char *services[MAX_NAMES], *dns[MAX_NAMES], *ips[MAX_NAMES];
  int nservices, ndns, nips, days, force;
  time_t not_before, not_after;
};

static int bad(const char *fmt, const char *arg)
{
  fprintf(stderr, "ztna keygen: ");
  fprintf(stderr, fmt, arg);
  fputc('\n', stderr);
  return 1;
}

/* --- DER helpers for the SAN extension --------------------------------- */

static size_t der_len(uint8_t *p, size_t n)
{
  if (n < 128) {
    p[0] = (uint8_t)n;
    return 1;
  }
  if (n < 256) {
    p[0] = 0x81;
    p[1] = (uint8_t)n;
    return 2;
  }
  p[0] = 0x82;
  p[1] = (uint8_t)(n >> 8);
  p[2] = (uint8_t)n;
  return 3;
}

static int san_add(uint8_t *buf, size_t *off, size_t cap, uint8_t tag,
                   const void *d, size_t n)
{
  uint8_t hdr[4];
  size_t h;

  hdr[0] = tag;
  h = 1 + der_len(hdr + 1, n);
  if (*off + h + n > cap)
    return -1;
  memcpy(buf + *off, hdr, h);
  memcpy(buf + *off + h, d, n);
  *off += h + n;
  return 0;
}

/* Builds GeneralNames (the SAN extension's value) into cert->altNames. */
static int set_sans(Cert *cert, char names[][256], int nnames,
                    const char *const *ips, int nips)
{
  uint8_t body[4096];
  size_t off = 0, h;

  for (int i = 0; i < nnames; i++)
    if (san_add(body, &off, sizeof(body), 0x82, names[i], strlen(names[i])))
      return -1;
  for (int i = 0; i < nips; i++) {
    uint8_t a[16];
    if (inet_pton(AF_INET, ips[i], a) == 1) {
      if (san_add(body, &off, sizeof(body), 0x87, a, 4))
        return -1;
    } else if (inet_pton(AF_INET6, ips[i], a) == 1) {
      if (san_add(body, &off, sizeof(body), 0x87, a, 16))
        return -1;
    } else {
      fprintf(stderr, "ztna keygen: --ip %s is not an IPv4 or IPv6 "
              "address\n", ips[i]);
      return -1;
    }
  }
  if (off + 4 > sizeof(cert->altNames))
    return -1;
  cert->altNames[0] = 0x30;
  h = 1 + der_len(cert->altNames + 1, off);
  memcpy(cert->altNames + h, body, off);
  cert->altNamesSz = (int)(h + off);
  return 0;
}

static void set_date(byte *out, int *outsz, time_t t)
{
  struct tm tm;
  char s[16];

  gmtime_r(&t, &tm);
  if (tm.tm_year + 1900 < 2050) {
    strftime(s, sizeof(s), "%y%m%d%H%M%SZ", &tm);
    out[0] = 0x17; /* UTCTime */
    out[1] = 13;
    memcpy(out + 2, s, 13);
    *outsz = 15;
  } else {
    strftime(s, sizeof(s), "%Y%m%d%H%M%SZ", &tm);
    out[0] = 0x18; /* GeneralizedTime */
    out[1] = 15;
    memcpy(out + 2, s, 15);
    *outsz = 17;
  }
}

/* --- files ---------------------------------------------------------------- */

static int write_file(const char *path, const void *d, size_t n, mode_t mode,
                      int force)
{
  /* --force replaces a file, never what a symbolic link points at. */
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW |
                          (force ? O_TRUNC : O_EXCL), mode);
  const uint8_t *p = d;

  if (fd < 0) {
    if (errno == EEXIST)
      fprintf(stderr, "ztna keygen: %s exists; use --force to overwrite "
              "it\n", path);
    else if (errno == ELOOP)
      fprintf(stderr, "ztna keygen: %s is a symbolic link; not followed "
              "(remove it to write there)\n", path);
    else
      fprintf(stderr, "ztna keygen: cannot write %s: %s\n", path,
              strerror(errno));
    return -1;
  }
  fchmod(fd, mode);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      fprintf(stderr, "ztna keygen: writing %s: %s\n", path,
              strerror(errno));
      close(fd);
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  if (close(fd) < 0) {
    fprintf(stderr, "ztna keygen: closing %s: %s\n", path, strerror(errno));
    return -1;
  }
  return 0;
}

static int write_pem(const char *path, const byte *der, int dersz, int type,
                     mode_t mode, int force)
{
  byte pem[DER_MAX * 2];
  int n = wc_DerToPem(der, (word32)dersz, pem, sizeof(pem), type);

  if (n <= 0) {
    fprintf(stderr, "ztna keygen: PEM encoding failed (%d)\n", n);
    return -1;
  }
  return write_file(path, pem, (size_t)n, mode, force);
}

static int read_pem(const char *path, byte *buf, size_t cap, size_t *len)
{
  FILE *f = fopen(path, "rb");

  if (!f) {
    fprintf(stderr, "ztna keygen: cannot read %s: %s\n", path,
            strerror(errno));
    return -1;
  }
  *len = fread(buf, 1, cap, f);
  fclose(f);
  if (*len == cap) {
    fprintf(stderr, "ztna keygen: %s is too large\n", path);
    return -1;
  }
  return 0;
}

/* --- keys --------------------------------------------------------------- */

static int key_make(struct pki_key *k, const char *type, WC_RNG *rng)
{
  if (!type || !strcmp(type, "ec")) {
    k->type = ECC_TYPE;
    if (wc_ecc_init(&k->ecc) != 0 ||
        wc_ecc_make_key_ex(rng, 32, &k->ecc, ECC_SECP256R1) != 0)
      return -1;
    return 0;
  }
  k->type = ED25519_TYPE;
  if (wc_ed25519_init(&k->ed) != 0 ||
      wc_ed25519_make_key(rng, ED25519_KEY_SIZE, &k->ed) != 0)
    return -1;
  return 0;
}

static void *key_ptr(struct pki_key *k)
{
  return k->type == ECC_TYPE ? (void *)&k->ecc : (void *)&k->ed;
}

static int key_save(struct pki_key *k, const char *path, int force)
{
  byte der[DER_MAX];
  int n, rv;

  if (k->type == ECC_TYPE) {
    n = wc_EccKeyToDer(&k->ecc, der, sizeof(der));
    rv = n > 0 ? write_pem(path, der, n, ECC_PRIVATEKEY_TYPE, 0600, force)
               : -1;
  } else {
    n = wc_Ed25519PrivateKeyToDer(&k->ed, der, sizeof(der));
    rv = n > 0 ? write_pem(path, der, n, PKCS8_PRIVATEKEY_TYPE, 0600, force)
               : -1;
  }
  explicit_bzero(der, sizeof(der));
  return rv;
}

/* --- certificates --------------------------------------------------------- */

static int cert_init(Cert *c, const struct keygen *kg, WC_RNG *rng,
                     const struct pki_key *signer, const char *cn,
                     const char *ou, int days)
{
  time_t nb = kg->not_before ? kg->not_before : time(NULL) - 3600;

  if (wc_InitCert(c) != 0)
    return -1;
  snprintf(c->subject.commonName, CTC_NAME_SIZE, "%s", cn);
  snprintf(c->subject.org, CTC_NAME_SIZE, "ztna");
  if (ou)
    snprintf(c->subject.unit, CTC_NAME_SIZE, "%s", ou);
  c->sigType = signer->type == ECC_TYPE ? CTC_SHA256wECDSA : CTC_ED25519;
  c->serialSz = 16;
  if (wc_RNG_GenerateBlock(rng, c->serial, 16) != 0)
    return -1;
  c->serial[0] &= 0x7f; /* positive */
  c->serial[0] |= 0x01; /* and not starting with a zero byte */
  set_date(c->beforeDate, &c->beforeDateSz, nb);
  set_date(c->afterDate, &c->afterDateSz,
           kg->not_after ? kg->not_after : nb + (time_t)days * 86400);
  return 0;
}

static int sign(Cert *c, struct pki_key *subject, struct pki_key *signer, WC_RNG *rng,
                byte *der, int *dersz)
{
  int n = wc_MakeCert_ex(c, der, DER_MAX, subject->type, key_ptr(subject),
                         rng);
  if (n < 0) {
    fprintf(stderr, "ztna keygen: building the certificate failed (%s)\n",
            wc_GetErrorString(n));
    return -1;
  }
  n = wc_SignCert_ex(c->bodySz, c->sigType, der, DER_MAX, signer->type,
                     key_ptr(signer), rng);
  if (n < 0) {
    fprintf(stderr, "ztna keygen: signing failed (%s)\n",
            wc_GetErrorString(n));
    return -1;
  }
  *dersz = n;
  return 0;
}

static int path_in(char *out, size_t cap, const char *dir, const char *name,
                   const char *ext)
{
  int n = snprintf(out, cap, "%s/%s%s", dir, name, ext);
  if (n < 0 || (size_t)n >= cap) {
    fprintf(stderr, "ztna keygen: path too long: %s/%s%s\n", dir, name, ext);
    return -1;
  }
  return 0;
}

static int ensure_dir(const char *dir)
{
  struct stat st;
  if (stat(dir, &st) == 0)
    return S_ISDIR(st.st_mode) ? 0 : bad("%s is not a directory", dir);
  if (mkdir(dir, 0755) < 0) {
    fprintf(stderr, "ztna keygen: cannot create %s: %s\n", dir,
            strerror(errno));
    return 1;
  }
  return 0;
}

static int do_ca(struct keygen *kg, WC_RNG *rng)
{
  char crt[4096], keyp[4096];
  struct pki_key key = { 0 };
  Cert c;
  byte der[DER_MAX];
  int dersz, rv = 1;

  if (ensure_dir(kg->out) || path_in(crt, sizeof(crt), kg->out, "ca", ".crt")
      || path_in(keyp, sizeof(keyp), kg->out, "ca", ".key"))
    return 1;
  if (!kg->force && (access(crt, F_OK) == 0 || access(keyp, F_OK) == 0))
    return bad("%s already holds a CA; use --force to replace it",
               kg->out);
  if (key_make(&key, kg->type, rng) < 0) {
    fprintf(stderr, "ztna keygen: key generation failed\n");
    return 1;
  }
  if (cert_init(&c, kg, rng, &key, kg->name ? kg->name : "ztna CA", NULL,
                kg->days ? kg->days : 3650) < 0)
    goto out;
  c.isCA = 1;
  c.selfSigned = 1;
  if (wc_SetKeyUsage(&c, "keyCertSign,cRLSign,digitalSignature") != 0 ||
      wc_SetSubjectKeyIdFromPublicKey_ex(&c, key.type, key_ptr(&key)) != 0)
    goto out;
  if (sign(&c, &key, &key, rng, der, &dersz) < 0)
    goto out;
  if (key_save(&key, keyp, kg->force) < 0 ||
      write_pem(crt, der, dersz, CERT_TYPE, 0644, kg->force) < 0)
    goto out;
  printf("wrote %s and %s\n", crt, keyp);
  rv = 0;
out:
  pki_key_free(&key);
  return rv;
}

static int do_issue(struct keygen *kg, WC_RNG *rng)
{
  char crt[4096], keyp[4096], cacrt[4096], cakey[4096];
  char names[MAX_NAMES * 2 + 2][256], err[512];
  struct pki_key key = { 0 }, ca = { 0 };
  byte capem[DER_MAX], cader[DER_MAX], der[DER_MAX];
  size_t capemlen;
  int caderlen, dersz, nnames = 0, rv = 1;
  const char *eku;
  Cert c;

  if (!kg->ca || !kg->role || !kg->name)
    return bad("%s", "issue needs --ca DIR, --role ROLE and --name NAME");
  if (!netaddr_label_ok(kg->name, 0, 1))
    return bad("--name '%s' must be 1-63 characters of [A-Za-z0-9._-]",
               kg->name);
  if (!strcmp(kg->role, "intermediate")) {
    snprintf(names[nnames++], 256, "%s", ID_SERVER_NAME);
    /* clientAuth too: a cluster member presents it on its links to the
     * other intermediates (docs/cluster.md). */
    eku = "serverAuth,clientAuth";
  } else if (!strcmp(kg->role, "connector")) {
    snprintf(names[nnames++], 256, "%s", ID_CONNECTOR_NAME);
    eku = "serverAuth,clientAuth";
  } else if (!strcmp(kg->role, "agent")) {
    eku = "clientAuth";
  } else if (!strcmp(kg->role, "admin")) {
    /* The status and admin API (docs/api.md): no service, no tunnel. */
    if (kg->nservices)
      return bad("%s", "an admin certificate grants no service: leave out "
                 "--service");
    snprintf(names[nnames++], 256, "%s", ID_ADMIN_NAME);
    eku = "clientAuth";
  } else {
    return bad("--role must be intermediate, connector, agent or admin, "
               "not '%s'", kg->role);
  }
  if (strcmp(kg->role, "intermediate") && strcmp(kg->role, "admin") &&
      kg->nservices == 0)
    return bad("a %s certificate needs at least one --service ID",
               kg->role);
  for (int i = 0; i < kg->nservices; i++) {
    if (!netaddr_label_ok(kg->services[i], 1, 1))
      return bad("--service '%s' must be '*' or 1-63 characters of "
                 "[A-Za-z0-9._-]", kg->services[i]);
    snprintf(names[nnames], 256, "%s.%s%s", kg->role, kg->services[i],
             ID_GRANT_SUFFIX);
    for (char *p = names[nnames]; *p; p++)
      if (*p >= 'A' && *p <= 'Z')
        *p = (char)(*p - 'A' + 'a');
    nnames++;
  }
  for (int i = 0; i < kg->ndns; i++) {
    size_t dl = strlen(kg->dns[i]);
    if (!netaddr_dns_name_ok(kg->dns[i], 1))
      return bad("--dns '%s' is not a DNS name (labels of [A-Za-z0-9_-], "
                 "an optional leading '*.', at most 253 characters)",
                 kg->dns[i]);
    /* The names ztna grants by are made from --role and --service only:
     * a connector certificate that also said ztna-server could pose as
     * the intermediate. */
    if (!strcasecmp(kg->dns[i], ID_SERVER_NAME) ||
        !strcasecmp(kg->dns[i], ID_CONNECTOR_NAME))
      return bad("--dns '%s' is reserved: --role gives each certificate "
                 "the name its role may carry", kg->dns[i]);
    if (dl >= ID_GRANT_SUFFIX_LEN &&
        !strcasecmp(kg->dns[i] + dl - ID_GRANT_SUFFIX_LEN, ID_GRANT_SUFFIX))
      return bad("--dns '%s' is reserved: names under .ztna grant roles "
                 "and come from --role and --service", kg->dns[i]);
    snprintf(names[nnames++], 256, "%s", kg->dns[i]);
  }

  if (path_in(cacrt, sizeof(cacrt), kg->ca, "ca", ".crt") ||
      path_in(cakey, sizeof(cakey), kg->ca, "ca", ".key") ||
      ensure_dir(kg->out) ||
      path_in(crt, sizeof(crt), kg->out, kg->name, ".crt") ||
      path_in(keyp, sizeof(keyp), kg->out, kg->name, ".key"))
    return 1;
  if (!kg->force && (access(crt, F_OK) == 0 || access(keyp, F_OK) == 0))
    return bad("%s already holds this name; use --force to replace it",
               kg->out);
  if (read_pem(cacrt, capem, sizeof(capem), &capemlen) < 0)
    return 1;
  caderlen = wc_CertPemToDer(capem, (int)capemlen, cader, sizeof(cader),
                             CERT_TYPE);
  if (caderlen <= 0)
    return bad("%s is not a PEM certificate", cacrt);
  if (pki_key_load(&ca, cakey, err, sizeof(err)) < 0) {
    fprintf(stderr, "ztna keygen: CA key %s\n", err);
    return 1;
  }
  if (key_make(&key, kg->type, rng) < 0) {
    fprintf(stderr, "ztna keygen: key generation failed\n");
    goto out;
  }
  if (cert_init(&c, kg, rng, &ca, kg->name, kg->role,
                kg->days ? kg->days : 365) < 0)
    goto out;
  if (wc_SetIssuerBuffer(&c, cader, caderlen) != 0 ||
      wc_SetAuthKeyIdFromCert(&c, cader, caderlen) != 0 ||
      wc_SetSubjectKeyIdFromPublicKey_ex(&c, key.type, key_ptr(&key)) != 0 ||
      wc_SetKeyUsage(&c, "digitalSignature") != 0 ||
      wc_SetExtKeyUsage(&c, eku) != 0) {
    fprintf(stderr, "ztna keygen: %s does not look like a CA certificate\n",
            cacrt);
    goto out;
  }
  if (set_sans(&c, names, nnames, kg->ips, kg->nips) < 0)
    goto out;
  if (sign(&c, &key, &ca, rng, der, &dersz) < 0)
    goto out;
  if (key_save(&key, keyp, kg->force) < 0 ||
      write_pem(crt, der, dersz, CERT_TYPE, 0644, kg->force) < 0)
    goto out;
  printf("wrote %s and %s (", crt, keyp);
  for (int i = 0; i < nnames; i++)
    printf("%s%s", i ? ", " : "", names[i]);
  for (int i = 0; i < kg->nips; i++)
    printf(", %s", kg->ips[i]);
  printf(")\n");
  rv = 0;
out:
  pki_key_free(&key);
  pki_key_free(&ca);
  return rv;
}

static int parse_date(const char *s, time_t *out)
{
  struct tm tm = { 0 };
  char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (!end || *end) {
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%d", &tm);
  }
  if (!end || *end)
    return -1;
  *out = timegm(&tm);
  return 0;
}

static int add_list(const char **list, int *n, const char *v, const char *opt)
{
  if (*n >= MAX_NAMES)
    return bad("too many %s options", opt);
  list[(*n)++] = v;
  return 0;
}

int keygen_main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "out", required_argument, NULL, 'o' },
    { "ca", required_argument, NULL, 'c' },
    { "role", required_argument, NULL, 'r' },
    { "name", required_argument, NULL, 'n' },
    { "service", required_argument, NULL, 's' },
    { "dns", required_argument, NULL, 'd' },
    { "ip", required_argument, NULL, 'i' },
    { "type", required_argument, NULL, 't' },
    { "days", required_argument, NULL, 'D' },
    { "not-before", required_argument, NULL, 'B' },
    { "not-after", required_argument, NULL, 'A' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct keygen kg = { 0 };
  WC_RNG rng;
  int ch, rv;
  char *end;
  long days;

  while ((ch = getopt_long(argc, argv, "o:c:r:n:s:d:i:t:D:B:fh", opts,
                           NULL)) != -1) {
    switch (ch) {
    case 'o': kg.out = optarg; break;
    case 'c': kg.ca = optarg; break;
    case 'r': kg.role = optarg; break;
    case 'n': kg.name = optarg; break;
    case 's':
      if (add_list(kg.services, &kg.nservices, optarg, "--service"))
        return 1;
      break;
    case 'd':
      if (add_list(kg.dns, &kg.ndns, optarg, "--dns"))
        return 1;
      break;
    case 'i':
      if (add_list(kg.ips, &kg.nips, optarg, "--ip"))
        return 1;
      break;
    case 't':
      if (strcmp(optarg, "ec") && strcmp(optarg, "ed25519"))
        return bad("--type must be ec or ed25519, not '%s'", optarg);
      kg.type = optarg;
      break;
    case 'D':
      days = strtol(optarg, &end, 10);
      if (*end || days < 1 || days > 36500)
        return bad("--days must be a whole number from 1 to 36500, not '%s'",
                   optarg);
      kg.days = (int)days;
      break;
    case 'B':
      if (parse_date(optarg, &kg.not_before) < 0)
        return bad("--not-before must be YYYY-MM-DD, not '%s'", optarg);
      break;
    case 'A':
      if (parse_date(optarg, &kg.not_after) < 0)
        return bad("--not-after must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, "
                   "not '%s'", optarg);
      break;
    case 'f': kg.force = 1; break;
    case 'h':
      fputs(usage_text, stdout);
      return 0;
    default:
      fputs(usage_text, stderr);
      return 1;
    }
  }
  if (optind >= argc) {
    fputs(usage_text, stderr);
    return 1;
  }
  kg.cmd = argv[optind];
  if (optind + 1 < argc)
    return bad("unexpected argument '%s'", argv[optind + 1]);
  if (!kg.out)
    return bad("%s", "--out DIR is required");
  if (kg.not_after &&
      kg.not_after <= (kg.not_before ? kg.not_before : time(NULL) - 3600))
    return bad("%s", "--not-after must come after the start of validity "
               "(--not-before, else an hour ago)");
  if (strcmp(kg.cmd, "ca") && strcmp(kg.cmd, "issue")) {
    fprintf(stderr, "ztna keygen: unknown command '%s' (ca or issue)\n",
            kg.cmd);
    fputs(usage_text, stderr);
    return 1;
  }
  if (wc_InitRng(&rng) != 0) {
    fprintf(stderr, "ztna keygen: cannot initialize the random generator\n");
    return 1;
  }
  rv = !strcmp(kg.cmd, "ca") ? do_ca(&kg, &rng) : do_issue(&kg, &rng);
  wc_FreeRng(&rng);
  return rv;
}
