"""quick_start.rst: the command line interface, downloading images, interacting with images
(shell, exec, run, arguments to run), working with files, building images from scratch.

The guide's lolcow_latest.sif (docker://ghcr.io/apptainer/lolcow) is @lolcow@, built from
data/lolcow.def with stand-ins for Debian's cowsay and lolcat; where an example pulls or runs a
docker:// URI, the image is the local registry's (conftest.py): docker://alpine is
docker://@registry@/library/alpine, ghcr.io/apptainer/lolcow is @registry@/apptainer/lolcow.
Pulls and builds from the registry run with HOME in the test's directory, so that they fill a
cache of their own. Host paths of the examples (/data, $HOME/hostfile.txt) are files of the
test; a file in the real home is named after the test and removed after it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import C, Case, check, contains, exact, params, regex
from tests.e2e.userguide import guide
from tests.e2e.userguide.guide import files, staged

pytestmark = pytest.mark.integration

QS = "quick_start.rst"
COW = (
    "        \\   ^__^\n"
    "         \\  (oo)\\_______\n"
    "            (__)\\       )\\/\\\n"
    "                ||----w |\n"
    "                ||     ||"
)


def cow(text: str) -> str:
    """What the guide shows cowsay printing for `text` (one line)."""
    return f" {'_' * (len(text) + 2)}\n< {text} >\n {'-' * (len(text) + 2)}\n{COW}"


#: `date | cowsay | lolcat`: the cow saying the date (`Mon Aug 16 13:01:55 CDT 2021`)
DATE_COW = regex(
    r"\A _{30}\n< \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \w+ \d{4} >\n -{30}\n"
    + re.escape(COW)
    + r"\n\Z"
)
HOME = {"HOME": "@work@"}


# --- Overview of the Apptainer Interface -------------------------------------------------------

COMMANDS = ("build", "cache", "capability", "exec", "help", "inspect", "instance", "key", "oci",
            "plugin", "pull", "push", "remote", "run", "run-help", "search", "shell", "sif",
            "sign", "test", "verify", "version")  # fmt: skip

INTERFACE = [
    C(f"{QS}:Overview of the Apptainer Interface[help]", "help",
      out=tuple(regex(rf"(?m)^\s+{re.escape(c)}\b") for c in COMMANDS)),
    C(f"{QS}:Overview of the Apptainer Interface[help verify]", "help", "verify",
      out=tuple(regex(rf"-{short}( \w+)?, --{long}\b") for short, long in (
          ("a", "all"), ("g", "group-id"), ("j", "json"), ("l", "local"), ("i", "sif-id"))) + (
          contains("--legacy-insecure"),)),
    C(f"{QS}:Overview of the Apptainer Interface[help verify --url]", "help", "verify",
      out=contains("--url")),
    C(f"{QS}:Overview of the Apptainer Interface[capability list]", "capability", "list", "@user@",
      exit={"root": 0, "user": 255},
      diverges="the guide lists as a user; Apptainer's CapabilityList refuses anyone but root "
               "(only root user can list capabilities), and so does sifbox"),
    C(f"{QS}:Overview of the Apptainer Interface[inspect --helpfile]", "inspect", "--helpfile",
      "@my_container@", out=contains("This is a demo container used to illustrate a def file")),
    C(f"{QS}:Overview of the Apptainer Interface[inspect --helpfile --app=foo]", "inspect", "--helpfile",
      "--app=foo", "@scif@", out=contains("This is the help for foo.")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(INTERFACE))
def test_interface(request, sb, case: Case) -> None:
    guide.run(request, sb, case)


#: debugging messages: lines with the [U=UID,P=PID] of Apptainer's debug format
DEBUG = regex(r"\[U=\d+,P=\d+\]")
# The global option and --containall with docker://alpine, and the same with the image pulled
# first (`pull docker://alpine`).
URI_OPTIONS = [
    C(f"{QS}:Overview of the Apptainer Interface[--debug run docker://alpine]", "--debug", "run",
      "docker://@registry@/library/alpine", env=HOME, err=DEBUG),
    C(f"{QS}:Overview of the Apptainer Interface[--debug run alpine_latest.sif]", "--debug", "run",
      "@pulled_alpine@", err=DEBUG),
    C(f"{QS}:Overview of the Apptainer Interface[run --containall docker://alpine]", "run", "--containall",
      "docker://@registry@/library/alpine", env=HOME),
    C(f"{QS}:Overview of the Apptainer Interface[run --containall alpine_latest.sif]", "run",
      "--containall", "@pulled_alpine@"),
]  # fmt: skip


@pytest.mark.parametrize("case", params(URI_OPTIONS))
def test_uri_options(request, sb, oci, case: Case) -> None:
    guide.run(request, sb, case)


# --- Downloading images ------------------------------------------------------------------------

DOWNLOAD = [
    C(f"{QS}:Downloading images[pull docker://alpine]", "pull", "docker://@registry@/library/alpine",
      env=HOME, host_paths=(("file", "@work@/alpine_latest.sif"),)),
    C(f"{QS}:Downloading images[build alpine.sif docker://alpine]", "build", "alpine.sif",
      "docker://@registry@/library/alpine", env=HOME, host_paths=(("file", "@work@/alpine.sif"),)),
]  # fmt: skip


@pytest.mark.parametrize("case", params(DOWNLOAD))
def test_download(request, sb, reg, case: Case) -> None:
    guide.run(request, sb, case)


def test_pull_lolcow(request, sb, reg) -> None:
    """Interacting with images: `pull docker://ghcr.io/apptainer/lolcow` saves lolcow_latest.sif
    in the current directory, which then runs (`exec lolcow_latest.sif cowsay moo`)."""
    pull = C(f"{QS}:Interacting with images[pull]", "pull", "docker://@registry@/apptainer/lolcow",
             env=HOME, host_paths=(("file", "@work@/lolcow_latest.sif"),))  # fmt: skip
    guide.run(request, sb, pull)
    check(sb, C(f"{QS}:Executing Commands[pulled]", out=exact(cow("moo"))),
          sb.run(["exec", "lolcow_latest.sif", "cowsay", "moo"]))  # fmt: skip


# --- Interacting with images -------------------------------------------------------------------

INTERACT = [
    C(f"{QS}:Shell", "shell", "@lolcow@", stdin="whoami\nid\n",
      out=(regex(r"(?m)^@user@$"), regex(r"(?m)^uid=@uid@\(@user@\) gid=@gid@\("))),
    C(f"{QS}:Executing Commands", "exec", "@lolcow@", "cowsay", "moo", out=exact(cow("moo"))),
    C(f"{QS}:Running a container", "run", "@lolcow@", out=DATE_COW),
]  # fmt: skip

# The same with the image's URI: an ephemeral container.
INTERACT_URI = [
    C(f"{QS}:Shell[docker://]", "shell", "docker://@registry@/apptainer/lolcow", env=HOME,
      stdin="whoami\n", out=regex(r"(?m)^@user@$")),
    C(f"{QS}:Executing Commands[docker://]", "exec", "docker://@registry@/apptainer/lolcow", "cowsay",
      "Fresh from the internet", env=HOME, out=exact(cow("Fresh from the internet"))),
    C(f"{QS}:Running a container[docker://]", "run", "docker://@registry@/apptainer/lolcow", env=HOME,
      out=DATE_COW),
]  # fmt: skip


@pytest.mark.parametrize("case", params(INTERACT))
def test_interact(request, sb, case: Case) -> None:
    guide.run(request, sb, case)


@pytest.mark.parametrize("case", params(INTERACT_URI))
def test_interact_uri(request, sb, reg, case: Case) -> None:
    guide.run(request, sb, case)


def test_run_sif_as_executable(sb) -> None:
    """Running a container: `./lolcow_latest.sif` runs the runscript, as `run` does (the SIF
    starts with `#!/usr/bin/env run-singularity`). The image is built here, so that its mode is
    the one sifbox gives."""
    staged("lolcow.def", "cowsay", "lolcat")(sb)
    res = sb.run(["build", "lolcow_latest.sif", "lolcow.def"])
    assert res.status == 0, res
    proc = guide.as_user(sb, ["sh", "-c", "./lolcow_latest.sif"], check=False)
    from tests.e2e.apptainer.cases import Result

    check(sb, C(f"{QS}:Running a container[./lolcow_latest.sif]", out=DATE_COW),
          Result(proc.returncode, proc.stdout, proc.stderr))  # fmt: skip


# --- Arguments to run --------------------------------------------------------------------------
# The host's HOSTNAME is p700, as on the guide's machine. `run` evaluates its arguments once (the
# runscript of an OCI image is a shell script), `exec` does not. The URI forms are the guide's;
# `[alpine_latest.sif]` are the same with the pulled image.

P700 = {"HOSTNAME": "p700", **HOME}
ARGUMENTS = []
for target, tag in (("docker://@registry@/library/alpine", ""), ("@pulled_alpine@", "[alpine_latest.sif]")):
    ARGUMENTS += [
        C(f"{QS}:Arguments to run[echo hello]{tag}", "run", target, "echo", "hello", env=P700,
          out=exact("hello")),
        C(f"{QS}:Arguments to run[run \\$HOSTNAME]{tag}", "run", target, "echo", "$HOSTNAME", env=P700,
          out=exact("p700")),
        C(f"{QS}:Arguments to run[run \\\\\\$HOSTNAME]{tag}", "run", target, "echo", "\\$HOSTNAME",
          env=P700, out=exact("$HOSTNAME")),
        C(f"{QS}:Arguments to run[exec \\$HOSTNAME]{tag}", "exec", target, "echo", "$HOSTNAME", env=P700,
          out=exact("$HOSTNAME")),
        C(f"{QS}:Arguments to run[exec \\\\\\$HOSTNAME]{tag}", "exec", target, "echo", "\\$HOSTNAME",
          env=P700, out=exact("\\$HOSTNAME")),
    ]  # fmt: skip


@pytest.mark.parametrize("case", params(ARGUMENTS))
def test_arguments(request, sb, oci, case: Case) -> None:
    guide.run(request, sb, case)


# --- Working with Files ------------------------------------------------------------------------

HOSTFILE = "@home@/hostfile-@id@.txt"
ADVICE = {"@work@/data/cow_advice.txt": "Drink milk (and never eat hamburgers).\n"}
ROOT_TMP = (
    "root's container has a private /tmp (sifbox's containment, README: Security): the host's "
    "/tmp is not there"
)
FILES = [
    # /home/$USER, /tmp and $PWD are bound by default.
    C(f"{QS}:Working with Files[/tmp]", "exec", "@lolcow@", "cat", "@work@/tmpfile", cwd="/",
      out=exact("in the host's /tmp"), only="user"),
    C(f"{QS}:Working with Files[/tmp][root]", "exec", "@lolcow@", "cat", "@work@/tmpfile", cwd="/",
      exit=1, err=contains("No such file or directory"), only="root", diverges=ROOT_TMP),
    C(f"{QS}:Working with Files[$PWD]", "exec", "@lolcow@", "cat", "tmpfile", out=exact("in the host's /tmp")),
    C(f"{QS}:Working with Files[--bind]", "exec", "--bind", "@work@/data:/mnt", "@lolcow@", "cat",
      "/mnt/cow_advice.txt", out=exact("Drink milk (and never eat hamburgers).")),
    C(f"{QS}:Working with Files[pipe]", "exec", "@lolcow@", "cowsay",
      stdin="Drink milk (and never eat hamburgers).\n", out=exact(cow("Drink milk (and never eat hamburgers)."))),
]  # fmt: skip
SETUP = {
    f"{QS}:Working with Files[/tmp]": files({"@work@/tmpfile": "in the host's /tmp\n"}),
    f"{QS}:Working with Files[/tmp][root]": files({"@work@/tmpfile": "in the host's /tmp\n"}),
    f"{QS}:Working with Files[$PWD]": files({"@work@/tmpfile": "in the host's /tmp\n"}),
    f"{QS}:Working with Files[--bind]": files(ADVICE),
}


@pytest.mark.parametrize("case", params(FILES))
def test_files(request, sb, case: Case) -> None:
    guide.run(request, sb, case, SETUP.get(case.name))


def test_home_file(request, sb) -> None:
    """Working with Files: `echo "Hello from inside the container" > $HOME/hostfile.txt`, then
    `exec lolcow_latest.sif cat $HOME/hostfile.txt` (the file is named after the test)."""
    path = Path(sb.subst(HOSTFILE))
    try:
        guide.as_user(
            sb, ["sh", "-c", 'echo "Hello from inside the container" > "$1"', "sh", str(path)]
        )
        guide.run(request, sb, C(f"{QS}:Working with Files[$HOME]", "exec", "@lolcow@", "cat", HOSTFILE,
                                 out=exact("Hello from inside the container")))  # fmt: skip
    finally:
        path.unlink(missing_ok=True)


# --- Building images from scratch --------------------------------------------------------------
# Sandbox Directories: build a sandbox from docker://ubuntu, write into it with --writable, find
# the file without; then convert it to SIF. The steps run in order in the user's @ws@.

SANDBOX = [
    C(f"{QS}:Sandbox Directories[build --sandbox]", "build", "--sandbox", "ubuntu/",
      "docker://@registry@/library/ubuntu", cwd="@ws@", env={"HOME": "@ws@/home"},
      host_paths=(("dir", "@ws@/ubuntu/.singularity.d"),)),
    C(f"{QS}:Sandbox Directories[exec --writable]", "exec", "--writable", "ubuntu", "touch", "/foo", cwd="@ws@"),
    C(f"{QS}:Sandbox Directories[exec]", "exec", "ubuntu/", "ls", "/foo", cwd="@ws@", out=exact("/foo")),
    C(f"{QS}:Converting images from one format to another", "build", "new.sif", "ubuntu", cwd="@ws@",
      host_paths=(("file", "@ws@/new.sif"),)),
]  # fmt: skip


@pytest.mark.parametrize("case", params(SANDBOX))
def test_sandbox(request, sb, reg, ws, case: Case) -> None:
    guide.run(request, sb, case)


def test_definition_file(request, sb) -> None:
    """Apptainer Definition Files: `build lolcow.sif lolcow.def`, then the image runs its
    runscript (`date | cowsay | lolcat`) with the %environment's PATH."""
    case = C(f"{QS}:Apptainer Definition Files", "build", "lolcow.sif", "lolcow.def",
             host_paths=(("file", "@work@/lolcow.sif"),))  # fmt: skip
    guide.run(request, sb, case, staged("lolcow.def", "cowsay", "lolcat"))
    check(
        sb, C(f"{QS}:Apptainer Definition Files[run]", out=DATE_COW), sb.run(["run", "lolcow.sif"])
    )
