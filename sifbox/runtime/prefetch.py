"""Read ahead the payload's first program, in a FUSE-mounted image.

Executables and libraries are read by page faults, and a fault reads the
128 KiB around the page: two SquashFS blocks, misaligned, so that
squashfuse (whose block cache is small) decompresses most blocks several
times, one fault after the other. Asking the kernel to read ahead in
block-aligned chunks decompresses each block once, and squashfuse's
threads serve those requests while this process forks and execs.

`program` does so for a program, its ELF interpreter and the libraries it
names: for `/bin/sh` of a Debian image, dash, ld.so and libc, which the
command run next mostly shares. Best effort: nothing here fails a launch.
"""

from __future__ import annotations

import os

from sifbox.formats import elf

#: At most this much of one file is asked for.
FILE_BYTES = 4 << 20
#: At most this much in all, for one program and its libraries.
TOTAL_BYTES = 16 << 20
#: SquashFS blocks are at most 1 MiB and aligned in the file; one FUSE read
#: is at most 128 KiB (the kernel's readahead window and FUSE's max_pages).
CHUNK = 128 << 10


class _Budget:
    __slots__ = ("left",)

    def __init__(self, total: int) -> None:
        self.left = total


def _advise(fd: int, budget: _Budget) -> None:
    size = min(os.fstat(fd).st_size, FILE_BYTES, budget.left)
    budget.left -= size
    for offset in range(0, size, CHUNK):
        os.posix_fadvise(fd, offset, CHUNK, os.POSIX_FADV_WILLNEED)


def file(path: str, budget: _Budget | None = None) -> bool:
    """Read ahead the start of `path`; return whether it could be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        _advise(fd, budget or _Budget(TOTAL_BYTES))
    except OSError:
        pass
    finally:
        os.close(fd)
    return True


def program(path: str) -> None:
    """Read ahead `path` and, for an ELF executable, its interpreter and needed libraries."""
    budget = _Budget(TOTAL_BYTES)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _advise(fd, budget)
        deps = elf.dependencies(lambda offset, size: os.pread(fd, size, offset))
    except OSError:
        deps = None
    finally:
        os.close(fd)
    if deps is None:
        return
    if deps.interpreter:
        file(deps.interpreter, budget)
    dirs = elf.library_dirs(deps)
    for name in deps.needed:
        if budget.left <= 0:
            break
        if "/" in name:
            file(name, budget)
            continue
        for d in dirs:
            if file(os.path.join(d, name), budget):
                break
