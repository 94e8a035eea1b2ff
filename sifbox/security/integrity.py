"""What a SIF signature covers: digests and the image metadata document.

A signature covers one object group (or some of its objects): the header
stream, and per object its descriptor stream and its data (spec 7.1). The
metadata document is compact JSON in a fixed key order, so that the bytes
signed here equal the bytes the reference tools sign.

Object data is hashed in large reads straight into a reused buffer, so an
image of any size is hashed at the speed of the hash, never read whole.
"""

from __future__ import annotations

import hashlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.sif.image import SifImage
    from sifbox.formats.sif.layout import Descriptor

from sifbox.formats.sif.integrity import descriptor_stream, header_stream
from sifbox.util.errors import SifboxError

#: Names accepted in digest strings, and hashlib's name for each.
DIGEST_ALGORITHMS = {
    "sha224": "sha224",
    "sha256": "sha256",
    "sha384": "sha384",
    "sha512": "sha512",
    "sha512_224": "sha512_224",
    "sha512_256": "sha512_256",
}
#: SIF signature hash types (descriptor extra) and their hashlib names.
HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512", 4: "blake2s", 5: "blake2b"}
HASH_TYPE_SHA256 = 1
#: Read size for hashing object data: large reads keep the hash busy.
READ_SIZE = 8 << 20


class IntegrityError(Exception):
    """Why a signature does not verify; `str()` is the reason, worded as the
    reference tools word it."""

    def __init__(self, message: str, object_id: int = 0):
        super().__init__(message)
        self.object_id = object_id


class SignatureNotFound(IntegrityError):
    def __init__(self, target: int, is_group: bool):
        what = "object group" if is_group else "object"
        super().__init__(f"signature not found for {what} {target}", target)
        self.is_group = is_group


class SignatureNotValid(IntegrityError):
    def __init__(self, sig_id: int, reason: str):
        super().__init__(f"signature object {sig_id} not valid: {reason}", sig_id)
        self.reason = reason


class HeaderIntegrityError(IntegrityError):
    def __init__(self) -> None:
        super().__init__("header integrity compromised")


class DescriptorIntegrityError(IntegrityError):
    def __init__(self, object_id: int):
        super().__init__(f"data object descriptor integrity compromised: {object_id}", object_id)


class ObjectIntegrityError(IntegrityError):
    def __init__(self, object_id: int = 0):
        text = "data object integrity compromised"
        super().__init__(f"{text}: {object_id}" if object_id else text, object_id)


# -- digests ------------------------------------------------------------------------
def format_digest(name: str, raw: bytes) -> str:
    return f"{name}:{raw.hex()}"


def parse_digest(text: object) -> tuple[str, bytes]:
    """`sha256:<hex>` -> ("sha256", raw bytes); the hex length must fit the hash."""
    if not isinstance(text, str) or ":" not in text:
        raise IntegrityError(f"invalid digest {text!r}")
    name, hexpart = text.split(":", 1)
    if name not in DIGEST_ALGORITHMS:
        raise IntegrityError(f"hash algorithm `{name}` not supported")
    size = hashlib.new(DIGEST_ALGORITHMS[name]).digest_size
    if len(hexpart) != 2 * size or hexpart != hexpart.lower():
        raise IntegrityError(f"invalid digest {text!r}")
    try:
        return name, bytes.fromhex(hexpart)
    except ValueError:
        raise IntegrityError(f"invalid digest {text!r}") from None


def hash_range(fd: int, offset: int, size: int, algorithm: str = "sha256", buf: bytearray | None = None) -> bytes:
    """Digest of `size` bytes at `offset` of the open file `fd`, read in large chunks."""
    h = hashlib.new(algorithm)
    if buf is None:
        buf = bytearray(min(READ_SIZE, max(size, 1)))
    view = memoryview(buf)
    pos, end = offset, offset + size
    while pos < end:
        n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
        if n <= 0:
            raise IntegrityError(f"short read at offset {pos}: the file ends early")
        h.update(view[:n])
        pos += n
    return h.digest()


def image_fd(img: SifImage) -> int | None:
    """The image's file descriptor, or None for an in-memory image."""
    try:
        return img.fp.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def object_digest(img: SifImage, d: Descriptor, algorithm: str = "sha256") -> bytes:
    img.check_bounds(d)
    fd = image_fd(img)
    if fd is None:
        h = hashlib.new(algorithm)
        for chunk in img.iter_chunks(d, READ_SIZE):
            h.update(chunk)
        return h.digest()
    return hash_range(fd, d.offset, d.size, algorithm)


def header_digest(img: SifImage, algorithm: str = "sha256") -> bytes:
    return hashlib.new(algorithm, header_stream(img.header)).digest()


def min_group_id(img: SifImage, raw_group: int) -> int:
    """Smallest ID among used descriptors with the same raw group field (spec 4.4)."""
    ids = [d.id for d in img.descriptors if d.used and d.raw_group == raw_group]
    return min(ids) if ids else 0


# -- the metadata document ------------------------------------------------------------
def _json_str(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)


def image_metadata(img: SifImage, objects: list[Descriptor], algorithm: str = "sha256") -> bytes:
    """The exact JSON bytes a signature over `objects` (one group, ID order) signs."""
    parts = [
        '{"version":1,"header":{"digest":',
        _json_str(format_digest(algorithm, header_digest(img, algorithm))),
        '},"objects":[',
    ]
    items = []
    for d in sorted(objects, key=lambda o: o.id):
        rel = d.id - min_group_id(img, d.raw_group)
        ddig = hashlib.new(algorithm, descriptor_stream(d, rel)).digest()
        odig = object_digest(img, d, algorithm)
        items.append(
            f'{{"relativeId":{rel},"descriptorDigest":{_json_str(format_digest(algorithm, ddig))},'
            f'"objectDigest":{_json_str(format_digest(algorithm, odig))}}}'
        )
    parts.append(",".join(items))
    parts.append("]}")
    return "".join(parts).encode()


class ObjectEntry:
    __slots__ = ("descriptor_digest", "object_digest", "relative_id")

    def __init__(self, relative_id: int, descriptor_digest: tuple[str, bytes], object_digest: tuple[str, bytes]):
        self.relative_id = relative_id
        self.descriptor_digest = descriptor_digest
        self.object_digest = object_digest


class Metadata:
    """A parsed metadata document."""

    __slots__ = ("header", "objects")

    def __init__(self, header: tuple[str, bytes], objects: list[ObjectEntry]):
        self.header = header
        self.objects = objects


def parse_metadata(data: bytes) -> Metadata:
    """Parse a signed metadata document; a missing relativeId counts as 0 (as the reference)."""
    import json

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise IntegrityError(f"signed metadata is not JSON: {err}") from None
    except RecursionError:
        raise IntegrityError("signed metadata is not JSON: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict):
        raise IntegrityError("signed metadata has no header digest")
    if doc.get("version") != 1:
        raise IntegrityError(f"signed metadata version {doc.get('version')!r} not supported")
    header = parse_digest(doc["header"].get("digest"))
    objects = []
    found = doc.get("objects") or []
    if not isinstance(found, list):
        raise IntegrityError("signed metadata has an invalid object list")
    for o in found:
        if not isinstance(o, dict):
            raise IntegrityError("signed metadata has an invalid object entry")
        rel = o.get("relativeId", 0)
        if not isinstance(rel, int) or isinstance(rel, bool) or not 0 <= rel <= 0xFFFFFFFF:
            raise IntegrityError(f"invalid relativeId {rel!r} in signed metadata")
        objects.append(ObjectEntry(rel, parse_digest(o.get("descriptorDigest")), parse_digest(o.get("objectDigest"))))
    return Metadata(header, objects)


def check_metadata(img: SifImage, md: Metadata, group_id: int, objects: list[Descriptor], subset: bool) -> list[Descriptor]:
    """Check the image against signed metadata for `objects` of group `group_id`.

    Returns the verified descriptors, or raises the first integrity error
    (spec 7.5 steps 4-7)."""
    group = img.group(group_id)
    min_id = min(d.id for d in group)
    by_id = {min_id + e.relative_id: e for e in md.objects}
    if not subset:
        ours = {d.id for d in objects}
        for d in objects:
            if d.id not in by_id:
                raise IntegrityError(f"object {d.id}: object not signed", d.id)
        for oid in sorted(by_id):
            if oid not in ours:
                raise IntegrityError(f"object {oid}: signed object not found", oid)
    name, want = md.header
    if hashlib.new(DIGEST_ALGORITHMS[name], header_stream(img.header)).digest() != want:
        raise HeaderIntegrityError()
    for d in objects:
        e = by_id.get(d.id)
        if e is None:
            raise IntegrityError(f"object {d.id}: object not signed", d.id)
        name, want = e.descriptor_digest
        if hashlib.new(DIGEST_ALGORITHMS[name], descriptor_stream(d, e.relative_id)).digest() != want:
            raise DescriptorIntegrityError(d.id)
        name, want = e.object_digest
        try:
            got = object_digest(img, d, DIGEST_ALGORITHMS[name])
        except (OSError, IntegrityError, SifboxError):
            raise ObjectIntegrityError(d.id) from None
        if got != want:
            raise ObjectIntegrityError(d.id)
    return list(objects)


# -- legacy signatures (spec 7.6) ---------------------------------------------------------
def legacy_digest(plaintext: bytes, hash_type: int) -> tuple[str, bytes]:
    """The digest of a legacy `SIFHASH:\\n<hex>` plaintext, for the descriptor's hash type."""
    if not plaintext.startswith(b"SIFHASH:\n"):
        raise IntegrityError("not a legacy signature")
    name = {1: "sha256", 2: "sha384", 3: "sha512"}.get(hash_type)
    if name is None:
        raise IntegrityError("hash algorithm unsupported")
    text = plaintext[len(b"SIFHASH:\n"):].strip().decode("ascii", "replace")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise IntegrityError("invalid legacy digest") from None
    if len(raw) != hashlib.new(name).digest_size:
        raise IntegrityError("invalid legacy digest")
    return name, raw


def legacy_objects_digest(img: SifImage, objects: list[Descriptor], algorithm: str) -> bytes:
    h = hashlib.new(algorithm)
    fd = image_fd(img)
    if fd is None:
        for d in objects:
            for chunk in img.iter_chunks(d, READ_SIZE):
                h.update(chunk)
        return h.digest()
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    for d in objects:
        img.check_bounds(d)
        pos, end = d.offset, d.end
        while pos < end:
            n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
            if n <= 0:
                raise IntegrityError(f"short read at offset {pos}")
            h.update(view[:n])
            pos += n
    return h.digest()
