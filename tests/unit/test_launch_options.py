"""Apptainer's privilege, fakeroot-mode and timeout options (sifbox.runtime.options), and their
command lines (parsed the same with and without argparse)."""

from __future__ import annotations

import pytest

from sifbox.cli.commands import BY_NAME
from sifbox.cli.main import fast_args
from sifbox.cli.parser import build_parser
from sifbox.runtime.options import format_duration, parse_duration, parse_security
from sifbox.util.errors import ExitStatus, NotAvailableError, UsageError


@pytest.mark.parametrize(
    ("values", "want"),
    [
        (["uid:1000,gid:1000"], (1000, 1000, (1000,))),
        (["uid:1000", "gid:100:27:100"], (1000, 100, (100, 27))),
        (["uid:5"], (5, 0, ())),  # a uid alone keeps root's group, as Apptainer
        (["gid:7"], (0, 7, (7,))),
        ([" UID:3 , gid:4 "], (3, 4, (4,))),
        ([], None),
        ([""], None),
    ],
)
def test_security_identity(values: list[str], want: object) -> None:
    assert parse_security(values, is_root=True) == want


@pytest.mark.parametrize(
    "value",
    ["uid:", "uid:-1", "uid:abc", "uid:1.5", "gid:1::2", "uid:99999999999", "uid:4294967295", "uid:١٢", "nope:1", "uid"],
)
def test_security_bad_values_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_security([value], is_root=True)
    assert err.value.exit_status == ExitStatus.USAGE
    assert f"`{value}`" in err.value.message or "`uid:`" in err.value.message


def test_security_seccomp_is_a_profile() -> None:
    from sifbox.runtime.options import parse_seccomp

    assert parse_security(["uid:1,seccomp:/tmp/p.json"], is_root=True) == (1, 0, ())
    assert parse_security(["seccomp:/tmp/p.json"], is_root=False) is None
    assert parse_seccomp(["uid:1,seccomp:/tmp/a.json", "SECCOMP:/b.json"]) == "/b.json"
    assert parse_seccomp(["uid:1"]) is None


@pytest.mark.parametrize("value", ["apparmor:unconfined", "selinux:user_u:role_r:type_t"])
def test_security_lsm_are_refused(value: str) -> None:
    with pytest.raises(NotAvailableError) as err:
        parse_security([f"uid:1,{value}"], is_root=True)
    assert err.value.exit_status == ExitStatus.USAGE
    assert "\n" not in err.value.message


def test_security_identity_is_root_only() -> None:
    for value in ("uid:0", "gid:0", "uid:1000,gid:1000"):
        with pytest.raises(UsageError, match="only root"):
            parse_security([value], is_root=False)


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [
        ("1s", 1.0, "1s"),
        ("2m", 120.0, "2m0s"),
        ("1m30s", 90.0, "1m30s"),
        ("1.5h", 5400.0, "1h30m0s"),
        ("500ms", 0.5, "500ms"),
        ("1.5s", 1.5, "1.5s"),
        ("0", 0.0, "0s"),
        ("+10s", 10.0, "10s"),
    ],
)
def test_durations_as_go_writes_them(text: str, seconds: float, shown: str) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert format_duration(parse_duration(text)) == shown


@pytest.mark.parametrize("text", ["", "1", "s", "-1s", "1x", "1s2", "1..5s", "ten seconds", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="--runscript-timeout"):
        parse_duration(text)


LINES = [
    ["exec", "--security", "uid:1000,gid:1000", "--security", "gid:1:2", "img", "id"],
    ["run", "--runscript-timeout", "30s", "--disable-cache", "--no-https", "docker://alpine"],
    ["run", "--nohttps", "--unsquash", "img"],
    ["shell", "--ignore-subuid", "--ignore-fakeroot-command", "--ignore-userns", "-f", "img"],
    ["test", "--allow-setuid", "img"],
]


def _argparse(argv: list[str]) -> dict[str, object]:
    ns = build_parser(full=argv[0]).parse_args(argv)
    return {k: v for k, v in vars(ns).items() if not k.startswith("_")}


@pytest.mark.parametrize("argv", LINES, ids=" ".join)
def test_new_flags_parse_the_same_without_argparse(argv: list[str]) -> None:
    fast = fast_args(argv, BY_NAME[argv[0]])
    assert fast is not None
    assert {k: v for k, v in vars(fast).items() if not k.startswith("_")} == _argparse(argv)


def test_boot_is_an_instance_flag_only() -> None:
    """As Apptainer: `--boot` belongs to `instance start|run`; an action does not know it."""
    ns = build_parser(full="instance").parse_args(["instance", "start", "--boot", "img", "name"])
    assert ns.boot is True
    with pytest.raises(UsageError, match="unknown flag `--boot`"):
        build_parser(full="exec").parse_args(["exec", "--boot", "img", "true"])
