r"""Apptainer's e2e expectations as table rows: the command, the exit status, the output match.

A case is named after the Go test it ports, as `FILE:FUNCTION/SUBTEST` (e.g.
`env.go:apptainerEnvOption/DefaultPath`), so that anyone can find the source in
apptainer/apptainer's e2e/ directory. tests/e2e/userguide ports the examples of Apptainer's user
guide with the same table, named `PAGE.rst:Section` (its conftest.py says how). Its command line is Apptainer's with `apptainer` replaced
by the sifbox CLI; placeholders are filled per test:

    @test@ @busybox@ @debian@ @sandbox@   the images (see conftest.py)
    @work@                                 this test's scratch directory (0777, under /tmp)
    @home@ @user@ @uid@ @gid@ @gecos@ @shell@   the host account running the command

Profiles map Apptainer's to this machine: "user" runs as given; "fakeroot" adds --fakeroot and
"userns" adds --userns after the command words (as Apptainer's e2e profiles inject them); every
case runs as root and as the unprivileged test user (the `as_who` fixture), unless `only` says.

`xfail` names the theme of a known failure (a short, fixed vocabulary, so that failures can be
assigned by theme); it is strict, so a fix makes the case XPASS and the marker must go. It may
be a dict {"root": theme, "user": theme} when only one of the users fails. `diverges` says that
the case asserts what sifbox deliberately does differently from Apptainer, and why.

The themes:
    env-eval              --env, --env-file, SIFBOXENV_/APPTAINERENV_ values are not evaluated as
                          Apptainer evaluates them ($VAR, $(cmd); an escaped \$ stays a literal $)
    ld-library-path       the libs directory twice (image with Apptainer's 99-base.sh), dropped from
                          a user-set value; no PREPEND_/APPEND_LD_LIBRARY_PATH; no image library
                          directories before it when something is bound into it
    host-var-leak         host APPTAINER_*, SINGULARITY_*, SIFBOX_* variables reach the container
    home-override         APPTAINERENV_HOME / SIFBOXENV_HOME override HOME
    cleanenv-lang         --cleanenv keeps the host's LANG and LC_ALL instead of setting LANG=C
    cleanenv-proxy        --cleanenv drops the proxy variables Apptainer always passes
    contain-cwd           --contain keeps the caller's directory instead of starting in $HOME
    app-exit-status       --app: a missing app gives 126 (Apptainer 1); an app without the
                          runscript or test asked for gives 0 (Apptainer 1)
    legacy-environment    /environment of an image without /.singularity.d is not sourced
    no-mount-dev-null     with --no-mount dev the launch needs /dev/null from the image
    passwd-entry          the caller's /etc/passwd line lacks the host's GECOS field and shell
    inspect-all-json      `inspect --all` lacks Apptainer's JSON (apps' labels, scripts, help)
    image-labels          labels Apptainer's build writes (`...usage.apptainer.runscript.help`)
    image-env-script      the environment scripts as Apptainer writes them (image and apps)
    flag-env              the APPTAINER_/SIFBOX_ variable of a flag is not read
    readonly-cache        a read-only cache directory fails instead of disabling the cache
    keyring-init          `key list` does not create the keyrings
    action-uri            actions on a docker:// URI
    sif-executable        a built SIF is not executable (mode 0644; no `run-singularity` for its
                          `#!/usr/bin/env run-singularity` line)
    env-allexport         a variable %environment sets without `export` is not in the environment
    docker-env-host       a host variable overrides the image's Docker ENV of the same name
    compat-warning        no DEPRECATED USAGE / Skipping warning for SINGULARITYENV_ variables
    mount-csv             --mount and APPTAINER_MOUNT are not CSV (quoted fields, a mount a line)
    missing-flag:FLAG, missing-command:COMMAND   not available yet
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.images import env_for

if TYPE_CHECKING:
    from tests.conftest import User

#: The prefix of every directory this test session makes under /tmp: this session's alone, so
#: that its leak guard, and those of other test sessions on the machine, never take another
#: session's files, mounts or loop devices for their own.
TMP_PREFIX = f"sifbox-e2e{os.getpid()}-"


def new_dir(tag: str, mode: int = 0o755) -> Path:
    """A fresh directory /tmp/TMP_PREFIX-TAG-XXXX with `mode`."""
    path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{tag}-", dir="/tmp"))
    path.chmod(mode)
    return path


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


#: Commands that take the profile's option (Apptainer's `optionForCommands`).
PROFILE_COMMANDS = ("exec", "run", "shell", "test", "instance start", "instance run")
PROFILE_FLAGS = {"user": (), "root": (), "fakeroot": ("--fakeroot",), "userns": ("--userns",)}


@dataclass(frozen=True)
class Expect:
    """How the Go test matches a stream (e2e.ExactMatch, ContainMatch, UnwantedContainMatch,
    RegexMatch)."""

    kind: str
    text: str

    def check(self, stream: str, name: str, subst) -> str | None:  # type: ignore[no-untyped-def]
        text = subst(self.text)
        if self.kind == "exact":
            ok = stream.removesuffix("\n") == text
        elif self.kind == "contains":
            ok = text in stream
        elif self.kind == "lacks":
            ok = text not in stream
        elif self.kind == "regex":
            ok = re.search(text, stream) is not None
        else:
            raise ValueError(self.kind)
        if ok:
            return None
        if self.kind == "lacks":
            lines = [ln for ln in stream.splitlines() if text in ln]
            return f"{name}: expected no {text!r}, found it in {lines}"
        return f"{name}: expected {self.kind} {text!r} (the stream is below)"


def exact(text: str) -> Expect:
    return Expect("exact", text)


def contains(text: str) -> Expect:
    return Expect("contains", text)


def lacks(text: str) -> Expect:
    return Expect("lacks", text)


def regex(pattern: str) -> Expect:
    return Expect("regex", pattern)


Theme = str | Mapping[str, str] | None


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    exit: int | Mapping[str, int] = 0
    out: Expect | tuple[Expect, ...] | None = None
    err: Expect | tuple[Expect, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    profile: str = "user"
    cwd: str | None = None
    stdin: str | None = None
    umask: int | None = None
    xfail: Theme = None
    diverges: str | None = None
    only: str | None = None  # "root" or "user": the other one makes no sense (says why)
    #: ("file" | "dir", PATH): what must exist on the host after the run (a Go test's PostRun)
    host_paths: tuple[tuple[str, str], ...] = ()


def C(name: str, *argv: str, **kw: object) -> Case:
    return Case(name, tuple(argv), **kw)  # type: ignore[arg-type]


def params(cases: Sequence[Case]) -> list[object]:
    return [pytest.param(c, id=c.name) for c in cases]


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.status}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


@dataclass
class Runner:
    """Runs the CLI as one user; see conftest.sb."""

    who: User
    cli: str
    images: object
    work: Path
    timeout: int = 60
    #: more placeholders ("@name@" -> value) of a suite or test; the images' own come from
    #: `images.placeholders()` where it has one (else @test@ @busybox@ @debian@ @sandbox@)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "root" if self.who.is_root else "user"

    def subst(self, text: str) -> str:
        import pwd

        im = self.images
        pw = pwd.getpwnam(self.who.name)
        own = getattr(im, "placeholders", None)
        values = dict(own()) if callable(own) else {
            "@test@": str(im.test), "@busybox@": str(im.busybox), "@debian@": str(im.debian),  # type: ignore[attr-defined]
            "@sandbox@": str(im.sandbox),  # type: ignore[attr-defined]
        }  # fmt: skip
        values.update(self.extra)
        values.update({
            "@work@": str(self.work), "@home@": self.who.home,
            "@user@": self.who.name, "@uid@": str(self.who.uid), "@gid@": str(self.who.gid),
            "@gecos@": pw.pw_gecos, "@shell@": pw.pw_shell,
        })  # fmt: skip
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return env_for(self.who, **{k: self.subst(v) for k, v in (extra or {}).items()})

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin: str | None = None,
        umask: int | None = None,
        timeout: float | None = None,
    ) -> Result:
        """`sifbox ARGV` as this runner's user (no runuser: the status is sifbox's own)."""
        args = [self.cli, *(self.subst(a) for a in argv)]
        kw: dict[str, object] = {
            "env": self.env(env),
            "cwd": self.subst(str(cwd)) if cwd is not None else str(self.work),
            "stdin": subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "text": True,
        }
        if umask is not None:
            kw["umask"] = umask
        if not self.who.is_root:
            kw.update(user=self.who.uid, group=self.who.gid, extra_groups=[])
        proc = subprocess.Popen(args, **kw)  # type: ignore[call-overload]
        try:
            out, err = proc.communicate(
                self.subst(stdin) if stdin is not None else None, timeout=timeout or self.timeout
            )
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"`{' '.join(args)}` did not finish in {timeout or self.timeout} s\n{err}")
        return Result(proc.returncode, out, err)


def apply_profile(argv: Sequence[str], profile: str) -> list[str]:
    """Insert the profile's option after the command words, as Apptainer's e2e profiles do."""
    flags = PROFILE_FLAGS[profile]
    for command in sorted(PROFILE_COMMANDS, key=len, reverse=True):
        words = command.split()
        if list(argv[: len(words)]) == words:
            return [*words, *flags, *argv[len(words) :]]
    return list(argv)


def mark_xfail(request: pytest.FixtureRequest, theme: Theme, kind: str) -> None:
    """Mark the running test as a strict xfail of `theme` (for this user kind)."""
    if isinstance(theme, Mapping):
        theme = theme.get(kind)
    if theme:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=theme))


def run_case(request: pytest.FixtureRequest, sb: Runner, case: Case) -> Result:
    """Run one table row and check it as the Go test does."""
    if case.only and case.only != sb.kind:
        pytest.skip(f"only as {case.only}")
    mark_xfail(request, case.xfail, sb.kind)
    argv = apply_profile(case.argv, case.profile)
    res = sb.run(argv, env=case.env, cwd=case.cwd, stdin=case.stdin, umask=case.umask)
    check(sb, case, res)
    return res


def check(sb: Runner, case: Case, res: Result) -> None:
    want = case.exit if isinstance(case.exit, int) else case.exit[sb.kind]
    problems = []
    if res.status != want:
        problems.append(f"exit status {res.status}, expected {want}")
    for stream, expects, name in (
        (res.stdout, case.out, "stdout"),
        (res.stderr, case.err, "stderr"),
    ):
        for e in (expects,) if isinstance(expects, Expect) else expects or ():
            problem = e.check(stream, name, sb.subst)
            if problem:
                problems.append(problem)
    for kind, path in case.host_paths:
        found = Path(sb.subst(path))
        if not (found.is_file() if kind == "file" else found.is_dir()):
            problems.append(f"{kind} {found} not found on the host")
    assert not problems, "\n".join(problems) + f"\n{res}"


def console(
    sb: Runner,
    argv: Sequence[str],
    ops: Sequence[tuple[str, str]],
    timeout: float = 20,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run `sifbox ARGV` on a new terminal and play `ops` on it, as e2e.ConsoleRun does:
    ("send", LINE) types LINE and Enter; ("expect", TEXT) reads until TEXT shows. Returns the
    exit status and everything the terminal showed (as stdout). `env` is added to the user's
    environment, as a case's."""
    import select
    import time

    master, slave = os.openpty()
    kw: dict[str, object] = {}
    if not sb.who.is_root:
        kw.update(user=sb.who.uid, group=sb.who.gid, extra_groups=[])
    environ = sb.env({"TERM": "xterm", **(env or {})})
    # setsid --ctty: a new session whose controlling terminal is this one (stdin); --wait: its
    # status is the command's.
    proc = subprocess.Popen(
        ["setsid", "--ctty", "--wait", sb.cli, *(sb.subst(a) for a in argv)], stdin=slave, stdout=slave,
        stderr=slave, env=environ, cwd=str(sb.work), **kw,  # type: ignore[call-overload]
    )  # fmt: skip
    os.close(slave)
    seen = b""
    problems = []

    def read(until: bytes | None, deadline: float) -> bool:
        nonlocal seen
        while time.monotonic() < deadline:
            if until is not None and until in seen:
                return True
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the terminal's other side is closed
                    return until is None or until in seen
                if not data:
                    return until is None or until in seen
                seen += data
        return until is None or until in seen

    try:
        for op, text in ops:
            if op == "send":
                os.write(master, sb.subst(text).encode() + b"\n")
            elif not read(sb.subst(text).encode(), time.monotonic() + timeout):
                problems.append(f"the terminal never showed {text!r}")
        read(None, time.monotonic() + 2)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
            problems.append("the command did not end")
        read(None, time.monotonic() + 0.5)
    finally:
        os.close(master)
    res = Result(status, seen.decode(errors="replace"), "")
    assert not problems, "\n".join(problems) + f"\n{res}"
    return res
