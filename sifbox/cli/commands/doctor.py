"""`sifbox doctor`: check that this machine can run sifbox containers.

Each check prints one line (`ok`, `warn` or `FAIL`) with what to do when it
fails. Exit status 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys

from sifbox import __version__

OK, WARN, FAIL = "ok", "warn", "FAIL"

#: Tools sifbox runs, with the Debian package that provides each.
TOOLS = (
    ("mksquashfs", "squashfs-tools", FAIL),
    ("unsquashfs", "squashfs-tools", FAIL),
    ("squashfuse_ll", "squashfuse", FAIL),
    ("fusermount3", "fuse3", WARN),
    ("fuse-overlayfs", "fuse-overlayfs", WARN),
    ("newuidmap", "uidmap", WARN),
    ("newgidmap", "uidmap", WARN),
    ("tar2sqfs", "squashfs-tools-ng", WARN),
    ("fuse2fs", "fuse2fs", WARN),
    ("mkfs.ext3", "e2fsprogs", WARN),
    ("gpg", "gnupg", WARN),
    ("gocryptfs", "gocryptfs", WARN),
    ("debootstrap", "debootstrap", WARN),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("image", nargs="?", help="also say how this image would be mounted, and why")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check_fuse() -> tuple[str, str, str]:
    try:
        st = os.stat("/dev/fuse")
    except OSError:
        return FAIL, "/dev/fuse is missing", "load the fuse kernel module (`modprobe fuse`)"
    mode = stat.S_IMODE(st.st_mode)
    if os.getuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return FAIL, f"/dev/fuse is mode {mode:04o}: unprivileged users can't mount images", \
            "as root: `chmod 0666 /dev/fuse` (and a udev rule `KERNEL==\"fuse\", MODE=\"0666\"`)"
    if mode & 0o006 != 0o006:
        return FAIL, f"/dev/fuse is mode {mode:04o}: only root can use FUSE, users can't mount images", \
            "as root: `chmod 0666 /dev/fuse` (and a udev rule `KERNEL==\"fuse\", MODE=\"0666\"`)"
    return OK, f"/dev/fuse is mode {mode:04o}", ""


def check_userns() -> tuple[str, str, str]:
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if clone == "0":
        return FAIL, "unprivileged user namespaces are disabled", \
            "as root: `sysctl kernel.unprivileged_userns_clone=1`"
    limit = _read("/proc/sys/user/max_user_namespaces")
    if limit == "0":
        return FAIL, "user.max_user_namespaces is 0", "as root: `sysctl user.max_user_namespaces=15000`"
    aa = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if aa == "1":
        return WARN, "AppArmor restricts unprivileged user namespaces", \
            "install an AppArmor profile for sifbox or set kernel.apparmor_restrict_unprivileged_userns=0"
    return OK, f"unprivileged user namespaces enabled (max {limit or '?'})", ""


def check_subid() -> tuple[str, str, str]:
    import pwd

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return WARN, f"uid {os.getuid()} has no passwd entry", ""
    if os.getuid() == 0:
        return OK, "running as root: --fakeroot needs no subordinate IDs", ""
    found = []
    for path in ("/etc/subuid", "/etc/subgid"):
        text = _read(path) or ""
        if any(line.split(":")[0] in (user, str(os.getuid())) for line in text.splitlines()):
            found.append(path)
    if len(found) == 2:
        return OK, f"{user} has subordinate ID ranges", ""
    return WARN, f"{user} has no range in /etc/subuid and /etc/subgid: --fakeroot maps root only", \
        f"as root: `usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {user}`"


def check_tool(name: str, package: str, severity: str) -> tuple[str, str, str]:
    path = shutil.which(name)
    if path:
        return OK, f"{name}: {path}", ""
    return severity, f"{name} not found", f"install the Debian package `{package}`"


def check_filesystems() -> tuple[str, str, str]:
    text = _read("/proc/filesystems") or ""
    names = {line.split()[-1] for line in text.splitlines() if line.strip()}
    missing = [fs for fs in ("overlay", "squashfs", "fuse", "tmpfs") if fs not in names]
    if "overlay" in missing or "fuse" in missing:
        return FAIL, "kernel lacks " + ", ".join(missing), "load the modules: `modprobe overlay fuse squashfs`"
    if missing:
        return WARN, "kernel lacks " + ", ".join(missing) + " (root's kernel mounts fall back to FUSE)", ""
    return OK, "kernel file systems: overlay, squashfs, fuse, tmpfs", ""


def check_config() -> tuple[str, str, str]:
    from sifbox.config import sysconf
    from sifbox.util.errors import SifboxError

    try:
        cfg = sysconf.load()
    except SifboxError as err:
        return FAIL, err.message, err.hint or ""
    where = cfg.source or "built-in defaults (no /etc/sifbox/sifbox.conf)"
    if cfg.warnings:
        return WARN, f"configuration {where}: {len(cfg.warnings)} warning(s): {cfg.warnings[0]}", ""
    return OK, f"configuration: {where}", ""


def check_cgroups() -> list[tuple[str, str, str, str]]:
    """Which cgroup limits work for this caller (--memory, --cpus, --pids-limit and an OCI
    bundle's linux.resources; `sifbox oci pause`), and why not."""
    from sifbox.hpc import cgroups

    layout, rows = cgroups.report()
    out = [("cgroups", OK, layout, "")]
    hint = ("a site delegates a cgroups v2 subtree with these controllers to each user "
            "(README: Resource limits)")  # fmt: skip
    for name, options, version, reason in rows:
        name = "cgroups:" + name
        if version:
            out.append((name, OK, f"{options}: through cgroups v{version}", ""))
        else:
            out.append((name, WARN, f"{options}: not for this user: {reason}", hint))
    return out


def check_mount_service() -> tuple[str, str, str]:
    """Whether the mount service (`mount service = yes`) answers."""
    from sifbox.config import sysconf
    from sifbox.runtime import nodemount
    from sifbox.util.errors import SifboxError

    try:
        cfg = sysconf.load()
    except SifboxError:
        return WARN, "mount service: unknown (the configuration does not load)", ""
    if not cfg.get_bool("mount service"):
        return OK, "mount service: not used (`mount service = no`)", ""
    where = cfg.get_str("mount service socket")
    try:
        reply = nodemount.ask_service(where, "ping", timeout=5)
    except nodemount.Unshared as err:
        return WARN, f"mount service: not reachable: {err}; launches mount images themselves", (
            "start it: `systemctl start sifbox-mount`, or as root `sifbox mounts serve &`")
    if not reply.get("ok"):
        return WARN, f"mount service at `{where}`: {reply.get('error', 'refused')}", ""
    return OK, f"mount service: reachable at `{where}` (pid {reply.get('pid')})", ""


def check_squashfuse() -> tuple[str, str, str]:
    """Which squashfuse_ll launches run, and whether it has the multithreaded server."""
    from sifbox.image import squashfuse

    path = shutil.which("squashfuse_ll")
    if path is None:
        return WARN, "squashfuse_ll not found: users can't mount SIF or SquashFS images", \
            "install the Debian package `squashfuse`"
    caps = squashfuse.probe(path)
    kind = {True: "multithreaded", False: "single-threaded", None: "threading unknown"}[caps.multithreaded]
    version = squashfuse.version(path) or "version unknown"
    return OK, f"squashfuse_ll: {path} ({version}): {kind}: {caps.reason}", ""


def _mount_facts(conf: str | None) -> tuple[bool, str, bool | None, bool, bool]:
    """(kernel mounts, squashfuse threads setting, the binary's threading, share image
    mounts, mount slave) for this caller."""
    from sifbox.config import sysconf
    from sifbox.image import squashfuse
    from sifbox.util.errors import SifboxError

    try:
        cfg = sysconf.load(conf)
        share, slave = cfg.get_bool("share image mounts"), cfg.get_bool("mount slave")
        setting = str(cfg.get("squashfuse threads"))
    except (SifboxError, KeyError):
        share, slave, setting = True, True, "auto"
    setting = (os.environ.get("SIFBOX_SQUASHFUSE_THREADS") or setting).lower()
    path = shutil.which("squashfuse_ll")
    multithreaded = squashfuse.probe(path).multithreaded if path else None
    return os.geteuid() == 0, setting, multithreaded, share, slave


def _plan(kind: str, conf: str | None, *, no_share: bool = False) -> str:
    from sifbox.runtime import mountpath

    kernel, setting, multithreaded, share, slave = _mount_facts(conf)
    refusal = mountpath.share_refusal(kind=kind, no_share=no_share, share_conf=share, instance=False, fakeroot=False,
                                      root_userns=False, mount_slave=slave)  # fmt: skip
    return mountpath.plan(kind, kernel=kernel, refusal=refusal, threads_setting=setting,
                          multithreaded=multithreaded).describe()  # fmt: skip


def check_mount_paths(conf: str | None = None) -> tuple[str, str, str]:
    """How this caller's images are mounted: SIF/SquashFS by default and with --no-share."""
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    detail = f"image mounts ({who}): SIF/SquashFS: {_plan('squashfs', conf)}; with --no-share: " \
        f"{_plan('squashfs', conf, no_share=True)}"
    return OK, detail, ""


def check_image(path: str, conf: str | None = None) -> tuple[str, str, str]:
    """How `path` would be mounted for this caller (its main image; overlays and bound
    images are mounted per container)."""
    from sifbox.image.source import ImageKind, open_image
    from sifbox.util.errors import SifboxError

    try:
        source = open_image(path, verb="check")
    except SifboxError as err:
        return FAIL, err.message, err.hint or ""
    try:
        kind = ("gocryptfs" if source.encryption is not None else "dir" if source.kind == ImageKind.SANDBOX
                else "squashfs")  # fmt: skip
        what = ("encrypted SIF" if kind == "gocryptfs" else "directory" if kind == "dir" else
                "OCI-SIF" if source.oci is not None else "SIF" if source.kind == ImageKind.SIF else "SquashFS")  # fmt: skip
    finally:
        source.close()
    return OK, f"image `{path}` ({what}): {_plan(kind, conf)}", ""


def run_checks(conf: str | None = None) -> list[tuple[str, str, str, str]]:
    results = [
        ("fuse", *check_fuse()),
        ("userns", *check_userns()),
        ("subid", *check_subid()),
        *check_cgroups(),
        ("filesystems", *check_filesystems()),
        ("config", *check_config()),
        ("mount-service", *check_mount_service()),
    ]
    results += [(f"tool:{name}", *check_tool(name, pkg, sev)) for name, pkg, sev in TOOLS]
    results += [("squashfuse", *check_squashfuse()), ("mounts", *check_mount_paths(conf))]
    return results


def main(args: argparse.Namespace) -> int:
    conf = getattr(args, "config", None)
    results = run_checks(conf)
    if getattr(args, "image", None):
        results.append(("image", *check_image(args.image, conf)))
    if args.json:
        import json

        print(json.dumps([{"check": c, "status": s, "detail": d, "hint": h} for c, s, d, h in results], indent=2))
    else:
        print(f"sifbox {__version__} on {os.uname().release}, python {sys.version.split()[0]} ({sys.executable})")
        for _, status, detail, hint in results:
            print(f"{status:>4}  {detail}")
            if hint and status != OK:
                print(f"      hint: {hint}")
    return 1 if any(s == FAIL for _, s, _, _ in results) else 0
