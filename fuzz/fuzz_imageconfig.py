"""Fuzz target: OCI image configs turned into /.singularity.d (`sifbox.oci.imageconfig`).

    python fuzz/fuzz_imageconfig.py -max_total_time=60

One input is the bytes of an image config blob. It is decoded as `BlobStore.read_json`
decodes it (a document that is not a JSON object is refused there), then what a pull
derives from it is computed: the generated entries (env script, runscript, labels.json, ...)
and the notes about USER and WORKDIR. A `SifboxError` is a clean rejection; any other
exception is a crash.
"""

from __future__ import annotations

import json

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.oci import imageconfig
    from sifbox.util.errors import SifboxError


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(config, dict):
        return
    try:
        arch = str(config.get("architecture") or "")
        source = "docker://registry.fuzz/app:1"
        imageconfig.entries(config, arch=arch, source=source, epoch=0, version="fuzz")
        imageconfig.notes(config)
    except SifboxError:
        pass


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
