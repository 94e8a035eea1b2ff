"""`sifbox pull`: fetch an OCI/Docker image and convert it to a SIF file.

    sifbox pull [--force] [--oci] [--arch ARCH] [--platform OS/ARCH[/VARIANT]] [OUT.sif] URI

URI: `docker://REF`, `oci:DIR[:TAG|@DIGEST]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:REF]`,
or `oras://REF`: a SIF kept in an OCI registry (`sifbox push`), downloaded as it is.
The output name defaults to NAME_TAG.sif, as Apptainer names it. The layers are merged and
streamed into SquashFS: no root file system is unpacked on disk. With --oci the output is an
OCI-SIF (SingularityCE's `pull --oci`): the layers squashed into one SquashFS layer, kept with
the image config, a manifest and an index in the SIF; the default name is NAME_TAG.oci.sif.
"""

from __future__ import annotations

import argparse
import errno
import os

from sifbox.util.errors import SifboxError, UsageError

LOCAL = ("oci", "oci-archive", "docker-archive")  # as sifbox.oci.sifcache.LOCAL


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "examples:\n"
        "  sifbox pull docker://alpine:3.20\n"
        "  sifbox pull app.sif oci:./layout:v1\n"
        "  sifbox pull --platform linux/arm64 docker-archive:saved.tar"
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("-F", "--force", action="store_true", help="overwrite an image file if it exists")
    p.add_argument("--oci", action="store_true", help="pull to an OCI-SIF image (SingularityCE's OCI-SIF layout)")
    p.add_argument("--arch", help="architecture to pull from an image index (e.g. amd64, arm64, arm/v7)")
    p.add_argument("--platform", help="platform to pull from an image index, OS/ARCH[/VARIANT]")
    p.add_argument("--dir", help="download images to the specific directory")
    p.add_argument("--disable-cache", action="store_true",
                   help="do not use or create cached images/blobs (also SIFBOX_DISABLE_CACHE=1)")
    p.add_argument("--no-https", "--nohttps", dest="no_https", action="store_true",
                   help="use http instead of https for docker:// URIs (a registry without TLS, or "
                   "one whose certificate is not checked); also SIFBOX_NOHTTPS=1")
    p.add_argument("out", nargs="?", metavar="OUT.sif", help="the SIF file to write (default: NAME_TAG.sif)")
    p.add_argument("uri", metavar="URI", help="docker://REF, oras://REF, oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE")


def default_name(uri: str, oci_sif: bool = False) -> str:
    """NAME_TAG.sif for an image URI (Apptainer's naming); NAME_TAG.oci.sif for an OCI-SIF."""
    name = _default_name(uri)
    return name.removesuffix(".sif") + ".oci.sif" if oci_sif else name


def _default_name(uri: str) -> str:
    transport, _, rest = uri.partition(":")
    if transport in ("docker", "oras"):
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


def _copy_atomically(src: str, out: str, uri: str) -> None:
    """`out` becomes a copy of `src` (a cached SIF), whole or not at all."""
    import shutil

    from sifbox.util.atomic import Replacing
    from sifbox.util.errors import describe_os_error
    from sifbox.util.paths import umask

    try:
        with Replacing(os.path.abspath(out), 0o755 & ~umask()) as tmp:  # executable, as Apptainer's
            shutil.copyfile(src, tmp)
    except OSError as err:  # the temporary file is gone: nothing half-written is left
        where = os.path.dirname(os.path.abspath(out))
        raise SifboxError(f"can't pull `{uri}` to `{out}`: {describe_os_error(err)}",
                          hint=f"free some space in `{where}`, or pull elsewhere (--dir)"
                          if err.errno in (errno.ENOSPC, errno.EDQUOT) else None) from None  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from sifbox.oci.layout import SourceRef, parse_platform, parse_source

    uri = args.uri
    out = args.out or default_name(uri, args.oci)
    if args.dir and not os.path.isabs(out):
        out = os.path.join(args.dir, out)
    transport = uri.partition(":")[0]
    if transport == "oras":
        return _oras(args, uri, out)
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
        from sifbox.oci import cache, sifcache

        cache_dir = cache.cache_in_use(args.disable_cache)  # None: disabled (or not writable: warned)
        args.disable_cache = cache_dir is None
        remote_layout = sifcache.fetch_layout(uri, platform=str(platform), cache_dir=cache_dir, no_https=args.no_https)
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


def _oras(args: argparse.Namespace, uri: str, out: str) -> int:
    """A SIF from an OCI registry, as it was pushed (digest-checked, written atomically)."""
    from sifbox.oci import oras
    from sifbox.oci.netconf import env_flag
    from sifbox.util.log import log

    if args.oci:
        raise UsageError(f"can't pull `{uri}` with --oci: an oras:// image is a SIF, pulled as it is")
    if os.path.isdir(out):
        raise SifboxError(f"can't pull `{uri}` to `{out}`: it is a directory")
    if os.path.lexists(out) and not args.force:
        raise SifboxError(f"can't pull `{uri}` to `{out}`: the file exists, will not overwrite it",
                          hint="use --force to overwrite it")  # fmt: skip
    oras.pull(uri, out, insecure=args.no_https or env_flag("NOHTTPS") or env_flag("NO_HTTPS"))
    log.info("Wrote `%s`", out)
    return 0


def _convert(args, uri: str, out: str, ref, platform, explicit: bool, remote_layout: str | None) -> int:  # type: ignore[no-untyped-def]
    """Convert the image at `ref` to the SIF `out`; for registry images, through
    the cache of converted SIFs (one conversion however many pulls run at once)."""
    from sifbox.oci import sifcache

    cached = remote_layout is not None and not args.disable_cache and not args.oci  # OCI-SIFs: blobs cached only
    digest = sifcache.manifest_digest(remote_layout) if cached and remote_layout is not None else None
    if digest is None:
        return _convert_now(args, uri, out, ref, platform, explicit)
    from sifbox.oci import cache as cachemod

    cached = sifcache.through_cache(cachemod.default_cache_dir(), digest,
                                    lambda tmp: _convert_now(args, uri, tmp, ref, platform, explicit))  # fmt: skip
    _copy_atomically(str(cached), out, uri)
    return 0


def _convert_now(args, uri: str, out: str, ref, platform, explicit: bool) -> int:  # type: ignore[no-untyped-def]
    from sifbox.config import sysconf
    from sifbox.oci import sifcache
    from sifbox.util.log import log
    from sifbox.util.progress import Progress

    # `mksquashfs procs` also bounds the SquashFS writer's compression jobs (0: all CPUs).
    procs = sysconf.load(getattr(args, "config", None)).get_int("mksquashfs procs") or None
    sifcache.convert_to_sif(ref, uri, out, platform, explicit=explicit, procs=procs, progress=Progress(log),
                            oci_sif=bool(getattr(args, "oci", False)))  # fmt: skip
    return 0
