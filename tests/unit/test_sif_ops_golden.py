"""Every byte-image golden of `golden/sif-ops/`: the writer must reproduce them exactly.

Notation follows the corpus README section 4: G(x) generic object in group 1,
P(x, fs/pt/arch) partition (aligned 4096 by default), B(x) OCI blob with
computed digest, T = 946702800, U = de170c43-36ab-44a8-bca9-1ea1a070a274.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import pytest

from sifbox.formats.sif import constants as c
from sifbox.formats.sif import edit
from sifbox.formats.sif.image import ObjectNotFound, SifError, SifImage
from sifbox.formats.sif.integrity import descriptor_stream, header_stream
from sifbox.formats.sif.layout import (
    Descriptor,
    Header,
    crypto_message_extra,
    dump_descriptor,
    pad_extra,
    partition_extra,
    sbom_extra,
    signature_extra,
)

from .sifcorpus import GOLDEN

OPS = GOLDEN / "sif-ops"
T = 946702800
U = uuid.UUID("de170c43-36ab-44a8-bca9-1ea1a070a274").bytes
FACE, FEED = b"\xfa\xce", b"\xfe\xed"


def G(data: bytes, **kw: object) -> edit.ObjectInput:
    return edit.ObjectInput(c.DataType.GENERIC, data, **kw)  # type: ignore[arg-type]


def P(data: bytes, fs: int, pt: int, arch: str, **kw: object) -> edit.ObjectInput:
    return edit.ObjectInput(
        c.DataType.PARTITION, data, extra=partition_extra(fs, pt, arch), **kw  # type: ignore[arg-type]
    )


def B(data: bytes) -> edit.ObjectInput:
    return edit.ObjectInput(c.DataType.OCI_BLOB, data)


SQ, RAW, PRIM, SYS = c.FsType.SQUASHFS, c.FsType.RAW, c.PartType.PRIMSYS, c.PartType.SYSTEM


def golden(path: str) -> bytes:
    return (OPS / path).read_bytes()


def created(objects=(), **kw: object) -> io.BytesIO:
    kw.setdefault("deterministic", True)
    buf = io.BytesIO()
    edit.create(buf, list(objects), **kw)  # type: ignore[arg-type]
    return buf


def loaded(buf: io.BytesIO) -> SifImage:
    return SifImage.load(buf)


# -- create ------------------------------------------------------------------
CREATE_CASES: dict[str, dict[str, object]] = {
    "Empty": {},
    "EmptyCloseOnUnload": {},
    "EmptyLaunchScript": {"launch_script": b"#!/usr/bin/env launch-script\n"},
    "EmptyWithID": {"image_id": U},
    "EmptyWithTime": {"time": T},
    "EmptyDescriptorLimitedCapacity": {"capacity": 1},
    "OneDescriptor": {"objects": [G(FACE)]},
    "TwoDescriptors": {"objects": [G(FACE), P(FEED, SQ, PRIM, "386")]},
    "TwoDescriptorsNotAligned": {
        "objects": [G(FACE, alignment=0), P(FEED, SQ, PRIM, "386", alignment=0)]
    },
    "TwoDescriptorsAligned": {
        "objects": [G(FACE, alignment=4), P(FEED, SQ, PRIM, "386", alignment=4)]
    },
}


@pytest.mark.parametrize("name", sorted(CREATE_CASES))
def test_create_container(name: str) -> None:
    kw = dict(CREATE_CASES[name])
    objects = kw.pop("objects", [])
    assert created(objects, **kw).getvalue() == golden(f"TestCreateContainer/{name}.golden")


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (OPS / "TestCreateContainerAtPath").glob("*.golden"))
)
def test_create_container_at_path(name: str, tmp_path) -> None:
    kw = dict(CREATE_CASES[name])
    objects = kw.pop("objects", [])
    path = tmp_path / "image.sif"
    with open(path, "w+b") as fp:
        edit.create(fp, objects, deterministic=True, **kw)  # type: ignore[arg-type]
    assert path.read_bytes() == golden(f"TestCreateContainerAtPath/{name}.golden")


# -- add -----------------------------------------------------------------------
def _add_case(create_kw: dict, objects: list, obj: edit.ObjectInput, **add_kw: object):
    def run() -> io.BytesIO:
        buf = created(objects, **create_kw)
        edit.add_object(loaded(buf), obj, **add_kw)  # type: ignore[arg-type]
        return buf

    return run


ADD_CASES: dict[str, Callable[[], io.BytesIO]] = {
    "Deterministic": _add_case(
        {"image_id": U, "time": T, "deterministic": False}, [], G(FACE), deterministic=True
    ),
    "WithTime": _add_case({}, [], G(FACE), time=T),
    "Empty": _add_case({}, [], G(FACE)),
    "EmptyNotAligned": _add_case({}, [], G(FACE, alignment=0)),
    "EmptyAligned": _add_case({}, [], G(FACE, alignment=128)),
    "NotEmpty": _add_case({}, [G(FACE)], P(FEED, SQ, PRIM, "386")),
    "NotEmptyNotAligned": _add_case({}, [G(FACE)], P(FEED, SQ, PRIM, "386", alignment=0)),
    "NotEmptyAligned": _add_case({}, [G(FACE)], P(FEED, SQ, PRIM, "386", alignment=128)),
}


@pytest.mark.parametrize("name", sorted(ADD_CASES))
def test_add_object(name: str) -> None:
    assert ADD_CASES[name]().getvalue() == golden(f"TestAddObject/{name}.golden")


def test_add_object_insufficient_capacity() -> None:
    buf = created(capacity=0)
    before = buf.getvalue()
    with pytest.raises(SifError, match="insufficient descriptor capacity"):
        edit.add_object(loaded(buf), G(FEED))
    assert buf.getvalue() == before
    # The reference's in-memory buffer grows to 4096 bytes on the zero-length
    # table write; sifbox extends every new image to its data offset, so a
    # real file has the same 4096 bytes.
    assert before == golden("TestAddObject/ErrInsufficientCapacity.golden")


def test_add_object_second_primary_partition() -> None:
    buf = created([P(FACE, SQ, PRIM, "386")])
    with pytest.raises(SifError, match="already contains a primary partition"):
        edit.add_object(loaded(buf), P(FEED, SQ, PRIM, "amd64"))
    assert buf.getvalue() == golden("TestAddObject/ErrPrimaryPartition.golden")


# -- delete ----------------------------------------------------------------------
def _delete_case(create_kw: dict, objects: list, ids: list[int], **kw: object):
    def run() -> io.BytesIO:
        buf = created(objects, **create_kw)
        for i in ids:
            edit.delete_object(loaded(buf), i, **kw)
        return buf

    return run


TWO = [G(FACE), G(FEED)]
DELETE_CASES = {
    "Compact": _delete_case({}, TWO, [1, 2], compact=True),
    "OneZero": _delete_case({}, TWO, [1], zero=True),
    "OneCompact": _delete_case({}, TWO, [1], compact=True),
    "OneZeroCompact": _delete_case({}, TWO, [1], zero=True, compact=True),
    "TwoZero": _delete_case({}, TWO, [2], zero=True),
    "TwoCompact": _delete_case({}, TWO, [2], compact=True),
    "TwoZeroCompact": _delete_case({}, TWO, [2], zero=True, compact=True),
    "Deterministic": _delete_case(
        {"image_id": U, "time": T, "deterministic": False}, [G(FACE)], [1], deterministic=True
    ),
    "WithTime": _delete_case({}, [G(FACE)], [1], time=T),
    "PrimaryPartition": _delete_case({}, [P(FACE, SQ, PRIM, "386")], [1]),
}


@pytest.mark.parametrize("name", sorted(DELETE_CASES))
def test_delete_object(name: str) -> None:
    assert DELETE_CASES[name]().getvalue() == golden(f"TestDeleteObject/{name}.golden")


def test_delete_object_not_found() -> None:
    buf = created()
    with pytest.raises(ObjectNotFound):
        edit.delete_object(loaded(buf), 1)
    assert buf.getvalue() == golden("TestDeleteObject/ErrObjectNotFound.golden")


def _is_generic(d: Descriptor) -> bool:
    return d.data_type == c.DataType.GENERIC


def _is_primsys(d: Descriptor) -> bool:
    return d.data_type == c.DataType.PARTITION and d.partition()[1] == PRIM


@pytest.mark.parametrize(
    "name,objects,select,compact",
    [
        ("DataType", TWO, _is_generic, False),
        ("DataTypeCompact", TWO, _is_generic, True),
        ("PrimaryPartitionCompact", [P(FACE, SQ, PRIM, "386")], _is_primsys, True),
    ],
)
def test_delete_objects(name: str, objects, select, compact: bool) -> None:
    buf = created(objects)
    edit.delete_objects(loaded(buf), select, compact=compact)
    assert buf.getvalue() == golden(f"TestDeleteObjects/{name}.golden")


def test_delete_objects_errors_leave_image_unchanged() -> None:
    buf = created()
    with pytest.raises(ObjectNotFound):
        edit.delete_objects(loaded(buf), lambda d: d.id == 1)
    assert buf.getvalue() == golden("TestDeleteObjects/ErrObjectNotFound.golden")
    buf = created(TWO)
    with pytest.raises(ObjectNotFound):
        edit.delete_objects(loaded(buf), lambda d: False)
    assert buf.getvalue() == golden("TestDeleteObjects/NilSelectFunc.golden")


@pytest.mark.parametrize("name", ["Compact", "NoCompact", "Zero", "ZeroCompact"])
def test_delete_then_add_reuses_id(name: str) -> None:
    buf = created([G(b"abc"), G(b"def")])
    edit.delete_object(
        loaded(buf), 2, zero=name.startswith("Zero"), compact=name.endswith("Compact")
    )
    d = edit.add_object(loaded(buf), G(b"ghi"))
    assert (d.id, d.offset) == (2, 32179)
    assert buf.getvalue() == golden(f"TestDeleteObjectAndAddObject/{name}.golden")


# -- set primary partition ----------------------------------------------------------
def test_set_primary() -> None:
    buf = created(image_id=U, time=T, deterministic=False, objects=[P(FACE, RAW, SYS, "386")])
    edit.set_primary(loaded(buf), 1, deterministic=True)
    assert buf.getvalue() == golden("TestSetPrimPart/Deterministic.golden")

    two = [P(FACE, RAW, PRIM, "386"), P(FEED, RAW, SYS, "amd64")]
    buf = created(two)
    edit.set_primary(loaded(buf), 2, time=T)
    assert buf.getvalue() == golden("TestSetPrimPart/WithTime.golden")

    buf = created([P(FACE, RAW, SYS, "386")])
    edit.set_primary(loaded(buf), 1)
    assert buf.getvalue() == golden("TestSetPrimPart/One.golden")

    buf = created(two)
    edit.set_primary(loaded(buf), 2)
    assert buf.getvalue() == golden("TestSetPrimPart/Two.golden")

    buf = created()
    with pytest.raises(ObjectNotFound):
        edit.set_primary(loaded(buf), 1)
    assert buf.getvalue() == golden("TestSetPrimPart/ErrObjectNotFound.golden")


def test_set_primary_on_primary_is_a_no_op() -> None:
    buf = created(image_id=U, time=T, deterministic=False, objects=[P(FACE, RAW, PRIM, "386")])
    before = buf.getvalue()
    edit.set_primary(loaded(buf), 1, time=T + 1)
    assert buf.getvalue() == before


def test_set_primary_refuses_non_partitions_and_data_partitions() -> None:
    buf = created([G(FACE), P(FEED, RAW, c.PartType.DATA, "386")])
    before = buf.getvalue()
    with pytest.raises(SifError, match="not a partition"):
        edit.set_primary(loaded(buf), 1)
    with pytest.raises(SifError, match="not a system partition"):
        edit.set_primary(loaded(buf), 2)
    assert buf.getvalue() == before


# -- set metadata ---------------------------------------------------------------------
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
NEW_DIGEST = "sha256:93a6ab73f77ce27501f74bb35af9b4da5b964c62f96175a1bc0e8ba2ae0dec08"


@pytest.mark.parametrize(
    "folder,digest,op",
    [
        ("TestSetMetadata", EMPTY_DIGEST, "metadata"),
        ("TestFileImage_SetOCIBlobDigest", NEW_DIGEST, "digest"),
    ],
)
def test_set_metadata(folder: str, digest: str, op: str) -> None:
    def apply(buf: io.BytesIO, object_id: int, **kw: object) -> None:
        if op == "metadata":
            edit.set_metadata(loaded(buf), object_id, digest.encode(), **kw)  # type: ignore[arg-type]
        else:
            edit.set_oci_blob_digest(loaded(buf), object_id, digest, **kw)

    buf = created(image_id=U, time=T, deterministic=False, objects=[B(FACE)])
    apply(buf, 1, deterministic=True)
    assert buf.getvalue() == golden(f"{folder}/Deterministic.golden")
    buf = created([B(FACE)])
    apply(buf, 1, time=T)
    assert buf.getvalue() == golden(f"{folder}/WithTime.golden")
    buf = created([B(FACE)])
    apply(buf, 1)
    assert buf.getvalue() == golden(f"{folder}/One.golden")
    buf = created([B(FACE), B(FEED)])
    apply(buf, 2)
    assert buf.getvalue() == golden(f"{folder}/Two.golden")
    if op == "metadata":
        buf = created()
        with pytest.raises(ObjectNotFound):
            apply(buf, 1)
        assert buf.getvalue() == golden(f"{folder}/ErrObjectNotFound.golden")


def test_set_oci_blob_digest_refuses_other_types() -> None:
    buf = created([G(FACE)])
    with pytest.raises(SifError, match="not an OCI"):
        edit.set_oci_blob_digest(loaded(buf), 1, NEW_DIGEST)


# -- new descriptors (before placement) -------------------------------------------------
FP = bytes.fromhex("12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84")
NEW_DESCRIPTOR_CASES: dict[str, edit.ObjectInput] = {
    "Empty": G(b""),
    "OptNoGroup": G(b"", group_id=0),
    "OptGroupID": G(b"", group_id=2),
    "OptLinkedID": G(b"", link=edit.link_object(1)),
    "OptLinkedGroupID": G(b"", link=edit.link_group(1)),
    "OptObjectAlignment": G(b"", alignment=8),
    "OptObjectName": G(b"", name="name"),
    "OptObjectTime": G(b"", time=T),
    "OptMetadata": G(b"", extra=b'{"Value":100}'),
    "OptCryptoMessageMetadata": edit.ObjectInput(
        c.DataType.CRYPTO_MESSAGE,
        extra=crypto_message_extra(c.FormatType.OPENPGP, c.MessageType.CLEAR_SIGNATURE),
    ),
    "OptPartitionMetadata": P(b"", SQ, PRIM, "386"),
    "OptSignatureMetadata": edit.ObjectInput(
        c.DataType.SIGNATURE, extra=signature_extra(c.HashType.SHA256, FP)
    ),
    "OptSBOMMetadata": edit.ObjectInput(
        c.DataType.SBOM, extra=sbom_extra(c.SbomFormat.CYCLONEDX_JSON)
    ),
    "DataOCIRootIndex": edit.ObjectInput(c.DataType.OCI_ROOT_INDEX),
    "DataOCIBlob": edit.ObjectInput(c.DataType.OCI_BLOB),
}


@pytest.mark.parametrize("name", sorted(NEW_DESCRIPTOR_CASES))
def test_new_descriptor_input(name: str) -> None:
    d = edit.fill_descriptor(NEW_DESCRIPTOR_CASES[name], c.ZERO_TIME)
    assert dump_descriptor(d) == golden(f"TestNewDescriptorInput/{name}.golden")


def test_goldens_are_all_covered() -> None:
    folders = {p.name for p in OPS.iterdir() if p.is_dir()}
    assert folders == {
        "TestAddObject",
        "TestCreateContainer",
        "TestCreateContainerAtPath",
        "TestDeleteObject",
        "TestDeleteObjectAndAddObject",
        "TestDeleteObjects",
        "TestDescriptor_GetIntegrityReader",
        "TestFileImage_SetOCIBlobDigest",
        "TestHeader_GetIntegrityReader",
        "TestNewDescriptorInput",
        "TestSetMetadata",
        "TestSetPrimPart",
    }
    assert {p.stem for p in (OPS / "TestAddObject").glob("*.golden")} == set(ADD_CASES) | {
        "ErrInsufficientCapacity",
        "ErrPrimaryPartition",
    }
    assert {p.stem for p in (OPS / "TestDeleteObject").glob("*.golden")} == set(DELETE_CASES) | {
        "ErrObjectNotFound"
    }
    assert {p.stem for p in (OPS / "TestNewDescriptorInput").glob("*.golden")} == set(
        NEW_DESCRIPTOR_CASES
    )
    assert {p.stem for p in (OPS / "TestCreateContainer").glob("*.golden")} == set(CREATE_CASES)


# -- integrity streams --------------------------------------------------------------------
BASE_HEADER = Header(
    launch_script=c.RUN_SINGULARITY,
    arch=c.ARCH_CODES["amd64"],
    image_id=uuid.UUID("b2659d4e-bd50-4ea5-bd17-eec5e54f918e").bytes,
    created_at=1504657553,
    modified_at=1504657653,
)


def _bump_first_byte(b: bytes) -> bytes:
    return bytes([(b[0] + 1) & 0xFF]) + b[1:]


HEADER_CHANGES: dict[str, dict[str, object]] = {
    "Arch": {"arch": c.ARCH_CODES["386"]},
    "CreatedAt": {"created_at": 1},
    "ModifiedAt": {"modified_at": 1},
    "DescriptorsFree": {"descriptors_free": 1},
    "DescriptorsTotal": {"descriptors_total": 1},
    "DescriptorsOffset": {"descriptors_offset": 1},
    "DescriptorsSize": {"descriptors_size": 1},
    "DataOffset": {"data_offset": 1},
    "DataSize": {"data_size": 1},
    "LaunchScript": {
        "launch_script": b"#!/usr/bin/env rm\n" + c.RUN_SINGULARITY[18:].ljust(14, b"\0")
    },
    "Magic": {"magic": b"BAD_MAGIC\0"},
    "Version": {"version": b"02\0"},
    "ID": {"image_id": _bump_first_byte(BASE_HEADER.image_id)},
}


@pytest.mark.parametrize("name", sorted(HEADER_CHANGES))
def test_header_integrity_stream(name: str) -> None:
    h = BASE_HEADER.replace(**HEADER_CHANGES[name])
    launch = h.launch_script.ljust(32, b"\0")
    stream = header_stream(h.replace(launch_script=launch))
    assert len(stream) == 61
    assert stream == golden(f"TestHeader_GetIntegrityReader/{name}.golden")


BASE_DESCRIPTOR = Descriptor(
    data_type=c.DataType.DEFFILE,
    used=True,
    id=1,
    raw_group=1 | c.GROUP_MASK,
    created_at=1504657553,
    modified_at=1504657553,
    raw_name=b"GOOD_NAME".ljust(128, b"\0"),
    extra=pad_extra(b"GOOD_EXTRA"),
)
DESCRIPTOR_CHANGES: dict[str, tuple[dict[str, object], int]] = {
    "ID": ({"id": 2}, 0),
    "GroupID": ({"raw_group": 2 | c.GROUP_MASK}, 0),
    "Offset": ({"offset": 1}, 0),
    "SizeWithPadding": ({"size_with_padding": 1}, 0),
    "ModifiedAt": ({"modified_at": 1}, 0),
    "DataType": ({"data_type": c.DataType.ENVVAR}, 0),
    "Used": ({"used": False}, 0),
    "RelativeID": ({}, 1),
    "LinkedID": ({"raw_link": 1}, 0),
    "Size": ({"size": 1}, 0),
    "CreatedAt": ({"created_at": 1504657554}, 0),
    "UID": ({"uid": 1}, 0),
    "GID": ({"gid": 1}, 0),
    # The reference test copies the bad value over the good one in place, so
    # the last byte of the longer good value stays.
    "Name": ({"raw_name": b"BAD_NAMEE".ljust(128, b"\0")}, 0),
    "Extra": ({"extra": pad_extra(b"BAD_EXTRAA")}, 0),
}


@pytest.mark.parametrize("name", sorted(DESCRIPTOR_CHANGES))
def test_descriptor_integrity_stream(name: str) -> None:
    changes, rid = DESCRIPTOR_CHANGES[name]
    stream = descriptor_stream(BASE_DESCRIPTOR.replace(**changes), rid)
    assert stream == golden(f"TestDescriptor_GetIntegrityReader/{name}.golden")
