"""Which path an image's mount takes (sifbox.runtime.mountpath), and what the installed
squashfuse_ll can do (sifbox.image.squashfuse): pure planning, and a probe of ELF files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sifbox.image import squashfuse
from sifbox.runtime import mountpath
from tests.unit.test_elf import _elf

SHARED = {"kind": "squashfs", "no_share": False, "share_conf": True, "instance": False, "fakeroot": False,
          "root_userns": False, "mount_slave": True}


def test_a_plain_launch_of_a_squashfs_image_is_shared() -> None:
    assert mountpath.share_refusal(**SHARED) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "reason"), [
    ({"no_share": True}, "--no-share"),
    ({"share_conf": False}, "`share image mounts = no` in sifbox.conf"),
    ({"instance": True}, ""),
    ({"kind": "dir"}, ""),
    ({"kind": "gocryptfs"}, ""),
    ({"fakeroot": True}, "--fakeroot"),
    ({"root_userns": True}, "root with a user namespace"),
    ({"mount_slave": False}, "`mount slave = no` in sifbox.conf"),
])  # fmt: skip
def test_what_keeps_a_mount_per_container(change: dict[str, object], reason: str) -> None:
    assert mountpath.share_refusal(**{**SHARED, **change}) == reason  # type: ignore[arg-type]


@pytest.mark.parametrize(("setting", "capable", "shared", "threads"), [
    ("auto", True, True, True),      # a node holder serves every rank of the node
    ("auto", True, False, False),    # a per-container server serves one container
    ("auto", False, True, False),    # Debian 12's squashfuse_ll has no threads to use
    ("auto", None, True, False),     # unknown (a wrapper script): the safe single thread
    ("yes", True, False, True),
    ("yes", None, False, True),      # the admin said so: the binary's own default
    ("yes", False, True, False),     # nothing to force
    ("no", True, True, False),
])  # fmt: skip
def test_fuse_threads_choice(setting: str, capable: bool | None, shared: bool, threads: bool) -> None:
    chosen, why = mountpath.fuse_threads(setting, capable, shared=shared)
    assert chosen is threads
    assert why
    assert mountpath.fuse_args(chosen) == ([] if threads else ["-s"])


def test_plan_describes_every_path() -> None:
    user = mountpath.plan("squashfs", kernel=False, refusal=None, threads_setting="auto", multithreaded=True)
    assert (user.driver, user.shared, user.threads) == ("squashfuse_ll", True, True)
    assert user.describe().startswith("squashfuse_ll, multithreaded, one mount per node")
    alone = mountpath.plan("squashfs", kernel=False, refusal="--no-share", threads_setting="auto", multithreaded=True)
    assert (alone.shared, alone.threads) == (False, False)
    assert "per container (--no-share;" in alone.describe()
    root = mountpath.plan("squashfs", kernel=True, refusal=None, threads_setting="yes", multithreaded=True)
    assert (root.driver, root.shared, root.threads) == ("kernel squashfs", True, None)
    sandbox = mountpath.plan("dir", kernel=False, refusal="", threads_setting="auto", multithreaded=True)
    assert sandbox.describe() == "directory (a sandbox directory is bound, not mounted)"
    crypt = mountpath.plan("gocryptfs", kernel=False, refusal="", threads_setting="auto", multithreaded=True)
    assert crypt.driver == "gocryptfs over squashfuse_ll" and not crypt.shared


# --- the probe -------------------------------------------------------------------------------------


def _binary(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o755)
    return str(path)


def test_probe_tells_a_multithreaded_build_from_a_single_threaded_one(tmp_path: Path) -> None:
    mt = _binary(tmp_path, "mt", _elf(needed=("libfuse3.so.4",), symbols=("fuse_session_loop_mt_32", "fuse_session_loop")))
    st = _binary(tmp_path, "st", _elf(needed=("libfuse3.so.3",), symbols=("fuse_session_loop",)))
    assert squashfuse.probe(mt).multithreaded is True
    assert squashfuse.probe(st).multithreaded is False


@pytest.mark.parametrize("data", [b"#!/bin/sh\nexec /opt/squashfuse_ll \"$@\"\n", b"", b"\x7fELF\x02\x01" + b"\xff" * 80])
def test_probe_of_what_it_cannot_read_is_unknown(tmp_path: Path, data: bytes) -> None:
    caps = squashfuse.probe(_binary(tmp_path, "odd", data))
    assert caps.multithreaded is None and caps.reason


def test_probe_of_a_missing_or_unreadable_binary_is_unknown(tmp_path: Path) -> None:
    assert squashfuse.probe(str(tmp_path / "missing")).multithreaded is None
    assert squashfuse.probe(str(tmp_path)).multithreaded is None  # a directory


def test_probe_is_cached_by_the_binarys_stat(tmp_path: Path) -> None:
    path = _binary(tmp_path, "sq", _elf(symbols=("fuse_session_loop",)))
    first = squashfuse.probe(path)
    assert squashfuse.probe(path) is first
    # Replaced by a multithreaded build (a package upgrade): a new answer.
    os.unlink(path)
    _binary(tmp_path, "sq", _elf(symbols=("fuse_session_loop_mt_312",)))
    assert squashfuse.probe(path).multithreaded is True


@pytest.mark.skipif(shutil.which("squashfuse_ll") is None, reason="squashfuse_ll is not installed")
def test_probe_of_the_installed_squashfuse_ll() -> None:
    caps = squashfuse.probe(shutil.which("squashfuse_ll") or "")
    assert caps.multithreaded in (True, False), caps.reason
