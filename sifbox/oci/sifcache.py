"""SIF images of OCI images: fetched, converted once, kept in the cache by manifest digest.

`sifbox pull` writes such a SIF where it is asked to; `sifbox exec|run|shell|test docker://REF`
runs the cached one (or, with the cache disabled, one converted into the temporary directory
for that run alone), as Apptainer does.

    layout = fetch_layout("docker://alpine", platform="linux/amd64", cache_dir=..., no_https=False)
    sif = through_cache(cache_dir, manifest_digest(layout), lambda tmp: convert_to_sif(...))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sifbox.util.errors import SifboxError, UsageError

#: Transports converted from a local file or directory.
LOCAL = ("oci", "oci-archive", "docker-archive")
#: Every transport sifbox converts.
TRANSPORTS = ("docker", *LOCAL)


def fetch_layout(
    uri: str, *, platform: str | None, cache_dir: Path | None, no_https: bool = False
) -> str:
    """An OCI layout of the registry image `uri` (docker://...): in the cache, or, with
    `cache_dir` None (the cache disabled), a private directory the caller removes."""
    from sifbox.oci import cache, registry

    layout = registry.fetch_image(uri, platform=platform, cache_dir=cache_dir or cache.default_cache_dir(),
                                  disable_cache=cache_dir is None, insecure=True if no_https else None)  # fmt: skip
    return str(layout)


def manifest_digest(layout: str) -> str | None:
    """The digest of the one image of an OCI layout (None: none, or several)."""
    import json

    try:
        with open(os.path.join(layout, "index.json"), encoding="utf-8") as f:
            manifests = json.load(f).get("manifests") or []
        return str(manifests[0]["digest"]) if len(manifests) == 1 else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def through_cache(cache_dir: Path, digest: str, convert: Callable[[str], object]) -> Path:
    """The cached SIF of image `digest`; converted first by `convert(tmp_path)` when the
    cache has none (once, however many pulls of the image run at the same time)."""
    from sifbox.oci import cache as cachemod
    from sifbox.util.log import log

    cache = cachemod.Cache(cache_dir)
    with cache.sif_lock(digest):
        cached = cache.cached_sif(digest)
        if cached is None:
            cache.sif_path(digest).parent.mkdir(parents=True, exist_ok=True)
            tmp = str(cache.sif_path(digest)) + f".tmp-{os.getpid()}"
            try:
                convert(tmp)
                cached = cache.store_sif(digest, tmp)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            log.info("Using cached SIF image")  # Apptainer's words
            log.debug("cached SIF of %s: %s", digest, cached)
    return cached


def convert_to_sif(  # type: ignore[no-untyped-def]
    ref, uri: str, out: str, platform, *, explicit: bool, procs: int | None, progress, oci_sif: bool = False
) -> None:
    """Convert the image at `ref` (a layout.SourceRef) for `platform` into the SIF `out` (an
    OCI-SIF with `oci_sif`); `progress` has `step`, `warn`, `advance` and `done`
    (util.progress.Progress)."""
    from sifbox.oci import convert, imageconfig, prescan
    from sifbox.oci.layout import open_image
    from sifbox.util.log import log

    step, warn = progress.step, progress.warn
    img = open_image(ref, platform)
    img.on_read = progress.advance
    try:
        have = img.platform
        if have.architecture and have.architecture != platform.architecture:
            if explicit:
                raise SifboxError(
                    f"can't pull `{uri}`: the image is for `{have}`, not `{platform}`"
                )
            warn(f"the image is for `{have}`, this machine is `{platform}`")
        if not oci_sif and any(layer.media_type == convert.SQUASHFS_LAYER for layer in img.layers):
            raise SifboxError(f"can't pull `{uri}`: its layers are SquashFS (an image pushed from an OCI-SIF)",
                              hint="pull it with --oci")  # fmt: skip
        if oci_sif:
            log.debug("squashing `%s` (%d layers) into the OCI-SIF `%s`", uri, len(img.layers), out)
            convert.convert_oci_sif(img, out, source=uri, procs=procs, warn=warn, step=step)
            return
        for note in imageconfig.notes(img.config):
            log.info("%s", note)
        step("Converting OCI blobs to SIF format")  # Apptainer's words
        log.debug("converting `%s` (%d layers) into `%s`", uri, len(img.layers), out)
        convert.convert(img, out, source=uri, procs=procs, warn=warn, step=step)
    finally:
        progress.done()
        img.store.close()
        prescan.discard()


def sif_for_uri(uri: str, *, cache_dir: Path | None, no_https: bool, procs: int | None, tmpdir: str | None,
                verb: str = "run") -> tuple[str, str | None]:  # fmt: skip
    """A SIF of the image `uri` to run: (path, None) from the cache (converted into it first
    when needed); with `cache_dir` None, or a local transport, (path, directory): converted
    into a new directory under `tmpdir` for this run alone, which the caller removes."""
    import shutil
    import tempfile

    from sifbox.oci.layout import SourceRef, parse_platform, parse_source
    from sifbox.util.log import log
    from sifbox.util.progress import Progress

    transport = uri.partition(":")[0]
    if transport == "oras" and uri.startswith("oras://"):
        return _oras_for_uri(uri, cache_dir=cache_dir, no_https=no_https, tmpdir=tmpdir)
    if transport not in TRANSPORTS or (transport == "docker" and not uri.startswith("docker://")):
        raise UsageError(f"can't {verb} `{uri}`: unsupported URI",
                         hint="sifbox runs docker://REF, oci:DIR, oci-archive:FILE, docker-archive:FILE, "
                         "or an image file")  # fmt: skip
    platform = parse_platform(None, None)
    layout = None
    if transport == "docker":
        layout = fetch_layout(uri, platform=str(platform), cache_dir=cache_dir, no_https=no_https)
        ref = SourceRef("oci", layout)
    else:
        ref = parse_source(uri)
    try:

        def convert(out: str) -> None:
            convert_to_sif(
                ref, uri, out, platform, explicit=False, procs=procs, progress=Progress(log)
            )

        digest = manifest_digest(layout) if layout is not None and cache_dir is not None else None
        if digest is not None:
            assert cache_dir is not None
            return str(through_cache(cache_dir, digest, convert)), None
        work = tempfile.mkdtemp(prefix="sifbox-uri-", dir=tmpdir)
        try:
            out = os.path.join(work, "image.sif")
            convert(out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return out, work
    finally:
        if layout is not None and cache_dir is None:
            shutil.rmtree(layout, ignore_errors=True)


def _oras_for_uri(uri: str, *, cache_dir: Path | None, no_https: bool, tmpdir: str | None) -> tuple[str, str | None]:
    """The SIF of `oras://REF` to run: in the cache by its manifest digest, or downloaded into a
    new directory under `tmpdir` (returned) for this run alone."""
    import shutil
    import tempfile

    from sifbox.oci import oras

    if cache_dir is not None:
        digest = oras.manifest_digest(uri, insecure=no_https)
        return str(through_cache(cache_dir, digest, lambda out: oras.pull(uri, out, insecure=no_https))), None
    work = tempfile.mkdtemp(prefix="sifbox-uri-", dir=tmpdir)
    try:
        out = os.path.join(work, "image.sif")
        oras.pull(uri, out, insecure=no_https)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out, work
