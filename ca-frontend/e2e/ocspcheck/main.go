// ocspcheck asks an OCSP responder about one certificate with Go's golang.org/x/crypto/ocsp
// (the package lego's OCSP helpers and most Go tools use) and prints what both of its parsers
// report: ocsp.ParseResponse (which insists on exactly one SingleResponse) and
// ocsp.ParseResponseForCert (which picks the one for the certificate). Exits 1 unless both
// report the status given by -want.
//
// Built offline from Debian's golang-golang-x-crypto-dev by ca-frontend/e2e/clients.sh:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o ocspcheck .
package main

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"golang.org/x/crypto/ocsp"
)

func readCert(path string) *x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		fail("%s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fail("%s: %v", path, err)
	}
	return cert
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "ocspcheck: "+format+"\n", args...)
	os.Exit(1)
}

var statuses = map[int]string{ocsp.Good: "good", ocsp.Revoked: "revoked", ocsp.Unknown: "unknown"}

func main() {
	certPath := flag.String("cert", "", "certificate (PEM)")
	issuerPath := flag.String("issuer", "", "issuer certificate (PEM)")
	responder := flag.String("url", "", "responder URL")
	hashName := flag.String("hash", "sha1", "CertID hash: sha1 or sha256")
	method := flag.String("method", "post", "get or post")
	want := flag.String("want", "good", "expected status: good or revoked")
	flag.Parse()

	cert, issuer := readCert(*certPath), readCert(*issuerPath)
	hash := crypto.SHA1
	if *hashName == "sha256" {
		hash = crypto.SHA256
	}
	req, err := ocsp.CreateRequest(cert, issuer, &ocsp.RequestOptions{Hash: hash})
	if err != nil {
		fail("CreateRequest: %v", err)
	}
	var resp *http.Response
	if *method == "get" {
		// RFC 6960 appendix A.1: GET {url}/{url-encoding of base-64 encoding of the DER request}
		path := url.PathEscape(base64.StdEncoding.EncodeToString(req))
		resp, err = http.Get(strings.TrimSuffix(*responder, "/") + "/" + path)
	} else {
		resp, err = http.Post(*responder, "application/ocsp-request", bytes.NewReader(req))
	}
	if err != nil {
		fail("%s: %v", *method, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		fail("%s: HTTP %d %v", *method, resp.StatusCode, err)
	}

	ok := true
	parsed, err := ocsp.ParseResponse(body, issuer)
	if err != nil {
		fmt.Printf("ParseResponse: error: %v\n", err)
		ok = false
	} else {
		fmt.Printf("ParseResponse: %s serial %x\n", statuses[parsed.Status], parsed.SerialNumber)
		ok = ok && statuses[parsed.Status] == *want && parsed.SerialNumber.Cmp(cert.SerialNumber) == 0
	}
	forCert, err := ocsp.ParseResponseForCert(body, cert, issuer)
	if err != nil {
		fmt.Printf("ParseResponseForCert: error: %v\n", err)
		ok = false
	} else {
		fmt.Printf("ParseResponseForCert: %s serial %x\n", statuses[forCert.Status], forCert.SerialNumber)
		ok = ok && statuses[forCert.Status] == *want && forCert.SerialNumber.Cmp(cert.SerialNumber) == 0
	}
	if !ok {
		os.Exit(1)
	}
}
