"""Malicious layers: nothing a layer says may reach outside the image.

Hand-made tar layers in an OCI layout: path traversal, a symlinked parent pointing out of
the image (absolute and relative), a whiteout of `..`, hard links to absolute and escaping
targets. `sifbox pull` (root and unprivileged) must finish, say what it skipped or
redirected in a warning, write nothing outside the SIF, and keep the image's own files.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

from tests.integration.test_pull import extract
from tests.unit.test_oci_layout import make_layout, tar_layer

pytestmark = pytest.mark.integration


@pytest.fixture
def marker() -> str:
    name = f"sifbox-escape-{secrets.token_hex(6)}"
    yield name
    for p in (Path("/tmp") / name, Path("/") / name):
        assert not p.exists(), f"a layer wrote {p} on the host"


def pull(run_as, who, cli, layout: Path, out: Path):  # type: ignore[no-untyped-def]
    os.system(f"chmod -R a+rX {layout}")
    proc = run_as(who, [cli, "pull", str(out), f"oci:{layout}"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_path_traversal(run_as, as_who, sifbox_cli, shared_tmp, marker) -> None:
    lay = make_layout(shared_tmp / "lay", [tar_layer([
        {"name": f"../../../../../../tmp/{marker}", "data": b"escaped"},
        {"name": f"./a/../../../{marker}", "data": b"escaped"},
        {"name": "bin/ok", "data": b"fine"},
    ])])  # fmt: skip
    proc = pull(run_as, as_who, sifbox_cli, lay, shared_tmp / "x.sif")
    assert proc.stderr.count("leaves the image (`..`)") == 2, proc.stderr
    got = extract(shared_tmp / "x.sif", shared_tmp / "root")
    assert (got / "bin/ok").read_bytes() == b"fine"
    assert not list(got.rglob(marker))
    shutil.rmtree(got)


def test_symlink_parent_escape(run_as, as_who, sifbox_cli, shared_tmp, marker) -> None:
    lay = make_layout(shared_tmp / "lay", [
        tar_layer([{"name": "abs", "type": "symlink", "target": "/tmp"},
                   {"name": "rel", "type": "symlink", "target": "../../../../../../../tmp"},
                   {"name": "tmp", "type": "dir", "mode": 0o1777}]),
        tar_layer([{"name": f"abs/{marker}", "data": b"via abs"},
                   {"name": f"rel/{marker}-rel", "data": b"via rel"}]),
    ])  # fmt: skip
    proc = pull(run_as, as_who, sifbox_cli, lay, shared_tmp / "x.sif")
    assert proc.stderr.count("lies under a symbolic link") == 2, proc.stderr
    assert not (Path("/tmp") / f"{marker}-rel").exists()
    got = extract(shared_tmp / "x.sif", shared_tmp / "root")
    # Both land in the image's own /tmp, as containerd and umoci resolve them.
    assert (got / "tmp" / marker).read_bytes() == b"via abs"
    assert (got / "tmp" / f"{marker}-rel").read_bytes() == b"via rel"
    assert os.readlink(got / "abs") == "/tmp"
    shutil.rmtree(got)


def test_whiteout_of_dotdot(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    lay = make_layout(shared_tmp / "lay", [
        tar_layer([{"name": "a/b/keep", "data": b"keep"}, {"name": "top", "data": b"top"}]),
        tar_layer([{"name": "a/b/.wh..."}, {"name": ".wh.."}, {"name": "a/.wh...", "data": b""}]),
    ])  # fmt: skip
    proc = pull(run_as, as_who, sifbox_cli, lay, shared_tmp / "x.sif")
    assert proc.stderr.count("whiteout of") == 3, proc.stderr
    got = extract(shared_tmp / "x.sif", shared_tmp / "root")
    assert (got / "a/b/keep").read_bytes() == b"keep" and (got / "top").read_bytes() == b"top"
    shutil.rmtree(got)


def test_absolute_and_escaping_hard_links(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    lay = make_layout(shared_tmp / "lay", [tar_layer([
        {"name": "etc/passwd", "data": b"image passwd\n"},
        {"name": "l-shadow", "type": "hardlink", "target": "/etc/shadow"},
        {"name": "l-passwd", "type": "hardlink", "target": "/etc/passwd"},
        {"name": "l-up", "type": "hardlink", "target": "../../../../etc/passwd"},
        {"name": "l-dir", "type": "hardlink", "target": "etc"},
    ])])  # fmt: skip
    proc = pull(run_as, as_who, sifbox_cli, lay, shared_tmp / "x.sif")
    assert "hard link target `/etc/shadow` is not in the image" in proc.stderr
    assert "hard link target `../../../../etc/passwd` leaves the image" in proc.stderr
    assert "hard link to directory `etc`" in proc.stderr
    got = extract(shared_tmp / "x.sif", shared_tmp / "root")
    assert not (got / "l-shadow").exists() and not (got / "l-up").exists() and not (got / "l-dir").exists()
    assert (got / "l-passwd").read_bytes() == b"image passwd\n"
    assert (got / "l-passwd").stat().st_ino == (got / "etc/passwd").stat().st_ino
    shutil.rmtree(got)


def test_not_a_tar_layer_is_an_error(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    lay = make_layout(shared_tmp / "lay", [b"\x00garbage" * 200], compress=False)
    os.system(f"chmod -R a+rX {lay}")
    proc = run_as(as_who, [sifbox_cli, "pull", str(shared_tmp / "x.sif"), f"oci:{lay}"])
    assert proc.returncode == 255, proc.stderr
    assert "sifbox: error: can't read layer 1" in proc.stderr
    assert not (shared_tmp / "x.sif").exists()
    assert [p.name for p in shared_tmp.iterdir()] == ["lay"]
