"""Pure parts of the build: debootstrap's progress lines, the device nodes of an unsquashfs
listing, and what a `%files from STAGE` path names in a stage root."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from sifbox.build.agents import DebootstrapSteps, _mode_bits, parse_devices
from sifbox.build.pipeline import stage_matches

DEBOOTSTRAP = """\
I: Retrieving InRelease
I: Checking Release signature
I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)
I: Retrieving Packages
I: Validating Packages
I: Resolving dependencies of required packages...
I: Resolving dependencies of base packages...
I: Checking component main on http://deb.debian.org/debian...
I: Retrieving adduser 3.134
I: Validating adduser 3.134
I: Retrieving apt 2.6.1
I: Validating apt 2.6.1
I: Chosen extractor for .deb packages: dpkg-deb
I: Extracting adduser...
I: Extracting apt...
I: Installing core packages...
I: Unpacking required packages...
I: Unpacking adduser...
I: Unpacking apt...
I: Configuring required packages...
I: Configuring debian-archive-keyring...
Selecting previously unselected package adduser.
I: Configuring apt...
W: Failure trying to run: chroot "/x" mount -t proc proc /proc
I: Unpacking the base system...
I: Configuring the base system...
I: Base system installed successfully.
"""


def test_debootstrap_steps() -> None:
    steps = DebootstrapSteps()
    shown = [s for s in map(steps, DEBOOTSTRAP.splitlines()) if s]
    assert shown == [
        "debootstrap: Retrieving InRelease",
        "debootstrap: Checking Release signature",
        "debootstrap: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)",
        "debootstrap: Retrieving Packages",
        "debootstrap: Validating Packages",
        "debootstrap: Resolving dependencies of required packages...",
        "debootstrap: Resolving dependencies of base packages...",
        "debootstrap: Checking component main on http://deb.debian.org/debian...",
        "debootstrap: Retrieving packages...",
        "debootstrap: Chosen extractor for .deb packages: dpkg-deb",
        "debootstrap: Extracting packages...",
        "debootstrap: Installing core packages...",
        "debootstrap: Unpacking required packages...",
        "debootstrap: Unpacking packages...",
        "debootstrap: Configuring required packages...",
        "debootstrap: Configuring packages...",
        "debootstrap: warning: Failure trying to run: chroot \"/x\" mount -t proc proc /proc",
        "debootstrap: Unpacking the base system...",
        "debootstrap: Configuring the base system...",
        "debootstrap: Base system installed successfully.",
    ]


def test_devices_of_a_listing() -> None:
    listing = """\
drwxr-xr-x 0/0                     183 2024-01-01 00:00 
drwxr-xr-x 0/0                      48 2024-01-01 00:00 /dev
crw-rw-rw- 0/0                   1,  3 2024-01-01 00:00 /dev/null
brw-rw---- 0/6                   8,  0 2024-01-01 00:00 /dev/sda
crw--w---- 0/5                 136, 10 2024-01-01 00:00 /dev/pts/with space
lrwxrwxrwx 0/0                      13 2024-01-01 00:00 /dev/fd -> /proc/self/fd
-rw-r--r-- 0/0                       4 2024-01-01 00:00 /etc/crw-rw-rw- 0/0 1,  3 2024-01-01 00:00 /x
"""
    devices = parse_devices(listing)
    assert [p for p, _ in devices] == ["dev/null", "dev/sda", "dev/pts/with space"]
    null, sda, pts = (info for _, info in devices)
    assert null.type == tarfile.CHRTYPE and (null.devmajor, null.devminor, null.mode) == (1, 3, 0o666)
    assert sda.type == tarfile.BLKTYPE and (sda.gid, sda.devmajor, sda.mode) == (6, 8, 0o660)
    assert (pts.devmajor, pts.devminor, pts.gid, pts.mode) == (136, 10, 5, 0o620)
    assert _mode_bits("rwsr-sr-t") == 0o7755 and _mode_bits("rwSr-Sr-T") == 0o7644


def test_stage_matches_keep_the_last_link(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    (root / "work/dir").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "work/target").write_text("t")
    (root / "work/link").symlink_to("target")
    (root / "work/abs").symlink_to("/work/target")
    (root / "work/etc").symlink_to("/etc")  # the stage's /etc, not the host's
    (root / "etc/stage-only").write_text("s")
    (root / "work/.hidden").write_text("h")

    def names(pattern: str) -> list[str]:
        return [os.path.relpath(p, root) for p in stage_matches(str(root), pattern)]

    assert names("/work/link") == ["work/link"]  # not work/target
    assert names("work/abs") == ["work/abs"]
    assert names("/work/l*") == ["work/link"]
    assert names("/work/*") == ["work/abs", "work/dir", "work/etc", "work/link", "work/target"]
    assert names("/work/.h*") == ["work/.hidden"]
    assert names("/work/etc/stage-only") == ["etc/stage-only"]
    assert names("/work/etc/passwd") == []  # the host's /etc/passwd is never reached
    assert names("/work/../../../etc/stage-only") == ["etc/stage-only"]
    assert names("/*/stage-only") == ["etc/stage-only"]
    assert names("/work/missing") == []


def test_debootstrap_steps_count_a_long_run() -> None:
    now = [0.0]
    steps = DebootstrapSteps(every=10, clock=lambda: now[0])
    shown = []
    for i in range(30):
        now[0] = i
        for line in (f"I: Retrieving pkg{i} 1.{i}", f"I: Validating pkg{i} 1.{i}"):
            if (s := steps(line)) is not None:
                shown.append(s)
    assert shown == ["debootstrap: Retrieving packages...", "debootstrap: Retrieving packages... (11 so far)",
                     "debootstrap: Retrieving packages... (21 so far)"]  # fmt: skip
    assert steps("I: Retrieving InRelease ") == "debootstrap: Retrieving InRelease"  # trailing blank
