"""`sifbox oci mount IMAGE BUNDLE` / `sifbox oci umount BUNDLE`: a bundle whose rootfs is the
SIF mounted (kernel SquashFS, read-only, nosuid, nodev; not extracted), run by `sifbox oci run`
and by runc; umount leaves nothing (mount, loop device, files); a user is refused with the way
that works for users; hostile bundles (a link, not empty, someone else's) and an umount of
something mount did not make are refused, and the mount there stays."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import images
from tests.integration.images import ActionImages, loops_for

pytestmark = [pytest.mark.integration]

action_images = images.action_images
no_leaks = images.no_leaks

RUNC = shutil.which("runc")


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sifbox-ocimount-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-R", "-l", str(d)], capture_output=True, check=False)
        shutil.rmtree(d, ignore_errors=True)


def _mount_of(path: Path) -> str | None:
    """The mountinfo line of the mount at `path`, if any."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split(" ")[4] == str(path):
            return line
    return None


def _cli(sifbox_cli: str, *args: str, who: Any = None, run_as: Any = None) -> subprocess.CompletedProcess[str]:
    if who is not None:
        return run_as(who, [sifbox_cli, *args])  # type: ignore[no-any-return]
    return subprocess.run([sifbox_cli, *args], capture_output=True, text=True, timeout=120, check=False)


def test_mount_run_umount(action_images: ActionImages, sifbox_cli: str, base: Path) -> None:
    bundle = base / "bundle"
    proc = _cli(sifbox_cli, "oci", "mount", str(action_images.sif), str(bundle))
    assert proc.returncode == 0, proc.stderr
    line = _mount_of(bundle / "rootfs")
    assert line is not None and " - squashfs /dev/loop" in line, line
    assert {"ro", "nosuid", "nodev"} <= set(line.split(" ")[5].split(",")), line
    assert loops_for([action_images.sif])
    doc = json.loads((bundle / "config.json").read_text())
    assert doc["process"]["args"] == ["/.singularity.d/runscript"]
    assert doc["root"] == {"path": "rootfs", "readonly": True}
    assert doc["annotations"]["org.label-schema.usage.singularity.version"] == "sifbox-tests"
    run = _cli(sifbox_cli, "oci", "--root", str(base / "state"), "run", "-b", str(bundle), "m1")
    assert run.returncode == 0 and "runscript args:" in run.stdout, run.stdout + run.stderr
    if RUNC is not None:
        runc = subprocess.run([RUNC, "--root", str(base / "runc"), "run", "-b", str(bundle), "m2"],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert runc.returncode == 0 and "runscript args:" in runc.stdout, runc.stdout + runc.stderr
    again = _cli(sifbox_cli, "oci", "mount", str(action_images.sif), str(bundle))
    assert again.returncode != 0 and "not empty" in again.stderr, again.stderr
    proc = _cli(sifbox_cli, "oci", "umount", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert not bundle.exists()
    assert _mount_of(bundle / "rootfs") is None
    assert not loops_for([action_images.sif])


def test_mount_into_an_empty_directory_keeps_it(action_images: ActionImages, sifbox_cli: str, base: Path) -> None:
    bundle = base / "mine"
    bundle.mkdir(mode=0o755)
    assert _cli(sifbox_cli, "oci", "mount", str(action_images.sif), str(bundle)).returncode == 0
    proc = _cli(sifbox_cli, "oci", "umount", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert bundle.is_dir() and not list(bundle.iterdir())


def test_user_is_refused_with_the_user_way(action_images: ActionImages, sifbox_cli: str, base: Path, run_as,
                                           test_user: Any) -> None:  # fmt: skip
    bundle = base / "user"
    proc = _cli(sifbox_cli, "oci", "mount", str(action_images.sif), str(bundle), who=test_user, run_as=run_as)
    assert proc.returncode != 0
    assert "only root can" in proc.stderr and "ln -s" in proc.stderr, proc.stderr
    assert not bundle.exists()


def test_hostile_bundles_are_refused(action_images: ActionImages, sifbox_cli: str, base: Path,
                                     test_user: Any) -> None:  # fmt: skip
    target = base / "target"
    target.mkdir()
    (base / "link").symlink_to(target)
    full = base / "full"
    full.mkdir()
    (full / "x").write_text("")
    theirs = base / "theirs"
    theirs.mkdir()
    os.chown(theirs, test_user.uid, test_user.gid)
    for bundle, words in ((base / "link", "symbolic link"), (full, "not empty"), (theirs, "not a directory of yours")):
        proc = _cli(sifbox_cli, "oci", "mount", str(action_images.sif), str(bundle))
        assert proc.returncode != 0 and words in proc.stderr, (bundle, proc.stderr)
    assert not list(target.iterdir()) and sorted(p.name for p in full.iterdir()) == ["x"]
    assert not list(theirs.iterdir())
    assert not loops_for([action_images.sif])


def test_umount_of_what_mount_did_not_make(action_images: ActionImages, sifbox_cli: str, base: Path) -> None:
    """A directory with a mount on its rootfs but no record, or a forged record naming another
    device: refused; the mount stays."""
    bundle = base / "other"
    (bundle / "rootfs").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(bundle / "rootfs")], check=True)
    try:
        proc = _cli(sifbox_cli, "oci", "umount", str(bundle))
        assert proc.returncode != 0 and "not a bundle that `sifbox oci mount` made" in proc.stderr, proc.stderr
        (bundle / ".sifbox-oci-mount.json").write_text(json.dumps({"dev": 1, "created": True}))
        proc = _cli(sifbox_cli, "oci", "umount", str(bundle))
        assert proc.returncode != 0 and "is not the image" in proc.stderr, proc.stderr
        assert _mount_of(bundle / "rootfs") is not None
        assert bundle.is_dir()
    finally:
        subprocess.run(["umount", str(bundle / "rootfs")], check=True)


@pytest.mark.parametrize("kind", ["sif", "oci-sif"])
def test_mount_of_a_pulled_image_runs_its_entrypoint(sifbox_cli: str, base: Path, kind: str) -> None:
    """A SIF pulled from an OCI image (its oci-config.json) and an OCI-SIF: config.json runs
    ENTRYPOINT + CMD in WORKDIR with the image's Env, under sifbox and under runc."""
    from tests.integration import oci_bundle

    tar = oci_bundle.oci_image_tar(base / "img.tar", "docker.io/library/ocimount:1", ['echo "in $PWD $FOO"'],
                                   entrypoint=["sh", "-c"], env=("PATH=/bin", "FOO=bar"), workdir="/tmp")  # fmt: skip
    image = base / f"img.{kind}"
    flags = ["--oci"] if kind == "oci-sif" else []
    r = subprocess.run([sifbox_cli, "pull", *flags, str(image), f"oci-archive:{tar}"], capture_output=True, text=True,
                       check=False, env={**os.environ, "SIFBOX_CACHEDIR": str(base / "cache")})  # fmt: skip
    assert r.returncode == 0, r.stderr
    bundle = base / "bundle"
    proc = _cli(sifbox_cli, "oci", "mount", str(image), str(bundle))
    assert proc.returncode == 0, proc.stderr
    try:
        doc = json.loads((bundle / "config.json").read_text())
        assert doc["process"]["args"] == ["sh", "-c", 'echo "in $PWD $FOO"'] and doc["process"]["cwd"] == "/tmp"
        assert "FOO=bar" in doc["process"]["env"]
        run = _cli(sifbox_cli, "oci", "--root", str(base / "state"), "run", "-b", str(bundle), "p1")
        assert run.returncode == 0 and run.stdout == "in /tmp bar\n", run.stdout + run.stderr
        if RUNC is not None:
            runc = subprocess.run([RUNC, "--root", str(base / "runc"), "run", "-b", str(bundle), "p2"],
                                  capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
            assert runc.stdout == "in /tmp bar\n", runc.stdout + runc.stderr
    finally:
        assert _cli(sifbox_cli, "oci", "umount", str(bundle)).returncode == 0
    assert not bundle.exists() and not loops_for([image])
