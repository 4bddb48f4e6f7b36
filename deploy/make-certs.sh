#!/usr/bin/env bash
# A cluster CA and one certificate per node, for keyplane's mutual-TLS Raft
# links (docs/operations.md, "Securing node links"). For test and demo
# clusters, and as a readable recipe: production clusters usually get their
# certificates from their own CA tooling instead.
#
#   deploy/make-certs.sh DIR NODE [NODE...]
#
# Writes into DIR (created if missing, mode 0700):
#
#   ca.pem, ca.key         the cluster CA (made on the first run and reused
#                          after, so nodes can be added later)
#   NODE.pem, NODE.key     the node's certificate (signed by the CA) and key
#
# A node is configured with
#
#   tls:
#     cert_file: DIR/NODE.pem
#     key_file: DIR/NODE.key
#     ca_file: DIR/ca.pem
#
# Every certificate the CA signs is accepted as a cluster member, so keep
# ca.key off the nodes, and use one CA per cluster. Each certificate names
# the node (CN and subjectAltName DNS) and, with KEYPLANE_CERT_IPS
# (comma-separated, default 127.0.0.1), its IP addresses; keyplane checks
# the CA's signature and the validity dates, not the names. Keys are EC
# P-256; certificates are valid for KEYPLANE_CERT_DAYS (default 825) days.
# An existing NODE.pem is left alone unless KEYPLANE_CERT_FORCE=1.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "make-certs: openssl not found (apt-get install openssl)" >&2; exit 1; }

dir=$1
shift
days=${KEYPLANE_CERT_DAYS:-825}
ips=${KEYPLANE_CERT_IPS:-127.0.0.1}

umask 077
mkdir -p "$dir"
chmod 700 "$dir"

if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "$days" \
    -subj "/O=keyplane/CN=keyplane cluster CA $(date -u +%Y%m%dT%H%M%SZ)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "make-certs: new cluster CA $dir/ca.pem"
fi

for node in "$@"; do
  case $node in
    *[!A-Za-z0-9._-]* | "") echo "make-certs: bad node name \"$node\"" >&2; exit 2 ;;
  esac
  if [ -s "$dir/$node.pem" ] && [ "${KEYPLANE_CERT_FORCE:-0}" != 1 ]; then
    echo "make-certs: $dir/$node.pem exists (KEYPLANE_CERT_FORCE=1 replaces it)"
    continue
  fi
  san="DNS:$node"
  IFS=, read -ra addrs <<<"$ips"
  for a in "${addrs[@]}"; do
    [ -n "$a" ] && san="$san,IP:$a"
  done
  ext=$(mktemp)
  csr=$(mktemp)
  trap 'rm -f "$ext" "$csr"' EXIT
  # Both serverAuth and clientAuth: a node accepts links and makes them.
  cat >"$ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san
EOF
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/$node.key" -out "$csr" -subj "/O=keyplane/CN=$node" 2>/dev/null
  openssl x509 -req -in "$csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/$node.pem" -days "$days" -extfile "$ext" 2>/dev/null
  rm -f "$ext" "$csr"
  chmod 600 "$dir/$node.key"
  chmod 644 "$dir/$node.pem"
  echo "make-certs: $dir/$node.pem, $dir/$node.key"
done
