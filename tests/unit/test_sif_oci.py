"""OCI-SIF (spec §8): SingularityCE 4's layout written and read back, and a reader that
holds against hostile files (one `OciSifError` line, never another exception, never an
unbounded read).
"""

from __future__ import annotations

import io
import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sifbox.formats.sif import SifImage, oci
from sifbox.formats.sif import constants as c
from sifbox.formats.sif.image import SifError

CORPUS = Path(__file__).resolve().parents[1] / "data" / "sif-corpus" / "images"
SQUASHFS = b"hsqs" + bytes(96)  # a layer's bytes (the reader does not look inside)
CONFIG: dict[str, Any] = {
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/bin/echo"], "Cmd": ["hi"], "Env": ["A=1"], "WorkingDir": "/w",
               "Labels": {"org.example": "yes"}},
    "rootfs": {"type": "layers", "diff_ids": [oci.sha256(SQUASHFS)]},
}  # fmt: skip


def _cfg(doc: dict[str, Any] | None = None) -> bytes:
    return json.dumps(doc or CONFIG, separators=(",", ":")).encode()


def image(layers: tuple[bytes, ...] = (SQUASHFS,), config: bytes | None = None, *,
          manifest: bytes | None = None, index: bytes | None = None, extra: tuple[bytes, ...] = ()) -> bytes:  # fmt: skip
    """An OCI-SIF of `layers` (bytes), written by the formats writer."""
    config = _cfg() if config is None else config
    if manifest is None:
        manifest = oci.manifest_for(config, [(oci.sha256(x), len(x)) for x in layers])
    if index is None:
        index = oci.index_for([manifest])
    f = io.BytesIO()
    oci.write(f, [*layers, config, manifest, *extra], index)
    return f.getvalue()


def load(data: bytes, arch: str = "amd64") -> oci.OciImage:
    return oci.load_image(SifImage.from_bytes(data), arch)


def error(data: bytes, arch: str = "amd64") -> str:
    with pytest.raises(oci.OciSifError) as info:
        load(data, arch)
    message = str(info.value)
    assert "\n" not in message
    return message


def set_descriptor(data: bytes, index: int, field_offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, c.DESCRIPTORS_OFFSET + index * c.DESCRIPTOR_SIZE + field_offset, value)
    return bytes(buf)


# -- the layout -------------------------------------------------------------------------------
def test_written_layout_is_singularityce_s() -> None:
    data = image()
    img = SifImage.from_bytes(data)
    h = img.header
    assert h.image_id == bytes(16) and h.created_at == h.modified_at == c.ZERO_TIME  # deterministic
    assert h.descriptors_total == 4 and h.descriptors_free == 0  # exactly the objects
    assert h.launch_script_text == ""
    objs = img.objects()
    assert [d.data_type for d in objs] == [c.DataType.OCI_BLOB] * 3 + [c.DataType.OCI_ROOT_INDEX]
    for d in objs:
        assert d.group_id == 1 and d.name == "" and d.linked_id == (0, False)
        assert d.oci_digest() == oci.sha256(img.read(d))
    # no alignment: each object starts where the previous one ends
    assert objs[0].offset == h.data_offset
    assert all(a.offset + a.size == b.offset for a, b in itertools.pairwise(objs))
    index = json.loads(img.read(objs[-1]))
    assert index == {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                     "manifests": [{"mediaType": oci.OCI_MANIFEST, "size": objs[2].size,
                                    "digest": objs[2].oci_digest()}]}  # fmt: skip
    manifest = json.loads(img.read(objs[2]))
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
    assert manifest["config"]["mediaType"] == oci.OCI_CONFIG
    assert manifest["layers"] == [{"mediaType": oci.SQUASHFS_LAYER, "size": len(SQUASHFS),
                                   "digest": oci.sha256(SQUASHFS)}]  # fmt: skip
    assert image() == data  # reproducible


def test_read_back_one_and_many_layers() -> None:
    got = load(image())
    assert got.config == CONFIG and got.overlay is None
    [layer] = got.layers
    assert (layer.media_type, layer.size) == (oci.SQUASHFS_LAYER, len(SQUASHFS))
    assert image()[layer.offset : layer.offset + layer.size] == SQUASHFS
    top = b"hsqs" + b"\1" * 50
    two = load(image((SQUASHFS, top)))
    assert [x.size for x in two.layers] == [len(SQUASHFS), len(top)]


def test_streamed_layer_and_spare_descriptors() -> None:
    config = _cfg()
    manifest = oci.manifest_for(config, [(oci.sha256(SQUASHFS), len(SQUASHFS))])
    f = io.BytesIO()
    oci.write(f, [(io.BytesIO(SQUASHFS), len(SQUASHFS), oci.sha256(SQUASHFS)), config, manifest],
              oci.index_for([manifest]), spare=2)
    img = SifImage.from_bytes(f.getvalue())
    assert img.header.descriptors_total == 6 and img.header.descriptors_free == 2
    assert load(f.getvalue()).layers[0].digest == oci.sha256(SQUASHFS)
    with pytest.raises(oci.OciSifError):
        oci.write(io.BytesIO(), [(io.BytesIO(SQUASHFS), len(SQUASHFS), "sha256:bad")], b"{}")


def test_squashed_config() -> None:
    got = json.loads(oci.squashed_config({**CONFIG, "history": [{"created_by": "x"}], "junk": 1}, "sha256:" + "1" * 64,
                                         created="2023-11-14T22:13:20Z", created_by="sifbox t",
                                         source_digest="sha256:" + "2" * 64))  # fmt: skip
    assert list(got) == ["architecture", "history", "os", "rootfs", "config"]
    assert got["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}
    assert got["history"] == [{"created_by": "x"}, {"created": "2023-11-14T22:13:20Z", "created_by": "sifbox t",
                                                    "comment": "oci-sif created from " + "2" * 64}]  # fmt: skip
    assert got["config"] == CONFIG["config"]


def test_generated_singularity_files_follow_the_config() -> None:
    files = {p: (d, m) for p, d, m in oci.singularity_files(CONFIG)}
    assert all(p.startswith("/.singularity.d/") for p in files)
    runscript, mode = files["/.singularity.d/runscript"]
    assert mode & 0o111 and b"/bin/echo" in runscript and b'"hi"' in runscript
    assert b"A=" in files["/.singularity.d/env/10-docker2singularity.sh"][0]
    assert json.loads(files["/.singularity.d/labels.json"][0]) == {"org.example": "yes"}


# -- hostile files ----------------------------------------------------------------------------
def test_corpus_single_object_images_are_refused_in_one_line() -> None:
    root_only = (CORPUS / "one-object-oci-root-index.sif").read_bytes()
    assert "invalid digest `sha256:abcdef1234567890`" in error(root_only)
    blob_only = (CORPUS / "one-object-oci-blob.sif").read_bytes()
    assert "no OCI.RootIndex" in error(blob_only)


@pytest.mark.parametrize("index, reason", [
    (b"{not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"manifests": 3}', "no list of `manifests`"),
    ((b'{"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:../..",'
     b' "size": 1}]}'), "invalid digest"),
    (b'{"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:'
     + b"0" * 64 + b'", "size": -1}]}', "invalid size"),
    (b'{"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:'
     + b"0" * 64 + b'", "size": 10}]}', "missing from the image"),
    (b'{"manifests": []}', "holds no image for linux/amd64"),
    (b'{"manifests": [' + b"{}," * 2000 + b"{}]}", "at most 1024"),
])  # fmt: skip
def test_malformed_root_index(index: bytes, reason: str) -> None:
    assert reason in error(image(index=index))


def test_two_root_indexes_are_refused() -> None:
    from sifbox.formats.sif import edit

    config = _cfg()
    manifest = oci.manifest_for(config, [(oci.sha256(SQUASHFS), len(SQUASHFS))])
    g = io.BytesIO()
    edit.create(g, [edit.ObjectInput(c.DataType.OCI_BLOB, x) for x in (SQUASHFS, config, manifest)]
                + [edit.ObjectInput(c.DataType.OCI_ROOT_INDEX, oci.index_for([manifest]))] * 2,
                deterministic=True)  # fmt: skip
    assert "2 OCI.RootIndex objects" in error(g.getvalue())


def test_blob_size_and_content_must_match_their_descriptors() -> None:
    config = _cfg()
    good = oci.manifest_for(config, [(oci.sha256(SQUASHFS), len(SQUASHFS))])
    wrong_size = good.replace(f'"size":{len(SQUASHFS)}'.encode(), b'"size":5')
    assert "its descriptor says 5" in error(image(manifest=wrong_size))
    # a manifest blob whose bytes do not hash to the digest the index names (extra forged)
    tampered = good.replace(b"schemaVersion", b"schemaVersioN")
    data = image(manifest=tampered, index=oci.index_for([good]))
    assert "missing from the image" in error(data)
    from sifbox.formats.sif import edit

    f = io.BytesIO(data)
    edit.set_oci_blob_digest(SifImage.load(f), 3, oci.sha256(good))
    assert "does not match its digest" in error(f.getvalue())


def test_blob_past_the_end_of_the_file() -> None:
    data = image()
    # layer 1 (slot 0): offset moved past the end of the file
    assert "outside the file" in error(set_descriptor(data, 0, 17, "<q", len(data) + 4096))
    # a negative offset
    assert "outside the file" in error(set_descriptor(data, 0, 17, "<q", -1))


def test_root_index_past_the_end_or_huge(monkeypatch: pytest.MonkeyPatch) -> None:
    data = image()
    with pytest.raises(SifError):
        load(set_descriptor(data, 3, 25, "<q", 1 << 62))
    monkeypatch.setattr(oci, "MAX_DOCUMENT", 64)
    assert "more than the 64 allowed" in error(data)


def test_nested_indexes_are_bounded_and_can_not_cycle() -> None:
    config = _cfg()
    manifest = oci.manifest_for(config, [(oci.sha256(SQUASHFS), len(SQUASHFS))])
    inner = oci.index_for([manifest])
    nest = [inner]
    for _ in range(oci.MAX_DEPTH):
        nest.append(json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
            {"mediaType": oci.OCI_INDEX, "size": len(nest[-1]), "digest": oci.sha256(nest[-1])}]}).encode())  # fmt: skip
    ok = image(index=nest[1], extra=(inner,))
    assert load(ok).manifest_digest == oci.sha256(manifest)
    deep = image(index=nest[-1], extra=tuple(nest[:-1]))
    assert f"nested more than {oci.MAX_DEPTH} deep" in error(deep)
    # An index naming itself: its bytes can't hash to their own digest, so the blob the
    # digest names (a forged extra) fails the check instead of looping.
    fake = "sha256:" + "a" * 64
    cyclic = b""
    while True:  # a document that states its own size
        again = json.dumps({"manifests": [{"mediaType": oci.OCI_INDEX, "size": len(cyclic), "digest": fake}]})
        done = len(again) == len(cyclic)
        cyclic = again.encode()
        if done:
            break
    data = image(index=cyclic, extra=(cyclic,))
    from sifbox.formats.sif import edit

    f = io.BytesIO(data)
    img = SifImage.load(f)
    edit.set_oci_blob_digest(img, 4, fake)
    assert "does not match its digest" in error(f.getvalue())


def test_platforms_and_layer_types() -> None:
    config = _cfg()
    manifest = oci.manifest_for(config, [(oci.sha256(SQUASHFS), len(SQUASHFS))])
    arm = {"mediaType": oci.OCI_MANIFEST, "size": len(manifest), "digest": oci.sha256(manifest),
           "platform": {"architecture": "arm64", "os": "linux"}}  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "manifests": [arm]}).encode()
    assert "holds no image for linux/amd64 (it holds: linux/arm64)" in error(image(index=index))
    assert load(image(index=index), "arm64").layers
    tar = manifest.replace(oci.SQUASHFS_LAYER.encode(), b"application/vnd.oci.image.layer.v1.tar+gzip")
    message = error(image(manifest=tar, index=oci.index_for([tar])))
    assert "application/vnd.oci.image.layer.v1.tar+gzip" in message and "SquashFS" in message
    no_config = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    assert "no config" in error(image(manifest=no_config, index=oci.index_for([no_config])))
    not_json = b"\xff\xfe"
    bad_config = oci.manifest_for(not_json, [(oci.sha256(SQUASHFS), len(SQUASHFS))])
    assert "image config is not valid JSON" in error(image(config=not_json, manifest=bad_config,
                                                           index=oci.index_for([bad_config])))  # fmt: skip


def test_container_files_stay_in_their_layer(tmp_path: Path) -> None:
    from sifbox.runtime.sandbox.rootfs import _write_file

    _write_file(str(tmp_path), "/.singularity.d/runscript", b"#!/bin/sh\n", 0o755)
    assert (tmp_path / ".singularity.d/runscript").stat().st_mode & 0o777 == 0o755
    for bad in ("/../escape", "/a/../../b", "/"):
        with pytest.raises(ValueError):
            _write_file(str(tmp_path), bad, b"", 0o644)
    (tmp_path / "link").symlink_to("/etc/passwd")
    with pytest.raises(OSError):
        _write_file(str(tmp_path), "/link", b"x", 0o644)


# -- properties: any damage is an OciSifError (or the SIF reader's SifError), nothing else ----
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
    | st.sampled_from([oci.OCI_MANIFEST, oci.OCI_INDEX, oci.SQUASHFS_LAYER, "sha256:" + "0" * 64]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["manifests", "layers", "config", "digest", "size", "mediaType", "platform", "x"]),
        inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


@PROPERTY
@given(doc=JSON)
def test_any_root_index_document(doc: object) -> None:
    data = image(index=json.dumps(doc).encode())
    try:
        load(data)
    except oci.OciSifError as err:
        assert "\n" not in str(err)


GOOD = image()


@PROPERTY
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8))
def test_damaged_bytes(flips: list[tuple[int, int]]) -> None:
    buf = bytearray(GOOD)
    for at, xor in flips:
        buf[at % len(buf)] ^= xor
    try:
        load(bytes(buf))
    except SifError as err:
        assert "\n" not in str(err)
