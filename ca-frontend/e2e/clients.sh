#!/usr/bin/env bash
# End to end with ACME clients nobody here wrote: Debian's certbot and lego, and certbot ≥ 4.1
# from PyPI for ARI, obtain, renew and revoke certificates from ca-frontend, signed through the
# gateway on SoftHSM2 tokens. Every certificate is checked with `openssl verify` against the
# root made by the ceremony, and with `openssl ocsp` against the OCSP responder: `good` after
# issuance, `revoked` (with the reason) after the client revokes it; and with the CRL shard its
# CRL Distribution Point names (issue 15): the shard verifies (`openssl crl`), `openssl verify
# -crl_check` accepts the certificate, and after the client revokes it the shard lists it within
# the updater's revocation_delay (openssl: "certificate revoked"; Python cryptography with the
# reason; Go's x509.ParseRevocationList + CheckSignatureFrom).
#
# The client matrix of issue 13 and the hostile input of issue 12 run against the same stack:
#   - more ACME clients from Debian (dehydrated, uacme, acme-tiny; acme-clients.sh), http-01;
#   - OCSP as openssl, Python cryptography and Go's x/crypto/ocsp see it (ocsp-matrix.sh), with
#     the default config and with both CertID hashes configured (a second responder);
#   - gRPC health and reflection v1/v1alpha with Python's grpcio clients (grpc_check.py);
#   - slow and idle connections against the OCSP and ACME listeners (slow_connections.py);
#   - forgery attempts, internal names, an oversized refused batch (hostile.py).
#
# Everything runs on 127.0.0.1 in a temporary directory: the stack kit (`hsmgate-stack up --dir
# --ports ephemeral`, bench/stack/stack.sh) starts the dev stack there on ephemeral ports, so it
# runs beside hsm-config/dev/run.sh: gateway, OCSP responder, ACME frontend, challenge DNS
# (pebble-challtestsrv: every name is 127.0.0.1), the http-01 and tls-alpn-01 ports the clients
# listen on, three remote validation perspectives (every challenge and CAA check corroborated,
# issue 17); the addresses are in $WORK/stack.env. A second OCSP responder with both CertID
# hashes gets a config derived from the stack's (`hsmgate-stack config`).
#
# Usage: ca-frontend/e2e/clients.sh   (BIN=target/release to use release binaries;
#        E2E_KEEP_GOING=1 to run every check and list the failures at the end)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/debug}
WORK=$(mktemp -d /tmp/hsmgate-acme-e2e.XXXXXX)
# The slow-connection checks open 2,050 connections to each listener: the processes started
# here inherit a file limit above that (CI shells often start at 1,024).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
started=$(date +%s)

pids=()
cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    stack_down 2>/dev/null || true
    wait 2>/dev/null || true
    if [ $rc -ne 0 ] || [ ${#failed[@]} -gt 0 ]; then
        echo "--- FAILED; logs in $WORK:" >&2
        for f in "$WORK"/*.log; do echo "=== $f" >&2; tail -n 30 "$f" >&2; done
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
log() { echo "[e2e $(($(date +%s) - started))s] $*"; }
# die: the stack cannot go on. fail: a check failed; with E2E_KEEP_GOING=1 it is listed at the
# end and the remaining checks still run.
failed=()
die() { echo "FAIL: $*" >&2; exit 1; }
fail() {
    echo "FAIL: $*" >&2
    [ "${E2E_KEEP_GOING:-0}" = 1 ] || exit 1
    failed+=("$*")
}

for tool in certbot lego dehydrated uacme acme-tiny go pebble-challtestsrv openssl curl python3; do
    command -v $tool >/dev/null || die "$tool is missing (hsm-config/dev/setup.sh installs it)"
done
for module in cryptography grpc grpc_health grpc_reflection grpc_tools; do
    python3 -c "import $module" 2>/dev/null || die "python3 module $module is missing (hsm-config/dev/setup.sh installs it)"
done
. ca-frontend/e2e/ocsp-matrix.sh
. ca-frontend/e2e/acme-clients.sh

# --- the whole stack, started by the stack kit (bench/stack) ----------------------------------
# The gateway on two SoftHSM2 tokens over mTLS, the CA made through it by the `ceremony`
# identity, the OCSP responder, pre-signer and CRL updater, pebble-challtestsrv as the
# validation DNS, three remote perspectives and the frontend: the dev stack's configs moved into
# $WORK, on ephemeral ports. Short connection timeouts, so that the slow-connection check below
# sees them act in seconds; a revocation in its CRL shard within CRL_DELAY seconds (60 in the
# dev config; the BR allow 24 h).
SLOW_TIMEOUT=3 CRL_DELAY=3
. bench/stack/stack.sh
RUST_LOG=info stack_up "$WORK" \
    --set "ocsp.responder.connections.header_read_timeout_secs=$SLOW_TIMEOUT" \
    --set "ocsp.responder.connections.idle_timeout_secs=$SLOW_TIMEOUT" \
    --set "ocsp.issuers.0.crl.revocation_delay_secs=$CRL_DELAY" \
    --set "acme.server.connections.header_read_timeout_secs=$SLOW_TIMEOUT" \
    --set "acme.server.connections.idle_timeout_secs=$SLOW_TIMEOUT" \
    || die "the stack did not start"
export SOFTHSM2_CONF=$STACK_SOFTHSM2_CONF
GW=$STACK_GATEWAY_ADDR OCSP_URL=$STACK_OCSP_URL DIR=$STACK_ACME_DIRECTORY MGMT=$STACK_DNS_MANAGEMENT
HTTP=$STACK_HTTP01_PORT TLS=$STACK_TLSALPN01_PORT
tls() { echo "HSMGATE_TLS_CA=$WORK/tls/ca.pem HSMGATE_TLS_CERT=$WORK/tls/$1.pem HSMGATE_TLS_KEY=$WORK/tls/$1.key"; }
openssl verify -CAfile "$WORK/root.pem" "$WORK/issuer.pem" > /dev/null || die "intermediate does not chain to the root"
log "stack up (hsmgate-stack, $WORK/stack.env): gateway $GW, root and intermediate made through it, ca-frontend $DIR, OCSP $OCSP_URL"

# --- slow and idle connections (issue 12 item 3), in the background while the clients run -------
# 2,000 connections that never send a byte and 50 that send half a header, on the OCSP and the
# ACME port: 50 ordinary GETs (a new connection each) must answer with p99 < 1 s meanwhile, and
# every slow connection must be closed by the server soon after the header-read timeout.
openssl ocsp -issuer "$WORK/issuer.pem" -serial 0x1001 -no_nonce -reqout "$WORK/slow-req.der" 2>/dev/null
OCSP_GET_PATH=/$(python3 -c 'import base64,sys,urllib.parse; print(urllib.parse.quote(base64.b64encode(open(sys.argv[1],"rb").read()).decode(), safe=""))' "$WORK/slow-req.der")
slow_check() { # NAME TARGET PATH
    python3 ca-frontend/e2e/slow_connections.py --target "$2" --path "$3" --idle 2000 --half 50 \
        --requests 50 --p99-limit 1.0 --expect-closed-after $((SLOW_TIMEOUT + 5)) > "$WORK/slow-$1.log" 2>&1
}
slow_check ocsp "$STACK_OCSP_ADDR" "$OCSP_GET_PATH" & slow_ocsp=$!
slow_check acme "$STACK_ACME_ADDR" /directory & slow_acme=$!

# --- checks ------------------------------------------------------------------------------------
# check_cert FILE: chains to the root; OCSP says good.
check_good() {
    local cert=$1
    openssl verify -CAfile "$WORK/root.pem" -untrusted "$WORK/issuer.pem" "$cert" > /dev/null \
        || fail "$cert does not verify against the root"
    local out
    out=$(openssl ocsp -issuer "$WORK/issuer.pem" -CAfile "$WORK/root.pem" -cert "$cert" \
        -url "$OCSP_URL" -no_nonce 2>&1) || fail "openssl ocsp: $out"
    grep -q ": good" <<< "$out" || fail "OCSP for $cert is not good: $out"
    grep -q "Response verify OK" <<< "$out" || fail "OCSP response for $cert does not verify: $out"
}
# check_revoked FILE REASON: OCSP says revoked with REASON (within the responder's 5 s cache).
check_revoked() {
    local cert=$1 reason=$2 out=""
    for _ in $(seq 1 40); do
        out=$(openssl ocsp -issuer "$WORK/issuer.pem" -CAfile "$WORK/root.pem" -cert "$cert" \
            -url "$OCSP_URL" -no_nonce 2>&1) || true
        grep -q ": revoked" <<< "$out" && break
        sleep 0.25
    done
    grep -q ": revoked" <<< "$out" || fail "OCSP for $cert is not revoked: $out"
    grep -q "Reason: $reason" <<< "$out" || fail "OCSP for $cert: reason is not $reason: $out"
    grep -q "Response verify OK" <<< "$out" || fail "OCSP response does not verify: $out"
}
serial() { openssl x509 -noout -serial -in "$1" | cut -d= -f2; }
# --- CRLs (issue 15): the shard a certificate names, checked by openssl, Python and Go ----------
CRLCHECK=$WORK/crlcheck
(cd "$ROOT/ocsp/tests/clients/crlcheck" && GOPATH=/usr/share/gocode GO111MODULE=off go build -o "$CRLCHECK" .) \
    > "$WORK/go-build-crl.log" 2>&1 || die "go build crlcheck: $(cat "$WORK/go-build-crl.log")"
crl_url_of() { openssl x509 -noout -ext crlDistributionPoints -in "$1" | sed -n 's/^ *URI://p' | head -n 1; }
# fetch_crl CERT: downloads the shard its CRL Distribution Point names to $crl (DER) and
# $crl.pem; the shard must verify against the issuer (openssl crl).
fetch_crl() {
    local url
    url=$(crl_url_of "$1")
    [ -n "$url" ] || { fail "$1 names no CRL Distribution Point"; return 1; }
    crl=$WORK/crl-$(serial "$1")-$((++crl_fetches)).der
    # The updater signs every shard when it starts: give it a few seconds the first time.
    for _ in $(seq 1 50); do curl -sf -o "$crl" "$url" && break; sleep 0.2; done
    [ -s "$crl" ] || { fail "CRL shard $url is not served"; return 1; }
    openssl crl -inform DER -in "$crl" -out "$crl.pem" || { fail "$url is not a DER CRL"; return 1; }
    openssl crl -in "$crl.pem" -CAfile "$WORK/ca-chain.pem" -noout 2>&1 | grep -q "verify OK" \
        || { fail "CRL shard $url does not verify against the issuer"; return 1; }
}
crl_fetches=0
# check_crl_good CERT: its shard verifies and `openssl verify -crl_check` accepts the certificate.
check_crl_good() {
    fetch_crl "$1" || return 0
    openssl verify -crl_check -CRLfile "$crl.pem" -CAfile "$WORK/root.pem" -untrusted "$WORK/issuer.pem" \
        "$1" > "$WORK/crl-verify.log" 2>&1 || fail "openssl verify -crl_check refuses $1: $(cat "$WORK/crl-verify.log")"
}
# check_crl_revoked CERT REASON: within CRL_DELAY (+ a margin for the signing) the shard lists the
# serial: openssl verify -crl_check says "certificate revoked"; Python cryptography finds it with
# REASON; Go's x509.ParseRevocationList + CheckSignatureFrom lists it.
check_crl_revoked() {
    local cert=$1 reason=$2 started_at out=""
    started_at=$(date +%s.%N)
    for _ in $(seq 1 $((CRL_DELAY * 4 + 40))); do
        fetch_crl "$cert" || return 0
        out=$(openssl verify -crl_check -CRLfile "$crl.pem" -CAfile "$WORK/root.pem" \
            -untrusted "$WORK/issuer.pem" "$cert" 2>&1) || true
        grep -q "certificate revoked" <<< "$out" && break
        sleep 0.25
    done
    grep -q "certificate revoked" <<< "$out" || { fail "CRL for $cert does not list it: $out"; return 0; }
    crl_lag=$(python3 -c "import time; print(f'{time.time() - $started_at:.1f}')")
    out=$(python3 ocsp/tests/clients/crl_check.py "$crl" "$WORK/issuer.pem" "$(crl_url_of "$cert")" 1 \
        "$(serial "$cert"):*:$reason" 2>&1) || fail "Python cryptography on the CRL of $cert: $out"
    out=$("$CRLCHECK" "$crl" "$WORK/issuer.pem" "$(serial "$cert")" 2>&1) || fail "Go crlcheck on the CRL of $cert: $out"
}

# --- certbot (Debian, 2.x) ---------------------------------------------------------------------
mkdir -p "$WORK/hooks"
cat > "$WORK/hooks/certbot-auth.sh" <<HOOK
#!/bin/sh
curl -sf -X POST -d "{\"host\":\"_acme-challenge.\$CERTBOT_DOMAIN.\",\"value\":\"\$CERTBOT_VALIDATION\"}" $MGMT/set-txt
HOOK
cat > "$WORK/hooks/certbot-cleanup.sh" <<HOOK
#!/bin/sh
curl -sf -X POST -d "{\"host\":\"_acme-challenge.\$CERTBOT_DOMAIN.\"}" $MGMT/clear-txt
HOOK
cat > "$WORK/hooks/lego-exec.sh" <<HOOK
#!/bin/sh
# lego's exec DNS provider: \$1 = present|cleanup, \$2 = FQDN, \$3 = record value.
case "\$1" in
  present) curl -sf -X POST -d "{\"host\":\"\$2\",\"value\":\"\$3\"}" $MGMT/set-txt ;;
  cleanup) curl -sf -X POST -d "{\"host\":\"\$2\"}" $MGMT/clear-txt ;;
esac
HOOK
chmod +x "$WORK"/hooks/*.sh

certbot_run() { # certbot_run BINARY DIR ARGS...
    local bin=$1 dir=$2; shift 2
    "$bin" --server "$DIR" --config-dir "$dir/config" --work-dir "$dir/work" --logs-dir "$dir/logs" \
        --non-interactive --agree-tos --register-unsafely-without-email "$@" >> "$WORK/certbot.log" 2>&1 \
        || fail "certbot $*: $(tail -n 20 "$WORK/certbot.log")"
}
CB=$WORK/certbot
certbot_run certbot "$CB" certonly --standalone --http-01-port $HTTP --http-01-address 127.0.0.1 \
    -d cb-http.example.test -d www.cb-http.example.test --cert-name cb-http
check_good "$CB/config/live/cb-http/cert.pem"
first=$(serial "$CB/config/live/cb-http/cert.pem")
log "certbot http-01: issued $first, verifies, OCSP good"
check_crl_good "$CB/config/live/cb-http/cert.pem"
log "certbot http-01: names CRL shard $(crl_url_of "$CB/config/live/cb-http/cert.pem"), which verifies (openssl crl) and does not list it (openssl verify -crl_check OK)"

certbot_run certbot "$CB" renew --cert-name cb-http --force-renewal --no-random-sleep-on-renew
second=$(serial "$CB/config/live/cb-http/cert.pem")
[ "$first" != "$second" ] || fail "certbot renew did not replace the certificate"
check_good "$CB/config/live/cb-http/cert.pem"
log "certbot renew: $first -> $second"

certbot_run certbot "$CB" certonly --manual --preferred-challenges dns \
    --manual-auth-hook "$WORK/hooks/certbot-auth.sh" --manual-cleanup-hook "$WORK/hooks/certbot-cleanup.sh" \
    -d cb-dns.example.test --cert-name cb-dns
check_good "$CB/config/live/cb-dns/cert.pem"
log "certbot dns-01 (manual hooks): issued, OCSP good"

certbot_run certbot "$CB" revoke --cert-name cb-http --reason keycompromise --no-delete-after-revoke
check_revoked "$CB/config/live/cb-http/cert.pem" keyCompromise
log "certbot revoke: OCSP revoked (keyCompromise)"
check_crl_revoked "$CB/config/live/cb-http/cert.pem" key_compromise
log "certbot revoke: listed in its CRL shard ${crl_lag}s after OCSP said revoked (revocation_delay_secs = $CRL_DELAY): openssl verify -crl_check 'certificate revoked', Python cryptography (key_compromise), Go ParseRevocationList + CheckSignatureFrom"

# --- OCSP clients, default config (issue 13) ---------------------------------------------------
build_ocspcheck
ocsp_matrix "$OCSP_URL" "$CB/config/live/cb-dns/cert.pem" "$CB/config/live/cb-http/cert.pem" sha1
log "OCSP, default config: $OCSP_PASSED checks passed (openssl GET/POST, Python cryptography, Go ParseResponse/ParseResponseForCert; SHA-1 CertIDs; good and revoked)"

# --- lego (Debian, 4.9) ------------------------------------------------------------------------
LEGO_DIR=$WORK/lego
lego_run() {
    lego --server "$DIR" --accept-tos --email lego@example.test --path "$LEGO_DIR" "$@" >> "$WORK/lego.log" 2>&1 \
        || fail "lego $*: $(tail -n 20 "$WORK/lego.log")"
}
lego_run --http --http.port "127.0.0.1:$HTTP" -d lego-http.example.test run
check_good "$LEGO_DIR/certificates/lego-http.example.test.crt"
first=$(serial "$LEGO_DIR/certificates/lego-http.example.test.crt")
log "lego http-01: issued, OCSP good"

lego_run --tls --tls.port "127.0.0.1:$TLS" -d lego-tls.example.test run
check_good "$LEGO_DIR/certificates/lego-tls.example.test.crt"
log "lego tls-alpn-01: issued, OCSP good"

EXEC_PATH=$WORK/hooks/lego-exec.sh EXEC_POLLING_INTERVAL=1 EXEC_PROPAGATION_TIMEOUT=20 EXEC_SEQUENCE_INTERVAL=1 \
    lego_run --dns exec --dns.resolvers "$STACK_DNS_ADDR" --dns.disable-cp \
    -d '*.lego-wild.example.test' -d lego-wild.example.test run
check_good "$LEGO_DIR/certificates/_.lego-wild.example.test.crt"
openssl x509 -noout -ext subjectAltName -in "$LEGO_DIR/certificates/_.lego-wild.example.test.crt" \
    | grep -q '\*.lego-wild.example.test' || fail "the wildcard is not in the certificate"
log "lego dns-01 wildcard: issued, OCSP good"

lego_run --http --http.port "127.0.0.1:$HTTP" -d lego-http.example.test renew --days 1000 --no-random-sleep
second=$(serial "$LEGO_DIR/certificates/lego-http.example.test.crt")
[ "$first" != "$second" ] || fail "lego renew did not replace the certificate"
check_good "$LEGO_DIR/certificates/lego-http.example.test.crt"
log "lego renew: $first -> $second"

check_crl_good "$LEGO_DIR/certificates/lego-http.example.test.crt"
lego_run -d lego-http.example.test revoke --reason 4 --keep
check_revoked "$LEGO_DIR/certificates/lego-http.example.test.crt" superseded
log "lego revoke: OCSP revoked (superseded)"
check_crl_revoked "$LEGO_DIR/certificates/lego-http.example.test.crt" superseded
log "lego revoke: listed in its CRL shard $(crl_url_of "$LEGO_DIR/certificates/lego-http.example.test.crt") (superseded) ${crl_lag}s after OCSP; openssl, Python and Go agree"

# --- dehydrated, uacme, acme-tiny (Debian), http-01 from a webroot (issue 13) -------------------
acme_webroot_start
acme_dehydrated
acme_uacme
acme_tiny
acme_webroot_stop

# --- ARI with certbot ≥ 4.1 from PyPI ----------------------------------------------------------
VENV=$ROOT/target/e2e-certbot-venv
if ! "$VENV/bin/certbot" --version 2>/dev/null | grep -qE 'certbot ([5-9]|4\.[1-9])'; then
    log "installing certbot >= 4.1 from PyPI into $VENV"
    python3 -m venv "$VENV" > /dev/null
    "$VENV/bin/pip" install --quiet 'certbot>=4.1' > "$WORK/pip.log" 2>&1 || fail "pip install certbot: $(tail "$WORK/pip.log")"
fi
CB4=$WORK/certbot4
for name in ari ari-keep; do
    certbot_run "$VENV/bin/certbot" "$CB4" certonly --standalone --http-01-port $HTTP --http-01-address 127.0.0.1 \
        -d $name.example.test --cert-name $name
done
first=$(serial "$CB4/config/live/ari/cert.pem")
keep=$(serial "$CB4/config/live/ari-keep/cert.pem")
# An incident names `ari`: its renewalInfo window moves into the past. One `certbot renew`
# (which asks ARI about each certificate) must replace `ari` and leave `ari-keep`, whose window
# is two months away, alone.
echo "$first" > "$WORK/incident.txt"
"$BIN/ca-frontend" mark-renewal --config "$WORK/acme.toml" "$WORK/incident.txt" > /dev/null
certbot_run "$VENV/bin/certbot" "$CB4" renew --no-random-sleep-on-renew
second=$(serial "$CB4/config/live/ari/cert.pem")
[ "$second" != "$first" ] || fail "certbot $("$VENV/bin/certbot" --version 2>&1) did not renew after ARI said renew now"
[ "$(serial "$CB4/config/live/ari-keep/cert.pem")" = "$keep" ] || fail "certbot renewed a certificate ARI did not ask to renew"
check_good "$CB4/config/live/ari/cert.pem"
log "certbot $("$VENV/bin/certbot" --version 2>&1 | cut -d' ' -f2) ARI: renewed the certificate named in an incident at once ($first -> $second), left the other alone"

# --- OCSP clients with both CertID hashes configured (issue 13) --------------------------------
# A second store and responder whose pre-signer serves SHA-1 and SHA-256 CertIDs; the good and
# the revoked certificate from certbot are published into it through the gateway.
"$BIN/hsmgate-stack" config ocsp "$WORK/ocsp.toml" "$WORK/ocsp-both.toml" \
    --set "ocsp.store.path=$WORK/ocsp-both.sqlite" --set ocsp.responder.listen=127.0.0.1:0 \
    --set ocsp.responder.metrics_listen=127.0.0.1:0 --set 'ocsp.presigner.cert_id_hashes=["sha1", "sha256"]' \
    2> "$WORK/ocsp-both-config.log" || die "ocsp-both.toml: $(cat "$WORK/ocsp-both-config.log")"
good_cert=$CB/config/live/cb-dns/cert.pem revoked_cert=$CB/config/live/cb-http/cert.pem
env $(tls ocsp-presigner) "$BIN/hsmgate-ocsp" publish --config "$WORK/ocsp-both.toml" --issuer dev-ca \
    --serial "$(serial "$good_cert")" --good > "$WORK/publish.log" 2>&1 || die "publish: $(cat "$WORK/publish.log")"
env $(tls ocsp-presigner) "$BIN/hsmgate-ocsp" publish --config "$WORK/ocsp-both.toml" --issuer dev-ca \
    --serial "$(serial "$revoked_cert")" --revoked --reason 1 >> "$WORK/publish.log" 2>&1 || die "publish: $(cat "$WORK/publish.log")"
spawn_ready ocsp-both "$WORK" "$BIN/hsmgate-ocsp" serve --config "$WORK/ocsp-both.toml" \
    || die "the second OCSP responder did not start"
pids+=("$LAST_PID")
OCSP2=$(ready_field "$READY_LINE" http)
ocsp_matrix "http://$OCSP2" "$good_cert" "$revoked_cert" sha1 sha256
log "OCSP, cert_id_hashes = [sha1, sha256]: $OCSP_PASSED checks passed (SHA-1 and SHA-256 CertIDs)"

# --- gRPC health and reflection with Python's clients (issue 13) -------------------------------
if out=$(python3 ca-frontend/e2e/grpc_check.py "$GW" "$WORK/tls/ca.pem" "$WORK/tls/ca-frontend.pem" \
    "$WORK/tls/ca-frontend.key" 2>&1); then
    log "gRPC: grpcio-health-checking SERVING; grpcio-reflection v1alpha and v1 list hsmgate.signer.v1.Signer"
else
    fail "gRPC health/reflection: $out"
fi

# --- hostile input (issue 12) -----------------------------------------------------------------
if python3 ca-frontend/e2e/hostile.py --work "$WORK" --gateway "$GW" --acme "$DIR" \
    --ocsp "$STACK_OCSP_ADDR" --ocsp-path "$OCSP_GET_PATH" > "$WORK/hostile.log" 2>&1; then
    log "hostile input: $(tail -n 1 "$WORK/hostile.log")"
else
    fail "hostile input: $(grep '^FAIL' "$WORK/hostile.log")"
fi

# --- the slow connections started at the beginning ---------------------------------------------
for name in ocsp acme; do
    pid=$slow_ocsp; [ $name = acme ] && pid=$slow_acme
    if wait "$pid"; then log "slow connections, $name: $(head -n 1 "$WORK/slow-$name.log")"
    else fail "slow connections, $name: $(tr '\n' ' ' < "$WORK/slow-$name.log")"; fi
done

# --- every signature has its audit record ------------------------------------------------------
"$BIN/signer" audit verify "$WORK/audit" > "$WORK/audit-verify.log" 2>&1 || fail "audit chain: $(cat "$WORK/audit-verify.log")"
if [ ${#failed[@]} -gt 0 ]; then
    echo "${#failed[@]} check(s) failed:" >&2
    printf '  - %s\n' "${failed[@]}" >&2
    exit 1
fi
# --- remote perspectives (issue 17): the validations and CAA checks above were corroborated ------
metrics=$(curl -s "http://$STACK_ACME_METRICS/metrics")
summary=""
for check in http-01 dns-01 tls-alpn-01 caa; do
    met=$(echo "$metrics" | sed -n "s/^hsmgate_acme_corroborations_total{check=\"$check\",outcome=\"met\"} //p")
    [ "${met:-0}" -gt 0 ] || fail "no $check check corroborated by the three perspectives"
    summary="$summary $check=${met:-0}"
done
unreachable=$(echo "$metrics" | grep -E '^hsmgate_acme_perspective_answers_total.*outcome="unreachable"' || true)
[ -z "$unreachable" ] || fail "a perspective could not be reached: $unreachable"
log "perspectives dev-a, dev-b, dev-c corroborated the checks (quorum met:$summary)"

log "audit chain verifies; all client checks passed"
