"""Fuzz target: ELF program headers and dynamic sections (`sifbox.formats.elf`).

    python fuzz/fuzz_elf.py -max_total_time=60

One input is an executable from an image, read through `os.pread` on an anonymous memory
file as the launch's read-ahead reads it. `dependencies` answers None or what the program
loads, and may raise OSError from the read only (the caller ignores the program then); any
other exception is a crash, and so is a read of more than the module's bounds allow.
"""

from __future__ import annotations

import os

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.formats import elf

#: The largest read `dependencies` may ask for: the program header table.
MAX_READ = elf.MAX_PHNUM * 0xFFFF


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    fd = fuzzlib.memfd(data, "program")

    def read(offset: int, size: int) -> bytes:
        if size > MAX_READ:
            raise AssertionError(f"read of {size} bytes")
        return os.pread(fd, size, offset)

    try:
        try:
            deps = elf.dependencies(read)
        except OSError:
            return
        if deps is not None:
            elf.library_dirs(deps)
    finally:
        os.close(fd)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
