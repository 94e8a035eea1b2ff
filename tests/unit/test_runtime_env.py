"""`sifbox.runtime.env`: the container's environment, with Apptainer's
precedence (apptainer-behaviour.md A.5).

The pure functions are tested directly; PRELUDE, the shell code that runs
first in the container, is run for real with /bin/sh against a temporary
directory standing in for the image's /.singularity.d (the path is replaced
in a copy of the script: no chroot, no namespaces).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sifbox.runtime import env
from sifbox.util.errors import UsageError


# -- parse_env_file ---------------------------------------------------------------------------
def test_parse_env_file() -> None:
    text = (
        "# a comment\n"
        "\n"
        "   # indented comment\n"
        "PLAIN=value\n"
        "export EXPORTED=1\n"
        "export    SPACED=2\n"
        "  INDENTED=3  \n"
        "SINGLE='a  b'\n"
        'DOUBLE="c \\"d\\""\n'
        "EMPTY=\n"
        'EMPTY_QUOTED=""\n'
        "EQUALS=a=b=c\n"
        "WORDS=x   y\n"
        "_UNDER_1=u\n"
        "DOLLAR='$HOME'\n"
    )
    assert env.parse_env_file(text, "f.env") == {
        "PLAIN": "value",
        "EXPORTED": "1",
        "SPACED": "2",
        "INDENTED": "3",
        "SINGLE": "a  b",
        "DOUBLE": 'c "d"',
        "EMPTY": "",
        "EMPTY_QUOTED": "",
        "EQUALS": "a=b=c",
        "WORDS": "x y",
        "_UNDER_1": "u",
        "DOLLAR": "$HOME",
    }


def test_parse_env_file_later_lines_win() -> None:
    assert env.parse_env_file("A=1\nA=2\n", "f") == {"A": "2"}
    assert env.parse_env_file("", "f") == {}


@pytest.mark.parametrize(
    "text,line",
    [
        ("A=1\nNOEQUALS\n", 2),
        ("1A=x", 1),
        ("A B=x", 1),
        ("A-B=x", 1),
        ("=x", 1),
        ("# ok\n\nexport\n", 3),
        ("A = 1", 1),
    ],
)
def test_parse_env_file_bad_lines(text: str, line: int) -> None:
    with pytest.raises(UsageError) as exc:
        env.parse_env_file(text, "my.env")
    assert str(exc.value) == f"can't read env file `my.env`: line {line} is not KEY=VALUE"


def test_parse_env_file_bad_quotes() -> None:
    with pytest.raises(UsageError) as exc:
        env.parse_env_file("A=1\nB=2\nC='open\n", "q.env")
    assert str(exc.value).startswith("can't read env file `q.env`: line 3: ")
    assert "quotation" in str(exc.value)


# -- parse_env_option -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "items,expected",
    [
        (["A=1"], {"A": "1"}),
        (["A=1,B=2"], {"A": "1", "B": "2"}),
        (["A=1,2"], {"A": "1,2"}),  # no `=` after the comma: part of the value
        (["A=1,2,3,B=x,y"], {"A": "1,2,3", "B": "x,y"}),
        (["A=1", "B=2,C=3"], {"A": "1", "B": "2", "C": "3"}),
        (["A=1", "A=2"], {"A": "2"}),
        (["A="], {"A": ""}),
        (["A==b"], {"A": "=b"}),
        (["A=x=y,B=2"], {"A": "x=y", "B": "2"}),
        (["PATH=/a:/b,LD=/c"], {"PATH": "/a:/b", "LD": "/c"}),
        ([], {}),
    ],
)
def test_parse_env_option(items: list[str], expected: dict[str, str]) -> None:
    assert env.parse_env_option(items) == expected


@pytest.mark.parametrize(
    "item,pair", [("NOEQ", "NOEQ"), ("=1", "=1"), ("A=1,=2", "=2"), (",A=1", "")]
)
def test_parse_env_option_errors(item: str, pair: str) -> None:
    with pytest.raises(UsageError) as exc:
        env.parse_env_option([item])
    assert str(exc.value) == f"can't use --env `{pair}`: expected KEY=VALUE"


# -- user_overrides ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host,expected",
    [
        ({"SINGULARITYENV_X": "s"}, "s"),
        ({"SINGULARITYENV_X": "s", "APPTAINERENV_X": "a"}, "a"),
        ({"APPTAINERENV_X": "a", "SINGULARITYENV_X": "s"}, "a"),  # whatever the host's order
        ({"SIFBOXENV_X": "x", "APPTAINERENV_X": "a", "SINGULARITYENV_X": "s"}, "x"),
        ({"SINGULARITYENV_X": "s", "SIFBOXENV_X": "x"}, "x"),
    ],
)
def test_user_overrides_prefix_precedence(host: dict[str, str], expected: str) -> None:
    assert env.user_overrides(host, {}, {}) == {"X": expected}


def test_user_overrides_env_file_then_env_option() -> None:
    host = {"SIFBOXENV_X": "x", "SIFBOXENV_Y": "y", "SIFBOXENV_Z": "z", "X": "host"}
    got = env.user_overrides(host, {"Y": "file", "Z": "file"}, {"Z": "opt"})
    assert got == {"X": "x", "Y": "file", "Z": "opt"}


def test_user_overrides_ignores_bare_prefixes_and_other_variables() -> None:
    host = {
        "SIFBOXENV_": "1",
        "APPTAINERENV_": "2",
        "HOME": "/h",
        "APPTAINER_BIND": "/b",
        "sifboxenv_low": "3",
    }
    assert env.user_overrides(host, {}, {}) == {}


# -- container_env ------------------------------------------------------------------------------------
HOST_ENV = {
    "HOME": "/home/alice",
    "USER": "alice",
    "TERM": "xterm",
    "LANG": "C.UTF-8",
    "LC_ALL": "C",
    "TZ": "UTC",
    "FOO": "host foo",
    "PATH": "/host/bin:/usr/bin",
    "LD_LIBRARY_PATH": "/host/lib",
    "PS1": "host$ ",
    "PROMPT_COMMAND": "echo hi",
    "BASH_ENV": "/host/bashenv",
    "ENV": "/host/env",
    "SIFBOXENV_A": "1",
    "APPTAINERENV_B": "2",
    "SINGULARITYENV_C": "3",
    "APPTAINER_BIND": "/x",
}
SET_BY_SIFBOX = {
    f"{p}_{k}"
    for p in ("SIFBOX", "APPTAINER", "SINGULARITY")
    for k in ("CONTAINER", "NAME", "ENVIRONMENT")
} | {"PATH", "LD_LIBRARY_PATH", "HOME", env.OVERRIDES_VAR}


def cenv(host: Mapping[str, str] = HOST_ENV, **kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "cleanenv": False,
        "image": "/images/lolcow.sif",
        "home": "/home/alice",
        "overrides": {},
    }
    args.update(kw)
    return env.container_env(host, **args)  # type: ignore[arg-type]


def test_container_env_passes_the_host_environment_but_not_its_path_and_prompt() -> None:
    got = cenv()
    passed = {k: v for k, v in got.items() if k not in SET_BY_SIFBOX}
    assert passed == {
        "USER": "alice",
        "TERM": "xterm",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "FOO": "host foo",
        "APPTAINER_BIND": "/x",
    }
    assert (
        got["PATH"]
        == env.DEFAULT_PATH
        == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    assert got["LD_LIBRARY_PATH"] == "/.singularity.d/libs" == env.LIBS
    assert "PS1" not in got and "PROMPT_COMMAND" not in got


def test_container_env_identifies_the_container() -> None:
    got = cenv(image="/some/where/my image.sif")
    for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
        assert got[f"{prefix}_CONTAINER"] == "/some/where/my image.sif"
        assert got[f"{prefix}_NAME"] == "my image.sif"


def test_container_env_environment_variable_is_91() -> None:
    got = cenv()
    for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
        assert got[f"{prefix}_ENVIRONMENT"] == "/.singularity.d/env/91-environment.sh"


def test_container_env_cleanenv_keeps_only_term_lang_lc_all_tz() -> None:
    got = cenv(cleanenv=True)
    assert set(got) == SET_BY_SIFBOX | {"TERM", "LANG", "LC_ALL", "TZ"}
    assert got["TERM"] == "xterm" and got["TZ"] == "UTC"
    assert set(cenv({"FOO": "1"}, cleanenv=True)) == SET_BY_SIFBOX


def test_container_env_home_and_prompt() -> None:
    got = cenv(home="/srv/h", shell_prompt="Sifbox> ")
    assert got["HOME"] == "/srv/h"
    assert got["PS1"] == "Sifbox> "
    assert "PS1" not in cenv(shell_prompt="")


def test_container_env_carries_the_overrides_script() -> None:
    ov = {"A": "1", "PREPEND_PATH": "/p"}
    assert cenv(overrides=ov)[env.OVERRIDES_VAR] == env.overrides_script(ov)
    assert cenv()[env.OVERRIDES_VAR] == ""
    # a host variable of that name is replaced, never passed through
    assert cenv({env.OVERRIDES_VAR: "touch /x"})[env.OVERRIDES_VAR] == ""


def test_container_env_does_not_modify_its_input() -> None:
    host = dict(HOST_ENV)
    cenv(host)
    assert host == HOST_ENV


# -- overrides_script / apply_overrides_directly ---------------------------------------------------
def test_overrides_script_text() -> None:
    got = env.overrides_script(
        {"A": "1", "B": "two words", "C": "it's", "PREPEND_PATH": "/p q", "APPEND_PATH": "/z"}
    )
    assert got.splitlines() == [
        "export A=1",
        "export B='two words'",
        "export C='it'\"'\"'s'",
        "export PATH='/p q':\"$PATH\"",
        'export PATH="$PATH":/z',
    ]
    assert env.overrides_script({}) == ""


@pytest.mark.parametrize("key", ["1A", "A-B", "A B", "A=B", "", "$(id)", "A;B"])
def test_overrides_script_drops_invalid_names(key: str) -> None:
    assert env.overrides_script({key: "v", "OK": "1"}) == "export OK=1"


def test_apply_overrides_directly() -> None:
    base = cenv(overrides={"A": "1"})
    got = env.apply_overrides_directly(
        base, {"A": "x y", "PREPEND_PATH": "/pre", "APPEND_PATH": "/app", "HOME": "/h2"}
    )
    assert env.OVERRIDES_VAR not in got
    assert got["A"] == "x y" and got["HOME"] == "/h2"
    assert got["PATH"] == f"/pre:{env.DEFAULT_PATH}:/app"
    assert env.OVERRIDES_VAR in base  # the input is not changed
    assert env.apply_overrides_directly({}, {"APPEND_PATH": "/a"}) == {"PATH": ":/a"}


# -- PRELUDE, run by /bin/sh --------------------------------------------------------------------
@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A stand-in for the image's /.singularity.d (with an env/ directory)."""
    sd = tmp_path / "singularity.d"
    (sd / "env").mkdir(parents=True)
    (sd / "libs").mkdir()
    return sd


def write_script(path: Path, text: str, mode: int = 0o755) -> None:
    path.write_text(text)
    path.chmod(mode)


def prelude(
    image: Path,
    *argv: str,
    host: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    cleanenv: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    script = env.PRELUDE.replace("/.singularity.d", str(image))
    assert "/.singularity.d" not in script
    e = env.container_env(
        {"FOO": "host"} if host is None else host,
        cleanenv=cleanenv,
        image="/img.sif",
        home=str(image.parent),
        overrides=overrides or {},
    )
    return subprocess.run(
        ["/bin/sh", "-c", script, "sifbox", *argv],
        env=e,
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
        stdin=subprocess.DEVNULL,
        cwd=cwd or image.parent,
    )


def env_of(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return dict(item.split("=", 1) for item in proc.stdout.split("\0") if item)


def run_env(image: Path, **kw: object) -> dict[str, str]:
    return env_of(prelude(image, "exec", "/usr/bin/env", "-0", **kw))  # type: ignore[arg-type]


def test_prelude_precedence_host_then_image_then_overrides(image: Path) -> None:
    write_script(image / "env/90-environment.sh", "export FOO=image\nexport BAR=image\nBAZ=image\n")
    got = run_env(
        image,
        host={"FOO": "host", "BAR": "host", "QUX": "host", "BAZ": "host"},
        overrides={"BAR": "override", "NEW": "new"},
    )
    assert got["FOO"] == "image"  # image env script over the host
    assert got["BAR"] == "override"  # overrides over the image
    assert got["QUX"] == "host"  # host value when nothing else sets it
    assert got["BAZ"] == "image"  # already exported from the host
    assert got["NEW"] == "new"


def test_prelude_sources_env_scripts_in_order_and_only_sh(image: Path) -> None:
    write_script(image / "env/01-base.sh", "export X=01 ORDER=01\n")
    write_script(image / "env/90-environment.sh", 'export X=90 ORDER="$ORDER,90"\n')
    write_script(image / "env/95-apps.sh", 'export ORDER="$ORDER,95"\n', mode=0o644)
    write_script(image / "env/99-not-sourced.txt", "export X=txt\n")
    got = run_env(image)
    assert got["X"] == "90"
    assert got["ORDER"] == "01,90,95"


def test_prelude_without_env_scripts(image: Path) -> None:
    got = run_env(image, cleanenv=True, host={"FOO": "x", "TERM": "dumb"})
    assert got["PATH"] == env.DEFAULT_PATH
    assert got["LD_LIBRARY_PATH"] == env.LIBS
    assert got["TERM"] == "dumb" and "FOO" not in got
    assert got["HOME"] == str(image.parent)
    # the prelude's own variables do not reach the payload
    assert not [k for k in got if k.startswith("__sifbox") or k == env.OVERRIDES_VAR]


def test_prelude_path_prepend_and_append_around_the_image_path(image: Path) -> None:
    write_script(image / "env/90-environment.sh", 'export PATH="/image/bin:$PATH"\n')
    got = run_env(image, overrides={"PREPEND_PATH": "/pre", "APPEND_PATH": "/app dir"})
    assert got["PATH"] == f"/pre:/image/bin:{env.DEFAULT_PATH}:/app dir"


def test_prelude_env_script_can_extend_ld_library_path(image: Path) -> None:
    write_script(image / "env/10-libs.sh", 'export LD_LIBRARY_PATH="/opt/lib:$LD_LIBRARY_PATH"\n')
    assert run_env(image)["LD_LIBRARY_PATH"] == f"/opt/lib:{env.LIBS}"


HOSTILE = {
    "SUBST": "$(touch PWNED)",
    "BACKTICK": "`touch PWNED`",
    "QUOTES": "'; touch PWNED; echo '",
    "DQUOTES": '"; touch PWNED; "',
    "SPACES": "  a  b  ",
    "NEWLINE": "line1\nline2; touch PWNED",
    "GLOB": "*",
    "VAR": "$HOME",
    "BACKSLASH": "a\\b\\",
    "EMPTY": "",
}


def test_prelude_override_values_are_inert(image: Path, tmp_path: Path) -> None:
    got = run_env(image, overrides={**HOSTILE, "PREPEND_PATH": "$(touch PWNED)"}, cwd=tmp_path)
    for key, value in HOSTILE.items():
        assert got[key] == value, key
    assert got["PATH"].startswith("$(touch PWNED):")
    assert not (tmp_path / "PWNED").exists()


def test_prelude_exec_passes_arguments_verbatim(image: Path) -> None:
    args = ["a b", "", "*", "$HOME", "-n", "--", "'\""]
    proc = prelude(image, "exec", "/usr/bin/printf", "[%s]\n", *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(f"[{a}]\n" for a in args)


def test_prelude_exec_finds_commands_on_the_image_path(image: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "imgbin"
    bindir.mkdir()
    write_script(bindir / "hello-sifbox", '#!/bin/sh\necho hello "$@"\n')
    write_script(image / "env/90-environment.sh", f'export PATH="{bindir}:$PATH"\n')
    proc = prelude(image, "exec", "hello-sifbox", "world")
    assert (proc.returncode, proc.stdout) == (0, "hello world\n")


def test_prelude_exec_passes_the_exit_status(image: Path) -> None:
    assert prelude(image, "exec", "/bin/sh", "-c", "exit 42").returncode == 42


@pytest.mark.parametrize("cmd", ["no-such-command-sifbox", "/no/such/program"])
def test_prelude_exec_missing_command(image: Path, cmd: str) -> None:
    proc = prelude(image, "exec", cmd, "arg")
    assert proc.returncode == 127
    assert proc.stderr == f"sifbox: error: can't run `{cmd}` in the container: command not found\n"
    assert proc.stdout == ""


def test_prelude_test_without_script(image: Path) -> None:
    proc = prelude(image, "test")
    assert proc.returncode == 0
    assert proc.stderr == "No test script found in container, exiting\n"


def test_prelude_test_with_script(image: Path) -> None:
    write_script(image / "test", '#!/bin/sh\necho "testing $*"\nexit 3\n')
    proc = prelude(image, "test", "a", "b c")
    assert (proc.returncode, proc.stdout) == (3, "testing a b c\n")


def test_prelude_test_script_not_executable_is_ignored(image: Path) -> None:
    write_script(image / "test", "#!/bin/sh\nexit 3\n", mode=0o644)
    assert prelude(image, "test").returncode == 0


def test_prelude_run_with_runscript_sees_the_environment(image: Path) -> None:
    write_script(image / "env/90-environment.sh", "export GREETING=hi\n")
    write_script(image / "runscript", '#!/bin/sh\necho "$GREETING $A $#: $*"\n')
    proc = prelude(image, "run", "x", "y z", overrides={"A": "ov"})
    assert (proc.returncode, proc.stdout) == (0, "hi ov 2: x y z\n")


def test_prelude_run_without_runscript_runs_sh(image: Path) -> None:
    proc = prelude(image, "run", "-c", "echo from sh $0")
    assert proc.returncode == 0
    assert proc.stdout == "from sh /bin/sh\n"
    assert proc.stderr == "No runscript found in container, executing /bin/sh\n"


def test_prelude_shell_with_a_given_shell(image: Path) -> None:
    proc = prelude(image, "shell", "/bin/echo", "a", "b")
    assert (proc.returncode, proc.stdout) == (0, "a b\n")


def test_prelude_shell_default(image: Path) -> None:
    proc = prelude(image, "shell", "", "-c", "echo ok")
    assert (proc.returncode, proc.stdout) == (0, "ok\n")


def test_prelude_unknown_action_does_nothing(image: Path) -> None:
    proc = prelude(image, "bogus", "/bin/echo", "x")
    assert (proc.returncode, proc.stdout) == (0, "")


def test_prelude_survives_a_non_ascii_variable_name(image: Path) -> None:
    proc = prelude(image, "exec", "/bin/echo", "ran", overrides={"É": "1", "OK": "1"})
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc.stderr


@pytest.mark.parametrize("how", ["shell", "direct"])
def test_prepend_path_applies_after_a_path_override(image: Path, how: str) -> None:
    host = {"APPTAINERENV_PREPEND_PATH": "/pre"}
    overrides = env.user_overrides(host, {}, env.parse_env_option(["PATH=/x:/bin:/usr/bin"]))
    if how == "shell":
        path = run_env(image, host=host, overrides=overrides)["PATH"]
    else:
        path = env.apply_overrides_directly(cenv(host, overrides=overrides), overrides)["PATH"]
    assert path == "/pre:/x:/bin:/usr/bin"


# -- property: any value survives the overrides script ----------------------------------------------
VALUES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=30)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(values=st.lists(VALUES, min_size=1, max_size=6))
def test_property_overrides_round_trip_through_sh(values: list[str], tmp_path: Path) -> None:
    overrides = {f"V{i}": v for i, v in enumerate(values)}
    script = env.overrides_script(overrides) + "\n/usr/bin/env -0\n"
    proc = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": env.DEFAULT_PATH},
        capture_output=True,
        check=False,
        timeout=10,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    got = dict(i.split(b"=", 1) for i in proc.stdout.split(b"\0") if i)
    for key, value in overrides.items():
        assert got[key.encode()] == value.encode("utf-8", "surrogateescape"), key
    assert os.listdir(tmp_path) == []
