#!/usr/bin/env bash
# End to end: a real Prometheus (Debian's package) scrapes a real gateway whose HSMs are SoftHSM2
# tokens each behind its own `p11-kit server` process; the script kills HSM servers and reads the
# alerts of alerts.yml from Prometheus's HTTP API:
#   1. east-1's server killed  -> HsmgateHsmOutOfRotation{hsm="east-1"} fires;
#   2. east-2's server killed  -> HsmgateDatacenterPairOut{datacenter="dc-east"} fires,
#                                 HsmgateNoHsmInRotation does not (west-1 still signs);
# and every signing call made meanwhile succeeds (another HSM serves it: invariant 3).
# The rules are alerts.yml with every `for:` shortened to 5s (same expressions, labels and
# annotations), so the test takes seconds rather than minutes.
#
# The gateway finds a dead HSM when a call to it fails (it does not poll HSMs in rotation), so
# the script signs in a loop (`hsmgate-ocsp issuer-cert`, one certificate signature per call).
# Everything runs on loopback ports picked free at start, in a temporary directory; only the
# processes this script started are stopped. Usage: e2e-hsm-alert.sh [BIN_DIR] (default
# target/debug; needs signer, hsm-config, hsmgate-ocsp, hsmgate-stack).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
softhsm=/usr/lib/softhsm/libsofthsm2.so
client=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
for f in "$bin/signer" "$bin/hsm-config" "$bin/hsmgate-ocsp" "$bin/hsmgate-stack" "$softhsm" "$client"; do
    [ -e "$f" ] || { echo "e2e-hsm-alert: $f is missing (cargo build; hsm-config/dev/setup.sh)" >&2; exit 1; }
done
for tool in prometheus p11-kit curl python3; do
    command -v "$tool" >/dev/null || { echo "e2e-hsm-alert: $tool is missing (hsm-config/dev/setup.sh)" >&2; exit 1; }
done

t="$(mktemp -d "${TMPDIR:-/tmp}/hsmgate-e2e-alert.XXXXXX")"
pids=() # process group leaders (setsid) this script started
cleanup() {
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
    if [ "${keep:-0}" = 1 ]; then echo "kept $t" >&2; else rm -rf "$t"; fi
}
trap cleanup EXIT
fail() {
    echo "e2e-hsm-alert FAILED: $*" >&2
    for log in "$t"/*.log; do echo "--- $log (tail)" >&2; tail -n 15 "$log" >&2 || true; done
    keep=1
    exit 1
}
start() { # start NAME CMD...: in its own process group, output in $t/NAME.log
    local name=$1
    shift
    setsid "$@" > "$t/$name.log" 2>&1 < /dev/null &
    pids+=($!)
    eval "pid_$name=$!"
    disown # killed by process group below; no job notices
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(free_port) metrics=$(free_port) prom=$(free_port)

# --- HSMs: three SoftHSM2 tokens (two in dc-east, one in dc-west), one key cloned into all ----
export SOFTHSM2_CONF="$t/softhsm2.conf"
# e2e-gateway.toml on this run's ports: as it is for provisioning (SoftHSM2 directly), and with
# every HSM behind its own p11-kit server for the gateway (the stack kit's typed rewrite).
derive() { # derive TO [--set ...]
    local to=$1
    shift
    "$bin/hsmgate-stack" config gateway "$here/e2e-gateway.toml" "$to" \
        --set "gateway.gateway.listen=127.0.0.1:$grpc" --set "gateway.gateway.metrics_listen=127.0.0.1:$metrics" \
        "$@" 2> "$t/derive.log" || fail "hsmgate-stack config: $(cat "$t/derive.log")"
}
derive "$t/provision.toml"
via_p11kit=()
for hsm in dc0.0:east-1 dc0.1:east-2 dc1.0:west-1; do
    at=${hsm%%:*} h=${hsm#*:}
    path="gateway.datacenters.${at:2:1}.hsms.${at:4:1}"
    via_p11kit+=(--set "$path.module=$client" --set "$path.module_env.P11_KIT_SERVER_ADDRESS=unix:path=$t/$h.sock")
done
"$bin/hsm-config" provision "$t/provision.toml" > "$t/provision.log" 2>&1 || fail "provision"
"$bin/hsm-config" dev-certs "$t/tls" --client bench > "$t/dev-certs.log" 2>&1 || fail "dev-certs"
derive "$t/gateway.toml" "${via_p11kit[@]}"
"$bin/hsm-config" check "$t/gateway.toml" > "$t/check.log" 2>&1 || fail "hsm-config check"

for h in east-1 east-2 west-1; do
    start "p11kit_${h/-/_}" p11-kit server -f -n "$t/$h.sock" --provider "$softhsm" "pkcs11:token=${h^^}"
done
for h in east-1 east-2 west-1; do
    for _ in $(seq 100); do [ -S "$t/$h.sock" ] && break; sleep 0.1; done
    [ -S "$t/$h.sock" ] || fail "p11-kit server for $h not listening"
done

# --- the gateway --------------------------------------------------------------------------------
start signer "$bin/signer" --config "$t/gateway.toml"
for _ in $(seq 200); do grep -q '^READY' "$t/signer.log" && break; sleep 0.1; done
grep -q '^READY' "$t/signer.log" || fail "gateway not READY"
scrape() { curl -fsS --max-time 5 "http://127.0.0.1:$metrics/metrics"; }
for _ in $(seq 100); do [ "$(scrape | grep -c '^hsmgate_hsm_up{.*} 1$')" = 3 ] && break; sleep 0.1; done
[ "$(scrape | grep -c '^hsmgate_hsm_up{.*} 1$')" = 3 ] || fail "not every HSM in rotation at start"

# --- Prometheus, with alerts.yml (for: 5s) ------------------------------------------------------
mkdir -p "$t/prom"
sed -E 's/^( *)for: [0-9]+[smh]$/\1for: 5s/' "$here/prometheus/alerts.yml" > "$t/prom/alerts.yml"
cat > "$t/prom/prometheus.yml" <<EOF
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [alerts.yml]
scrape_configs:
  - job_name: hsmgate-gateway
    static_configs: [{ targets: ["127.0.0.1:$metrics"] }]
EOF
promtool check config "$t/prom/prometheus.yml" > "$t/promtool.log" 2>&1 || fail "promtool check config"
start prometheus prometheus --config.file="$t/prom/prometheus.yml" --storage.tsdb.path="$t/prom/data" \
    --web.listen-address="127.0.0.1:$prom"
api() { curl -fsS --max-time 5 "http://127.0.0.1:$prom/api/v1/$1"; }
for _ in $(seq 150); do api targets 2>/dev/null | grep -q '"health":"up"' && break; sleep 0.2; done
api targets | grep -q '"health":"up"' || fail "Prometheus does not scrape the gateway"

# --- signing traffic ------------------------------------------------------------------------------
calls=0
sign() { # one signature through the gateway; every call must succeed
    calls=$((calls + 1))
    HSMGATE_TLS_CA="$t/tls/ca.pem" HSMGATE_TLS_CERT="$t/tls/bench.pem" HSMGATE_TLS_KEY="$t/tls/bench.key" \
        "$bin/hsmgate-ocsp" issuer-cert --gateway "https://127.0.0.1:$grpc" --key e2e-p256 \
        --subject "CN=e2e $calls" --days 1 --out "$t/cert-$calls.pem" >> "$t/sign.log" 2>&1 ||
        fail "signing call $calls failed (another HSM should have served it)"
}
# firing ALERTNAME LABEL=VALUE: the alert is firing in Prometheus with that label
firing() {
    api alerts | python3 -c '
import json, sys
name, label = sys.argv[1], sys.argv[2].split("=", 1)
alerts = json.load(sys.stdin)["data"]["alerts"]
sys.exit(0 if any(a["labels"].get("alertname") == name and a["labels"].get(label[0]) == label[1]
                  and a["state"] == "firing" for a in alerts) else 1)' "$1" "$2"
}
# wait_firing ALERT LABEL=VALUE: sign until it fires (at most 60 s)
wait_firing() {
    local deadline=$((SECONDS + 60))
    until firing "$1" "$2"; do
        [ $SECONDS -lt $deadline ] || fail "$1{$2} did not fire within 60 s; alerts: $(api alerts)"
        sign
        sleep 0.5
    done
    echo "  $1{$2} firing (after $calls signing calls, all successful)"
}

for _ in 1 2 3; do sign; done
firing HsmgateHsmOutOfRotation hsm=east-1 && fail "HsmgateHsmOutOfRotation fires with every HSM up"

echo "== kill east-1's p11-kit server"
kill -KILL -- "-$pid_p11kit_east_1"
wait_firing HsmgateHsmOutOfRotation hsm=east-1
firing HsmgateDatacenterPairOut datacenter=dc-east && fail "HsmgateDatacenterPairOut fires with east-2 up"

echo "== kill east-2's p11-kit server"
kill -KILL -- "-$pid_p11kit_east_2"
wait_firing HsmgateDatacenterPairOut datacenter=dc-east
firing HsmgateNoHsmInRotation instance="127.0.0.1:$metrics" && fail "HsmgateNoHsmInRotation fires while west-1 signs"
sign
echo "e2e-hsm-alert: OK ($calls signing calls, none failed)"
