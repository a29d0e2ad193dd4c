#!/usr/bin/env bash
# Makes a throwaway CA and certificates for tests and the demo, in DIR:
#   ca.pem / ca.key            the test CA (trusted through api.ca_file)
#   server.pem / server.key    for 127.0.0.1, ::1 and localhost, signed by the CA
#   wrong-host.pem/.key        signed by the CA, but for the name wrong.example only
#   expired.pem / expired.key  signed by the CA, valid for localhost, expired long ago
#   other-ca.pem, untrusted.pem/.key  a CA nobody trusts and a server certificate from it
# Idempotent: does nothing when DIR/server.pem exists. Writes to a temporary
# folder and renames it, so concurrent callers never see half a set.
set -euo pipefail
dir=${1:?usage: make-test-certs.sh DIR}
[ -f "$dir/server.pem" ] && exit 0
mkdir -p "$(dirname "$dir")"
tmp=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
q() { "$@" >/dev/null 2>&1 || { echo "make-test-certs: failed: $*" >&2; "$@"; exit 1; }; }
# Valid from two days ago where faketime is installed, so that a process whose wall
# clock is stepped back (the clock-step tests) still accepts them.
backdated() { if command -v faketime >/dev/null; then faketime -f "-2d" "$@"; else "$@"; fi; }

ca() { # name subject
  q backdated openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=$2" -keyout "$1.key" -out "$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() { # name ca san [extra x509 args...]
  local name=$1 issuer=$2 san=$3; shift 3
  q openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$name" \
    -keyout "$name.key" -out "$name.csr"
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" > "$name.ext"
  q backdated openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial \
    -extfile "$name.ext" -out "$name.pem" "$@"
}

ca ca "klingd test CA"
ca other-ca "untrusted test CA"
leaf server ca "DNS:localhost,IP:127.0.0.1,IP:::1" -days 3650
leaf wrong-host ca "DNS:wrong.example" -days 3650
leaf untrusted other-ca "DNS:localhost,IP:127.0.0.1,IP:::1" -days 3650
# An expired certificate: valid from 2000 to 2001 (openssl x509 -not_before/-not_after
# are OpenSSL 3.4+, so sign it through "openssl ca", which takes explicit dates).
mkdir -p ca-db && : > ca-db/index.txt && echo 1000 > ca-db/serial
cat > ca.cnf <<CNF
[ca]
default_ca = test
[test]
dir = ./ca-db
database = ./ca-db/index.txt
serial = ./ca-db/serial
new_certs_dir = ./ca-db
certificate = ./ca.pem
private_key = ./ca.key
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
[ext]
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
CNF
q openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=expired" \
  -keyout expired.key -out expired.csr
q openssl ca -batch -config ca.cnf -extensions ext -startdate 20000101000000Z \
  -enddate 20010101000000Z -in expired.csr -out expired.pem -notext
rm -rf ca-db ./*.csr ./*.ext ./*.srl ca.cnf
chmod 600 ./*.key
cd /
if ! mv -T "$tmp" "$dir" 2>/dev/null; then
  [ -f "$dir/server.pem" ] || { echo "make-test-certs: cannot create $dir" >&2; exit 1; }
fi
trap - EXIT
