"""Fuzz target: OCI image layouts and `docker save` archives, resolved to one image
(`sifbox.oci.layout`): index.json, nested indexes, manifests, image configs, manifest.json.

    python fuzz/fuzz_oci_layout.py -max_total_time=60

One input is a list of documents separated by `fuzzlib.SEP`. The first is `index.json` (or,
when it starts with `[`, the `manifest.json` of a docker archive); each other document N is
a blob stored as `blobs/sha256/<its digest>`. So that the fuzzer can keep digests right,
`@DN`, `@SN` and `@FN` in a document are replaced by the digest, the size and the path of
document N (for N greater than the document's own number) before digests are taken. The last
byte (not part of the last document) picks the reference: no tag, tag `latest`, tag `1.0`,
or the digest of document 1. The layout is resolved as `open_image` resolves it, for
linux/amd64. A `SifboxError` is a clean rejection; any other exception is a crash.
"""

from __future__ import annotations

import hashlib
import io
import re

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.oci import layout
    from sifbox.util.errors import SifboxError

WANTED = layout.Platform("linux", "amd64", "")
_PLACEHOLDER = re.compile(rb"@([DSF])([0-9])")


class MemStore(layout.BlobStore):
    def __init__(self, files: dict[str, bytes]):
        super().__init__("fuzz")
        self.files = files

    def open(self, name: str) -> io.RawIOBase:
        try:
            return io.BytesIO(self.files[layout._clean(name)])  # type: ignore[return-value]
        except KeyError:
            raise FileNotFoundError(name) from None

    def exists(self, name: str) -> bool:
        return layout._clean(name) in self.files


def documents(data: bytes) -> list[bytes]:
    """The documents of an input, placeholders replaced, last first."""
    docs = data.split(fuzzlib.SEP)[:10]
    digests: dict[int, bytes] = {}

    def fill(i: int, doc: bytes) -> bytes:
        def repl(m: re.Match[bytes]) -> bytes:
            n = int(m.group(2))
            if n <= i or n not in digests:
                return m.group(0)
            if m.group(1) == b"D":
                return b"sha256:" + digests[n]
            if m.group(1) == b"S":
                return str(len(docs[n])).encode()
            return b"blobs/sha256/" + digests[n]

        return _PLACEHOLDER.sub(repl, doc)

    for i in range(len(docs) - 1, -1, -1):
        docs[i] = fill(i, docs[i])
        digests[i] = hashlib.sha256(docs[i]).hexdigest().encode()
    return docs


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    docs = documents(data[:-1])
    docker = docs[0].lstrip()[:1] == b"["
    files = {("manifest.json" if docker else "index.json"): docs[0]}
    for doc in docs[1:]:
        files[f"blobs/sha256/{hashlib.sha256(doc).hexdigest()}"] = doc
    pick = data[-1] % 4 if data else 0
    tag = {1: "latest", 2: "1.0"}.get(pick)
    digest = (
        f"sha256:{hashlib.sha256(docs[1]).hexdigest()}" if pick == 3 and len(docs) > 1 else None
    )
    ref = layout.SourceRef("docker-archive" if docker else "oci", "/fuzz", tag, digest)
    store = MemStore(files)
    try:
        if ref.transport == "docker-archive" and store.exists("manifest.json"):
            img = layout._docker_archive(store, ref, WANTED)
        else:
            img = layout._oci_layout(store, ref, WANTED)
    except SifboxError:
        return
    str(img.platform)
    for layer in img.layers:
        if layer.digest is not None:
            layout.check_digest(layer.digest, "a layer")
        layer.label  # noqa: B018 - a property that formats
    if not isinstance(img.config, dict):
        raise AssertionError("an image config that is not a JSON object")  # noqa: TRY004


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
