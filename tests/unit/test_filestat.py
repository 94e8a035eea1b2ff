"""util.filestat: os.stat's results, bar the access time, from statx(2) without STATX_ATIME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sifbox.util import filestat

FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime", "st_ctime",
          "st_mtime_ns", "st_ctime_ns", "st_blksize", "st_blocks", "st_rdev")  # fmt: skip


@pytest.mark.parametrize("path", ["/dev/null", "/proc/self/fd/0", "/"])
def test_the_fields_of_os_stat(path: str) -> None:
    want, got = os.stat(path), filestat.stat(path)
    assert {f: getattr(got, f) for f in FIELDS} == {f: getattr(want, f) for f in FIELDS}
    assert got.st_atime_ns == 0


def test_a_file_a_descriptor_and_a_link(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    os.utime(f, ns=(1, 1_700_000_000_123_456_789))
    (tmp_path / "link").symlink_to("f")
    fd = os.open(f, os.O_RDONLY)
    try:
        got = filestat.fstat(fd)
    finally:
        os.close(fd)
    assert (got.st_size, got.st_mtime_ns) == (5000, 1_700_000_000_123_456_789)
    assert filestat.stat(str(tmp_path / "link")) == got
    assert (
        filestat.stat(str(tmp_path / "link"), follow_symlinks=False).st_mode
        == os.lstat(tmp_path / "link").st_mode
    )


def test_errors_are_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        filestat.stat(str(tmp_path / "missing"))
    with pytest.raises(OSError):
        filestat.fstat(987654)
