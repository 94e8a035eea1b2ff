"""`sifbox pull`: fetch an OCI/Docker image and convert it to a SIF file.

    sifbox pull [--force] [--arch ARCH] [--platform OS/ARCH[/VARIANT]] [OUT.sif] URI

URI: `docker://REF`, `oci:DIR[:TAG|@DIGEST]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:REF]`.
The output name defaults to NAME_TAG.sif, as Apptainer names it. The layers are merged and
streamed into SquashFS: no root file system is unpacked on disk.
"""

from __future__ import annotations

import argparse
import errno
import os

from sifbox.util.errors import SifboxError, UsageError

LOCAL = ("oci", "oci-archive", "docker-archive")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "examples:\n"
        "  sifbox pull docker://alpine:3.20\n"
        "  sifbox pull app.sif oci:./layout:v1\n"
        "  sifbox pull --platform linux/arm64 docker-archive:saved.tar"
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("-F", "--force", action="store_true", help="overwrite an image file if it exists")
    p.add_argument("--arch", help="architecture to pull from an image index (e.g. amd64, arm64, arm/v7)")
    p.add_argument("--platform", help="platform to pull from an image index, OS/ARCH[/VARIANT]")
    p.add_argument("--dir", help="download images to the specific directory")
    p.add_argument("--disable-cache", action="store_true", help="do not use or create cached images/blobs")
    p.add_argument("--no-https", "--nohttps", dest="no_https", action="store_true",
                   help="use http instead of https for docker:// URIs (a registry without TLS, or "
                   "one whose certificate is not checked); also SIFBOX_NOHTTPS=1")
    p.add_argument("out", nargs="?", metavar="OUT.sif", help="the SIF file to write (default: NAME_TAG.sif)")
    p.add_argument("uri", metavar="URI", help="docker://REF, oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE")


def default_name(uri: str) -> str:
    """NAME_TAG.sif for an image URI (Apptainer's naming)."""
    transport, _, rest = uri.partition(":")
    if transport == "docker":
        ref = rest.removeprefix("//")
        name_part, at, digest = ref.partition("@")
        last = name_part.rsplit("/", 1)[-1]
        name, _, tag = last.partition(":")
        if at:
            tag = digest.split(":")[-1][:12]
        return f"{name}_{tag or 'latest'}.sif"
    from sifbox.oci.layout import parse_source

    ref = parse_source(uri)
    base = os.path.basename(ref.path.rstrip("/")) or "image"
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    tag = ref.tag.rsplit(":", 1)[-1] if ref.tag else (ref.digest.split(":")[-1][:12] if ref.digest else "latest")
    return f"{base}_{tag}.sif"


def _fetch_remote(uri: str, platform: str | None, disable_cache: bool, no_https: bool = False) -> str:
    """An OCI layout of the image at `uri` (in the cache, or a private directory
    the caller removes when `disable_cache`)."""
    from sifbox.oci import cache, registry

    layout = registry.fetch_image(uri, platform=platform, cache_dir=cache.default_cache_dir(),
                                  disable_cache=disable_cache, insecure=True if no_https else None)  # fmt: skip
    return str(layout)


def _manifest_digest(layout: str) -> str | None:
    import json

    try:
        with open(os.path.join(layout, "index.json"), encoding="utf-8") as f:
            manifests = json.load(f).get("manifests") or []
        return str(manifests[0]["digest"]) if len(manifests) == 1 else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _copy_atomically(src: str, out: str, uri: str) -> None:
    """`out` becomes a copy of `src` (a cached SIF), whole or not at all."""
    import shutil

    from sifbox.util.atomic import Replacing
    from sifbox.util.errors import describe_os_error
    from sifbox.util.paths import umask

    try:
        with Replacing(os.path.abspath(out), 0o644 & ~umask()) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as err:  # the temporary file is gone: nothing half-written is left
        where = os.path.dirname(os.path.abspath(out))
        raise SifboxError(f"can't pull `{uri}` to `{out}`: {describe_os_error(err)}",
                          hint=f"free some space in `{where}`, or pull elsewhere (--dir)"
                          if err.errno in (errno.ENOSPC, errno.EDQUOT) else None) from None  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from sifbox.oci.layout import SourceRef, parse_platform, parse_source

    uri = args.uri
    out = args.out or default_name(uri)
    if args.dir and not os.path.isabs(out):
        out = os.path.join(args.dir, out)
    transport = uri.partition(":")[0]
    if transport not in (*LOCAL, "docker"):
        raise UsageError(f"can't pull `{uri}`: unsupported URI",
                         hint="use docker://REF, oci:DIR, oci-archive:FILE or docker-archive:FILE")  # fmt: skip
    if os.path.isdir(out):
        raise SifboxError(f"can't pull `{uri}` to `{out}`: it is a directory")
    if os.path.lexists(out) and not args.force:
        raise SifboxError(f"can't pull `{uri}` to `{out}`: the file exists, will not overwrite it",
                          hint="use --force to overwrite it")  # fmt: skip
    platform = parse_platform(args.platform, args.arch)
    explicit = bool(args.platform or args.arch)
    remote_layout = None
    if transport == "docker":
        if not uri.startswith("docker://"):
            raise UsageError(f"can't pull `{uri}`: write docker://REF")
        remote_layout = _fetch_remote(uri, str(platform), args.disable_cache, args.no_https)
        ref = SourceRef("oci", remote_layout)
    else:
        ref = parse_source(uri)
    try:
        _convert(args, uri, out, ref, platform, explicit, remote_layout)
        from sifbox.util.log import log

        log.info("Wrote `%s`", out)
        return 0
    finally:
        if remote_layout is not None and args.disable_cache:
            import shutil

            shutil.rmtree(remote_layout, ignore_errors=True)


def _convert(args, uri: str, out: str, ref, platform, explicit: bool, remote_layout: str | None) -> int:  # type: ignore[no-untyped-def]
    """Convert the image at `ref` to the SIF `out`; for registry images, through
    the cache of converted SIFs (one conversion however many pulls run at once)."""
    from sifbox.util.log import log

    digest = _manifest_digest(remote_layout) if remote_layout is not None and not args.disable_cache else None
    if digest is None:
        return _convert_now(args, uri, out, ref, platform, explicit)
    from sifbox.oci import cache as cachemod

    cache = cachemod.Cache(cachemod.default_cache_dir())
    with cache.sif_lock(digest):
        cached = cache.cached_sif(digest)
        if cached is None:
            cache.sif_path(digest).parent.mkdir(parents=True, exist_ok=True)
            tmp = str(cache.sif_path(digest)) + f".tmp-{os.getpid()}"
            try:
                _convert_now(args, uri, tmp, ref, platform, explicit)
                cached = cache.store_sif(digest, tmp)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            log.info("Using cached SIF image")  # Apptainer's words
            log.debug("cached SIF of %s: %s", digest, cached)
    _copy_atomically(str(cached), out, uri)
    return 0


def _convert_now(args, uri: str, out: str, ref, platform, explicit: bool) -> int:  # type: ignore[no-untyped-def]
    from sifbox.oci.layout import open_image
    from sifbox.util.log import log

    progress = Progress(log)
    step, warn = progress.step, progress.warn

    from sifbox.config import sysconf
    from sifbox.oci import convert, imageconfig

    # `mksquashfs procs` also bounds the SquashFS writer's compression jobs (0: all CPUs).
    procs = sysconf.load(getattr(args, "config", None)).get_int("mksquashfs procs") or None
    img = open_image(ref, platform)
    img.on_read = progress.advance
    try:
        have = img.platform
        if have.architecture and have.architecture != platform.architecture:
            if explicit:
                raise SifboxError(f"can't pull `{uri}`: the image is for `{have}`, not `{platform}`")
            warn(f"the image is for `{have}`, this machine is `{platform}`")
        for note in imageconfig.notes(img.config):
            log.info("%s", note)
        step("Converting OCI blobs to SIF format")  # Apptainer's words
        log.debug("converting `%s` (%d layers) into `%s`", uri, len(img.layers), out)
        convert.convert(img, out, source=uri, procs=procs, warn=warn, step=step)
    finally:
        progress.done()
        img.store.close()
    return 0


class Progress:
    """Step lines; on a terminal (at the default verbosity) each step that reads a blob
    shows a bar of the bytes read instead. `-q` shows neither."""

    def __init__(self, log) -> None:  # type: ignore[no-untyped-def]
        import logging
        import sys

        self.log = log
        self.out = sys.stderr
        self.tty = self.out.isatty() and log.getEffectiveLevel() == logging.INFO
        self.label = ""
        self.total: int | None = None
        self.done_bytes = 0
        self.shown = 0.0
        self.active = False

    def step(self, message: str, size: int | None = None) -> None:
        self._end_line()
        if not self.tty:
            self.log.info("%s", message)
            return
        self.label, self.total, self.done_bytes = message, size, 0
        self.active = True
        self._draw(force=True)

    def warn(self, message: str) -> None:
        self._end_line()
        self.log.warning("%s", message)

    def advance(self, n: int) -> None:
        if self.active:
            self.done_bytes += n
            self._draw()

    def done(self) -> None:
        self._end_line()

    def _draw(self, force: bool = False) -> None:
        import time

        now = time.monotonic()
        if not force and now - self.shown < 0.1:
            return
        self.shown = now
        mb = self.done_bytes / (1 << 20)
        if self.total:
            frac = min(1.0, self.done_bytes / self.total)
            bar = "#" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {frac:4.0%} {mb:.0f}/{self.total / (1 << 20):.0f} MB"
        else:
            text = f"{self.label} {mb:.0f} MB" if self.done_bytes else self.label
        self.out.write(f"\r\033[K{text}")
        self.out.flush()

    def _end_line(self) -> None:
        if self.active:
            self._draw(force=True)
            self.out.write("\n")
            self.out.flush()
            self.active = False
