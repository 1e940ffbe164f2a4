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
cargo build --release -p signer -p hsm-config -p hsm-bench -p ocsp -p ca-frontend -p hsmgate-stack
# Provisioning, dev certificates, the dev CA and every service, in the order of the stack kit's
# table of services (bench/stack/src/stack/); the example configs written to target/dev/
# {gateway,ocsp,acme,perspective}.toml; logs and files under target/dev/. (A stack of your own
# beside it: target/release/hsmgate-stack up --dir DIR --ports ephemeral --env-file DIR/stack.env.)
exec target/release/hsmgate-stack up
