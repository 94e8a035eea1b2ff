"""Apptainer's e2e/actions/actions.go: exec, run, shell, test, binds, namespaces, --no-mount.

The Go tests mostly run with the user profile; here every case runs as root and as the test
user. Where a Go test loops over all profiles (actionBasicProfiles) the profiles are kept:
plain, --userns and --fakeroot, for both users. The overlay tests of this file
(PersistentOverlay, PersistentOverlayUnpriv) are in test_overlay.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import (
    C,
    Case,
    check,
    console,
    contains,
    exact,
    lacks,
    mark_xfail,
    new_dir,
    params,
    remove_dir,
    run_case,
)

pytestmark = pytest.mark.integration


# --- actionRun ("run") ---------------------------------------------------------------------------

RUN = [
    C("actions.go:actionRun/NoCommand", "run", "@test@"),
    C("actions.go:actionRun/True", "run", "@test@", "true"),
    C("actions.go:actionRun/False", "run", "@test@", "false", exit=1),
    C("actions.go:actionRun/ScifTestAppGood", "run", "--app", "testapp", "@test@"),
    C("actions.go:actionRun/ScifTestAppBad", "run", "--app", "fakeapp", "@test@", exit=1),
]  # fmt: skip


@pytest.mark.parametrize("case", params(RUN))
def test_run(request, sb, case: Case) -> None:
    run_case(request, sb, case)


@pytest.mark.skip(
    reason="actions.go:singularityLink runs actionRun as `singularity`: sifbox installs "
    "no `singularity` command (its commands are named `sifbox`)"
)
def test_singularity_link() -> None:
    pass


# --- actionExec ("exec") -------------------------------------------------------------------------
# Run from /tmp; @work@/testdata/tmp/testApptainerExec.e2e exists on the host (not in /tmp).

TD = "@work@/testdata"
TMPFILE = "testApptainerExec.e2e"
NO_COMMAND = (
    "an exec without a command is a usage error: sifbox's status for bad usage is 125 (DESIGN: "
    "exit statuses), Apptainer's command-line parser exits 1"
)

EXEC = [
    C("actions.go:actionExec/NoCommand", "exec", "@test@", exit=125, diverges=NO_COMMAND),
    C("actions.go:actionExec/True", "exec", "@test@", "true"),
    C("actions.go:actionExec/TrueAbsPAth", "exec", "@test@", "/bin/true"),
    C("actions.go:actionExec/False", "exec", "@test@", "false", exit=1),
    C("actions.go:actionExec/FalseAbsPath", "exec", "@test@", "/bin/false", exit=1),
    C("actions.go:actionExec/ScifTestAppGood", "exec", "--app", "testapp", "@test@", "testapp.sh"),
    C("actions.go:actionExec/ScifTestAppBad", "exec", "--app", "fakeapp", "@test@", "testapp.sh", exit=1),
    *(C(f"actions.go:actionExec/ScifTestfolderOrg[{flag} {path}]", "exec", "@test@", "test", flag, path)
      for flag, path in (("-d", "/scif"), ("-d", "/scif/apps"), ("-d", "/scif/data"), ("-d", "/scif/apps/foo"),
                         ("-d", "/scif/apps/bar"), ("-f", "/scif/apps/foo/filefoo.exec"),
                         ("-f", "/scif/apps/bar/filebar.exec"), ("-d", "/scif/data/foo/output"),
                         ("-d", "/scif/data/foo/input"))),
    C("actions.go:actionExec/ContainOnly", "exec", "--contain", "@test@", "test", "-f", f"/tmp/{TMPFILE}", exit=1),
    C("actions.go:actionExec/WorkdirOnly", "exec", "--workdir", TD, "@test@", "test", "-f", f"/tmp/{TMPFILE}",
      exit=1),
    C("actions.go:actionExec/WorkdirContain", "exec", "--workdir", TD, "--contain", "@test@", "test", "-f",
      f"/tmp/{TMPFILE}"),
    C("actions.go:actionExec/CwdGood", "exec", "--cwd", "/etc", "@test@", "true"),
    C("actions.go:actionExec/PwdGood", "exec", "--pwd", "/etc", "@test@", "true"),
    C("actions.go:actionExec/Home", "exec", "--home", TD, "@test@", "test", "-f", f"{TD}/tmp/{TMPFILE}"),
    C("actions.go:actionExec/HomePath", "exec", "--home", f"{TD}/tmp:/home", "@test@", "test", "-f",
      f"/home/{TMPFILE}"),
    C("actions.go:actionExec/HomeTmp", "exec", "--home", "/tmp", "@test@", "true"),
    C("actions.go:actionExec/HomeTmpExplicit", "exec", "--home", "/tmp:/home", "@test@", "true"),
    C("actions.go:actionExec/UserBindTmp", "exec", "--bind", f"{TD}/tmp:/tmp", "@test@", "test", "-f",
      f"/tmp/{TMPFILE}"),
    C("actions.go:actionExec/UserBindVarTmp", "exec", "--bind", f"{TD}/tmp:/var/tmp", "@test@", "test", "-f",
      f"/var/tmp/{TMPFILE}"),
    # The home directory is not mounted: the user's is not in the image (root's /root is).
    C("actions.go:actionExec/NoHome", "exec", "--no-home", "@test@", "ls", "-ld", "@home@",
      exit={"user": 1, "root": 0}),
]  # fmt: skip


@pytest.fixture
def exec_testdata(sb) -> Path:
    """testdata/tmp/testApptainerExec.e2e, the user's (as the Go test, run as the user, makes them:
    --workdir testdata adds testdata/var_tmp)."""
    import os

    tmp = sb.work / "testdata" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / TMPFILE).touch()
    for p in (tmp.parent, tmp):
        p.chmod(0o755)
        os.chown(p, sb.who.uid, sb.who.gid)
    (tmp / TMPFILE).chmod(0o644)
    return tmp.parent


@pytest.mark.parametrize("case", params(EXEC))
def test_exec(request, sb, exec_testdata, case: Case) -> None:
    run_case(request, sb, Case(**{**case.__dict__, "cwd": "/tmp"}))


# With --contain and no --pwd, the container starts in the home directory, wherever the caller
# is (Apptainer's launcher: setProcessCwd). ContainOnly runs from /tmp: so do these.
CONTAIN_CWD = [
    C("actions.go:actionExec/ContainOnly[pwd is the home directory, from /tmp]", "exec", "--contain",
      "@test@", "pwd", cwd="/tmp", out=exact("@home@")),
    C("actions.go:actionExec/ContainOnly[pwd is the home directory, from /etc]", "exec", "--contain",
      "@test@", "pwd", cwd="/etc", out=exact("@home@")),
    C("actions.go:actionExec/ContainOnly[--pwd wins]", "exec", "--contain", "--pwd", "/etc", "@test@",
      "pwd", cwd="/tmp", out=exact("/etc")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(CONTAIN_CWD))
def test_contain_cwd(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- the action script (internal/pkg/util/fs/files/action_script.sh) ------------------------------
# What run and test do with --app, and without the image's scripts.

ACTION_SCRIPT = [
    # run --app NAME without a runscript: "no runscript for contained app", exit 1.
    C("action_script.sh:run/--app without %apprun", "run", "--app", "bar", "@test@", exit=1),
    # test --app NAME without a test: "No tests for contained app", exit 1.
    C("action_script.sh:test/--app without %apptest", "test", "--app", "bar", "@test@", exit=1),
    # test without a test script in the image: "No test script found in container, exiting", 0.
    C("action_script.sh:test/no test script", "test", "@busybox@"),
    # The test script gets the arguments (the test image's %test is `exec "$@"`).
    C("action_script.sh:test/test script true", "test", "@test@", "true"),
    C("action_script.sh:test/test script false", "test", "@test@", "false", exit=1),
]  # fmt: skip


@pytest.mark.parametrize("case", params(ACTION_SCRIPT))
def test_action_script(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- actionShell ("shell"): on a terminal ------------------------------------------------------


def test_shell_exit(request, sb) -> None:
    """actions.go:actionShell/ShellExit: the prompt shows, `exit` ends the shell with 0."""
    # Divergence: the prompt is sifbox's own, `Sifbox> ` (Apptainer's is `Apptainer> `; this Go
    # test, from before the rename, looks for `Singularity`).
    res = console(
        sb, ["shell", "@test@"], [("send", "cd /"), ("expect", "Sifbox>"), ("send", "exit")]
    )
    assert res.status == 0, res


def test_shell_hostname(request, sb) -> None:
    """actions.go:actionShell/ShellHostname: the container has the host's hostname."""
    res = console(sb, ["shell", "@test@"], [("send", "hostname"), ("expect", socket.gethostname()),
                                            ("send", "exit")])  # fmt: skip
    assert res.status == 0, res


def test_shell_bad_command(request, sb) -> None:
    """actions.go:actionShell/ShellBadCommand: `exit` after a command not found gives 127."""
    res = console(sb, ["shell", "@test@"], [("send", "_a_fake_command"), ("send", "exit")])
    assert res.status == 127, res


# --- STDPipe ("STDPIPE") -------------------------------------------------------------------------

STDPIPE = [
    C("actions.go:STDPipe/TrueSTDIN", "exec", "@test@", "grep", "hi", stdin="hi"),
    C("actions.go:STDPipe/FalseSTDIN", "exec", "@test@", "grep", "hi", stdin="bye", exit=1),
    # TrueLibrary / FalseLibrary (shell oras://ghcr.io/apptainer/busybox:1.31.1 with `true`/`false`
    # on stdin) need the network; the same with the test image:
    C("actions.go:STDPipe/TrueLibrary[test image]", "shell", "@test@", stdin="true"),
    C("actions.go:STDPipe/FalseLibrary[test image]", "shell", "@test@", stdin="false", exit=1),
    C("actions.go:STDPipe/AppsFoo", "run", "--app", "foo", "@test@", out=exact("RUNNING FOO")),
    C("actions.go:STDPipe/CwdPath", "exec", "--cwd", "/etc", "@test@", "pwd", out=exact("/etc")),
    C("actions.go:STDPipe/PwdPath", "exec", "--pwd", "/etc", "@test@", "pwd", out=exact("/etc")),
    C("actions.go:STDPipe/Arguments", "run", "@test@", "foo", exit=127, out=exact("Running command: foo")),
    C("actions.go:STDPipe/Permissions", "exec", "@test@", "id", "-un", out=exact("@user@")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(STDPIPE))
def test_stdpipe(request, sb, case: Case) -> None:
    run_case(request, sb, case)


#: testdata/runscript.sh of the Go test: succeeds when its argument is its own size.
URI_RUNSCRIPT = '#!/bin/sh\n[ "$(wc -c < /.singularity.d/runscript)" -eq "$1" ]\n'
# RunFromDocker/Library/Shub cases need the network (library://, shub:// are not available in
# sifbox; docker:// images run as test_action_uri.py tests); the oras:// ones run here.
RUN_FROM_URI = [
    C("actions.go:RunFromURI/RunFromOrasOK", "run", "--bind", "@runscript@:/.singularity.d/runscript", "@oras@",
      "@size@"),
    C("actions.go:RunFromURI/ExecTrueOras", "exec", "@oras@", "true"),
    C("actions.go:RunFromURI/ExecFalseOras", "exec", "@oras@", "false", exit=1),
    C("actions.go:RunFromURI/ExecTrueOrasUserns", "exec", "@oras@", "true", profile="userns"),
    C("actions.go:RunFromURI/ExecFalseOrasUserns", "exec", "@oras@", "false", exit=1, profile="userns"),
]  # fmt: skip


@pytest.mark.parametrize("case", params(RUN_FROM_URI))
def test_run_from_uri(request, sb, oras_image: str, case: Case) -> None:
    runscript = sb.work / "runscript.sh"
    runscript.write_text(URI_RUNSCRIPT)
    runscript.chmod(0o755)
    sb.extra.update({"@oras@": oras_image, "@runscript@": str(runscript), "@size@": str(len(URI_RUNSCRIPT))})
    run_case(request, sb, case)


# --- actionBasicProfiles ("action basic profiles"): all profiles ------------------------------

BASIC = [
    C("ExecTrue", "exec", "@test@", "true"),
    C("ExecPidNsTrue", "exec", "--pid", "@test@", "true"),
    C("ExecFalse", "exec", "@test@", "false", exit=1),
    C("ExecPidNsFalse", "exec", "--pid", "@test@", "false", exit=1),
    C("RunTrue", "run", "@test@", "true"),
    C("RunPidNsTrue", "run", "--pid", "@test@", "true"),
    C("RunFalse", "run", "@test@", "false", exit=1),
    C("RunPidNsFalse", "run", "--pid", "@test@", "false", exit=1),
    C("RunBindTrue", "run", "--bind", "/etc/passwd", "@test@", "true"),
    C("RunBindFalse", "run", "--bind", "/etc/passwd", "@test@", "false", exit=1),
]  # fmt: skip
PROFILES = {"plain": "user", "userns": "userns", "fakeroot": "fakeroot"}


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize(
    "case", [pytest.param(c, id=f"actions.go:actionBasicProfiles/{c.name}") for c in BASIC]
)
def test_basic_profiles(request, sb, case: Case, profile: str) -> None:
    run_case(request, sb, Case(**{**case.__dict__, "profile": PROFILES[profile]}))


# --- actionNetwork ("network") -------------------------------------------------------------------

REFUSED_NETWORK = (
    "sifbox refuses the request as bad usage (125, DESIGN: exit statuses) where Apptainer fails "
    "with its generic 255"
)
NETWORK = [
    C("actions.go:actionNetwork/BridgeNetwork", "exec", "--net", "--network", "bridge", "@test@", "id",
      only="root"),
    C("actions.go:actionNetwork/PtpNetwork", "exec", "--net", "--network", "ptp", "@test@", "id",
      only="root"),
    C("actions.go:actionNetwork/UnknownNetwork", "exec", "--net", "--network", "unknown", "@test@", "id",
      exit=125, diverges=REFUSED_NETWORK),
    C("actions.go:actionNetwork/FakerootNetwork", "exec", "--net", "--network", "fakeroot", "@test@", "id",
      profile="fakeroot"),
    C("actions.go:actionNetwork/NoneNetwork", "exec", "--net", "--network", "none", "@test@", "id"),
    C("actions.go:actionNetwork/UserBridgeNetwork", "exec", "--net", "--network", "bridge", "@test@", "id",
      only="user", exit=125, diverges=REFUSED_NETWORK),
]  # fmt: skip


@pytest.mark.parametrize("case", params(NETWORK))
def test_network(request, sb, case: Case, host_network) -> None:
    run_case(request, sb, case)


# --- actionBinds ("binds") -----------------------------------------------------------------------
# On a sandbox of the test image owned by the test user (Apptainer's test builds it with the user
# profile), shared by the cases of this module. The workspace (canary directory and files, home
# and work directories) is made fresh for each case, as the Go test does for each profile. The Go
# test runs every profile; here root and the user run each case once, without --userns or
# --fakeroot (actionBasicProfiles covers those).

WS = "@work@"
CANARY = f"{WS}/canary"
FILE = f"{CANARY}/file"
HOME = f"{WS}/home"
WORKDIR = f"{WS}/workdir"
SB = "@bsandbox@"
FILE_BIND = f"{FILE}:/canary/file"
DIR_BIND = f"{CANARY}:/canary"
BAD_BIND = (
    "sifbox refuses a malformed --bind as bad usage, 125 (DESIGN: exit statuses), before it "
    "launches anything; Apptainer fails with its generic 255"
)


def bind(name: str, *args: str, exit: int = 0, host_file: str | None = None, host_dir: str | None = None,
         **kw: object) -> Case:  # fmt: skip
    """A row of actionBinds; host_file/host_dir: what the Go test's postRun finds on the host."""
    theme = kw.pop("xfail", None)
    paths = ((("file", host_file),) if host_file else ()) + (
        (("dir", host_dir),) if host_dir else ()
    )
    return C(
        f"actions.go:actionBinds/{name}",
        "exec",
        *args,
        exit=exit,
        xfail=theme,
        host_paths=paths,
        **kw,
    )


def underlay(name: str, *args: str, **kw: object) -> Case:
    return bind(f"{name}", "--underlay", *args, **kw)


BINDS = [
    bind("NonExistentSource", "--bind", "/non/existent/source/path", SB, "true", exit=255),
    bind("RelativeBindDestination", "--bind", f"{FILE}:relative", SB, "true", exit=125, diverges=BAD_BIND),
    bind("SimpleFile", "--bind", FILE_BIND, SB, "test", "-f", "/canary/file"),
    underlay("SimpleFileUnderlay", "--bind", FILE_BIND, SB, "test", "-f", "/canary/file"),
    bind("SimpleFileCwd", "--bind", FILE_BIND, "--cwd", "/canary", SB, "test", "-f", "file"),
    bind("SimpleFilePwd", "--bind", FILE_BIND, "--pwd", "/canary", SB, "test", "-f", "file"),
    underlay("SimpleFilePwdUnderlay", "--bind", FILE_BIND, "--pwd", "/canary", SB, "test", "-f", "file"),
    bind("SimpleDir", "--bind", DIR_BIND, SB, "test", "-f", "/canary/file"),
    bind("SimpleDirCwd", "--bind", DIR_BIND, "--cwd", "/canary", SB, "test", "-f", "file"),
    bind("SimpleDirPwd", "--bind", DIR_BIND, "--pwd", "/canary", SB, "test", "-f", "file"),
    underlay("SimpleDirUnderlay", "--bind", DIR_BIND, SB, "test", "-f", "/canary/file"),
    underlay("SimpleDirPwdUnderlay", "--bind", DIR_BIND, "--pwd", "/canary", SB, "test", "-f", "file"),
    bind("SimpleFileWritableOK", "--writable", "--bind", FILE, SB, "test", "-f", FILE),
    underlay("SimpleFileWritableUnderlayOK", "--writable", "--bind", FILE, SB, "test", "-f", FILE),
    bind("SimpleFileWritableKO", "--writable", "--bind", FILE_BIND, SB, "test", "-f", "/canary/file", exit=255),
    bind("SimpleDirWritableOK", "--writable", "--bind", CANARY, SB, "test", "-f", FILE),
    bind("SimpleDirWritableKO", "--writable", "--bind", DIR_BIND, SB, "test", "-f", "/canary/file", exit=255),
    bind("HomeContainOverride", "--contain", "--bind", f"{CANARY}:/home", SB, "test", "-f", "/home/file"),
    underlay("HomeContainOverrideUnderlay", "--contain", "--bind", f"{CANARY}:/home", SB, "test", "-f",
             "/home/file"),
    bind("TmpContainOverride", "--contain", "--bind", f"{CANARY}:/tmp", SB, "test", "-f", "/tmp/file"),
    underlay("TmpContainOverrideUnderlay", "--contain", "--bind", f"{CANARY}:/tmp", SB, "test", "-f", "/tmp/file"),
    bind("VarTmpContainOverride", "--contain", "--bind", f"{CANARY}:/var/tmp", SB, "test", "-f", "/var/tmp/file"),
    underlay("VarTmpContainOverrideUnderlay", "--contain", "--bind", f"{CANARY}:/var/tmp", SB, "test", "-f",
             "/var/tmp/file"),
    bind("SymlinkOneLevelFileBind", "--bind", f"{FILE}:/var/etc/symlink1", SB, "test", "-f", "/etc/symlink1"),
    underlay("SymlinkOneLevelFileBindUnderlay", "--bind", f"{FILE}:/var/etc/symlink1", SB, "test", "-f",
             "/etc/symlink1"),
    bind("SymlinkTwoLevelFileBind", "--bind", f"{FILE}:/var/etc/madness/symlink2", SB, "test", "-f",
         "/madness/symlink2"),
    underlay("SymlinkTwoLevelFileBindUnderlay", "--bind", f"{FILE}:/var/etc/madness/symlink2", SB, "test",
             "-f", "/madness/symlink2"),
    bind("SymlinkOneLevelDirBind", "--bind", f"{CANARY}:/var/etc", SB, "test", "-f", "/etc/file"),
    underlay("SymlinkOneLevelDirBindUnderlay", "--bind", f"{CANARY}:/var/etc", SB, "test", "-f", "/etc/file"),
    bind("SymlinkTwoLevelDirBind", "--bind", f"{CANARY}:/var/etc/madness", SB, "test", "-f", "/madness/file"),
    underlay("SymlinkTwoLevelDirBindUnderlay", "--bind", f"{CANARY}:/var/etc/madness", SB, "test", "-f",
             "/madness/file"),
    bind("SymlinkOneLevelNewDirBind", "--bind", f"{CANARY}:/var/etc/new", SB, "test", "-f", "/etc/new/file"),
    underlay("SymlinkOneLevelNewDirBindUnderlay", "--bind", f"{CANARY}:/var/etc/new", SB, "test", "-f",
             "/etc/new/file"),
    bind("SymlinkTwoLevelNewDirBind", "--bind", f"{CANARY}:/var/etc/madness/new", SB, "test", "-f",
         "/madness/new/file"),
    underlay("SymlinkTwoLevelNewDirBindUnderlay", "--bind", f"{CANARY}:/var/etc/madness/new", SB, "test", "-f",
             "/madness/new/file"),
    bind("NestedBindFile", "--bind", DIR_BIND, "--bind", f"{FILE}:/canary/file2", SB, "test", "-f",
         "/canary/file2", host_file=f"{CANARY}/file2"),
    underlay("NestedBindFileUnderlay", "--bind", DIR_BIND, "--bind", f"{FILE}:/canary/file2", SB, "test", "-f",
             "/canary/file2", host_file=f"{CANARY}/file2"),
    bind("NestedBindDir", "--bind", DIR_BIND, "--bind", f"{CANARY}:/canary/dir2", SB, "test", "-d",
         "/canary/dir2", host_dir=f"{CANARY}/dir2"),
    underlay("NestedBindDirUnderlay", "--bind", DIR_BIND, "--bind", f"{CANARY}:/canary/dir2", SB, "test", "-d",
             "/canary/dir2", host_dir=f"{CANARY}/dir2"),
    bind("MultipleNestedBindDir", "--bind", DIR_BIND, "--bind", f"{CANARY}:/canary/dir2", "--bind",
         f"{FILE}:/canary/dir2/nested", SB, "test", "-f", "/canary/dir2/nested", host_file=f"{CANARY}/nested"),
    underlay("MultipleNestedBindDirUnderlay", "--bind", DIR_BIND, "--bind", f"{CANARY}:/canary/dir2", "--bind",
             f"{FILE}:/canary/dir2/nested", SB, "test", "-f", "/canary/dir2/nested", host_file=f"{CANARY}/nested"),
    bind("CustomHomeOneToOne", "--home", HOME, "--bind", f"{CANARY}:{HOME}/canary121RO", SB, "test", "-f",
         f"{HOME}/canary121RO/file", host_dir=f"{HOME}/canary121RO"),
    underlay("CustomHomeOneToOneUnderlay", "--home", HOME, "--bind", f"{CANARY}:{HOME}/canary121RO", SB, "test",
             "-f", f"{HOME}/canary121RO/file", host_dir=f"{HOME}/canary121RO"),
    bind("CustomHomeBind", "--home", f"{HOME}:/home/e2e", "--bind", f"{CANARY}:/home/e2e/canaryRO", SB, "test",
         "-f", "/home/e2e/canaryRO/file", host_dir=f"{HOME}/canaryRO"),
    underlay("CustomHomeBindUnderlay", "--home", f"{HOME}:/home/e2e", "--bind", f"{CANARY}:/home/e2e/canaryRO",
             SB, "test", "-f", "/home/e2e/canaryRO/file", host_dir=f"{HOME}/canaryRO"),
    bind("CustomHomeBindWritableOK", "--home", f"{HOME}:/home/e2e", "--bind", f"{CANARY}:/home/e2e/canaryRW",
         "--writable", SB, "test", "-f", "/home/e2e/canaryRW/file", host_dir=f"{HOME}/canaryRW"),
    bind("CustomHomeBindWritableKO", "--home", DIR_BIND, "--writable", SB, "true", exit=255),
    bind("WorkdirTmpBind", "--workdir", WORKDIR, "--contain", "--bind", f"{CANARY}:/tmp/canary/dir", SB, "test",
         "-f", "/tmp/canary/dir/file", host_dir=f"{WORKDIR}/tmp/canary/dir"),
    underlay("WorkdirTmpBindUnderlay", "--workdir", WORKDIR, "--contain", "--bind", f"{CANARY}:/tmp/canary/dir",
             SB, "test", "-f", "/tmp/canary/dir/file", host_dir=f"{WORKDIR}/tmp/canary/dir"),
    bind("WorkdirTmpBindWritable", "--writable", "--workdir", WORKDIR, "--contain", "--bind",
         f"{CANARY}:/tmp/canary/dir", SB, "test", "-f", "/tmp/canary/dir/file",
         host_dir=f"{WORKDIR}/tmp/canary/dir"),
    bind("WorkdirVarTmpBind", "--workdir", WORKDIR, "--contain", "--bind", f"{CANARY}:/var/tmp/canary/dir", SB,
         "test", "-f", "/var/tmp/canary/dir/file", host_dir=f"{WORKDIR}/var_tmp/canary/dir"),
    underlay("WorkdirVarTmpBindUnderlay", "--workdir", WORKDIR, "--contain", "--bind",
             f"{CANARY}:/var/tmp/canary/dir", SB, "test", "-f", "/var/tmp/canary/dir/file",
             host_dir=f"{WORKDIR}/var_tmp/canary/dir"),
    bind("WorkdirVarTmpBindWritable", "--writable", "--workdir", WORKDIR, "--contain", "--bind",
         f"{CANARY}:/var/tmp/canary/dir", SB, "test", "-f", "/var/tmp/canary/dir/file",
         host_dir=f"{WORKDIR}/var_tmp/canary/dir"),
    bind("ScratchTmpfsBind", "--scratch", "/scratch", "--bind", f"{CANARY}:/scratch/dir", SB, "test", "-f",
         "/scratch/dir/file"),
    underlay("ScratchTmpfsBindUnderlay", "--scratch", "/scratch", "--bind", f"{CANARY}:/scratch/dir", SB, "test",
             "-f", "/scratch/dir/file"),
    bind("ScratchWorkdirBind", "--workdir", WORKDIR, "--scratch", "/scratch", "--bind", f"{CANARY}:/scratch/dir",
         SB, "test", "-f", "/scratch/dir/file", host_dir=f"{WORKDIR}/scratch/scratch/dir"),
    underlay("ScratchWorkdirBindUnderlay", "--workdir", WORKDIR, "--scratch", "/scratch", "--bind",
             f"{CANARY}:/scratch/dir", SB, "test", "-f", "/scratch/dir/file",
             host_dir=f"{WORKDIR}/scratch/scratch/dir"),
    bind("BindFileWithCommaOK", "--bind", f"{CANARY}/file\\,comma:/canary/file", SB, "test", "-f", "/canary/file"),
    underlay("BindFileWithCommaUnderlayOK", "--bind", f"{CANARY}/file\\,comma:/canary/file", SB, "test", "-f",
             "/canary/file"),
    bind("BindFileWithCommaKO", "--bind", f"{CANARY}/file,comma:/canary/file", SB, "test", "-f", "/canary/file",
         exit=255),
    bind("BindFileWithColonOK", "--bind", f"{CANARY}/file\\:colon:/canary/file", SB, "test", "-f",
         "/canary/file"),
    bind("BindFileWithColonKO", "--bind", f"{CANARY}/file:colon:/canary/file", SB, "test", "-f", "/canary/file",
         exit=125, diverges=BAD_BIND),
    bind("MountSingle", "--mount", f"type=bind,source={FILE},destination=/canary/file", SB, "test", "-f",
         "/canary/file"),
    bind("MountNested", "--mount", f"type=bind,source={CANARY},destination=/canary", "--mount",
         f"source={FILE},destination=/canary/file3", SB, "test", "-f", "/canary/file3",
         host_file=f"{CANARY}/file3"),
]  # fmt: skip


@pytest.fixture(scope="module")
def binds_sandbox(e2e_images) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """A copy of the sandbox (owned by the test user) that this module's --writable cases change."""
    base = new_dir("binds")
    subprocess.run(["cp", "-a", str(e2e_images.sandbox), str(base / "sandbox")], check=True)
    yield base / "sandbox"
    remove_dir(base)


def make_workspace(work: Path) -> None:
    """createWorkspaceDirs: the canary directory and files, home and work directories."""
    canary = work / "canary"
    canary.mkdir(mode=0o777)
    canary.chmod(0o777)
    for name in ("file", "file,comma", "file:colon"):
        (canary / name).touch()
    (canary / "file").chmod(0o777)
    for d in ("home", "workdir"):
        (work / d).mkdir()
        (work / d).chmod(0o777)


@pytest.mark.parametrize("case", params(BINDS))
def test_binds(request, sb, binds_sandbox: Path, case: Case) -> None:
    make_workspace(sb.work)
    args = [a.replace("@bsandbox@", str(binds_sandbox)) for a in case.argv]
    mark_xfail(request, case.xfail, sb.kind)
    check(sb, case, sb.run(args, cwd=sb.work))


# --- exitSignals ("exit and signals") ------------------------------------------------------------

EXIT = [
    C("actions.go:exitSignals/Exit0", "exec", "@test@", "/bin/sh", "-c", "exit 0"),
    C("actions.go:exitSignals/Exit1", "exec", "@test@", "/bin/sh", "-c", "exit 1", exit=1),
    C("actions.go:exitSignals/Exit134", "exec", "@test@", "/bin/sh", "-c", "exit 134", exit=134),
    C("actions.go:exitSignals/SignalKill", "exec", "@test@", "/bin/sh", "-c", "kill -KILL $$", exit=137),
    C("actions.go:exitSignals/SignalAbort", "exec", "@test@", "/bin/sh", "-c", "kill -ABRT $$", exit=134),
]  # fmt: skip


@pytest.mark.parametrize("case", params(EXIT))
def test_exit_signals(request, sb, case: Case) -> None:
    run_case(request, sb, case)


@pytest.mark.skip(
    reason="actions.go:fuseMount is skipped by Apptainer itself (t.Skip: broken on GitHub "
    "runners); it also needs an sshd image and --fusemount"
)
def test_fuse_mount() -> None:
    pass


# --- bindImage ("bind image"): images bound with image-src= / id= -------------------------------


@pytest.fixture(scope="module")
def bind_images(sifbox_cli) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """squashfs.simg (with squash_marker), ext3_fs.img (64 MiB), data_squash.sif and
    data_ext3.sif (the same as SIF data partitions), scratch/bin: as the Go test makes them."""
    for tool in ("mksquashfs", "mkfs.ext3"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (Debian packages squashfs-tools, e2fsprogs)")
    base = new_dir("bindimage", 0o777)
    (base / "scratch/bin").mkdir(parents=True)
    for p in (base / "scratch", base / "scratch/bin"):
        p.chmod(0o777)
    squash_dir = base / "root-squash-dir"
    squash_dir.mkdir(mode=0o755)
    squash_dir.chmod(0o755)
    (squash_dir / "squash_marker").touch()

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    run("mksquashfs", str(squash_dir), str(base / "squashfs.simg"), "-noappend", "-all-root")
    run("dd", "if=/dev/zero", f"of={base / 'ext3_fs.img'}", "bs=1M", "count=64", "status=none")
    run("mkfs.ext3", "-q", "-F", str(base / "ext3_fs.img"))
    for sif, part, fs in (
        ("data_squash.sif", "squashfs.simg", "1"),
        ("data_ext3.sif", "ext3_fs.img", "2"),
    ):
        run(sifbox_cli, "sif", "new", str(base / sif))
        run(sifbox_cli, "sif", "add", "--datatype", "4", "--partarch", "2", "--partfs", fs, "--parttype", "3",
            str(base / sif), str(base / part))  # fmt: skip
    for name in ("squashfs.simg", "ext3_fs.img", "data_squash.sif", "data_ext3.sif"):
        (base / name).chmod(0o666)
    yield {"@bi@": str(base)}
    remove_dir(base)


BI = "@bi@"
BIND_IMAGE = [
    C("actions.go:bindImage/NoBindOption", "exec", "--bind", f"{BI}/squashfs.simg:/bind", "@test@", "test", "-f",
      "/bind/squash_marker", exit=1),
    C("actions.go:bindImage/BadIDValue", "exec", "--bind", f"{BI}/squashfs.simg:/bind:id=0", "@test@", "true",
      exit=125, diverges=BAD_BIND),
    C("actions.go:bindImage/BadBindOption", "exec", "--bind", f"{BI}/squashfs.simg:/bind:fake_option=fake",
      "@test@", "true", exit=125, diverges=BAD_BIND),
    C("actions.go:bindImage/SandboxKO", "exec", "--bind", f"{BI}/root-squash-dir:/bind:image-src=/", "@test@",
      "true", exit=125, diverges=BAD_BIND),
    C("actions.go:bindImage/Squashfs", "exec", "--bind", f"{BI}/squashfs.simg:/bind:image-src=/", "@test@",
      "test", "-f", "/bind/squash_marker"),
    C("actions.go:bindImage/SquashfsDouble", "exec", "--bind", f"{BI}/squashfs.simg:/bind1:image-src=/", "--bind",
      f"{BI}/squashfs.simg:/bind2:image-src=/", "@test@", "test", "-f", "/bind1/squash_marker", "-a", "-f",
      "/bind2/squash_marker"),
    C("actions.go:bindImage/SquashfsBadSource", "exec", "--bind", f"{BI}/squashfs.simg:/bind:image-src=/ko",
      "@test@", "true", exit=255),
    C("actions.go:bindImage/SquashfsMixedBind", "exec", "--bind", f"{BI}/squashfs.simg:/bind1:image-src=/",
      "--bind", f"{BI}/root-squash-dir:/bind2", "@test@", "test", "-f", "/bind1/squash_marker", "-a", "-f",
      "/bind2/squash_marker"),
    # Ext3Write, Ext3WriteKO and SifDataExt3Write use Apptainer's root profile: the file systems
    # are made by root (mkfs.ext3), whose root directory the user may not write.
    C("actions.go:bindImage/Ext3Write", "exec", "--bind", f"{BI}/ext3_fs.img:/bind:image-src=/", "@test@",
      "touch", "/bind/ext3_marker", only="root"),
    C("actions.go:bindImage/Ext3WriteKO", "exec", "--bind", f"{BI}/ext3_fs.img:/bind:image-src=/,ro", "@test@",
      "touch", "/bind/ext3_marker", exit=1),
    C("actions.go:bindImage/SifDataExt3Write", "exec", "--bind", f"{BI}/data_ext3.sif:/bind:image-src=/",
      "@test@", "touch", "/bind/ext3_marker", only="root"),
    C("actions.go:bindImage/Ext3Read", "exec", "--bind", f"{BI}/ext3_fs.img:/bind:image-src=/", "@test@", "test",
      "-f", "/bind/ext3_marker"),
    C("actions.go:bindImage/Ext3Double", "exec", "--bind", f"{BI}/ext3_fs.img:/bind1:image-src=/", "--bind",
      f"{BI}/ext3_fs.img:/bind2:image-src=/", "@test@", "true", exit=255),
    C("actions.go:bindImage/SifDataSquash", "exec", "--bind", f"{BI}/data_squash.sif:/bind:image-src=/",
      "@test@", "test", "-f", "/bind/squash_marker"),
    C("actions.go:bindImage/SifDataExt3Read", "exec", "--bind", f"{BI}/data_ext3.sif:/bind:image-src=/",
      "@test@", "test", "-f", "/bind/ext3_marker"),
    C("actions.go:bindImage/SifDataExt3AndSquash", "exec", "--bind", f"{BI}/data_ext3.sif:/ext3:image-src=/",
      "--bind", f"{BI}/data_squash.sif:/squash:image-src=/", "@test@", "test", "-f", "/squash/squash_marker",
      "-a", "-f", "/ext3/ext3_marker"),
    C("actions.go:bindImage/SifDataExt3Double", "exec", "--bind", f"{BI}/data_ext3.sif:/bind1:image-src=/",
      "--bind", f"{BI}/data_ext3.sif:/bind2:image-src=/", "@test@", "true", exit=255),
    # The test image's root file system is descriptor 4 in the image Apptainer builds, 3 in the
    # one `sifbox build` makes (definition file, labels, root file system).
    C("actions.go:bindImage/SifWithID", "exec", "--bind", "@test@:/rootfs:id=3", "@test@", "test", "-d",
      "/rootfs/etc"),
    # Binds are mounted in their order: /scratch, bound after, hides the image at /scratch/bin.
    C("actions.go:bindImage/SquashfsBeforeScratch", "exec", "--bind", f"{BI}/data_squash.sif:/scratch/bin:image-src=/",
      "--bind", f"{BI}/scratch:/scratch", "@test@", "test", "-f", "/scratch/bin/squash_marker", exit=1),
    C("actions.go:bindImage/ScratchBeforeSquashfs", "exec", "--bind", f"{BI}/scratch:/scratch", "--bind",
      f"{BI}/data_squash.sif:/scratch/bin:image-src=/", "@test@", "test", "-f", "/scratch/bin/squash_marker"),
    C("actions.go:bindImage/MountSifWithID", "exec", "--mount", "type=bind,source=@test@,destination=/rootfs,id=3",
      "@test@", "test", "-d", "/rootfs/etc"),
    C("actions.go:bindImage/MountSifDataExt3AndSquash", "exec", "--mount",
      f"type=bind,source={BI}/data_ext3.sif,destination=/ext3,image-src=/", "--mount",
      f"type=bind,source={BI}/data_squash.sif,destination=/squash,image-src=/", "@test@", "test", "-f",
      "/squash/squash_marker", "-a", "-f", "/ext3/ext3_marker"),
]  # fmt: skip


@pytest.mark.parametrize("case", params(BIND_IMAGE))
def test_bind_image(request, sb, bind_images, case: Case) -> None:
    if case.only and case.only != sb.kind:
        pytest.skip(f"only as {case.only}")
    args = [a.replace(BI, bind_images[BI]) for a in case.argv]
    mark_xfail(request, case.xfail, sb.kind)
    check(sb, case, sb.run(args))


# --- actionUmask ("umask"), actionCompat ("compat"), actionUnsquash ("unsquash") ----------------

UMASK = [
    C("actions.go:actionUmask/host umask 0000", "exec", "@test@", "sh", "-c", "umask", profile="fakeroot",
      cwd="@home@", umask=0, out=exact("0000")),
    C("actions.go:actionUmask/--no-umask", "exec", "--no-umask", "@test@", "sh", "-c", "umask",
      profile="fakeroot", cwd="@home@", umask=0, out=exact("0022")),
    C("actions.go:actionCompat/containall", "exec", "--compat", "@test@", "sh", "-c", "ls -lah $HOME", umask=0,
      out=contains("total 0")),
    C("actions.go:actionCompat/writable-tmpfs", "exec", "--compat", "@test@", "sh", "-c", "touch /test", umask=0),
    C("actions.go:actionCompat/no-init", "exec", "--compat", "@test@", "sh", "-c", "ps", umask=0,
      out=lacks("appinit")),
    C("actions.go:actionCompat/no-umask", "exec", "--compat", "@test@", "sh", "-c", "umask", umask=0,
      out=contains("0022")),
    # Without the init shim (--no-init, implied by --compat), the payload is the PID namespace's
    # PID 1. (With --pid alone, Apptainer's PID 1 is its shim, `appinit`, as sifbox's is its own.)
    C("actions.go:actionCompat/no-init[--pid --no-init: the payload is PID 1]", "exec", "--pid", "--no-init",
      "@test@", "sh", "-c", "echo $$", out=exact("1")),
    # sifbox never extracts an image to run it (DESIGN decision 1), so there is no
    # "Converting SIF" to see; the flag should still be accepted.
    *(C(f"actions.go:actionUnsquash/{name}", "exec", "--unsquash", "@test@", "true", profile=profile,
        err=contains("--unsquash has no effect"), diverges="no extraction: `Converting SIF` is not expected")
      for name, profile in (("user", "user"), ("userns", "userns"), ("fakeroot", "fakeroot"))),
]  # fmt: skip


@pytest.mark.parametrize("case", params(UMASK))
def test_umask_compat_unsquash(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- actionNoMount ("no-mount") ------------------------------------------------------------------
# exec [--contain] --no-mount NAME IMAGE mount: `mount` must not show the mount.


def no_mount(name: str, what: str, unwanted: str, *, default: bool = True, contained: bool = True,
             cwd: str = "/", exit: int = 0, image: str = "@test@", **kw: object) -> list[Case]:  # fmt: skip
    cases = []
    for contain in (False, True):
        if (contain and contained) or (not contain and default):
            cases.append(C(f"actions.go:actionNoMount/{name}{'Contained' if contain else ''}", "exec",
                           *(("--contain",) if contain else ()), "--no-mount", what, image, "mount",
                           exit=exit, out=lacks(unwanted), cwd=cwd, **kw))  # fmt: skip
    return cases


NO_MOUNT = [
    # Without /proc, `mount` fails with 1.
    *no_mount("proc", "proc", "on /proc", exit=1),
    *no_mount("sys", "sys", "on /sys"),
    # As the user, the image's /dev/null (a device node on a nodev mount) can't be opened.
    *no_mount("dev", "dev", "on /dev"),
    *no_mount("devpts", "devpts", "on /dev/pts", default=False),
    *no_mount("tmp", "tmp", "on /tmp"),
    # run from / to avoid a /home mount through the current directory
    *no_mount("home", "home", "on /home"),
    # both home and cwd excluded, from the home directory
    *no_mount("home,cwd", "home,cwd", "on /home", cwd="@home@"),
    *no_mount("cwd", "cwd", "on /srv", cwd="/srv"),
    *no_mount("/etc/hosts", "/etc/hosts", "on /etc/hosts"),
    *no_mount("/etc/localtime", "/etc/localtime", "on /etc/localtime"),
    *no_mount("binds-paths-hosts", "bind-paths", "on /etc/hosts"),
    *no_mount("bind-paths-localtime", "bind-paths", "on /etc/localtime"),
    # The same on a Debian image, whose /dev is empty: nothing may need /dev/null from the image.
    *no_mount("dev[debian image, no /dev/null]", "dev", "on /dev", image="@debian@"),
]  # fmt: skip


@pytest.mark.parametrize("case", params(NO_MOUNT))
def test_no_mount(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- actionFakerootHome ("fakeroot home"), relWorkdirScratch ------------------------------------

FAKEROOT_HOME = [
    C("actions.go:actionFakerootHome/fakeroot --with-suid", "exec", "@test@", "sh", "-c", "echo $HOME",
      profile="fakeroot", out=exact("/root")),
    C("actions.go:actionFakerootHome/fakeroot --without-suid", "exec", "--userns", "@test@", "sh", "-c",
      "echo $HOME", profile="fakeroot", out=exact("/root")),
    *(C(f"actions.go:relWorkdirScratch/{name}", "exec", "--contain", "--workdir", "./mysubdir", "--scratch",
        "/myscratch", "@test@", "true", profile=profile)
      for name, profile in (("User", "user"), ("Fakeroot", "fakeroot"), ("UserNamespace", "userns"))),
]  # fmt: skip


@pytest.mark.parametrize("case", params(FAKEROOT_HOME))
def test_fakeroot_home_and_workdir(request, sb, case: Case) -> None:
    sub = sb.work / "mysubdir"
    sub.mkdir()
    sub.chmod(0o777)
    run_case(request, sb, case)
