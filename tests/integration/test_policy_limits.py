"""Site image policy (`limit container paths|owners|groups`, `allow container KIND`,
`limit container store`) enforced by `sifbox exec`, as root and as the test user, and
`sifbox config check`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Not the `no_leaks` guard: on a machine shared by several test runs it sees (and kills)
# the processes of the others; these tests mount nothing that outlives `sifbox exec`,
# and shared_tmp fails a test that leaves a mount under it.
from tests.integration.images import ActionImages, action_images  # noqa: F401

pytestmark = pytest.mark.integration

REFUSED_PATH = "image is not in an allowed configured path"


def _conf(base: Path, text: str) -> Path:
    conf = base / "sifbox.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    return conf


def _exec(run_as, who, cli, conf, image):  # type: ignore[no-untyped-def]
    return run_as(who, [cli, "-c", str(conf), "exec", str(image), "/bin/cat", "/data/hello.txt"])


def _ok(proc) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from image\n"


def _refused(proc, image, reason: str = REFUSED_PATH) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 126, (proc.returncode, proc.stderr)
    first = proc.stderr.splitlines()[0]
    assert first == f"sifbox: error: can't exec `{image}`: {reason}", proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def scratch(shared_tmp: Path, action_images: ActionImages) -> Path:
    """shared_tmp/scratch and shared_tmp/scratch2, each holding a copy of the test SIF."""
    for name in ("scratch", "scratch2"):
        d = shared_tmp / name
        d.mkdir()
        d.chmod(0o755)
        shutil.copy(action_images.sif, d / "img.sif")
        (d / "img.sif").chmod(0o644)
    return shared_tmp


def test_paths_match_whole_components(run_as, as_who, sifbox_cli, scratch: Path) -> None:  # type: ignore[no-untyped-def]
    conf = _conf(scratch, f"limit container paths = {scratch}/scratch\n")
    _ok(_exec(run_as, as_who, sifbox_cli, conf, scratch / "scratch/img.sif"))
    _refused(_exec(run_as, as_who, sifbox_cli, conf, scratch / "scratch2/img.sif"), scratch / "scratch2/img.sif")
    # Relative paths and `..` are judged by where they lead.
    sneaky = scratch / "scratch/../scratch2/img.sif"
    _refused(_exec(run_as, as_who, sifbox_cli, conf, sneaky), sneaky)


def test_symlink_escape_is_refused(run_as, as_who, sifbox_cli, scratch: Path) -> None:  # type: ignore[no-untyped-def]
    conf = _conf(scratch, f"limit container paths = {scratch}/scratch\n")
    escape = scratch / "scratch/escape.sif"
    escape.symlink_to(scratch / "scratch2/img.sif")
    _refused(_exec(run_as, as_who, sifbox_cli, conf, escape), escape)
    # A symlink elsewhere that leads into the allowed directory is judged by its target.
    inward = scratch / "scratch2/inward.sif"
    inward.symlink_to(scratch / "scratch/img.sif")
    _ok(_exec(run_as, as_who, sifbox_cli, conf, inward))
    # An allowed directory that is itself a symlink is resolved too.
    (scratch / "alias").symlink_to(scratch / "scratch")
    conf = _conf(scratch, f"limit container paths = {scratch}/alias\n")
    _ok(_exec(run_as, as_who, sifbox_cli, conf, scratch / "scratch/img.sif"))
    _refused(_exec(run_as, as_who, sifbox_cli, conf, scratch / "scratch2/img.sif"), scratch / "scratch2/img.sif")


def test_owner_and_group_limits(run_as, as_who, sifbox_cli, scratch: Path, test_user) -> None:  # type: ignore[no-untyped-def]
    mine = scratch / "scratch2/img.sif"
    os.chown(mine, test_user.uid, test_user.gid)
    rootimg = scratch / "scratch/img.sif"
    conf = _conf(scratch, "limit container owners = root\n")
    _ok(_exec(run_as, as_who, sifbox_cli, conf, rootimg))
    _refused(_exec(run_as, as_who, sifbox_cli, conf, mine), mine, "image is not owned by an allowed configured owner")
    conf = _conf(scratch, f"limit container groups = {test_user.gid}\n")
    _ok(_exec(run_as, as_who, sifbox_cli, conf, mine))
    _refused(_exec(run_as, as_who, sifbox_cli, conf, rootimg), rootimg, "image is not owned by an allowed configured group")


def test_kind_limits(run_as, as_who, sifbox_cli, shared_tmp: Path, action_images: ActionImages) -> None:  # type: ignore[no-untyped-def]
    conf = _conf(shared_tmp, "allow container squashfs = no\nallow container dir = no\n")
    _ok(_exec(run_as, as_who, sifbox_cli, conf, action_images.sif))
    _refused(_exec(run_as, as_who, sifbox_cli, conf, action_images.sqfs), action_images.sqfs,
             "image type squashfs is not allowed by the configuration")
    _refused(_exec(run_as, as_who, sifbox_cli, conf, action_images.sandbox), action_images.sandbox,
             "image type dir is not allowed by the configuration")


def test_store_directory_limit(run_as, as_who, sifbox_cli, shared_tmp: Path, action_images: ActionImages) -> None:  # type: ignore[no-untyped-def]
    store = shared_tmp / "store"
    (store / as_who.name).mkdir(parents=True)
    (store / "someone-else").mkdir()
    for d in (store, store / as_who.name, store / "someone-else"):
        d.chmod(0o755)
    for d in (as_who.name, "someone-else"):
        shutil.copy(action_images.sif, store / d / "img.sif")
        (store / d / "img.sif").chmod(0o644)
    conf = _conf(shared_tmp, f"limit container store = yes\nstore path = {store}\n")
    _ok(_exec(run_as, as_who, sifbox_cli, conf, store / as_who.name / "img.sif"))
    _refused(_exec(run_as, as_who, sifbox_cli, conf, store / "someone-else/img.sif"), store / "someone-else/img.sif")
    _refused(_exec(run_as, as_who, sifbox_cli, conf, action_images.sif), action_images.sif)


def test_deleted_file_is_in_no_directory(run_as, sifbox_cli, scratch: Path) -> None:  # type: ignore[no-untyped-def]
    """The check runs on the descriptor that gets mounted: a file replaced after the
    open is still judged (and mounted) as the file that was opened."""
    conf = _conf(scratch, f"limit container paths = {scratch}/scratch\n")
    # /proc/self/fd/N of an unlinked file ends in " (deleted)": refused, never matched by name.
    script = (
        f"exec 3<{scratch}/scratch/img.sif; rm {scratch}/scratch/img.sif; "
        f"cp {scratch}/scratch2/img.sif {scratch}/scratch/img.sif; "
        f"{sifbox_cli} -c {conf} exec /proc/self/fd/3 /bin/true"
    )
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 126 and REFUSED_PATH in proc.stderr, proc.stderr


def test_no_limits_cost_nothing_and_config_check(run_as, as_who, sifbox_cli, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    conf = _conf(shared_tmp, "# site\nlimit container paths = /scratch, /data\nallow container dir = no\n")
    proc = run_as(as_who, [sifbox_cli, "-c", str(conf), "config", "check"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "limit container paths" in out and f"({conf}:2)" in out
    assert "mount home" in out and "(default)" in out
    assert "images must lie under: /scratch, /data" in out and "image kinds refused: dir" in out
    assert "not a security boundary" in out and "squashfuse" in out
    proc = run_as(as_who, [sifbox_cli, "-c", str(conf), "config", "check", "--json"])
    import json

    report = json.loads(proc.stdout)
    assert report["limits active"] is True
    assert {r["directive"] for r in report["directives"]} >= {"limit container paths", "store socket"}
