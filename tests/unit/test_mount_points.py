"""`rootfs._make_points`: the mount points a container's plan needs and no layer has are
made in its own upper layer, each directory of the layers looked at once for all of them
(a root container has a dozen under /dev and /etc), each directory made once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sifbox.runtime.sandbox.rootfs import _make_points

POINTS = [("/dev/null", True), ("/dev/zero", True), ("/dev/full", True), ("/dev/pts", False), ("/dev/shm", False),
          ("/etc/hosts", True), ("/etc/localtime", True), ("/var/tmp", False), ("/tmp", False),
          ("/home/alice/work", False), ("/opt/x/../y", False)]  # fmt: skip


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower, upper_layer, made_in = tmp_path / "lower", tmp_path / "overlay0", tmp_path / "upper"
    for d in ("etc", "var", "tmp", "home"):
        (lower / d).mkdir(parents=True)
    (lower / "etc/hosts").write_text("")
    (lower / "var/tmp").symlink_to("/tmp")  # resolved inside the layer: present
    (upper_layer / "etc").mkdir(parents=True)
    (upper_layer / "etc/localtime").write_text("")
    made_in.mkdir()
    return lower, upper_layer, made_in


def test_points_missing_from_every_layer_are_made(layers: tuple[Path, Path, Path]) -> None:
    lower, upper_layer, made_in = layers
    _make_points(POINTS, str(made_in), [str(upper_layer), str(lower)])
    made = sorted(str(p.relative_to(made_in)) + ("/" if p.is_dir() else "") for p in made_in.rglob("*"))
    assert made == ["dev/", "dev/full", "dev/null", "dev/pts/", "dev/shm/", "dev/zero", "home/", "home/alice/",
                    "home/alice/work/", "opt/", "opt/y/"]  # fmt: skip


def test_each_directory_is_looked_at_and_made_once(layers: tuple[Path, Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    lower, upper_layer, made_in = layers
    looked: list[str] = []
    made: list[str] = []
    real_lstat, real_mkdir = os.lstat, os.mkdir

    def lstat(path, *a, **kw):  # type: ignore[no-untyped-def]
        looked.append(os.fspath(path))
        return real_lstat(path, *a, **kw)

    def mkdir(path, *a, **kw):  # type: ignore[no-untyped-def]
        made.append(os.fspath(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "mkdir", mkdir)
    _make_points(POINTS, str(made_in), [str(upper_layer), str(lower)])
    assert sorted(looked) == sorted(set(looked)), looked
    assert str(lower / "dev") in looked and str(lower / "etc/hosts") in looked
    assert sorted(made) == sorted(set(made)), made
