"""sifbox.security.keyserver: bounded reads of a keyserver's answer (size and time), without
a network (a fake response); the protocol itself is tested against sks in tests/integration."""

from __future__ import annotations

import time

import pytest

from sifbox.security import keyserver


class Trickle:
    def __init__(self, chunks: list[bytes], length: str | None = None):
        self.chunks = chunks
        self.length = length

    def getheader(self, name: str) -> str | None:
        return self.length if name == "Content-Length" else None

    def read1(self, n: int) -> bytes:
        return self.chunks.pop(0)[:n] if self.chunks else b""


def test_read_within_bounds() -> None:
    later = time.monotonic() + 60
    assert keyserver._read(Trickle([b"ab", b"cd"]), 4, "x", later) == b"abcd"  # type: ignore[arg-type]


def test_read_too_large() -> None:
    later = time.monotonic() + 60
    with pytest.raises(keyserver.KeyserverError, match="too large"):
        keyserver._read(Trickle([b"abc", b"de"]), 4, "x", later)  # type: ignore[arg-type]
    with pytest.raises(keyserver.KeyserverError, match=r"too large \(10 bytes"):
        keyserver._read(Trickle([], "10"), 4, "x", later)  # type: ignore[arg-type]


def test_read_past_deadline() -> None:
    with pytest.raises(keyserver.KeyserverError, match="took more than"):
        keyserver._read(Trickle([b"a"] * 10), 100, "x", time.monotonic() - 1)  # type: ignore[arg-type]


def test_no_keyserver() -> None:
    with pytest.raises(keyserver.KeyserverError, match="no keyserver configured"):
        keyserver.request([], "GET", "/", None, limit=1, what="x")


def test_credentials_not_shown() -> None:
    assert "s3cret" not in repr(keyserver.Keyserver("hkp://h", auth="Basic s3cret"))
