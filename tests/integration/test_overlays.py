"""--overlay (directories, EXT3 and SquashFS images), `overlay create`, --writable on a SIF with an
overlay partition, and `mount hostfs`: as root (kernel mounts) and as the test user (fuse2fs,
squashfuse_ll, fuse-overlayfs in a user namespace)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


def _sifbox(run_as, who, sifbox_cli, *argv, **kw):  # type: ignore[no-untyped-def]
    return run_as(who, [sifbox_cli, *map(str, argv)], env=env_for(who), timeout=LAUNCH_TIMEOUT, **kw)


def _own(path: Path, who) -> Path:  # type: ignore[no-untyped-def]
    os.chown(path, who.uid, who.gid)
    return path


def test_directory_overlay_keeps_changes(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    ov = shared_tmp / "ov"
    ov.mkdir()
    _own(ov, as_who)
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", ov, action_images.sif,
                   "sh", "-c", "echo kept > /kept && mkdir -p /opt/new && rm /etc/hostname-gone 2>/dev/null; id -u")
    assert proc.returncode == 0, proc.stderr
    assert (ov / "upper" / "kept").read_text() == "kept\n"
    assert (ov / "upper" / "kept").stat().st_uid == as_who.uid
    assert (ov / "work").is_dir()
    # A second container sees the change; read-only use can't write.
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", f"{ov}:ro", action_images.sif,
                   "sh", "-c", "cat /kept; touch /other 2>/dev/null || echo read-only")
    assert (proc.returncode, proc.stdout) == (0, "kept\nread-only\n"), proc.stderr
    # Mount points for binds go into a layer of their own, not into the user's overlay.
    assert not (ov / "upper" / "proc").exists()


def test_directory_overlay_under_fakeroot_removes_and_moves_image_directories(run_as, as_who, sifbox_cli, shared_tmp,
                                                                              action_images: ActionImages) -> None:  # fmt: skip
    """In a user namespace the kernel's overlayfs keeps its opaque directories in user.overlay.*
    attributes (`userxattr`): `rm -rf` of an image directory works, and `mv` of one too (rename(2)
    of a lower directory is EXDEV in a user namespace, as Linux's overlayfs has it there; mv
    copies, then removes). The changes last."""
    ov = shared_tmp / "ov"
    ov.mkdir()
    _own(ov, as_who)
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--fakeroot", "--overlay", ov, action_images.sif, "sh", "-c",
                   "mv /data /moved && rm -rf /.singularity.d/env && cat /moved/hello.txt")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, images.HELLO), proc.stderr
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--fakeroot", "--overlay", ov, action_images.sif, "sh", "-c",
                   "ls -d /data /.singularity.d/env 2>&1; cat /moved/hello.txt")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("No such file or directory") == 2 and proc.stdout.endswith(images.HELLO), proc.stdout


def test_ext3_overlay_image(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    img = shared_tmp / "overlay.img"
    proc = _sifbox(run_as, as_who, sifbox_cli, "overlay", "create", "--size", "64", "--create-dir", "/data", img)
    assert proc.returncode == 0, proc.stderr
    assert img.stat().st_size == 64 << 20 and img.stat().st_uid == as_who.uid
    proc = _sifbox(run_as, as_who, sifbox_cli, "-v", "exec", "--overlay", img, action_images.sif,
                   "sh", "-c", "echo in-ext3 > /data/f && cat /data/f")
    assert (proc.returncode, proc.stdout) == (0, "in-ext3\n"), proc.stderr
    assert ("fuse2fs" if not as_who.is_root else "kernel ext3") in proc.stderr
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", f"{img}:ro", action_images.sif, "cat", "/data/f")
    assert (proc.returncode, proc.stdout) == (0, "in-ext3\n"), proc.stderr
    # The file system is really in the image file (read it back with debugfs, no mount).
    out = subprocess.run(["debugfs", "-R", "cat /upper/data/f", str(img)], capture_output=True, text=True)
    assert out.stdout == "in-ext3\n"


def test_writable_ext3_overlay_is_locked(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    img = shared_tmp / "busy.img"
    assert _sifbox(run_as, as_who, sifbox_cli, "overlay", "create", "-s", "64", img).returncode == 0
    holder = images.popen_as(as_who, [sifbox_cli, "exec", "--overlay", str(img), str(action_images.sif),
                                      "sh", "-c", "echo up; exec sleep 30"],  # fmt: skip
                             env=env_for(as_who), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "up\n", holder.stderr.read() if holder.poll() is not None else ""
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", img, action_images.sif, "true")
        assert proc.returncode == 255
        assert "it is in use by another container" in proc.stderr
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", f"{img}:ro", action_images.sif, "true")
        assert proc.returncode == 255 and "in use by another container" in proc.stderr
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    # Readers share it.
    reader = images.popen_as(as_who, [sifbox_cli, "exec", "--overlay", f"{img}:ro", str(action_images.sif),
                                      "sh", "-c", "echo up; exec sleep 30"],  # fmt: skip
                             env=env_for(as_who), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline() == "up\n", reader.stderr.read() if reader.poll() is not None else ""
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", f"{img}:ro", action_images.sif, "true")
        assert proc.returncode == 0, proc.stderr
    finally:
        reader.kill()
        reader.communicate(timeout=30)


def test_sif_overlay_partition(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    sif = _own(Path(shutil.copy(action_images.sif, shared_tmp / "rw.sif")), as_who)
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", sif, "true")
    assert proc.returncode == 255 and "has no writable overlay partition" in proc.stderr
    assert "sifbox overlay create" in proc.stderr
    assert _sifbox(run_as, as_who, sifbox_cli, "overlay", "create", "--size", "64", sif).returncode == 0
    listing = subprocess.run(["siftool", "list", str(sif)], capture_output=True, text=True, check=True).stdout
    assert "Ext3/Overlay" in listing
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", sif, "sh", "-c", "echo w > /written")
    assert proc.returncode == 0, proc.stderr
    # Without --writable the partition is a read-only layer, as in Apptainer.
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", sif, "sh", "-c", "cat /written; touch /x 2>/dev/null || echo ro")
    assert (proc.returncode, proc.stdout) == (0, "w\nro\n"), proc.stderr
    # A second overlay partition is refused.
    proc = _sifbox(run_as, as_who, sifbox_cli, "overlay", "create", sif)
    assert proc.returncode == 255 and "already has an overlay partition" in proc.stderr


def test_squashfs_overlay_is_a_read_only_layer(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    layer = shared_tmp / "layer"
    (layer / "opt").mkdir(parents=True)
    (layer / "opt" / "from-layer").write_text("layer\n")
    sqfs = images.mksquashfs(layer, shared_tmp / "layer.sqfs")
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", sqfs, "--writable-tmpfs", action_images.sif,
                   "sh", "-c", "cat /opt/from-layer; echo x > /new-file && echo tmpfs-writes")
    assert (proc.returncode, proc.stdout) == (0, "layer\ntmpfs-writes\n"), proc.stderr


def test_overlay_errors(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    junk = shared_tmp / "junk.img"
    junk.write_bytes(b"x" * 4096)
    junk.chmod(0o644)
    a, b = shared_tmp / "a", shared_tmp / "b"
    for d in (a, b):
        d.mkdir()
        _own(d, as_who)
    cases = [
        (["--overlay", shared_tmp / "missing"], "no such file or directory"),
        (["--overlay", junk], "not a directory, EXT3, SquashFS or SIF image"),
        (["--overlay", a, "--overlay", b], "only one overlay can be writable"),
    ]
    for flags, message in cases:
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", *flags, action_images.sif, "true")
        assert proc.returncode in (125, 255), (flags, proc.stderr)
        assert proc.stderr.startswith("sifbox: error: can't exec") and message in proc.stderr, proc.stderr
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", action_images.sqfs, "true")
    assert proc.returncode == 125 and "a SquashFS image is read-only" in proc.stderr


def test_mount_hostfs(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    """`mount hostfs = yes` binds the file systems mounted on the host's `/` (here: a tmpfs the
    test mounts on a new top-level directory)."""
    top = Path("/sifbox-hostfs-test")
    top.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", str(top)], check=True)
    try:
        (top / "marker").write_text("host fs\n")
        (top / "marker").chmod(0o644)
        conf = shared_tmp / "hostfs.conf"
        conf.write_text("mount hostfs = yes\n")
        conf.chmod(0o644)
        proc = _sifbox(run_as, as_who, sifbox_cli, "--config", conf, "exec", action_images.sif, "cat", top / "marker")
        assert (proc.returncode, proc.stdout) == (0, "host fs\n"), proc.stderr
        proc = _sifbox(run_as, as_who, sifbox_cli, "--config", conf, "exec", "--no-mount", "hostfs",
                       action_images.sif, "cat", top / "marker")
        assert proc.returncode != 0
    finally:
        subprocess.run(["umount", "-l", str(top)], check=False)
        top.rmdir()
