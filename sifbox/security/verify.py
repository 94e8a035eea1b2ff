"""Verifying SIF signatures (spec 7.5 and 7.6), as the reference verifier does.

`verify_image` builds the verification tasks (groups, objects, legacy
modes), checks every candidate signature of each task, calls `callback`
with each result, and raises the first failure as an IntegrityError.
The cryptography is delegated: DSSE to `sifbox.security.dsse`
(`cryptography`), OpenPGP to gpgv (`sifbox.security.pgp`).
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sifbox.formats.sif.image import SifImage
    from sifbox.formats.sif.layout import Descriptor

from sifbox.formats.sif import constants as c
from sifbox.security import dsse, pgp
from sifbox.security.integrity import (
    IntegrityError,
    ObjectIntegrityError,
    SignatureNotFound,
    SignatureNotValid,
    check_metadata,
    legacy_digest,
    legacy_objects_digest,
    parse_metadata,
)
from sifbox.util.errors import SifboxError

#: Largest signature object read (a signature is a few KiB).
MAX_SIGNATURE_SIZE = 16 << 20


class KeyMaterial:
    """What signatures are checked against: a binary OpenPGP keyring (None:
    not given) and DSSE public keys (empty: not given)."""

    __slots__ = ("keyring", "public_keys")

    def __init__(self, keyring: bytes | None = None, public_keys: list[Any] | None = None):
        self.keyring = keyring
        self.public_keys = list(public_keys or [])


class Result:
    """The outcome of one signature: what it verified, who signed, or the error."""

    __slots__ = ("error", "fingerprint", "keys", "legacy", "signature", "user", "verified")

    def __init__(self, signature: Descriptor, legacy: bool = False):
        self.signature = signature
        self.verified: list[Descriptor] = []
        self.fingerprint: str | None = None
        self.user = ""
        self.keys: list[Any] = []
        self.error: IntegrityError | None = None
        self.legacy = legacy


Callback = Callable[[Result], bool]


def is_legacy_signature(data: bytes) -> bool:
    cs = pgp.decode_clearsign(data)
    return cs is not None and cs.plaintext.startswith(b"SIFHASH:\n")


def _read_signature(img: SifImage, d: Descriptor) -> bytes:
    try:
        return img.read(d, limit=MAX_SIGNATURE_SIZE)
    except (OSError, SifboxError) as err:
        raise IntegrityError(f"can't read signature object {d.id}: {err}", d.id) from None


def _signatures(img: SifImage, target: int, is_group: bool) -> list[Descriptor]:
    """Signature objects linked to object or group `target`."""
    return [d for d in img.objects() if d.data_type == c.DataType.SIGNATURE and d.linked_id == (target, is_group)]


def _pgp_check(data: bytes, sig: Descriptor, keys: KeyMaterial, result: Result) -> bytes:
    """Check a clear-signed signature and its descriptor entity; return the plaintext."""
    if keys.keyring is None:
        raise IntegrityError("key material not provided for PGP clear-sign signature", sig.id)
    try:
        v = pgp.verify_clearsigned(data, keys.keyring)
    except pgp.PgpError as err:
        raise SignatureNotValid(sig.id, str(err)) from None
    if v.hash_algo not in pgp.ACCEPTED_HASHES:
        raise SignatureNotValid(sig.id, f"signature hash algorithm {v.hash_algo} not accepted")
    result.fingerprint = v.primary
    result.user = v.user
    _, entity = sig.signature()
    if entity.hex().upper() != v.primary:
        raise IntegrityError("fingerprint in descriptor does not correspond to signing entity", sig.id)
    return v.plaintext


def _check_current(img: SifImage, sig: Descriptor, group_id: int, objects: list[Descriptor],
                   subset: bool, keys: KeyMaterial, result: Result) -> None:  # fmt: skip
    data = _read_signature(img, sig)
    env = dsse.parse_envelope(data)
    clear = None if env is not None else pgp.decode_clearsign(data)
    if env is None and clear is None:
        raise IntegrityError("signature format not recognized", sig.id)
    if env is not None and not keys.public_keys:
        raise IntegrityError("key material not provided for DSSE envelope signature", sig.id)
    if clear is not None and keys.keyring is None:
        raise IntegrityError("key material not provided for PGP clear-sign signature", sig.id)
    hash_type, _ = sig.signature()
    if hash_type not in (1, 2, 3, 4, 5):
        raise IntegrityError("hash algorithm unsupported", sig.id)
    if env is not None:
        try:
            result.keys = dsse.verify_envelope(env, keys.public_keys)
        except dsse.DsseError as err:
            raise SignatureNotValid(sig.id, str(err)) from None
        payload = env.payload
    else:
        payload = _pgp_check(data, sig, keys, result)
    try:
        md = parse_metadata(payload)
    except IntegrityError as err:
        raise SignatureNotValid(sig.id, str(err)) from None
    result.verified = check_metadata(img, md, group_id, objects, subset)


def _check_legacy(img: SifImage, sig: Descriptor, objects: list[Descriptor], keys: KeyMaterial,
                  result: Result, object_id: int = 0) -> None:  # fmt: skip
    data = _read_signature(img, sig)
    if pgp.decode_clearsign(data) is None:
        raise SignatureNotValid(sig.id, "not a clear-signed OpenPGP message")
    plaintext = _pgp_check(data, sig, keys, result)
    hash_type, _ = sig.signature()
    name, want = legacy_digest(plaintext, hash_type)
    if legacy_objects_digest(img, objects, name) != want:
        raise ObjectIntegrityError(object_id)
    result.verified = list(objects)


class _Task:
    __slots__ = ("kind", "objects", "subset", "target")

    def __init__(self, kind: str, target: int, objects: list[Descriptor], subset: bool = False):
        self.kind = kind  # "group", "legacy-group", "legacy-object"
        self.target = target
        self.objects = objects
        self.subset = subset


def _group_objects(img: SifImage, group_id: int) -> list[Descriptor]:
    if not img.has_objects:
        raise IntegrityError("no objects in image")
    objs = img.group(group_id)
    if not objs:
        raise IntegrityError(f"group {group_id} not found")
    return objs


def _object(img: SifImage, object_id: int) -> Descriptor:
    if not img.has_objects:
        raise IntegrityError("no objects in image")
    for d in img.objects():
        if d.id == object_id:
            return d
    raise IntegrityError(f"object {object_id} not found")


def tasks(img: SifImage, groups: list[int] = (), objects: list[int] = (),  # type: ignore[assignment]
          legacy: bool = False, legacy_all: bool = False) -> list[_Task]:  # fmt: skip
    groups, objects = sorted(set(groups)), sorted(set(objects))
    if legacy_all:
        legacy = True
        objects = [d.id for d in img.objects() if d.group_id and d.data_type != c.DataType.SIGNATURE]
    if not groups and not objects:
        groups = img.groups()
        if not groups:
            raise IntegrityError("no groups found")
    out = []
    for g in groups:
        out.append(_Task("legacy-group" if legacy else "group", g, _group_objects(img, g)))
    if legacy:
        for oid in objects:
            out.append(_Task("legacy-object", oid, [_object(img, oid)]))
        return out
    by_group: dict[int, list[Descriptor]] = {}
    for oid in objects:
        d = _object(img, oid)
        if not d.group_id:
            raise IntegrityError(f"object {oid} is not in an object group")
        by_group.setdefault(d.group_id, []).append(d)
    for g in sorted(by_group):
        out.append(_Task("group", g, by_group[g], subset=True))
    return out


def verify_image(img: SifImage, keys: KeyMaterial, *, groups: list[int] = (),  # type: ignore[assignment]
                 objects: list[int] = (), legacy: bool = False, legacy_all: bool = False,  # type: ignore[assignment]
                 callback: Callback | None = None) -> list[Result]:  # fmt: skip
    """Verify the image; return every signature's result, raise the first error
    that `callback` does not ask to ignore (by returning True)."""
    todo = tasks(img, groups, objects, legacy, legacy_all)
    if not (legacy or legacy_all):
        for d in img.objects():
            if not d.group_id and d.data_type != c.DataType.SIGNATURE:
                raise IntegrityError("non-signature object not associated with object group", d.id)
    results = []
    for t in todo:
        if t.kind == "legacy-object":
            sigs = _signatures(img, t.target, False)
            if not sigs:
                raise SignatureNotFound(t.target, False)
        else:
            want_legacy = t.kind == "legacy-group"
            sigs = [
                s for s in _signatures(img, t.target, True)
                if is_legacy_signature(_read_signature(img, s)) == want_legacy
            ]  # fmt: skip
            if not sigs:
                raise SignatureNotFound(t.target, True)
        for sig in sigs:
            r = Result(sig, legacy=t.kind != "group")
            try:
                if t.kind == "group":
                    _check_current(img, sig, t.target, t.objects, t.subset, keys, r)
                else:
                    oid = t.target if t.kind == "legacy-object" else 0
                    _check_legacy(img, sig, t.objects, keys, r, oid)
            except IntegrityError as err:
                r.error = err
            results.append(r)
            ignore = callback(r) if callback else False
            if r.error is not None and not ignore:
                raise r.error
    return results


def signed_by(img: SifImage, groups: list[int] = (), objects: list[int] = (),  # type: ignore[assignment]
              legacy: bool = False) -> tuple[set[str], set[str]]:  # fmt: skip
    """(fingerprints that signed every task, fingerprints that signed any) from
    the signature descriptors alone, with no cryptography (as the reference)."""
    every: set[str] | None = None
    anyone: set[str] = set()
    for t in tasks(img, groups, objects, legacy):
        if t.kind == "legacy-object":
            sigs = _signatures(img, t.target, False)
        else:
            want = t.kind == "legacy-group"
            sigs = [s for s in _signatures(img, t.target, True)
                    if is_legacy_signature(_read_signature(img, s)) == want]  # fmt: skip
        fps = {s.signature()[1].hex().upper() for s in sigs} - {"00" * 20}
        anyone |= fps
        every = fps if every is None else every & fps
    return every or set(), anyone



def signed_by_all(img: SifImage, keyring: bytes, wanted: list[str]) -> list[str]:
    """The fingerprints of `wanted` (upper-case hex) without a signature of `img` that verifies
    against `keyring` (empty: every one has one), as a definition file's `Fingerprints:`
    header asks of its base image. An image with an unsigned object group or a broken object
    misses them all."""
    good: set[str] = set()

    def note(r: Result) -> bool:
        if r.error is None and r.fingerprint:
            good.add(r.fingerprint.upper())
        return True  # look at every signature: a bad one only does not count

    try:
        verify_image(img, KeyMaterial(keyring), callback=note)
    except IntegrityError:
        return list(wanted)
    return [fp for fp in wanted if fp not in good]
