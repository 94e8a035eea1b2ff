"""The sandbox pins each mount point by a descriptor that must still be inside the container
root when the mount is made (runc's CVE-2021-30465: a path component swapped for a symlink
between its resolution and the mount). No privileges needed: the pin is open + readlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sifbox.runtime.sandbox import mountplan
from sifbox.runtime.sandbox.ops import LaunchError
from sifbox.util.paths import chase


def test_pin_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    target = chase(str(root), "/a/b")
    fd = mountplan._pin(str(root) + "/", target, "/a/b", "img")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(root / "a" / "b")
    finally:
        os.close(fd)


def test_pin_refuses_a_swapped_component(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    target = chase(str(root), "/a/b")  # resolved while /a is a directory of the root...
    os.rename(root / "a", tmp_path / "old-a")
    (root / "a").symlink_to(outside)  # ...then swapped for a link out of it
    with pytest.raises(LaunchError, match="moved out of the container root"):
        mountplan._pin(str(root) + "/", target, "/a/b", "img")


def test_in_proc(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "proc" / "sys").mkdir(parents=True)
    (root / "vol").symlink_to("/proc/sys")
    assert mountplan._in_proc(str(root), chase(str(root), "/vol"))
    assert not mountplan._in_proc(str(root), str(root / "procfoo"))
