# Sourced by clients.sh: three more ACME clients from Debian's packages, each obtaining a
# certificate by http-01 (files in a webroot served on the http-01 port) that must chain to the
# root and be `good` in OCSP: dehydrated (bash + curl + openssl), uacme (C, libcurl) and
# acme-tiny (Python, 200 lines). Uses WORK, DIR, HTTP, fail, log and check_good from clients.sh.

acme_webroot_start() {
    WEBROOT=$WORK/webroot
    mkdir -p "$WEBROOT/.well-known/acme-challenge"
    python3 -m http.server "$HTTP" --bind 127.0.0.1 --directory "$WEBROOT" > "$WORK/webroot.log" 2>&1 &
    WEBROOT_PID=$!
    pids+=("$WEBROOT_PID")
    for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$HTTP/" && return; sleep 0.1; done
    fail "the http-01 webroot server did not start"
}
acme_webroot_stop() { kill "$WEBROOT_PID" 2>/dev/null || true; wait "$WEBROOT_PID" 2>/dev/null || true; }

acme_dehydrated() {
    local dir=$WORK/dehydrated name=dehydrated.example.test
    mkdir -p "$dir"
    cat > "$dir/config" <<CONF
CA="$DIR"
CHALLENGETYPE="http-01"
WELLKNOWN="$WEBROOT/.well-known/acme-challenge"
BASEDIR="$dir"
KEY_ALGO=prime256v1
CONF
    { dehydrated -f "$dir/config" --register --accept-terms \
        && dehydrated -f "$dir/config" --cron --domain "$name"; } >> "$WORK/dehydrated.log" 2>&1 \
        || { fail "dehydrated: $(tail -n 15 "$WORK/dehydrated.log")"; return; }
    check_good "$dir/certs/$name/cert.pem"
    log "dehydrated $(dehydrated --version 2>/dev/null | sed -n 's/^Dehydrated version: //p') http-01: issued, verifies, OCSP good"
}

acme_uacme() {
    local dir=$WORK/uacme name=uacme.example.test
    mkdir -p "$dir"
    # uacme's hook: METHOD TYPE IDENT TOKEN KEY_AUTH; accept http-01 only (non-zero declines).
    cat > "$dir/hook.sh" <<HOOK
#!/bin/sh
[ "\$2" = http-01 ] || exit 1
case "\$1" in
  begin) printf '%s' "\$5" > "$WEBROOT/.well-known/acme-challenge/\$4" ;;
  *) rm -f "$WEBROOT/.well-known/acme-challenge/\$4" ;;
esac
HOOK
    chmod +x "$dir/hook.sh"
    { uacme -vv -a "$DIR" -c "$dir" -y new \
        && uacme -vv -a "$DIR" -c "$dir" -h "$dir/hook.sh" issue "$name"; } >> "$WORK/uacme.log" 2>&1 \
        || { fail "uacme: $(tail -n 15 "$WORK/uacme.log")"; return; }
    check_good "$dir/$name/cert.pem"
    log "uacme $(uacme -V 2>&1 | head -n1 | awk '{print $2}') http-01: issued, verifies, OCSP good"
}

acme_tiny() {
    local dir=$WORK/acme-tiny name=acme-tiny.example.test
    mkdir -p "$dir"
    openssl genrsa -out "$dir/account.key" 2048 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/domain.key" \
        -subj "/CN=$name" -addext "subjectAltName=DNS:$name" -out "$dir/domain.csr" 2>/dev/null
    acme-tiny --account-key "$dir/account.key" --csr "$dir/domain.csr" \
        --acme-dir "$WEBROOT/.well-known/acme-challenge" --directory-url "$DIR" --disable-check \
        > "$dir/chain.pem" 2>> "$WORK/acme-tiny.log" \
        || { fail "acme-tiny: $(tail -n 15 "$WORK/acme-tiny.log")"; return; }
    openssl x509 -in "$dir/chain.pem" -out "$dir/cert.pem"
    check_good "$dir/cert.pem"
    log "acme-tiny http-01: issued, verifies, OCSP good"
}
