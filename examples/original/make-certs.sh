#!/bin/sh
# Certificates for ztna made with openssl, for a deployment that made its
# certificates with openssl before (docs/migrating.md). ztna reads roles
# and services from the SAN DNS names:
#   intermediate  ztna-server (plus its public name or address)
#   connector     ztna-connector and connector.<service>.ztna per service
#   agent         agent.<service>.ztna per service (CN: the user's name,
#                 OU: groups, for the policy file)
# ztna keygen makes the same certificates in one command each.
#
#   make-certs.sh DIR
set -eu
d=${1:?usage: make-certs.sh DIR}
mkdir -p "$d"
cd "$d"
umask 077
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -keyout ca-key.pem -out ca-cert.pem -days 3650 \
  -subj "/O=example/CN=example ztna CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name subject extensions
  openssl req $ec -keyout "$1-key.pem" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca-cert.pem -CAkey ca-key.pem \
    -CAcreateserial -days 365 -out "$1-cert.pem" -extfile "$1.ext" \
    2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/O=example/CN=relay" \
  "subjectAltName=DNS:ztna-server,DNS:relay.example.org,IP:203.0.113.10
extendedKeyUsage=serverAuth"
issue connector "/O=example/OU=connector/CN=app1" \
  "subjectAltName=DNS:ztna-connector,DNS:connector.echo-service.ztna,DNS:connector.web-app.ztna
extendedKeyUsage=serverAuth,clientAuth"
issue agent "/O=example/OU=engineering/CN=alice" \
  "subjectAltName=DNS:agent.echo-service.ztna,DNS:agent.web-app.ztna
extendedKeyUsage=clientAuth"
# The original's file names for the intermediate's pair.
mv server-cert.pem cert.pem
mv server-key.pem key.pem
chmod 0644 ./*cert*.pem
