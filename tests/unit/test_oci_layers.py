"""Merging layers from their headers, and the one merged tar stream (no tar2sqfs here)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sifbox.oci import layout as L
from sifbox.oci.layers import (
    Extra,
    LayerError,
    Merger,
    iter_members,
    open_layer,
    open_tar,
    write_merged,
)
from tests.unit.test_oci_layout import make_layout, tar_layer


def merge(tmp_path: Path, layers: list[list[dict]], extra: list[Extra] | None = None,
          compress: bool = True) -> tuple[dict[str, tuple[tarfile.TarInfo, bytes]], list[str]]:  # fmt: skip
    """Run both passes over a layout made of `layers`; return the merged tar as
    {name: (info, data)} and the warnings."""
    root = make_layout(tmp_path / "lay", [tar_layer(x) for x in layers], compress=compress)
    img = L.open_image(L.parse_source(f"oci:{root}"))
    m = Merger()
    for i in range(len(img.layers)):
        with open_layer(img, i) as s:
            m.add_layer(i, iter_members(open_tar(s, "t"), "t"))
            s.finish()
    m.add_extra(extra or [])
    out = io.BytesIO()
    write_merged(m.plan(), img, out, extra_layer=m.layer_count - 1)
    out.seek(0)
    result = {}
    with tarfile.open(fileobj=out, mode="r:") as tf:
        for t in tf:
            data = tf.extractfile(t).read() if t.isreg() else b""  # type: ignore[union-attr]
            assert t.name.rstrip("/") not in result, f"duplicate {t.name}"
            result[t.name.rstrip("/")] = (t, data)
    return result, m.warnings


def names(result: dict) -> set[str]:
    return set(result) - {"."}


def test_later_layers_override_and_whiteouts_delete(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [
        [{"name": "a", "type": "dir"}, {"name": "a/x", "data": b"x1"}, {"name": "a/y", "data": b"y"},
         {"name": "b/z", "data": b"z"}, {"name": "c", "data": b"c1"}],
        [{"name": "a/.wh.x"}, {"name": ".wh.b"}, {"name": "c", "data": b"c2", "mode": 0o4755, "uid": 7}],
    ])  # fmt: skip
    assert names(r) == {"a", "a/y", "c"}
    assert r["c"][1] == b"c2" and r["c"][0].mode == 0o4755 and r["c"][0].uid == 7
    assert warnings == []


def test_opaque_directory_hides_lower_content(tmp_path: Path) -> None:
    r, _ = merge(tmp_path, [
        [{"name": "d/old", "data": b"o"}, {"name": "d/sub/f", "data": b"f"}, {"name": "e/keep", "data": b"k"}],
        [{"name": "d", "type": "dir", "mode": 0o700}, {"name": "d/new", "data": b"n"},
         {"name": "d/.wh..wh..opq"}],
    ])  # fmt: skip
    assert names(r) == {"d", "d/new", "e/keep"}  # implicit parents are left to tar2sqfs
    assert r["d"][0].mode == 0o700


def test_file_replaces_directory_and_back(tmp_path: Path) -> None:
    r, _ = merge(tmp_path, [
        [{"name": "p/q/r", "data": b"r"}, {"name": "f", "data": b"f"}],
        [{"name": "p", "data": b"now a file"}, {"name": "f", "type": "dir"}, {"name": "f/g", "data": b"g"}],
    ])  # fmt: skip
    assert names(r) == {"p", "f", "f/g"}
    assert r["p"][0].isreg() and r["f"][0].isdir()


def test_hard_links_keep_their_data_when_the_target_is_replaced(tmp_path: Path) -> None:
    r, _ = merge(tmp_path, [
        [{"name": "bin/f", "data": b"old", "mode": 0o755}, {"name": "bin/l", "type": "hardlink", "target": "bin/f"}],
        [{"name": "bin/f", "data": b"new"}],
    ])  # fmt: skip
    assert r["bin/f"][1] == b"new"
    assert r["bin/l"][0].isreg() and r["bin/l"][1] == b"old"


def test_hard_links_are_kept(tmp_path: Path) -> None:
    r, _ = merge(tmp_path, [[{"name": "f", "data": b"same"}, {"name": "g", "type": "hardlink", "target": "f"},
                             {"name": "h", "type": "hardlink", "target": "./g"}]])  # fmt: skip
    assert r["f"][0].isreg() and r["g"][0].islnk() and r["h"][0].islnk()
    assert r["g"][0].linkname == "f" and r["h"][0].linkname == "f"


def test_special_files_and_symlinks(tmp_path: Path) -> None:
    r, _ = merge(tmp_path, [[{"name": "dev/null", "type": "chr", "dev": (1, 3), "mode": 0o666},
                             {"name": "run/fifo", "type": "fifo"},
                             {"name": "lib", "type": "symlink", "target": "usr/lib"}]])  # fmt: skip
    assert r["dev/null"][0].ischr() and (r["dev/null"][0].devmajor, r["dev/null"][0].devminor) == (1, 3)
    assert r["run/fifo"][0].isfifo()
    assert r["lib"][0].issym() and r["lib"][0].linkname == "usr/lib"


def test_directories_come_before_files(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "lay", [tar_layer([{"name": "a/b/c", "data": b"1"}]),
                                          tar_layer([{"name": "a", "type": "dir", "mode": 0o750}])])  # fmt: skip
    img = L.open_image(L.parse_source(f"oci:{root}"))
    m = Merger()
    for i in range(2):
        with open_layer(img, i) as s:
            m.add_layer(i, iter_members(open_tar(s, "t"), "t"))
    out = io.BytesIO()
    write_merged(m.plan(), img, out, extra_layer=2)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:") as tf:
        order = [t.name for t in tf]
    assert order == ["a", "a/b/c"]


# -- untrusted layers -------------------------------------------------------------------
def test_path_traversal_is_skipped(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [[{"name": "../../etc/evil", "data": b"x"},
                                    {"name": "ok/../../up", "data": b"x"}, {"name": "fine", "data": b"y"}]])  # fmt: skip
    assert names(r) == {"fine"}
    assert sum("leaves the image" in w for w in warnings) == 2


def test_absolute_names_are_made_relative(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [[{"name": "/etc/abs", "data": b"x"}]], compress=False)
    assert names(r) == {"etc/abs"}
    assert any("absolute name" in w for w in warnings)


def test_symlinked_parent_is_followed_inside_the_image(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [
        [{"name": "etc/passwd", "data": b"image"}, {"name": "evil", "type": "symlink", "target": "/etc"},
         {"name": "up", "type": "symlink", "target": "../../../../etc"}],
        [{"name": "evil/passwd", "data": b"replaced"}, {"name": "up/shadow", "data": b"s"}],
    ])  # fmt: skip
    assert r["etc/passwd"][1] == b"replaced"
    assert r["etc/shadow"][1] == b"s"
    assert "evil/passwd" not in r
    assert sum("lies under a symbolic link" in w for w in warnings) == 2


def test_symlink_loop_is_skipped(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [[{"name": "a", "type": "symlink", "target": "b"},
                                    {"name": "b", "type": "symlink", "target": "a"},
                                    {"name": "a/x", "data": b"x"}]])  # fmt: skip
    assert "a/x" not in r and "b/x" not in r
    assert any("too many levels" in w for w in warnings)


def test_whiteout_of_dotdot_is_skipped(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [[{"name": "keep/me", "data": b"k"}, {"name": "top", "data": b"t"}],
                                   [{"name": "keep/.wh..."}, {"name": "keep/.wh.."}]])  # fmt: skip
    assert names(r) == {"keep/me", "top"}
    assert sum("whiteout of" in w for w in warnings) == 2


def test_hard_link_targets_must_be_in_the_image(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [[{"name": "etc/shadow", "data": b"image shadow"},
                                    {"name": "l1", "type": "hardlink", "target": "/etc/shadow"},
                                    {"name": "l2", "type": "hardlink", "target": "/etc/gshadow"},
                                    {"name": "l3", "type": "hardlink", "target": "../../etc/passwd"},
                                    {"name": "l4", "type": "hardlink", "target": "later"},
                                    {"name": "later", "data": b"x"}]])  # fmt: skip
    assert r["l1"][0].islnk() and r["l1"][0].linkname == "etc/shadow"
    assert not {"l2", "l3", "l4"} & set(r)
    assert any("not in the image" in w for w in warnings)
    assert any("leaves the image" in w for w in warnings)


def test_entry_below_a_file_is_skipped(tmp_path: Path) -> None:
    r, warnings = merge(tmp_path, [[{"name": "f", "data": b"f"}, {"name": "f/x", "data": b"x"}]])
    assert names(r) == {"f"}
    assert any("is not a directory" in w for w in warnings)


# -- generated entries --------------------------------------------------------------------
def _extra(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, if_absent: bool = False) -> Extra:
    t = tarfile.TarInfo(name)
    t.type = kind
    t.size = len(data)
    t.mode = 0o755
    return Extra(t, data, if_absent)


def test_extra_entries_override_or_fill_in(tmp_path: Path) -> None:
    r, _ = merge(tmp_path, [[{"name": "tmp", "type": "symlink", "target": "var/tmp"},
                             {"name": ".singularity.d/runscript", "data": b"old"}]],
                 [_extra("tmp", kind=tarfile.DIRTYPE, if_absent=True), _extra("proc", kind=tarfile.DIRTYPE,
                  if_absent=True), _extra(".singularity.d/runscript", b"new")])  # fmt: skip
    assert r["tmp"][0].issym()
    assert r["proc"][0].isdir()
    assert r[".singularity.d/runscript"][1] == b"new"


def test_corrupt_layer_is_an_error(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "lay", [b"this is not a tar archive" * 30], compress=False)
    img = L.open_image(L.parse_source(f"oci:{root}"))
    with pytest.raises(LayerError, match="not a tar archive|corrupt"), open_layer(img, 0) as s:
        list(iter_members(open_tar(s, "layer 1"), "layer 1"))


def test_docker_archive_layers_are_checked_against_diff_ids(tmp_path: Path) -> None:
    import hashlib
    import json

    raw = tar_layer([{"name": "f", "data": b"real"}])
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": [wrong]}}).encode()
    chex = hashlib.sha256(cfg).hexdigest()
    archive = tmp_path / "saved.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in ((f"{chex}.json", cfg), ("l/layer.tar", raw),
                           ("manifest.json", json.dumps([{"Config": f"{chex}.json",
                                                          "Layers": ["l/layer.tar"]}]).encode())):  # fmt: skip
            t = tarfile.TarInfo(name)
            t.size = len(data)
            tf.addfile(t, io.BytesIO(data))
    img = L.open_image(L.parse_source(f"docker-archive:{archive}"))
    with pytest.raises(L.DigestMismatch, match="uncompressed"), open_layer(img, 0) as s:
        list(iter_members(open_tar(s, "t"), "t"))
        s.finish()
