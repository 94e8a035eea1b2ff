"""Tampering: any byte of a signed object, of a covered descriptor field or of a
covered header field breaks verification; fields outside the signature don't."""

from __future__ import annotations

import io
import struct

import pytest

from sifbox.formats.sif.image import SifImage
from sifbox.security import dsse
from sifbox.security import verify as v
from sifbox.security.integrity import (
    DescriptorIntegrityError,
    HeaderIntegrityError,
    IntegrityError,
    ObjectIntegrityError,
)
from tests.unit.sifcorpus import CORPUS

IMAGE = "one-group-signed-dsse.sif"
DESC = 4096  # slot 0; slot 1 at 4096 + 585
FIELDS = {  # descriptor field: (offset, size)
    "datatype": (0, 4), "used": (4, 1), "id": (5, 4), "group": (9, 4), "link": (13, 4), "offset": (17, 8),
    "size": (25, 8), "size_with_padding": (33, 8), "created": (41, 8), "modified": (49, 8), "uid": (57, 8),
    "gid": (65, 8), "name": (73, 128), "extra": (201, 384),
}  # fmt: skip


def keys() -> v.KeyMaterial:
    return v.KeyMaterial(None, [dsse.load_public_key((CORPUS / "keys" / "ed25519-public.pem").read_bytes())])


def data() -> bytearray:
    return bytearray((CORPUS / "images" / IMAGE).read_bytes())


def check(buf: bytearray) -> None:
    v.verify_image(SifImage.load(io.BytesIO(bytes(buf))), keys())


def test_untouched_verifies() -> None:
    check(data())


@pytest.mark.parametrize("obj,offset,size", [(1, 32768, 4), (2, 36864, 4096)])
def test_every_object_byte(obj: int, offset: int, size: int) -> None:
    base = data()
    for i in range(offset, offset + size, 1 if size < 64 else 97):
        buf = bytearray(base)
        buf[i] ^= 0x01
        with pytest.raises(ObjectIntegrityError) as info:
            check(buf)
        assert info.value.object_id == obj


@pytest.mark.parametrize("start,end", [(0, 32), (48, 64)])
def test_covered_header_bytes(start: int, end: int) -> None:
    for i in range(start, end):
        buf = data()
        buf[i] ^= 0x20
        with pytest.raises(HeaderIntegrityError):
            check(buf)


@pytest.mark.parametrize("field", ["arch", "created", "modified", "free", "total", "data_size"])
def test_uncovered_header_fields(field: str) -> None:
    offset = {"arch": 45, "created": 64, "modified": 72, "free": 80, "total": 88, "data_size": 120}[field]
    buf = data()
    if field == "arch":
        buf[45:48] = b"02\0"
    elif field == "total":
        return  # the table size follows it; changing it alone is a different image layout
    else:
        buf[offset] ^= 0x01
    check(buf)


@pytest.mark.parametrize("field", ["datatype", "link", "size", "created", "uid", "gid", "name", "extra"])
def test_covered_descriptor_fields(field: str) -> None:
    off, size = FIELDS[field]
    for slot in (0, 1):
        buf = data()
        pos = DESC + 585 * slot + off
        if field == "size":
            old = struct.unpack_from("<q", buf, pos)[0]
            struct.pack_into("<q", buf, pos, old - 1)
        else:
            buf[pos + size - 1 if field in ("name", "extra") else pos] ^= 0x01
        with pytest.raises((DescriptorIntegrityError, IntegrityError)) as info:
            check(buf)
        if field != "datatype":
            assert isinstance(info.value, DescriptorIntegrityError) and info.value.object_id == slot + 1


def test_used_flag_and_group_break_the_group() -> None:
    for field in ("used", "group"):
        buf = data()
        pos = DESC + FIELDS[field][0]
        buf[pos] = 0 if field == "used" else 2
        with pytest.raises(IntegrityError):
            check(buf)


@pytest.mark.parametrize("field", ["modified", "size_with_padding"])
def test_uncovered_descriptor_fields(field: str) -> None:
    off, _ = FIELDS[field]
    buf = data()
    buf[DESC + off] ^= 0x01
    buf[DESC + 585 + off] ^= 0x01
    check(buf)


def test_moving_an_object_with_its_bytes() -> None:
    buf = data()
    # Object 1 (4 bytes at 32768) moves to 32772, still inside the gap before object 2.
    buf[32772:32776] = buf[32768:32772]
    buf[32768:32772] = bytes(4)
    struct.pack_into("<q", buf, DESC + 17, 32772)
    check(buf)


def test_signature_object_byte() -> None:
    buf = data()
    buf[40960 + 200] ^= 0x01  # inside the base64 payload or a signature
    with pytest.raises(IntegrityError):
        check(buf)
