#!/usr/bin/env python3
"""Writes the seeds of the fuzz targets: corpus/jws/seed-* and corpus/csr/seed-*.

JWS bodies are flattened JWS signed with fresh keys (Python `cryptography`), as ACME clients
send them; CSRs come from `openssl req -new` (OpenSSL 3), with the fixture keys of
fixtures/*.pk8 for P-256, P-384 and RSA 2048 and fresh keys otherwise. Run from this directory; it
overwrites the seeds it makes and leaves the regression seeds (seed-regression-*) alone.
"""

import base64
import json
import os
import subprocess
import tempfile

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

URL = "https://acme.example.test/acme"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int, size: int | None = None) -> bytes:
    size = size or (n.bit_length() + 7) // 8
    return n.to_bytes(size, "big")


def jwk(key) -> dict:
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        nums = pub.public_numbers()
        return {"kty": "RSA", "n": b64(uint(nums.n)), "e": b64(uint(nums.e))}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        nums = pub.public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {256: "P-256", 384: "P-384"}[key.curve.key_size]
        return {"kty": "EC", "crv": crv, "x": b64(uint(nums.x, size)), "y": b64(uint(nums.y, size))}
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}


def sign(key, alg: str, message: bytes) -> bytes:
    if alg == "RS256":
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if alg in ("ES256", "ES384"):
        h = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(h)))
        size = 32 if alg == "ES256" else 48
        return uint(r, size) + uint(s, size)
    if alg == "EdDSA":
        return key.sign(message)
    return b""


def jws(key, alg: str, url: str, payload, kid: str | None = None, extra: dict | None = None) -> dict:
    header = {"alg": alg, "nonce": "oFvnlFP1wIhRlYS2jTaXbA", "url": f"{URL}/{url}"}
    if kid:
        header["kid"] = kid
    else:
        header["jwk"] = jwk(key)
    header.update(extra or {})
    header = {k: v for k, v in header.items() if v is not None}
    protected = b64(json.dumps(header, separators=(",", ":")).encode())
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload, separators=(",", ":")).encode()
    body = b64(payload)
    return {"protected": protected, "payload": body, "signature": b64(sign(key, alg, f"{protected}.{body}".encode()))}


def write(target: str, name: str, data: bytes) -> None:
    path = os.path.join("corpus", target, f"seed-{name}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def jws_seeds() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = ed25519.Ed25519PrivateKey.generate()
    kid = f"{URL}/acct/3mA7b1XQ"
    order = {"identifiers": [{"type": "dns", "value": "www.example.test"}, {"type": "dns", "value": "*.Example.test"}]}
    seeds = {
        "new-account-es256.json": jws(p256, "ES256", "new-account", {"termsOfServiceAgreed": True, "contact": ["mailto:ops@example.test"]}),
        "new-account-rs256.json": jws(rsa2048, "RS256", "new-account", {"termsOfServiceAgreed": True}),
        "new-account-es384.json": jws(p384, "ES384", "new-account", {"onlyReturnExisting": True}),
        "new-account-eddsa.json": jws(ed, "EdDSA", "new-account", {"termsOfServiceAgreed": True}),
        "new-order-kid-es256.json": jws(p256, "ES256", "new-order", order, kid=kid),
        "new-order-jwk-rs256-ip-and-junk.json": jws(rsa2048, "RS256", "new-order", {"identifiers": [{"type": "ip", "value": "192.0.2.1"}, {"type": "dns", "value": "-bad-.example.test"}, {"type": "dns", "value": "co.uk"}], "notAfter": "2027-01-01T00:00:00Z"}),
        "post-as-get-kid.json": jws(p256, "ES256", "order/7", b"", kid=kid),
        "finalize-kid.json": jws(p256, "ES256", "finalize/7", {"csr": b64(b"\x30\x03\x02\x01\x00")}, kid=kid),
        "revoke-cert-jwk.json": jws(p256, "ES256", "revoke-cert", {"certificate": b64(b"\x30\x00"), "reason": 1}),
        "alg-mismatch-es256-with-rsa.json": jws(rsa2048, "RS256", "new-account", {}, extra={"alg": "ES256"}),
        "alg-none.json": jws(p256, "none", "new-account", {}),
    }
    # Key change (RFC 8555 §7.3.5): the payload is itself a JWS, signed with the new key.
    inner = jws(p384, "ES384", "key-change", {"account": kid, "oldKey": jwk(p256)}, extra={"nonce": None})
    seeds["key-change-nested.json"] = jws(p256, "ES256", "key-change", inner, kid=kid)
    for name, body in seeds.items():
        write("jws", name, json.dumps(body, separators=(",", ":")).encode())
    # Edge cases that are not signed JWS.
    write("jws", "edge-unknown-kty.json", json.dumps({"protected": b64(json.dumps({"alg": "ES256", "jwk": {"kty": "oct", "k": "AAAA"}}).encode()), "payload": "", "signature": ""}).encode())
    write("jws", "edge-rsa-small-n.json", json.dumps({"protected": b64(json.dumps({"alg": "RS256", "jwk": {"kty": "RSA", "n": b64(b"\x00" * 300), "e": "AQAB"}}).encode()), "payload": b64(b"[1,2,3]"), "signature": "AA"}).encode())
    write("jws", "edge-padded-base64.json", b'{"protected":"eyJhbGciOiJFUzI1NiJ9==","payload":"e30=","signature":"AA=="}')
    write("jws", "edge-extra-member.json", b'{"protected":"eyJhbGciOiJFUzI1NiJ9","payload":"","signature":"","header":{}}')


def openssl(*args: str) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def csr_seeds() -> None:
    keys = {
        # The fixture keys: the target re-signs mutated CSRs that name one of them.
        "p256": ["-key", "fixtures/p256.pk8", "-keyform", "DER"],
        "p384": ["-key", "fixtures/p384.pk8", "-keyform", "DER"],
        "rsa2048": ["-key", "fixtures/rsa2048.pk8", "-keyform", "DER"],
        "rsa3072": ["-newkey", "rsa:3072"],
        "ed25519": ["-newkey", "ed25519"],
        "secp256k1": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
        "rsa1024": ["-newkey", "rsa:1024"],
    }
    # (name, key, subject, SAN, extra openssl arguments). The fuzz target's order is
    # example.test + www.example.test.
    cases = [
        ("p256-cn-san", "p256", "/CN=www.example.test", "DNS:example.test,DNS:www.example.test", []),
        ("p256-no-cn", "p256", "/", "DNS:example.test,DNS:www.example.test", []),
        ("p256-sha384-upper-case", "p256", "/CN=EXAMPLE.TEST", "DNS:Example.Test,DNS:WWW.example.test", ["-sha384"]),
        ("p256-cn-only", "p256", "/CN=example.test", None, []),
        ("p256-ip-san", "p256", "/CN=example.test", "DNS:example.test,DNS:www.example.test,IP:192.0.2.1", []),
        ("p256-extra-name", "p256", "/O=Example/CN=example.test", "DNS:example.test,DNS:www.example.test,DNS:mail.example.test", []),
        ("p384-cn-san", "p384", "/CN=example.test", "DNS:example.test,DNS:www.example.test", []),
        ("rsa2048-cn-san", "rsa2048", "/CN=example.test", "DNS:example.test,DNS:www.example.test", []),
        ("rsa3072-no-cn", "rsa3072", "/", "DNS:www.example.test,DNS:example.test", []),
        ("ed25519-cn-san", "ed25519", "/CN=example.test", "DNS:example.test,DNS:www.example.test", []),
        ("secp256k1", "secp256k1", "/CN=example.test", "DNS:example.test,DNS:www.example.test", []),
        ("rsa1024", "rsa1024", "/CN=example.test", "DNS:example.test,DNS:www.example.test", []),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, key, subject, san, extra in cases:
            args = ["req", "-new", *keys[key], "-subj", subject, "-outform", "DER", *extra]
            if "-newkey" in keys[key]:
                args += ["-nodes", "-keyout", os.path.join(tmp, "key.pem")]
            if san:
                args += ["-addext", f"subjectAltName={san}"]
            write("csr", f"{name}.der", openssl(*args))


if __name__ == "__main__":
    jws_seeds()
    csr_seeds()
