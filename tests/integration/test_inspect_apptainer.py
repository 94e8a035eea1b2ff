"""`sifbox inspect` against Apptainer's e2e expectations (tests/inspect_e2e.py), on an image
`sifbox build` makes from Apptainer's inspector definition (busybox from this host), in its
three forms as Apptainer's test has them: the SIF, its SquashFS partition and a sandbox
unpacked from it. Built and inspected as root, and as the test user (a fakeroot build).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.inspect_e2e import HELP, INSPECTOR_DEF, cases, value_at
from tests.integration.images import env_for

pytestmark = pytest.mark.integration
TIMEOUT = 180
KINDS = ("sif", "sqfs", "sandbox")


def _busybox() -> str:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            return p
    pytest.skip("busybox is not installed (Debian package busybox-static)")


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sifbox-inspect-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


_BUILT: dict[str, dict[str, Path]] = {}


def _partition(sif: Path, out: Path) -> Path:
    from sifbox.formats.sif.image import SifImage

    with open(sif, "rb") as f:
        img = SifImage.load(f)
        part = img.primary_partition()
        assert part is not None
        out.write_bytes(img.read(part))
    out.chmod(0o644)
    return out


@pytest.fixture
def inspector(as_who: User, run_as, sifbox_cli: str, base_dir: Path) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """The inspector image built by `as_who`: {"sif", "sqfs", "sandbox"} -> path."""
    if as_who.name in _BUILT:
        return _BUILT[as_who.name]
    work = base_dir / as_who.name
    work.mkdir(mode=0o777, exist_ok=True)
    work.chmod(0o777)
    deffile = work / "inspector.def"
    deffile.write_text(INSPECTOR_DEF.format(busybox=_busybox()))
    deffile.chmod(0o644)
    scratch = work / "scratch"
    scratch.mkdir(mode=0o777, exist_ok=True)
    scratch.chmod(0o777)
    sif = work / "image.sif"
    proc = run_as(as_who, [sifbox_cli, "-q", "build", str(sif), str(deffile)], cwd=str(work),
                  env=env_for(as_who, SIFBOX_TMPDIR=str(scratch)), timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    sqfs = _partition(sif, work / "image.sqs")
    sandbox = work / "sandbox"
    subprocess.run(["unsquashfs", "-no-xattrs", "-d", str(sandbox), str(sqfs)], check=True, capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", str(sandbox)], check=True)
    _BUILT[as_who.name] = {"sif": sif, "sqfs": sqfs, "sandbox": sandbox}
    return _BUILT[as_who.name]


def _inspect(run_as, who: User, cli: str, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    proc = run_as(who, [cli, "inspect", *args], env=env_for(who), cwd="/", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc


@pytest.mark.parametrize("kind", KINDS)
def test_apptainer_e2e_inspect(kind: str, inspector, run_as, as_who, sifbox_cli) -> None:  # type: ignore[no-untyped-def]
    image = str(inspector[kind])
    all_cases = cases(_busybox())
    shown: dict[tuple[str, str | None], dict] = {}
    for option, app in sorted({(c[1], c[2]) for c in all_cases}, key=str):
        args = ["--json", option, *(["--app", app] if app else []), image]
        shown[(option, app)] = json.loads(_inspect(run_as, as_who, sifbox_cli, *args).stdout)
    everything = json.loads(_inspect(run_as, as_who, sifbox_cli, "--all", image).stdout)
    for name, option, app, where, want in all_cases:
        assert value_at(shown[(option, app)], app, where) == want, (name, shown[(option, app)])
        assert value_at(everything, app, where) == want, (name, "--all")
        assert shown[(option, app)]["type"] == "container"


def test_every_form_shows_the_same(inspector, run_as, as_who, sifbox_cli) -> None:  # type: ignore[no-untyped-def]
    """The SIF's stored metadata (inspect-metadata.json) says what its files say."""
    outputs = {kind: _inspect(run_as, as_who, sifbox_cli, "--all", str(inspector[kind])).stdout for kind in KINDS}
    assert outputs["sif"] == outputs["sqfs"] == outputs["sandbox"]
    doc = json.loads(outputs["sif"])
    assert list(doc) == ["data", "type"]
    assert list(doc["data"]["attributes"]) == ["apps", "environment", "labels", "runscript", "test", "helpfile",
                                               "deffile", "startscript"]  # fmt: skip
    assert doc["data"]["attributes"]["deffile"] == INSPECTOR_DEF.format(busybox=_busybox()).rstrip("\n")


@pytest.mark.parametrize("kind", KINDS)
def test_plain_output(kind: str, inspector, run_as, as_who, sifbox_cli) -> None:  # type: ignore[no-untyped-def]
    image = str(inspector[kind])

    def out(*args: str) -> str:
        return _inspect(run_as, as_who, sifbox_cli, *args, image).stdout

    labels = out().splitlines()
    assert 'MAINTAINER: "WestleyK <westley@sylabs.io>"' in labels and "first.build.labels: first" in labels
    keys = [line.split(": ", 1)[0] for line in labels]
    assert keys == sorted(keys)
    assert out("--list-apps") == "hello\nworld\n"
    assert out("--helpfile") == HELP + "\n"
    assert out("-H", "--app", "hello") == "This is the help for hello!\n"
    assert out("--runscript", "--app", "world") == '#!/bin/sh\n\necho "world"\n'
    assert out("--startscript", "--app", "hello") == '#!/bin/sh\n\nexec "$@"\n'
    assert out("--startscript") == '#!/bin/sh\n\nexec "$@"\n'
    assert out("--test", "--app", "hello") == '#!/bin/sh\n\necho "THIS IS A HELLO TEST"\n'
    assert out("--labels", "--app", "hello") == "HELLOTHISIS: hello\nSCIF_APP_NAME: hello\n"
    assert out("-e", "--app", "hello") == (
        "=== /scif/apps/hello/scif/env/90-environment.sh ===\nHELLOTHISIS=hello\nexport HELLOTHISIS\n\n"
    )
    assert out("--deffile") == INSPECTOR_DEF.format(busybox=_busybox()).rstrip("\n") + "\n"
    assert out("--labels", "--app", "nosuch") == ""


def test_the_inspected_scripts_run(inspector, run_as, as_who, sifbox_cli) -> None:  # type: ignore[no-untyped-def]
    """What inspect shows is what runs: the app's environment, its test, the image's test."""
    image = str(inspector["sif"])

    def sifbox(*args: str) -> subprocess.CompletedProcess[str]:
        return run_as(as_who, [sifbox_cli, *args], env=env_for(as_who), cwd="/", timeout=60)

    run = sifbox("exec", "--app", "hello", image, "sh", "-c", 'echo "$HELLOTHISIS $SCIF_APPNAME $hello $test"')
    assert (run.returncode, run.stdout) == (0, "hello hello world testing\n"), run.stderr
    test = sifbox("test", "--app", "hello", image)
    assert (test.returncode, test.stdout) == (0, "THIS IS A HELLO TEST\n"), test.stderr
    test = sifbox("test", image)
    assert test.returncode == 0 and "etc" in test.stdout.split(), test.stderr


def test_hostile_sandbox(run_as, as_who, sifbox_cli, base_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Links in an image never make inspect read the host, and odd files don't break it."""
    box = base_dir / f"hostile-{as_who.name}"
    sd = box / ".singularity.d"
    (sd / "env").mkdir(parents=True)
    (box / "scif/apps/evil/scif/env").mkdir(parents=True)
    (sd / "labels.json").symlink_to("/etc/shadow")
    (sd / "runscript").symlink_to("../../../../../../etc/passwd")
    (sd / "env/90-environment.sh").symlink_to("/etc/hostname")
    (sd / "test").write_bytes(b"\xff\xfe not utf-8 \x1b[31m\n")
    (box / "scif/apps/evil/scif/labels.json").write_text('{"a": {"nested": [1]}, "b": null}')
    (box / "scif/apps/link").symlink_to("/etc")  # the host's /etc/scif? no: the image's
    (box / "scif/apps/evil/scif/env/90-environment.sh").symlink_to("/root/.bashrc")
    subprocess.run(["chmod", "-R", "a+rX", str(box)], check=True)
    doc = json.loads(_inspect(run_as, as_who, sifbox_cli, "--all", str(box)).stdout)
    attrs = doc["data"]["attributes"]
    assert "labels" not in attrs and "runscript" not in attrs and "environment" not in attrs
    assert attrs["test"] == "\ufffd\ufffd not utf-8 \x1b[31m"
    assert attrs["apps"] == {"evil": {"labels": {"a": '{"nested": [1]}', "b": "null"}}}
    shutil.rmtree(box)
