#!/usr/bin/env python3
"""Asks an OCSP responder about one certificate with Python `cryptography` (the library certbot
and most Python code use) and checks what its simple API reports:
`load_der_ocsp_response(...).certificate_status` (which raises unless the response holds exactly
one SingleResponse) and the serial number.

Usage: ocsp_check.py URL CERT ISSUER sha1|sha256 get|post good|revoked
"""

import base64
import sys
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp


def main():
    url, cert_path, issuer_path, hash_name, method, want = sys.argv[1:7]
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    issuer = x509.load_pem_x509_certificate(open(issuer_path, "rb").read())
    algorithm = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}[hash_name]
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    der = request.public_bytes(serialization.Encoding.DER)
    if method == "get":
        path = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
        req = urllib.request.Request(url.rstrip("/") + "/" + path)
    else:
        req = urllib.request.Request(url, data=der, headers={"Content-Type": "application/ocsp-request"})
    body = urllib.request.urlopen(req, timeout=10).read()
    response = ocsp.load_der_ocsp_response(body)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        print(f"cryptography: response status {response.response_status}")
        return 1
    try:
        status = response.certificate_status
        serial = response.serial_number
    except ValueError as e:
        print(f"cryptography: certificate_status: error: {e}")
        return 1
    name = {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked"}.get(status, "unknown")
    print(f"cryptography: certificate_status {name} serial {serial:x}")
    return 0 if name == want and serial == cert.serial_number else 1


if __name__ == "__main__":
    sys.exit(main())
