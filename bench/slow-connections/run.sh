#!/usr/bin/env bash
# The full-size slow-connection figure of issue 12 item 3 (CI runs 2,000 in
# ca-frontend/e2e/clients.sh; this is the 20,000 the issue reported, not run in CI):
#
#  1. the OCSP responder (`hsmgate-ocsp serve`, SQLite store, a throwaway issuer certificate:
#     every answer is `unauthorized`, which is still a full request through the responder), its
#     config derived from bench/ocsp/ocsp.toml (`hsmgate-stack config ocsp`, the limits below
#     set with --set);
#  2. P attacker processes (ca-frontend/e2e/slow_connections.py) open SLOW connections that
#     never send a byte and HALF that send half a header, and hold them for HOLD seconds (not
#     reopening those the responder closes: from one source address, reopening thousands a
#     second exhausts the local ports within seconds, which measures the kernel, not us);
#  3. from 2 s after the attackers start, R ordinary GETs 50 ms apart, each on a new
#     connection: p50, p99, failures; and the responder's open file descriptors meanwhile.
#
# Usage: bench/slow-connections/run.sh [--slow N] [--half H] [--procs P] [--hold S]
#          [--requests R] [--max-connections C] [--header-timeout S] [--out DIR]
#
# Defaults: 20,000 slow, 1,000 half-header, 4 processes, 30 s, 200 GETs, the responder's default
# limits. Needs release binaries (cargo build --release -p ocsp -p hsmgate-stack; BIN=DIR takes
# them from DIR), openssl, python3, and a file
# limit (`ulimit -n`) above SLOW / P + 300 for each attacker and above the connection cap for
# the responder (the script raises the soft limit to the hard one).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
SLOW=20000 HALF=1000 PROCS=4 HOLD=30 REQUESTS=200 MAX_CONN='' HEADER_TIMEOUT='' OUT=''
while (($#)); do
    case $1 in
        --slow) SLOW=$2; shift 2 ;;
        --half) HALF=$2; shift 2 ;;
        --procs) PROCS=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --max-connections) MAX_CONN=$2; shift 2 ;;
        --header-timeout) HEADER_TIMEOUT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -euo/d'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. "$ROOT/bench/lib.sh" # PIDS, stop_pid, log, fail; the stack kit's spawn_ready, ready_field
for b in hsmgate-ocsp hsmgate-stack; do
    [[ -x $BIN/$b ]] || { echo "$BIN/$b missing: cargo build --release -p ocsp -p hsmgate-stack" >&2; exit 2; }
done
WORK=$(mktemp -d /tmp/hsmgate-slow-bench.XXXXXX)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
cleanup() {
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

# A throwaway issuer: the responder needs its name and key hashes, not its key.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/issuer.key" \
    -subj "/CN=slow-connections bench" -days 2 -out "$WORK/issuer.pem" 2>/dev/null
# The benchmark responder's config (its issuer.pem and ocsp.sqlite, relative, land in $WORK):
# the responder's defaults (256 MiB cache, fresh 5 s), connection limits as asked, no metrics
# listener (as before: no descriptor beside those counted below).
SETS=(--set ocsp.issuers.0.name=bench --set ocsp.issuers.0.signing_key=unused --unset ocsp.responder.metrics_listen)
[ -z "$MAX_CONN" ] || SETS+=(--set "ocsp.responder.connections.max_connections=$MAX_CONN")
[ -z "$HEADER_TIMEOUT" ] || SETS+=(--set "ocsp.responder.connections.header_read_timeout_secs=$HEADER_TIMEOUT")
"$BIN/hsmgate-stack" config ocsp "$ROOT/bench/ocsp/ocsp.toml" "$WORK/ocsp.toml" "${SETS[@]}" \
    2> "$OUT/config.log" || fail "ocsp.toml: $(cat "$OUT/config.log")"
spawn_ready ocsp "$OUT" "$BIN/hsmgate-ocsp" serve --config "$WORK/ocsp.toml" || fail "the responder did not start"
responder=$LAST_PID
PIDS+=("$responder")
addr=$(ready_field "$READY_LINE" http)
openssl ocsp -issuer "$WORK/issuer.pem" -serial 0x1001 -no_nonce -reqout "$WORK/req.der" 2>/dev/null
path=/$(python3 -c 'import base64,sys,urllib.parse; print(urllib.parse.quote(base64.b64encode(open(sys.argv[1],"rb").read()).decode(), safe=""))' "$WORK/req.der")
SLOW_PY=$ROOT/ca-frontend/e2e/slow_connections.py

echo "responder $addr; $SLOW idle + $HALF half-header connections from $PROCS processes, held ${HOLD} s"
python3 "$SLOW_PY" --target "$addr" --path "$path" --idle 0 --half 0 --requests "$REQUESTS" \
    --p99-limit 1 | sed 's/^/baseline (no slow connections): /' || true
attackers=()
for i in $(seq 1 "$PROCS"); do
    python3 "$SLOW_PY" --target "$addr" --path "$path" --idle $((SLOW / PROCS)) --half $((HALF / PROCS)) \
        --requests 0 --hold "$HOLD" > "$OUT/attacker-$i.log" 2>&1 &
    attackers+=($!)
    PIDS+=($!)
done
sleep 2
(for _ in $(seq 1 $((HOLD * 2))); do find "/proc/$responder/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; sleep 0.5; done \
    | sort -n | tail -n 1 > "$WORK/fds") &
python3 "$SLOW_PY" --target "$addr" --path "$path" --idle 0 --half 0 --requests "$REQUESTS" \
    --interval 0.05 --p99-limit 1 | sed 's/^/under attack: /' || true
wait $!
echo "responder's open file descriptors, most seen: $(cat "$WORK/fds") (limit $(ulimit -n))"
for pid in "${attackers[@]}"; do wait "$pid" || true; done
sed 's/^/attacker: /' "$OUT"/attacker-*.log | grep -v '^attacker: $' | head -n "$((PROCS * 2))"
