"""sifbox.formats.elf: an executable's interpreter, needed libraries and run path."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sifbox.formats import elf


def _elf(*, wide: bool = True, big: bool = False, machine: int = 62, interp: str | None = "/lib/ld.so",
         needed: tuple[str, ...] = ("libc.so.6",), runpath: str | None = None, rpath: str | None = None,
         vaddr: int = 0x400000, symbols: tuple[str, ...] = (), strsz: int | None = -1) -> bytes:  # fmt: skip
    """A minimal ELF file: header, program headers (LOAD over the whole file, INTERP, DYNAMIC),
    the interpreter string, a string table (with `symbols`, and DT_STRSZ: its size when -1,
    `strsz` otherwise, none when None) and the dynamic section."""
    end = ">" if big else "<"
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    strings = b"\0"
    offsets = {}
    for text in (*needed, runpath, rpath, *symbols):
        if text is not None and text not in offsets:
            offsets[text] = len(strings)
            strings += text.encode() + b"\0"
    dyn = []
    for name in needed:
        dyn.append((elf.DT_NEEDED, offsets[name]))
    if runpath is not None:
        dyn.append((elf.DT_RUNPATH, offsets[runpath]))
    if rpath is not None:
        dyn.append((elf.DT_RPATH, offsets[rpath]))
    phnum = 3
    interp_off = ehsize + phnum * phentsize
    interp_bytes = (interp.encode() + b"\0") if interp else b""
    strtab_off = interp_off + len(interp_bytes)
    dyn_off = strtab_off + len(strings)
    dyn.insert(0, (elf.DT_STRTAB, vaddr + strtab_off))
    if strsz is not None:
        dyn.insert(1, (elf.DT_STRSZ, len(strings) if strsz == -1 else strsz))
    dyn.append((elf.DT_NULL, 0))
    dyn_format = end + ("qQ" if wide else "iI")
    dynamic = b"".join(struct.pack(dyn_format, t, v) for t, v in dyn)
    total = dyn_off + len(dynamic)
    ident = elf.MAGIC + bytes([2 if wide else 1, 2 if big else 1, 1]) + b"\0" * 9

    def ph(p_type: int, offset: int, size: int) -> bytes:
        if wide:
            return struct.pack(end + "IIQQQQQQ", p_type, 4, offset, vaddr + offset, vaddr + offset, size, size, 8)
        return struct.pack(end + "IIIIIIII", p_type, offset, vaddr + offset, vaddr + offset, size, size, 4, 4)

    headers = ph(elf.PT_LOAD, 0, total) + (ph(elf.PT_INTERP, interp_off, len(interp_bytes)) if interp else
                                           ph(6, 0, 0)) + ph(elf.PT_DYNAMIC, dyn_off, len(dynamic))  # fmt: skip
    if wide:
        header = ident + struct.pack(end + "HHIQQQIHHHHHH", 2, machine, 1, vaddr, ehsize, 0, 0, ehsize,
                                     phentsize, phnum, 64, 0, 0)  # fmt: skip
    else:
        header = ident + struct.pack(end + "HHIIIIIHHHHHH", 2, machine, 1, vaddr, ehsize, 0, 0, ehsize,
                                     phentsize, phnum, 40, 0, 0)  # fmt: skip
    data = header + headers + interp_bytes + strings + dynamic
    assert len(data) == total
    return data


def _reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda offset, size: data[offset : offset + size]


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("big", [False, True])
def test_both_classes_and_byte_orders(wide: bool, big: bool) -> None:
    data = _elf(wide=wide, big=big, machine=183, needed=("libm.so.6", "libc.so.6"), runpath="/opt/x/lib:/opt/y")
    deps = elf.dependencies(_reader(data))
    assert deps is not None
    assert deps.interpreter == "/lib/ld.so"
    assert deps.needed == ["libm.so.6", "libc.so.6"]
    assert deps.search == ["/opt/x/lib", "/opt/y"]
    assert deps.machine == 183


def test_runpath_wins_over_rpath_and_rpath_is_used_alone() -> None:
    both = elf.dependencies(_reader(_elf(runpath="/run", rpath="/rp")))
    assert both is not None and both.search == ["/run"]
    alone = elf.dependencies(_reader(_elf(rpath="/rp1:/rp2")))
    assert alone is not None and alone.search == ["/rp1", "/rp2"]


def test_a_static_executable_has_no_dependencies() -> None:
    deps = elf.dependencies(_reader(_elf(interp=None, needed=())))
    assert deps is not None
    assert (deps.interpreter, deps.needed, deps.search) == (None, [], [])


def test_library_dirs_put_the_run_path_first_then_multiarch_then_plain() -> None:
    deps = elf.Dependencies("/lib64/ld-linux-x86-64.so.2", ["libc.so.6"], ["/opt/lib", "$ORIGIN/../lib"], 62)
    assert elf.library_dirs(deps) == ["/opt/lib", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                                      "/lib64", "/usr/lib64", "/lib", "/usr/lib"]  # fmt: skip
    unknown = elf.Dependencies(None, [], [], 9999)
    assert elf.library_dirs(unknown) == ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]


@pytest.mark.parametrize("data", [b"", b"#!/bin/sh\necho hi\n", b"\x7fELF", b"\x7fELF\x03\x01" + b"\0" * 60,
                                  b"\x7fELF\x02\x01" + b"\xff" * 100])  # fmt: skip
def test_what_is_not_an_elf_file_gives_none_or_nothing(data: bytes) -> None:
    deps = elf.dependencies(_reader(data))
    assert deps is None or (deps.needed == [] and deps.search == [])


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("big", [False, True])
def test_every_truncation_gives_none_or_less(wide: bool, big: bool) -> None:
    # A 64-bit header cut between 52 and 63 bytes (long enough for a 32-bit one) once raised
    # struct.error: e_phentsize/e_phnum lie at offsets 54..57.
    data = _elf(wide=wide, big=big, needed=("a.so",), runpath="/r")
    for size in range(len(data)):
        deps = elf.dependencies(_reader(data[:size]))
        if size < (64 if wide else 52):
            assert deps is None, size
        else:
            assert deps is None or len(deps.needed) <= 1, size


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=399), st.binary(max_size=8))
def test_damaged_files_never_raise(base: bytes, at: int, junk: bytes) -> None:
    data = bytearray(_elf(needed=("a.so", "b.so"), runpath="/r"))
    data[at : at + len(junk)] = junk
    elf.dependencies(_reader(bytes(data)))
    elf.dependencies(_reader(bytes(data[: len(base)])))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.binary(max_size=300))
def test_any_bytes_after_a_valid_ident_never_raise(cls: int, order: int, rest: bytes) -> None:
    deps = elf.dependencies(_reader(elf.MAGIC + bytes([cls, order]) + rest))
    assert deps is None or isinstance(deps.needed, list)


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash is not installed")
def test_the_hosts_dash_needs_libc_through_its_interpreter() -> None:
    path = os.path.realpath(shutil.which("dash") or "")
    with open(path, "rb") as f:
        deps = elf.dependencies(lambda offset, size: os.pread(f.fileno(), size, offset))
    assert deps is not None
    assert deps.interpreter and "ld-linux" in deps.interpreter
    assert "libc.so.6" in deps.needed
    ldd = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
    assert all(name in ldd for name in deps.needed)


# --- dynamic_strings: what a binary imports (squashfuse_ll's multithreaded server) ---------------


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("big", [False, True])
def test_dynamic_strings_lists_the_imported_names(wide: bool, big: bool) -> None:
    data = _elf(wide=wide, big=big, needed=("libfuse3.so.3",), symbols=("fuse_session_loop_mt_32", "FUSE_3.2"))
    names = elf.dynamic_strings(_reader(data))
    assert names is not None
    assert {"libfuse3.so.3", "fuse_session_loop_mt_32", "FUSE_3.2"} <= set(names)


def test_dynamic_strings_of_what_has_no_table_is_none() -> None:
    assert elf.dynamic_strings(_reader(b"#!/bin/sh\nexec squashfuse_ll.real \"$@\"\n")) is None
    assert elf.dynamic_strings(_reader(_elf(strsz=None, symbols=("fuse_session_loop_mt",)))) is None


def test_dynamic_strings_stays_in_bounds_of_a_hostile_size() -> None:
    asked: list[int] = []
    data = _elf(symbols=("fuse_session_loop",), strsz=2**62)

    def read(offset: int, size: int) -> bytes:
        asked.append(size)
        return data[offset : offset + size]

    names = elf.dynamic_strings(read)
    assert max(asked) <= elf.MAX_STRTAB
    assert names is not None and "fuse_session_loop" in names  # the rest of the file, read as strings


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=399), st.binary(max_size=8))
def test_dynamic_strings_of_damaged_files_never_raise(at: int, junk: bytes) -> None:
    data = bytearray(_elf(symbols=("fuse_session_loop_mt",)))
    data[at : at + len(junk)] = junk
    names = elf.dynamic_strings(_reader(bytes(data)))
    assert names is None or isinstance(names, list)
