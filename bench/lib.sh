# What the benchmark scripts (bench/acme, bench/ocsp, bench/security, bench/slow-connections)
# share; each sources this file after setting HERE and ROOT. `log` writes to "$OUT/run.log", so
# OUT must be set before the first message.

# The script's own header comment, from line 2 to `set -euo`, as its --help.
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -euo/d'; exit "${1:-0}"; }

# Every process the script starts, stopped by `stop_pid` in its cleanup.
PIDS=()

# SIGTERM, up to 10 s to exit (the gateway drains in-flight calls), then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$OUT/run.log" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# The stack kit's shell side: stack_up / stack_down (a whole stack on ephemeral ports),
# spawn_ready / ready_field (one process and its READY line).
. "$ROOT/bench/stack/stack.sh"
