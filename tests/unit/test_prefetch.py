"""sandbox.prefetch: block-aligned readahead of the payload's first program and its libraries."""

from __future__ import annotations

import os
import shutil

import pytest

from sifbox.runtime import prefetch


@pytest.fixture
def advised(monkeypatch):  # type: ignore[no-untyped-def]
    """The (file, offset, length) of every readahead request, by file name."""
    calls: list[tuple[str, int, int]] = []

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length))

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    return calls


def test_a_file_is_asked_for_in_aligned_chunks(tmp_path, advised) -> None:  # type: ignore[no-untyped-def]
    prog = tmp_path / "sh"
    prog.write_bytes(b"\0" * (3 * prefetch.CHUNK + 5))
    assert prefetch.file(str(prog))
    chunk = prefetch.CHUNK
    assert advised == [(str(prog), i * chunk, chunk) for i in range(4)]


def test_a_file_stops_at_the_cap(tmp_path, advised) -> None:  # type: ignore[no-untyped-def]
    prog = tmp_path / "big"
    with open(prog, "wb") as f:
        f.truncate(prefetch.FILE_BYTES * 3)
    prefetch.file(str(prog))
    assert len(advised) == prefetch.FILE_BYTES // prefetch.CHUNK


def test_missing_files_and_programs_do_nothing(tmp_path, advised) -> None:  # type: ignore[no-untyped-def]
    assert not prefetch.file(str(tmp_path / "absent"))
    prefetch.program(str(tmp_path / "absent"))
    assert advised == []


def test_a_script_is_read_ahead_alone(tmp_path, advised) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "run"
    script.write_text("#!/bin/sh\nexec true\n")
    prefetch.program(str(script))
    assert [c[0] for c in advised] == [str(script)]


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash is not installed")
def test_a_dynamic_program_brings_its_interpreter_and_libraries(advised) -> None:  # type: ignore[no-untyped-def]
    dash = os.path.realpath(shutil.which("dash") or "")
    prefetch.program(dash)
    files = list(dict.fromkeys(os.path.basename(c[0]) for c in advised))
    assert files[0] == os.path.basename(dash)
    assert any(f.startswith("ld-linux") for f in files), files
    assert "libc.so.6" in files


def test_the_total_is_capped(tmp_path, advised, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(prefetch, "TOTAL_BYTES", 2 * prefetch.CHUNK)
    prog = tmp_path / "p"
    prog.write_bytes(b"\0" * (5 * prefetch.CHUNK))
    prefetch.program(str(prog))
    assert len(advised) == 2


def test_no_descriptor_is_left_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prog = tmp_path / "sh"
    prog.write_bytes(b"x" * 1000)
    before = set(os.listdir("/proc/self/fd"))
    prefetch.program(str(prog))
    prefetch.file(str(prog))
    assert set(os.listdir("/proc/self/fd")) == before
