#!/usr/bin/env bash
# What mTLS and the audit log cost on SignBatch throughput, in one run (issue 6: "the cost of
# mTLS and auditing on SignBatch throughput (same run, with and without), target ≤ 10 % with
# batching"):
#
#  1. two SoftHSM2 tokens (one datacenter, key `bench-p256` cloned into both, 2 sessions each)
#     and development mTLS certificates (`hsm-config dev-certs`, client `bench`);
#  2. four gateways on those tokens, all the same binary, differing only in their config (each
#     derived from bench/security/gateway.toml with `hsmgate-stack config gateway`):
#       plain        plain text ([gateway.insecure_plaintext]), NO audit log   (the baseline)
#       plain+audit  plain text, audit log ([audit], fdatasync'ed group commit)
#       mtls         mTLS ([gateway.tls]), NO audit log
#       mtls+audit   mTLS, audit log                                          (production)
#     "NO audit log" is `[audit] bench_unaudited = true`, which only a signer built with the
#     `bench-unaudited` feature accepts; that build is used for all four, so the code is the same
#     and only the configuration differs;
#  3. ROUNDS rounds; in each, for each load point of --loads (CALLSxBATCH: SignBatch calls in
#     flight × signatures per call), one `hsm-bench sign --mode batch` run of DURATION (after
#     WARMUP) against each gateway, the order of the four rotating from round to round; the
#     gateway's CPU time, its audit / RPC latency histograms and its audit writer thread's
#     scheduler statistics (CPU time, run-queue wait) are read around every run. The
#     default points: 8 × 256 (batching as the OCSP pre-signer does it), 8 × 16 (small calls, so
#     per-call costs weigh 16 times more), 64 × 16 (the same small calls, more of them in flight);
#  4. results under bench/security/results/<UTC timestamp>/: runs.jsonl (one line per run),
#     summary.md and summary.json (median sig/s per configuration and load point, ratio to the
#     baseline, the target check), machine.txt (git revision, load average), logs. The folder is
#     not tracked by git (.gitignore); figures worth keeping go in bench/RESULTS.md.
#
# The audit logs go to the work directory (mktemp under /tmp, or TMPDIR): it must be a real disk,
# as in production — on tmpfs `fdatasync` costs nothing, and the script refuses to run there.
#
# Usage: bench/security/run.sh [--loads "8x256 8x16 64x16"] [--rounds 4] [--duration 4s]
#          [--warmup 1s] [--out DIR] [--keep] [--set FILE.PATH=VALUE ...]
#
# Needs release binaries, the gateway built with the benchmark-only feature under its own name:
#   cargo build --release -p signer -p hsm-config -p hsm-bench -p hsmgate-stack
#   cargo build --release -p signer --features bench-unaudited
#   cp target/release/signer target/release/signer-bench-unaudited
#   cargo build --release -p signer        # target/release/signer: the normal build again
# (BIN=DIR takes hsm-config, hsm-bench and hsmgate-stack from DIR, SIGNER=PATH the gateway.)
# SoftHSM2, curl, python3. On a shared machine run it under the benchmark lock:
#   flock /tmp/hsmgate-bench.lock bench/security/run.sh
# Every process started here is stopped on exit, by its pid.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$ROOT/bench/lib.sh" # usage, PIDS, stop_pid, log, fail; the stack kit's spawn_ready, ready_field
BIN=${BIN:-$ROOT/target/release}
SIGNER=${SIGNER:-$BIN/signer-bench-unaudited}
KEY=bench-p256
CONFIGS=(plain plain+audit mtls mtls+audit)

LOADS="8x256 8x16 64x16"
ROUNDS=4
DURATION=4s
WARMUP=1s
OUT=
KEEP=0
# `--set FILE.PATH=VALUE` for every gateway's config (hsmgate-stack config), e.g. the audit log
# as it was before group-commit waits and preallocation:
#   --set gateway.audit.commit_delay_us=0 --set gateway.audit.preallocate_bytes=0
EXTRA_SETS=()
SET_ARGS=
while (($#)); do
    case $1 in
        --loads) LOADS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --set) EXTRA_SETS+=(--set "$2"); SET_ARGS+=" --set $2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done

for tool in curl python3 softhsm2-util; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y softhsm2 curl python3)" >&2; exit 2; }
done
for b in "$BIN/hsm-config" "$BIN/hsm-bench" "$BIN/hsmgate-stack" "$SIGNER"; do
    [[ -x $b ]] || { echo "$b missing: cargo build --release -p signer -p hsm-config -p hsm-bench -p hsmgate-stack (the gateway: see the build commands in $0 --help)" >&2; exit 2; }
done

for load in $LOADS; do
    [[ $load =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || { echo "--loads: \`$load\` is not CALLSxBATCH" >&2; exit 2; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hsmgate-security-bench.XXXXXX")
FSTYPE=$(stat -f -c %T "$WORK")
if [[ $FSTYPE == tmpfs || $FSTYPE == ramfs ]]; then
    rmdir "$WORK"
    echo "the work directory is on $FSTYPE, where fdatasync is free: set TMPDIR to a disk" >&2
    exit 2
fi
# Raw output, ignored by git: figures worth keeping go in bench/RESULTS.md (date, commit, command).
OUT=${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/runs.jsonl"

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for f in "$WORK"/*.log "$WORK"/*.toml; do [[ -e $f ]] && cp "$f" "$OUT/" 2>/dev/null; done
    if ((KEEP)); then echo "temporary files kept in $WORK" >&2; else rm -rf "$WORK"; fi
    ((status == 0)) || echo "FAILED (status $status); logs in $OUT" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# File-safe name of a configuration: plain+audit -> plain-audit.
tag() { echo "${1//+/-}"; }

GIT=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')
{
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $GIT"
    echo "nproc: $(nproc); cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "uptime before: $(uptime)"
    echo "softhsm2: $(softhsm2-util --version 2>/dev/null || echo '?')"
    echo "signer: $SIGNER (sha256 $(sha256sum "$SIGNER" | cut -c1-16)…)"
    echo "audit logs on: $FSTYPE ($(df --output=source "$WORK" | tail -1))"
    echo "command: $0 --loads \"$LOADS\" --rounds $ROUNDS --duration $DURATION --warmup $WARMUP$SET_ARGS"
} > "$OUT/machine.txt"
# What one fdatasync costs on the audit logs' disk now: 200 appends of 8 KiB, each synced.
FSYNC=$(python3 - "$WORK/fsync-probe" <<'PY'
import os, statistics, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
times = []
for _ in range(200):
    t = time.perf_counter()
    os.write(fd, b"x" * 8192)
    os.fdatasync(fd)
    times.append((time.perf_counter() - t) * 1e3)
os.close(fd)
os.unlink(sys.argv[1])
times.sort()
print(f"8 KiB append + fdatasync: median {statistics.median(times):.2f} ms, "
      f"p90 {times[179]:.2f} ms, max {times[-1]:.2f} ms")
PY
)
echo "disk: $FSYNC" >> "$OUT/machine.txt"
LOAD_BEFORE=$(loadavg)
log "results in $OUT; work dir $WORK; git $GIT; load average $LOAD_BEFORE; $FSYNC"

# --- 1. tokens and certificates ----------------------------------------------------------------
# The gateway configuration of one of the four, derived from gateway.toml (mtls+audit) with
# `hsmgate-stack config gateway`: its own audit directory; plain text for client `bench` instead
# of mTLS; no audit log. Writes $WORK/gateway-TAG.toml.
config() {
    local name=$1 t
    t=$(tag "$name")
    local sets=(--set "gateway.audit.dir=$WORK/audit-$t")
    if [[ $name == plain* ]]; then
        sets+=(--unset gateway.gateway.tls --set gateway.gateway.insecure_plaintext.client=bench)
    fi
    if [[ $name != *+audit ]]; then sets+=(--set gateway.audit.bench_unaudited=true); fi
    sets+=("${EXTRA_SETS[@]}")
    "$BIN/hsmgate-stack" config gateway "$HERE/gateway.toml" "$WORK/gateway-$t.toml" "${sets[@]}" \
        2> "$WORK/config-$t.log" || fail "gateway-$t.toml: $(cat "$WORK/config-$t.log")"
}

export SOFTHSM2_CONF=$WORK/softhsm2.conf
for name in "${CONFIGS[@]}"; do config "$name"; done
"$BIN/hsm-config" dev-certs "$WORK/tls" > "$WORK/dev-certs.log" 2>&1 || fail "dev-certs: $(cat "$WORK/dev-certs.log")"
"$BIN/hsm-config" provision "$WORK/gateway-plain.toml" > "$WORK/provision.log" 2>&1 ||
    fail "provisioning: $(tail -5 "$WORK/provision.log")"
log "tokens and certificates ready"

# --- 2. the four gateways ----------------------------------------------------------------------
# One after the other: SoftHSM2 rewrites a token's file on C_Login, and a gateway starting at
# that moment can miss the token (signer/tests/common/mod.rs).
declare -A PID URL METRICS
hsms_up() { curl -sf "http://$1/metrics" 2>/dev/null | awk '/^hsmgate_hsm_up\{/ {s += $2} END {print s + 0}'; }
for name in "${CONFIGS[@]}"; do
    t=$(tag "$name")
    if ! spawn_ready "signer-$t" "$WORK" "$SIGNER" --config "$WORK/gateway-$t.toml"; then
        if grep -q 'audit.bench_unaudited: refused' "$WORK/signer-$t.log"; then
            fail "$SIGNER was built without the bench-unaudited feature; see $0 --help"
        fi
        fail "gateway $name did not start: $(tail -5 "$WORK/signer-$t.log")"
    fi
    PID[$name]=$LAST_PID
    PIDS+=("${PID[$name]}")
    METRICS[$name]=$(ready_field "$READY_LINE" metrics)
    case $name in
        plain*) URL[$name]=http://$(ready_field "$READY_LINE" grpc) ;;
        mtls*) URL[$name]=https://$(ready_field "$READY_LINE" grpc) ;;
    esac
    for ((i = 0; i < 200; i++)); do
        [[ $(hsms_up "${METRICS[$name]}") == 2 ]] && break
        sleep 0.1
    done
    [[ $(hsms_up "${METRICS[$name]}") == 2 ]] || fail "gateway $name: both HSMs not up after 20 s"
    # The unaudited ones must say so; the audited ones must not.
    disabled=$(curl -sf "http://${METRICS[$name]}/metrics" | awk '/^hsmgate_audit_disabled / {print $2}')
    case $name in
        *+audit) [[ $disabled == 0 ]] || fail "gateway $name: hsmgate_audit_disabled=$disabled" ;;
        *) [[ $disabled == 1 ]] || fail "gateway $name: hsmgate_audit_disabled=$disabled" ;;
    esac
    log "gateway $name: ${URL[$name]} (pid ${PID[$name]}, metrics ${METRICS[$name]})"
done

# --- 3. the runs -------------------------------------------------------------------------------
TLS_ENV=(HSMGATE_TLS_CA="$WORK/tls/ca.pem" HSMGATE_TLS_CERT="$WORK/tls/bench.pem"
         HSMGATE_TLS_KEY="$WORK/tls/bench.key")
# Gateway PID's CPU seconds (user + system) so far.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
# Sums and counts of the gateway's audit-wait and SignBatch-latency histograms, as JSON, and the
# audit waits of at most ~3.2 ms (the largest bucket bound up to 5 ms), to count the tail.
histograms() {
    curl -sf "http://$1/metrics" | awk '
        /^hsmgate_audit_write_seconds_sum / {as = $2} /^hsmgate_audit_write_seconds_count / {ac = $2}
        /^hsmgate_audit_write_seconds_bucket\{le="[0-9.e-]+"\} / {
            le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
            if (le + 0 <= 0.005 && le + 0 >= best) {best = le + 0; fast = $2}
        }
        /^hsmgate_rpc_seconds_sum\{method="SignBatch"\}/ {rs = $2}
        /^hsmgate_rpc_seconds_count\{method="SignBatch"\}/ {rc = $2}
        /^hsmgate_rpc_signatures_total\{method="SignBatch"\}/ {sg = $2}
        END {printf "{\"audit_sum\": %s, \"audit_count\": %s, \"audit_fast\": %s, \"rpc_sum\": %s, \"rpc_count\": %s, \"signatures\": %s}\n",
             as + 0, ac + 0, fast + 0, rs + 0, rc + 0, sg + 0}'
}
# The audit writer thread's scheduler figures (/proc/PID/task/TID/schedstat): nanoseconds on a
# CPU, nanoseconds runnable but waiting for one. "0 0" for a gateway without the thread.
writer_sched() {
    local task
    for task in /proc/"$1"/task/*; do
        if [[ $(cat "$task/comm" 2>/dev/null) == audit-writer ]]; then
            cut -d' ' -f1-2 "$task/schedstat"
            return
        fi
    done
    echo "0 0"
}
run_one() { # CONFIG CALLS BATCH ROUND
    local name=$1 calls=$2 batch=$3 round=$4 t json cpu0 cpu1 h0 h1 env=()
    t=$(tag "$name")-${calls}x$batch-r$round
    json=$OUT/$t.json
    [[ $name == mtls* ]] && env=("${TLS_ENV[@]}")
    cpu0=$(cpu_seconds "${PID[$name]}")
    h0=$(histograms "${METRICS[$name]}")
    w0=$(writer_sched "${PID[$name]}")
    env "${env[@]}" RUST_LOG=warn "$BIN/hsm-bench" sign --config "$WORK/gateway-$(tag "$name").toml" \
        --key "$KEY" --mode batch --gateway "${URL[$name]}" --batch "$batch" \
        --batch-concurrency "$calls" --duration "$DURATION" --warmup "$WARMUP" --rounds 1 \
        --json "$json" > "$OUT/$t.txt" 2>&1 || { cat "$OUT/$t.txt" >&2; fail "hsm-bench sign $t"; }
    cpu1=$(cpu_seconds "${PID[$name]}")
    h1=$(histograms "${METRICS[$name]}")
    w1=$(writer_sched "${PID[$name]}")
    line=$(python3 - "$json" "$name" "$calls" "$batch" "$round" "$cpu0" "$cpu1" "$h0" "$h1" \
        "$(loadavg)" "$OUT/runs.jsonl" "$w0" "$w1" <<'PY'
import json, sys
path, name, calls, batch, rnd, cpu0, cpu1, h0, h1, load, runs, w0, w1 = sys.argv[1:14]
w = [b - a for a, b in zip(map(int, w0.split()), map(int, w1.split()))]
report = json.load(open(path))
mode = report["modes"][0]
h0, h1 = json.loads(h0), json.loads(h1)
d = {k: h1[k] - h0[k] for k in h0}
signed = sum(r["signatures"] for r in mode["rounds"])
rate = mode["median_signatures_per_s"]
cpu = mode.get("cpu") or {}
r = {
    "config": name, "load": f"{calls}x{batch}", "calls_in_flight": int(calls),
    "batch": int(batch), "round": int(rnd),
    "signatures_per_s": rate,
    "errors": sum(mode["errors"].values()),
    "latency_us": {k: mode["latency"].get(k) for k in ("p50_us", "p99_us")},
    "gateway_cpu_s": float(cpu1) - float(cpu0),
    # Over the whole hsm-bench run (warm-up included), per signature the gateway returned.
    "gateway_cpu_us_per_signature": (float(cpu1) - float(cpu0)) * 1e6 / max(d["signatures"], 1),
    "machine_busy": cpu.get("machine_busy"),
    "bench_cores": cpu.get("bench"),
    "signbatch_calls": d["rpc_count"],
    "signbatch_mean_ms": 1e3 * d["rpc_sum"] / d["rpc_count"] if d["rpc_count"] else None,
    "audit_records": d["audit_count"],
    "audit_mean_wait_ms": 1e3 * d["audit_sum"] / d["audit_count"] if d["audit_count"] else None,
    # Calls whose record waited longer than ~3.2 ms: the tail of the audit wait.
    "audit_waits_over_3ms": d["audit_count"] - d["audit_fast"],
    # The audit writer thread, per record: time on a CPU, and time runnable but not running
    # (waiting behind the signing threads for a core).
    "writer_cpu_us_per_record": 1e-3 * w[0] / d["audit_count"] if d["audit_count"] else None,
    "writer_runqueue_us_per_record": 1e-3 * w[1] / d["audit_count"] if d["audit_count"] else None,
    "load_average": load,
    "signatures_in_window": signed,
}
with open(runs, "a") as f:
    f.write(json.dumps(r) + "\n")
wait = r["audit_mean_wait_ms"]
wcpu, wq = r["writer_cpu_us_per_record"], r["writer_runqueue_us_per_record"]
print(f"{rate:>9,.0f} sig/s  SignBatch mean {r['signbatch_mean_ms'] or 0:.1f} ms  "
      f"audit wait {'-' if wait is None else format(wait, '.2f')} ms"
      + ("" if wcpu is None else f" (writer per record: CPU {wcpu:.0f} µs, run queue {wq:.0f} µs)")
      + "  "
      f"gateway CPU {r['gateway_cpu_us_per_signature']:.1f} µs/sig  errors {r['errors']}")
PY
)
    log "round $round $(printf '%-7s %-12s' "${calls}x$batch" "$name") $line"
}
for ((round = 1; round <= ROUNDS; round++)); do
    for load in $LOADS; do
        for ((i = 0; i < ${#CONFIGS[@]}; i++)); do
            run_one "${CONFIGS[(i + round - 1) % ${#CONFIGS[@]}]}" "${load%x*}" "${load#*x}" "$round"
        done
    done
done
for name in "${CONFIGS[@]}"; do
    curl -sf "http://${METRICS[$name]}/metrics" > "$OUT/metrics-$(tag "$name").txt" || true
done
# The audited gateways' logs must verify: the benchmark measured a real audit log.
for name in plain+audit mtls+audit; do
    "$SIGNER" audit verify "$WORK/audit-$(tag "$name")" > "$OUT/audit-verify-$(tag "$name").txt" 2>&1 ||
        fail "audit verify $name: $(cat "$OUT/audit-verify-$(tag "$name").txt")"
    log "audit log of $name: $(cat "$OUT/audit-verify-$(tag "$name").txt" | cut -c1-60)…"
done
[[ ! -e $WORK/audit-plain && ! -e $WORK/audit-mtls ]] || fail "an unaudited gateway wrote an audit log"

# --- 4. summary --------------------------------------------------------------------------------
LOAD_AFTER=$(loadavg)
echo "uptime after: $(uptime)" >> "$OUT/machine.txt"
python3 "$HERE/summary.py" "$OUT" "$GIT" "$LOAD_BEFORE" "$LOAD_AFTER" \
    "$0 --loads \"$LOADS\" --rounds $ROUNDS --duration $DURATION --warmup $WARMUP"
log "load average at the end: $LOAD_AFTER"
cat "$OUT/summary.md"
