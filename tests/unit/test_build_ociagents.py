"""The pure parts of the OCI bootstrap agents: image references from the header, and the
mksquashfs pseudo definitions of device nodes a user namespace cannot create."""

from __future__ import annotations

import tarfile

import pytest

from sifbox.build import agents, ociagents
from sifbox.formats.deffile import parse_deffile


def _stage(header: str):  # type: ignore[no-untyped-def]
    return parse_deffile(header + "\n%post\n    true\n", "t.def").final


@pytest.mark.parametrize(
    ("header", "uri"),
    [
        ("Bootstrap: oci\nFrom: /srv/layout:v1", "oci:/srv/layout:v1"),
        ("Bootstrap: oci\nFrom: oci:/srv/layout", "oci:/srv/layout"),
        ("Bootstrap: oci-archive\nFrom: image.tar:latest", "oci-archive:image.tar:latest"),
        ("Bootstrap: docker-archive\nFrom: saved.tar:repo/app:1.0", "docker-archive:saved.tar:repo/app:1.0"),
        ("Bootstrap: docker\nFrom: debian:12", "docker://debian:12"),
        ("Bootstrap: docker\nFrom: docker://alpine", "docker://alpine"),
        ("Bootstrap: docker\nFrom: app:2\nNamespace: team", "docker://team/app:2"),
        ("Bootstrap: docker\nFrom: app:2\nRegistry: reg.example:5000", "docker://reg.example:5000/app:2"),
        ("Bootstrap: docker\nFrom: app@sha256:" + "a" * 64 + "\nRegistry: https://reg.example/\nNamespace: /t/",
         "docker://reg.example/t/app@sha256:" + "a" * 64),
    ],
)  # fmt: skip
def test_image_uri(header: str, uri: str) -> None:
    assert ociagents.image_uri(_stage(header)) == uri


def test_image_uri_needs_from() -> None:
    stage = _stage("Bootstrap: oci-archive\nFrom: x.tar")  # the parser refuses a missing From:
    stage.header["from"] = " "
    with pytest.raises(ociagents.OciBootstrapError, match="has no `From:`") as err:
        ociagents.image_uri(stage)
    assert "image.tar" in (err.value.hint or "")


def test_agents_are_registered() -> None:
    for name in ("oci", "oci-archive", "docker-archive", "docker"):
        assert agents.AGENTS[name] == "sifbox.build.ociagents:oci_image"


def _dev(
    kind: bytes, mode: int, major: int, minor: int, uid: int = 0, gid: int = 0
) -> tarfile.TarInfo:
    t = tarfile.TarInfo("x")
    t.type, t.mode, t.devmajor, t.devminor, t.uid, t.gid = kind, mode, major, minor, uid, gid
    return t


def test_pseudo_lines() -> None:
    assert (
        ociagents.pseudo_line("dev/null", _dev(tarfile.CHRTYPE, 0o666, 1, 3))
        == "/dev/null c 666 0 0 1 3"
    )
    assert (
        ociagents.pseudo_line("/dev/sda", _dev(tarfile.BLKTYPE, 0o660, 8, 0, 0, 6))
        == "/dev/sda b 660 0 6 8 0"
    )
    line = ociagents.pseudo_line('odd dir/"q"', _dev(tarfile.CHRTYPE, 0o600, 4, 1, 1234, 5678))
    assert line == '"/odd dir/\\"q\\"" c 600 1234 5678 4 1'
    assert ociagents._pseudo_name(line) == '/odd dir/"q"'
    assert ociagents._pseudo_name("/dev/null c 666 0 0 1 3") == "/dev/null"


def test_device_pseudo_file_keeps_only_untouched_stand_ins(tmp_path) -> None:  # type: ignore[no-untyped-def]
    work, root = tmp_path / "work", tmp_path / "work" / "stage0"
    (root / "dev").mkdir(parents=True)
    for name in ("null", "zero", "gone"):
        (root / "dev" / name).touch()
    (root / "dev" / "zero").write_text("replaced by %post\n")
    (root / "dev" / "gone").unlink()
    assert ociagents.device_pseudo_file(str(work), str(root)) is None
    ociagents.record_devices(str(work), str(root), [
        ("dev/null", _dev(tarfile.CHRTYPE, 0o666, 1, 3)),
        ("dev/zero", _dev(tarfile.CHRTYPE, 0o666, 1, 5)),
        ("dev/gone", _dev(tarfile.CHRTYPE, 0o666, 1, 7)),
    ])  # fmt: skip
    got = ociagents.device_pseudo_file(str(work), str(root))
    assert got is not None
    pseudo, exclude = got
    with open(pseudo) as f:
        assert f.read() == "/dev/null c 666 0 0 1 3\n"
    with open(exclude) as f:
        assert f.read() == "dev/null\n"
    # another stage's devices are not this root's
    assert ociagents.device_pseudo_file(str(work), str(work / "stage1")) is None
