"""Persistent overlays: e2e/actions/actions.go (PersistentOverlay, PersistentOverlayUnpriv),
e2e/overlay/overlay.go (testOverlayCreate) and e2e/run/run.go (testFuseOverlayfs,
testFuseSquashMount, testFuseExt3Mount).

The Go tables are sequences: a case writes into an overlay that a later case reads. Each user
gets its own overlay files (owned by it) for the whole module, and runs the rows in order.
Apptainer runs PersistentOverlay as root only; sifbox gives users the same overlays
(`fuse-overlayfs`, `fuse2fs`), so both users run them with the same expectations.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import (
    C,
    Case,
    check,
    contains,
    mark_xfail,
    new_dir,
    params,
    remove_dir,
)

pytestmark = pytest.mark.integration

_WORKSPACES: dict[str, Path] = {}


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def overlay_root() -> Iterator[Path]:
    for tool in ("mksquashfs", "mkfs.ext3", "dd"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"`{tool}` is not installed (Debian packages squashfs-tools, e2fsprogs, coreutils)"
            )
    base = new_dir("overlay")
    yield base
    _WORKSPACES.clear()
    remove_dir(base)


@pytest.fixture
def ows(sb, overlay_root: Path, e2e_images, sifbox_cli) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """This user's overlay workspace (made once per module, owned by the user): the files of
    PersistentOverlay (overlay-dir, squashfs.simg with squash_marker, ext3_fs.img, sandbox),
    of PersistentOverlayUnpriv (overlay-dir-unpriv) and of testOverlayCreate (signed.sif,
    unsigned.sif)."""
    who = sb.who
    if who.name not in _WORKSPACES:
        ws = overlay_root / who.name
        ws.mkdir()
        for d in ("overlay-dir", "overlay-dir-unpriv", "root-squash-dir"):
            (ws / d).mkdir()
        (ws / "root-squash-dir/squash_marker").touch()
        _run(
            "mksquashfs",
            str(ws / "root-squash-dir"),
            str(ws / "squashfs.simg"),
            "-noappend",
            "-all-root",
        )
        _run("dd", "if=/dev/zero", f"of={ws / 'ext3_fs.img'}", "bs=1M", "count=64", "status=none")
        # As the user's own: its root directory belongs to the user (what `overlay create` does).
        _run(
            "mkfs.ext3",
            "-q",
            "-F",
            "-E",
            f"root_owner={who.uid}:{who.gid}",
            str(ws / "ext3_fs.img"),
        )
        _run("cp", "-a", str(e2e_images.sandbox), str(ws / "sandbox"))
        for name in ("signed.sif", "unsigned.sif"):
            shutil.copy(e2e_images.busybox, ws / name)
        key = ws / "key.pem"
        _run("openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key))
        _run(sifbox_cli, "sign", "--key", str(key), str(ws / "signed.sif"))
        _run("chown", "-R", f"{who.uid}:{who.gid}", str(ws))
        _WORKSPACES[who.name] = ws
    return {"@ow@": str(_WORKSPACES[who.name])}


def run_rows(request, sb, ows: dict[str, str], case: Case) -> None:  # type: ignore[no-untyped-def]
    mark_xfail(request, case.xfail, sb.kind)
    args = [a.replace("@ow@", ows["@ow@"]) for a in case.argv]
    from tests.e2e.apptainer.cases import apply_profile

    cwd = case.cwd.replace("@ow@", ows["@ow@"]) if case.cwd else None
    check(sb, case, sb.run(apply_profile(args, case.profile), cwd=cwd))


OW = "@ow@"
DIR = f"{OW}/overlay-dir"
EXT3 = f"{OW}/ext3_fs.img"
SQUASH = f"{OW}/squashfs.simg"
WRITABLE_OVERLAY = (
    "--writable with a writable --overlay is refused as bad usage, 125 (DESIGN: exit statuses), "
    "before anything is mounted; Apptainer fails with its generic 255"
)
WRITABLE_TMPFS_OVERLAY = (
    "--writable-tmpfs with a writable --overlay is refused as bad usage, 125 (DESIGN: exit statuses), "
    "before anything is mounted; Apptainer fails with its generic 255"
)
SMALL_OVERLAY = (
    "a size under 64 MiB is refused as bad usage, 125 (DESIGN: exit statuses); Apptainer fails with "
    "its generic 255"
)
NOROOT = (
    "an unprivileged user may use an overlay directory (fuse-overlayfs, as Apptainer does in its "
    "user namespace mode: PersistentOverlayUnpriv/overlay_create); Apptainer's setuid mode refuses"
)

# --- actions.go: PersistentOverlay ("persistent overlay") ----------------------------------------
PERSISTENT = [
    C("actions.go:PersistentOverlay/overlay_create", "exec", "--overlay", DIR, "@test@", "touch", "/dir_overlay"),
    C("actions.go:PersistentOverlay/overlay_ext3_create", "exec", "--overlay", EXT3, "@test@", "touch",
      "/ext3_overlay"),
    C("actions.go:PersistentOverlay/overlay_multiple_create", "exec", "--overlay", EXT3, "--overlay",
      f"{SQUASH}:ro", "@test@", "touch", "/multiple_overlay_fs"),
    C("actions.go:PersistentOverlay/overlay_find", "exec", "--overlay", DIR, "@test@", "test", "-f", "/dir_overlay"),
    C("actions.go:PersistentOverlay/overlay_find_with_writable_fail", "exec", "--overlay", DIR, "--writable",
      "@test@", "true", exit=125, diverges=WRITABLE_OVERLAY),
    C("actions.go:PersistentOverlay/overlay_find_with_writable_tmpfs", "exec", "--overlay", f"{DIR}:ro",
      "--writable-tmpfs", "@test@", "test", "-f", "/dir_overlay"),
    C("actions.go:PersistentOverlay/overlay_find_with_writable_tmpfs_fail", "exec", "--overlay", DIR,
      "--writable-tmpfs", "@test@", "true", exit=125, diverges=WRITABLE_TMPFS_OVERLAY),
    C("actions.go:PersistentOverlay/overlay_ext3_find", "exec", "--overlay", EXT3, "@test@", "test", "-f",
      "/ext3_overlay"),
    C("actions.go:PersistentOverlay/overlay_multiple_writable_fail", "exec", "--overlay", EXT3, "--overlay", EXT3,
      "@test@", "true", exit=255),
    C("actions.go:PersistentOverlay/overlay_squashFS_find", "exec", "--overlay", f"{SQUASH}:ro", "@test@", "test",
      "-f", "/squash_marker"),
    C("actions.go:PersistentOverlay/overlay_squashFS_find_without_ro", "exec", "--overlay", SQUASH, "@test@",
      "test", "-f", "/squash_marker"),
    C("actions.go:PersistentOverlay/overlay_multiple_find_ext3", "exec", "--overlay", EXT3, "--overlay",
      f"{SQUASH}:ro", "@test@", "test", "-f", "/multiple_overlay_fs"),
    C("actions.go:PersistentOverlay/overlay_multiple_find_squashfs", "exec", "--overlay", EXT3, "--overlay",
      f"{SQUASH}:ro", "@test@", "test", "-f", "/squash_marker"),
    C("actions.go:PersistentOverlay/overlay_noroot", "exec", "--overlay", DIR, "@test@", "true", only="user",
      diverges=NOROOT),
    C("actions.go:PersistentOverlay/overlay_noflag", "exec", "@test@", "test", "-f", "/foo_overlay", exit=1),
    C("actions.go:PersistentOverlay/SIF_writable_without_overlay_partition_issue_4329", "exec", "--writable",
      "@test@", "true", exit=255),
    C("actions.go:PersistentOverlay/overlay_dir_relative_path_issue_4270", "exec", "--overlay", "overlay-dir",
      f"{OW}/sandbox", "test", "-f", "/dir_overlay", cwd=OW),
]  # fmt: skip

# --- actions.go: PersistentOverlayUnpriv (user namespace profile) ---------------------------------
UDIR = f"{OW}/overlay-dir-unpriv"
UNPRIV = [
    C("actions.go:PersistentOverlayUnpriv/overlay_create", "exec", "--overlay", UDIR, "@test@", "touch",
      "/dir_overlay", profile="userns"),
    C("actions.go:PersistentOverlayUnpriv/overlay_find", "exec", "--overlay", UDIR, "@test@", "test", "-f",
      "/dir_overlay", profile="userns"),
    C("actions.go:PersistentOverlayUnpriv/overlay_find_with_writable_fail", "exec", "--overlay", UDIR,
      "--writable", "@test@", "true", exit=125, profile="userns", diverges=WRITABLE_OVERLAY),
    C("actions.go:PersistentOverlayUnpriv/overlay_find_with_writable_tmpfs", "exec", "--overlay", f"{UDIR}:ro",
      "--writable-tmpfs", "@test@", "test", "-f", "/dir_overlay", profile="userns"),
    C("actions.go:PersistentOverlayUnpriv/overlay_find_with_writable_tmpfs_fail", "exec", "--overlay", UDIR,
      "--writable-tmpfs", "@test@", "true", exit=125, profile="userns", diverges=WRITABLE_TMPFS_OVERLAY),
]  # fmt: skip

# --- overlay.go: testOverlayCreate ("create") -----------------------------------------------------
CREATE = [
    # Apptainer names the same file as the next cases; a file of its own here, so that an
    # overlay accepted by mistake does not fail the cases after it.
    C("overlay.go:testOverlayCreate/create ext3 overlay with small size", "overlay", "create", "--size", "1",
      f"{OW}/image.small.ext3", exit=125, diverges=SMALL_OVERLAY),
    C("overlay.go:testOverlayCreate/create ext3 sparse overlay image", "overlay", "create", "--size", "128",
      "--sparse", f"{OW}/image.sparse.ext3"),
    C("overlay.go:testOverlayCreate/create ext3 overlay image", "overlay", "create", "--size", "128",
      f"{OW}/image.ext3"),
    C("overlay.go:testOverlayCreate/check ext3 overlay size", "exec", "-B", f"{OW}/image.ext3:/mnt/image", "@test@",
      "/bin/sh", "-c", "[ $(stat -c %s /mnt/image) = 134217728 ] || false"),
    C("overlay.go:testOverlayCreate/create ext3 overlay with an existing image", "overlay", "create",
      f"{OW}/image.ext3", exit=255),
    C("overlay.go:testOverlayCreate/create ext3 overlay with dir", "overlay", "create", "--create-dir",
      "/usr/local/testing", f"{OW}/imagedir.ext3"),
    C("overlay.go:testOverlayCreate/check overlay dir permissions", "exec", "-o", f"{OW}/imagedir.ext3", "@test@",
      "mkdir", "/usr/local/testing/perms"),
    C("overlay.go:testOverlayCreate/create ext3 overlay image in unsigned SIF", "overlay", "create",
      f"{OW}/unsigned.sif"),
    C("overlay.go:testOverlayCreate/create ext3 overlay image in SIF with an existing overlay", "overlay",
      "create", f"{OW}/unsigned.sif", exit=255),
    # Signed here with a DSSE key (`sign --key`), not Apptainer's PGP test key.
    C("overlay.go:testOverlayCreate/create ext3 overlay image in signed SIF", "overlay", "create",
      f"{OW}/signed.sif", exit=255),
]  # fmt: skip

# --- run.go: testFuseOverlayfs (user namespace profile) ------------------------------------------
# Divergence (root): a contained root container sees the host read-only, its current directory
# included, so root's rows write into the container's own root (the overlay) instead of `file`
# in the current directory; the users' rows are Apptainer's.
_ROOT_CWD = "a contained root container's current directory is read-only (sifbox's containment)"
FUSE = [
    C("run.go:testFuseOverlayfs/overlay create", "overlay", "create", "--size", "64", f"{OW}/overlay.img"),
    C("run.go:testFuseOverlayfs/writable-tmpfs", "exec", "--no-home", "--writable-tmpfs", "@busybox@", "touch",
      "file", profile="userns", cwd=OW, only="user"),
    C("run.go:testFuseOverlayfs/writable-tmpfs[root]", "exec", "--no-home", "--writable-tmpfs", "@busybox@",
      "touch", "/file", profile="userns", cwd=OW, only="root", diverges=_ROOT_CWD),
    C("run.go:testFuseOverlayfs/overlay image", "exec", "--no-home", "--overlay", f"{OW}/overlay.img",
      "@busybox@", "touch", "file", profile="userns", cwd=OW, only="user"),
    C("run.go:testFuseOverlayfs/overlay image[root]", "exec", "--no-home", "--overlay", f"{OW}/overlay.img",
      "@busybox@", "touch", "/file", profile="userns", cwd=OW, only="root", diverges=_ROOT_CWD),
    C("run.go:testFuseOverlayfs/overlay dir", "exec", "--no-home", "--overlay", f"{OW}/fuse-overlay-dir",
      "@busybox@", "touch", "file", profile="userns", cwd=OW, only="user"),
    C("run.go:testFuseOverlayfs/overlay dir[root]", "exec", "--no-home", "--overlay", f"{OW}/fuse-overlay-dir",
      "@busybox@", "touch", "/file", profile="userns", cwd=OW, only="root", diverges=_ROOT_CWD),
]  # fmt: skip

ROWS = PERSISTENT + UNPRIV + CREATE + FUSE


@pytest.mark.parametrize("case", params(ROWS))
def test_overlay(request, sb, ows, case: Case) -> None:  # type: ignore[no-untyped-def]
    if case.only and case.only != sb.kind:
        pytest.skip(f"only as {case.only}")
    if case.name.startswith("run.go:testFuseOverlayfs/overlay dir"):
        path = Path(ows["@ow@"]) / "fuse-overlay-dir"
        path.mkdir(exist_ok=True)
        os.chown(path, sb.who.uid, sb.who.gid)
    run_rows(request, sb, ows, case)


# --- run.go: testFuseSquashMount, testFuseExt3Mount ----------------------------------------------


@pytest.mark.parametrize("fs", ["squashfs", "ext3"])
def test_fuse_image_mount(request, sb, fs: str) -> None:
    """run.go:testFuseSquashMount / testFuseExt3Mount: a SquashFS / EXT3 image of a directory,
    mounted with --mount image-src=/, lists the directory's file."""
    data = sb.work / "data"
    data.mkdir()
    (data / "datafile").touch()
    image = sb.work / ("input.squashfs" if fs == "squashfs" else "input.img")
    if fs == "squashfs":
        _run("mksquashfs", str(data), str(image))
    else:
        _run("mkfs.ext3", "-q", "-d", str(data), str(image), "64M")
    image.chmod(0o644)
    os.chown(image, sb.who.uid, sb.who.gid)  # the user's, as the Go test makes it (EXT3: bound read-write)
    name = "run.go:testFuseSquashMount" if fs == "squashfs" else "run.go:testFuseExt3Mount"
    case = C(name, "exec", "--no-home", "--mount", f"type=bind,src={image},dst=/input-data,image-src=/",
             "@busybox@", "ls", "/input-data", out=contains("datafile"))  # fmt: skip
    mark_xfail(request, case.xfail, sb.kind)
    check(sb, case, sb.run(case.argv))


def test_overlay_create_encrypted(request, sb, e2e_images, sifbox_cli) -> None:  # type: ignore[no-untyped-def]
    """overlay.go:testOverlayCreate/create ext3 overlay image in encrypted SIF: root builds an
    encrypted SIF (--encrypt, APPTAINER_ENCRYPTION_PASSPHRASE; gocryptfs in sifbox, LUKS2 in
    Apptainer as root), and `overlay create` in it fails with status 255."""
    if sb.kind != "root":
        pytest.skip("only as root, as the Go test")
    if shutil.which("gocryptfs") is None:
        pytest.skip("gocryptfs is not installed")
    image = sb.work / "encrypted.sif"
    built = subprocess.run([sifbox_cli, "build", "--encrypt", str(image), str(e2e_images.busybox)],
                           env={**os.environ, "APPTAINER_ENCRYPTION_PASSPHRASE": "e2e-passphrase"},
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    case = C("overlay.go:testOverlayCreate/create ext3 overlay image in encrypted SIF", "overlay", "create",
             str(image), exit=255, err=contains("the SIF image is encrypted"))  # fmt: skip
    mark_xfail(request, case.xfail, sb.kind)
    check(sb, case, sb.run(case.argv))
