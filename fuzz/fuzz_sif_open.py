"""Fuzz target: opening an image file to run it (`sifbox.image.source.open_image`).

    python fuzz/fuzz_sif_open.py -max_total_time=60

One input is one image file (a SIF, a bare SquashFS, or anything else), held in an anonymous
memory file and opened by its /proc/self/fd path, as `sifbox run FILE` opens it: header and
descriptor table, the root file system partition (or an OCI-SIF's index, manifest, config and
SquashFS layers), its SquashFS superblock. A `SifboxError` is a clean rejection; any other
exception is a crash, and so is an answer that places the root file system, or a layer,
outside the file.
"""

from __future__ import annotations

import os

import fuzzlib

with fuzzlib.instrumented(__name__):
    import sifbox.formats.sif.image  # noqa: F401 - imported by open_image when called
    from sifbox.image.source import ImageKind, open_image
    from sifbox.util.errors import SifboxError


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    fd = fuzzlib.memfd(data, "image.sif")
    try:
        try:
            src = open_image(f"/proc/self/fd/{fd}")
        except SifboxError:
            return
        try:
            if src.kind == ImageKind.SANDBOX:
                raise AssertionError("an image file was taken for a sandbox directory")
            if src.offset < 0 or src.size < 0 or src.offset + src.size > len(data):
                raise AssertionError(f"root file system at {src.offset}+{src.size} lies outside "
                                     f"the file of {len(data)} bytes")  # fmt: skip
            if src.overlay is not None:
                off, size = src.overlay
                if off < 0 or size < 0:
                    raise AssertionError(f"overlay partition at {off}+{size}")
            for layer in src.oci.layers if src.oci is not None else ():
                if layer.offset < 0 or layer.size < 0 or layer.offset + layer.size > len(data):
                    raise AssertionError(f"OCI-SIF layer at {layer.offset}+{layer.size} lies outside the file")
        finally:
            src.close()
    finally:
        os.close(fd)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
