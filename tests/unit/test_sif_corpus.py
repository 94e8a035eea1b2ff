"""The 21 corpus images: reading them reproduces the reference tool's outputs,
and the writer rebuilds every unsigned image of `gen_sifs.go` byte for byte."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from sifbox.formats.sif import constants as c
from sifbox.formats.sif import edit, render
from sifbox.formats.sif.image import SifImage
from sifbox.formats.sif.layout import crypto_message_extra, partition_extra, sbom_extra

from .sifcorpus import GOLDEN, IMAGES, INPUTS

APP = GOLDEN / "siftool-app"
CMD = GOLDEN / "siftool-cmd"
ALL_IMAGES = sorted(p.name for p in IMAGES.glob("*.sif"))


def golden_name(image: str) -> str:
    """one-group-signed-pgp.sif -> OneGroupSignedPGP (the goldens' naming)."""
    special = {"pgp": "PGP", "dsse": "DSSE", "id": "ID", "json": "JSON", "oci": "OCI"}
    special["sbom"] = "SBOM"
    return "".join(special.get(p, p.capitalize()) for p in image[:-4].split("-"))


def load(name: str) -> SifImage:
    return SifImage.load(io.BytesIO((IMAGES / name).read_bytes()))


def test_corpus_is_complete() -> None:
    assert len(ALL_IMAGES) == 21


@pytest.mark.parametrize("image", ALL_IMAGES)
@pytest.mark.parametrize("kind", ["Header", "List"])
def test_header_and_list_goldens(image: str, kind: str) -> None:
    path = APP / f"TestApp_{kind}" / f"{golden_name(image)}.golden"
    if not path.exists():
        # Only the two DSSE images have no golden; their expected output is
        # checked by the DSSE test below.
        assert "dsse" in image
        return
    render_fn = render.header_text if kind == "Header" else render.list_text
    assert render_fn(load(image)) == path.read_text()


def test_every_header_and_list_golden_has_an_image() -> None:
    names = {golden_name(i) for i in ALL_IMAGES}
    for kind in ("Header", "List"):
        assert {p.stem for p in (APP / f"TestApp_{kind}").glob("*.golden")} <= names


def test_dsse_images_render_like_the_pgp_ones_but_without_entity() -> None:
    one = render.list_text(load("one-group-signed-dsse.sif"))
    assert "|NONE    |1   (G) |40960-42654               |Signature (SHA-256)" in one
    info = render.info_text(load("one-group-signed-dsse.sif").get(3))
    assert "Entity" not in info and "Hash Type:  SHA-256" in info


INFO_CASES = [
    ("one-object-time.sif", 1, "Time"),
    ("one-object-generic-json.sif", 1, "GenericJSON"),
    ("one-object-crypt-message.sif", 1, "CryptMessage"),
    ("one-object-sbom.sif", 1, "SBOM"),
    ("one-object-oci-root-index.sif", 1, "OCIRootIndex"),
    ("one-object-oci-blob.sif", 1, "OCIBlob"),
    ("two-groups-signed-pgp.sif", 1, "DataPartitionRaw"),
    ("two-groups-signed-pgp.sif", 2, "DataPartitionSquashFS"),
    ("two-groups-signed-pgp.sif", 3, "DataPartitionEXT3"),
    ("two-groups-signed-pgp.sif", 4, "DataSignature"),
]


@pytest.mark.parametrize("image,object_id,golden", INFO_CASES)
def test_info_goldens(image: str, object_id: int, golden: str) -> None:
    expected = (APP / "TestApp_Info" / f"{golden}.golden").read_text()
    assert render.info_text(load(image).get(object_id)) == expected


def test_info_goldens_are_all_covered() -> None:
    assert {p.stem for p in (APP / "TestApp_Info").glob("*.golden")} == {g for *_, g in INFO_CASES}


@pytest.mark.parametrize("object_id,golden", [(1, "One"), (2, "Two")])
def test_dump_goldens(object_id: int, golden: str) -> None:
    img = load("one-group.sif")
    data = img.read(img.get(object_id))
    assert data == (APP / "TestApp_Dump" / f"{golden}.golden").read_bytes()
    assert b"".join(img.iter_chunks(img.get(object_id), chunk=7)) == data


# -- rebuilding the unsigned images -------------------------------------------------
T_2020 = 1593475316  # 2020-06-30 00:01:56 UTC


def _json() -> edit.ObjectInput:
    return edit.ObjectInput(c.DataType.GENERIC_JSON, b"{}", name="data.json")


def _part(data: bytes, fs: int, pt: int, arch: str, group: int = 1) -> edit.ObjectInput:
    return edit.ObjectInput(
        c.DataType.PARTITION, data, extra=partition_extra(fs, pt, arch), group_id=group
    )


def _inp(name: str) -> bytes:
    return (INPUTS / name).read_bytes()


SYSTEM = (b"\xfa\xce\xfe\xed", c.FsType.RAW, c.PartType.SYSTEM, "386")
RECIPES: dict[str, tuple[dict[str, object], list[edit.ObjectInput]]] = {
    "empty.sif": ({}, []),
    "empty-id.sif": ({"image_id": uuid.UUID("3fa802cc-358b-45e3-bcc0-69dc7a45f9f8").bytes}, []),
    "empty-launch-script.sif": ({"launch_script": b"#!/usr/bin/env run-script\n"}, []),
    "one-object-time.sif": ({"time": T_2020}, [_json()]),
    "one-object-generic-json.sif": ({}, [_json()]),
    "one-object-crypt-message.sif": (
        {},
        [
            edit.ObjectInput(
                c.DataType.CRYPTO_MESSAGE,
                b"\xfe\xfe\xf0\xf0",
                extra=crypto_message_extra(c.FormatType.OPENPGP, c.MessageType.CLEAR_SIGNATURE),
            )
        ],
    ),
    "one-object-sbom.sif": (
        {},
        [
            edit.ObjectInput(
                c.DataType.SBOM,
                _inp("sbom.cdx.json"),
                extra=sbom_extra(c.SbomFormat.CYCLONEDX_JSON),
            )
        ],
    ),
    "one-object-oci-root-index.sif": (
        {},
        [edit.ObjectInput(c.DataType.OCI_ROOT_INDEX, _inp("index.json"))],
    ),
    "one-object-oci-blob.sif": ({}, [edit.ObjectInput(c.DataType.OCI_BLOB, _inp("oci-config.json"))]),
    "one-group.sif": (
        {},
        [
            _part(*SYSTEM),
            _part(_inp("root.squashfs"), c.FsType.SQUASHFS, c.PartType.PRIMSYS, "386"),
        ],
    ),
    "two-groups.sif": (
        {},
        [
            _part(*SYSTEM),
            _part(_inp("root.squashfs"), c.FsType.SQUASHFS, c.PartType.PRIMSYS, "386"),
            _part(_inp("root.ext3"), c.FsType.EXT3, c.PartType.SYSTEM, "amd64", group=2),
        ],
    ),
}


@pytest.mark.parametrize("image", sorted(RECIPES))
def test_rebuild_unsigned_images(image: str) -> None:
    kw, objects = RECIPES[image]
    buf = io.BytesIO()
    edit.create(buf, objects, deterministic=True, **kw)  # type: ignore[arg-type]
    assert buf.getvalue() == (IMAGES / image).read_bytes()


def test_rebuild_by_adding_one_object_at_a_time(tmp_path: Path) -> None:
    """Adding objects one by one to a real file gives the same bytes as creating with them."""
    _, objects = RECIPES["two-groups.sif"]
    path = tmp_path / "two-groups.sif"
    with open(path, "w+b") as fp:
        edit.create(fp, [], deterministic=True)
        for obj in objects:
            fp.seek(0)
            edit.add_object(SifImage.load(fp), obj)
    assert path.read_bytes() == (IMAGES / "two-groups.sif").read_bytes()


def test_legacy_layout_is_read_with_its_data_offset() -> None:
    img = load("one-group-signed-legacy.sif")
    assert img.header.data_offset == c.LEGACY_DATA_OFFSET
    assert [d.offset % 4096 for d in img.objects()] == [0, 0, 0]
    assert img.objects()[2].name == "part-signature"
    assert (img.objects()[0].uid, img.objects()[0].gid) == (1000, 1000)


def test_queries() -> None:
    img = load("two-groups-signed-pgp.sif")
    assert img.groups() == [1, 2]
    assert [d.id for d in img.group(1)] == [1, 2]
    prim = img.primary_partition()
    assert prim is not None and prim.id == 2
    assert img.get(4).linked_id == (1, True)
    assert img.digest(img.get(2)) == img.digest(load("one-group.sif").get(2))
    assert not load("empty.sif").has_objects
