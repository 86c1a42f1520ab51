/* pki.c - loading private keys and matching them to certificates. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include "err.h"
#include "pki.h"

#define PEM_MAX 16384

static int read_all(const char *path, uint8_t *buf, size_t cap, size_t *len,
                    char *err, size_t errlen)
{
  FILE *f = fopen(path, "rb");

  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -errno;
  }
  *len = fread(buf, 1, cap, f);
  fclose(f);
  if (*len == cap) {
    snprintf(err, errlen, "%s: larger than %zu bytes", path, cap - 1);
    return ZTNA_ERR_CERT;
  }
  return 0;
}

int pki_key_load(struct pki_key *k, const char *path, char *err,
                 size_t errlen)
{
  uint8_t pem[PEM_MAX], der[PEM_MAX];
  size_t plen = 0;
  word32 idx = 0;
  int n, rv = ZTNA_ERR_CERT;

  memset(k, 0, sizeof(*k));
  rv = read_all(path, pem, sizeof(pem), &plen, err, errlen);
  if (rv < 0)
    return rv;
  rv = ZTNA_ERR_CERT;
  n = wc_KeyPemToDer(pem, (int)plen, der, sizeof(der), NULL);
  if (n <= 0) {
    snprintf(err, errlen, "%s: not a PEM private key", path);
    goto out;
  }
  wc_ecc_init(&k->ecc);
  if (wc_EccPrivateKeyDecode(der, &idx, &k->ecc, (word32)n) == 0) {
    k->type = ECC_TYPE;
    /* SEC1 keys may leave the public point out: derive it. */
    if (k->ecc.type == ECC_PRIVATEKEY_ONLY &&
        wc_ecc_make_pub(&k->ecc, NULL) != 0) {
      snprintf(err, errlen, "%s: cannot derive the public key", path);
      goto out;
    }
    rv = 0;
    goto out;
  }
  wc_ecc_free(&k->ecc);
  idx = 0;
  wc_ed25519_init(&k->ed);
  if (wc_Ed25519PrivateKeyDecode(der, &idx, &k->ed, (word32)n) == 0) {
    /* A PKCS#8 key holds only the private half; signing needs both. */
    uint8_t priv[ED25519_KEY_SIZE], pub[ED25519_PUB_KEY_SIZE];
    word32 privlen = sizeof(priv);
    k->type = ED25519_TYPE;
    if (wc_ed25519_export_private_only(&k->ed, priv, &privlen) == 0 &&
        wc_ed25519_make_public(&k->ed, pub, sizeof(pub)) == 0 &&
        wc_ed25519_import_private_key(priv, privlen, pub, sizeof(pub),
                                      &k->ed) == 0)
      rv = 0;
    else
      snprintf(err, errlen, "%s: cannot derive the public key", path);
    explicit_bzero(priv, sizeof(priv));
    goto out;
  }
  wc_ed25519_free(&k->ed);
  snprintf(err, errlen, "%s: not an EC P-256 or Ed25519 key", path);
out:
  if (rv < 0)
    pki_key_free(k);
  explicit_bzero(pem, sizeof(pem));
  explicit_bzero(der, sizeof(der));
  return rv;
}

void pki_key_free(struct pki_key *k)
{
  if (k->type == ECC_TYPE)
    wc_ecc_free(&k->ecc);
  else if (k->type == ED25519_TYPE)
    wc_ed25519_free(&k->ed);
  k->type = 0;
}

int pki_key_spki(struct pki_key *k, uint8_t *out, size_t cap)
{
  if (k->type == ECC_TYPE)
    return wc_EccPublicKeyToDer(&k->ecc, out, (word32)cap, 1);
  if (k->type == ED25519_TYPE)
    return wc_Ed25519PublicKeyToDer(&k->ed, out, (word32)cap, 1);
  return ZTNA_ERR_CERT;
}

int pki_key_matches_cert(const char *key_path, const char *cert_path,
                         char *err, size_t errlen)
{
  struct pki_key k;
  WOLFSSL_X509 *x;
  uint8_t a[512], b[512];
  int alen, blen = sizeof(b), rv;

  rv = pki_key_load(&k, key_path, err, errlen);
  if (rv < 0)
    return rv;
  alen = pki_key_spki(&k, a, sizeof(a));
  pki_key_free(&k);
  x = wolfSSL_X509_load_certificate_file(cert_path, WOLFSSL_FILETYPE_PEM);
  if (!x) {
    snprintf(err, errlen, "certificate %s: not a valid PEM certificate",
             cert_path);
    return ZTNA_ERR_CERT;
  }
  rv = wolfSSL_X509_get_pubkey_buffer(x, b, &blen);
  wolfSSL_X509_free(x);
  if (alen <= 0 || rv != WOLFSSL_SUCCESS || alen != blen ||
      memcmp(a, b, (size_t)alen) != 0) {
    snprintf(err, errlen, "private key %s does not match certificate %s",
             key_path, cert_path);
    return ZTNA_ERR_CERT;
  }
  return 0;
}

int pki_derive_secret(const char *key_path, const char *label,
                      uint8_t out[32])
{
  uint8_t pem[PEM_MAX];
  size_t len = 0;
  char err[256];
  wc_Sha256 sha;
  int rv = read_all(key_path, pem, sizeof(pem), &len, err, sizeof(err));

  if (rv < 0)
    return rv;
  if (wc_InitSha256(&sha) != 0)
    return ZTNA_ERR_TLS;
  wc_Sha256Update(&sha, (const byte *)label, (word32)strlen(label));
  wc_Sha256Update(&sha, pem, (word32)len);
  wc_Sha256Final(&sha, out);
  wc_Sha256Free(&sha);
  explicit_bzero(pem, sizeof(pem));
  return 0;
}

int pki_file_sha256(const char *path, uint8_t out[32])
{
  FILE *f = fopen(path, "rb");
  wc_Sha256 h;
  uint8_t buf[4096];
  size_t n;
  int rv = 0;

  memset(out, 0, 32);
  if (!f)
    return -1;
  if (wc_InitSha256(&h) != 0) {
    fclose(f);
    return -1;
  }
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
    if (wc_Sha256Update(&h, buf, (word32)n) != 0)
      rv = -1;
  if (ferror(f) || wc_Sha256Final(&h, out) != 0)
    rv = -1;
  wc_Sha256Free(&h);
  fclose(f);
  return rv;
}
