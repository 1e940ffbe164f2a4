#!/usr/bin/env bash
# Installs what hsmgate needs from Debian's packages, if missing: SoftHSM2 (the development
# HSM), OpenSC's pkcs11-tool, p11-kit (a server per HSM, for real "process died" faults),
# OpenSSL (key generation in provisioning; `openssl ocsp` checks the OCSP responder), curl,
# Python's `cryptography` and grpcio clients, Go's x/crypto/ocsp, and the ACME clients the
# frontend's end-to-end test drives (certbot, lego, dehydrated, uacme, acme-tiny, pebble's
# challenge DNS). Idempotent; run as root or with sudo.
set -euo pipefail

need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(libsofthsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v p11-kit >/dev/null || need+=(p11-kit)
[ -e /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so ] || need+=(p11-kit-modules)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v cc >/dev/null || need+=(gcc)
# ACME clients nobody here wrote, and Pebble's fake DNS (pebble-challtestsrv), for
# ca-frontend/e2e/clients.sh; python3-venv for certbot >= 4.1 (ARI) from PyPI.
command -v certbot >/dev/null || need+=(certbot)
command -v lego >/dev/null || need+=(lego)
command -v pebble-challtestsrv >/dev/null || need+=(pebble)
python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
# The client matrix (issue 13): three more ACME clients, and Go with x/crypto/ocsp for the OCSP
# check built offline (GOPATH=/usr/share/gocode) in ca-frontend/e2e/ocspcheck.
command -v dehydrated >/dev/null || need+=(dehydrated)
command -v uacme >/dev/null || need+=(uacme)
command -v acme-tiny >/dev/null || need+=(acme-tiny)
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/golang.org/x/crypto/ocsp ] || need+=(golang-golang-x-crypto-dev)
# hsm-config/deploy/check.sh (issue 18): promtool checks and unit-tests the alert rules,
# systemd-analyze verifies the service units, PyYAML reads the rules for the metric-name check.
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
python3 -c "import yaml" 2>/dev/null || need+=(python3-yaml)
# The multi-instance deployment and its drills (bench/drills, issue 19): a Redis Cluster of its
# own, a schema on the machine's PostgreSQL (psql creates it).
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v psql >/dev/null || need+=(postgresql-client)

if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Python `cryptography` checks OCSP responses in the tests, independently of our code; grpcio's
# health-checking and reflection clients check the gateway's gRPC services, and grpcio-tools
# makes the stubs hostile.py calls the gateway with (ca-frontend/e2e/).
if command -v python3 >/dev/null; then
    py_need=()
    python3 -c "import cryptography" 2>/dev/null || py_need+=(cryptography)
    python3 -c "import grpc_health" 2>/dev/null || py_need+=(grpcio-health-checking)
    python3 -c "import grpc_reflection" 2>/dev/null || py_need+=(grpcio-reflection)
    python3 -c "import grpc_tools" 2>/dev/null || py_need+=(grpcio-tools)
    if [ ${#py_need[@]} -gt 0 ]; then
        python3 -m pip install --quiet "${py_need[@]}"
    fi
fi
# Rust cannot come from Debian here (bookworm's rustc is 1.63; the workspace needs 1.94, edition
# 2024) nor from rustup.rs when only the package registries are reachable: the toolchain must be
# on the machine. Say so precisely instead of failing later in the build.
command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "cargo >= 1.94 is required: install it with rustup (https://rustup.rs)" >&2
    exit 1
}
PATH="$HOME/.cargo/bin:$PATH"
rustc_minor=$(rustc --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
if [ "${rustc_minor:-0}" -lt 94 ]; then
    echo "rustc >= 1.94 is required (found: $(rustc --version)); update with: rustup update stable" >&2
    exit 1
fi
