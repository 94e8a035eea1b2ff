"""`sifbox push IMAGE oras://REGISTRY/REPOSITORY[:TAG]`: upload a SIF to an OCI registry, as
Apptainer's `push` does (an OCI artifact: the SIF as its one layer,
`application/vnd.sylabs.sif.layer.v1.sif`, and the config `application/vnd.sylabs.sif.config.v1+json`).
`sifbox pull oras://...` fetches it back, byte for byte.

`sifbox push IMAGE.oci.sif docker://REGISTRY/REPOSITORY[:TAG]` uploads the OCI image an OCI-SIF
holds (its SquashFS layers, config and manifest, as SingularityCE pushes them); `sifbox pull --oci
docker://...` makes the same OCI-SIF of it again. `--layer-format tar` converts the SquashFS
layers to gzip tar layers on the way, for other OCI runtimes (SingularityCE 4.2's flag).

Large blobs go up in chunks (SIFBOX_PUSH_CHUNK_SIZE bytes, default 16 MiB) that resume where
the registry stopped after a failure; a progress bar shows on a terminal (not with -q).
"""

from __future__ import annotations

import argparse
import os

from sifbox.util.errors import NotAvailableError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  sifbox push app.sif oras://registry.example.org:5000/group/app:1.0"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("image", metavar="IMAGE", help="the SIF image to upload")
    p.add_argument("uri", metavar="URI", help="oras://REGISTRY/REPOSITORY[:TAG], or docker://... for an OCI-SIF")
    p.add_argument("--layer-format", dest="layer_format", choices=("squashfs", "tar"), default=None,
                   help="docker:// of an OCI-SIF: push the layers as SquashFS (refusing others), or converted "
                   "to tar for other OCI runtimes (default: as they are)")  # fmt: skip
    p.add_argument("--no-https", "--nohttps", dest="no_https", action="store_true",
                   help="use http instead of https (a registry without TLS); also SIFBOX_NOHTTPS=1")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from sifbox.oci.netconf import env_flag
    from sifbox.util.log import log

    uri = args.uri
    scheme = uri.partition("://")[0] if "://" in uri else ""
    if scheme in ("library", "shub"):
        raise NotAvailableError(f"can't push to `{uri}`: {scheme}:// pushes are not available in sifbox",
                                hint="push SIF images to an OCI registry with oras://REGISTRY/REPOSITORY:TAG")  # fmt: skip
    if scheme not in ("oras", "docker"):
        raise UsageError(f"can't push to `{uri}`: unsupported URI", hint="use oras://REGISTRY/REPOSITORY[:TAG]")
    from sifbox.oci import oras
    from sifbox.oci import push as ocipush
    from sifbox.util.progress import Progress

    insecure = args.no_https or env_flag("NOHTTPS") or env_flag("NO_HTTPS")
    chunk = _chunk_size()
    if scheme == "oras":
        if args.layer_format:
            raise UsageError(f"can't push to `{uri}` with --layer-format: an oras:// image is a SIF, pushed as it is")
        digest = oras.push(args.image, uri, insecure=insecure, progress=Progress(log), chunk_size=chunk)
    else:
        digest = ocipush.push_image(args.image, uri, insecure=insecure, layer_format=args.layer_format,
                                    progress=Progress(log), chunk_size=chunk,
                                    tmpdir=os.environ.get("SIFBOX_TMPDIR") or None)  # fmt: skip
    log.info("Upload complete: `%s` (%s)", uri, digest)
    return 0


def _chunk_size() -> int | None:
    value = os.environ.get("SIFBOX_PUSH_CHUNK_SIZE", "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) <= 1 << 34:
        raise UsageError(f"can't use SIFBOX_PUSH_CHUNK_SIZE `{value[:40]}`: not a number of bytes (1 to 16 GiB)")
    return int(value)
