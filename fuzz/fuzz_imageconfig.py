"""Fuzz target: OCI image configs turned into /.singularity.d (`sifbox.oci.imageconfig`,
`sifbox.formats.singularityd`).

    python fuzz/fuzz_imageconfig.py -max_total_time=60

One input is the bytes of an image config blob. It is decoded as `BlobStore.read_json`
decodes it (a document that is not a JSON object is refused there), then what a pull derives
from it is computed as `oci.convert` does: the whole generated tree (`imageconfig.tree`, the
architecture taken from the config), its tar entries (`imageconfig.entries`), the
`inspect-metadata.json` object stored in the SIF (`inspectmeta.collect` of the tree's files,
rendered compact) and the notes about USER and WORKDIR; and what an OCI bootstrap derives
(`finish=False`), finished by a definition's final stage as a build does. Every generated
path must be absolute and normal. A `SifboxError` is a clean rejection; any other exception is
a crash.
"""

from __future__ import annotations

import json
import posixpath

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.formats import inspectmeta
    from sifbox.formats import singularityd as sd
    from sifbox.oci import imageconfig
    from sifbox.util.errors import SifboxError

SOURCE = "docker://registry.fuzz/app:1"
META = sd.ImageMeta(header={"bootstrap": "docker", "from": "registry.fuzz/app:1"},
                    deffile="Bootstrap: docker\nFrom: registry.fuzz/app:1\n",
                    runscript=sd.Section("exec app"), labels={"a": "b"})  # fmt: skip


def _check(entries: list[sd.Entry]) -> None:
    for e in entries:
        if not e.path.startswith("/") or posixpath.normpath(e.path) != e.path:
            raise AssertionError(f"generated path {e.path!r} is not a normal absolute path")


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(config, dict):
        return
    arch = str(config.get("architecture") or "")  # as oci.convert.generated takes it
    try:
        # A pull.
        tree = imageconfig.tree(config, arch=arch, source=SOURCE, epoch=0, version="fuzz")
        _check(tree)
        imageconfig.entries(config, arch=arch, source=SOURCE, epoch=0, version="fuzz")
        meta = inspectmeta.collect(sd.files_of(tree), [], imageconfig.deffile(SOURCE))
        inspectmeta.render_json(meta, indent=False).encode()
        for note in imageconfig.notes(config):
            note.encode("utf-8", "backslashreplace")
        # An OCI bootstrap, then the definition's part of the build.
        first = imageconfig.tree(config, arch=arch, source=SOURCE, epoch=0, version="fuzz",
                                 finish=False)  # fmt: skip
        files = {e.path: e.data for e in first if e.kind is sd.Kind.FILE and e.path in sd.EXISTING}
        rest, _warnings = sd.finish(META, sd.Existing(files), sd.BuildInfo(arch, 0, "fuzz"))
        _check(rest)
        imageconfig.extras(sd.merge(first, rest), 0)
    except SifboxError:
        pass


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
