#!/usr/bin/env bash
# Serving CRL shards (issue 15: "requests/s against nginx serving the same bytes, same run,
# target >= 0.9x"): the responder (`hsmgate-ocsp serve`, shards from its cache over the store)
# against nginx serving the very bytes the responder served, as static files, under the same
# wrk load (keep-alive connections, requests rotating over every shard of the issuer), rounds
# alternating which server goes first. Reports requests/s, MB/s and the CPU each server spent
# per request (utime + stime from /proc, nginx's workers summed), which does not move with the
# machine's load as rates do.
#
# Usage: bench/crl/run.sh --config OCSP_TOML --issuer NAME [--duration SECS] [--rounds N]
#          [--connections C] [--wrk-threads T]
#   OCSP_TOML: a configuration whose store holds the issuer's shards, e.g. the one
#   `hsm-bench drill --dir D` leaves (--config D/ocsp.toml --issuer drill: 128 shards of a
#   1,000,000-certificate mass revocation). The responder runs on a copy of it derived with
#   `hsmgate-stack config ocsp ... --set ocsp.responder.listen=...`, written beside it (its
#   relative paths resolve there) and removed once the responder is READY.
# Needs target/release/hsmgate-ocsp and hsmgate-stack (cargo build --release -p ocsp -p
# hsmgate-stack; BIN=DIR takes them from DIR), nginx, wrk, curl. Results go to stdout (a
# markdown table); nothing is written in the tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG="" ISSUER="" DURATION=10 ROUNDS=3 CONNS=64 WRK_THREADS=1
while [ $# -gt 0 ]; do
    case $1 in
        --config) CONFIG=$2; shift 2 ;;
        --issuer) ISSUER=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --wrk-threads) WRK_THREADS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$CONFIG" ] && [ -n "$ISSUER" ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
for tool in nginx wrk curl; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install -y nginx wrk curl)" >&2; exit 2; }
done
BIN=${BIN:-target/release}
for b in hsmgate-ocsp hsmgate-stack; do
    [ -x "$BIN/$b" ] || { echo "$BIN/$b missing: cargo build --release -p ocsp -p hsmgate-stack" >&2; exit 2; }
done
# The stack kit's spawn_ready (one process, until its READY line).
. bench/stack/stack.sh
RESPONDER_PORT=18480 NGINX_PORT=18481
TMP=$(mktemp -d /tmp/hsmgate-crl-bench.XXXXXX)
chmod 755 "$TMP"
pids=()
derived=
cleanup() {
    [ -z "$derived" ] || rm -f "$derived"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx/nginx.pid" ] && kill "$(cat "$TMP/nginx/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# --- the responder, on the store the configuration names ---------------------------------------
derived=$(cd "$(dirname "$CONFIG")" && pwd)/.crl-bench.toml
"$BIN/hsmgate-stack" config ocsp "$CONFIG" "$derived" \
    --set "ocsp.responder.listen=127.0.0.1:$RESPONDER_PORT" || exit 1
spawn_ready responder "$TMP" "$BIN/hsmgate-ocsp" serve --config "$derived" || exit 1
responder=$LAST_PID
pids+=("$responder")
rm -f "$derived"

# --- the same bytes for nginx: every shard the issuer's list names -----------------------------
curl -sf "http://127.0.0.1:$RESPONDER_PORT/$ISSUER.json" > "$TMP/list.json" || { echo "no /$ISSUER.json" >&2; exit 1; }
shards=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$TMP/list.json")
mkdir -p "$TMP/www/$ISSUER" "$TMP/nginx/tmp"
bytes=0
for n in $(seq 0 $((shards - 1))); do
    curl -sf -o "$TMP/www/$ISSUER/$n.crl" "http://127.0.0.1:$RESPONDER_PORT/$ISSUER/$n.crl" \
        || { echo "shard $n is not served" >&2; exit 1; }
    bytes=$((bytes + $(stat -c %s "$TMP/www/$ISSUER/$n.crl")))
done
cat > "$TMP/nginx/nginx.conf" <<CONF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    open_file_cache max=100000 inactive=600s;
    open_file_cache_valid 3600s;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;
    types { }
    default_type application/pkix-crl;
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport;
        root $TMP/www;
        location / { expires 1h; }
    }
}
CONF
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/" -g 'daemon off;' > "$TMP/nginx/out.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/$ISSUER/0.crl" && break; sleep 0.1; done
cmp "$TMP/www/$ISSUER/0.crl" <(curl -sf "http://127.0.0.1:$NGINX_PORT/$ISSUER/0.crl") \
    || { echo "nginx does not serve the responder's bytes" >&2; exit 1; }

cat > "$TMP/rotate.lua" <<LUA
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/$ISSUER/" .. (i % $shards) .. ".crl")
end
LUA

# CPU seconds (utime + stime) of a process and its children threads: /proc/PID/stat fields 14, 15.
cpu_of() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
nginx_pids() { pgrep -f "nginx: (master|worker) process" | tr '\n' ' '; }
tick=$(getconf CLK_TCK)

run() { # NAME PORT PIDS...
    local name=$1 port=$2; shift 2
    local before after out
    before=$(cpu_of "$@")
    out=$(wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" -s "$TMP/rotate.lua" "http://127.0.0.1:$port")
    after=$(cpu_of "$@")
    local rps reqs errors
    rps=$(awk '/^Requests\/sec/ {print $2}' <<< "$out")
    reqs=$(awk '/requests in/ {print $1}' <<< "$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<< "$out" | tr '\n' ' ')
    [ -z "$errors" ] || { echo "$name: $errors" >&2; exit 1; }
    echo "$name $rps $reqs $((after - before))" >> "$TMP/runs.txt"
}
# shellcheck disable=SC2046 # nginx_pids: one argument per pid
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
        run responder $RESPONDER_PORT $responder
        run nginx $NGINX_PORT $(nginx_pids)
    else
        run nginx $NGINX_PORT $(nginx_pids)
        run responder $RESPONDER_PORT $responder
    fi
done

python3 - "$TMP/runs.txt" "$tick" "$shards" "$bytes" "$ROUNDS" "$DURATION" "$CONNS" <<'PY'
import statistics, sys
path, tick, shards, total_bytes, rounds, duration, conns = sys.argv[1:]
tick, shards, total_bytes = int(tick), int(shards), int(total_bytes)
runs = {}
for line in open(path):
    name, rps, reqs, cpu = line.split()
    runs.setdefault(name, []).append((float(rps), int(reqs), int(cpu) / tick))
mean_bytes = total_bytes / shards
print(f"{shards} shards, {total_bytes:,} bytes ({mean_bytes / 1000:.0f} kB a shard); "
      f"{rounds} rounds x {duration} s, {conns} connections, requests rotating over every shard")
print("| server | requests/s (median) | MB/s | CPU per request |")
print("|---|---:|---:|---:|")
med = {}
for name in ("responder", "nginx"):
    rates = [r for r, _, _ in runs[name]]
    cpu_per = sum(c for _, _, c in runs[name]) / max(1, sum(n for _, n, _ in runs[name]))
    med[name] = statistics.median(rates)
    print(f"| {name} | {med[name]:,.0f} | {med[name] * mean_bytes / 1e6:,.0f} | {cpu_per * 1e6:,.0f} µs |")
print(f"\nresponder / nginx: {med['responder'] / med['nginx']:.2f}x (target >= 0.9)")
PY
