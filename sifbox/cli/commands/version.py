"""`sifbox version`: print the version."""

from __future__ import annotations

import argparse

from sifbox import __version__


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    print(__version__)
    return 0
