"""Turn a ContainerSpec into the ordered list of mounts that build the
container's root (pure: no system calls; tested without privileges).

Mount targets are container paths; `sandbox.rootfs` resolves them inside the
root without following symlinks out of it, and creates missing mount
points in the root's tmpfs overlay.
"""

from __future__ import annotations

import os

from sifbox.runtime.sandbox.ops import Mount
from sifbox.runtime.spec import ContainerSpec, Host
from sifbox.util.errors import SifboxError
from sifbox.util.records import record as namedtuple

__all__ = ["Mount", "Site", "containment", "default_mounts"]

#: What a contained root container may not write or see of /proc and /sys
#: (runc's default masked and read-only paths).
PROC_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
PROC_MASKED = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
               "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi")  # fmt: skip
SYS_MASKED = ("/sys/firmware", "/sys/devices/virtual/powercap")

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

#: What the site's sifbox.conf says about mounts (see `site_from_config`).
Site = namedtuple(
    "Site",
    "mount_proc mount_sys mount_dev mount_devpts mount_home mount_tmp bind_paths resolv_conf user_bind_control "
    "mount_slave session_mib overlay mount_hostfs",
    defaults=(True, True, "yes", True, True, True, ("/etc/localtime", "/etc/hosts"), True, True, True, 64, "yes",
              False),
)
DEFAULT_SITE = Site()


def site_from_config(cfg) -> Site:  # type: ignore[no-untyped-def]
    return Site(
        mount_proc=cfg.get_bool("mount proc"),
        mount_sys=cfg.get_bool("mount sys"),
        mount_dev=cfg.get("mount dev"),
        mount_devpts=cfg.get_bool("mount devpts"),
        mount_home=cfg.get_bool("mount home"),
        mount_tmp=cfg.get_bool("mount tmp"),
        bind_paths=cfg.get_list("bind path"),
        resolv_conf=cfg.get_bool("config resolv_conf"),
        user_bind_control=cfg.get_bool("user bind control"),
        mount_slave=cfg.get_bool("mount slave"),
        session_mib=cfg.get_int("sessiondir max size"),
        overlay=cfg.get("enable overlay"),
        mount_hostfs=cfg.get_bool("mount hostfs"),
    )


#: `mount hostfs` leaves out the host's system trees, as Apptainer does.
HOSTFS_SKIP = ("/proc", "/sys", "/dev", "/run", "/boot", "/var")


def host_file_systems(mountinfo: str) -> list[str]:
    """Mount points of the file systems mounted directly on the host's `/`
    (from /proc/self/mountinfo text), for `mount hostfs = yes`."""
    rows = [line.split() for line in mountinfo.splitlines() if line.strip()]
    root_ids = {r[0] for r in rows if len(r) > 4 and r[4] == "/"}
    found = []
    for r in rows:
        if len(r) < 5 or r[1] not in root_ids or r[4] == "/":
            continue
        point = r[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if point == "/tmp" or any(_under(point, p) for p in HOSTFS_SKIP):
            continue
        if point not in found:
            found.append(point)
    return found


def _read_mountinfo() -> str:
    try:
        with open("/proc/self/mountinfo") as f:
            return f.read()
    except OSError:
        return ""


def default_mounts(spec: ContainerSpec, host: Host, exists=os.path.exists, isdir=os.path.isdir,  # type: ignore[no-untyped-def]
                   site: Site = DEFAULT_SITE, mountinfo=_read_mountinfo, contained: bool = False,
                   shared_memory: bool = False) -> list[Mount]:  # fmt: skip
    """The container's mounts, in order.

    `contained` (a root container short of full capabilities): the host is seen
    read-only, through a minimal /dev, with private /tmp and /var/tmp, and /proc
    and /sys as `containment` leaves them; binds the caller asks for (`--bind`,
    `--home SRC`) are as asked. `shared_memory` (a rank of a parallel job): the
    host's /dev/shm and /tmp, where MPI ranks share memory, stay shared.
    """
    off = set(spec.no_mount)
    for key, on in (("proc", site.mount_proc), ("sys", site.mount_sys), ("dev", site.mount_dev != "no"),
                    ("devpts", site.mount_devpts), ("home", site.mount_home), ("tmp", site.mount_tmp)):  # fmt: skip
        if not on:
            off.add(key)
    mounts: list[Mount] = []
    if "proc" not in off:
        # A PID namespace needs its own proc, mounted from inside it (kind
        # "proc", done by the container's init); else the host's.
        mounts.append(Mount("proc", None, "/proc") if spec.pid else Mount("rbind", "/proc", "/proc"))
    if "sys" not in off:
        mounts.append(Mount("rbind", "/sys", "/sys", readonly=contained))
    if "dev" not in off:
        if spec.contain or site.mount_dev == "minimal" or contained:
            mounts.append(Mount("tmpfs", None, "/dev", options="mode=755,size=1m"))
            mounts += [Mount("bind", f"/dev/{n}", f"/dev/{n}", file=True) for n in DEV_NODES if exists(f"/dev/{n}")]
            if "devpts" not in off:
                mounts.append(Mount("devpts", None, "/dev/pts", options="newinstance,ptmxmode=0666,mode=0620"))
            if shared_memory and contained and not spec.contain:
                mounts.append(Mount("rbind", "/dev/shm", "/dev/shm"))
            else:
                mounts.append(Mount("tmpfs", None, "/dev/shm", options="mode=1777"))
        else:
            mounts.append(Mount("rbind", "/dev", "/dev"))
    if site.mount_hostfs and "hostfs" not in off:
        mounts += [Mount("rbind", p, p, readonly=contained) for p in host_file_systems(mountinfo()) if p not in off]
    if "tmp" not in off:
        for d in ("/tmp", "/var/tmp"):
            if spec.contain or (contained and not shared_memory):
                mounts.append(Mount("tmpfs", None, d, options="mode=1777"))
            elif isdir(d):
                mounts.append(Mount("rbind", d, d))
    home_target = spec.home_target or host.home
    before_home = len(mounts)  # the current directory goes here: below home and binds, never over them
    if "home" not in off and not spec.no_home and home_target and home_target != "/":
        if spec.home_source:
            if not isdir(spec.home_source):
                raise SifboxError(
                    f"can't use `{spec.home_source}` as the home directory: it is not a directory",
                    hint="fix the -H/--home option",
                )
            mounts.append(Mount("rbind", spec.home_source, home_target))
        elif spec.contain:
            mounts.append(Mount("tmpfs", None, home_target, options="mode=700"))
        elif isdir(host.home):
            mounts.append(Mount("rbind", host.home, home_target, readonly=contained))
    # `bind path` of sifbox.conf; `--no-mount bind-paths` and `--no-mount
    # /dest` turn these off, never the user's own --bind options.
    if "bind-paths" not in off:
        for entry in site.bind_paths:
            src, _, dst = entry.partition(":")
            dst = dst.split(":")[0] or src
            if dst not in off and exists(src):
                mounts.append(Mount("bind", src, dst, readonly=True, file=not isdir(src)))
    if site.resolv_conf and "/etc/resolv.conf" not in off and exists("/etc/resolv.conf"):
        mounts.append(Mount("bind", "/etc/resolv.conf", "/etc/resolv.conf", readonly=True, file=True))
    if spec.binds and not site.user_bind_control and not host.is_root:
        raise SifboxError("can't use --bind: user bind control is disabled by the site's sifbox.conf")
    for b in spec.binds:
        check_bind(b)
        if not exists(b.source):
            raise SifboxError(
                f"can't bind `{b.source}` to `{b.target}`: the source does not exist",
                hint="create it, or fix the --bind option",
            )
        mounts.append(Mount("rbind", b.source, b.target, readonly=b.readonly, file=not isdir(b.source)))
    if "cwd" not in off and not spec.contain and spec.pwd is None:
        cwd = host.cwd
        # A directory the plan binds already is not bound again, nor a private
        # tmpfs itself (a contained container's /tmp): a directory below one is.
        covered = [m.target for m in mounts if m.kind in ("bind", "rbind") and not m.file]
        private = {_norm(m.target) for m in mounts if m.kind == "tmpfs"}
        if (cwd and cwd != "/" and isdir(cwd) and not any(_under(cwd, t) for t in covered)
                and _norm(cwd) not in private):  # fmt: skip
            if not _system_path(cwd):
                mounts.insert(before_home, Mount("rbind", cwd, cwd, readonly=contained))
    if contained:
        mounts += containment(mounts)
    return mounts


def containment(mounts: list[Mount]) -> list[Mount]:
    """What a contained root container gets on top of its /proc and /sys:
    the kernel's settings read-only, the sensitive files masked."""
    targets = {m.target for m in mounts}
    out: list[Mount] = []
    if "/proc" in targets:
        out += [Mount("readonly", None, p) for p in PROC_READONLY]
        out += [Mount("mask", None, p) for p in PROC_MASKED]
    if "/sys" in targets:
        out += [Mount("mask", None, p) for p in SYS_MASKED]
    return out


def check_bind(b) -> None:  # type: ignore[no-untyped-def]
    target = _norm(b.target)
    for forbidden in ("/proc", "/sys", "/dev"):
        if _under(target, forbidden) and target != "/dev/shm" and not target.startswith("/dev/shm/"):
            raise SifboxError(
                f"can't bind `{b.source}` to `{b.target}`: binding onto {forbidden} is not allowed"
            )
    if target == "/":
        raise SifboxError(f"can't bind `{b.source}` to `/`: the container root can't be replaced")


def _norm(path: str) -> str:
    """normpath that also folds a leading `//` (POSIX keeps it) into `/`."""
    return os.path.normpath("/" + path.lstrip("/")) if path.startswith("/") else os.path.normpath(path)


def _under(path: str, top: str) -> bool:
    path, top = _norm(path), _norm(top)
    return path == top or path.startswith(top.rstrip("/") + "/")


def _system_path(path: str) -> bool:
    """Container system directories the current directory never replaces."""
    return any(_under(path, p) for p in ("/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc", "/proc", "/sys", "/dev"))


def passwd_line(host: Host, gecos: str | None = None, shell: str = "/bin/sh") -> str:
    """The caller's line: its GECOS field (default: the user name) and shell."""
    fields = [host.user, "x", str(host.uid), str(host.gid), host.user if gecos is None else gecos, host.home, shell]
    return ":".join(f.replace(":", " ").replace("\n", " ") for f in fields) + "\n"


def merge_passwd(image_text: str, host: Host, gecos: str | None = None, shell: str = "/bin/sh") -> str:
    """The image's /etc/passwd with the caller appended (or replaced)."""
    lines = [ln for ln in image_text.splitlines() if ln and ln.split(":")[0] != host.user and _uid(ln) != host.uid]
    return "\n".join(lines) + ("\n" if lines else "") + passwd_line(host, gecos, shell)


def merge_group(image_text: str, host: Host, group_name: str) -> str:
    lines = [ln for ln in image_text.splitlines() if ln]
    if any(_uid(ln) == host.gid for ln in lines):
        return "\n".join(lines) + "\n"
    lines = [ln for ln in lines if ln.split(":")[0] != group_name]
    return "\n".join(lines) + ("\n" if lines else "") + f"{group_name}:x:{host.gid}:\n"


def _uid(line: str) -> int | None:
    parts = line.split(":")
    try:
        return int(parts[2]) if len(parts) > 2 else None
    except ValueError:
        return None
