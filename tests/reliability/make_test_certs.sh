#!/usr/bin/env bash
# Makes throwaway TLS material for the reliability tests in OUTDIR (created), with openssl:
#   ca.pem ca.key              the test CA
#   server.pem server.key      signed by it, for 127.0.0.1 / ::1 / localhost
#   client.pem client.key      signed by it, CN=trainer-a (mutual TLS)
#   rogue-ca.pem rogue-client.pem rogue-client.key   a client of another CA, which attnd must refuse
#   next-ca.pem next-server.pem next-server.key      a second server identity (certificate rotation)
# P-256 keys, valid for two days. Nothing here is ever used outside a test.
set -euo pipefail
out=${1:?usage: make_test_certs.sh OUTDIR}
mkdir -p "$out"
cd "$out"
days=2
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # name CN
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days "$days" -subj "/CN=$2" -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() {  # name CA CN extensions
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -sha256 -days "$days" \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca "attnd test CA"
ca rogue-ca "rogue test CA"
ca next-ca "attnd next test CA"
leaf server ca localhost $'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth'
leaf next-server next-ca localhost $'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth'
leaf client ca trainer-a 'extendedKeyUsage=clientAuth'
leaf rogue-client rogue-ca trainer-a 'extendedKeyUsage=clientAuth'
rm -f ./*.srl
chmod 600 ./*.key
