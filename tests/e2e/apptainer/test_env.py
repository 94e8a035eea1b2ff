"""Apptainer's e2e/env/env.go and e2e/env/regressions.go, and the host-environment rules of
internal/pkg/util/env/clean.go (its unit test clean_test.go, run here end to end).

Every Go test here runs with the user profile; each case runs as root and as the test user.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import C, Case, contains, exact, lacks, params, regex, run_case

pytestmark = pytest.mark.integration

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CUSTOM_PATH = DEFAULT_PATH + ":/go/bin:/usr/local/go/bin"  # what the test image's %environment adds
LIBS = "/.singularity.d/libs"
# What Apptainer puts before LIBS for a Debian image when something is bound into LIBS: the
# image's own library directories (its ld.so.conf, then the trusted /lib).
DEFAULT_LD_LIB_PATH = "/usr/local/lib:/lib/x86_64-linux-gnu:/lib"
ECHO_PATH = ("/bin/sh", "-c", "echo $PATH")


def echo(var: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", f'echo "${{{var}}}"')


# --- env.go: apptainerEnv ("environment manipulation") -------------------------------------------
# exec IMAGE /bin/sh -c 'echo $PATH' with APPTAINERENV_* set on the host.

ENV = [
    C("env.go:apptainerEnv/DefaultPath", "exec", "@busybox@", *ECHO_PATH, out=exact(DEFAULT_PATH)),
    C("env.go:apptainerEnv/CustomPath", "exec", "@test@", *ECHO_PATH, out=exact(CUSTOM_PATH)),
    C("env.go:apptainerEnv/AppendToDefaultPath", "exec", "@busybox@", *ECHO_PATH,
      env={"APPTAINERENV_APPEND_PATH": "/foo"}, out=exact(DEFAULT_PATH + ":/foo")),
    C("env.go:apptainerEnv/AppendToCustomPath", "exec", "@test@", *ECHO_PATH,
      env={"APPTAINERENV_APPEND_PATH": "/foo"}, out=exact(CUSTOM_PATH + ":/foo")),
    C("env.go:apptainerEnv/PrependToDefaultPath", "exec", "@busybox@", *ECHO_PATH,
      env={"APPTAINERENV_PREPEND_PATH": "/foo"}, out=exact("/foo:" + DEFAULT_PATH)),
    C("env.go:apptainerEnv/PrependToCustomPath", "exec", "@test@", *ECHO_PATH,
      env={"APPTAINERENV_PREPEND_PATH": "/foo"}, out=exact("/foo:" + CUSTOM_PATH)),
    C("env.go:apptainerEnv/OverwriteDefaultPath", "exec", "@busybox@", *ECHO_PATH,
      env={"APPTAINERENV_PATH": "/usr/bin:/bin"}, out=exact("/usr/bin:/bin")),
    C("env.go:apptainerEnv/OverwriteCustomPath", "exec", "@test@", *ECHO_PATH,
      env={"APPTAINERENV_PATH": "/usr/bin:/bin"}, out=exact("/usr/bin:/bin")),
    C("env.go:apptainerEnv/OverwriteTrailingCommaPath", "exec", "@busybox@", *ECHO_PATH,
      env={"APPTAINERENV_PATH": "/usr/bin:/bin,"}, out=exact("/usr/bin:/bin,")),
    # The same with sifbox's own prefix, and Singularity's.
    C("env.go:apptainerEnv/AppendToCustomPath[SIFBOXENV_]", "exec", "@test@", *ECHO_PATH,
      env={"SIFBOXENV_APPEND_PATH": "/foo"}, out=exact(CUSTOM_PATH + ":/foo")),
    C("env.go:apptainerEnv/PrependToCustomPath[SINGULARITYENV_]", "exec", "@test@", *ECHO_PATH,
      env={"SINGULARITYENV_PREPEND_PATH": "/foo"}, out=exact("/foo:" + CUSTOM_PATH)),
    C("env.go:apptainerEnv/OverwriteCustomPath[SIFBOXENV_]", "exec", "@test@", *ECHO_PATH,
      env={"SIFBOXENV_PATH": "/usr/bin:/bin"}, out=exact("/usr/bin:/bin")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(ENV))
def test_env(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- env.go: apptainerEnvOption ("environment option") -------------------------------------------
# exec --env K=V[,K=V] IMAGE /bin/sh -c 'echo "${VAR}"'


def opt(name: str, image: str, var: str, value: str, *, env_opt: str | None = None,
        host: dict[str, str] | None = None, extra: tuple[str, ...] = (), **kw: object) -> Case:  # fmt: skip
    argv = ["exec", *(("--env", env_opt) if env_opt is not None else ()), *extra, image, *echo(var)]
    return C(f"env.go:apptainerEnvOption/{name}", *argv, env=host or {}, out=exact(value), **kw)


ENV_OPTION = [
    opt("DefaultPath", "@busybox@", "PATH", DEFAULT_PATH),
    opt("DefaultPathOverride", "@busybox@", "PATH", "/", env_opt="PATH=/"),
    opt("AppendDefaultPath", "@busybox@", "PATH", DEFAULT_PATH + ":/foo", env_opt="APPEND_PATH=/foo"),
    opt("PrependDefaultPath", "@busybox@", "PATH", "/foo:" + DEFAULT_PATH, env_opt="PREPEND_PATH=/foo"),
    opt("DefaultPathImage", "@test@", "PATH", CUSTOM_PATH),
    opt("DefaultPathTestImageOverride", "@test@", "PATH", "/", env_opt="PATH=/"),
    opt("AppendDefaultPathTestImage", "@test@", "PATH", CUSTOM_PATH + ":/foo", env_opt="APPEND_PATH=/foo"),
    opt("AppendLiteralDefaultPathTestImage", "@test@", "PATH", CUSTOM_PATH + ":/foo",
        env_opt="PATH=$PATH:/foo"),
    opt("PrependDefaultPathTestImage", "@test@", "PATH", "/foo:" + CUSTOM_PATH, env_opt="PREPEND_PATH=/foo"),
    opt("PrependLiteralDefaultPathTestImage", "@test@", "PATH", "/foo:" + CUSTOM_PATH,
        env_opt="PATH=/foo:$PATH"),
    opt("TestImageCgoEnabledDefault", "@test@", "CGO_ENABLED", "0"),
    opt("TestImageCgoEnabledOverride", "@test@", "CGO_ENABLED", "1", env_opt="CGO_ENABLED=1"),
    opt("TestImageCgoEnabledOverride_KO", "@test@", "CGO_ENABLED", "0", host={"CGO_ENABLED": "1"}),
    opt("TestImageCgoEnabledOverrideFromEnv", "@test@", "CGO_ENABLED", "1",
        host={"APPTAINERENV_CGO_ENABLED": "1"}),
    opt("TestImageCgoEnabledOverrideEnvOptionPrecedence", "@test@", "CGO_ENABLED", "2",
        env_opt="CGO_ENABLED=2", host={"APPTAINERENV_CGO_ENABLED": "1"}),
    opt("TestImageCgoEnabledOverrideEmpty", "@test@", "CGO_ENABLED", "", env_opt="CGO_ENABLED="),
    opt("TestImageOverrideHost", "@test@", "FOO", "foo", env_opt="FOO=foo", host={"FOO": "bar"}),
    opt("TestMultiLine", "@test@", "MULTI", "Hello\nWorld", host={"MULTI": "Hello\nWorld"}),
    opt("TestEscapedNewline", "@test@", "ESCAPED", "Hello\\nWorld", host={"ESCAPED": "Hello\\nWorld"}),
    # An invalid name on the host is not passed, and the shell says nothing about it.
    opt("TestInvalidKey", "@test@", "BASH_FUNC_ml%%", "", host={"BASH_FUNC_ml%%": "TEST"}),
    opt("TestDefaultLdLibraryPath", "@debian@", "LD_LIBRARY_PATH", LIBS),
    opt("TestDefaultLdLibraryPathWithBind", "@debian@", "LD_LIBRARY_PATH", f"{DEFAULT_LD_LIB_PATH}:{LIBS}",
        extra=("-B", f"/etc/os-release:{LIBS}/os-release")),
    opt("TestPrependLdLibraryPath", "@debian@", "LD_LIBRARY_PATH", f"/foo:{DEFAULT_LD_LIB_PATH}:{LIBS}",
        env_opt="PREPEND_LD_LIBRARY_PATH=/foo"),
    opt("TestAppendLdLibraryPath", "@debian@", "LD_LIBRARY_PATH", f"{DEFAULT_LD_LIB_PATH}:{LIBS}:/foo",
        env_opt="APPEND_LD_LIBRARY_PATH=/foo"),
    opt("TestCustomTrailingCommaPath", "@debian@", "LD_LIBRARY_PATH", f"/foo,:{LIBS}",
        env_opt="LD_LIBRARY_PATH=/foo,"),
    opt("TestCustomLdLibraryPath", "@debian@", "LD_LIBRARY_PATH", f"/foo:{LIBS}",
        env_opt="LD_LIBRARY_PATH=/foo"),
    # The user's LD_LIBRARY_PATH keeps the libs directory whatever prefix sets it.
    opt("TestCustomLdLibraryPath[SIFBOXENV_]", "@debian@", "LD_LIBRARY_PATH", f"/foo:{LIBS}",
        host={"SIFBOXENV_LD_LIBRARY_PATH": "/foo"}),
]  # fmt: skip


@pytest.mark.parametrize("case", params(ENV_OPTION))
def test_env_option(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- env.go: apptainerNoEnvOption ("--no-env option") --------------------------------------------


def noenv(name: str, value: str, host: dict[str, str], no_env: str | None = None, var: str = "FOO",
          **kw: object) -> Case:  # fmt: skip
    argv = ["exec", *(("--no-env", no_env) if no_env else ()), "@busybox@", *echo(var)]
    return C(f"env.go:apptainerNoEnvOption/{name}", *argv, env=host, out=exact(value), **kw)


HOST_FOO_BAR = {"FOO": "bar", "BAR": "foo"}
NO_ENV_OPTION = [
    noenv("NormalImport", "bar", HOST_FOO_BAR),
    noenv("NoEnvAlone", "", HOST_FOO_BAR, "FOO"),
    noenv("NoEnvSecond", "", HOST_FOO_BAR, "BAR,FOO"),
    noenv("NoEnvViaEnv", "", {**HOST_FOO_BAR, "APPTAINER_NOENV": "FOO,BAR"}),
    noenv("NoEnvViaEnv[SIFBOX_NOENV]", "", {**HOST_FOO_BAR, "SIFBOX_NOENV": "FOO,BAR"}),
    noenv("OverridePermitted", "Bar", {**HOST_FOO_BAR, "APPTAINERENV_FOO": "Bar"}, "BAR,FOO"),
    # APPTAINER_APPNAME is the runtime's; APPTAINERENV_ may not set it.
    noenv("OverrideNotPermitted", "", {"APPTAINERENV_APPTAINER_APPNAME": "foo"}, "APPTAINER_APPNAME",
          var="APPTAINER_APPNAME"),
]  # fmt: skip


@pytest.mark.parametrize("case", params(NO_ENV_OPTION))
def test_no_env_option(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- env.go: apptainerEnvFile ("environment file") -----------------------------------------------
# Each string is one --env-file (in that order); exec IMAGE /bin/sh -c 'echo $VAR'.

ENV_FILE = [
    ("DefaultPathOverride", ["PATH=/"], None, "PATH", "/", None),
    ("DefaultPathOverrideEnvOptionPrecedence", ["PATH=/"], "PATH=/etc", "PATH", "/etc", None),
    ("DefaultPathOverrideEnvFileOptionPrecedence", ["PATH=/", "PATH=/etc"], None, "PATH", "/etc", None),
    ("DefaultPathOverrideEnvAndEnvFileOptionPrecedence", ["PATH=/", "PATH=/foo"], "PATH=/etc", "PATH",
     "/etc", None),
    ("AppendDefaultPath", ["APPEND_PATH=/"], None, "PATH", CUSTOM_PATH + ":/", None),
    ("AppendLiteralDefaultPath", ['PATH="\\$PATH:/"'], None, "PATH", CUSTOM_PATH + ":/", None),
    ("PrependLiteralDefaultPath", ['PATH="/:\\$PATH"'], None, "PATH", "/:" + CUSTOM_PATH, None),
    ("PrependDefaultPath", ["PREPEND_PATH=/"], None, "PATH", "/:" + CUSTOM_PATH, None),
    ("DefaultLdLibraryPath", [], None, "LD_LIBRARY_PATH", LIBS, None),
    ("CustomLdLibraryPath", ["LD_LIBRARY_PATH=/foo"], None, "LD_LIBRARY_PATH", f"/foo:{LIBS}", None),
    ("CustomTrailingCommaPath", ["LD_LIBRARY_PATH=/foo,"], None, "LD_LIBRARY_PATH", f"/foo,:{LIBS}", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("files", "env_opt", "var", "value", "theme"),
    [pytest.param(*row[1:], id=f"env.go:apptainerEnvFile/{row[0]}") for row in ENV_FILE],
)
def test_env_file(request, sb, files, env_opt, var, value, theme) -> None:  # type: ignore[no-untyped-def]
    argv = ["exec", *(("--env", env_opt) if env_opt else ())]
    for i, text in enumerate(files):
        path = sb.work / f"env.file{i}"
        path.write_text(text)
        path.chmod(0o644)
        argv += ["--env-file", str(path)]
    case = C(request.node.callspec.id, *argv, "@test@", "/bin/sh", "-c", f"echo ${var}", out=exact(value),
             xfail=theme)  # fmt: skip
    run_case(request, sb, case)


# --- env.go: apptainerEnvEval ("env eval") -------------------------------------------------------
# APPTAINERENV_WHO=... exec [--no-eval] IMAGE /bin/sh -c 'echo $WHO'. Without --no-eval the value
# is evaluated as a shell word (with the host user's UID); with it, it is passed as it is.


def ev(name: str, value: str | None, want: str, noeval: bool = False, prefix: str = "APPTAINERENV_",
       **kw: object) -> Case:  # fmt: skip
    argv = ["exec", *(("--no-eval",) if noeval else ()), "@test@", "/bin/sh", "-c", "echo $WHO"]
    env = {prefix + "WHO": value} if value is not None else {}
    return C(f"env.go:apptainerEnvEval/{name}", *argv, env=env, out=exact(want), **kw)


ENV_EVAL = [
    ev("no env", None, ""),
    ev("string env", "ME", "ME"),
    ev("env var", "$UID", "@uid@"),
    ev("double quoted env var", '"$UID"', '"@uid@"'),
    ev("single quoted env var", "'$UID'", "'@uid@'"),
    ev("escaped env var", "\\$UID", "$UID"),
    ev("subshell env", "$(id -u)", "@uid@"),
    ev("double quoted subshell env", '"$(id -u)"', '"@uid@"'),
    ev("single quoted subshell env", "'$(id -u)'", "'@uid@'"),
    ev("escaped subshell env", "\\$(id -u)", "$(id -u)"),
    # Named "no-eval/" in the Go table, but run without --no-eval there too.
    ev("no-eval/no env", None, ""),
    ev("no-eval/string env", "ME", "ME"),
    ev("no-eval/env var", "$UID", "$UID", noeval=True),
    ev("no-eval/double quoted env var", '"$UID"', '"$UID"', noeval=True),
    ev("no-eval/single quoted env var", "'$UID'", "'$UID'", noeval=True),
    ev("no-eval/escaped env var", "\\$UID", "\\$UID", noeval=True),
    ev("no-eval/subshell env", "$(id -u)", "$(id -u)", noeval=True),
    ev("no-eval/double quoted subshell env", '"$(id -u)"', '"$(id -u)"', noeval=True),
    ev("no-eval/single quoted subshell env", "'$(id -u)'", "'$(id -u)'", noeval=True),
    ev("no-eval/escaped subshell env", "\\$(id -u)", "\\$(id -u)", noeval=True),
    # The same through sifbox's own prefix and through --env.
    ev("subshell env[SIFBOXENV_]", "$(id -u)", "@uid@", prefix="SIFBOXENV_"),
    ev("escaped env var[SIFBOXENV_]", "\\$UID", "$UID", prefix="SIFBOXENV_"),
    C("env.go:apptainerEnvEval/subshell env[--env]", "exec", "--env", "WHO=$(id -u)", "@test@",
      "/bin/sh", "-c", "echo $WHO", out=exact("@uid@")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(ENV_EVAL))
def test_env_eval(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- env.go: apptainerRuntimeTimeoutEnv ("runscript timeout") ------------------------------------


def test_runscript_timeout(request, sb) -> None:
    slow = sb.work / "sleep.sh"
    slow.write_text("sleep 2s")
    slow.chmod(0o755)
    case = C(
        "env.go:apptainerRuntimeTimeoutEnv", "run", "-B", f"{slow}:/.singularity.d/env/91-slow_env.sh",
        "--runscript-timeout", "1s", "@test@", "true",
        # Apptainer's message, without its `FATAL:   ` prefix (sifbox has its own).
        exit=255, err=contains('command "sleep 2s" was killed after 1s timeout'),
    )  # fmt: skip
    run_case(request, sb, case)


# --- env/regressions.go -------------------------------------------------------------------------

REGRESSIONS = [
    # If a $ in an APPTAINERENV_ variable is escaped, it is a literal $ in the container
    # (e.g. LD_PRELOAD=/foo/bar/$LIB/baz.so).
    C("env/regressions.go:issue43", "exec", "@test@", *echo("LD_PRELOAD"),
      env={"APPTAINERENV_LD_PRELOAD": "/foo/bar/\\$LIB/baz.so"}, out=exact("/foo/bar/$LIB/baz.so")),
    C("env/regressions.go:issue43[SIFBOXENV_]", "exec", "@test@", *echo("LD_PRELOAD"),
      env={"SIFBOXENV_LD_PRELOAD": "/foo/bar/\\$LIB/baz.so"}, out=exact("/foo/bar/$LIB/baz.so")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(REGRESSIONS))
def test_env_regressions(request, sb, case: Case) -> None:
    run_case(request, sb, case)


def test_issue1263_env_file_keeps_readonly_variables(request, sb) -> None:
    """env/regressions.go:issue1263: an (empty) --env-file must not try to set EUID/UID/GID."""
    empty = sb.work / "env-file"
    empty.write_text("")
    empty.chmod(0o644)
    run_case(request, sb, C("env/regressions.go:issue1263", "exec", "--env-file", str(empty), "@test@",
                            "/bin/true", err=lacks("readonly variable")))  # fmt: skip


def test_issue5426_legacy_environment_file(request, sb, e2e_images) -> None:
    """env/regressions.go:issue5426: an image without /.singularity.d whose old-style
    /environment sets PATH."""
    sandbox = sb.work / "sandbox"
    shutil.copytree(e2e_images.sandbox, sandbox, symlinks=True)
    shutil.rmtree(sandbox / ".singularity.d")
    (sandbox / "environment").unlink(missing_ok=True)
    shutil.copy(Path(__file__).parent / "data/legacy-environment", sandbox / "environment")
    (sandbox / "environment").chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(sandbox)], check=True)
    run_case(request, sb, C("env/regressions.go:issue5426", "exec", str(sandbox), *ECHO_PATH,
                            out=contains("/canary/path")))  # fmt: skip


@pytest.mark.skip(
    reason="env/regressions.go:issue5057 checks Apptainer's engine configuration size "
    "limit (buildcfg.MAX_ENGINE_CONFIG_SIZE); sifbox has no such limit to hit"
)
def test_issue5057_engine_config_size() -> None:
    pass


# --- internal/pkg/util/env/clean.go (clean_test.go:TestSetContainerEnv), end to end -------------
# What of the host environment reaches the container, with and without --cleanenv.

CLEAN = "clean_test.go:TestSetContainerEnv/"
CLEAN_ENV = [
    C(CLEAN + "no APPTAINERENV_", "exec", "@test@", "env",
      env={"APPTAINER_CONTAINER": "/tmp/lolcow.sif", "APPTAINER_NAME": "lolcow.sif", "TERM": "xterm-256color",
           "LANG": "C", "LC_ALL": "C", "HOME": "/home/john"},
      out=(regex("(?m)^APPTAINER_NAME=test.sif$"), regex("(?m)^TERM=xterm-256color$"), regex("(?m)^LC_ALL=C$"),
           regex("(?m)^HOME=@home@$"), lacks("lolcow"))),
    # clean.go: a host variable named APPTAINER_* is "Not forwarding"; SINGULARITY_* and SIFBOX_*
    # are the same settings under other names.
    C(CLEAN + "no APPTAINERENV_[APPTAINER_*, SINGULARITY_*, SIFBOX_* not forwarded]", "exec", "@test@", "env",
      env={"APPTAINER_E2E_CANARY": "leak", "SINGULARITY_E2E_CANARY": "leak", "SIFBOX_E2E_CANARY": "leak"},
      out=lacks("E2E_CANARY")),
    C(CLEAN + "clean envs", "exec", "--cleanenv", "@test@", "env",
      env={"LANG": "en_US.UTF-8", "LC_ALL": "C", "TERM": "xterm-256color", "APPTAINERENV_FOO": "VAR",
           "CLEANENV": "TRUE"},
      out=(regex("(?m)^LANG=C$"), regex("(?m)^TERM=xterm-256color$"), regex("(?m)^FOO=VAR$"),
           lacks("LC_ALL="), lacks("CLEANENV"))),
    C(CLEAN + "always pass keys", "exec", "--cleanenv", "@test@", "env",
      env={"http_proxy": "http_proxy", "HTTPS_PROXY": "https_proxy", "no_proxy": "no_proxy",
           "ALL_PROXY": "all_proxy", "ftp_proxy": "ftp_proxy", "CLEANENV": "TRUE"},
      out=(regex("(?m)^http_proxy=http_proxy$"), regex("(?m)^HTTPS_PROXY=https_proxy$"),
           regex("(?m)^no_proxy=no_proxy$"), regex("(?m)^ALL_PROXY=all_proxy$"),
           regex("(?m)^ftp_proxy=ftp_proxy$"), lacks("CLEANENV"))),
    C(CLEAN + "APPTAINERENV_LANG with cleanenv", "exec", "--cleanenv", "@test@", *echo("LANG"),
      env={"APPTAINERENV_LANG": "en", "LANG": "en_US.UTF-8"}, out=exact("en")),
    # Overriding HOME with APPTAINERENV_HOME is not permitted (Apptainer warns and ignores it).
    C(CLEAN + "APPTAINERENV_HOME", "exec", "@test@", *echo("HOME"), env={"APPTAINERENV_HOME": "/my/home"},
      out=exact("@home@")),
    C(CLEAN + "APPTAINERENV_HOME[SIFBOXENV_]", "exec", "@test@", *echo("HOME"),
      env={"SIFBOXENV_HOME": "/my/home"}, out=exact("@home@")),
    C(CLEAN + "APPTAINERENV_HOST after HOST", "exec", "@test@", *echo("HOST"),
      env={"HOST": "myhost", "APPTAINERENV_HOST": "myhostenv"}, out=exact("myhostenv")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(CLEAN_ENV))
def test_clean_env(request, sb, case: Case) -> None:
    run_case(request, sb, case)
