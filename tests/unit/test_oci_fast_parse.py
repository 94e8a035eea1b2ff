"""`sifbox oci`'s common command lines parsed without argparse give what argparse gives, and
anything else is left to argparse."""

from __future__ import annotations

import pytest

from sifbox.cli.commands import BY_NAME, oci
from sifbox.cli.main import fast_args
from sifbox.cli.parser import build_parser

SAME = [
    "oci run --bundle /b id1",
    "oci --root /r run -d --pid-file /p -b /b id1",
    "oci --root=/r --log /l --log-format json create --bundle=/b --console-socket /s --preserve-fds 2 id1",
    "oci --systemd-cgroup --rootless true start id1",
    "-v oci state id1",
    "oci kill id1",
    "oci kill --all id1 KILL",
    "oci kill id1 9 --all",
    "oci delete -f id1",
    "oci --debug delete id1",
    "oci run --no-pivot --no-new-keyring id1 --bundle /b",
]
ARGPARSE = [
    "oci exec id1 ls", "oci run --bund /b id1", "oci run", "oci run a b", "oci kill a b c", "oci --help",
    "oci run --log-format xml id1", "oci --log-format xml run id1", "oci run --preserve-fds x id1",
    "oci run --bundle", "oci run -d=1 id1", "oci run -- id1", "oci list", "oci update --memory 1m id1",
]  # fmt: skip


@pytest.mark.parametrize("line", SAME)
def test_fast_parse_is_argparse(line: str) -> None:
    argv = line.split()
    fast = fast_args(argv, BY_NAME["oci"])
    assert fast is not None
    full = vars(build_parser(full="oci").parse_args(argv))
    ours = {k: v for k, v in vars(fast).items() if k in full}
    assert ours == {k: v for k, v in full.items() if k in ours}
    assert set(full) - set(ours) <= {"_command", "command", "_parser"} | set(), set(full) - set(ours)


@pytest.mark.parametrize("line", ARGPARSE)
def test_left_to_argparse(line: str) -> None:
    assert oci.fast_parse(line.split()[1:]) is None
