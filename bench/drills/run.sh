#!/usr/bin/env bash
# Drills on the multi-instance deployment (issue 19): each injects one failure into the running
# system under load and reports what callers saw and how long recovery took.
#
# The deployment is `hsmgate-stack multi` (bench/stack): four SoftHSM2 HSMs in two datacenters,
# each behind its own `p11-kit server`; gateway-east and gateway-west; two ACME frontends on
# PostgreSQL; a pre-signer, two CRL updaters and two responders on a Redis Cluster of three
# masters and three replicas; every process supervised (restarted when it exits, as systemd's
# Restart=always would).
#
# Load during every drill: `hsm-bench acme` orders on acme-1 (which balances over both
# gateways), and a watcher asking both responders every 0.2 s for serial 0x1003, which the
# import revoked: it must never be answered `good`.
#
# Drills (run in this order; default: all):
#   gateway     gateway-west SIGKILLed at --at seconds; the supervisor restarts it. Recovery:
#               from the kill to its metrics answering again.
#   datacenter  dc-west's HSM pair lost: both p11-kit servers (and their children) SIGSTOPped
#               for --hold seconds, then SIGCONT. Both gateways must carry on with dc-east's
#               pair. Recovery: from SIGCONT until west-1 signs again (gateway-west's metrics).
#
# Each drill passes when no order failed, 0x1003 was never `good`, and (at the end) both
# gateways' audit chains verify. Results: a table on stdout and in OUT/summary.md.
#
# Usage: bench/drills/run.sh [--duration 20] [--at 5] [--hold 8] [--concurrency 4]
#          [--out DIR] [gateway] [datacenter]
#        (BIN=target/release for release binaries; default target/debug)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
BIN=${BIN:-$ROOT/target/debug}
DURATION=20 AT=5 HOLD=8 CONCURRENCY=4 OUT= DRILLS=()
while (($#)); do
    case $1 in
        --duration) DURATION=$2; shift 2 ;;
        --at) AT=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -euo/d'; exit 0 ;;
        gateway|datacenter) DRILLS+=("$1"); shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
((${#DRILLS[@]})) || DRILLS=(gateway datacenter)
for b in hsmgate-stack hsm-bench signer; do
    [[ -x $BIN/$b ]] || { echo "$BIN/$b missing: cargo build -p hsmgate-stack -p hsm-bench -p signer -p ocsp -p ca-frontend -p hsm-config" >&2; exit 2; }
done
for tool in redis-server redis-cli psql p11-kit pebble-challtestsrv openssl curl; do
    command -v "$tool" > /dev/null || { echo "missing $tool (hsm-config/dev/setup.sh installs it)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/hsmgate-drills.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
STACK_PID=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [ -n "$STACK_PID" ] && { kill -TERM "$STACK_PID" 2>/dev/null || true; wait "$STACK_PID" 2>/dev/null || true; }
    if ((status)); then
        echo "FAILED; logs in $WORK" >&2
        tail -n 20 "$WORK/stack.log" >&2 || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '[drills %s] %s\n' "$(date +%T)" "$*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }

# --- the deployment --------------------------------------------------------------------------
"$BIN/hsmgate-stack" multi --dir "$WORK" --env-file "$WORK/stack.env" > "$WORK/stack.log" 2>&1 &
STACK_PID=$!
for _ in $(seq 1 1800); do
    [ -f "$WORK/stack.env" ] && break
    kill -0 "$STACK_PID" 2>/dev/null || { echo "hsmgate-stack multi exited:" >&2; tail -n 40 "$WORK/stack.log" >&2; exit 1; }
    sleep 0.1
done
[ -f "$WORK/stack.env" ] || { echo "the deployment did not come up in 180 s" >&2; exit 1; }
. "$WORK/stack.env"
log "deployment up in $WORK: gateways $STACK_GATEWAY_URLS; Redis $STACK_REDIS_ADDRS; PostgreSQL schema $STACK_PG_SCHEMA"
# The pre-signer signs the imported serials within a few seconds.
for _ in $(seq 1 100); do
    openssl ocsp -issuer "$STACK_ISSUER_PEM" -CAfile "$STACK_ROOT_PEM" -serial 0x1003 -url "$STACK_OCSP_URL" \
        -no_nonce 2>/dev/null | grep -q ': revoked' && break
    sleep 0.2
done

# watch_revoked FILE: both responders asked for 0x1003 every 0.2 s until FILE.stop exists; one
# line per answer: `<responder> revoked|good|error`.
watch_revoked() {
    local file=$1 url out
    while [ ! -e "$file.stop" ]; do
        for url in "$STACK_OCSP_URL" "$STACK_OCSP2_URL"; do
            out=$(openssl ocsp -issuer "$STACK_ISSUER_PEM" -CAfile "$STACK_ROOT_PEM" -serial 0x1003 \
                -url "$url" -no_nonce -timeout 2 2>&1) || true
            if grep -q ': revoked' <<< "$out"; then echo "$url revoked"
            elif grep -q ': good' <<< "$out"; then echo "$url good"
            else echo "$url error"; fi
        done >> "$file"
        sleep 0.2
    done
}
# Signatures west-1 made, as gateway-west counts them.
west_signatures() {
    curl -sf "http://$STACK_GATEWAY_WEST_METRICS/metrics" 2>/dev/null |
        awk '/^hsmgate_hsm_signatures_total\{.*hsm="west-1"/ {s += $2} END {print s + 0}'
}

ROWS=()
failures=0
for drill in "${DRILLS[@]}"; do
    . "$WORK/stack.env" # pids change when the supervisor restarts a process
    log "drill $drill: ${DURATION}s of ACME orders (concurrency $CONCURRENCY), the fault at ${AT}s"
    rm -f "$WORK/ocsp-$drill.txt" "$WORK/ocsp-$drill.txt.stop"
    watch_revoked "$WORK/ocsp-$drill.txt" &
    watcher=$!
    "$BIN/hsm-bench" acme --label "drill-$drill" --directory "$STACK_ACME_DIRECTORY" \
        --concurrency "$CONCURRENCY" --duration "${DURATION}s" --warmup 1s --order-timeout 30s \
        --http-port "$STACK_HTTP01_PORT" --domain "$drill.drill.example.test" \
        --json "$OUT/$drill-acme.json" > "$OUT/$drill-acme.txt" 2>&1 &
    load=$!
    sleep "$((AT + 1))" # + the warm-up
    recovery=""
    case $drill in
        gateway)
            killed_at=$(now)
            kill -KILL "$STACK_PID_GATEWAY_WEST"
            log "gateway-west (pid $STACK_PID_GATEWAY_WEST) SIGKILLed"
            sleep 0.5
            for _ in $(seq 1 300); do
                curl -sf -o /dev/null "http://$STACK_GATEWAY_WEST_METRICS/metrics" && break
                sleep 0.1
            done
            curl -sf -o /dev/null "http://$STACK_GATEWAY_WEST_METRICS/metrics" || { log "gateway-west did not come back"; failures=$((failures + 1)); }
            recovery="gateway-west serving again $(since "$killed_at") s after the kill"
            ;;
        datacenter)
            for pid in "$STACK_PID_P11KIT_WEST_1" "$STACK_PID_P11KIT_WEST_2"; do kill -STOP -- "-$pid"; done
            log "dc-west's p11-kit servers stopped (SIGSTOP) for ${HOLD}s"
            sleep "$HOLD"
            before=$(west_signatures)
            for pid in "$STACK_PID_P11KIT_WEST_1" "$STACK_PID_P11KIT_WEST_2"; do kill -CONT -- "-$pid"; done
            resumed_at=$(now)
            back=""
            for _ in $(seq 1 300); do
                [ "$(west_signatures)" -gt "$before" ] && { back=$(since "$resumed_at"); break; }
                sleep 0.1
            done
            recovery="dc-west lost ${HOLD}s; west-1 signing again ${back:-never (30 s)} s after SIGCONT"
            [ -n "$back" ] || failures=$((failures + 1))
            ;;
    esac
    wait "$load" || true
    touch "$WORK/ocsp-$drill.txt.stop"
    wait "$watcher" || true
    orders=$(sed -n 's/^orders ok \([0-9]*\) *failed \([0-9]*\).*/\1 \2/p' "$OUT/$drill-acme.txt")
    ok=${orders% *} failed=${orders#* }
    [ -n "$orders" ] || { cat "$OUT/$drill-acme.txt" >&2; ok=0 failed=unknown; }
    good=$(grep -c ' good$' "$WORK/ocsp-$drill.txt" || true)
    errors=$(grep -c ' error$' "$WORK/ocsp-$drill.txt" || true)
    answers=$(wc -l < "$WORK/ocsp-$drill.txt")
    verdict=pass
    if [ "$failed" != 0 ] || [ "$good" != 0 ] || [ "$ok" = 0 ]; then verdict=FAIL; failures=$((failures + 1)); fi
    ROWS+=("| $drill | $ok | $failed | $answers ($errors errors) | $good | $recovery | $verdict |")
    log "drill $drill: orders ok $ok failed $failed; 0x1003 asked $answers times, good $good, errors $errors; $recovery; $verdict"
done

# --- every signature of both gateways has its audit record -----------------------------------
audit="verify"
for dir in "$STACK_AUDIT_DIR" "$STACK_AUDIT_WEST_DIR"; do
    "$BIN/signer" audit verify "$dir" > "$OUT/audit-$(basename "$dir").txt" 2>&1 || { audit="FAIL ($dir)"; failures=$((failures + 1)); }
done
{
    echo "# Drills on the multi-instance deployment ($(date -u +%FT%TZ), $(git describe --always --dirty 2>/dev/null))"
    echo
    echo "command: $0 --duration $DURATION --at $AT --hold $HOLD --concurrency $CONCURRENCY ${DRILLS[*]}"
    echo
    echo "| drill | orders ok | orders failed | 0x1003 asked (no answer) | answered good | recovery | verdict |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "audit chains of gateway-east and gateway-west: $audit"
} | tee "$OUT/summary.md"
((failures == 0))
