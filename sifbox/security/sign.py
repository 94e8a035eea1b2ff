"""Signing SIF images (spec 7.2): one signature object per object group.

A signer turns the metadata document of one group into signature object
bytes and the descriptor's signing entity. The signature is then added as
an ungrouped Signature object linked to the group.
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sifbox.formats.sif.image import SifImage
    from sifbox.formats.sif.layout import Descriptor
    from sifbox.security.pgp import GnuPG

from sifbox.formats.sif import constants as c
from sifbox.security import dsse, pgp
from sifbox.security.integrity import HASH_TYPE_SHA256, IntegrityError, image_metadata

#: metadata JSON -> (signature object bytes, 20-byte entity or b"")
Signer = Callable[[bytes], "tuple[bytes, bytes]"]


def plan(img: SifImage, groups: list[int] = (), objects: list[int] = ()) -> list[tuple[int, list[Descriptor]]]:  # type: ignore[assignment]
    """(group, objects) for each signature to make, groups ascending."""
    if not img.has_objects:
        raise IntegrityError("no objects in image")
    out: dict[int, list[Descriptor]] = {}
    if objects:
        for oid in sorted(set(objects)):
            d = next((o for o in img.objects() if o.id == oid), None)
            if d is None:
                raise IntegrityError(f"object {oid} not found")
            if not d.group_id:
                raise IntegrityError(f"object {oid} is not in an object group")
            out.setdefault(d.group_id, []).append(d)
    else:
        for g in sorted(set(groups)) or img.groups():
            objs = img.group(g)
            if not objs:
                raise IntegrityError(f"group {g} not found")
            out[g] = objs
    if not out:
        raise IntegrityError("no groups found")
    return sorted(out.items())


def pgp_signer(gpg: GnuPG, fingerprint: str, passphrase: str = "", when: int | None = None) -> Signer:
    """Clear-signed metadata. Each signature is checked with gpgv against the signer's public
    key before it is handed back: what gpg printed when it exited 0 is not trusted to be one."""
    entity = bytes.fromhex(fingerprint)
    public: list[bytes] = []

    def sign(metadata: bytes) -> tuple[bytes, bytes]:
        packet = gpg.sign_detached_text(metadata, fingerprint, passphrase, when)
        name = pgp.HASH_ALGOS.get(pgp.signature_hash_algo(packet), ("SHA256", 1))[0]
        data = pgp.encode_clearsign(metadata, packet, name)
        if not public:
            public.append(gpg.export_public([fingerprint]))
        try:
            made = pgp.verify_clearsigned(data, public[0])
        except pgp.PgpError as err:
            raise pgp.PgpError(f"the signature gpg made does not verify: {err}") from None
        if made.primary != fingerprint.upper() or pgp.canonical_text(made.plaintext) != pgp.canonical_text(metadata):
            raise pgp.PgpError("the signature gpg made is not the one asked for (another key or text)")
        return data, entity

    return sign


def dsse_signer(private_keys: list[Any]) -> Signer:
    def sign(metadata: bytes) -> tuple[bytes, bytes]:
        return dsse.sign_envelope(metadata, private_keys), b""

    return sign


def sign_image(img: SifImage, signer: Signer, *, groups: list[int] = (), objects: list[int] = (),  # type: ignore[assignment]
               time: int | None = None, sync: bool = True) -> list[Descriptor]:  # fmt: skip
    """Sign the selected groups/objects; return the signature descriptors added.

    Every signature is made before the first is written, so a failing
    signer (bad passphrase, unknown key) leaves the image unchanged."""
    from sifbox.formats.sif import edit
    from sifbox.formats.sif.layout import signature_extra

    made = []
    for group_id, objs in plan(img, groups, objects):
        data, entity = signer(image_metadata(img, objs))
        made.append((group_id, data, entity))
    added = []
    for group_id, data, entity in made:
        obj = edit.ObjectInput(
            c.DataType.SIGNATURE, data=data, group_id=0, link=edit.link_group(group_id),
            extra=signature_extra(HASH_TYPE_SHA256, entity),
        )  # fmt: skip
        added.append(edit.add_object(img, obj, time=time, sync=sync))
    return added
