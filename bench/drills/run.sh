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
# import revoked (it must never be answered `good`), and for the CRL shard list. After each
# drill, a short `after` load on acme-2 must complete every order: recovered, no restart; and
# every certificate the load generators received (warm-up included) must have its record in
# PostgreSQL, a sample of 10 `good` at both responders: nothing issued half-recorded. Every 10th
# certificate is revoked by its account as soon as it is downloaded: each must be `revoked` at
# both responders (never `good` past their 5 s cache window) and 3 of them listed by their CRL
# shard (the deployment's revocation delay is 5 s).
#
# Drills (run in this order; default: all):
#   gateway     gateway-west SIGKILLed at --at seconds; the supervisor restarts it. No order may
#               fail. Recovery: from the kill to its metrics answering again.
#   datacenter  dc-west's HSM pair lost: both p11-kit servers (and their children) SIGSTOPped
#               for --hold seconds, then SIGCONT. Both gateways carry on with dc-east's pair: no
#               order may fail. Recovery: from SIGCONT until west-1 signs again.
#   dns         the validation resolver (pebble-challtestsrv) SIGSTOPped for --hold seconds (at
#               least 8: past the frontends' 5 s DNS budget): orders fail, and only with `dns`
#               (validation) or `caa` (the CAA recheck at finalization); OCSP and CRL serving
#               see no error.
#   redis       a Redis master SIGSTOPped for --hold seconds, or until a replica is promoted
#               if that takes longer (up to 15 s; > the 2 s node timeout: its
#               replica takes over): responders keep answering (no error), the pre-signer, CRL
#               updaters and responders are not restarted. Recovery: from the stop until its
#               replica is promoted (three masters among the other five nodes).
#   postgres    PostgreSQL stopped (pg_ctlcluster) for --hold seconds: orders may fail then
#               (503 serverInternal problems with Retry-After), and the frontends are not
#               restarted.
#
# Each drill passes when 0x1003 was never `good`, its own condition above holds, and the
# `after` load completes every order; at the end both gateways' audit chains must verify.
# Results: a table on stdout and in OUT/summary.md.
#
# Usage: bench/drills/run.sh [--duration 20] [--at 5] [--hold 8] [--concurrency 4]
#          [--out DIR] [gateway] [datacenter] [dns] [redis] [postgres]
#        (BIN=target/release for release binaries; default target/debug)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
. "$ROOT/bench/lib.sh" # usage, log, fail; the stack kit's stack_multi, stack_down
BIN=${BIN:-$ROOT/target/debug}
DURATION=20 AT=5 HOLD=8 CONCURRENCY=4 OUT= DRILLS=()
while (($#)); do
    case $1 in
        --duration) DURATION=$2; shift 2 ;;
        --at) AT=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        gateway|datacenter|dns|redis|postgres) DRILLS+=("$1"); shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
((${#DRILLS[@]})) || DRILLS=(gateway datacenter dns redis postgres)
for b in hsmgate-stack hsm-bench signer; do
    [[ -x $BIN/$b ]] || { echo "$BIN/$b missing: cargo build -p hsmgate-stack -p hsm-bench -p signer -p ocsp -p ca-frontend -p hsm-config" >&2; exit 2; }
done
for tool in shuf redis-server redis-cli psql pg_lsclusters pg_ctlcluster p11-kit pebble-challtestsrv openssl curl; do
    command -v "$tool" > /dev/null || { echo "missing $tool (hsm-config/dev/setup.sh installs it)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/hsmgate-drills.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
STACK_PID= PG_STOPPED=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # Never leave the machine's PostgreSQL stopped.
    [ -n "$PG_STOPPED" ] && pg_ctlcluster $PG_STOPPED start
    # Nor a process stopped (SIGSTOP) by a drill that failed half-way.
    [ -n "$STACK_PID" ] && pkill -CONT -P "$STACK_PID" 2>/dev/null
    stack_down
    if ((status)); then
        echo "FAILED; logs in $WORK" >&2
        tail -n 20 "$WORK/stack.log" >&2 || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }

# --- the deployment --------------------------------------------------------------------------
stack_multi "$WORK" || exit 1
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
            curl -sf -o /dev/null --max-time 2 "$url/dev-ca.json" || echo "$url crl-error"
        done >> "$file"
        sleep 0.2
    done
}
# acme LABEL DIRECTORY SECONDS: orders for SECONDS; prints "ok failed" (its report in OUT).
acme_load() {
    "$BIN/hsm-bench" acme --label "drill-$1" --directory "$2" \
        --concurrency "$CONCURRENCY" --duration "${3}s" --warmup 1s --order-timeout 30s \
        --http-port "$STACK_HTTP01_PORT" --domain "$1.drill.example.test" \
        --save-chains "$WORK/chains/$1" --revoke-every 10 --json "$OUT/$1-acme.json" > "$OUT/$1-acme.txt" 2>&1 || true
}
# verify_chains LABEL...: every certificate the clients of these loads received has its record
# in PostgreSQL, and (a sample of 10) is `good` at both responders. Prints
# "RECEIVED UNRECORDED SAMPLED GOOD".
norm_serial() { tr 'A-F' 'a-f' | sed 's/^0*//'; }
verify_chains() {
    local label f serial received=0 unrecorded=0 sampled=0 good_count=0 url
    psql "$STACK_PG_URL" -tAc "SELECT serial FROM certificates" | norm_serial > "$WORK/recorded.txt"
    for label in "$@"; do
        for f in "$WORK/chains/$label"/*.pem; do
            [ -e "$f" ] || continue
            received=$((received + 1))
            serial=$(openssl x509 -noout -serial -in "$f" | cut -d= -f2 | norm_serial)
            grep -qx "$serial" "$WORK/recorded.txt" || unrecorded=$((unrecorded + 1))
        done
    done
    for f in $(for label in "$@"; do ls "$WORK/chains/$label"/*.pem 2>/dev/null; done | grep -v -F -f <(revoked_chains "$@"; echo /nothing/) | shuf -n 10); do
        for url in "$STACK_OCSP_URL" "$STACK_OCSP2_URL"; do
            sampled=$((sampled + 1))
            openssl ocsp -issuer "$STACK_ISSUER_PEM" -CAfile "$STACK_ROOT_PEM" -cert "$f" -url "$url" \
                -no_nonce 2>/dev/null | grep -q ': good' && good_count=$((good_count + 1))
        done
    done
    echo "$received $unrecorded $sampled $good_count"
}
revoked_chains() { local label; for label in "$@"; do ls "$WORK/chains/$label"/*.revoked 2>/dev/null | sed 's/\.revoked$/.pem/'; done; }
# verify_revoked LABEL...: every certificate the load generators revoked is `revoked` at both
# responders (within their 5 s cache window), and 3 of them are listed by the CRL shard their
# CRL Distribution Point names (within the updater's 5 s revocation delay). Prints
# "REVOKED NOT_REVOKED_AT_A_RESPONDER CRL_CHECKED CRL_LISTED".
ocsp_says() { openssl ocsp -issuer "$STACK_ISSUER_PEM" -CAfile "$STACK_ROOT_PEM" -cert "$1" -url "$2" -no_nonce 2>/dev/null | sed -n 's/^[^:]*: \(good\|revoked\|unknown\)$/\1/p'; }
verify_revoked() {
    local f url revoked=0 not_revoked=0 crl_checked=0 crl_listed=0 state i url_crl serial
    for f in $(revoked_chains "$@"); do
        revoked=$((revoked + 1))
        for url in "$STACK_OCSP_URL" "$STACK_OCSP2_URL"; do
            for i in $(seq 1 40); do
                state=$(ocsp_says "$f" "$url")
                [ "$state" = revoked ] && break
                [ "$state" = good ] && [ "$i" -eq 1 ] && [ "$(($(date +%s) - $(stat -c %Y "${f%.pem}.revoked")))" -gt 6 ] \
                    && { echo "$f: good at $url more than 6 s after its revocation" >&2; break; }
                sleep 0.2
            done
            [ "$state" = revoked ] || not_revoked=$((not_revoked + 1))
        done
    done
    for f in $(revoked_chains "$@" | shuf -n 3); do
        crl_checked=$((crl_checked + 1))
        url_crl=$(openssl x509 -noout -ext crlDistributionPoints -in "$f" | sed -n 's/^ *URI://p' | head -n 1)
        serial=$(openssl x509 -noout -serial -in "$f" | cut -d= -f2)
        for _ in $(seq 1 60); do
            curl -sf "$url_crl" | openssl crl -inform DER -noout -text 2>/dev/null | grep -qi "Serial Number: $serial" \
                && { crl_listed=$((crl_listed + 1)); break; }
            sleep 0.25
        done
    done
    echo "$revoked $not_revoked $crl_checked $crl_listed"
}
orders_of() { # LABEL: "ok failed" from its report
    local orders
    orders=$(sed -n 's/^orders ok \([0-9]*\) *failed \([0-9]*\).*/\1 \2/p' "$OUT/$1-acme.txt")
    echo "${orders:-0 unknown}"
}
# The pid of a service now (the supervisor rewrites the env file when it restarts one).
pid_of() { sed -n "s/^STACK_PID_$1='\(.*\)'/\1/p" "$WORK/stack.env"; }
# A Redis master's port and the pid of its server.
redis_master() {
    local port
    for port in $(tr ' ' '\n' <<< "$STACK_REDIS_ADDRS" | cut -d: -f2); do
        if redis-cli -p "$port" role 2>/dev/null | head -n 1 | grep -q master; then echo "$port"; return; fi
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
    # The resolver stays down past the frontends' DNS budget (half the 10 s validation timeout),
    # so that lookups fail and are seen failing.
    hold=$HOLD duration=$DURATION
    if [ "$drill" = dns ]; then hold=$((HOLD > 8 ? HOLD : 8)); duration=$((AT + hold + 8 > DURATION ? AT + hold + 8 : DURATION)); fi
    log "drill $drill: ${duration}s of ACME orders (concurrency $CONCURRENCY), the fault at ${AT}s"
    rm -f "$WORK/ocsp-$drill.txt" "$WORK/ocsp-$drill.txt.stop"
    watch_revoked "$WORK/ocsp-$drill.txt" &
    watcher=$!
    kept=$(for s in PRESIGN CRL_UPDATE_1 CRL_UPDATE_2 RESPONDER_1 RESPONDER_2 ACME_1 ACME_2; do pid_of $s; done | tr '\n' ' ')
    acme_load "$drill" "$STACK_ACME_DIRECTORY" "$duration" &
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
        dns)
            dns_pid=$(pid_of CHALLTESTSRV)
            kill -STOP "$dns_pid"
            log "the validation resolver (pid $dns_pid) stopped for ${hold}s"
            sleep "$hold"
            kill -CONT "$dns_pid"
            recovery="resolver down ${hold}s"
            ;;
        redis)
            port=$(redis_master)
            index=$(tr ' ' '\n' <<< "$STACK_REDIS_ADDRS" | grep -n ":$port$" | cut -d: -f1)
            rpid=$(pid_of "REDIS_$index")
            stopped_at=$(now)
            kill -STOP "$rpid"
            log "Redis master 127.0.0.1:$port (pid $rpid) stopped for ${HOLD}s (or until failed over)"
            others=$(tr ' ' '\n' <<< "$STACK_REDIS_ADDRS" | cut -d: -f2 | grep -v "^$port$")
            # Failed over: three masters again among the other five (a replica promoted). The
            # master stays stopped until then, for up to 15 s even if the hold is shorter: a
            # failover takes the cluster's node timeout (2 s) and an election, 3-5 s here, and
            # a loaded machine must not make the drill fail for a failover that is merely late.
            ok_at="" limit=$((HOLD > 15 ? HOLD : 15))
            deadline=$(($(date +%s) + limit))
            while [ "$(date +%s)" -lt "$deadline" ]; do
                masters=$(for p in $others; do redis-cli -p "$p" role 2>/dev/null | head -n 1; done | grep -c '^master$' || true)
                [ "$masters" = 3 ] && { ok_at=$(since "$stopped_at"); break; }
                sleep 0.1
            done
            sleep "$(python3 -c "print(max(0, $HOLD - $(since "$stopped_at")))")"
            held=$(since "$stopped_at")
            kill -CONT "$rpid"
            recovery="master :$port stopped ${held}s; its replica promoted ${ok_at:-not within $limit} s after the stop"
            [ -n "$ok_at" ] || failures=$((failures + 1))
            ;;
        postgres)
            read -r pg_version pg_cluster < <(pg_lsclusters -h | awk '$4 == "online" {print $1, $2; exit}')
            PG_STOPPED="$pg_version $pg_cluster"
            pg_ctlcluster "$pg_version" "$pg_cluster" stop -m fast
            log "PostgreSQL $pg_version/$pg_cluster stopped for ${HOLD}s"
            sleep "$HOLD"
            pg_ctlcluster "$pg_version" "$pg_cluster" start
            PG_STOPPED=
            recovery="PostgreSQL down ${HOLD}s"
            ;;
    esac
    wait "$load" || true
    touch "$WORK/ocsp-$drill.txt.stop"
    wait "$watcher" || true
    read -r ok failed <<< "$(orders_of "$drill")"
    errors=$( (grep -o '^error [^:]*' "$OUT/$drill-acme.txt" || true) | sed 's/^error //' | sort -u | tr '\n' ' ')
    good=$(grep -c ' good$' "$WORK/ocsp-$drill.txt" || true)
    ocsp_errors=$(grep -c ' error$' "$WORK/ocsp-$drill.txt" || true)
    crl_errors=$(grep -c ' crl-error$' "$WORK/ocsp-$drill.txt" || true)
    answers=$(grep -vc 'crl-error$' "$WORK/ocsp-$drill.txt" || true)
    # Recovered without a restart: a short load on the other frontend completes every order.
    acme_load "$drill-after" "$STACK_ACME2_DIRECTORY" 3
    read -r after_ok after_failed <<< "$(orders_of "$drill-after")"
    read -r received unrecorded sampled sampled_good <<< "$(verify_chains "$drill" "$drill-after")"
    read -r revoked not_revoked crl_checked crl_listed <<< "$(verify_revoked "$drill" "$drill-after")"
    now_kept=$(for s in PRESIGN CRL_UPDATE_1 CRL_UPDATE_2 RESPONDER_1 RESPONDER_2 ACME_1 ACME_2; do pid_of $s; done | tr '\n' ' ')
    verdict=pass why=""
    [ "$good" = 0 ] || why+=" 0x1003 answered good;"
    [ "$after_failed" = 0 ] && [ "$after_ok" != 0 ] || why+=" not recovered (after: ok $after_ok failed $after_failed);"
    [ "$kept" = "$now_kept" ] || why+=" a frontend, responder, pre-signer or CRL updater was restarted;"
    [ "$unrecorded" = 0 ] || why+=" $unrecorded certificates received without their record;"
    [ "$sampled" = "$sampled_good" ] || why+=" $((sampled - sampled_good)) of $sampled sampled OCSP answers not good;"
    [ "$revoked" != 0 ] || why+=" nothing was revoked;"
    [ "$not_revoked" = 0 ] || why+=" $not_revoked answers for revoked certificates not revoked;"
    [ "$crl_checked" = "$crl_listed" ] || why+=" $((crl_checked - crl_listed)) revoked certificates not in their CRL shard;"
    case $drill in
        gateway | datacenter) [ "$failed" = 0 ] || why+=" orders failed;" ;;
        dns) [ "$ocsp_errors$crl_errors" = 00 ] || why+=" OCSP/CRL errors while DNS was down;"
             # Validation fails with `dns` (the frontend's own lookup, or the remote
             # perspectives' when the frontend's was answered just before the stop); the CAA
             # recheck at finalization refuses issuance (`caa`, a lookup that failed); nothing
             # else may fail. An unexpected kind is shown with the load's example of it.
             [ "$failed" != 0 ] || why+=" no order saw the resolver down;"
             unexpected=$(tr ' ' '\n' <<< "$errors" | grep -v '^$' | grep -v '^validation/dns$\|^finalize/caa$\|^finalize/dns$' || true)
             for kind in $unexpected; do
                 why+=" orders failed otherwise than by DNS: $( (grep -F -m 1 "error $kind:" "$OUT/$drill-acme.txt" || echo "error $kind") | cut -c 1-600);"
             done ;;
        redis) [ "$ocsp_errors$crl_errors" = 00 ] || why+=" responders failed to answer;" ;;
    esac
    [ -z "$why" ] || { verdict="FAIL:$why"; failures=$((failures + 1)); }
    ROWS+=("| $drill | $ok | $failed ${errors:+($errors)} | $received, $unrecorded, $sampled_good/$sampled | $revoked, $not_revoked, $crl_listed/$crl_checked | $answers ($ocsp_errors unanswered, $crl_errors CRL) | $good | $recovery | $after_ok / $after_failed | $verdict |")
    log "drill $drill: orders ok $ok failed $failed $errors; 0x1003 asked $answers times, good $good, unanswered $ocsp_errors, CRL list errors $crl_errors; $recovery; after: ok $after_ok failed $after_failed; $verdict"
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
    echo "| drill | orders ok | orders failed | certificates received, unrecorded, sampled good at both responders | revoked (every 10th), not revoked at a responder, in their CRL shard | 0x1003 asked (unanswered, CRL list errors) | answered good | recovery | after: ok / failed | verdict |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "audit chains of gateway-east and gateway-west: $audit"
} | tee "$OUT/summary.md"
((failures == 0))
