"""X.509 certificates as DSSE key material (`verify --certificate`).

The certificate's chain is checked with `cryptography`: each certificate
must be directly issued by the next (signature, issuer name), be within its
validity period, and the chain must end at one of the roots (the given
pool, else the system's CA bundle). A signing certificate must allow
digital signatures and, if it restricts extended key usage, code signing.
"""

from __future__ import annotations

import datetime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from sifbox.util.errors import SifboxError

SYSTEM_ROOTS = "/etc/ssl/certs/ca-certificates.crt"


def _load_pem_certs(path: str, what: str) -> list[Any]:
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            data = f.read(16 << 20)
    except OSError as err:
        raise SifboxError(f"can't load {what} `{path}`: {err.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise SifboxError(f"can't load {what} `{path}`: {err}") from None
    return certs


def check_chain(cert: Any, intermediates: list[Any], roots: list[Any], when: datetime.datetime | None = None) -> None:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import ExtendedKeyUsageOID

    when = when or datetime.datetime.now(datetime.UTC)
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            raise ValueError("the certificate does not allow digital signatures")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            raise ValueError("the certificate is not for code signing (extended key usage)")
    except x509.ExtensionNotFound:
        pass
    current = cert
    for _ in range(16):
        if not current.not_valid_before_utc <= when <= current.not_valid_after_utc:
            raise ValueError(f"certificate `{current.subject.rfc4514_string()}` is expired or not yet valid")
        for root in roots:
            if root.subject == current.issuer:
                try:
                    current.verify_directly_issued_by(root)
                except (ValueError, TypeError, InvalidSignature):
                    continue  # another certificate with the same subject may be the issuer
                return
        parent = None
        for ca in intermediates:
            if ca.subject == current.issuer and ca != current:
                try:
                    current.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature):
                    continue  # another certificate with the same subject may be the issuer
                parent = ca
                break
        if parent is None:
            raise ValueError("certificate signed by unknown authority")
        current = parent
    raise ValueError("certificate chain too long")


def load_certificate_key(path: str, intermediates: str | None, roots: str | None) -> Any:
    certs = _load_pem_certs(path, "certificate")
    if not certs:
        raise SifboxError(f"can't load certificate `{path}`: no PEM certificate in it")
    inter = _load_pem_certs(intermediates, "intermediate certificates") if intermediates else certs[1:]
    root_pool = _load_pem_certs(roots or SYSTEM_ROOTS, "root certificates")
    try:
        check_chain(certs[0], inter, root_pool)
    except ValueError as err:
        raise SifboxError(f"can't verify with certificate `{path}`: {err}") from None
    return certs[0].public_key()
