"""Fuzz target: `oci-archive:` and `docker-archive:` tar files (`sifbox.oci.layout.open_image`).

    python fuzz/fuzz_oci_archive.py -max_total_time=60

One input is an archive file (tar, possibly gzip, bzip2 or xz compressed), held in an
anonymous memory file and opened by its /proc/self/fd path as `sifbox build IMG
oci-archive:FILE` opens it: the tar headers are read (nothing is extracted), the layout
inside is resolved for linux/amd64, and every layer blob is read and verified. The first byte
chooses the transport (odd: docker-archive). A `SifboxError` is a clean rejection; any other
exception is a crash.
"""

from __future__ import annotations

import os

import fuzzlib

with fuzzlib.instrumented(__name__, ("tarfile",)):
    import tarfile  # noqa: F401 - used by TarStore

    from sifbox.oci import layout
    from sifbox.util.errors import SifboxError

WANTED = layout.Platform("linux", "amd64", "")


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    transport = "docker-archive" if data[:1] and data[0] & 1 else "oci-archive"
    fd = fuzzlib.memfd(data[1:], "image.tar")
    try:
        ref = layout.SourceRef(transport, f"/proc/self/fd/{fd}")
        try:
            img = layout.open_image(ref, WANTED)
        except SifboxError:
            return
        try:
            for layer in img.layers:
                try:
                    with img.open_layer(layer) as reader:
                        reader.finish()
                except FileNotFoundError:
                    pass  # a missing blob: open_layer's caller says so
                except SifboxError:
                    pass
        finally:
            img.store.close()
    finally:
        os.close(fd)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="tar")
