"""An OCI-SIF pushed to `docker://` as the OCI image it holds, as SingularityCE's `push`:

    digest = push_image("app.oci.sif", "docker://registry.example:5000/group/app:1.0")
    digest = push_image("app.oci.sif", "docker://...", layer_format="tar")

`layer_format`: None pushes the layers as they are (SquashFS: the manifest and config byte
for byte, so the registry's digest is the OCI-SIF's manifest digest); "squashfs" the same, but
refuses a layer of another type; "tar" converts each SquashFS layer to a gzip tar layer
(`sqfs2tar`, overlayfs whiteouts turned into OCI `.wh.` entries) with a new config (its
`diff_ids` the tars' digests) and manifest, so that other OCI runtimes (skopeo + umoci,
containerd) can unpack it. An image with a writable overlay layer is refused.

Blobs go through `sifbox.oci.upload.Uploader` (chunks, resume, cross-repository mounts).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sifbox.oci.reference import ReferenceError, parse_reference
from sifbox.oci.registry import OCI_MANIFEST, RegistryError, _HTTPError
from sifbox.oci.upload import DEFAULT_CHUNK, Slice, Uploader, said
from sifbox.util.errors import SifboxError, UsageError, describe_os_error
from sifbox.util.messages import shown

TAR_GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_FORMATS = ("squashfs", "tar")
_OPAQUE = "trusted.overlay.opaque"


@dataclass
class _Blob:
    """A blob to push: from `path` at `offset` (the OCI-SIF, or a converted layer's file)."""

    path: str
    offset: int
    size: int
    digest: str
    label: str

    def opener(self) -> Any:
        def open_() -> BinaryIO:
            fp = open(self.path, "rb")  # noqa: SIM115 - the uploader closes it
            return _Closing(fp, self.offset, self.size)  # type: ignore[return-value]

        return open_


class _Closing(Slice):
    def close(self) -> None:
        self.fp.close()
        super().close()


def uploader_for(ref: Any, insecure: bool, *, progress: Any = None, chunk_size: int | None = None) -> Uploader:
    from sifbox.oci.auth import resolve_credentials
    from sifbox.oci.cache import default_cache_dir
    from sifbox.oci.registry import RegistryClient

    client = RegistryClient(ref, credentials=resolve_credentials(ref.registry, ref.repository), insecure=insecure)
    return Uploader(client, chunk_size=chunk_size or DEFAULT_CHUNK, progress=progress,
                    locations=default_cache_dir() / "push-locations.json")  # fmt: skip


def put_manifest(up: Uploader, tag: str, manifest: bytes, media: str, where: str) -> None:
    try:
        resp = up.client.request("PUT", f"/v2/{up.repo}/manifests/{tag}", {"Content-Type": media},
                                 ok=(200, 201), body=manifest)  # fmt: skip
    except _HTTPError as err:
        raise RegistryError(f"{where}: the registry refused the manifest: {said(err)}") from None
    resp.close()
    stored, sent = resp.headers.get("Docker-Content-Digest"), "sha256:" + hashlib.sha256(manifest).hexdigest()
    if stored and stored != sent:
        raise RegistryError(f"{where}: the registry stored the manifest `{sent}` as `{shown(stored, 80)}`",
                            hint="the registry or a proxy on the way altered it; "
                            "check what the tag now names")  # fmt: skip


def push_image(path: str, uri: str, *, insecure: bool = False, layer_format: str | None = None,
               progress: Any = None, chunk_size: int | None = None, tmpdir: str | None = None) -> str:  # fmt: skip
    """Upload the image of the OCI-SIF `path` (for this machine) to `docker://REF`; returns the
    digest of the manifest pushed."""
    from sifbox.formats.sif import SifImage, oci
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError
    from sifbox.image.source import oci_image

    where = f"can't push `{path}` to `{uri}`"
    if layer_format not in (None, *LAYER_FORMATS):
        raise UsageError(f"{where}: unknown layer format `{layer_format}`", hint="one of: squashfs, tar")
    try:
        ref = parse_reference(uri.removeprefix("docker://"))
    except ReferenceError as err:
        raise UsageError(f"{where}: {err}") from None
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise SifboxError(f"{where}: {describe_os_error(err)}") from None
    with fp:
        try:
            img = SifImage.load(fp)
            if not oci.is_oci_sif(img):
                raise SifboxError(f"{where}: not an OCI-SIF image",
                                  hint=f"push a SIF with oras://{uri.removeprefix('docker://')}, or make an OCI-SIF "
                                  "with `sifbox pull --oci`")  # fmt: skip
            image = oci_image(img)
            if image.overlay is not None:
                raise SifboxError(f"{where}: the image has a writable overlay layer, which OCI tools can't use")
            raw = {d.oci_digest(): d for d in img.objects() if d.data_type == c.DataType.OCI_BLOB}
            config = img.read(raw[image.config_digest], limit=oci.MAX_DOCUMENT)
            manifest = img.read(raw[image.manifest_digest], limit=oci.MAX_DOCUMENT)
        except SifError as err:
            raise SifboxError(f"{where}: {err}") from None
    n = len(image.layers)
    blobs = [_Blob(path, layer.offset, layer.size, layer.digest, f"layer {i + 1}/{n}")
             for i, layer in enumerate(image.layers)]  # fmt: skip
    media = str(json.loads(manifest).get("mediaType") or OCI_MANIFEST)
    with contextlib.ExitStack() as stack:
        if layer_format == "tar":
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="sifbox-push-", dir=tmpdir))
            blobs, config, manifest = _as_tar(blobs, config, manifest, work, where, progress)
            media = OCI_MANIFEST
        up = uploader_for(ref, insecure, progress=progress, chunk_size=chunk_size)
        for blob in blobs:
            up.blob(blob.opener(), blob.digest, blob.size, label=blob.label)
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        up.blob(_bytes_opener(config), config_digest, len(config), label="config")
        put_manifest(up, ref.digest or ref.tag or "latest", manifest, media, where)
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def _bytes_opener(data: bytes) -> Any:
    import io

    return lambda: io.BytesIO(data)


# -- SquashFS layers as tar ---------------------------------------------------------------------
def _as_tar(blobs: list[_Blob], config: bytes, manifest: bytes, work: str, where: str,
            progress: Any) -> tuple[list[_Blob], bytes, bytes]:  # fmt: skip
    """Each SquashFS layer as a gzip tar in `work`; the config and manifest that name them."""
    if shutil.which("sqfs2tar") is None:
        raise SifboxError(f"{where}: `sqfs2tar` is not installed", hint="install the Debian package squashfs-tools-ng")
    out: list[_Blob] = []
    diff_ids: list[str] = []
    for i, blob in enumerate(blobs):
        if progress is not None:
            progress.step(f"Converting {blob.label} to tar")
        tar_path = os.path.join(work, f"layer{i}.tar.gz")
        diff_id, digest, size = _squashfs_to_tar(blob, os.path.join(work, f"layer{i}.sqfs"), tar_path, where)
        diff_ids.append(diff_id)
        out.append(_Blob(tar_path, 0, size, digest, blob.label))
    if progress is not None:
        progress.done()
    try:
        doc = json.loads(config)
        man = json.loads(manifest)
    except (ValueError, RecursionError):
        raise SifboxError(f"{where}: the image config or manifest is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(man, dict):
        raise SifboxError(f"{where}: the image config or manifest is not a JSON object")
    rootfs: dict[str, Any] = doc["rootfs"] if isinstance(doc.get("rootfs"), dict) else {}
    doc["rootfs"] = {**rootfs, "type": "layers", "diff_ids": diff_ids}
    new_config = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    new_manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(new_config),
                   "digest": "sha256:" + hashlib.sha256(new_config).hexdigest()},
        "layers": [{"mediaType": TAR_GZIP_LAYER, "size": b.size, "digest": b.digest} for b in out],
    }  # fmt: skip
    if isinstance(man.get("annotations"), dict):
        new_manifest["annotations"] = man["annotations"]
    return out, new_config, json.dumps(new_manifest, separators=(",", ":"), ensure_ascii=False).encode()


class _Hashing:
    """A write-only file that hashes and counts what passes through to `fp`."""

    def __init__(self, fp: Any) -> None:
        self.fp, self.h, self.size = fp, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        self.fp.write(data)
        return len(data)

    def flush(self) -> None:
        self.fp.flush()


def _squashfs_to_tar(blob: _Blob, sqfs: str, tar_path: str, where: str) -> tuple[str, str, int]:
    """(diff_id, digest, size) of the gzip tar of the SquashFS `blob` written to `tar_path`."""
    try:
        with open(blob.path, "rb") as src, open(sqfs, "wb") as dst:
            _copy_range(src, dst, blob.offset, blob.size)
        with open(tar_path, "wb") as raw:
            outer = _Hashing(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=6) as gz:
                inner = _Hashing(gz)
                _convert(sqfs, inner, where)
    except OSError as err:
        raise SifboxError(f"{where}: can't convert {blob.label} to tar: {describe_os_error(err)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(sqfs)
    return "sha256:" + inner.h.hexdigest(), "sha256:" + outer.h.hexdigest(), outer.size


def _copy_range(src: BinaryIO, dst: BinaryIO, offset: int, size: int) -> None:
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done, offset + done)
        except OSError:
            n = 0
        if n <= 0:
            src.seek(offset + done)
            data = src.read(min(1 << 20, size - done))
            if not data:
                raise OSError(5, "the layer ends early")
            dst.write(data)
            n = len(data)
        done += n


def _convert(sqfs: str, out: Any, where: str) -> None:
    """sqfs2tar of `sqfs`, its overlayfs whiteouts (0/0 character devices, opaque directories)
    rewritten as OCI whiteouts, to `out` (PAX)."""
    argv = ["sqfs2tar", "--no-skip", sqfs]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    err = b""
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as src, \
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as dst:  # fmt: skip
            for member in src:
                for info, data in _oci_entries(member, src):
                    dst.addfile(info, data)
    except tarfile.TarError as e:
        proc.kill()
        err = proc.stderr.read(65536)
        proc.wait()
        raise SifboxError(f"{where}: can't read the tar of `{' '.join(argv)}`: {e}; {err.decode(errors='replace')}")
    finally:
        proc.stdout.close()
        err = err or proc.stderr.read(65536)
        proc.stderr.close()
        status = proc.wait()
    if status != 0:
        raise SifboxError(f"{where}: `{' '.join(argv)}` failed (status {status}): "
                          f"{err.decode(errors='replace').strip()[-400:]}")  # fmt: skip


def _oci_entries(member: tarfile.TarInfo, src: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, Any]]:
    name = member.name.removeprefix("./")
    parent, _, base = name.rpartition("/")
    prefix = parent + "/" if parent else ""
    if member.ischr() and member.devmajor == 0 and member.devminor == 0:
        wh = tarfile.TarInfo(f"{prefix}.wh.{base}")
        wh.mtime, wh.mode = member.mtime, 0o644
        yield wh, None
        return
    headers = dict(member.pax_headers)
    opaque = headers.pop(f"SCHILY.xattr.{_OPAQUE}", None)
    member.pax_headers = headers
    yield member, src.extractfile(member) if member.isreg() else None
    if member.isdir() and opaque == "y":
        wh = tarfile.TarInfo(f"{name}/.wh..wh..opq")
        wh.mtime, wh.mode = member.mtime, 0o644
        yield wh, None
