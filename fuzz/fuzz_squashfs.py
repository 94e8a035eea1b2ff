"""Fuzz target: SquashFS superblocks (`sifbox.formats.squashfs`).

    python fuzz/fuzz_squashfs.py -max_total_time=60

One input is the first bytes of a SquashFS image. A `SquashfsError` is a clean rejection;
any other exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.formats import squashfs


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    squashfs.probe(data)
    try:
        info = squashfs.parse_superblock(data)
    except squashfs.SquashfsError:
        return
    if not 4096 <= int(info["block_size"]) <= 1 << 20:
        raise AssertionError(f"block size {info['block_size']} accepted")


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
