"""Helpers of the user guide's cases: what a case needs on the host before it runs.

A case of tests/e2e/apptainer/cases.py runs one sifbox command; many of the guide's examples
first make files on the host (`echo ... > /data/cow_advice.txt`, `mkdir my_overlay`). Those
steps are `Setup` functions run as the test's user before the command, named next to the case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import Case, Result, Runner, run_case

Setup = Callable[[Runner], None]

DATA = Path(__file__).resolve().parent / "data"


def stage(dest: Path, *names: str) -> None:
    """Copy data files into `dest`, readable (and, where they are, executable) by everyone."""
    for name in names:
        shutil.copy(DATA / name, dest / name)
        (dest / name).chmod(0o755 if os.access(DATA / name, os.X_OK) else 0o644)


def staged(*names: str) -> Setup:
    """A setup copying data files (definition files and what they copy) into the work directory."""

    def setup(sb: Runner) -> None:
        stage(sb.work, *names)

    return setup


def run(
    request: pytest.FixtureRequest, sb: Runner, case: Case, setup: Setup | None = None
) -> Result:
    """`setup` (if any), then the case as tests/e2e/apptainer runs it."""
    if case.only and case.only != sb.kind:
        pytest.skip(f"only as {case.only}")
    if setup is not None:
        setup(sb)
    return run_case(request, sb, case)


def as_user(sb: Runner, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a host command (not sifbox) as the runner's user, in its work directory."""
    kw.setdefault("cwd", str(sb.work))
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    check = bool(kw.pop("check", True))
    if not sb.who.is_root:
        kw.update(user=sb.who.uid, group=sb.who.gid, extra_groups=[])
    return subprocess.run([sb.subst(a) for a in argv], check=check, env=sb.env(), **kw)  # type: ignore[call-overload, no-any-return]


def files(spec: Mapping[str, str], mode: int = 0o644) -> Setup:
    """A setup writing files (path -> content, placeholders filled) as the runner's user; their
    directories are made as needed."""

    def setup(sb: Runner) -> None:
        for path, text in spec.items():
            target = Path(sb.subst(path))
            as_user(sb, ["mkdir", "-p", str(target.parent)])
            as_user(sb, ["sh", "-c", 'cat > "$1" && chmod "$2" "$1"', "sh", str(target), f"{mode:o}"],
                    input=sb.subst(text))  # fmt: skip

    return setup


def dirs(*paths: str) -> Setup:
    """A setup making directories as the runner's user."""

    def setup(sb: Runner) -> None:
        as_user(sb, ["mkdir", "-p", *paths])

    return setup


def chain(*setups: Setup) -> Setup:
    def setup(sb: Runner) -> None:
        for s in setups:
            s(sb)

    return setup


def fetch(url: str, wait: float = 10.0) -> str:
    """The page at `url`, asked for again until a server answers or `wait` seconds pass ("")."""
    import time
    import urllib.request

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            time.sleep(0.1)
    return ""
