"""sifbox.util.atomic: whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sifbox.util.atomic import Replacing, write_file


def test_write_file_replaces_with_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    old = os.umask(0o077)
    try:
        write_file(target, b"new", mode=0o644)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_an_error_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), Replacing(target) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_failed_rename_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty directory can't be replaced by a file
    with pytest.raises(OSError), Replacing(target) as tmp:
        Path(tmp).write_bytes(b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
