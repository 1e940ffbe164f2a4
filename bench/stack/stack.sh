# Sourced by scripts that need a whole hsmgate stack of their own (ca-frontend/e2e/clients.sh,
# the benches): the one shell copy of "start it and wait until it is READY".
#
#   stack_up DIR [--set FILE.PATH=VALUE ...]
#       `hsmgate-stack up --dir DIR --ports ephemeral --env-file DIR/stack.env` in the
#       background (its output in DIR/stack.log); returns once every service is READY, with
#       the STACK_* variables of DIR/stack.env set (addresses, files, process ids: see
#       `hsmgate_stack::StackInfo`) and STACK_PID the stack's own pid. Fails (status 1, the end
#       of the log on stderr) if the stack exits or is not up within STACK_TIMEOUT seconds.
#   stack_multi DIR
#       The same for `hsmgate-stack multi` (the multi-instance deployment; bench/drills).
#   stack_down
#       SIGTERM to the stack, which stops every service (the gateway drains first); waits.
#   spawn_ready NAME DIR COMMAND...
#       One process on its own: COMMAND in the background, stdout to DIR/NAME.out, stderr to
#       DIR/NAME.log; returns once it printed its READY line (LAST_PID its pid, READY_LINE the
#       line), or fails with the end of its log if it exits first or within READY_TIMEOUT
#       seconds (default 60) prints none.
#   ready_field LINE KEY
#       The value of KEY=VALUE in a READY line (`ready_field "$READY_LINE" http`).
#
# The binary is $STACK_BIN, else $BIN/hsmgate-stack, else target/debug/hsmgate-stack.

stack_up() {
    local dir=$1
    shift
    stack_start "$dir" up --ports ephemeral "$@"
}

stack_multi() { stack_start "$1" multi; }

# stack_start DIR SUBCOMMAND ARGS...: `hsmgate-stack SUBCOMMAND --dir DIR --env-file DIR/stack.env
# ARGS` in the background, until the env file exists (then sourced).
stack_start() {
    local dir=$1 command=$2 bin=${STACK_BIN:-${BIN:-target/debug}/hsmgate-stack} waited=0
    shift 2
    [ -x "$bin" ] || { echo "stack_$command: $bin missing (cargo build -p hsmgate-stack)" >&2; return 1; }
    mkdir -p "$dir"
    rm -f "$dir/stack.env"
    "$bin" "$command" --dir "$dir" --env-file "$dir/stack.env" "$@" > "$dir/stack.log" 2>&1 &
    STACK_PID=$!
    until [ -f "$dir/stack.env" ]; do
        if ! kill -0 "$STACK_PID" 2>/dev/null; then
            echo "stack_$command: hsmgate-stack exited; the end of $dir/stack.log:" >&2
            tail -n 40 "$dir/stack.log" >&2
            return 1
        fi
        if [ $((waited += 1)) -gt $((${STACK_TIMEOUT:-180} * 10)) ]; then
            echo "stack_$command: not up after ${STACK_TIMEOUT:-180} s; see $dir/stack.log" >&2
            return 1
        fi
        sleep 0.1
    done
    # shellcheck disable=SC1091
    . "$dir/stack.env"
}

stack_down() {
    [ -n "${STACK_PID:-}" ] || return 0
    kill -TERM "$STACK_PID" 2>/dev/null || true
    wait "$STACK_PID" 2>/dev/null || true
    STACK_PID=
}

spawn_ready() {
    local name=$1 dir=$2 waited=0
    shift 2
    "$@" > "$dir/$name.out" 2> "$dir/$name.log" &
    LAST_PID=$!
    until READY_LINE=$(grep -m1 '^READY' "$dir/$name.out" 2>/dev/null); do
        if ! kill -0 "$LAST_PID" 2>/dev/null; then
            echo "spawn_ready: $name exited before READY; the end of $dir/$name.log:" >&2
            tail -n 30 "$dir/$name.log" >&2
            return 1
        fi
        if [ $((waited += 1)) -gt $((${READY_TIMEOUT:-60} * 10)) ]; then
            echo "spawn_ready: $name printed no READY line in ${READY_TIMEOUT:-60} s; stopped" >&2
            kill -KILL "$LAST_PID" 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
}

ready_field() { tr ' ' '\n' <<< "$1" | sed -n "s/^$2=//p"; }
