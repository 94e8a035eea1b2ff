"""layers.prefetch: block-aligned readahead of the payload's first program."""

from __future__ import annotations

import os

from sifbox.runtime.sandbox import layers


def _record(monkeypatch) -> list[tuple[int, int, int]]:  # type: ignore[no-untyped-def]
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: calls.append((off, n, advice)))
    return calls


def test_prefetch_asks_for_each_aligned_chunk(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    prog = tmp_path / "sh"
    prog.write_bytes(b"\0" * (3 * layers.PREFETCH_CHUNK + 5))
    calls = _record(monkeypatch)
    layers.prefetch(str(prog))
    chunk = layers.PREFETCH_CHUNK
    assert calls == [(i * chunk, chunk, os.POSIX_FADV_WILLNEED) for i in range(4)]


def test_prefetch_stops_at_the_cap(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    prog = tmp_path / "big"
    with open(prog, "wb") as f:
        f.truncate(layers.PREFETCH_BYTES * 3)
    calls = _record(monkeypatch)
    layers.prefetch(str(prog))
    assert len(calls) == layers.PREFETCH_BYTES // layers.PREFETCH_CHUNK
    assert calls[-1][0] + calls[-1][1] == layers.PREFETCH_BYTES


def test_prefetch_of_a_missing_file_does_nothing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = _record(monkeypatch)
    layers.prefetch(str(tmp_path / "absent"))
    assert calls == []


def test_prefetch_leaks_no_descriptor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prog = tmp_path / "sh"
    prog.write_bytes(b"x" * 1000)
    before = set(os.listdir("/proc/self/fd"))
    layers.prefetch(str(prog))
    assert set(os.listdir("/proc/self/fd")) == before
