#!/usr/bin/env bash
# The newcomer's first command: installs what is missing, builds, provisions a pair of
# development HSMs (SoftHSM2 tokens under target/dev/, every key cloned into both), and runs
# the signing gateway on hsm-config/examples/dev.toml (gRPC 127.0.0.1:50051, metrics
# http://127.0.0.1:9464/metrics). Ctrl-C drains and stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."

hsm-config/dev/setup.sh
cargo build --release -p signer -p hsm-config -p hsm-bench

export SOFTHSM2_CONF="$PWD/target/dev/softhsm2.conf"
target/release/hsm-config check hsm-config/examples/dev.toml
target/release/hsm-config provision hsm-config/examples/dev.toml --public-keys target/dev/public-keys
echo "public keys: target/dev/public-keys/"
exec target/release/signer --config hsm-config/examples/dev.toml
