// crlcheck verifies a DER CRL shard with Go's crypto/x509, independently of hsmgate:
// x509.ParseRevocationList, CheckSignatureFrom the issuer, and the listed serials.
// Debian bookworm's Go is 1.19: RevokedCertificates (RevokedCertificateEntries came in 1.21).
//
// Usage: crlcheck CRL.der ISSUER.pem SERIAL_HEX...   (each serial must be listed)
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "crlcheck: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: crlcheck CRL.der ISSUER.pem SERIAL_HEX...")
	}
	der, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		fail("ParseRevocationList: %v", err)
	}
	pemBytes, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		fail("no PEM in %s", os.Args[2])
	}
	issuer, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fail("issuer: %v", err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		fail("CheckSignatureFrom: %v", err)
	}
	if !crl.NextUpdate.After(crl.ThisUpdate) {
		fail("nextUpdate %v not after thisUpdate %v", crl.NextUpdate, crl.ThisUpdate)
	}
	listed := map[string]bool{}
	for _, r := range crl.RevokedCertificates {
		listed[r.SerialNumber.String()] = true
	}
	for _, hex := range os.Args[3:] {
		n, ok := new(big.Int).SetString(hex, 16)
		if !ok {
			fail("bad serial %s", hex)
		}
		if !listed[n.String()] {
			fail("serial %s not listed", hex)
		}
	}
	fmt.Printf("go crypto/x509 OK: %d entries, number %v\n", len(crl.RevokedCertificates), crl.Number)
}
