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
