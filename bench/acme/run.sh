#!/usr/bin/env bash
# ACME orders per second, end to end, ca-frontend against Pebble in the same run (issue: "≥ 2×
# Pebble's orders/s"):
#
#  1. the hsmgate stack on loopback as ca-frontend/e2e/clients.sh starts it (SoftHSM2 tokens,
#     the gateway over mTLS, the ceremony's root + intermediate, the OCSP responder,
#     pebble-challtestsrv as DNS for every name → 127.0.0.1), with ca-frontend serving HTTPS
#     (a P-256 localhost certificate from a throw-away TLS CA) and its rate limits raised;
#  2. Debian's `pebble` on HTTPS with a certificate from the same TLS CA, the same DNS, and
#     PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0, PEBBLE_AUTHZREUSE=0 (validation is real:
#     PEBBLE_VA_ALWAYS_VALID is not set), restarted before each of its rounds;
#  3. `hsm-bench acme` (instant-acme) alternately against pebble and ca-frontend, ROUNDS rounds at
#     each --concurrency, each run DURATION measured after a warm-up, the http-01 answers served
#     by hsm-bench itself on 127.0.0.1:$HTTP (both CAs' http-01 port), the CPU of every process
#     of the stack measured in the window, the gateway's signatures counted from its metrics;
#  3b. with --perspectives, a second ca-frontend whose every challenge and CAA check is
#     corroborated by three remote perspectives (`ca-frontend perspective`, over mTLS, on
#     loopback; issue 17), benchmarked as `ca-frontend-3p` right after `ca-frontend` in each
#     round: orders/s with perspectives on against the same run with them off;
#  4. results under bench/acme/results/<UTC timestamp>/: one JSON per run, summary.md with the
#     ratio ca-frontend / pebble per concurrency (median of the rounds), the logs. The folder is
#     not tracked by git (.gitignore); figures worth keeping go in bench/RESULTS.md.
#
# Usage: bench/acme/run.sh [--concurrency "8 32"] [--rounds 2] [--duration 20s] [--warmup 3s]
#          [--poll 10ms] [--http1] [--client-threads 1] [--perspectives] [--out DIR] [--keep]
#
# Needs release binaries: cargo build --release -p signer -p hsm-config -p ca-frontend -p ocsp
# -p hsm-bench (BIN=DIR to take them elsewhere); pebble, pebble-challtestsrv, softhsm2, openssl,
# curl, python3. Every process started here is stopped on exit, by its pid.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$ROOT/bench/lib.sh" # usage, PIDS, stop_pid, log, fail; the stack kit's stack_up, spawn_ready
BIN=${BIN:-$ROOT/target/release}

CONCURRENCY="8 32"
ROUNDS=2
DURATION=20s
WARMUP=3s
POLL=10ms
HTTP1=
CLIENT_THREADS=1
OUT=
KEEP=0
PERSPECTIVES=0
while (($#)); do
    case $1 in
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --poll) POLL=$2; shift 2 ;;
        --http1) HTTP1=--http1; shift ;;
        --client-threads) CLIENT_THREADS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --perspectives) PERSPECTIVES=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done

for tool in pebble pebble-challtestsrv openssl curl python3 softhsm2-util; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y pebble softhsm2 openssl curl python3)" >&2; exit 2; }
done
for b in signer hsm-config ca-frontend hsmgate-ocsp hsm-bench hsmgate-stack; do
    [[ -x $BIN/$b ]] || { echo "$BIN/$b missing: cargo build --release -p signer -p hsm-config -p ca-frontend -p ocsp -p hsm-bench -p hsmgate-stack" >&2; exit 2; }
done

# Pebble's ports; everything else is on the ephemeral ports the stack kit picks (STACK_*).
PEBBLE=14200 PEBBLEM=15200
WORK=$(mktemp -d /tmp/hsmgate-acme-bench.XXXXXX)
# Raw output, ignored by git: figures worth keeping go in bench/RESULTS.md (date, commit, command).
OUT=${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    stack_down
    for f in "$WORK"/*.log; do [[ -e $f ]] && cp "$f" "$OUT/" 2>/dev/null; done
    if ((KEEP)); then echo "temporary files kept in $WORK" >&2; else rm -rf "$WORK"; fi
    ((status == 0)) || echo "FAILED (status $status); logs in $OUT" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Signatures the gateway returned to ca-frontend (its metrics), summed over label sets.
gw_signatures() {
    curl -sf "http://$STACK_GATEWAY_METRICS/metrics" 2>/dev/null |
        awk '/^hsmgate_client_signatures_total\{.*client="ca-frontend"/ {s += $2} END {print s + 0}'
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
    echo "nproc: $(nproc); cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "uptime: $(uptime)"
    echo "pebble: $(dpkg-query -W -f '${Version}' pebble 2>/dev/null || echo '?')"
    echo "softhsm2: $(softhsm2-util --version 2>/dev/null || echo '?')"
    echo "command: $0 --concurrency \"$CONCURRENCY\" --rounds $ROUNDS --duration $DURATION --warmup $WARMUP --poll $POLL $HTTP1 --client-threads $CLIENT_THREADS$( ((PERSPECTIVES)) && echo ' --perspectives')"
} > "$OUT/machine.txt"
log "results in $OUT; work dir $WORK; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- TLS for both ACME listeners: one throw-away CA, a P-256 localhost certificate -------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3 \
    -keyout "$WORK/tlsca.key" -out "$WORK/tlsca.pem" -subj "/CN=hsmgate acme bench TLS CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2> /dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/https.key" \
    -out "$WORK/https.csr" -subj "/CN=localhost" 2> /dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' > "$WORK/https.ext"
openssl x509 -req -in "$WORK/https.csr" -CA "$WORK/tlsca.pem" -CAkey "$WORK/tlsca.key" \
    -CAcreateserial -days 3 -extfile "$WORK/https.ext" -out "$WORK/https.pem" 2> /dev/null
cp "$WORK/tlsca.pem" "$OUT/tls-ca.pem"

# --- the stack, by the stack kit (bench/stack): the dev stack's configs in $WORK --------------
# The gateway on two SoftHSM2 tokens over mTLS, the ceremony's root and intermediate, the OCSP
# responder, pre-signer and CRL updater, pebble-challtestsrv as DNS, three perspectives and a
# frontend that uses them (the dev config as it is), on HTTPS, rate limits raised: this is
# `ca-frontend-3p`.
RAISED=(--set acme.limits.orders_per_account_per_hour=4000000000
        --set acme.limits.certificates_per_domain_per_week=4000000000
        --set acme.limits.accounts_per_hour=4000000000)
RUST_LOG=warn stack_up "$WORK" --acme-cert "$WORK/https.pem" --acme-key "$WORK/https.key" "${RAISED[@]}" \
    || fail "the stack did not start"
SIGNER_PID=$STACK_PID_SIGNER OCSP_PID=$STACK_PID_RESPONDER DNS_PID=$STACK_PID_CHALLTESTSRV
ACME3P_PID=$STACK_PID_ACME CA3P_DIR=$STACK_ACME_DIRECTORY
PERSPECTIVE_PIDS=("$STACK_PID_PERSPECTIVE_DEV_A" "$STACK_PID_PERSPECTIVE_DEV_B" "$STACK_PID_PERSPECTIVE_DEV_C")
HTTP=$STACK_HTTP01_PORT TLS=$STACK_TLSALPN01_PORT
tls() { echo "HSMGATE_TLS_CA=$WORK/tls/ca.pem HSMGATE_TLS_CERT=$WORK/tls/$1.pem HSMGATE_TLS_KEY=$WORK/tls/$1.key"; }
curl -sf --cacert "$WORK/tlsca.pem" "$CA3P_DIR" > /dev/null || fail "ca-frontend-3p directory over HTTPS"
log "stack up: gateway pid $SIGNER_PID, OCSP pid $OCSP_PID, DNS pid $DNS_PID; ca-frontend-3p $CA3P_DIR (pid $ACME3P_PID)"

# --- the frontend this bench compares with Pebble: no remote perspectives (Pebble has none) -----
# The stack's acme.toml without [validation.perspectives], its own database and port.
ACME=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/hsmgate-stack" config acme "$STACK_ACME_CONFIG" "$WORK/acme-plain.toml" \
    --set acme.validation.perspectives.remote=[] --set "acme.db.path=$WORK/ca-plain.sqlite" \
    --set "acme.server.listen=127.0.0.1:$ACME" --set "acme.server.base_url=https://127.0.0.1:$ACME" \
    --set acme.server.metrics_listen=127.0.0.1:0 2> "$WORK/acme-plain-config.log" \
    || fail "acme-plain.toml: $(cat "$WORK/acme-plain-config.log")"
cp "$WORK/acme-plain.toml" "$STACK_ACME_CONFIG" "$STACK_GATEWAY_CONFIG" "$OUT/"
spawn_ready acme "$WORK" env $(tls ca-frontend) RUST_LOG=warn "$BIN/ca-frontend" serve --config "$WORK/acme-plain.toml" \
    || fail "ca-frontend did not start"
ACME_PID=$LAST_PID
PIDS+=("$ACME_PID")
CA_DIR=https://127.0.0.1:$ACME/directory
curl -sf --cacert "$WORK/tlsca.pem" "$CA_DIR" > /dev/null || fail "ca-frontend directory over HTTPS"
log "ca-frontend $CA_DIR (pid $ACME_PID)"

# --- pebble ----------------------------------------------------------------------------------
cat > "$WORK/pebble.json" <<JSON
{
  "pebble": {
    "listenAddress": "127.0.0.1:$PEBBLE",
    "managementListenAddress": "127.0.0.1:$PEBBLEM",
    "certificate": "$WORK/https.pem",
    "privateKey": "$WORK/https.key",
    "httpPort": $HTTP,
    "tlsPort": $TLS,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
JSON
cp "$WORK/pebble.json" "$OUT/"
PEBBLE_DIR=https://127.0.0.1:$PEBBLE/dir
PEBBLE_PID=
# A fresh Pebble for each of its rounds, so that one bad round does not carry into the next:
# at 32 in flight Debian's pebble 2.4 is erratic (rounds of 0 orders, or hung until killed, in
# earlier runs; 97.9, 33.4 and 2.4 orders/s on fresh instances in 20261127T220121Z, most orders
# left waiting). summary.py judges the target against Pebble's best round. Its log is appended to.
start_pebble() {
    [[ -n $PEBBLE_PID ]] && stop_pid "$PEBBLE_PID"
    env PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
        pebble -config "$WORK/pebble.json" -dnsserver "$STACK_DNS_ADDR" \
        >> "$WORK/pebble.out" 2>> "$WORK/pebble.log" &
    PEBBLE_PID=$!
    PIDS+=("$PEBBLE_PID")
    for _ in $(seq 1 100); do
        curl -sf --cacert "$WORK/tlsca.pem" "$PEBBLE_DIR" > /dev/null && break
        sleep 0.1
    done
    curl -sf --cacert "$WORK/tlsca.pem" "$PEBBLE_DIR" > /dev/null || fail "pebble did not start: $(tail "$WORK/pebble.log")"
}
log "pebble: started fresh before each of its rounds at $PEBBLE_DIR"

# --- the runs --------------------------------------------------------------------------------
bench() { # LABEL DIRECTORY CONCURRENCY ROUND
    local label=$1 dir=$2 c=$3 r=$4 tag=$1-c$3-r$4 s0 s1
    local frontend=$ACME_PID
    [[ $label == ca-frontend-3p ]] && frontend=$ACME3P_PID
    local WATCH=(--watch "ca-frontend=$frontend" --watch "gateway=$SIGNER_PID" --watch "pebble=$PEBBLE_PID"
                 --watch "challtestsrv=$DNS_PID" --watch "ocsp=$OCSP_PID")
    local n=0 pid
    for pid in "${PERSPECTIVE_PIDS[@]}"; do n=$((n + 1)); WATCH+=(--watch "perspective-$n=$pid"); done
    s0=$(gw_signatures)
    "$BIN/hsm-bench" acme --label "$label" --directory "$dir" --root "$WORK/tlsca.pem" \
        --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP" --poll-interval "$POLL" \
        --http-port "$HTTP" --client-threads "$CLIENT_THREADS" $HTTP1 "${WATCH[@]}" \
        --json "$OUT/$tag.json" > "$OUT/$tag.txt" 2>&1 || { cat "$OUT/$tag.txt" >&2; fail "hsm-bench acme $tag"; }
    s1=$(gw_signatures)
    python3 - "$OUT/$tag.json" "$((s1 - s0))" <<'PY'
import json, sys
path, sigs = sys.argv[1], int(sys.argv[2])
d = json.load(open(path)); d["gateway_signatures_during_run"] = sigs
json.dump(d, open(path, "w"), indent=2)
PY
    log "$tag: $(sed -n 's/^orders ok/orders ok/p' "$OUT/$tag.txt"); gateway signatures +$((s1 - s0))"
}
for c in $CONCURRENCY; do
    for ((r = 1; r <= ROUNDS; r++)); do
        start_pebble
        bench pebble "$PEBBLE_DIR" "$c" "$r"
        bench ca-frontend "$CA_DIR" "$c" "$r"
        ((PERSPECTIVES)) && bench ca-frontend-3p "$CA3P_DIR" "$c" "$r"
    done
done
curl -sf "http://$STACK_GATEWAY_METRICS/metrics" > "$OUT/gateway-metrics.txt" || true
((PERSPECTIVES)) && { curl -sf "http://$STACK_ACME_METRICS/metrics" > "$OUT/perspective-metrics.txt" || true; }

# --- summary ---------------------------------------------------------------------------------
python3 "$HERE/summary.py" "$OUT" > "$OUT/summary.md"
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$OUT/summary.md"
