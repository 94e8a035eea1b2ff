"""SCIF apps (--app NAME) in a sandbox and a SIF image, as root and as the test user."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scif_images(action_images: ActionImages, sifbox_cli: str):  # type: ignore[no-untyped-def]
    base = action_images.root / "scif"
    if base.exists():
        shutil.rmtree(base)
    sandbox = base / "sandbox"
    shutil.copytree(action_images.sandbox, sandbox, symlinks=True)
    app = sandbox / "scif/apps/foo"
    (app / "scif/env").mkdir(parents=True)
    (app / "bin").mkdir()
    (app / "scif/runscript").write_text('#!/bin/sh\necho "foo runs: $SCIF_APPNAME $FOO_VAR $*"\n')
    (app / "scif/env/90-environment.sh").write_text("export FOO_VAR=from-app-env\n")
    (app / "bin/footool").write_text("#!/bin/sh\necho foo-tool\n")
    (app / "scif/labels.json").write_text('{"APP": "foo"}\n')
    for f in ("scif/runscript", "bin/footool"):
        (app / f).chmod(0o755)
    sqfs = images.mksquashfs(sandbox, base / "scif.sqfs")
    sif = images.make_sif(sifbox_cli, sqfs, base / "scif.sif")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return {"sandbox": sandbox, "sif": sif}


@pytest.mark.parametrize("kind", ["sandbox", "sif"])
def test_run_and_exec_an_app(run_as, as_who, sifbox_cli, scif_images, kind: str) -> None:
    image = str(scif_images[kind])
    run = run_as(as_who, [sifbox_cli, "run", "--app", "foo", image, "x", "y"], env=env_for(as_who),
                 timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert (run.returncode, run.stdout) == (0, "foo runs: foo from-app-env x y\n"), run.stderr
    ex = run_as(as_who, [sifbox_cli, "exec", "--app", "foo", image, "footool"], env=env_for(as_who),
                timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert (ex.returncode, ex.stdout) == (0, "foo-tool\n"), ex.stderr


def test_missing_app(run_as, as_who, sifbox_cli, scif_images) -> None:
    proc = run_as(as_who, [sifbox_cli, "run", "--app", "bar", str(scif_images["sif"])], env=env_for(as_who),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 1  # as Apptainer
    assert proc.stderr.startswith("sifbox: error: can't run app `bar`")


def test_inspect_apps(run_as, sifbox_cli, scif_images) -> None:
    image = str(scif_images["sif"])
    listed = run_as(None, [sifbox_cli, "inspect", "--list-apps", image])
    assert listed.stdout == "foo\n", listed.stderr
    shown = run_as(None, [sifbox_cli, "inspect", "--app", "foo", image])
    assert shown.stdout == "APP: foo\n", shown.stderr
