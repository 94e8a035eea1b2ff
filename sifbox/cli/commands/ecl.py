"""`sifbox ecl check IMAGE`: would the execution control list let IMAGE run, and why.

ecl.toml is read beside the sifbox.conf in use (/etc/sifbox/ecl.toml by
default). Exit status 0 when the image is allowed, 1 when it is refused.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(ecl_command=None)
    sub = p.add_subparsers(dest="ecl_command", metavar="SUBCOMMAND", title="subcommands", parser_class=type(p))
    s = sub.add_parser("check", help="Explain whether the ECL allows an image to run",
                       description="Explain whether the execution control list allows IMAGE to run.")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("--ecl", metavar="FILE", default=None, help="ecl.toml to use (default: beside sifbox.conf)")


def main(args: argparse.Namespace) -> int:
    if args.ecl_command is None:
        args._parser._subparsers._group_actions[0].choices[args.command].print_help()
        return 0
    import os

    from sifbox.security import ecl
    from sifbox.util.errors import SifboxError

    path = args.ecl or ecl.config_path(getattr(args, "config", None))
    try:
        fd = os.open(args.image, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise SifboxError(f"can't check `{args.image}`: {err.strerror}") from None
    try:
        cfg = ecl.load(path)
        if cfg is None:
            sys.stdout.write(f"ECL: {path} does not exist\ndecision: allowed: no execution control list\n")
            return 0
        decision = ecl.check_image(args.image, fd, config=cfg)
    finally:
        os.close(fd)
    sys.stdout.write(f"image: {os.path.realpath(args.image)}\n")
    sys.stdout.write(decision.explain())
    return 0 if decision.allowed else 1
