"""`sifbox run-help IMAGE`: print the image's runscript help (`%help`)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--app", metavar="NAME", help="show the help of an app")


def main(args: argparse.Namespace) -> int:
    from sifbox.image.files import read_file
    from sifbox.image.source import open_image

    src = open_image(args.image, verb="show the help of")
    try:
        path = f"/scif/apps/{args.app}/scif/runscript.help" if args.app else "/.singularity.d/runscript.help"
        data = read_file(src, path)
    finally:
        src.close()
    if data is None:
        what = f"app {args.app}" if args.app else "this image"
        sys.stdout.write(f"No help sections were defined for {what}\n")
        return 0
    sys.stdout.write(data.decode("utf-8", "replace"))
    return 0
