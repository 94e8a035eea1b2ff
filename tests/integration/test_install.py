"""What scripts/install.sh promises: a CLI every user can run, on Debian's Python, FUSE open."""

from __future__ import annotations

import os
import platform
import shutil
import stat
from pathlib import Path

import pytest

import sifbox

pytestmark = pytest.mark.integration

VENV = Path("/opt/sifbox/venv")
DEMO = Path("/opt/sifbox/demo/demo.sif")
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386"}  # others: same name


def test_run_as_switches_user_and_shared_tmp_is_shared(run_as, as_who, shared_tmp):
    script = 'id -u; echo "$HOME"; touch "$1/mine"'
    proc = run_as(as_who, ["sh", "-c", script, "sh", str(shared_tmp)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(as_who.uid), as_who.home]
    assert (shared_tmp / "mine").stat().st_uid == as_who.uid


def test_version_runs_for_everyone(run_as, as_who, sifbox_cli):
    proc = run_as(as_who, [sifbox_cli, "version"])
    assert proc.returncode == 0, proc.stderr
    assert sifbox.__version__ in proc.stdout


def test_entry_point_uses_debian_python_and_a_lean_venv(sifbox_cli):
    script = Path(sifbox_cli).resolve()
    assert script == VENV / "bin" / "sifbox"
    shebang = script.read_text(encoding="utf-8").splitlines()[0]
    assert shebang.startswith("#!")
    interpreter = Path(shebang[2:].split()[0])
    assert interpreter.resolve().is_relative_to("/usr/bin"), interpreter.resolve()
    assert not interpreter.resolve().is_relative_to("/root")

    cfg = (VENV / "pyvenv.cfg").read_text(encoding="utf-8")
    assert "include-system-site-packages = false" in cfg
    (site,) = VENV.glob("lib/python3*/site-packages")
    pth = sorted(p.name for p in site.glob("*.pth"))
    assert len(pth) <= 2, pth
    # Installed as a copy, not as an editable link back to a source tree.
    assert (site / "sifbox" / "__init__.py").is_file()


def test_the_launcher_imports_sifbox_from_its_bundle(run_as, as_who, sifbox_cli, tmp_path):
    """One bundle file serves sifbox's modules: no per-module file is opened by a launch."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed, so the files a launch opens can't be seen")
    assert (VENV / "sifbox-modules.bundle").is_file()
    proc = run_as(as_who, [strace, "-f", "-e", "trace=openat,open", "-qq", sifbox_cli, "inspect", "--help"])
    assert proc.returncode == 0, proc.stderr
    (site,) = VENV.glob("lib/python3*/site-packages")
    opened = [line for line in proc.stderr.splitlines() if f"{site}/sifbox/" in line and "ENOENT" not in line]
    modules = [line for line in opened if line.split('"')[1].endswith((".py", ".pyc"))]
    # Only the package itself and the bundle loader are imported the usual way.
    assert all(("/__init__." in m or "/_boot." in m) and "sifbox/__pycache__/" in m for m in modules), modules
    assert any("sifbox-modules.bundle" in line for line in proc.stderr.splitlines())


def test_dev_fuse_is_open_to_all():
    fuse = Path("/dev/fuse")
    if not fuse.exists():
        pytest.skip("/dev/fuse does not exist on this machine")
    assert stat.S_IMODE(fuse.stat().st_mode) == 0o666


def test_sif_list_on_root_owned_image_matches_siftool(
    run_as, as_who, sifbox_cli, shared_tmp, sif_corpus
):
    image = shared_tmp / "one-group.sif"
    shutil.copyfile(sif_corpus / "images" / "one-group.sif", image)
    os.chown(image, 0, 0)
    image.chmod(0o644)
    golden = (sif_corpus / "golden/siftool-app/TestApp_List/OneGroup.golden").read_text()

    proc = run_as(as_who, [sifbox_cli, "sif", "list", str(image)])

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == golden


def test_demo_image_has_a_squashfs_root(run_as, as_who, sifbox_cli):
    if not DEMO.exists():
        pytest.skip(f"{DEMO} not built: run `bash scripts/install.sh` (without --no-demo)")
    arch = GO_ARCH.get(platform.machine(), platform.machine())

    proc = run_as(as_who, [sifbox_cli, "sif", "list", str(DEMO)])

    assert proc.returncode == 0, proc.stderr
    assert f"FS (Squashfs/*System/{arch})" in proc.stdout


def test_demo_image_runs(run_as, as_who, sifbox_cli):
    """The demo is built by `sifbox build` from examples/demo.def and runs for root and the user."""
    if not DEMO.exists():
        pytest.skip(f"{DEMO} not built: run `bash scripts/install.sh` (without --no-demo)")
    proc = run_as(as_who, [sifbox_cli, "run", str(DEMO), "tester"], cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello from a sifbox build, tester!")
    proc = run_as(as_who, [sifbox_cli, "inspect", "--deffile", str(DEMO)], cwd="/")
    assert proc.returncode == 0 and "Bootstrap: busybox" in proc.stdout, proc.stderr
