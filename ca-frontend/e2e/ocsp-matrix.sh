# Sourced by clients.sh: OCSP clients nobody here wrote, each asked about a good and a revoked
# certificate, by GET and POST, for each CertID hash given, and each asserting what it reports:
#   - openssl ocsp (POST with -url; GET by fetching the RFC 6960 A.1 URL with curl and handing
#     the response to `openssl ocsp -respin`, which checks it against the request's CertID)
#   - Python cryptography: load_der_ocsp_response(...).certificate_status (ocsp_check.py)
#   - Go golang.org/x/crypto/ocsp: ParseResponse and ParseResponseForCert (ocspcheck/)
# Uses WORK, ROOT, fail and log from clients.sh.

# build_ocspcheck: the Go program, offline, against Debian's golang-golang-x-crypto-dev.
build_ocspcheck() {
    OCSPCHECK=$ROOT/target/e2e-ocspcheck
    (cd "$ROOT/ca-frontend/e2e/ocspcheck" && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS=-mod=mod \
        go build -o "$OCSPCHECK" .) > "$WORK/go-build.log" 2>&1 || fail "go build ocspcheck: $(cat "$WORK/go-build.log")"
}

# ocsp_one URL HASH METHOD WANT CERT: one certificate through every client; each failure named.
ocsp_one() {
    local url=$1 hash=$2 method=$3 want=$4 cert=$5 out der
    local what="$(basename "$(dirname "$cert")")/$(basename "$cert") $hash $method"
    if [ "$method" = post ]; then
        out=$(openssl ocsp -"$hash" -issuer "$WORK/issuer.pem" -CAfile "$WORK/root.pem" -cert "$cert" \
            -url "$url" -no_nonce 2>&1) || true
    else
        openssl ocsp -"$hash" -issuer "$WORK/issuer.pem" -cert "$cert" -no_nonce -reqout "$WORK/req.der" 2>/dev/null
        der=$(python3 -c 'import base64,sys,urllib.parse; print(urllib.parse.quote(base64.b64encode(open(sys.argv[1],"rb").read()).decode(), safe=""))' "$WORK/req.der")
        curl -sf -o "$WORK/resp.der" "$url/$der" || true
        out=$(openssl ocsp -"$hash" -respin "$WORK/resp.der" -issuer "$WORK/issuer.pem" -CAfile "$WORK/root.pem" \
            -cert "$cert" 2>&1) || true
    fi
    if grep -q ": $want" <<< "$out" && grep -q "Response verify OK" <<< "$out"; then
        OCSP_PASSED=$((OCSP_PASSED + 1))
    else
        fail "openssl ocsp $what: not $want: $(tr '\n' ' ' <<< "$out")"
    fi
    if out=$(python3 "$ROOT/ca-frontend/e2e/ocsp_check.py" "$url" "$cert" "$WORK/issuer.pem" "$hash" "$method" "$want" 2>&1); then
        OCSP_PASSED=$((OCSP_PASSED + 1))
    else
        fail "python cryptography $what: $(tr '\n' ' ' <<< "$out")"
    fi
    if out=$("$OCSPCHECK" -url "$url" -cert "$cert" -issuer "$WORK/issuer.pem" -hash "$hash" -method "$method" -want "$want" 2>&1); then
        OCSP_PASSED=$((OCSP_PASSED + 1))
    else
        fail "go x/crypto/ocsp $what: $(tr '\n' ' ' <<< "$out")"
    fi
}

# ocsp_matrix URL GOOD_CERT REVOKED_CERT HASH...
ocsp_matrix() {
    local url=$1 good=$2 revoked=$3 hash method; shift 3
    OCSP_PASSED=0
    for hash in "$@"; do
        for method in get post; do
            ocsp_one "$url" "$hash" "$method" good "$good"
            ocsp_one "$url" "$hash" "$method" revoked "$revoked"
        done
    done
}
