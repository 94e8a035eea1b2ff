"""sifbox.formats.appenv: the contract between launches and images. A launcher composed as
the runtime's PRELUDE should be (source env/*.sh, APP_ENV_FALLBACK_SH, then RUN_SH /
TEST_SH / START_SH) gives the same environment and answers whether the image has sifbox's
95-apps.sh, none (a hand-made or old image) or Apptainer's older one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sifbox.formats import appenv
from sifbox.formats import singularityd as sd
from sifbox.formats.deffile import parse_deffile
from tests.unit.test_singularityd import materialize

DEF = """Bootstrap: scratch

%apprun tool
    echo "run $SCIF_APPNAME $TOOL_VAR $*"
%appstart tool
    echo "start $SCIF_APPNAME"
%appenv tool
    export TOOL_VAR=tool-env
%apprun bare
    echo bare
%runscript
    echo "image runscript $*"
"""

#: Like Apptainer 1.0's 95-apps.sh: keyed on APPTAINER_APPNAME; SCIF_APPS and SCIF_APPROOT,
#: bin/ on PATH, the app's env/01-base.sh and env/90-environment.sh.
OLD_95 = """#!/bin/sh
if test -n "${APPTAINER_APPNAME:-}"; then
    SCIF_APPS="/scif/apps"
    SCIF_APPROOT="/scif/apps/${APPTAINER_APPNAME:-}"
    export SCIF_APPROOT SCIF_APPS
    PATH="/scif/apps/${APPTAINER_APPNAME:-}:$PATH"
    if test -d "/scif/apps/${APPTAINER_APPNAME:-}/bin"; then
        PATH="/scif/apps/${APPTAINER_APPNAME:-}/bin:$PATH"
    fi
    for f in 01-base.sh 90-environment.sh; do
        if [ -f "/scif/apps/${APPTAINER_APPNAME:-}/scif/env/$f" ]; then
            . "/scif/apps/${APPTAINER_APPNAME:-}/scif/env/$f"
        fi
    done
    export PATH
fi
"""


def launcher() -> str:
    source = 'for f in /.singularity.d/env/*.sh; do [ -r "$f" ] && . "$f"; done\n'
    cases = {"run": appenv.RUN_SH, "test": appenv.TEST_SH, "start": appenv.START_SH}
    body = "".join(f"{name})\n{text};;\n" for name, text in cases.items())
    return f"{source}{appenv.APP_ENV_FALLBACK_SH}action=$1\nshift\ncase $action in\n{body}esac\n"


@pytest.fixture(params=["sifbox", "none", "old"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    text = DEF
    base = sd.base_tree()
    rest, _ = sd.finish(sd.ImageMeta.from_stage(parse_deffile(text).final, text), sd.Existing(), sd.BuildInfo("amd64", 0, "1"))
    materialize(sd.merge(base, rest), tmp_path)
    apps = tmp_path / ".singularity.d/env/95-apps.sh"
    if request.param == "none":
        apps.unlink()
        (tmp_path / "scif/apps/tool/scif/env/01-base.sh").unlink()  # a hand-made app
    elif request.param == "old":
        apps.write_text(re.sub(r"(?<![\w}])/scif/", f"{tmp_path}/scif/", OLD_95))
    return tmp_path


def launch(root: Path, action: str, *args: str, app: str | None = None) -> subprocess.CompletedProcess[str]:
    script = launcher().replace("/.singularity.d", f"{root}/.singularity.d").replace('"/scif/', f'"{root}/scif/')
    env = {"PATH": "/usr/bin:/bin", **(appenv.launch_environment(app) if app else {})}
    return subprocess.run(["/bin/sh", "-c", script, "sh", action, *args], capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip


def test_run_an_app(image: Path) -> None:
    proc = launch(image, "run", "a", "b c", app="tool")
    assert (proc.returncode, proc.stdout) == (0, "run tool tool-env a b c\n"), proc.stderr


def test_the_app_environment_is_applied_once(image: Path) -> None:
    (image / "scif/apps/tool/scif/runscript").write_text('#!/bin/sh\necho "$PATH|$SCIF_APPROOT|$SCIF_APPDATA"\n')
    proc = launch(image, "run", app="tool")
    path, root, data = proc.stdout.strip().split("|")
    assert path.split(":").count(f"{image}/scif/apps/tool/bin") == 1, path
    assert root == f"{image}/scif/apps/tool" and data.endswith("/scif/data/tool"), proc.stdout


def test_missing_scripts(image: Path) -> None:
    proc = launch(image, "test", app="tool")
    assert (proc.returncode, proc.stderr) == (1, "No tests for contained app: tool\n")
    proc = launch(image, "start", app="bare")
    assert (proc.returncode, proc.stderr) == (1, "No startscript for contained app: bare\n")
    proc = launch(image, "test")
    assert (proc.returncode, proc.stderr) == (0, "No test script found in container, exiting\n")
    proc = launch(image, "start")
    assert (proc.returncode, proc.stdout) == (0, "")  # the base startscript does nothing


def test_start_and_run_without_an_app(image: Path) -> None:
    assert launch(image, "start", app="tool").stdout == "start tool\n"
    assert launch(image, "run", "x").stdout == "image runscript x\n"


def test_a_missing_app(image: Path) -> None:
    proc = launch(image, "run", app="nosuch")
    old = image / ".singularity.d/env/95-apps.sh"
    if old.exists() and "APPTAINER_APPNAME:-}" in old.read_text():  # it does not check
        assert (proc.returncode, proc.stderr) == (1, "No runscript for contained app: nosuch\n")
    else:
        assert (proc.returncode, proc.stderr) == (1, "Could not locate the container application: nosuch\n")


def test_launch_and_app_variables() -> None:
    assert appenv.launch_environment("x") == {"SIFBOX_APPNAME": "x", "APPTAINER_APPNAME": "x",
                                              "SINGULARITY_APPNAME": "x"}  # fmt: skip
    names = appenv.app_environment("x")
    assert names["SCIF_APPROOT"] == "/scif/apps/x" and names["SCIF_APPINPUT"] == "/scif/data/x/input"
    for var in names:  # every variable the image's 95-apps.sh exports
        assert var in appenv.APPS_ENV_SH
