"""Binds and mounts as Apptainer makes them (its user guide's "Bind Paths and Mounts", e2e
actionBinds and bindImage): images bound with `image-src=`/`id=`, -W/--workdir, -S/--scratch,
--writable with missing destinations, and `bind path` mounts that can't be made. As root and as
the test user; `no_leaks` checks that nothing stays mounted, running or attached.
"""

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


def _sifbox(run_as, who, sifbox_cli, *argv, conf: Path | None = None, **kw):  # type: ignore[no-untyped-def]
    pre = ["-c", str(conf)] if conf else []
    return run_as(who, [sifbox_cli, *pre, *map(str, argv)], env=env_for(who), timeout=LAUNCH_TIMEOUT, **kw)


def _own(path: Path, who) -> Path:  # type: ignore[no-untyped-def]
    os.chown(path, who.uid, who.gid)
    return path


@pytest.fixture
def data_images(shared_tmp: Path, sifbox_cli: str, as_who) -> Path:  # type: ignore[no-untyped-def]
    """data.sqfs and data.ext3 (each holding sub/file: DATA), and data.sif (the SquashFS as data
    partition 1, the EXT3 as data partition 2). The files are the caller's: in a user namespace
    only the user's own files can be written (the kernel refuses writes to files of unmapped
    owners)."""
    src = shared_tmp / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/file").write_text("DATA\n")
    subprocess.run(["chown", "-R", f"{as_who.uid}:{as_who.gid}", str(src)], check=True)
    images.mksquashfs(src, shared_tmp / "data.sqfs")
    subprocess.run(["mkfs.ext3", "-q", "-F", "-d", str(src), str(shared_tmp / "data.ext3"), "8M"], check=True,
                   capture_output=True)  # fmt: skip
    sif = shared_tmp / "data.sif"
    subprocess.run([sifbox_cli, "sif", "new", str(sif)], check=True, capture_output=True)
    for fs, part in (("1", "data.sqfs"), ("2", "data.ext3")):
        subprocess.run([sifbox_cli, "sif", "add", "--datatype", "4", "--partarch", "2", "--partfs", fs,
                        "--parttype", "3", str(sif), str(shared_tmp / part)], check=True, capture_output=True)  # fmt: skip
    for name in ("data.sqfs", "data.ext3", "data.sif"):
        (shared_tmp / name).chmod(0o644)
    return shared_tmp


def test_squashfs_and_sif_images_are_bound_read_only(run_as, as_who, sifbox_cli, data_images: Path,
                                                     action_images: ActionImages) -> None:  # fmt: skip
    probe = ("cat /a/file /b/sub/file /c/file; touch /a/x 2>/dev/null || echo read-only;"
             "grep ' /a ' /proc/self/mountinfo")  # fmt: skip
    proc = _sifbox(run_as, as_who, sifbox_cli, "-v", "exec",
                   "--bind", f"{data_images}/data.sqfs:/a:image-src=/sub",
                   "--mount", f"type=bind,src={data_images}/data.sif,dst=/b,image-src=/",
                   "-B", f"{data_images}/data.sif:/c:image-src=sub,id=1",
                   action_images.sif, "sh", "-c", probe)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:4] == ["DATA", "DATA", "DATA", "read-only"]
    opts = lines[4].split(" - ")[0].split()[5].split(",")
    assert "ro" in opts and "nosuid" in opts and "nodev" in opts, lines[4]
    # Mounted through the descriptor that was opened: the kernel's squashfs for root, squashfuse
    # in the user's namespace.
    assert ("squashfuse_ll" if not as_who.is_root else "kernel squashfs") in proc.stderr


def test_ext3_images_are_bound_read_write_unless_ro(run_as, as_who, sifbox_cli, data_images: Path,
                                                    action_images: ActionImages) -> None:  # fmt: skip
    for name in ("data.ext3", "data.sif"):
        _own(data_images / name, as_who)
    ext3, sif = data_images / "data.ext3", data_images / "data.sif"
    for image, opt in ((ext3, "image-src=/"), (sif, "id=2")):
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--bind", f"{image}:/d:{opt}", action_images.sif,
                       "sh", "-c", "echo new > /d/sub/new && cat /d/sub/file")  # fmt: skip
        assert (proc.returncode, proc.stdout) == (0, "DATA\n"), proc.stderr
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--bind", f"{image}:/d:{opt},ro", action_images.sif,
                       "sh", "-c", "cat /d/sub/new; touch /d/x 2>/dev/null || echo read-only")  # fmt: skip
        assert (proc.returncode, proc.stdout) == (0, "new\nread-only\n"), proc.stderr
    # Written into the file system of the image file itself.
    out = subprocess.run(["debugfs", "-R", "cat /sub/new", str(ext3)], capture_output=True, text=True, check=False)
    assert out.stdout == "new\n"
    # One container writes an image: a second read-write bind of it is refused.
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "-B", f"{ext3}:/d1:image-src=/", "-B",
                   f"{ext3}:/d2:image-src=/", action_images.sif, "true")  # fmt: skip
    assert proc.returncode == 255 and "in use by another container" in proc.stderr, proc.stderr


def test_an_image_bound_read_write_must_be_writable_by_the_caller(run_as, test_user, sifbox_cli, data_images: Path,
                                                                  action_images: ActionImages) -> None:  # fmt: skip
    ext3 = data_images / "data.ext3"  # root's, 0644
    proc = _sifbox(run_as, test_user, sifbox_cli, "exec", "-B", f"{ext3}:/d:image-src=/", action_images.sif, "true")
    assert proc.returncode == 255 and proc.stderr.startswith(f"sifbox: error: can't bind image `{ext3}` to `/d`: ")
    assert "hint: add `ro`" in proc.stderr
    proc = _sifbox(run_as, test_user, sifbox_cli, "exec", "-B", f"{ext3}:/d:image-src=/,ro", action_images.sif,
                   "cat", "/d/sub/file")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "DATA\n"), proc.stderr


def test_workdir_and_scratch(run_as, as_who, sifbox_cli, shared_tmp: Path, action_images: ActionImages) -> None:
    work = shared_tmp / "w"
    work.mkdir()
    _own(work, as_who)
    probe = "touch /tmp/t /var/tmp/v ~/h /scratch/s /other/o && ls -ld /scratch | cut -c1-10"
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--contain", "-W", "w", "-S", "/scratch,/other",
                   action_images.sif, "sh", "-c", probe, cwd=str(shared_tmp))  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "drwxr-x---\n"), proc.stderr
    for path in ("tmp/t", "var_tmp/v", "home/h", "scratch/scratch/s", "scratch/other/o"):
        assert (work / path).is_file(), path
    assert (work / "tmp").stat().st_mode & 0o7777 == 0o1777 and (work / "home").stat().st_mode & 0o777 == 0o700
    # Without --workdir a scratch directory is empty at each start, and gone after.
    for _ in range(2):
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--scratch", "/scratch", action_images.sif, "sh", "-c",
                       "ls -A /scratch; touch /scratch/x")  # fmt: skip
        assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr


def test_writable_sandbox_needs_the_destinations(run_as, as_who, sifbox_cli, shared_tmp: Path,
                                                 action_images: ActionImages) -> None:  # fmt: skip
    sandbox = shared_tmp / "sandbox"
    subprocess.run(["cp", "-a", str(action_images.sandbox), str(sandbox)], check=True)
    subprocess.run(["chown", "-R", f"{as_who.uid}:{as_who.gid}", str(sandbox)], check=True)
    canary = shared_tmp / "canary"
    canary.mkdir()
    (canary / "file").write_text("CANARY\n")
    canary.chmod(0o755)
    before = sorted(os.listdir(sandbox))
    for args in (("--bind", f"{canary}:/canary"), ("--bind", f"{canary}/file:/canary/file"),
                 ("--home", f"{canary}:/canary")):  # fmt: skip
        proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", *args, sandbox, "true")
        assert proc.returncode == 255, proc.stderr
        assert "`/canary" in proc.stderr and "--writable does not create it" in proc.stderr, proc.stderr
    assert sorted(os.listdir(sandbox)) == before  # nothing made in the image
    # Where the destination exists, or lies in a host directory of the plan, it works.
    (sandbox / "canary").mkdir()
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", "--bind", f"{canary}:/canary", sandbox,
                   "cat", "/canary/file")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "CANARY\n"), proc.stderr
    home = shared_tmp / "home"
    home.mkdir()
    _own(home, as_who)
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", "--home", f"{home}:/home/e2e", "--bind",
                   f"{canary}:/home/e2e/in", sandbox, "cat", "/home/e2e/in/file")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "CANARY\n"), proc.stderr
    assert (home / "in").is_dir() and not (sandbox / "home/e2e").exists()


def test_a_site_bind_that_cant_be_made_is_skipped(run_as, as_who, sifbox_cli, shared_tmp: Path,
                                                  action_images: ActionImages) -> None:  # fmt: skip
    sandbox = shared_tmp / "sandbox"
    subprocess.run(["cp", "-a", str(action_images.sandbox), str(sandbox)], check=True)
    (sandbox / "dir").mkdir()
    for name in ("hosts", "localtime"):
        (sandbox / "etc" / name).unlink(missing_ok=True)
        (sandbox / "etc" / name).symlink_to("/dir")
    conf = shared_tmp / "sifbox.conf"
    conf.write_text("bind path = /etc/hosts\nbind path = /etc/localtime\n")
    conf.chmod(0o644)
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", sandbox, "echo", "ran", conf=conf)
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc.stderr
    assert "`/etc/hosts` is not mounted" in proc.stderr, proc.stderr
    # A bind the caller asks for is not skipped, nor another `bind path` (as Apptainer).
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--bind", "/etc/hosts", sandbox, "true", conf=conf)
    assert proc.returncode == 126 and "can't bind `/etc/hosts` to `/etc/hosts`" in proc.stderr, proc.stderr
    (sandbox / "etc/pw-link").symlink_to("/dir")
    conf.write_text("bind path = /etc/passwd:/etc/pw-link\n")
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", sandbox, "true", conf=conf)
    assert proc.returncode == 126 and "can't bind `/etc/passwd` to `/etc/pw-link`" in proc.stderr, proc.stderr


def test_escaped_commas_and_colons(run_as, as_who, sifbox_cli, shared_tmp: Path, action_images: ActionImages) -> None:
    d = shared_tmp / "a,b:c"
    d.mkdir()
    (d / "f").write_text("ESCAPED\n")
    d.chmod(0o755)
    spec = str(d).replace(",", "\\,").replace(":", "\\:") + ":/mnt:ro"
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "-B", spec, action_images.sif, "cat", "/mnt/f")
    assert (proc.returncode, proc.stdout) == (0, "ESCAPED\n"), proc.stderr
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--mount", f'"src={d}",dst=/mnt', action_images.sif,
                   "cat", "/mnt/f")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "ESCAPED\n"), proc.stderr
    shutil.rmtree(d)


def test_a_workdir_entry_that_is_a_link_is_refused(run_as, as_who, sifbox_cli, shared_tmp: Path,
                                                   action_images: ActionImages) -> None:  # fmt: skip
    """A link planted as WORKDIR/tmp would make the host directory it leads to the container's /tmp."""
    work = shared_tmp / "w"
    work.mkdir()
    os.chmod(work, 0o777)
    (work / "tmp").symlink_to("/etc")
    proc = _sifbox(run_as, as_who, sifbox_cli, "exec", "--contain", "-W", work, action_images.sif, "ls", "/tmp/passwd")
    assert proc.returncode == 255 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith(f"sifbox: error: can't use --workdir `{work}`: `{work}/tmp` is not a directory")
