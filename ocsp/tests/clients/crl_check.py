"""Checks a served CRL shard with Python `cryptography`, independently of hsmgate.

Usage: crl_check.py CRL.der ISSUER.pem URL NUMBER_MIN EXPECT...
EXPECT: `<serial hex>:<unix revocation time or *>:<reason name or none>` for a serial that must
be listed with that date (`*`: any) and reason (reason `none`: no reasonCode), or
`<serial hex>:absent`.
Checks: DER parses (load_der_x509_crl), the signature verifies against the issuer
(is_signature_valid), v2, issuer = the issuer certificate's subject, nextUpdate after
thisUpdate by at most 10 days (BR 4.9.7), cRLNumber >= NUMBER_MIN, a critical
issuingDistributionPoint naming URL with only_contains_user_certs, an authorityKeyIdentifier
matching the issuer's key, and no entry with reason `unspecified`. Prints one summary line.
"""
import datetime
import sys

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

crl_path, issuer_path, url, number_min, *expects = sys.argv[1:]
crl = x509.load_der_x509_crl(open(crl_path, "rb").read())
issuer = x509.load_pem_x509_certificate(open(issuer_path, "rb").read())
assert crl.is_signature_valid(issuer.public_key()), "signature does not verify"
assert crl.issuer == issuer.subject, (crl.issuer, issuer.subject)
this_update, next_update = crl.last_update_utc, crl.next_update_utc
assert next_update is not None and this_update < next_update <= this_update + datetime.timedelta(days=10)
number = crl.extensions.get_extension_for_oid(ExtensionOID.CRL_NUMBER)
assert not number.critical and number.value.crl_number >= int(number_min), number
idp = crl.extensions.get_extension_for_oid(ExtensionOID.ISSUING_DISTRIBUTION_POINT)
assert idp.critical, "IDP must be critical"
assert idp.value.only_contains_user_certs, idp
names = [n.value for n in idp.value.full_name]
assert names == [url], (names, url)
aki = crl.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
try:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
except x509.ExtensionNotFound:
    pass
assert aki.key_identifier == ski, (aki, ski)
for entry in crl:
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        continue
    assert reason != x509.ReasonFlags.unspecified, "unspecified reason listed"
for expect in expects:
    serial_hex, *rest = expect.split(":")
    entry = crl.get_revoked_certificate_by_serial_number(int(serial_hex, 16))
    if rest == ["absent"]:
        assert entry is None, f"{serial_hex} is listed"
        continue
    assert entry is not None, f"{serial_hex} not listed"
    when, reason = rest
    if when != "*":  # `*`: any revocation date (an ACME client revoked it; the time is the CA's)
        assert int(entry.revocation_date_utc.timestamp()) == int(when), (entry.revocation_date_utc, when)
    try:
        got = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
    except x509.ExtensionNotFound:
        got = "none"
    assert got == reason, (serial_hex, got, reason)
print(f"python cryptography OK: {len(crl)} entries, number {number.value.crl_number}")
