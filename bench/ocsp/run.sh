#!/usr/bin/env bash
# The OCSP benchmark of issue 3 ("Speed"), in one run:
#
#  1. SoftHSM2 tokens for a small gateway (one datacenter, two HSMs, key `ocsp-p256`), the
#     `signer` gateway on them, an issuer certificate made through it (`hsmgate-ocsp issuer-cert`);
#     the configs are derived from bench/ocsp/signer.toml and ocsp.toml with `hsmgate-stack
#     config` (the typed schemas: a field that does not exist is an error, not a stale text);
#  2. the gateway's own SignBatch rate (`hsm-bench sign --mode batch`), then N certificates
#     imported (`hsmgate-ocsp import`) and all pre-signed by `hsmgate-ocsp presign` (timed until
#     its metrics say N responses were signed), then SignBatch again: pre-signing / SignBatch;
#  3. the responder (`hsmgate-ocsp serve`, SQLite store) and nginx serving the same response
#     bytes as static files, loaded by wrk alternately: cache hits (K serials, responder cache
#     large and fresh for an hour), then cache misses (responder cache of ~1 MB, random serials
#     over all N; nginx over N distinct files, or the K hit files with --nginx-all no);
#  4. a summary table (Markdown) and the raw outputs in bench/ocsp/results/<UTC time>-n<N>/ (or
#     --out DIR): not tracked by git (.gitignore); figures worth keeping go in bench/RESULTS.md.
#
# Usage: bench/ocsp/run.sh [--count N] [--hits K] [--duration SECONDS] [--rounds R]
#          [--connections C] [--wrk-threads T] [--signbatch-duration D] [--signbatch-rounds R]
#          [--miss-cache-bytes B] [--nginx-all yes|no] [--presign-batch B] [--model MODEL]
#          [--serve all|hits|none] [--out DIR] [--keep]
#
# --serve hits skips the cache-miss runs, none every serving run (pre-signing only).
# --compare-bin DIR: a second responder, DIR/hsmgate-ocsp (e.g. a build of an older commit), on
# the same store and config, loaded in the same rounds as `base-hit` and `base-miss`: an A/B
# of two builds in one run.
#
# --model "units=10 rate=10000" puts the two HSMs behind hsm-sim's Luna-class timing model
# (libhsm_sim.so beside the binaries, 32 sessions each; SoftHSM2 still makes the signatures
# unless the model says signature=stand-in): the gateway's speed is then the modelled pair's,
# not what SoftHSM2 gets of the two cores the pre-signer also runs on. Serving is unaffected.
#
# BIN=DIR (environment) takes the five binaries from DIR instead of target/release (e.g. to run
# a modified hsmgate-ocsp against the same gateway).
#
# Needs: release binaries (cargo build --release -p signer -p hsm-config -p hsm-bench -p ocsp
# -p hsmgate-stack),
# SoftHSM2, nginx, wrk, curl, openssl, python3 with `cryptography`. Everything runs from a
# temporary directory that is removed at the end (--keep keeps it); every process started here
# is stopped on exit, by its pid.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$ROOT/bench/lib.sh" # usage, PIDS, stop_pid, log, fail; the stack kit's spawn_ready, ready_field
BIN=${BIN:-$ROOT/target/release}
PY=(python3 "$HERE/ocspbench.py")
ISSUER=bench-p256
KEY=ocsp-p256

COUNT=1000000
HITS=10000
DURATION=15
ROUNDS=2
CONNS=64
WRK_THREADS=1
SB_DURATION=5s
SB_ROUNDS=3
MISS_CACHE_BYTES=1048576
NGINX_ALL=yes
PRESIGN_BATCH=256
MODEL=
SERVE=all
COMPARE_BIN=
OUT=
KEEP=0

while (($#)); do
    case $1 in
        --count) COUNT=$2; shift 2 ;;
        --hits) HITS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --wrk-threads) WRK_THREADS=$2; shift 2 ;;
        --signbatch-duration) SB_DURATION=$2; shift 2 ;;
        --signbatch-rounds) SB_ROUNDS=$2; shift 2 ;;
        --miss-cache-bytes) MISS_CACHE_BYTES=$2; shift 2 ;;
        --nginx-all) NGINX_ALL=$2; shift 2 ;;
        --presign-batch) PRESIGN_BATCH=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --serve) SERVE=$2; shift 2 ;;
        --compare-bin) COMPARE_BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
((HITS <= COUNT)) || { echo "--hits must be at most --count" >&2; exit 2; }
case $SERVE in all|hits|none) ;; *) echo "--serve must be all, hits or none" >&2; exit 2 ;; esac
# hsm-sim's stand-in signatures (a fixed pattern of the right length) verify nowhere.
STAND_IN=
[[ $MODEL =~ signature=(stand-in|standin|fake) ]] && STAND_IN=1
((DURATION >= 5)) || { echo "--duration must be at least 5 (seconds)" >&2; exit 2; }

for tool in nginx wrk curl openssl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx wrk curl openssl python3)" >&2; exit 2; }
done
python3 -c 'import cryptography' 2>/dev/null || { echo "python3 needs the cryptography package" >&2; exit 2; }
for b in signer hsm-config hsm-bench hsmgate-ocsp hsmgate-stack; do
    [[ -x $BIN/$b ]] || { echo "$BIN/$b missing: cargo build --release -p signer -p hsm-config -p hsm-bench -p ocsp -p hsmgate-stack" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/hsmgate-ocsp-bench.XXXXXX)
chmod 755 "$TMP" # nginx's workers may run as another user
# Raw output, ignored by git: figures worth keeping go in bench/RESULTS.md (date, commit, command).
OUT=${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)-n$COUNT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/results.jsonl"

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if ((KEEP)); then
        echo "temporary files kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    ((status == 0)) || echo "FAILED (status $status); logs in $OUT" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

record() { printf '%s\n' "$1" >> "$OUT/results.jsonl"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$1" "$2"; }

# Starts a process that prints no READY line (the pre-signer, nginx) in the background: stdout
# to $TMP/NAME.out, stderr to $OUT/NAME.log. Sets LAST_PID. Those that do (the gateway, the
# responders) start with the kit's spawn_ready, both outputs in $OUT.
start_bg() {
    local name=$1
    shift
    "$@" > "$TMP/$name.out" 2> "$OUT/$name.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
# spawn_ready NAME "$OUT" COMMAND..., its pid in PIDS, or the script fails.
start_ready() {
    local name=$1
    shift
    spawn_ready "$name" "$OUT" "$@" || fail "$name did not start (see $OUT/$name.log)"
    PIDS+=("$LAST_PID")
}
# `hsmgate-stack config KIND FROM TO --set ...`, or the script fails with its message.
derive() {
    local kind=$1 from=$2 to=$3
    shift 3
    "$BIN/hsmgate-stack" config "$kind" "$from" "$to" "$@" 2> "$OUT/config.log" ||
        fail "$(basename "$to"): $(cat "$OUT/config.log")"
}
prom() { "${PY[@]}" prom "$@" 2>/dev/null || echo 0; }

# nginx's config (nginx.conf.in) is nginx's own language, not one of ours: @VAR@ substitution.
render() { # TEMPLATE OUT KEY=VALUE...
    local template=$1 out=$2 text
    shift 2
    text=$(<"$template")
    local kv
    for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
    printf '%s\n' "$text" > "$out"
}

# ---------------------------------------------------------------------------------------------
log "results in $OUT; temporary files in $TMP"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
    echo "nproc: $(nproc); cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "uptime: $(uptime)"
    echo "nginx: $(nginx -v 2>&1); wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    echo "softhsm2: $(softhsm2-util --version 2>/dev/null || echo '?')"
    echo "command: $0 --count $COUNT --hits $HITS --duration $DURATION --rounds $ROUNDS --connections $CONNS --wrk-threads $WRK_THREADS --signbatch-duration $SB_DURATION --signbatch-rounds $SB_ROUNDS --miss-cache-bytes $MISS_CACHE_BYTES --nginx-all $NGINX_ALL --presign-batch $PRESIGN_BATCH --serve $SERVE${MODEL:+ --model \"$MODEL\"}${COMPARE_BIN:+ --compare-bin $COMPARE_BIN}${PERF_DIR:+ (PERF_DIR=$PERF_DIR PERF_SERVE=${PERF_SERVE:-responder-hit})}"
    echo "binaries: $BIN${COMPARE_BIN:+; base: $COMPARE_BIN}"
    echo
    top -bn1 | head -15
} > "$OUT/machine.txt"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) cores, load average $LOAD_BEFORE"
record "$("${PY[@]}" json kind=meta date="$(date -u +%FT%TZ)" count="$COUNT" hits="$HITS" \
    machine="$(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)" \
    load_before="load average $LOAD_BEFORE" model="$MODEL" \
    wrk_args="-t$WRK_THREADS -c$CONNS -d${DURATION}s --latency, $ROUNDS rounds alternating" \
    git="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')")"

# --- 1. tokens, gateway, issuer -------------------------------------------------------------
export SOFTHSM2_CONF=$TMP/softhsm2.conf
if [[ -n $MODEL ]]; then
    [[ -f $BIN/libhsm_sim.so ]] || fail "$BIN/libhsm_sim.so missing: cargo build --release -p hsm-sim"
    printf '* model %s\n' "$MODEL" > "$TMP/control"
    cp "$TMP/control" "$OUT/hsm-sim-control"
    export HSMSIM_CONTROL=$TMP/control
    SIM=()
    for h in 0 1; do
        SIM+=(--set "gateway.datacenters.0.hsms.$h.module=$BIN/libhsm_sim.so"
              --set "gateway.datacenters.0.hsms.$h.sessions=32")
    done
    derive gateway "$HERE/signer.toml" "$TMP/signer.toml" "${SIM[@]}"
else
    derive gateway "$HERE/signer.toml" "$TMP/signer.toml"
fi
cp "$TMP/signer.toml" "$OUT/signer.toml"
log "provisioning SoftHSM2 tokens"
"$BIN/hsm-config" provision "$TMP/signer.toml" > "$OUT/provision.log" 2>&1

start_ready signer env RUST_LOG=info "$BIN/signer" --config "$TMP/signer.toml"
SIGNER_PID=$LAST_PID
GRPC=$(ready_field "$READY_LINE" grpc)
GW_METRICS=$(ready_field "$READY_LINE" metrics)
GATEWAY=http://$GRPC
for ((i = 0; i < 200; i++)); do
    [[ $(prom "http://$GW_METRICS/metrics" '^hsmgate_hsm_up\{') == 2 ]] && break
    sleep 0.1
done
[[ $(prom "http://$GW_METRICS/metrics" '^hsmgate_hsm_up\{') == 2 ]] || { log "both HSMs not up after 20 s"; exit 1; }
log "gateway $GATEWAY ready, both HSMs up"

for ((i = 0; ; i++)); do
    if RUST_LOG=warn "$BIN/hsmgate-ocsp" issuer-cert --gateway "$GATEWAY" --key "$KEY" \
        --subject "CN=hsmgate OCSP bench CA P-256,O=hsmgate" --days 30 --out "$TMP/issuer.pem" \
        > "$OUT/issuer-cert.log" 2>&1; then
        break
    fi
    ((i < 20)) || { log "issuer-cert failed"; cat "$OUT/issuer-cert.log" >&2; exit 1; }
    sleep 0.5
done
cp "$TMP/issuer.pem" "$OUT/issuer.pem"

for mode in presign hit miss; do
    case $mode in
        presign) bytes=$((64 << 20)) fresh=5 ;;
        hit) bytes=$((256 << 20)) fresh=3600 ;;
        miss) bytes=$MISS_CACHE_BYTES fresh=3600 ;;
    esac
    derive ocsp "$HERE/ocsp.toml" "$TMP/ocsp-$mode.toml" --set "ocsp.presigner.gateway=$GATEWAY" \
        --set "ocsp.responder.cache_bytes=$bytes" --set "ocsp.responder.cache_fresh_secs=$fresh" \
        --set "ocsp.presigner.batch=$PRESIGN_BATCH"
    cp "$TMP/ocsp-$mode.toml" "$OUT/"
done

# --- 2. SignBatch, import, pre-signing, SignBatch -------------------------------------------
signbatch() {
    local label=$1 rate
    log "SignBatch rate ($label): hsm-bench sign --mode batch, $SB_ROUNDS x $SB_DURATION"
    "$BIN/hsm-bench" sign --config "$TMP/signer.toml" --key "$KEY" --mode batch --gateway "$GATEWAY" \
        --duration "$SB_DURATION" --rounds "$SB_ROUNDS" --json "$OUT/signbatch-$label.json" \
        > "$OUT/signbatch-$label.txt" 2>&1
    rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["modes"][0]["median_signatures_per_s"])' \
        "$OUT/signbatch-$label.json")
    log "SignBatch ($label): $rate signatures/s"
    record "$("${PY[@]}" json kind=signbatch label="$label" rate="$rate")"
}
signbatch before

log "import list: $COUNT certificates (random 16-byte serials, 1 % revoked)"
"${PY[@]}" import-list "$COUNT" "$TMP/certs.txt" "$ISSUER"
t0=$(now)
RUST_LOG=warn "$BIN/hsmgate-ocsp" import --config "$TMP/ocsp-presign.toml" "$TMP/certs.txt" > "$OUT/import.txt" 2>&1
IMPORT_SECONDS=$(elapsed "$t0" "$(now)")
log "imported in ${IMPORT_SECONDS}s: $(cat "$OUT/import.txt")"

PRESIGN_METRICS=127.0.0.1:$("${PY[@]}" free-port)
SAMPLES=$OUT/presign-samples.txt
echo "$(now) 0" > "$SAMPLES"
# `presign --once` signs everything due (N certificates, one response per CertID hash: 2N),
# then exits; `ocspbench.py rusage` reports its CPU (user + system, every thread) at the exit.
# PERF_DIR=DIR (environment): `perf record` (DWARF call graphs; PERF_CALLGRAPH=fp for frame
# pointers) the pre-signer (the whole run) and the responder (the middle of the first round of
# PERF_SERVE: responder-hit, the default, or responder-miss) into DIR;
# `perf report -i DIR/presign.data`.
PERF_WRAP=()
if [[ -n ${PERF_DIR:-} ]]; then
    mkdir -p "$PERF_DIR"
    PERF_WRAP=(perf record --call-graph "${PERF_CALLGRAPH:-dwarf,16384}" -F 499 -o "$PERF_DIR/presign.data" --)
fi
start_bg presign env RUST_LOG=info "${PY[@]}" rusage "$OUT/presign-rusage.json" -- \
    "${PERF_WRAP[@]}" "$BIN/hsmgate-ocsp" presign --once --config "$TMP/ocsp-presign.toml" \
    --metrics-listen "$PRESIGN_METRICS"
PRESIGN_PID=$LAST_PID
"${PY[@]}" cpu-snap "$TMP/cpu-presign-a.json" gateway="$SIGNER_PID" presigner="$PRESIGN_PID"
cp "$TMP/cpu-presign-a.json" "$TMP/cpu-presign-b.json"
log "pre-signing: hsmgate-ocsp presign --once (pid $PRESIGN_PID) for $COUNT certificates"
deadline=$((SECONDS + 300 + COUNT / 1000))
while kill -0 "$PRESIGN_PID" 2>/dev/null && ((SECONDS < deadline)); do
    # curl + awk, not Python: this loop must cost the machine next to nothing.
    v=$(curl -sf "http://$PRESIGN_METRICS/metrics" 2>/dev/null |
        awk '$1 == "hsmgate_ocsp_presigner_responses_signed_total" {print $2}') || v=
    if [[ -n $v ]]; then
        echo "$(now) $v" >> "$SAMPLES"
        # The last sample before the exit: the per-thread view of the pre-signer at work (kept
        # only if the pre-signer was still running after it was taken).
        "${PY[@]}" cpu-snap "$TMP/cpu-presign-b-next.json" gateway="$SIGNER_PID" presigner="$PRESIGN_PID"
        ! pgrep -P "$PRESIGN_PID" >/dev/null || mv "$TMP/cpu-presign-b-next.json" "$TMP/cpu-presign-b.json"
    fi
    sleep 0.25
done
kill -0 "$PRESIGN_PID" 2>/dev/null && { log "presign --once still running after the deadline"; exit 1; }
wait "$PRESIGN_PID" || { log "presign --once failed: $(tail -3 "$OUT/presign.log")"; exit 1; }
"${PY[@]}" cpu-snap "$TMP/cpu-presign-c.json" gateway="$SIGNER_PID" presigner="$PRESIGN_PID"
cp "$TMP/presign.out" "$OUT/presign.out"
ONCE=$(grep -m1 '^presign --once:' "$TMP/presign.out") || { log "no summary line from presign --once"; exit 1; }
log "$ONCE"
RESPONSES=$(sed -n 's/^presign --once: \([0-9]*\) responses.*/\1/p' <<<"$ONCE")
((RESPONSES > 0)) || { log "presign --once signed nothing"; exit 1; }
echo "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(float(sys.argv[2]) + r["wall_seconds"])' \
    "$OUT/presign-rusage.json" "$(head -1 "$SAMPLES" | cut -d' ' -f1)") $RESPONSES" >> "$SAMPLES"
"${PY[@]}" cpu-diff "$TMP/cpu-presign-a.json" "$TMP/cpu-presign-b.json" > "$OUT/cpu-presign.json"
# The gateway's CPU over the whole pre-signing (it outlives the pre-signer).
"${PY[@]}" cpu-diff "$TMP/cpu-presign-a.json" "$TMP/cpu-presign-c.json" > "$OUT/cpu-presign-whole.json"
PRESIGN=$("${PY[@]}" presign-samples "$SAMPLES" "$RESPONSES")
CPU_BRIEF=$(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
w = json.load(open(sys.argv[2]))
ru = json.load(open(sys.argv[3]))
r = c["roles"]
n = int(sys.argv[4])
print(json.dumps({"machine": c["machine_cores"], "others": c["others_cores"],
                  "gateway": r["gateway"]["cores"], "presigner": r["presigner"]["cores"],
                  "gateway_threads": r["gateway"]["by_name"],
                  "presigner_threads": r["presigner"]["by_name"],
                  "presigner_cpu_seconds": ru["cpu_seconds"], "presigner_wall_seconds": ru["wall_seconds"],
                  "presigner_us_per_response": ru["cpu_seconds"] / n * 1e6,
                  "gateway_us_per_response": w["roles"]["gateway"]["cores"] * w["seconds"] / n * 1e6}))' \
    "$OUT/cpu-presign.json" "$OUT/cpu-presign-whole.json" "$OUT/presign-rusage.json" "$RESPONSES")
record "$(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); d.update(kind="presign", import_seconds=float(sys.argv[2]),
    certificates=int(sys.argv[3]), cpu_brief=json.loads(sys.argv[4])); print(json.dumps(d))' \
    "$PRESIGN" "$IMPORT_SECONDS" "$COUNT" "$CPU_BRIEF")"
log "pre-signing: $PRESIGN"
log "pre-signing CPU: $CPU_BRIEF"
signbatch after

stop_pid "$SIGNER_PID" # not needed any more: keep the machine quiet for the serving runs
if [[ $SERVE == none ]]; then
    "${PY[@]}" summary "$OUT" > "$OUT/summary.md"
    cat "$OUT/summary.md"
    exit 0
fi

# --- 3. request lists, files for nginx, nginx --------------------------------------------
log "request lists (hit set of $HITS, all $COUNT) and files for nginx (all: $NGINX_ALL)"
"${PY[@]}" requests "$TMP/issuer.pem" "$TMP/certs.txt" "$HITS" "$TMP/req"
t0=$(now)
"${PY[@]}" dump "$TMP/ocsp.sqlite" "$ISSUER" "$TMP/certs.txt" "$HITS" "$TMP/www" \
    "$([[ $NGINX_ALL == yes ]] && echo 1 || echo 0)" | tee -a "$OUT/run.log"
log "files written in $(elapsed "$t0" "$(now)")s"
chmod -R a+rX "$TMP/www"

NGINX_PORT=$("${PY[@]}" free-port)
# open_file_cache holds each cached file open, in each worker: room for the hit set, below the
# open-files limit (setrlimit may be refused in a container) with room for connections.
NOFILE=$(ulimit -n)
OPEN_FILE_CACHE=$((HITS + HITS / 10 + 100))
if [[ $NOFILE != unlimited ]] && ((OPEN_FILE_CACHE > NOFILE - 4096)); then
    OPEN_FILE_CACHE=$((NOFILE - 4096))
    log "open_file_cache limited to $OPEN_FILE_CACHE by the open-files limit ($NOFILE)"
fi
mkdir -p "$TMP/nginx/tmp"
render "$HERE/nginx.conf.in" "$TMP/nginx/nginx.conf" PREFIX="$TMP/nginx" PORT="$NGINX_PORT" WWW="$TMP/www" \
    OPEN_FILE_CACHE=$OPEN_FILE_CACHE USER="$( ((EUID == 0)) && echo 'user root;' || echo '')"
cp "$TMP/nginx/nginx.conf" "$OUT/nginx.conf"
nginx -t -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/" > "$OUT/nginx-t.log" 2>&1
start_bg nginx nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/" -g 'daemon off;'
NGINX_PID=$LAST_PID
NGINX=http://127.0.0.1:$NGINX_PORT
FIRST_NGINX=$(head -1 "$TMP/req/nginx-hit.txt")
for ((i = 0; i < 100; i++)); do
    curl -sf -o /dev/null "$NGINX$FIRST_NGINX" && break
    sleep 0.1
done

RESP_PID=
start_responder() { # hit|miss
    [[ -z $RESP_PID ]] || stop_pid "$RESP_PID"
    start_ready "responder-$1" env RUST_LOG=info "$BIN/hsmgate-ocsp" serve --config "$TMP/ocsp-$1.toml"
    RESP_PID=$LAST_PID
    RESP=http://$(ready_field "$READY_LINE" http)
    RESP_METRICS=http://$(ready_field "$READY_LINE" metrics)/metrics
    log "responder ($1 config) at $RESP, pid $RESP_PID"
}
start_responder hit

# The same bytes from both, and a response OpenSSL accepts.
FIRST_RESP=$(head -1 "$TMP/req/resp-hit.txt")
FIRST_SERIAL=${FIRST_NGINX##*/}
curl -s -D "$OUT/headers-responder.txt" -o "$TMP/first-responder.der" "$RESP$FIRST_RESP"
curl -s -D "$OUT/headers-nginx.txt" -o "$TMP/first-nginx.der" "$NGINX$FIRST_NGINX"
cmp "$TMP/first-responder.der" "$TMP/first-nginx.der" || { log "responder and nginx differ"; exit 1; }
# Stand-in signatures are not signatures: then openssl only parses the response (-noverify).
openssl ocsp -respin "$TMP/first-responder.der" -issuer "$TMP/issuer.pem" -CAfile "$TMP/issuer.pem" \
    ${STAND_IN:+-noverify} -serial "0x$FIRST_SERIAL" > "$OUT/check-openssl.txt" 2>&1 ||
    { log "openssl rejects the response"; cat "$OUT/check-openssl.txt" >&2; exit 1; }
grep -q "0x$FIRST_SERIAL: good\|0x$FIRST_SERIAL: revoked" "$OUT/check-openssl.txt" ||
    { log "openssl finds no status in the response"; cat "$OUT/check-openssl.txt" >&2; exit 1; }
log "same $(stat -c %s "$TMP/first-nginx.der") response bytes from both; openssl: $(tr '\n' ' ' < "$OUT/check-openssl.txt")"

# --- 4. wrk runs ----------------------------------------------------------------------------
# wrk_run NAME ROUND URL LIST MODE [DURATION]: one wrk run; records its figures, the CPU of the
# server and of wrk (from 1 s after the load starts to 1 s before it ends), and for the
# responder its answers by kind (from its metrics, before and after the run).
wrk_run() {
    local name=$1 round=$2 url=$3 list=$4 mode=$5 dur=${6:-$DURATION}
    local tag=$name-$round marker=$TMP/marker-$name-$round server_pid wpid i
    local -a extra=()
    case $name in responder*) server_pid=$RESP_PID ;; base*) server_pid=$BASE_PID ;; *) server_pid=$NGINX_PID ;; esac
    local ans0=0 bad0=0 hit0=0 miss0=0 metrics=
    case $name in responder*) metrics=$RESP_METRICS ;; base*) metrics=$BASE_METRICS ;; esac
    if [[ -n $metrics ]]; then
        ans0=$(prom "$metrics" '^ocsp_responses_total\{')
        bad0=$(prom "$metrics" '^ocsp_responses_total\{status="(unauthorized|malformed|try_later)"')
        hit0=$(prom "$metrics" '^ocsp_cache_requests_total\{result="hit"')
        miss0=$(prom "$metrics" '^ocsp_cache_requests_total\{result="miss"')
    fi
    rm -f "$marker"
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${dur}s" --latency --timeout 5s -s "$HERE/paths.lua" "$url" \
        -- "$list" "$mode" "$marker" > "$OUT/wrk-$tag.txt" 2>&1 &
    wpid=$!
    PIDS+=("$wpid")
    for ((i = 0; i < 1200; i++)); do
        [[ -e $marker ]] && break
        kill -0 "$wpid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -e $marker ]] || { log "wrk did not start: $(cat "$OUT/wrk-$tag.txt")"; exit 1; }
    sleep 1
    "${PY[@]}" cpu-snap "$TMP/cpu-$tag-a.json" server="$server_pid" wrk="$wpid"
    if [[ $round == 1 && $name == responder* ]]; then
        # top's own view of the responder's threads, over the middle of the run.
        top -H -b -d $((dur - 3)) -n 2 -p "$server_pid" > "$OUT/top-H-$tag.txt" 2>&1 &
        PIDS+=("$!")
    fi
    if [[ $round == 1 && -n ${PERF_DIR:-} && $name == "${PERF_SERVE:-responder-hit}" ]]; then
        perf record --call-graph "${PERF_CALLGRAPH:-dwarf,16384}" -F 499 -o "$PERF_DIR/$name.data" -p "$server_pid" -- sleep $((dur - 4)) \
            > "$OUT/perf-$tag.log" 2>&1 &
        PIDS+=("$!")
    fi
    sleep $((dur - 2))
    "${PY[@]}" cpu-snap "$TMP/cpu-$tag-b.json" server="$server_pid" wrk="$wpid"
    wait "$wpid" || { log "wrk failed: $(cat "$OUT/wrk-$tag.txt")"; exit 1; }
    if [[ -n $metrics ]]; then
        local ans bad hit miss
        ans=$(($(prom "$metrics" '^ocsp_responses_total\{') - ans0))
        bad=$(($(prom "$metrics" '^ocsp_responses_total\{status="(unauthorized|malformed|try_later)"') - bad0))
        hit=$(($(prom "$metrics" '^ocsp_cache_requests_total\{result="hit"') - hit0))
        miss=$(($(prom "$metrics" '^ocsp_cache_requests_total\{result="miss"') - miss0))
        extra=(bad_answers="$bad" cache="\"answers $ans, of which not signed $bad; cache hit $hit, miss $miss\"")
    fi
    if [[ $round != warm ]]; then
        record "$("${PY[@]}" wrk-record "$name" "$round" "$OUT/wrk-$tag.txt" "$TMP/cpu-$tag-a.json" "$TMP/cpu-$tag-b.json" "${extra[@]}")"
        cp "$TMP/cpu-$tag-a.json" "$TMP/cpu-$tag-b.json" "$OUT/" 2>/dev/null || true
    fi
    log "$tag: $(sed -n 's/^Requests\/sec: *//p' "$OUT/wrk-$tag.txt") req/s, p99 $(awk '$1 == "99%" {print $2}' "$OUT/wrk-$tag.txt") ${extra[*]:+(${extra[*]})}"
}

BASE_PID= BASE_METRICS=
# start_base hit|miss: the --compare-bin responder, checked to send nginx's bytes.
start_base() {
    start_ready "responder-base-$1" env RUST_LOG=info "$COMPARE_BIN/hsmgate-ocsp" serve --config "$TMP/ocsp-$1.toml"
    BASE_PID=$LAST_PID
    BASE=http://$(ready_field "$READY_LINE" http)
    BASE_METRICS=http://$(ready_field "$READY_LINE" metrics)/metrics
    curl -s -o "$TMP/first-base.der" "$BASE$FIRST_RESP"
    cmp "$TMP/first-base.der" "$TMP/first-nginx.der" || { log "the --compare-bin responder sends other bytes"; exit 1; }
    log "comparison responder ($COMPARE_BIN/hsmgate-ocsp, $1 config) at $BASE, pid $BASE_PID"
}
[[ -z $COMPARE_BIN ]] || start_base hit
log "cache hits: warming up, then $ROUNDS rounds of nginx / responder${COMPARE_BIN:+ / base}, ${DURATION}s each"
wrk_run nginx-hit warm "$NGINX" "$TMP/req/nginx-hit.txt" cycle 5
wrk_run responder-hit warm "$RESP" "$TMP/req/resp-hit.txt" cycle 5
[[ -z $COMPARE_BIN ]] || wrk_run base-hit warm "$BASE" "$TMP/req/resp-hit.txt" cycle 5
for ((r = 1; r <= ROUNDS; r++)); do
    wrk_run nginx-hit "$r" "$NGINX" "$TMP/req/nginx-hit.txt" cycle
    wrk_run responder-hit "$r" "$RESP" "$TMP/req/resp-hit.txt" cycle
    [[ -z $COMPARE_BIN ]] || wrk_run base-hit "$r" "$BASE" "$TMP/req/resp-hit.txt" cycle
done
[[ -z $BASE_PID ]] || stop_pid "$BASE_PID"
curl -s "$RESP_METRICS" > "$OUT/responder-hit-metrics.txt" || true

if [[ $SERVE == hits ]]; then
    cp "$TMP/nginx/error.log" "$OUT/nginx-error.log" 2>/dev/null || true
    "${PY[@]}" summary "$OUT" > "$OUT/summary.md"
    cat "$OUT/summary.md"
    exit 0
fi
start_responder miss
if [[ $NGINX_ALL == yes ]]; then
    NGINX_MISS=(nginx-all "$TMP/req/nginx-all.txt" random)
else
    NGINX_MISS=(nginx-hit "$TMP/req/nginx-hit.txt" cycle)
fi
[[ -z $COMPARE_BIN ]] || start_base miss
log "cache misses: responder cache $MISS_CACHE_BYTES bytes, random serials of all $COUNT; nginx: ${NGINX_MISS[0]}${COMPARE_BIN:+; and base}"
wrk_run responder-miss warm "$RESP" "$TMP/req/resp-all.txt" random 5
[[ -z $COMPARE_BIN ]] || wrk_run base-miss warm "$BASE" "$TMP/req/resp-all.txt" random 5
wrk_run "${NGINX_MISS[0]}" warm "$NGINX" "${NGINX_MISS[1]}" "${NGINX_MISS[2]}" 5
for ((r = 1; r <= ROUNDS; r++)); do
    wrk_run "${NGINX_MISS[0]}" "$r" "$NGINX" "${NGINX_MISS[1]}" "${NGINX_MISS[2]}"
    wrk_run responder-miss "$r" "$RESP" "$TMP/req/resp-all.txt" random
    [[ -z $COMPARE_BIN ]] || wrk_run base-miss "$r" "$BASE" "$TMP/req/resp-all.txt" random
done
[[ -z $COMPARE_BIN ]] || stop_pid "$BASE_PID"
curl -s "$RESP_METRICS" > "$OUT/responder-miss-metrics.txt" || true

# --- 5. summary -----------------------------------------------------------------------------
cp "$TMP/nginx/error.log" "$OUT/nginx-error.log" 2>/dev/null || true
"${PY[@]}" summary "$OUT" > "$OUT/summary.md"
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$OUT/summary.md"
