"""DSSE envelopes for SIF signatures (spec 7.4), with the `cryptography` library.

An envelope carries the metadata JSON as payload and one signature per key
over the DSSE pre-authentication encoding (PAE). Key IDs are the SSH-style
SHA-256 fingerprints of the public keys, as the reference verifier expects.
"""

from __future__ import annotations

import base64
import hashlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PAYLOAD_TYPE = "application/vnd.sylabs.sif-metadata+json"


class DsseError(Exception):
    pass


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid(public_key: Any) -> str:
    """`SHA256:<unpadded base64>` of the key's SSH wire encoding."""
    from cryptography.hazmat.primitives import serialization

    ssh = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(ssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _hash(name: str):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import hashes

    return {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[name]


def sign_message(message: bytes, private_key: Any, hash_name: str = "sha256") -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(message, padding.PKCS1v15(), _hash(hash_name))
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(_hash(hash_name)))
    raise DsseError(f"unsupported key type {type(private_key).__name__}")


def verify_message(message: bytes, signature: bytes, public_key: Any, hash_name: str = "sha256") -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, padding.PKCS1v15(), _hash(hash_name))
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(_hash(hash_name)))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_envelope(payload: bytes, signatures: list[tuple[str, bytes]], payload_type: str = PAYLOAD_TYPE) -> bytes:
    """Compact JSON, keys in the reference order, no trailing newline."""
    import json

    sigs = ",".join(
        f'{{"keyid":{json.dumps(k)},"sig":{json.dumps(base64.b64encode(s).decode())}}}'
        for k, s in signatures
    )
    body = json.dumps(base64.b64encode(payload).decode())
    return f'{{"payloadType":{json.dumps(payload_type)},"payload":{body},"signatures":[{sigs}]}}'.encode()


def sign_envelope(payload: bytes, private_keys: list[Any], hash_name: str = "sha256") -> bytes:
    message = pae(PAYLOAD_TYPE, payload)
    sigs = [(keyid(k.public_key()), sign_message(message, k, hash_name)) for k in private_keys]
    return encode_envelope(payload, sigs)


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise DsseError("envelope field is not a string")
    pad = "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + pad)
        return base64.b64decode(text + pad, validate=True)
    except ValueError:
        raise DsseError("envelope field is not base64") from None


class Envelope:
    __slots__ = ("payload", "payload_type", "signatures")

    def __init__(self, payload_type: str, payload: bytes, signatures: list[tuple[str, bytes]]):
        self.payload_type = payload_type
        self.payload = payload
        self.signatures = signatures


def parse_envelope(data: bytes) -> Envelope | None:
    """The envelope in `data` (first JSON value, trailing whitespace allowed),
    or None when `data` is not a DSSE envelope of SIF metadata."""
    import json

    try:
        text = data.decode("utf-8")
        doc, _end = json.JSONDecoder().raw_decode(text.lstrip())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("payloadType") != PAYLOAD_TYPE:
        return None
    try:
        payload = _b64(doc.get("payload"))
        sigs = []
        found = doc.get("signatures") or []
        if not isinstance(found, list):
            raise DsseError("signatures is not a list")
        for s in found:
            if not isinstance(s, dict):
                raise DsseError("invalid signature entry")
            kid = s.get("keyid") or ""
            sigs.append((kid if isinstance(kid, str) else "", _b64(s.get("sig"))))
    except DsseError:
        return Envelope(PAYLOAD_TYPE, b"", [])
    return Envelope(doc["payloadType"], payload, sigs)


def verify_envelope(env: Envelope, public_keys: list[Any], hash_name: str = "sha256") -> list[Any]:
    """The keys whose signature verifies (threshold 1); raises DsseError if none."""
    if env.payload_type != PAYLOAD_TYPE:
        raise DsseError(f"unexpected payload type `{env.payload_type}`")
    message = pae(env.payload_type, env.payload)
    accepted = []
    for key in public_keys:
        kid = keyid(key)
        for sig_kid, sig in env.signatures:
            if sig_kid and sig_kid != kid:
                continue
            if verify_message(message, sig, key, hash_name):
                accepted.append(key)
                break
    if not accepted:
        raise DsseError(
            f"no signature in the envelope verifies with the given key(s) "
            f"({len(env.signatures)} signature(s), {len(public_keys)} key(s))"
        )
    return accepted


# -- PEM keys ----------------------------------------------------------------------------
def load_private_key(data: bytes, passphrase: bytes | None = None) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(data, password=passphrase)


def load_public_key(data: bytes) -> Any:
    """A PEM public key, or the public key of a PEM certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)
