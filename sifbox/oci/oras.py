"""SIF images in OCI registries, as Apptainer and SingularityCE keep them (`oras://`).
(OCI-SIF images pushed as the OCI images they hold, `docker://`: `sifbox.oci.push`.)

    digest = push("app.sif", "oras://registry.example:5000/group/app:1.0")
    pull("oras://registry.example:5000/group/app:1.0", "app.sif")

An image is an OCI artifact: a manifest whose config is `{}` of the media type
`application/vnd.sylabs.sif.config.v1+json` and whose one layer is the SIF file itself,
`application/vnd.sylabs.sif.layer.v1.sif`, titled with its file name. Both ways go through
`sifbox.oci.registry.RegistryClient` (authentication, redirects bounded, retries, HTTPS or the
insecure registries it allows); uploads through `sifbox.oci.upload` (chunks, resume, mounts).

Nothing from the registry is trusted: the manifest is read within 4 MiB and checked against
its digest; the layer's size must be a number the destination's free space can hold; the
download stops at that size and must match the layer's digest and begin with the SIF magic
before it is renamed into place (nothing is left on failure).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any, BinaryIO

from sifbox.oci.auth import resolve_credentials
from sifbox.oci.push import put_manifest, uploader_for
from sifbox.oci.reference import ImageRef, ReferenceError, parse_reference
from sifbox.oci.registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    SIF_CONFIG,
    RegistryClient,
    RegistryError,
)
from sifbox.util.errors import SifboxError, UsageError, describe_os_error

SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
#: The layer media type of Singularity < 3.7's pushes (its typo included), still pulled.
SIF_LAYER_PROTO = "appliciation/vnd.sylabs.sif.layer.tar"
TITLE = "org.opencontainers.image.title"
EMPTY_CONFIG = b"{}"
SIF_MAGIC = b"SIF_MAGIC"
CHUNK = 1 << 20


def parse_uri(uri: str, verb: str) -> ImageRef:
    """`oras://[registry/]repository[:tag][@digest]`; the tag defaults to `latest`."""
    if not uri.startswith("oras://"):
        raise UsageError(f"can't {verb} `{uri}`: not an oras:// URI")
    try:
        ref = parse_reference(uri.removeprefix("oras://"))
    except ReferenceError as err:
        raise UsageError(f"can't {verb} `{uri}`: {err}") from None
    return ref


def client_for(ref: ImageRef, insecure: bool) -> RegistryClient:
    creds = resolve_credentials(ref.registry, ref.repository)
    return RegistryClient(ref, credentials=creds, insecure=insecure)


def _sha256_of(fp: BinaryIO) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    fp.seek(0)
    for chunk in iter(lambda: fp.read(CHUNK), b""):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def manifest_for(layer_digest: str, layer_size: int, title: str) -> bytes:
    """The artifact manifest of one SIF layer."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": SIF_CONFIG, "size": len(EMPTY_CONFIG),
                   "digest": "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()},
        "layers": [{"mediaType": SIF_LAYER, "size": layer_size, "digest": layer_digest,
                    "annotations": {TITLE: title}}],
    }  # fmt: skip
    return json.dumps(doc, separators=(",", ":")).encode()


# -- push -------------------------------------------------------------------------------------
def push(path: str, uri: str, *, insecure: bool = False, progress: Any = None, chunk_size: int | None = None) -> str:
    """Upload the SIF `path` as `uri`; returns the manifest's digest."""
    ref = parse_uri(uri, "push")
    where = f"can't push `{path}` to `{uri}`"
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise SifboxError(f"{where}: {describe_os_error(err)}") from None
    with fp:
        if fp.read(64)[32:41] != SIF_MAGIC:
            raise SifboxError(f"{where}: not a SIF image", hint="`sifbox build` or `sifbox pull` makes one")
        digest, size = _sha256_of(fp)
        up = uploader_for(ref, insecure, progress=progress, chunk_size=chunk_size)
        up.blob(lambda: io.BytesIO(EMPTY_CONFIG), "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest(),
                len(EMPTY_CONFIG), label="config")  # fmt: skip
        up.blob(lambda: open(path, "rb"), digest, size, label=os.path.basename(path))  # noqa: SIM115
    manifest = manifest_for(digest, size, os.path.basename(path))
    put_manifest(up, ref.digest or ref.tag or "latest", manifest, OCI_MANIFEST, where)
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


# -- pull -------------------------------------------------------------------------------------
class _FileWriter:
    """What RegistryClient.download_blob writes to: a temporary file, its size so far."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp, self.size = fp, 0

    def write(self, data: bytes) -> None:
        self.fp.write(data)
        self.size += len(data)

    def truncate(self) -> None:
        self.fp.seek(0)
        self.fp.truncate()
        self.size = 0


def sif_layer(manifest: dict[str, Any], where: str) -> tuple[str, int]:
    """(digest, size) of the SIF layer an artifact manifest names; checked."""
    media = manifest.get("mediaType")
    if media is not None and media not in (OCI_MANIFEST, DOCKER_MANIFEST):
        raise RegistryError(f"{where}: not a SIF artifact (a manifest of the media type `{str(media)[:80]}`)",
                            hint="`sifbox pull docker://...` pulls OCI images")  # fmt: skip
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        count = len(layers) if isinstance(layers, list) else "no list of"
        raise RegistryError(f"{where}: not a SIF artifact ({count} layers, one SIF is expected)",
                            hint="`sifbox pull docker://...` pulls OCI images")  # fmt: skip
    layer = layers[0]
    if layer.get("mediaType") not in (SIF_LAYER, SIF_LAYER_PROTO):
        raise RegistryError(f"{where}: not a SIF artifact (a layer of the media type "
                            f"`{str(layer.get('mediaType'))[:80]}`, not `{SIF_LAYER}`)",
                            hint="`sifbox pull docker://...` pulls OCI images")  # fmt: skip
    digest, size = layer.get("digest"), layer.get("size")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71 or \
            any(ch not in "0123456789abcdef" for ch in digest[7:]):  # fmt: skip
        raise RegistryError(f"{where}: the manifest names the SIF layer with the invalid digest `{str(digest)[:80]}`")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size < 1 << 53:
        raise RegistryError(f"{where}: the manifest gives the SIF layer the invalid size `{str(size)[:40]}`")
    return digest, size


def manifest_digest(uri: str, *, insecure: bool = False) -> str:
    """The digest of the manifest `uri` names now (what the cache keeps its SIF by)."""
    ref = parse_uri(uri, "pull")
    return client_for(ref, insecure).get_manifest(ref.digest or ref.tag or "latest")[2]


def pull(uri: str, out: str, *, insecure: bool = False) -> str:
    """Download the SIF of `uri` to `out` (replaced atomically); returns its digest."""
    ref = parse_uri(uri, "pull")
    where = f"can't pull `{uri}`"
    client = client_for(ref, insecure)
    body, _media, _digest = client.get_manifest(ref.digest or ref.tag or "latest")
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):
        manifest = None
    if not isinstance(manifest, dict):
        raise RegistryError(f"{where}: the manifest is not a JSON object")
    digest, size = sif_layer(manifest, where)
    directory = os.path.dirname(os.path.abspath(out))
    try:
        free = os.statvfs(directory)
    except OSError as err:
        raise SifboxError(f"{where} to `{out}`: {describe_os_error(err)}") from None
    if size > free.f_bavail * free.f_frsize:
        raise SifboxError(f"{where} to `{out}`: the registry says the SIF is {size} bytes, more than the "
                          f"{free.f_bavail * free.f_frsize} free in `{directory}`")  # fmt: skip
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise SifboxError(f"{where} to `{out}`: {describe_os_error(err)}") from None
    try:
        with os.fdopen(fd, "w+b") as fp:
            client.download_blob(digest, size, _FileWriter(fp))  # type: ignore[arg-type]
            fp.flush()
            os.fsync(fp.fileno())
            fp.seek(0)
            if fp.read(64)[32:41] != SIF_MAGIC:
                raise RegistryError(f"{where}: the layer is not a SIF image")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # executable, as Apptainer's pulled SIFs
        os.rename(tmp, out)
    except OSError as err:
        raise SifboxError(f"{where} to `{out}`: {describe_os_error(err)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest
