#!/usr/bin/env python3
"""Hostile input against the stack ca-frontend/e2e/clients.sh starts (issue 12's proof).

Written from the outside, sharing no code with the gateway or the frontend: gRPC through
`grpcio` with stubs generated here from signer/proto, ACME as a 60-line JWS client on
`cryptography`, HTTP through raw sockets (slow_connections.py).

1. Forgery: every client of the dev config (certificates in WORK/tls) sends a DER
   TBSCertificate for `*.google.com` to `dev-p256`, declared `ocsp-response-data`, declared
   `tbs-certificate`, and undeclared, as message and as digest. Each must be refused
   (PERMISSION_DENIED; INVALID_ARGUMENT is taken as a refusal too and printed), and anything that
   comes back signed is assembled into a certificate and given to `openssl verify`, which must
   not accept it. The clients and their grants are read from WORK/gateway.toml. One case is
   left out: a client holding `sign-certificate` on dev-p256 (`ca-frontend`) declaring
   `tbs-certificate` as a message is the issuing path itself; what names it may put in a
   certificate is the ACME server's policy, checked in 2.
2. Internal names: newOrder for printer.local, db.internal, abc.home.arpa, 127.1, 0x7f.1,
   ab--c.example.com, xn--a.example.com, foo.onion must each answer `rejectedIdentifier`.
3. An oversized refused SignBatch (200,000 items naming key "x"): refused, and the audit log
   grows by less than 1 MB.
4. Slow connections: a few hundred idle sockets and some half-sent headers on the OCSP port;
   an ordinary OCSP GET still answers.

Usage: hostile.py --work WORK --gateway 127.0.0.1:PORT --acme http://127.0.0.1:PORT/directory
                  --ocsp 127.0.0.1:PORT --ocsp-path /BASE64 [--only forgery,names,batch,slow]
Prints one line per check; exits 1 if any failed (all checks run).
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO_DIR = os.path.join(ROOT, "signer", "proto")
INTERNAL_NAMES = ["printer.local", "db.internal", "abc.home.arpa", "127.1", "0x7f.1",
                  "ab--c.example.com", "xn--a.example.com", "foo.onion"]
REFUSED = {"PERMISSION_DENIED", "INVALID_ARGUMENT"}

failures = []


def report(ok, line):
    print(("ok   " if ok else "FAIL ") + line, flush=True)
    if not ok:
        failures.append(line)


def stubs():
    """Generates the Python messages and stubs from signer/proto with grpcio-tools."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="hsmgate-proto-")
    proto = "hsmgate/signer/v1/signer.proto"
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", proto])
    if rc != 0:
        sys.exit(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    from hsmgate.signer.v1 import signer_pb2, signer_pb2_grpc
    return signer_pb2, signer_pb2_grpc


def channel(work, client, gateway):
    tls = os.path.join(work, "tls")
    read = lambda name: open(os.path.join(tls, name), "rb").read()
    creds = grpc.ssl_channel_credentials(read("ca.pem"), read(f"{client}.key"), read(f"{client}.pem"))
    return grpc.secure_channel(gateway, creds, options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])


# --- 1. forgery ----------------------------------------------------------------------------------

def forged_tbs(issuer):
    """A TBSCertificate for *.google.com under our intermediate's name, signature algorithm
    ecdsa-with-SHA256 (dev-p256's). Built with cryptography and a throwaway key; only the TBS
    part is kept."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "*.google.com")]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.google.com"),
                                                        x509.DNSName("google.com")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value),
                critical=False)
            .sign(key, hashes.SHA256()))
    return cert.tbs_certificate_bytes


def der_len(n):
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def assemble(tbs, algorithm_identifier, signature):
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }"""
    bits = b"\x03" + der_len(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm_identifier + bits
    return b"\x30" + der_len(len(body)) + body


def gateway_clients(work):
    """{client name: True if it may sign certificates with dev-p256} from the gateway's config."""
    with open(os.path.join(work, "gateway.toml"), "rb") as f:
        config = tomllib.load(f)
    return {c["name"]: any("dev-p256" in g.get("keys", []) and "sign-certificate" in g.get("operations", [])
                           for g in c.get("grants", []))
            for c in config.get("clients", [])}


def forgery(args, pb, pb_grpc):
    issuer = x509.load_pem_x509_certificate(open(os.path.join(args.work, "issuer.pem"), "rb").read())
    tbs = forged_tbs(issuer)
    for client, issues_certificates in gateway_clients(args.work).items():
        if not os.path.exists(os.path.join(args.work, "tls", f"{client}.pem")):
            print(f"note {client}: no dev certificate in WORK/tls, so it cannot connect at all")
            continue
        stub = pb_grpc.SignerStub(channel(args.work, client, args.gateway))
        for declared in ["ocsp-response-data", "tbs-certificate", None]:
            for form in ["message", "digest"]:
                if issues_certificates and declared == "tbs-certificate" and form == "message":
                    continue  # the issuing path itself (see the module doc)
                what = f"forgery as {client}, declared {declared or '(none)'}, {form}"
                request = pb.SignRequest(key="dev-p256", algorithm=pb.SIGNATURE_ALGORITHM_ECDSA_SHA256)
                if form == "message":
                    request.message = tbs
                else:
                    request.digest = hashlib.sha256(tbs).digest()
                metadata = [("hsmgate-payload", declared)] if declared else []
                try:
                    reply = stub.Sign(request, metadata=metadata, timeout=10)
                except grpc.RpcError as e:
                    code = e.code().name
                    report(code in REFUSED, f"{what}: refused {code}")
                    continue
                cert = x509.load_der_x509_certificate(
                    assemble(tbs, reply.algorithm_identifier, reply.signature))
                with tempfile.NamedTemporaryFile(suffix=".pem", delete=False) as f:
                    f.write(cert.public_bytes(serialization.Encoding.PEM))
                verify = subprocess.run(
                    ["openssl", "verify", "-CAfile", os.path.join(args.work, "root.pem"),
                     "-untrusted", os.path.join(args.work, "issuer.pem"), f.name],
                    capture_output=True, text=True)
                forged = verify.returncode == 0
                report(False, f"{what}: SIGNED by {reply.hsm}; openssl verify: "
                              f"{'OK -- a certificate for *.google.com chains to the dev root' if forged else ' '.join((verify.stdout + verify.stderr).split())}")


# --- 2. internal names ---------------------------------------------------------------------------

def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Acme:
    """The smallest ACME client (RFC 8555 §6.2): ES256 JWS, one account."""

    def __init__(self, directory_url):
        self.dir = json.load(urllib.request.urlopen(directory_url, timeout=10))
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {"crv": "P-256", "kty": "EC", "x": b64u(numbers.x.to_bytes(32, "big")),
                    "y": b64u(numbers.y.to_bytes(32, "big"))}
        self.kid = None
        self.nonce = None

    def post(self, url, payload):
        if self.nonce is None:
            with urllib.request.urlopen(self.dir["newNonce"], timeout=10) as r:
                self.nonce = r.headers["Replay-Nonce"]
        protected = {"alg": "ES256", "nonce": self.nonce, "url": url}
        if self.kid:
            protected["kid"] = self.kid
        else:
            protected["jwk"] = self.jwk
        signing_input = f"{b64u(json.dumps(protected).encode())}.{b64u(json.dumps(payload).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        body = json.dumps({"protected": signing_input.split(".")[0], "payload": signing_input.split(".")[1],
                           "signature": b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}).encode()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/jose+json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, headers, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, data = e.code, e.headers, e.read()
        self.nonce = headers.get("Replay-Nonce")
        return status, headers, data


def internal_names(args):
    acme = Acme(args.acme)
    status, headers, data = acme.post(acme.dir["newAccount"], {"termsOfServiceAgreed": True})
    if status not in (200, 201):
        report(False, f"newAccount: HTTP {status} {data[:200]!r}")
        return
    acme.kid = headers["Location"]
    for name in INTERNAL_NAMES:
        status, _, data = acme.post(acme.dir["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
        try:
            problem = json.loads(data).get("type", "")
        except ValueError:
            problem = ""
        rejected = status >= 400 and problem.endswith(":rejectedIdentifier")
        report(rejected, f"newOrder {name}: HTTP {status} {problem or data[:120]!r}")


# --- 3. oversized refused batch ------------------------------------------------------------------

def dir_bytes(path):
    """Bytes of records in the audit files: the file being written ends in the gateway's
    preallocated zeros ([audit] preallocate_bytes), which are not records."""
    total = 0
    for base, _, files in os.walk(path):
        for f in files:
            try:
                with open(os.path.join(base, f), "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            end = data.find(b"\0")
            total += len(data) if end < 0 else end
    return total


def oversized_batch(args, pb, pb_grpc):
    audit = os.path.join(args.work, "audit")
    stub = pb_grpc.SignerStub(channel(args.work, "bench", args.gateway))
    batch = pb.SignBatchRequest(requests=[pb.SignRequest(key="x") for _ in range(200_000)])
    size = batch.ByteSize()
    before = dir_bytes(audit)
    try:
        stub.SignBatch(batch, timeout=60)
        report(False, f"SignBatch of 200,000 items for key \"x\" ({size} bytes): accepted")
    except grpc.RpcError as e:
        report(True, f"SignBatch of 200,000 items for key \"x\" ({size} bytes): refused {e.code().name}")
    time.sleep(1.5)  # the audit writer flushes in batches
    grown = dir_bytes(audit) - before
    report(grown < 1_000_000, f"audit log grew by {grown} bytes for the refused batch (limit 1 MB)")


# --- 4. slow connections -------------------------------------------------------------------------

def slow(args):
    run = subprocess.run([sys.executable, os.path.join(HERE, "slow_connections.py"), "--target", args.ocsp,
                          "--path", args.ocsp_path, "--idle", "300", "--half", "30", "--requests", "20",
                          "--p99-limit", "1.0"], capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    report(run.returncode == 0, "slow connections: " + " / ".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--acme", required=True)
    ap.add_argument("--ocsp", required=True)
    ap.add_argument("--ocsp-path", required=True)
    ap.add_argument("--only", default="forgery,names,batch,slow")
    args = ap.parse_args()
    only = args.only.split(",")
    pb, pb_grpc = stubs()
    if "forgery" in only:
        forgery(args, pb, pb_grpc)
    if "names" in only:
        internal_names(args)
    if "batch" in only:
        oversized_batch(args, pb, pb_grpc)
    if "slow" in only:
        slow(args)
    print(f"hostile: {len(failures)} check(s) failed" if failures else "hostile: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
