#!/usr/bin/env bash
# The newcomer's first command: installs what is missing, builds, provisions a pair of
# development HSMs (SoftHSM2 tokens under target/dev/, every key cloned into both), and runs the
# system on its embedded defaults:
#   - the signing gateway   gRPC over mTLS 127.0.0.1:50051 (dev certificates in target/dev/tls/),
#                           metrics http://127.0.0.1:9464/metrics, audit log target/dev/audit/
#   - the OCSP pre-signer   signs through the gateway into target/dev/ocsp.sqlite
#   - the OCSP responder    http://127.0.0.1:8080/, metrics http://127.0.0.1:9465/metrics
# Ctrl-C stops all three (the gateway drains in-flight requests first).
set -euo pipefail
cd "$(dirname "$0")/../.."

hsm-config/dev/setup.sh
cargo build --release -p signer -p hsm-config -p hsm-bench -p ocsp

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

# The dev CA: a self-signed certificate for the gateway's dev-p256 key, made through the gateway.
if [ ! -s "$dev/issuer.pem" ]; then
    for _ in $(seq 1 50); do
        env $(tls_env ceremony) target/release/hsmgate-ocsp issuer-cert --gateway https://127.0.0.1:50051 --key dev-p256 \
            --subject "CN=hsmgate dev CA,O=hsmgate" --days 3650 --out "$dev/issuer.pem" 2>/dev/null && break
        sleep 0.2
    done
fi
echo "issuer:  $dev/issuer.pem"

target/release/hsmgate-ocsp import --config ocsp/examples/dev.toml ocsp/examples/dev-certificates.txt
env $(tls_env ocsp-presigner) target/release/hsmgate-ocsp presign --config ocsp/examples/dev.toml > /dev/null 2> "$dev/presign.log" &
pids+=($!)

cat <<MSG
audit:   $dev/audit/ — check the chain with: target/release/signer audit verify $dev/audit
bench:   env $(tls_env bench) target/release/hsm-bench compare --config hsm-config/examples/dev.toml --key dev-p256 --gateway https://127.0.0.1:50051
OCSP:    http://127.0.0.1:8080/ — try, once the pre-signer has run (a few seconds):
  openssl ocsp -issuer $dev/issuer.pem -CAfile $dev/issuer.pem -serial 0x1001 -url http://127.0.0.1:8080 -no_nonce
  openssl ocsp -issuer $dev/issuer.pem -CAfile $dev/issuer.pem -serial 0x1003 -url http://127.0.0.1:8080 -no_nonce
MSG
target/release/hsmgate-ocsp serve --config ocsp/examples/dev.toml &
pids+=($!)
wait -n "${pids[@]}"
