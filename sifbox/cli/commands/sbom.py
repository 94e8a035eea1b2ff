"""`sifbox sbom IMAGE`: the software bill of materials of an image.

    sifbox sbom IMAGE [--format cyclonedx-json|spdx-json] [--output FILE] [--generate]

An SBOM object already in a SIF is shown as is (as `sifbox store` appends
one); otherwise, or with --generate, the image's package databases are read
straight from its SquashFS, without mounting it.
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import SifboxError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sifbox.security.sbom import FORMATS

    p.add_argument("image", metavar="IMAGE", help="SIF file, SquashFS file or sandbox directory")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="document format (default: cyclonedx-json)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE", help="write the SBOM to FILE (atomically)")
    p.add_argument("--generate", action="store_true",
                   help="read the package databases even if the SIF holds an SBOM")  # fmt: skip


def document(path: str, fmt: str | None, generate: bool, verb: str = "read the SBOM of") -> bytes:
    """The SBOM of image `path` (stored one, else generated) as bytes."""
    from sifbox.image.source import ImageKind, one_layer, open_image
    from sifbox.security import sbom

    source = open_image(path, verb=verb)
    one_layer(source, verb)
    try:
        if source.kind is ImageKind.SIF and not generate:
            stored = sbom.stored_sbom(path, source.fd)
            if stored is not None and (fmt is None or stored[1] == fmt):
                return stored[0]
        comps = sbom.components_of_image(source)
    finally:
        source.close()
    return sbom.render(comps, fmt or "cyclonedx-json", os.path.basename(path)).encode()


def main(args: argparse.Namespace) -> int:
    data = document(args.image, args.format, args.generate)
    if args.output:
        if os.path.isdir(args.output):
            raise UsageError(f"can't write SBOM to `{args.output}`: is a directory")
        from sifbox.image.sif_file import write_atomically

        write_atomically(args.output, lambda fp: fp.write(data), verb="write SBOM to")
        return 0
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    except OSError as err:
        raise SifboxError(f"can't write the SBOM: {err.strerror}") from None
    return 0
