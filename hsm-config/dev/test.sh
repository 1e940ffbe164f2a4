#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds every crate (the tests load the
# hsm-sim PKCS#11 module and run the real signer binary), then runs every test against real
# SoftHSM2 tokens that the tests provision for themselves in temporary directories, and the
# ACME clients' end-to-end script.
set -euo pipefail
cd "$(dirname "$0")/../.."
# rustup's cargo, also when this shell's PATH does not have it (a fresh CI shell).
export PATH="$HOME/.cargo/bin:$PATH"

hsm-config/dev/setup.sh
cargo build --workspace --all-targets
hsm-config/deploy/check.sh --e2e # alert rules (promtool, live Prometheus), dashboard, units, metric names
cargo test --workspace
# End to end against the real stack: ACME clients (certbot, lego, certbot >= 4.1 for ARI,
# dehydrated, uacme, acme-tiny), the OCSP client matrix (openssl, Python cryptography, Go
# x/crypto/ocsp), gRPC health/reflection clients, slow connections and hostile input.
ca-frontend/e2e/clients.sh
# The multi-instance deployment (two gateways over four HSMs behind p11-kit servers, two ACME
# frontends on PostgreSQL, responders and CRL updaters on a Redis Cluster) and its drills in
# a short form: a gateway SIGKILLed, one datacenter's HSM pair lost, under ACME load.
bench/drills/run.sh --duration 12 --at 3 --hold 5
