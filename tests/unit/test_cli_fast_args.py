"""The actions' command lines parse the same without argparse (`sifbox.cli.main.fast_args`) as
with it, or fall back to argparse."""

from __future__ import annotations

import pytest

from sifbox.cli.commands import BY_NAME
from sifbox.cli.main import fast_args
from sifbox.cli.parser import build_parser

LINES = [
    ["exec", "img.sif", "true"],
    ["exec", "img.sif", "sh", "-c", "echo -B x"],
    ["-v", "exec", "-B", "/a:/b", "--bind=/c", "-e", "--env", "A=1", "img.sif", "python", "x.py", "--flag"],
    ["--config", "/etc/x.conf", "--tmpdir=/t", "-q", "exec", "--pwd", "/w", "-C", "img", "ls", "-l"],
    ["run", "img.sif"],
    ["run", "--app", "foo", "img.sif", "--not-ours", "-B", "x"],
    ["shell", "-s", "/bin/sh", "--fakeroot", "img"],
    ["test", "--writable-tmpfs", "--no-mount", "home,tmp", "-o", "ov:ro", "img"],
    ["exec", "--hostname", "h", "--net", "--network", "none", "-p", "-i", "img", "id"],
    ["exec", "--add-caps", "CAP_NET_RAW", "--keep-privs", "img", "id"],
    ["-d", "exec", "--nv", "img", "true"],
]
FALLBACKS = [
    ["exec", "--help"],
    ["exec", "--cont", "img", "true"],  # abbreviation
    ["exec", "img", "-B", "x", "true"],  # option after the image of exec
    ["exec", "-B"],  # value missing
    ["exec", "-B", "-x", "img", "true"],  # a value that looks like an option
    ["exec", "img", "cmd", "--", "x"],
    ["exec", "--writable=yes", "img", "true"],
    ["exec", "img"],
    ["--version"],
    ["--bogus", "exec", "img", "true"],
]


def _argparse(argv: list[str]) -> dict[str, object]:
    ns = build_parser(full=next(a for a in argv if not a.startswith("-") and a in BY_NAME)).parse_args(argv)
    return {k: v for k, v in vars(ns).items() if not k.startswith("_")}


@pytest.mark.parametrize("argv", LINES, ids=" ".join)
def test_same_as_argparse(argv: list[str]) -> None:
    cmd = BY_NAME[next(a for a in argv if a in BY_NAME)]
    fast = fast_args(argv, cmd)
    assert fast is not None
    assert {k: v for k, v in vars(fast).items() if not k.startswith("_")} == _argparse(argv)


@pytest.mark.parametrize("argv", FALLBACKS, ids=" ".join)
def test_falls_back_to_argparse(argv: list[str]) -> None:
    assert fast_args(argv, BY_NAME["exec"]) is None
