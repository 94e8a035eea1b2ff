"""The atheris target `fuzz/fuzz_sif.py` keeps working without atheris.

CI does not fuzz; it runs `TestOneInput` on the corpus images and a few
damaged variants so that the target (and the no-crash rule it enforces)
cannot rot between fuzzing sessions.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .sifcorpus import FUZZ_TARGET, IMAGES, load_fuzz_target

TARGET = FUZZ_TARGET
CORPUS = sorted(IMAGES.glob("*.sif"))


@pytest.fixture(scope="module")
def target() -> ModuleType:
    had_atheris = "atheris" in sys.modules
    module = load_fuzz_target()
    assert had_atheris or "atheris" not in sys.modules, "the target must import atheris lazily"
    return module


def test_target_has_a_run_command(target: ModuleType) -> None:
    assert "fuzz/fuzz_sif.py -max_total_time=60" in (target.__doc__ or "")


@pytest.mark.parametrize("image", CORPUS, ids=lambda p: p.name)
def test_corpus_image(target: ModuleType, image: Path) -> None:
    data = image.read_bytes()
    target.TestOneInput(data)
    # The last two bytes choose the write operation and its target: try them all.
    for op in range(6):
        for pick in range(3):
            target.TestOneInput(data + bytes([pick, op]))


def damaged(data: bytes) -> list[bytes]:
    """A few deterministic mutations of a well-formed image."""
    out = [data[:n] for n in (0, 10, 41, 44, 100, 128, 4096, 4096 + 585, len(data) - 1)]
    for field, value in [(88, 2**40), (88, -1), (96, 2**62), (112, -1), (120, 2**62), (80, 99)]:
        buf = bytearray(data)
        struct.pack_into("<q", buf, field, value)
        out.append(bytes(buf))
    for field, value in [(17, 2**62), (25, 2**62), (17, -1), (25, len(data))]:
        buf = bytearray(data)
        struct.pack_into("<q", buf, 4096 + field, value)
        out.append(bytes(buf))
    for pos in (32, 42, 43, 4096 + 4, 4096 + 5):
        buf = bytearray(data)
        buf[pos] ^= 0xFF
        out.append(bytes(buf))
    return out


@pytest.mark.parametrize("image", CORPUS[:4] + CORPUS[-4:], ids=lambda p: p.name)
def test_damaged_images(target: ModuleType, image: Path) -> None:
    for data in damaged(image.read_bytes()):
        for op in range(6):
            target.TestOneInput(data + bytes([1, op]))


@pytest.mark.parametrize(
    "data", [b"", b"\0", b"SIF_MAGIC\0" * 20, bytes(32) + b"SIF_MAGIC\x0001\0"]
)
def test_small_inputs(target: ModuleType, data: bytes) -> None:
    target.TestOneInput(data)
