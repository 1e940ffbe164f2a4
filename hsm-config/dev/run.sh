#!/usr/bin/env bash
# The newcomer's first command: installs what is missing, builds, provisions a pair of
# development HSMs (SoftHSM2 tokens under target/dev/, every key cloned into both), and runs the
# system on its embedded defaults:
#   - the signing gateway   gRPC over mTLS 127.0.0.1:50051 (dev certificates in target/dev/tls/),
#                           metrics http://127.0.0.1:9464/metrics, audit log target/dev/audit/
#   - the OCSP pre-signer   signs through the gateway into target/dev/ocsp.sqlite, metrics :9467
#   - the CRL updater       signs the intermediate's 8 CRL shards through the gateway
#                           (target/dev/ocsp.sqlite, files under target/dev/crl/), metrics :9468
#   - the OCSP responder    http://127.0.0.1:8080/, metrics http://127.0.0.1:9465/metrics,
#                           CRL shards http://127.0.0.1:8080/dev-ca/<n>.crl, list /dev-ca.json
#   - the ACME frontend     http://127.0.0.1:4001/directory (CA records in target/dev/ca.sqlite),
#                           validating on 127.0.0.1 (http-01 port 5002, tls-alpn-01 port 5001,
#                           DNS from pebble-challtestsrv on 127.0.0.1:8053), corroborated by three
#                           remote perspectives on 127.0.0.1:7101-7103 (mTLS), metrics
#                           http://127.0.0.1:9466/metrics
# Ctrl-C stops them all (the gateway drains in-flight requests first).
set -euo pipefail
cd "$(dirname "$0")/../.."
# rustup's cargo, also when this shell's PATH does not have it (a fresh CI shell).
export PATH="$HOME/.cargo/bin:$PATH"

hsm-config/dev/setup.sh
cargo build --release -p signer -p hsm-config -p hsm-bench -p ocsp -p ca-frontend

dev=target/dev
mkdir -p "$dev"
export SOFTHSM2_CONF="$PWD/$dev/softhsm2.conf"
target/release/hsm-config check hsm-config/examples/dev.toml
target/release/hsm-config provision hsm-config/examples/dev.toml --public-keys "$dev/public-keys"
# mTLS: a dev CA, the gateway's certificate for 127.0.0.1, a certificate per client
# (ocsp-presigner, ca-frontend, ceremony, bench). Kept across runs.
target/release/hsm-config dev-certs "$dev/tls"
tls_env() { # the client certificate a command uses to reach the gateway
    echo "HSMGATE_TLS_CA=$dev/tls/ca.pem HSMGATE_TLS_CERT=$dev/tls/$1.pem HSMGATE_TLS_KEY=$dev/tls/$1.key"
}

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# The gateway, in the background; wait for its READY line and its HSMs.
target/release/signer --config hsm-config/examples/dev.toml > "$dev/signer.out" 2> "$dev/signer.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^READY' "$dev/signer.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^READY' "$dev/signer.out" || { cat "$dev/signer.log"; exit 1; }
echo "gateway: $(grep '^READY' "$dev/signer.out") (log: $dev/signer.log)"

# The dev CA: a root for the gateway's dev-root key and an intermediate for dev-p256, signed by
# the root, both through the gateway by the `ceremony` identity (the keys never leave the HSMs).
if [ ! -s "$dev/root.pem" ] || [ ! -s "$dev/issuer.pem" ]; then
    for _ in $(seq 1 50); do
        env $(tls_env ceremony) target/release/ca-frontend ceremony --gateway https://127.0.0.1:50051 \
            --root-key dev-root --intermediate-key dev-p256 \
            --root-out "$dev/root.pem" --intermediate-out "$dev/issuer.pem" 2>/dev/null && break
        sleep 0.2
    done
fi
echo "CA:      root $dev/root.pem, intermediate $dev/issuer.pem"
cat "$dev/issuer.pem" "$dev/root.pem" > "$dev/ca-chain.pem"

target/release/hsmgate-ocsp import --config ocsp/examples/dev.toml ocsp/examples/dev-certificates.txt
env $(tls_env ocsp-presigner) target/release/hsmgate-ocsp presign --config ocsp/examples/dev.toml --metrics-listen 127.0.0.1:9467 > /dev/null 2> "$dev/presign.log" &
pids+=($!)
env $(tls_env ocsp-presigner) target/release/hsmgate-ocsp crl-update --config ocsp/examples/dev.toml \
    --metrics-listen 127.0.0.1:9468 > /dev/null 2> "$dev/crl-update.log" &
pids+=($!)
crl_url=$(target/release/hsmgate-ocsp crl-urls --config ocsp/examples/dev.toml --issuer dev-ca --serial 1003)

# Validation DNS for the ACME frontend: Pebble's challenge test server answers every name with
# 127.0.0.1 (and serves the TXT records dns-01 clients set through its management API).
pebble-challtestsrv -dns01 127.0.0.1:8053 -management 127.0.0.1:8055 -http01 "" -https01 "" \
    -tlsalpn01 "" -defaultIPv6 "" > "$dev/challtestsrv.log" 2>&1 &
pids+=($!)
# Three remote validation perspectives (BR §3.2.2.9) the frontend asks over mTLS: each repeats
# every challenge and CAA check; here all three share the challenge DNS.
for p in dev-a:7101 dev-b:7102 dev-c:7103; do
    target/release/ca-frontend perspective --config ca-frontend/examples/perspective.toml \
        --name "${p%%:*}" --listen "127.0.0.1:${p##*:}" > "$dev/perspective-${p%%:*}.out" \
        2> "$dev/perspective-${p%%:*}.log" &
    pids+=($!)
done
env $(tls_env ca-frontend) target/release/ca-frontend serve --config ca-frontend/examples/dev.toml \
    > "$dev/acme.out" 2> "$dev/acme.log" &
pids+=($!)

cat <<MSG
audit:   $dev/audit/ — check the chain with: target/release/signer audit verify $dev/audit
bench:   env SOFTHSM2_CONF=$SOFTHSM2_CONF $(tls_env bench) target/release/hsm-bench compare --config hsm-config/examples/dev.toml --key dev-bench-p256 --gateway https://127.0.0.1:50051
OCSP:    http://127.0.0.1:8080/ — try, once the pre-signer has run (a few seconds):
  openssl ocsp -issuer $dev/issuer.pem -CAfile $dev/root.pem -serial 0x1001 -url http://127.0.0.1:8080 -no_nonce
  openssl ocsp -issuer $dev/issuer.pem -CAfile $dev/root.pem -serial 0x1003 -url http://127.0.0.1:8080 -no_nonce
CRL:     $crl_url lists revoked serial 1003 (all shards: http://127.0.0.1:8080/dev-ca.json;
         updater log $dev/crl-update.log, metrics http://127.0.0.1:9468/metrics) — check with:
  curl -s $crl_url | openssl crl -inform DER -CAfile $dev/ca-chain.pem -noout -text
ACME:    http://127.0.0.1:4001/directory (log: $dev/acme.log, metrics http://127.0.0.1:9466/metrics) — get a certificate with:
  certbot certonly --server http://127.0.0.1:4001/directory --standalone --http-01-port 5002 \
    --config-dir $dev/certbot --work-dir $dev/certbot --logs-dir $dev/certbot \
    --agree-tos --register-unsafely-without-email -d www.example.test
  openssl verify -CAfile $dev/root.pem -untrusted $dev/issuer.pem $dev/certbot/live/www.example.test/cert.pem
metrics: gateway :9464, responder :9465, ACME :9466, pre-signer :9467, CRL updater :9468
  (http://127.0.0.1:PORT/metrics; scrape config and alert rules: hsm-config/deploy/prometheus/)
MSG
target/release/hsmgate-ocsp serve --config ocsp/examples/dev.toml &
pids+=($!)
wait -n "${pids[@]}"
