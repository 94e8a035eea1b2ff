"""`sifbox.runtime.env`: the container's environment, built as Apptainer builds it
(apptainer-behaviour.md A.5; Apptainer's action script and internal/pkg/util/env).

The pure functions are tested directly; PRELUDE, the shell code that runs first in the
container, is run for real with dash (/bin/sh), bash and busybox sh against a temporary
directory standing in for the image's /.singularity.d (the path is replaced in a copy of
the script: no chroot, no namespaces).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sifbox.runtime import env
from sifbox.util.errors import UsageError

SHELLS = [s for s in (["/bin/sh"], ["/bin/bash", "--posix"], ["/bin/busybox", "sh"]) if os.path.exists(s[0])]


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
        (["LD_LIBRARY_PATH=/foo,"], {"LD_LIBRARY_PATH": "/foo,"}),
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


@pytest.mark.parametrize(
    "host,warned,noted",
    [
        ({"SINGULARITYENV_X": "s"}, [], ["Environment variable SINGULARITYENV_X is set, but APPTAINERENV_X is preferred"]),
        ({"SINGULARITYENV_X": "a", "APPTAINERENV_X": "a"}, [], []),
        ({"SINGULARITYENV_X": "s", "APPTAINERENV_X": "a"},
         ["Skipping environment variable [SINGULARITYENV_X=s], X is already overridden with different value [a]"], []),
        ({"SINGULARITYENV_X": "s", "APPTAINERENV_X": "a", "SIFBOXENV_X": "x"},
         ["Skipping environment variable [SINGULARITYENV_X=s], X is already overridden with different value [x]",
          "Skipping environment variable [APPTAINERENV_X=a], X is already overridden with different value [x]"], []),
        ({"APPTAINERENV_X": "a"}, [], []),
        ({"SINGULARITYENV_": "s", "APPTAINERENV_": "a"}, [], []),
    ],
)  # fmt: skip
def test_user_overrides_say_what_singularityenv_does(host: dict[str, str], warned: list[str], noted: list[str]) -> None:
    """Apptainer's messages: a SINGULARITYENV_ variable used is noted (INFO), one a higher
    prefix overrides with another value is said to be skipped (WARNING)."""
    warnings: list[str] = []
    notes: list[str] = []
    env.user_overrides(host, {}, {}, warn=warnings.append, note=notes.append)
    assert sorted(warnings) == sorted(warned)
    assert notes == noted


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


def test_user_overrides_refuses_the_runtimes_variables() -> None:
    warnings: list[str] = []
    host = {"APPTAINERENV_HOME": "/my/home", "SIFBOXENV_APPTAINER_APPNAME": "x", "APPTAINERENV_OK": "1"}
    got = env.user_overrides(host, {"SIFBOX_SHELL": "/bin/x"}, {"HOME": "/h"}, warn=warnings.append)
    assert got == {"OK": "1"}
    assert sorted(warnings) == [
        "can't set `APPTAINER_APPNAME` in the container: its value is the runtime's",
        "can't set `HOME` in the container: its value is the runtime's",
        "can't set `SIFBOX_SHELL` in the container: its value is the runtime's",
    ]


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
    "SIFBOX_MESSAGELEVEL": "5",
    "SINGULARITY_CACHEDIR": "/c",
    "http_proxy": "http://proxy:3128",
    "BASH_FUNC_ml%%": "() { :; }",
    "__sifbox_h_EVIL": "x",
    "__SIFBOX_CTL": "touch /x",
    "SIFBOX_ENV_OVERRIDES": "touch /x",
}


def cenv(host: Mapping[str, str] = HOST_ENV, **kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "cleanenv": False,
        "image": "/images/lolcow.sif",
        "home": "/home/alice",
        "overrides": {},
    }
    args.update(kw)
    return env.container_env(host, **args)  # type: ignore[arg-type]


def visible(e: Mapping[str, str]) -> dict[str, str]:
    """What the image's scripts see."""
    return {k: v for k, v in e.items() if not k.startswith(env.HOST_PREFIX) and k not in (env.CONTROL_VAR, env.OVERRIDES_VAR)}


def restored(e: Mapping[str, str]) -> dict[str, str]:
    """What the prelude restores after them."""
    return {k[len(env.HOST_PREFIX) :]: v for k, v in e.items() if k.startswith(env.HOST_PREFIX)}


def test_container_env_scripts_see_no_host_variable() -> None:
    got = visible(cenv())
    assert got == {
        "HOME": "/home/alice",
        "PATH": env.DEFAULT_PATH,
        **{f"{p}_{k}": v for p in ("SIFBOX", "APPTAINER", "SINGULARITY")
           for k, v in (("CONTAINER", "/images/lolcow.sif"), ("NAME", "lolcow.sif"))},
    }  # fmt: skip
    assert env.DEFAULT_PATH == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_container_env_restores_the_host_but_not_its_settings_path_and_prompt() -> None:
    got = restored(cenv())
    passed = {k: v for k, v in got.items() if not k.startswith(env.RUNTIME_PREFIXES)}
    assert passed == {
        "USER": "alice", "TERM": "xterm", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "FOO": "host foo",
        "http_proxy": "http://proxy:3128",
    }  # fmt: skip
    # Apptainer's "Not forwarding": the host's sifbox and Apptainer settings stay outside.
    assert not [k for k in got if k.startswith(env.FLAG_PREFIXES) and not k.endswith(("_ENVIRONMENT", "_COMMAND"))]
    assert env.host_value(cenv(), "FOO") == "host foo"
    assert env.host_value(cenv(), "PATH") is None


def test_container_env_identifies_the_container() -> None:
    got = cenv(image="/some/where/my image.sif", action="run")
    for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
        assert got[f"{prefix}_CONTAINER"] == "/some/where/my image.sif"
        assert got[f"{prefix}_NAME"] == "my image.sif"
        assert restored(got)[f"{prefix}_ENVIRONMENT"] == "/.singularity.d/env/91-environment.sh"
        assert restored(got)[f"{prefix}_COMMAND"] == "run"
    assert cenv(image="/some/sandbox/")["SIFBOX_NAME"] == "sandbox"


def test_container_env_cleanenv_keeps_term_and_proxies_and_sets_lang_c() -> None:
    host = {**HOST_ENV, "NO_PROXY": "localhost", "ftp_proxy": "f", "ALL_PROXY": "a", "HTTPS_PROXY": "s"}
    got = {k: v for k, v in restored(cenv(host, cleanenv=True)).items() if not k.startswith(env.RUNTIME_PREFIXES)}
    assert got == {"TERM": "xterm", "LANG": "C", "http_proxy": "http://proxy:3128", "NO_PROXY": "localhost",
                   "ftp_proxy": "f", "ALL_PROXY": "a", "HTTPS_PROXY": "s"}  # fmt: skip


def test_container_env_no_env_and_overridden_names_are_not_restored() -> None:
    got = restored(cenv(no_env=["FOO", "TERM"], overrides={"USER": "bob"}, fixed={"TZ": "GMT"}))
    assert "FOO" not in got and "TERM" not in got and "USER" not in got and "TZ" not in got
    assert got["LANG"] == "C.UTF-8"


def test_container_env_binds_and_no_eval() -> None:
    got = restored(cenv(binds=["/mnt", "/srv"], no_eval=True))
    for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
        assert got[f"{prefix}_BIND"] == "/mnt,/srv"
        assert got[f"{prefix}_NO_EVAL"] == "1"
    assert "SIFBOX_BIND" not in restored(cenv()) and "SIFBOX_NO_EVAL" not in restored(cenv())


def test_container_env_home_and_prompt() -> None:
    got = cenv(home="/srv/h", shell_prompt="Sifbox> ")
    assert got["HOME"] == "/srv/h"
    assert got["PS1"] == "Sifbox> "
    assert "PS1" not in cenv(shell_prompt="") and "PS1" not in restored(cenv())


def test_container_env_carries_the_overrides_and_control_scripts() -> None:
    ov = {"A": "1", "PREPEND_PATH": "/p"}
    got = cenv(overrides=ov)
    assert got[env.OVERRIDES_VAR] == env.overrides_script(ov)
    assert cenv()[env.OVERRIDES_VAR] == ""
    assert got[env.CONTROL_VAR].startswith("__sifbox_host='")
    # host variables of those names are replaced, never passed through
    assert "touch" not in got[env.OVERRIDES_VAR] + got[env.CONTROL_VAR]
    assert not [k for k in restored(got) if k.startswith(("__sifbox", "__SIFBOX"))]


def test_container_env_library_directories_only_when_asked() -> None:
    assert "__sifbox_ld" not in cenv(machine="x86_64")[env.CONTROL_VAR]
    assert "__sifbox_ld=x86_64-linux-gnu:64" in cenv(machine="x86_64", libs_bound=True)[env.CONTROL_VAR]
    for edit in ("PREPEND_LD_LIBRARY_PATH", "APPEND_LD_LIBRARY_PATH"):
        assert "__sifbox_ld=" in cenv(machine="aarch64", overrides={edit: "/x"})[env.CONTROL_VAR]
    assert "__sifbox_ld=:" in cenv(machine="i686", libs_bound=True)[env.CONTROL_VAR]


def test_container_env_does_not_modify_its_input() -> None:
    host = dict(HOST_ENV)
    cenv(host, overrides={"A": "1"}, no_env=["FOO"])
    assert host == HOST_ENV


# -- overrides_script / apply_overrides_directly ---------------------------------------------------
def test_overrides_script_literal_values() -> None:
    got = env.overrides_script(
        {"A": "1", "B": "two words", "C": "it's", "PREPEND_PATH": "/p q", "APPEND_PATH": "/z"}
    )
    assert got.splitlines() == [
        "export A=1",
        "export B='two words'",
        "export C='it'\"'\"'s'",
        "__sifbox_prepend_path='/p q'",
        "__sifbox_append_path=/z",
        "unset __sifbox_v",
    ]
    assert env.overrides_script({}) == ""


def test_overrides_script_evaluates_only_the_users_values() -> None:
    ov = {"A": "$HOME", "B": "a\\b"}
    evaluated = env.overrides_script(ov)
    assert evaluated.count("__sifbox_v=$(set +eu; eval ") == 2
    assert "eval" not in env.overrides_script(ov, no_eval=True)
    assert "eval" not in env.overrides_script({}, fixed=ov)


def test_overrides_script_ld_library_path_keeps_the_libs_directory() -> None:
    assert env.overrides_script({"LD_LIBRARY_PATH": "/foo"}) == f"export LD_LIBRARY_PATH=/foo:{env.LIBS}\nunset __sifbox_v"
    assert env.overrides_script({"LD_LIBRARY_PATH": ""}) == "export LD_LIBRARY_PATH=''\nunset __sifbox_v"


@pytest.mark.parametrize("key", ["1A", "A-B", "A B", "A=B", "", "$(id)", "A;B", "UID", "EUID", "PPID", "HOME"])
def test_overrides_script_drops_names_it_cant_set(key: str) -> None:
    assert env.overrides_script({key: "v", "OK": "1"}) == "export OK=1\nunset __sifbox_v"


def test_apply_overrides_directly() -> None:
    base = cenv(overrides={"A": "1"})
    got = env.apply_overrides_directly(
        base, {"A": "x y", "PREPEND_PATH": "/pre", "APPEND_PATH": "/app", "LD_LIBRARY_PATH": "/l",
               "APPEND_LD_LIBRARY_PATH": "/al", "TERM": "vt100"}  # fmt: skip
    )
    assert env.OVERRIDES_VAR not in got and env.CONTROL_VAR not in got
    assert not [k for k in got if k.startswith(env.HOST_PREFIX)]
    assert got["A"] == "x y" and got["HOME"] == "/home/alice" and got["FOO"] == "host foo"
    assert got["TERM"] == "vt100"
    assert got["PATH"] == f"/pre:{env.DEFAULT_PATH}:/app"
    assert got["LD_LIBRARY_PATH"] == f"/l:{env.LIBS}:/al"
    assert env.OVERRIDES_VAR in base  # the input is not changed
    assert env.apply_overrides_directly({}, {"APPEND_PATH": "/a"}) == {"PATH": "/a", "LD_LIBRARY_PATH": env.LIBS}


# -- PRELUDE, run by /bin/sh, bash and busybox sh ------------------------------------------------------
@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A stand-in for the image's /.singularity.d (with an env/ directory)."""
    sd = tmp_path / "singularity.d"
    (sd / "env").mkdir(parents=True)
    (sd / "libs").mkdir()
    return sd


@pytest.fixture(params=SHELLS, ids=[s[0].rsplit("/", 1)[1] for s in SHELLS])
def shell(request: pytest.FixtureRequest) -> list[str]:
    return list(request.param)


def write_script(path: Path, text: str, mode: int = 0o755) -> None:
    path.write_text(text)
    path.chmod(mode)


def prelude(
    image: Path,
    *argv: str,
    host: Mapping[str, str] | None = None,
    shell: list[str] | None = None,
    cwd: Path | None = None,
    **kw: object,
) -> subprocess.CompletedProcess[str]:
    script = env.PRELUDE.replace("/.singularity.d", str(image)).replace("/environment", f"{image.parent}/environment")
    assert "/.singularity.d" not in script
    e = env.container_env(
        {"FOO": "host"} if host is None else host,
        **{"cleanenv": False, "image": "/img.sif", "home": str(image.parent), "overrides": {}, **kw},  # type: ignore[arg-type]
    )
    return subprocess.run(
        [*(shell or ["/bin/sh"]), "-c", script, "sifbox", *argv],
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


def test_prelude_precedence_image_over_host_then_the_users(image: Path, shell: list[str]) -> None:
    write_script(image / "env/90-environment.sh",
                 'export FOO=image\nexport BAR=image\nBAZ=image\nexport DEF="${DEF:-image default}"\n')  # fmt: skip
    got = run_env(
        image, shell=shell,
        host={"FOO": "host", "BAR": "host", "QUX": "host", "BAZ": "host", "DEF": "host"},
        overrides={"BAR": "override", "NEW": "new"},
    )  # fmt: skip
    assert got["FOO"] == "image"  # the image's scripts over the host
    assert got["BAR"] == "override"  # the user's values over the image
    assert got["QUX"] == "host"  # the host's value when nothing else sets it
    assert "BAZ" not in got  # set but not exported by the image: the host's doesn't come back
    assert got["DEF"] == "image default"  # a Docker ENV's `${NAME:-value}` doesn't see the host's
    assert got["NEW"] == "new"


def test_prelude_scripts_see_no_host_variable(image: Path, shell: list[str]) -> None:
    write_script(image / "env/01-base.sh", 'export SEEN="foo=${FOO-unset} home=$HOME uid=$UID"\n')
    got = run_env(image, shell=shell, host={"FOO": "host"}, ids=(os.getuid(), os.getgid()))
    assert got["SEEN"] == f"foo=unset home={image.parent} uid={os.getuid()}"
    assert got["FOO"] == "host"
    assert "UID" not in got and "GID" not in got and "EUID" not in got  # not exported to the program


def test_prelude_host_variables_the_shell_presets_come_through(image: Path, shell: list[str]) -> None:
    """bash sets TERM, SHELL, HOSTNAME... when it starts; busybox sh HOSTNAME."""
    host = {"TERM": "xterm-256color", "SHELL": "/bin/zsh", "HOSTNAME": "node1", "OSTYPE": "x"}
    got = run_env(image, shell=shell, host=host)
    assert {k: got.get(k) for k in host} == host


def test_prelude_survives_the_images_shell_options(image: Path, shell: list[str]) -> None:
    write_script(image / "env/50-strict.sh", "set -eu\nIFS=:\n")
    got = run_env(image, shell=shell, host={"FOO": "host", "BAR": "b"},
                  overrides={"A": "$FOO", "PREPEND_PATH": "/pre"}, machine="x86_64", libs_bound=True)  # fmt: skip
    assert (got["FOO"], got["BAR"], got["A"]) == ("host", "b", "")
    assert got["PATH"] == f"/pre:{env.DEFAULT_PATH}"


def test_prelude_an_empty_value_of_the_image_unsets_the_hosts(image: Path, shell: list[str]) -> None:
    write_script(image / "env/90-environment.sh", "export FOO=\nexport BAR=\n")
    got = run_env(image, shell=shell, host={"FOO": "host"})
    assert "FOO" not in got  # Apptainer's restore_env: empty variables are unset
    assert got["BAR"] == ""  # not the host's: stays as the image has it


def test_prelude_sources_env_scripts_in_order_and_only_sh(image: Path, shell: list[str]) -> None:
    write_script(image / "env/01-base.sh", "export X=01 ORDER=01\n")
    write_script(image / "env/90-environment.sh", 'export X=90 ORDER="$ORDER,90"\n')
    write_script(image / "env/95-apps.sh", 'export ORDER="$ORDER,95"\n', mode=0o644)
    write_script(image / "env/96-unreadable.sh", "export X=unreadable\n", mode=0o000)
    write_script(image / "env/99-not-sourced.txt", "export X=txt\n")
    got = run_env(image, shell=shell)
    assert got["X"] == "90" or os.geteuid() == 0
    assert got["ORDER"] == "01,90,95"


def test_prelude_without_env_scripts(image: Path, shell: list[str]) -> None:
    got = run_env(image, shell=shell, cleanenv=True, host={"FOO": "x", "TERM": "dumb", "LC_ALL": "C"})
    assert got["PATH"] == env.DEFAULT_PATH
    assert got["LD_LIBRARY_PATH"] == str(image / "libs")  # (env.LIBS, as this test rewrites it)
    assert got["TERM"] == "dumb" and got["LANG"] == "C" and "FOO" not in got and "LC_ALL" not in got
    assert got["HOME"] == str(image.parent)
    # the prelude's own variables do not reach the payload
    assert not [k for k in got if k.lower().startswith("__sifbox") or k in (env.OVERRIDES_VAR, env.CONTROL_VAR)]


def test_prelude_legacy_environment_file(image: Path, shell: list[str]) -> None:
    shutil.rmtree(image)
    write_script(image.parent / "environment", 'PATH="/canary:$PATH"\nexport PATH LEGACY=1\n')
    got = run_env(image, shell=shell)
    assert got["PATH"] == f"/canary:{env.DEFAULT_PATH}" and got["LEGACY"] == "1"


def test_prelude_docker_path_gets_the_default_directories(image: Path, shell: list[str]) -> None:
    write_script(image / "env/10-docker2singularity.sh", 'export PATH="/opt/conda/bin:/usr/bin"\n')
    got = run_env(image, shell=shell)
    assert got["PATH"] == "/opt/conda/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"


def test_prelude_path_edits_around_the_image_path(image: Path, shell: list[str]) -> None:
    write_script(image / "env/90-environment.sh", 'export PATH="/image/bin:$PATH"\n')
    write_script(image / "env/99-runtimevars.sh", "export PATH=/the/images/own/is/not/read\n")
    got = run_env(image, shell=shell, overrides={"PREPEND_PATH": "/pre", "APPEND_PATH": "/app dir"})
    assert got["PATH"] == f"/pre:/image/bin:{env.DEFAULT_PATH}:/app dir"


def test_prelude_users_values_come_after_99_base(image: Path, shell: list[str]) -> None:
    write_script(image / "env/90-environment.sh", "export A=90\n")
    write_script(image / "env/99-base.sh", 'export A=99 SEEN_BY_99="${B-unset}"\n')
    write_script(image / "env/99-zz-after.sh", 'export AFTER="$A"\n')
    got = run_env(image, shell=shell, overrides={"A": "user", "B": "user"})
    assert (got["A"], got["SEEN_BY_99"], got["AFTER"]) == ("user", "unset", "user")


def test_prelude_ld_library_path(image: Path, shell: list[str]) -> None:
    apptainers_99_base = (Path(__file__).parents[1] / "e2e/apptainer/data/apptainer-99-base.sh").read_text()
    write_script(image / "env/99-base.sh", apptainers_99_base)
    assert run_env(image, shell=shell)["LD_LIBRARY_PATH"] == env.LIBS  # once
    got = run_env(image, shell=shell, overrides={"LD_LIBRARY_PATH": "/foo,"})
    assert got["LD_LIBRARY_PATH"] == f"/foo,:{env.LIBS}"


def test_prelude_env_script_can_extend_ld_library_path(image: Path, shell: list[str]) -> None:
    write_script(image / "env/10-libs.sh", 'export LD_LIBRARY_PATH="/opt/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n')
    assert run_env(image, shell=shell)["LD_LIBRARY_PATH"] == "/opt/lib"


def test_prelude_library_directories_before_the_libs_directory(image: Path, shell: list[str]) -> None:
    """With something bound into LIBS (here: on this host's directories, which stand in for
    the image's), its own ld.so.conf and system directories come first, each once."""
    write_script(image / "env/99-base.sh", f'export LD_LIBRARY_PATH="${{LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}}{env.LIBS}"\n')
    got = run_env(image, shell=shell, machine=os.uname().machine, libs_bound=True,
                  overrides={"PREPEND_LD_LIBRARY_PATH": "/pre", "APPEND_LD_LIBRARY_PATH": "/app"})["LD_LIBRARY_PATH"]  # fmt: skip
    dirs = got.split(":")
    assert dirs[0] == "/pre" and dirs[-2:] == [env.LIBS, "/app"]
    found = dirs[1:-2]
    assert found and all(os.path.isdir(d) for d in found)
    assert len({os.path.realpath(d) for d in found}) == len(found)
    triplet = env.TRIPLETS.get(os.uname().machine, "")
    if os.path.isdir(f"/lib/{triplet}"):
        assert f"/lib/{triplet}" in found


# -- the user's values: evaluated as Apptainer evaluates them ------------------------------------------
EVAL_CASES = {
    "$UID": str(os.getuid()),
    '"$UID"': f'"{os.getuid()}"',
    "'$UID'": f"'{os.getuid()}'",
    "\\$UID": "$UID",
    "$(echo sub)": "sub",
    "'$(echo sub)'": "'sub'",
    "\\$(id -u)": "$(id -u)",
    "/foo/bar/\\$LIB/baz.so": "/foo/bar/$LIB/baz.so",
    "${FROM_IMAGE}:x": "image:x",
    "a\"b": 'a"b',
    "$(printf 'x\\n\\n')": "x",
}


def test_prelude_evaluates_the_users_values(image: Path, shell: list[str]) -> None:
    write_script(image / "env/90-environment.sh", "FROM_IMAGE=image\n")
    overrides = {f"V{i}": v for i, v in enumerate(EVAL_CASES)}
    got = run_env(image, shell=shell, overrides=overrides, ids=(os.getuid(), os.getgid()))
    assert [got[f"V{i}"] for i in range(len(EVAL_CASES))] == list(EVAL_CASES.values())


def test_prelude_no_eval_passes_the_values_as_they_are(image: Path, shell: list[str]) -> None:
    overrides = {f"V{i}": v for i, v in enumerate(EVAL_CASES)}
    got = run_env(image, shell=shell, overrides=overrides, no_eval=True)
    assert [got[f"V{i}"] for i in range(len(EVAL_CASES))] == list(EVAL_CASES)
    assert got["SIFBOX_NO_EVAL"] == got["APPTAINER_NO_EVAL"] == "1"


@pytest.mark.parametrize("bad", ["ends with a backslash\\", "$(unclosed", "`unclosed", "${unclosed"])
def test_prelude_a_value_the_shell_cant_parse_is_left_out(image: Path, shell: list[str], bad: str) -> None:
    proc = prelude(image, "exec", "/usr/bin/env", "-0", shell=shell,
                   overrides={"BEFORE": "1", "BAD": bad, "AFTER": "$((1 + 1))"})  # fmt: skip
    got = env_of(proc)
    assert "BAD" not in got and got["BEFORE"] == "1" and got["AFTER"] == "2"
    assert "sifbox: warning: can't evaluate the value of `BAD`" in proc.stderr


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


@pytest.mark.parametrize("how", ["host", "fixed", "no-eval"])
def test_prelude_values_that_are_never_evaluated_are_inert(image: Path, tmp_path: Path, shell: list[str], how: str) -> None:
    """The host's values, sifbox's own and the user's with --no-eval: as they are, whatever
    they hold; nothing runs."""
    if how == "host":
        got = run_env(image, shell=shell, host={**HOSTILE, "IFS": "x"}, cwd=tmp_path)
    elif how == "fixed":
        got = run_env(image, shell=shell, fixed={**HOSTILE, "PREPEND_PATH": "$(touch PWNED)"}, cwd=tmp_path)
        assert got["PATH"].startswith("$(touch PWNED):")
    else:
        got = run_env(image, shell=shell, overrides=HOSTILE, no_eval=True, cwd=tmp_path)
    for key, value in HOSTILE.items():
        assert got[key] == value, key
    assert not (tmp_path / "PWNED").exists()


def test_prelude_users_quotes_stay_inside_the_value(image: Path, tmp_path: Path, shell: list[str]) -> None:
    """Evaluated, a value is one double-quoted word: quotes and newlines in it can't end it."""
    inert = {k: v for k, v in HOSTILE.items() if k not in ("SUBST", "BACKTICK", "VAR", "BACKSLASH")}
    got = run_env(image, shell=shell, overrides=inert, cwd=tmp_path)
    for key, value in inert.items():
        assert got[key] == value, key
    assert not (tmp_path / "PWNED").exists()


def test_prelude_host_cant_inject_control_variables(image: Path, tmp_path: Path, shell: list[str]) -> None:
    host = {"__SIFBOX_CTL": "touch PWNED", "SIFBOX_ENV_OVERRIDES": "touch PWNED", "__sifbox_host": "X",
            "__sifbox_h_X": "x", "SIFBOX_X": "leak", "APPTAINER_X": "leak", "SINGULARITY_X": "leak"}  # fmt: skip
    got = run_env(image, shell=shell, host=host, cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert not [k for k in got if k.endswith("X") and k != "SIFBOX_X"] and "SIFBOX_X" not in got


# -- the actions --------------------------------------------------------------------------------------
def test_prelude_exec_passes_arguments_verbatim(image: Path, shell: list[str]) -> None:
    args = ["a b", "", "*", "$HOME", "-n", "--", "'\""]
    proc = prelude(image, "exec", "/usr/bin/printf", "[%s]\n", *args, shell=shell)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(f"[{a}]\n" for a in args)


def test_prelude_exec_finds_commands_on_the_image_path(image: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "imgbin"
    bindir.mkdir()
    write_script(bindir / "hello-sifbox", '#!/bin/sh\necho hello "$@"\n')
    write_script(image / "env/90-environment.sh", f'export PATH="{bindir}:$PATH"\n')
    proc = prelude(image, "exec", "hello-sifbox", "world")
    assert (proc.returncode, proc.stdout) == (0, "hello world\n")


def test_prelude_exec_runs_an_executable_without_command_v(image: Path, tmp_path: Path, shell: list[str]) -> None:
    # An executable found in PATH (or given by path) is exec'd at once: no `command -v`
    # and no subshell for it (an image's shell function of that name shows whether it ran).
    bindir = tmp_path / "imgbin"
    bindir.mkdir()
    write_script(bindir / "hello-sifbox", '#!/bin/sh\necho hello "$@"\n')
    write_script(image / "env/90-environment.sh",
                 f'export PATH="{bindir}:$PATH"\ncommand() {{ echo "command -v ran" >&2; return 1; }}\n')  # fmt: skip
    for argv in (["hello-sifbox", "world"], [str(bindir / "hello-sifbox"), "world"]):
        proc = prelude(image, "exec", *argv, shell=shell)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hello world\n", "")


def test_prelude_exec_path_lookup_as_the_shell_does(image: Path, tmp_path: Path, shell: list[str]) -> None:
    # PATH's first executable regular file wins (a directory or a file without x of the
    # same name earlier is passed over); a relative entry leaves the choice to the shell.
    first, second, here = tmp_path / "first", tmp_path / "second", tmp_path / "here"
    for d in (first, second, here):
        d.mkdir()
    (first / "prog-sifbox").mkdir()
    write_script(second / "prog-sifbox", "#!/bin/sh\necho not executable\n", mode=0o644)
    write_script(here / "prog-sifbox", "#!/bin/sh\necho from here\n")
    write_script(image / "env/90-environment.sh", f'export PATH="{first}:{second}:{here}:$PATH"\n')
    proc = prelude(image, "exec", "prog-sifbox", shell=shell)
    assert (proc.returncode, proc.stdout) == (0, "from here\n")
    write_script(image / "env/90-environment.sh", f'export PATH="{first}:.:/usr/bin:/bin"\n')
    proc = prelude(image, "exec", "prog-sifbox", shell=shell, cwd=here)
    assert (proc.returncode, proc.stdout) == (0, "from here\n")
    proc = prelude(image, "exec", "prog-sifbox", shell=shell, cwd=second)
    assert proc.returncode in (126, 127) and proc.stdout == ""


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
    proc = prelude(image, "exec", "/bin/echo", "ran", overrides={"É": "1", "OK": "1"}, host={"É": "x"})
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


def _run_script(script: str, cwd: Path) -> dict[bytes, bytes]:
    proc = subprocess.run(["/bin/sh", "-c", script + "\n/usr/bin/env -0\n"], env={"PATH": env.DEFAULT_PATH},
                          capture_output=True, check=False, timeout=10, cwd=cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(i.split(b"=", 1) for i in proc.stdout.split(b"\0") if i)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(VALUES, min_size=1, max_size=6))
def test_property_literal_values_round_trip_through_sh(values: list[str], tmp_path: Path) -> None:
    overrides = {f"V{i}": v for i, v in enumerate(values)}
    got = _run_script(env.overrides_script(overrides, no_eval=True), tmp_path)
    for key, value in overrides.items():
        assert got[key.encode()] == value.encode("utf-8", "surrogateescape"), key
    assert os.listdir(tmp_path) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(VALUES.filter(lambda v: not any(c in v for c in "$`\\")), min_size=1, max_size=6))
def test_property_evaluation_keeps_values_without_expansions(values: list[str], tmp_path: Path) -> None:
    overrides = {f"V{i}": v for i, v in enumerate(values)}
    got = _run_script(env.overrides_script(overrides), tmp_path)
    for key, value in overrides.items():
        assert got[key.encode()] == value.encode("utf-8", "surrogateescape"), key
    assert os.listdir(tmp_path) == []
