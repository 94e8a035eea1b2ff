"""OCI-SIF: an OCI image layout kept in SIF objects, as SingularityCE 4 writes it
(`sylabs/oci-tools` pkg/sif; spec: shared/spec/sif-format.md §8).

Reading: the one OCI.RootIndex object is an OCI image index; every digest it (and the
manifests and nested indexes below it) names is found among the OCI.Blob objects by the
`sha256:<hex>` text of their extra. `load_image` picks the manifest for a platform and
returns its SquashFS layers (where they lie in the file) and its image config.

Nothing read is trusted: JSON documents are bounded in size and checked against the digest
that names them (so no cycle can form), nested indexes are bounded in depth, every blob lies
inside the file with the size its descriptor says, and each layer must be of a media type
sifbox runs. Errors are `OciSifError` with the reason only; callers add verb and file.

Writing: `write` creates an OCI-SIF from the blobs of one image (layers, config, manifest,
then the root index last), deterministic and with exactly as many descriptors as objects,
byte for byte as oci-tools' `sif.Write` lays them out.
"""

from __future__ import annotations

import hashlib
import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, BinaryIO

from dataclasses import dataclass

from sifbox.formats.sif import constants as c
from sifbox.formats.sif.image import SifError, SifImage
from sifbox.formats.sif.layout import Descriptor

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
#: SingularityCE's layer media types: the squashed root file system, a writable overlay.
SQUASHFS_LAYER = "application/vnd.sylabs.image.layer.v1.squashfs"
EXT3_LAYER = "application/vnd.sylabs.image.layer.v1.ext3"
#: The artifact type of SingularityCE's data containers (not runnable).
DATA_CONTAINER = "application/vnd.sylabs.data-container.v1"

#: The ENTRYPOINT of an OCI-SIF built from a definition file: the image carries its own
#: `/.singularity.d` (runscript, environment, labels, startscript, apps), which it keeps.
DEFFILE_ENTRYPOINT = ["/.singularity.d/actions/run"]

#: Largest index, manifest or image config read (bytes); deepest nesting of indexes.
MAX_DOCUMENT = 4 << 20
MAX_DEPTH = 4
MAX_ENTRIES = 1024


class OciSifError(SifError):
    reference = "oci-sif"


@dataclass(frozen=True)
class Layer:
    """A layer blob of the chosen manifest: where its bytes lie in the file."""

    media_type: str
    digest: str
    offset: int
    size: int


@dataclass(frozen=True)
class OciImage:
    """The runnable image of an OCI-SIF: its manifest, config and layers (bottom first)."""

    manifest_digest: str
    config_digest: str
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    #: the writable EXT3 overlay layer SingularityCE may add on top, if any
    overlay: Layer | None = None


def is_oci_sif(img: SifImage) -> bool:
    return any(d.data_type == c.DataType.OCI_ROOT_INDEX for d in img.objects())


def _digest_ok(text: object) -> bool:
    if not isinstance(text, str) or not text.startswith("sha256:") or len(text) != 71:
        return False
    return all(ch in "0123456789abcdef" for ch in text[7:])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Blobs:
    """The OCI objects of an image, by digest."""

    def __init__(self, img: SifImage) -> None:
        self.img = img
        self.by_digest: dict[str, Descriptor] = {}
        roots = []
        for d in img.objects():
            if d.data_type == c.DataType.OCI_ROOT_INDEX:
                roots.append(d)
            elif d.data_type == c.DataType.OCI_BLOB:
                self.by_digest.setdefault(d.oci_digest(), d)
        if not roots:
            raise OciSifError("not an OCI-SIF image: it has no OCI.RootIndex object")
        if len(roots) > 1:
            raise OciSifError(f"malformed OCI-SIF image: {len(roots)} OCI.RootIndex objects, one is allowed")
        self.root = roots[0]

    def find(self, desc: dict[str, Any], what: str) -> Descriptor:
        digest, size = desc.get("digest"), desc.get("size")
        if not _digest_ok(digest):
            raise OciSifError(f"malformed OCI-SIF image: {what} has the invalid digest `{_show(digest)}`")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise OciSifError(f"malformed OCI-SIF image: {what} has the invalid size `{_show(size)}`")
        d = self.by_digest.get(str(digest))
        if d is None:
            raise OciSifError(f"malformed OCI-SIF image: {what} `{digest}` is missing from the image")
        if d.size != size:
            raise OciSifError(f"malformed OCI-SIF image: {what} `{digest}` is {d.size} bytes, "
                              f"its descriptor says {size}")  # fmt: skip
        try:
            self.img.check_bounds(d)
        except SifError as err:
            raise OciSifError(f"malformed OCI-SIF image: {what} `{digest}`: {err}") from None
        return d

    def document(self, d: Descriptor, what: str, digest: str | None) -> dict[str, Any]:
        """A JSON object read from `d` (bounded), checked against `digest` when given."""
        if d.size > MAX_DOCUMENT:
            raise OciSifError(f"malformed OCI-SIF image: {what} is {d.size} bytes, more than the "
                              f"{MAX_DOCUMENT} allowed")  # fmt: skip
        try:
            raw = self.img.read(d)
        except SifError as err:
            raise OciSifError(f"malformed OCI-SIF image: {what}: {err}") from None
        if digest is not None and sha256(raw) != digest:
            raise OciSifError(f"malformed OCI-SIF image: {what} does not match its digest `{digest}`")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise OciSifError(f"malformed OCI-SIF image: {what} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise OciSifError(f"malformed OCI-SIF image: {what} is not a JSON object")
        return doc


def _show(value: object) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _entries(doc: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    items = doc.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise OciSifError(f"malformed OCI-SIF image: {what} has no list of `{key}`")
    if len(items) > MAX_ENTRIES:
        raise OciSifError(f"malformed OCI-SIF image: {what} has {len(items)} {key}, at most {MAX_ENTRIES}")
    return items


def _platform_ok(entry: dict[str, Any], arch: str) -> bool:
    p = entry.get("platform")
    if not isinstance(p, dict):
        return True  # no platform: SingularityCE's own single-image indexes
    return p.get("os") == "linux" and p.get("architecture") == arch


def _choose(blobs: _Blobs, index: dict[str, Any], arch: str, depth: int) -> tuple[str, dict[str, Any]]:
    """(digest, manifest) of the first image manifest for `arch`, depth first."""
    what = "the root index" if depth == 0 else "a nested index"
    offered: list[str] = []
    for entry in _entries(index, "manifests", what):
        media = entry.get("mediaType")
        if media in MANIFEST_TYPES:
            if entry.get("artifactType") == DATA_CONTAINER:
                offered.append("data container")
                continue
            if not _platform_ok(entry, arch):
                p = entry["platform"]
                offered.append(f"{_show(p.get('os'))}/{_show(p.get('architecture'))}")
                continue
            d = blobs.find(entry, "the manifest")
            return str(entry["digest"]), blobs.document(d, "the manifest", str(entry["digest"]))
        if media in INDEX_TYPES:
            if depth + 1 >= MAX_DEPTH:
                raise OciSifError(f"malformed OCI-SIF image: indexes nested more than {MAX_DEPTH} deep")
            d = blobs.find(entry, "a nested index")
            try:
                return _choose(blobs, blobs.document(d, "a nested index", str(entry["digest"])), arch, depth + 1)
            except _NoImage as err:
                offered += err.offered
    raise _NoImage(offered)


class _NoImage(OciSifError):
    def __init__(self, offered: list[str]) -> None:
        super().__init__("no image")
        self.offered = offered


def load_image(img: SifImage, arch: str) -> OciImage:
    """The image of the OCI-SIF `img` for linux/`arch` (Go's names: amd64, arm64, ...)."""
    blobs = _Blobs(img)
    stored = blobs.root.oci_digest()  # the digest its descriptor records, when it records one
    root = blobs.document(blobs.root, "the root index", stored if stored.startswith("sha256:") else None)
    try:
        manifest_digest, manifest = _choose(blobs, root, arch, 0)
    except _NoImage as err:
        held = ", ".join(sorted(set(err.offered))) or "nothing"
        raise OciSifError(f"the OCI-SIF image holds no image for linux/{arch} (it holds: {held})") from None
    media = manifest.get("mediaType")
    if media is not None and media not in MANIFEST_TYPES:
        raise OciSifError(f"malformed OCI-SIF image: the manifest has the media type `{_show(media)}`")
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict):
        raise OciSifError("malformed OCI-SIF image: the manifest has no config")
    cd = blobs.find(config_desc, "the image config")
    config_digest = str(config_desc["digest"])
    config = blobs.document(cd, "the image config", config_digest)
    layers: list[Layer] = []
    overlay = None
    entries = _entries(manifest, "layers", "the manifest")
    for i, entry in enumerate(entries):
        lmedia = entry.get("mediaType")
        d = blobs.find(entry, f"layer {i + 1}")
        found = Layer(str(lmedia), str(entry["digest"]), d.offset, d.size)
        if lmedia == EXT3_LAYER and i == len(entries) - 1 and layers:
            overlay = found
        elif lmedia == SQUASHFS_LAYER:
            layers.append(found)
        else:
            raise OciSifError(f"layer {i + 1} is of the media type `{_show(lmedia)}`; sifbox runs OCI-SIF "
                              f"images of SquashFS layers (`{SQUASHFS_LAYER}`)")  # fmt: skip
    if not layers:
        raise OciSifError("the OCI-SIF image has no SquashFS layer")
    return OciImage(manifest_digest, config_digest, config, tuple(layers), overlay)


def own_metadata(config: dict[str, Any]) -> bool:
    """Whether the image (a definition-file build) carries its own `/.singularity.d`."""
    inner = config.get("config")
    return isinstance(inner, dict) and inner.get("Entrypoint") == DEFFILE_ENTRYPOINT


def singularity_files(config: dict[str, Any]) -> list[tuple[str, bytes, int]]:
    """The `/.singularity.d` files an image config gives (path, bytes, mode): what a pull
    of the same image to SIF writes there (runscript from ENTRYPOINT/CMD, env scripts from
    ENV, labels), so that OCI-SIF and SIF of one image run alike. None for an image built
    from a definition file, whose layer has its own."""
    from sifbox.formats import singularityd as sd

    if own_metadata(config):
        return []

    tree = sd.replacing(sd.merge(sd.base_tree(), sd.oci_tree(sd.OciConfig.from_config(config))))
    return [(e.path, e.data, e.mode) for e in tree if e.kind is sd.Kind.FILE and e.path.startswith(sd.SD + "/")]


# -- writing ----------------------------------------------------------------------------------
def _json(doc: dict[str, Any]) -> bytes:
    """Compact JSON in the given key order (as Go's encoding/json marshals structs)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def descriptor(media_type: str, data_digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "size": size, "digest": data_digest}


def manifest_for(config: bytes, layers: Sequence[tuple[str, int]], annotations: dict[str, str] | None = None) -> bytes:
    """The OCI image manifest of SquashFS `layers` ((digest, size), bottom first)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, sha256(config), len(config)),
        "layers": [descriptor(SQUASHFS_LAYER, d, n) for d, n in layers],
    }
    if annotations:
        doc["annotations"] = annotations
    return _json(doc)


#: The top-level fields of an image config, in the order go-containerregistry writes them.
CONFIG_ORDER = ("architecture", "author", "container", "created", "docker_version", "history", "os", "rootfs",
                "config", "os.version", "variant", "os.features")  # fmt: skip


def squashed_config(config: dict[str, Any], layer_digest: str, *, created: str, created_by: str,
                    source_digest: str | None) -> bytes:  # fmt: skip
    """The image config of an image squashed to the one SquashFS layer `layer_digest`: its
    diff_ids that layer, a history entry saying so (as SingularityCE's OCI-SIF writer)."""
    doc = {k: config[k] for k in CONFIG_ORDER if k in config}
    history = [h for h in config.get("history") or [] if isinstance(h, dict)]
    entry: dict[str, Any] = {"created": created, "created_by": created_by}
    if source_digest:
        entry["comment"] = "oci-sif created from " + source_digest.removeprefix("sha256:")
    doc["history"] = [*history, entry]
    doc["rootfs"] = {"type": "layers", "diff_ids": [layer_digest]}
    ordered = {k: doc[k] for k in CONFIG_ORDER if k in doc}
    ordered.setdefault("os", "linux")
    return _json(ordered)


def index_for(manifests: Iterable[bytes]) -> bytes:
    """The root index of image `manifests` (as an empty index with them appended)."""
    return _json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                  "manifests": [descriptor(OCI_MANIFEST, sha256(m), len(m)) for m in manifests]})  # fmt: skip


#: SingularityCE's spare descriptors in a new OCI-SIF (for signatures and an overlay).
SPARE_DESCRIPTORS = 8


def write(fp: BinaryIO, blobs: Sequence[bytes | tuple[BinaryIO, int, str]], root_index: bytes, *,
          spare: int = 0) -> SifImage:  # fmt: skip
    """Create an OCI-SIF in the empty file `fp`: `blobs` in order (bytes, or an open file,
    its size and digest: a layer is streamed, never held in memory), then `root_index`."""
    from sifbox.formats.sif.edit import ObjectInput, create
    from sifbox.formats.sif.layout import oci_digest_extra

    objects = []
    for b in blobs:
        if isinstance(b, bytes):
            objects.append(ObjectInput(c.DataType.OCI_BLOB, b))
        else:
            if not _digest_ok(b[2]):
                raise OciSifError(f"invalid digest `{_show(b[2])}`")
            objects.append(ObjectInput(c.DataType.OCI_BLOB, b[0], size=b[1], extra=oci_digest_extra(b[2])))
    objects.append(ObjectInput(c.DataType.OCI_ROOT_INDEX, root_index))
    return create(fp, objects, deterministic=True, capacity=len(objects) + spare)
