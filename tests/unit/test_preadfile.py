"""`sifbox.util.preadfile`: reading a descriptor with its own position, never the file
offset it shares with others (a client that sent it, concurrent processes)."""

from __future__ import annotations

import os
from pathlib import Path

from sifbox.util.preadfile import reader


def test_reads_ignore_and_keep_the_shared_offset(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 1234, os.SEEK_SET)  # where the sender left it, or moves it to
        with reader(fd) as fp:
            assert fp.read(4) == bytes([0, 1, 2, 3])
            fp.seek(300)
            os.lseek(fd, 7, os.SEEK_SET)  # moved between a seek and a read: no matter
            assert fp.read(2) == bytes([300 % 256, 301 % 256])
            fp.seek(-3, os.SEEK_END)
            assert fp.read() == bytes([253, 254, 255])
            assert fp.read(10) == b""
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7  # untouched by the reads
        assert os.fstat(fd).st_size == 256 * 64  # still open: closing the reader left it
    finally:
        os.close(fd)
