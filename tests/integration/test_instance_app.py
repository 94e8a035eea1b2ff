"""`sifbox instance start --app NAME` runs the app's %appstart (/scif/apps/NAME/scif/startscript)
instead of the image's %startscript, with the app's environment, as Apptainer; `inspect
--startscript --app NAME` shows that script. As root and as the test user."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration

DEFFILE = """\
Bootstrap: busybox
MirrorURL: /bin/busybox

%startscript
    echo "image startscript $*" > /tmp/started
    exec sleep 100000

%appstart web
    echo "web startscript $* $SCIF_APPNAME $WEB_PORT_NAME" > /tmp/started
    exec sleep 100000

%appenv web
    export WEB_PORT_NAME=http

%apprun cli
    echo "cli runs"
"""


@pytest.fixture(scope="module")
def app_image(sifbox_cli: str, action_images: ActionImages) -> Iterator[Path]:
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (Debian package busybox-static)")
    base = Path(tempfile.mkdtemp(prefix=images.IMAGES_PREFIX + "instapp-", dir="/tmp"))
    base.chmod(0o755)
    (base / "app.def").write_text(DEFFILE)
    proc = subprocess.run([sifbox_cli, "-q", "build", str(base / "app.sif"), str(base / "app.def")], cwd=base,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (base / "app.sif").chmod(0o644)
    yield base / "app.sif"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sb(run_as, as_who, sifbox_cli):  # type: ignore[no-untyped-def]
    def launch(*args: str, **kw: object):  # type: ignore[no-untyped-def]
        kw.setdefault("timeout", LAUNCH_TIMEOUT)
        return run_as(as_who, [sifbox_cli, *args], env=env_for(as_who), cwd="/", **kw)

    yield launch
    launch("instance", "stop", "--all", "--force")


def _started(sb, name: str) -> str:  # type: ignore[no-untyped-def]
    for _ in range(100):
        proc = sb("exec", f"instance://{name}", "cat", "/tmp/started")
        if proc.returncode == 0 and proc.stdout:
            return str(proc.stdout)
        time.sleep(0.1)
    raise AssertionError(f"the startscript of {name} did not run: {proc.stderr}")


def test_start_app_runs_its_appstart(sb, app_image: Path) -> None:  # type: ignore[no-untyped-def]
    name = f"a{uuid.uuid4().hex[:8]}"
    proc = sb("instance", "start", "--contain", "--app", "web", str(app_image), name, "8080")
    assert proc.returncode == 0, proc.stderr
    assert _started(sb, name) == "web startscript 8080 web http\n"
    other = f"b{uuid.uuid4().hex[:8]}"
    proc = sb("instance", "start", "--contain", str(app_image), other, "x")
    assert proc.returncode == 0, proc.stderr
    assert _started(sb, other) == "image startscript x\n"
    for n in (name, other):
        assert sb("instance", "stop", n).returncode == 0


def test_inspect_shows_the_script_that_runs(sb, app_image: Path) -> None:  # type: ignore[no-untyped-def]
    app = sb("inspect", "--startscript", "--app", "web", str(app_image))
    assert app.returncode == 0, app.stderr
    assert 'echo "web startscript $* $SCIF_APPNAME $WEB_PORT_NAME" > /tmp/started' in app.stdout
    image = sb("inspect", "--startscript", str(app_image))
    assert 'echo "image startscript $*" > /tmp/started' in image.stdout and "web" not in image.stdout


def test_app_without_appstart_and_missing_app(sb, app_image: Path) -> None:  # type: ignore[no-untyped-def]
    """An app with no %appstart: the instance holds its namespaces, its log says so (Apptainer's
    words). An app the image does not have: refused, nothing left running."""
    name = f"c{uuid.uuid4().hex[:8]}"
    proc = sb("instance", "start", "--app", "cli", str(app_image), name)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(sb("instance", "list", "--json", name).stdout)["instances"]
    assert len(listed) == 1
    err_log = Path(listed[0]["logErrPath"])
    for _ in range(50):
        if err_log.exists() and "No startscript for contained app: cli" in err_log.read_text():
            break
        time.sleep(0.1)
    assert "No startscript for contained app: cli" in err_log.read_text()
    assert sb("instance", "stop", name).returncode == 0
    missing = f"d{uuid.uuid4().hex[:8]}"
    proc = sb("instance", "start", "--app", "nope", str(app_image), missing)
    assert proc.returncode != 0 and "no such app" in proc.stderr, proc.stderr
    assert missing not in sb("instance", "list").stdout
