/* pki.h - private keys on disk (EC P-256 and Ed25519), shared by keygen
 * and tls. */
#ifndef ZTNA_PKI_H
#define ZTNA_PKI_H

#include <stddef.h>
#include <stdint.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/ed25519.h>

struct pki_key {
  int type; /* ECC_TYPE or ED25519_TYPE (asn_public.h); 0 when empty */
  ecc_key ecc;
  ed25519_key ed;
};

/* Loads a PEM private key (SEC1 EC, or PKCS#8 EC/Ed25519) with its public
 * half. Returns 0, or ZTNA_ERR_CERT/-errno with a message in err. */
int pki_key_load(struct pki_key *k, const char *path, char *err,
                 size_t errlen);
/* Wipes and frees the key. Accepts an empty key. */
void pki_key_free(struct pki_key *k);
/* The key's SubjectPublicKeyInfo in DER; returns its length or < 0. */
int pki_key_spki(struct pki_key *k, uint8_t *out, size_t cap);
/* Returns 0 when the key in key_path belongs to the first certificate in
 * cert_path, else ZTNA_ERR_CERT with a message. (wolfSSL's own check
 * passes mismatched EC keys in this build.) */
int pki_key_matches_cert(const char *key_path, const char *cert_path,
                         char *err, size_t errlen);

/* A secret that stays the same while the key file does: SHA-256 over a
 * label and the file's bytes. Returns 0 or a negative error. */
int pki_derive_secret(const char *key_path, const char *label,
                      uint8_t out[32]);

/* SHA-256 of a file's bytes (what a reload compares). 0 or -1. */
int pki_file_sha256(const char *path, uint8_t out[32]);

#endif
