"""Fuzz target: applying OCI layers (`sifbox.oci.layers` through `sifbox.oci.convert`):
tar headers of every kind (PAX, GNU long names, sparse, links, devices), whiteouts, opaque
directories, symlinked parents, hard links; gzip layers.

    python fuzz/fuzz_oci_layers.py -max_total_time=60

One input is a list of layer blobs separated by `fuzzlib.SEP`, each a tar stream (or a gzip of
one), of an image whose blobs are verified as they stream. Pass 1 (`merge_plan`: headers only,
plus the generated /.singularity.d entries) and pass 2 (`write_merged`, the one tar stream fed
to tar2sqfs) run as `sifbox pull` runs them, with the `inspect-metadata.json` object a pull
stores (`convert.inspect_metadata`, which looks for metadata files in the layers); the merged
stream is then read back: it must be a well-formed tar whose names are relative, without `..`,
each given once, and whose hard links name an earlier entry. A `SifboxError` is a clean
rejection; any other exception is a crash, and so is a merged stream that breaks those rules.
"""

from __future__ import annotations

import hashlib
import io

import fuzzlib

with fuzzlib.instrumented(__name__, ("tarfile",)):
    import tarfile

    from sifbox.oci import convert, imageconfig, layers, layout
    from sifbox.util.errors import SifboxError

MT = "application/vnd.oci.image.layer.v1.tar"


class MemStore(layout.BlobStore):
    def __init__(self, files: dict[str, bytes]):
        super().__init__("fuzz")
        self.files = files

    def open(self, name: str) -> io.RawIOBase:
        try:
            return io.BytesIO(self.files[name])  # type: ignore[return-value]
        except KeyError:
            raise FileNotFoundError(name) from None

    def exists(self, name: str) -> bool:
        return name in self.files


def image(blobs: list[bytes]) -> layout.Image:
    files, found = {}, []
    for blob in blobs:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        name = f"blobs/sha256/{digest[7:]}"
        files[name] = blob
        found.append(layout.Layer(digest, len(blob), MT, locator=name))
    config_digest = "sha256:" + "0" * 64
    return layout.Image("oci:fuzz", MemStore(files), {}, b"{}", config_digest, found)


def check_merged(out: bytes) -> None:
    seen: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tf:
        for m in tf:
            name = m.name.removeprefix("./") if m.name != "./" else ""
            if name.startswith("/") or ".." in name.split("/"):
                raise AssertionError(f"merged entry `{m.name}` leaves the image")
            if name in seen:
                raise AssertionError(f"merged entry `{m.name}` given twice")
            if m.islnk() and m.linkname not in seen:
                raise AssertionError(
                    f"hard link `{m.name}` to `{m.linkname}`, not an earlier entry"
                )
            seen.add(name)


def _quiet(message: str, size: int | None = None) -> None:
    pass


SOURCE = "docker://registry.fuzz/app:1"


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    img = image(data.split(fuzzlib.SEP)[:8])
    out = io.BytesIO()
    try:
        merger = convert.merge_plan(img, source=SOURCE, epoch=0, warn=_quiet, step=_quiet)
        # The SIF's inspect-metadata.json object, unless the layers bring metadata files.
        tree = convert.generated(img, source=SOURCE, epoch=0)
        convert.inspect_metadata(merger, tree, imageconfig.deffile(SOURCE))
        plan = merger.plan()
        layers.write_merged(plan, img, out, extra_layer=merger.layer_count - 1)
    except SifboxError:
        return
    check_merged(out.getvalue())


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="tar")
