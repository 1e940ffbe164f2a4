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
. "$ROOT/bench/lib.sh" # usage, PIDS, stop_pid, log, fail
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
for b in signer hsm-config ca-frontend hsmgate-ocsp hsm-bench; do
    [[ -x $BIN/$b ]] || { echo "$BIN/$b missing: cargo build --release -p signer -p hsm-config -p ca-frontend -p ocsp -p hsm-bench" >&2; exit 2; }
done

# Ports of our own (clients.sh uses 50151/4101/…, hsm-config/dev/run.sh 50051/4001/…).
GW=50251 GWM=9664 OCSP=8280 OCSPM=9665 ACME=4201 DNS=8253 MGMT=8255 HTTP=5202 TLS=5201
PEBBLE=14200 PEBBLEM=15200
ACMEM=9667                # the frontend's /metrics
ACME3P=4202 ACME3PM=9666 # the frontend with three perspectives (7301-7303), --perspectives
WORK=$(mktemp -d /tmp/hsmgate-acme-bench.XXXXXX)
# Raw output, ignored by git: figures worth keeping go in bench/RESULTS.md (date, commit, command).
OUT=${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for f in "$WORK"/*.log; do [[ -e $f ]] && cp "$f" "$OUT/" 2>/dev/null; done
    if ((KEEP)); then echo "temporary files kept in $WORK" >&2; else rm -rf "$WORK"; fi
    ((status == 0)) || echo "FAILED (status $status); logs in $OUT" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_bg() { # NAME CMD...: stdout to $WORK/NAME.out, stderr to $WORK/NAME.log; sets LAST_PID
    local name=$1
    shift
    "$@" > "$WORK/$name.out" 2> "$WORK/$name.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
wait_ready() { # FILE PID SECONDS
    local start=$SECONDS
    while ((SECONDS - start < $3)); do
        grep -q '^READY' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# Signatures the gateway returned to ca-frontend (its metrics), summed over label sets.
gw_signatures() {
    curl -sf "http://127.0.0.1:$GWM/metrics" 2>/dev/null |
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

# --- the gateway on two SoftHSM2 tokens, over mTLS (as clients.sh) ------------------------------
sed -e "s#\.\./\.\./target/dev#$WORK#g" -e "s#127.0.0.1:50051#127.0.0.1:$GW#" \
    -e "s#127.0.0.1:9464#127.0.0.1:$GWM#" "$ROOT/hsm-config/examples/dev.toml" > "$WORK/gateway.toml"
export SOFTHSM2_CONF=$WORK/softhsm2.conf
"$BIN/hsm-config" provision "$WORK/gateway.toml" --public-keys "$WORK/public-keys" > "$WORK/provision.log" 2>&1
"$BIN/hsm-config" dev-certs "$WORK/tls" > /dev/null
tls() { echo "HSMGATE_TLS_CA=$WORK/tls/ca.pem HSMGATE_TLS_CERT=$WORK/tls/$1.pem HSMGATE_TLS_KEY=$WORK/tls/$1.key"; }
start_bg signer env RUST_LOG=warn "$BIN/signer" --config "$WORK/gateway.toml"
SIGNER_PID=$LAST_PID
wait_ready "$WORK/signer.out" "$SIGNER_PID" 30 || fail "the gateway did not start"
for i in $(seq 1 50); do
    if env $(tls ceremony) "$BIN/ca-frontend" ceremony --gateway "https://127.0.0.1:$GW" \
        --root-key dev-root --intermediate-key dev-p256 \
        --root-out "$WORK/root.pem" --intermediate-out "$WORK/issuer.pem" > "$WORK/ceremony.log" 2>&1; then
        break
    fi
    [ "$i" -lt 50 ] || fail "ceremony: $(cat "$WORK/ceremony.log")"
    sleep 0.2
done
log "gateway up (pid $SIGNER_PID), root and intermediate made"

# --- OCSP responder, challenge DNS, ca-frontend on HTTPS -----------------------------------------
sed -e "s#\.\./\.\./target/dev#$WORK#g" -e "s#127.0.0.1:8080#127.0.0.1:$OCSP#" \
    -e "s#127.0.0.1:9465#127.0.0.1:$OCSPM#" -e "s#127.0.0.1:50051#127.0.0.1:$GW#" \
    "$ROOT/ocsp/examples/dev.toml" > "$WORK/ocsp.toml"
start_bg ocsp env RUST_LOG=warn "$BIN/hsmgate-ocsp" serve --config "$WORK/ocsp.toml"
OCSP_PID=$LAST_PID
start_bg challtestsrv pebble-challtestsrv -dns01 "127.0.0.1:$DNS" -management "127.0.0.1:$MGMT" \
    -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv6 ""
DNS_PID=$LAST_PID
# Without the remote perspectives of dev.toml (its last section): this bench compares issuance
# with Pebble, which has none. (Perspectives on against off is not measured yet: issue 17.)
sed -e "s#\.\./\.\./ocsp/examples/dev.toml#$WORK/ocsp.toml#" -e "s#\.\./\.\./target/dev#$WORK#g" \
    -e "s#^base_url = .*#base_url = \"https://127.0.0.1:$ACME\"#" \
    -e "s#127.0.0.1:4001#127.0.0.1:$ACME#g" -e "s#127.0.0.1:50051#127.0.0.1:$GW#" \
    -e "s#127.0.0.1:8080#127.0.0.1:$OCSP#" -e "s#127.0.0.1:8053#127.0.0.1:$DNS#" \
    -e "s#^http_port = 5002#http_port = $HTTP#" -e "s#^tls_port = 5001#tls_port = $TLS#" \
    -e "s#^orders_per_account_per_hour = .*#orders_per_account_per_hour = 4000000000#" \
    -e "s#^certificates_per_domain_per_week = .*#certificates_per_domain_per_week = 4000000000#" \
    -e "s#^accounts_per_hour = .*#accounts_per_hour = 4000000000#" \
    -e "s#127.0.0.1:9466#127.0.0.1:$ACMEM#" \
    -e '/^\[validation.perspectives\]/,$d' \
    "$ROOT/ca-frontend/examples/dev.toml" > "$WORK/acme.toml"
# HTTPS: [server.tls] belongs to [server], before the next table.
python3 - "$WORK/acme.toml" "$WORK/https.pem" "$WORK/https.key" <<'PY'
import sys
path, cert, key = sys.argv[1:4]
text = open(path).read()
text = text.replace("\n[gateway]\n", f'\n[server.tls]\ncert = "{cert}"\nkey = "{key}"\n\n[gateway]\n', 1)
open(path, "w").write(text)
PY
grep -q 'orders_per_account_per_hour = 4000000000' "$WORK/acme.toml" || fail "limits not raised in acme.toml"
cp "$WORK/acme.toml" "$WORK/gateway.toml" "$OUT/"
start_bg acme env $(tls ca-frontend) RUST_LOG=warn "$BIN/ca-frontend" serve --config "$WORK/acme.toml"
ACME_PID=$LAST_PID
wait_ready "$WORK/acme.out" "$ACME_PID" 60 || fail "ca-frontend did not start: $(tail "$WORK/acme.log")"
CA_DIR=https://127.0.0.1:$ACME/directory
curl -sf --cacert "$WORK/tlsca.pem" "$CA_DIR" > /dev/null || fail "ca-frontend directory over HTTPS"
log "ca-frontend $CA_DIR (pid $ACME_PID), OCSP pid $OCSP_PID, DNS pid $DNS_PID"

# --- with remote perspectives (--perspectives) -----------------------------------------------
# Three `ca-frontend perspective` processes as ca-frontend/examples/perspective.toml describes
# them (the gateway's dev PKI for mTLS, the same DNS), and a second frontend, its own database,
# whose config keeps dev.toml's [validation.perspectives] pointed at them.
ACME3P_PID= PERSPECTIVE_PIDS=()
if ((PERSPECTIVES)); then
    sed -e "s#\.\./\.\./target/dev#$WORK#g" -e "s#127.0.0.1:8053#127.0.0.1:$DNS#" \
        -e "s#^http_port = 5002#http_port = $HTTP#" -e "s#^tls_port = 5001#tls_port = $TLS#" \
        "$ROOT/ca-frontend/examples/perspective.toml" > "$WORK/perspective.toml"
    for n in 1 2 3; do
        start_bg "perspective-$n" env RUST_LOG=warn "$BIN/ca-frontend" perspective \
            --config "$WORK/perspective.toml" --name "p$n" --listen "127.0.0.1:730$n"
        PERSPECTIVE_PIDS+=("$LAST_PID")
        wait_ready "$WORK/perspective-$n.out" "$LAST_PID" 30 || fail "perspective $n did not start: $(tail "$WORK/perspective-$n.log")"
    done
    sed -e "s#\.\./\.\./ocsp/examples/dev.toml#$WORK/ocsp.toml#" -e "s#\.\./\.\./target/dev#$WORK#g" \
        -e "s#^base_url = .*#base_url = \"https://127.0.0.1:$ACME3P\"#" \
        -e "s#127.0.0.1:4001#127.0.0.1:$ACME3P#g" -e "s#127.0.0.1:50051#127.0.0.1:$GW#" \
        -e "s#127.0.0.1:8080#127.0.0.1:$OCSP#" -e "s#127.0.0.1:8053#127.0.0.1:$DNS#" \
        -e "s#^http_port = 5002#http_port = $HTTP#" -e "s#^tls_port = 5001#tls_port = $TLS#" \
        -e "s#127.0.0.1:710\([1-3]\)#127.0.0.1:730\1#" -e "s#127.0.0.1:9466#127.0.0.1:$ACME3PM#" \
        -e "s#ca.sqlite#ca-3p.sqlite#" \
        -e "s#^orders_per_account_per_hour = .*#orders_per_account_per_hour = 4000000000#" \
        -e "s#^certificates_per_domain_per_week = .*#certificates_per_domain_per_week = 4000000000#" \
        -e "s#^accounts_per_hour = .*#accounts_per_hour = 4000000000#" \
        "$ROOT/ca-frontend/examples/dev.toml" > "$WORK/acme-3p.toml"
    python3 - "$WORK/acme-3p.toml" "$WORK/https.pem" "$WORK/https.key" <<'PY'
import sys
path, cert, key = sys.argv[1:4]
text = open(path).read()
text = text.replace("\n[gateway]\n", f'\n[server.tls]\ncert = "{cert}"\nkey = "{key}"\n\n[gateway]\n', 1)
open(path, "w").write(text)
PY
    grep -q 'validation.perspectives.remote' "$WORK/acme-3p.toml" || fail "no perspectives in acme-3p.toml"
    cp "$WORK/acme-3p.toml" "$WORK/perspective.toml" "$OUT/"
    start_bg acme-3p env $(tls ca-frontend) RUST_LOG=warn "$BIN/ca-frontend" serve --config "$WORK/acme-3p.toml"
    ACME3P_PID=$LAST_PID
    wait_ready "$WORK/acme-3p.out" "$ACME3P_PID" 60 || fail "ca-frontend with perspectives did not start: $(tail "$WORK/acme-3p.log")"
    CA3P_DIR=https://127.0.0.1:$ACME3P/directory
    curl -sf --cacert "$WORK/tlsca.pem" "$CA3P_DIR" > /dev/null || fail "ca-frontend-3p directory over HTTPS"
    log "ca-frontend with three perspectives $CA3P_DIR (pid $ACME3P_PID; perspectives ${PERSPECTIVE_PIDS[*]})"
fi

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
        pebble -config "$WORK/pebble.json" -dnsserver "127.0.0.1:$DNS" \
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
curl -sf "http://127.0.0.1:$GWM/metrics" > "$OUT/gateway-metrics.txt" || true
((PERSPECTIVES)) && { curl -sf "http://127.0.0.1:$ACME3PM/metrics" > "$OUT/perspective-metrics.txt" || true; }

# --- summary ---------------------------------------------------------------------------------
python3 "$HERE/summary.py" "$OUT" > "$OUT/summary.md"
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$OUT/summary.md"
