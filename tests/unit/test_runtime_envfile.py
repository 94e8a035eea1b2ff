"""`sifbox.runtime.envfile`: --env-file files, evaluated as Apptainer evaluates them (shell
assignments with `set -a`, the host's environment readable, no command run). The results
are checked against dash evaluating the same text where the shell can run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sifbox.runtime.envfile import evaluate
from sifbox.util.errors import UsageError

HOST = {"HOME": "/home/alice", "PATH": "/usr/bin:/bin", "EMPTY": "", "USER": "alice"}


def ev(text: str, **kw: object) -> dict[str, str]:
    return evaluate(text, "f.env", {**HOST, **kw.pop("host", {})}, **kw)  # type: ignore[arg-type]


def test_assignments_and_quoting() -> None:
    text = (
        "# a comment\n"
        "\n"
        "   # indented comment\n"
        "PLAIN=value\n"
        "export EXPORTED=1\n"
        "export    SPACED=2 ALSO=3\n"
        "  INDENTED=3  # trailing comment\n"
        "SINGLE='a  b'\n"
        'DOUBLE="c \\"d\\""\n'
        "EMPTY_ONE=\n"
        'EMPTY_QUOTED=""\n'
        "EQUALS=a=b=c\n"
        "_UNDER_1=u\n"
        "DOLLAR='$HOME'\n"
        "A=1; B=2\n"
        "JOINED=a'b c'\"d\"\\ e\n"
        "MULTI='line1\n"
        "line2'\n"
        "CONT=a\\\n"
        "b\n"
    )
    assert ev(text) == {
        "PLAIN": "value", "EXPORTED": "1", "SPACED": "2", "ALSO": "3", "INDENTED": "3", "SINGLE": "a  b",
        "DOUBLE": 'c "d"', "EMPTY_ONE": "", "EMPTY_QUOTED": "", "EQUALS": "a=b=c", "_UNDER_1": "u",
        "DOLLAR": "$HOME", "A": "1", "B": "2", "JOINED": "ab cd e", "MULTI": "line1\nline2", "CONT": "ab",
    }  # fmt: skip


def test_expansions_read_the_host_and_earlier_lines() -> None:
    text = (
        "A=$HOME/x\n"
        "B=${USER}-${A}\n"
        'C="$PATH:/opt"\n'
        "D=${UNSET:-default} E=${EMPTY:-empty} F=${EMPTY-notempty} G=${USER:+set}\n"
        "H=${NEW:=assigned}\n"
        "I=${#USER}\n"
        "J=~/bin K=~\n"
        "L=$1:$#:$@\n"
        "M=a$\n"
    )
    got = ev(text, args=["one", "two"])
    assert got == {"A": "/home/alice/x", "B": "alice-/home/alice/x", "C": "/usr/bin:/bin:/opt", "D": "default",
                   "E": "empty", "F": "", "G": "set", "NEW": "assigned", "H": "assigned", "I": "5",
                   "J": "/home/alice/bin", "K": "/home/alice", "L": "one:2:one two", "M": "a$"}  # fmt: skip


def test_escaped_dollars_stay_for_the_container() -> None:
    """Apptainer's e2e env files: `PATH="\\$PATH:/"` is `$PATH:/`, evaluated in the container."""
    assert ev('PATH="\\$PATH:/"\n') == {"PATH": "$PATH:/"}
    assert ev('X="\\$(id -u)" Y=\\$UID\n') == {"X": "$(id -u)", "Y": "$UID"}


def test_export_of_a_name_exports_its_value() -> None:
    assert ev("export USER\nexport NOPE\nN=1\nexport N\n") == {"USER": "alice", "N": "1"}


def test_readonly_names_are_not_set() -> None:
    """regressions.go:issue1263: EUID, UID, GID... are the shell's."""
    assert ev("UID=5\nEUID=5\nGID=5\nHOME=/x\nOK=1\nY=$HOME\n") == {"OK": "1", "Y": "/x"}
    assert ev("") == {}


def test_later_files_see_earlier_ones() -> None:
    first = ev("A=1\n")
    assert ev("B=${A}2\n", assigned=first) == {"B": "12"}


@pytest.mark.parametrize(
    "text,line,reason",
    [
        ("A=1\nNOEQUALS\n", 2, "`NOEQUALS`: commands can't run in an env file"),
        ("1A=x", 1, "`1A=x`: commands can't run in an env file"),
        ("A B=x", 1, "`A`: commands can't run in an env file"),
        ("A-B=x", 1, "`A-B=x`: commands can't run in an env file"),
        ("A = 1", 1, "`A`: commands can't run in an env file"),
        ("echo hi\n", 1, "`echo`: commands can't run in an env file"),
        ("A=1 rm -rf /tmp/x\n", 1, "`rm`: commands can't run in an env file"),
        ("A=$(touch /tmp/x)\n", 1, "command substitution ($(...)) is not allowed"),
        ("A=`touch /tmp/x`\n", 1, "command substitution (`...`) is not allowed"),
        ('A="$(touch /tmp/x)"\n', 1, "command substitution ($(...)) is not allowed"),
        ("A=$((1+1))\n", 1, "command substitution ($(...)) is not allowed"),
        ("A=1 > /tmp/x\n", 1, "`>`: only assignments are allowed"),
        ("A=1 | B=2\n", 1, "`|`: only assignments are allowed"),
        ("A=1 &\n", 1, "`&`: only assignments are allowed"),
        ("\n\nA='open\n", 3, "a single quote is not closed"),
        ('A="open\n', 1, "a double quote is not closed"),
        ("A=${B\n", 1, "`${B...}` is not supported"),
        ("A=${B%x}\n", 1, "`${B%...}` is not supported"),
        ("A=${UNSET:?no}\n", 1, "`UNSET`: no"),
        ("export 1A\n", 1, "`export 1A`: not a variable name"),
    ],
)
def test_refused(text: str, line: int, reason: str) -> None:
    with pytest.raises(UsageError) as exc:
        evaluate(text, "my.env", HOST)
    assert str(exc.value) == f"can't read env file `my.env`: line {line}: {reason}"


SAFE = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=20)


@settings(max_examples=40, deadline=None)
@given(value=SAFE)
def test_property_single_quoted_values_round_trip(value: str) -> None:
    quoted = "'" + value.replace("'", "'\\''") + "'"
    assert ev(f"V={quoted}\n") == {"V": value}


@settings(max_examples=40, deadline=None)
@given(value=SAFE.filter(lambda v: "`" not in v and "$0" not in v and "${0" not in v))  # $0: the shell's name
def test_property_double_quoted_like_dash(value: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A double-quoted value without command substitution: what dash makes of it."""
    escaped = value.replace("$(", "\\$(")
    text = f'V="{escaped.replace(chr(34), chr(92) + chr(34))}"\n'
    try:
        got = ev(text)
    except UsageError:
        return  # a value dash can't parse either, or an expansion the evaluator refuses
    cwd = tmp_path_factory.mktemp("dash")
    proc = subprocess.run(["/bin/sh", "-c", f"{text}printf '%s' \"$V\""], env=HOST, capture_output=True,
                          check=False, cwd=cwd, timeout=10)  # fmt: skip
    if proc.returncode == 0:
        assert got["V"].encode("utf-8", "surrogateescape") == proc.stdout
    assert list(Path(cwd).iterdir()) == []


def test_parse_env_file_is_the_evaluator() -> None:
    from sifbox.runtime import env

    assert env.parse_env_file("A=1\nB=${HOME:-none}\n", "f.env") == {"A": "1", "B": "none"}
    assert env.parse_env_file("B=$HOME\n", "f.env", HOST) == {"B": "/home/alice"}


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from("AB_=$'\"\\`{}()#;:-+?~ \t\n|&<>x1") | st.characters(), max_size=60))
@example(text="$¹")  # a digit to str.isdigit(), not to the shell
def test_property_any_file_is_read_or_refused(text: str) -> None:
    """Whatever a file holds: its variables, or a usage error naming a line; nothing else."""
    try:
        got = evaluate(text, "f.env", HOST)
    except UsageError as err:
        assert str(err).startswith("can't read env file `f.env`: line ")
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in got.items())
