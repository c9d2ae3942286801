#!/usr/bin/env bash
# Build the fuzz seed corpus in fuzz/corpus/<target>/.
#
# Two kinds of seeds:
# - committed (no key material): protocol frames of every message type and
#   hand-made PEM oddities; rewritten here so they stay in step with the
#   wire format (`fuzz/make-corpus.sh --committed` rewrites only these);
# - generated at run time, `gen-*` (git-ignored): a throwaway test CA and
#   leaves of RSA-2048, ECDSA P-256, ECDSA P-384 and Ed25519 made with the
#   openssl CLI, so real certificates and keys reach the parsers without a
#   private key ever being committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus"
mkdir -p "$corpus/protocol_reader" "$corpus/bundle_parse" "$corpus/validate"

# be32 N: N as 4 big-endian bytes.
be32() { printf "\\x$(printf %02x $(($1 >> 24 & 255)))\\x$(printf %02x $(($1 >> 16 & 255)))\\x$(printf %02x $(($1 >> 8 & 255)))\\x$(printf %02x $(($1 & 255)))"; }
be16() { printf "\\x$(printf %02x $(($1 >> 8 & 255)))\\x$(printf %02x $(($1 & 255)))"; }
# frame TAG BODY-FILE: tag byte, length, body.
frame() { printf "\\x$(printf %02x "$1")"; be32 "$(stat -c %s "$2")"; cat "$2"; }
# json TAG TEXT
json() { local f; f="$(mktemp)"; printf '%s' "$2" >"$f"; frame "$1" "$f"; rm -f "$f"; }
# bundle NAME CHAIN-FILE KEY-FILE: the binary bundle frame.
bundle() {
  local f; f="$(mktemp)"
  { printf "\\x$(printf %02x ${#1})%s" "$1"
    be32 "$(stat -c %s "$2")"; cat "$2"
    be32 "$(stat -c %s "$3")"; cat "$3"; } >"$f"
  frame 4 "$f"; rm -f "$f"
}

fp=$(printf 'AB:%.0s' $(seq 31))AB
hello='{"magic":"certsync","version":1,"agent":"certsync-push 0.1.0","dry_run":false,"force":false}'
offer='{"certs":[{"name":"mail","leaf":"'$fp'","chain_sha256":"'$fp'","key_sha256":"'$fp'","not_after":1900000000}]}'
want='{"certs":[{"name":"mail","wanted":"send","message":"send it"},{"name":"x","wanted":"have","message":""},{"name":"y","wanted":"unknown","message":"no"}]}'
report='{"dry_run":false,"certs":[{"name":"mail","leaf":"'$fp'","exit":"success","nothing_to_do":false,"steps":[{"step":"install","status":"done","message":"installed"}]}]}'
error='{"message":"refused","exit":"refused"}'

committed() {
  local p="$corpus/protocol_reader" tmp
  tmp="$(mktemp -d)"
  printf 'chain' >"$tmp/c"; printf 'key' >"$tmp/k"
  json 1 "$hello" >"$p/hello"
  json 2 "$offer" >"$p/offer"
  json 3 "$want" >"$p/want"
  json 6 '"waited 1.5s for another certsync-receive to finish"' >"$p/log"
  json 7 "$report" >"$p/report"
  json 8 "$error" >"$p/error"
  printf '\x05\x00\x00\x00\x00' >"$p/done"
  bundle mail "$tmp/c" "$tmp/k" >"$p/bundle-dummy"
  bundle '../../etc/passwd' "$tmp/c" "$tmp/k" >"$p/bundle-path-name"
  { json 1 "$hello"; json 2 "$offer"; bundle mail "$tmp/c" "$tmp/k"; printf '\x05\x00\x00\x00\x00'; } >"$p/session-pusher"
  { json 1 "$hello"; json 3 "$want"; json 6 '"x"'; json 7 "$report"; } >"$p/session-receiver"
  printf '\x01\xff\xff\xff\xff' >"$p/oversized-hello"
  printf 'SSH-2.0-OpenSSH_9.2\r\n' >"$p/not-certsync"
  rm -rf "$tmp"

  local b="$corpus/bundle_parse"
  printf -- '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n' >"$b/broken-cert"
  printf -- '-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n' >"$b/encrypted-key-header"
  printf -- '-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n' >"$b/ec-parameters"
  printf -- '-----BEGIN CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n-----END CERTIFICATE-----\n' >"$b/nested-labels"
}

generated() {
  command -v openssl >/dev/null || { echo "make-corpus: openssl not found; only committed seeds" >&2; return 0; }
  local tmp; tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  cd "$tmp"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -days 30 -subj "/CN=certsync fuzz CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
  for kind in rsa2048 p256 p384 ed25519; do
    case $kind in
      rsa2048) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $kind.key 2>/dev/null ;;
      p256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $kind.key ;;
      p384) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out $kind.key ;;
      ed25519) openssl genpkey -algorithm ED25519 -out $kind.key ;;
    esac
    openssl req -new -key $kind.key -subj "/CN=mail.example.com" -out $kind.csr
    printf 'subjectAltName=DNS:mail.example.com,DNS:*.example.org\nbasicConstraints=CA:FALSE\n' >ext
    openssl x509 -req -in $kind.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile ext -out $kind.pem 2>/dev/null
    cat $kind.pem ca.pem >$kind.full
    cp $kind.full "$corpus/bundle_parse/gen-$kind-fullchain"
    cp $kind.key "$corpus/bundle_parse/gen-$kind-key"
    case $kind in
      rsa2048) openssl rsa -in $kind.key -traditional -out $kind.trad 2>/dev/null ;;
      p256|p384) openssl ec -in $kind.key -out $kind.trad 2>/dev/null ;;
      *) cp $kind.key $kind.trad ;;
    esac
    cp $kind.trad "$corpus/bundle_parse/gen-$kind-key-traditional"
    { be16 "$(stat -c %s $kind.full)"; cat $kind.full $kind.key; } >"$corpus/validate/gen-$kind"
    { be16 "$(stat -c %s $kind.pem)"; cat $kind.pem $kind.trad; } >"$corpus/validate/gen-$kind-leaf-only"
    bundle mail $kind.full $kind.key >"$corpus/protocol_reader/gen-bundle-$kind"
  done
  # A mismatched pair and a swapped chain: refusals the fuzzer starts from.
  { be16 "$(stat -c %s p256.full)"; cat p256.full p384.key; } >"$corpus/validate/gen-mismatch"
  { be16 "$(stat -c %s p256.full)"; cat ca.pem p256.pem p256.key; } >"$corpus/validate/gen-swapped"
  cd "$here"
}

committed
if [ "${1:-}" != "--committed" ]; then
  generated
fi
echo "make-corpus: $(find "$corpus" -type f | wc -l) seeds in $corpus"
