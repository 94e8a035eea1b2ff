"""Turn a ContainerSpec into the ordered list of mounts that build the
container's root (pure: no system calls; tested without privileges).

Mount targets are container paths; `sandbox.rootfs` resolves them inside the
root without following symlinks out of it, and creates missing mount
points in the root's tmpfs overlay.

The order, as Apptainer mounts them: /proc, /sys, /dev, the host's file
systems (`mount hostfs`), /tmp and /var/tmp, the current directory, the home
directory, the --scratch directories, `bind path` of sifbox.conf,
/etc/resolv.conf, then the caller's --bind and --mount in their order (an
image bound with `image-src=` as a "image" mount of its directory).
"""

from __future__ import annotations

import os

from sifbox.runtime.sandbox.ops import Mount
from sifbox.runtime.spec import ContainerSpec, Host
from sifbox.util.errors import SifboxError, UsageError
from sifbox.util.records import record as namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NamedTuple

    from sifbox.runtime.spec import BindMount

__all__ = ["Mount", "Site", "containment", "default_mounts"]

#: What a contained root container may not write or see of /proc and /sys
#: (runc's default masked and read-only paths).
PROC_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
PROC_MASKED = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
               "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi")  # fmt: skip
SYS_MASKED = ("/sys/firmware", "/sys/devices/virtual/powercap")

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

if TYPE_CHECKING:

    class Site(NamedTuple):
        """What the site's sifbox.conf says about mounts (see `site_from_config`)."""

        mount_proc: bool = True
        mount_sys: bool = True
        mount_dev: str = "yes"
        mount_devpts: bool = True
        mount_home: bool = True
        mount_tmp: bool = True
        bind_paths: tuple[str, ...] = ("/etc/localtime", "/etc/hosts")
        resolv_conf: bool = True
        user_bind_control: bool = True
        mount_slave: bool = True
        session_mib: int = 64
        overlay: str = "yes"
        mount_hostfs: bool = False


# A plain record at run time: `typing` costs start-up time on every launch.
Site = namedtuple(  # type: ignore[misc]
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


def default_mounts(spec: ContainerSpec, host: Host, exists: Callable[[str], bool] = os.path.exists,
                   isdir: Callable[[str], bool] = os.path.isdir, site: Site = DEFAULT_SITE,
                   mountinfo: Callable[[], str] = _read_mountinfo, contained: bool = False,
                   shared_memory: bool = False) -> list[Mount]:  # fmt: skip
    """The container's mounts, in order.

    `contained` (a root container short of full capabilities): the host is seen
    read-only, through a minimal /dev, with private /tmp and /var/tmp, and /proc
    and /sys as `containment` leaves them; binds the caller asks for (`--bind`,
    `--home SRC`, `--workdir`, `--scratch`) are as asked. `shared_memory` (a rank
    of a parallel job): the host's /dev/shm and /tmp, where MPI ranks share
    memory, stay shared.
    """
    off = set(spec.no_mount)
    for key, on in (("proc", site.mount_proc), ("sys", site.mount_sys), ("dev", site.mount_dev != "no"),
                    ("devpts", site.mount_devpts), ("home", site.mount_home), ("tmp", site.mount_tmp)):  # fmt: skip
        if not on:
            off.add(key)
    if (spec.binds or spec.workdir or spec.scratch) and not site.user_bind_control and not host.is_root:
        what = "--bind" if spec.binds else "--workdir" if spec.workdir else "--scratch"
        raise SifboxError(f"can't use {what}: user bind control is disabled by the site's sifbox.conf")
    workdir = _absolute(spec.workdir, host.cwd) if spec.workdir else None
    mounts: list[Mount] = []
    if "proc" not in off:
        # A PID namespace needs its own proc, mounted from inside it (kind
        # "proc", done by the container's init); else the host's.
        mounts.append(Mount("proc", None, "/proc") if spec.pid else Mount("rbind", "/proc", "/proc"))
    if "sys" not in off:
        # A network namespace of its own: a sysfs of its own (its /sys/class/net).
        mounts.append(Mount("sysfs", None, "/sys", readonly=contained) if spec.net
                      else Mount("rbind", "/sys", "/sys", readonly=contained))  # fmt: skip
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
        # /var/tmp of an image may lead to /tmp: "site" skips it there.
        for d, backing in (("/tmp", "tmp"), ("/var/tmp", "var_tmp")):
            if spec.contain and workdir:
                mounts.append(Mount("rbind", os.path.join(workdir, backing), d, policy="site"))
            elif spec.contain or (contained and not shared_memory):
                mounts.append(Mount("tmpfs", None, d, options="mode=1777", policy="site"))
            elif isdir(d):
                mounts.append(Mount("rbind", d, d, policy="site"))
    home_target = spec.home_target or host.home
    before_home = len(mounts)  # the current directory goes here: below home and binds, never over them
    if "home" not in off and not spec.no_home and home_target and home_target != "/":
        if spec.home_source:
            if not isdir(spec.home_source):
                raise SifboxError(
                    f"can't use `{spec.home_source}` as the home directory: it is not a directory",
                    hint="fix the -H/--home option",
                )
            mounts.append(Mount("rbind", spec.home_source, home_target, policy="home"))
        elif spec.contain and workdir:
            mounts.append(Mount("rbind", os.path.join(workdir, "home"), home_target, policy="home"))
        elif spec.contain:
            mounts.append(Mount("tmpfs", None, home_target, options="mode=700", policy="home"))
        elif isdir(host.home):
            mounts.append(Mount("rbind", host.home, home_target, readonly=contained, policy="home"))
    for d in scratch_dirs(spec):
        if workdir:
            mounts.append(Mount("rbind", scratch_source(workdir, d), d, policy="asked"))
        else:
            mounts.append(Mount("tmpfs", None, d, options="mode=755", policy="asked"))
    # `bind path` of sifbox.conf; `--no-mount bind-paths` and `--no-mount
    # /dest` turn these off, never the user's own --bind options. /etc/hosts
    # and /etc/localtime are skipped when they can't be mounted (the image's
    # /etc/hosts a link to a directory), as Apptainer does.
    if "bind-paths" not in off:
        for entry in site.bind_paths:
            src, _, dst = entry.partition(":")
            dst = dst.split(":")[0] or src
            if dst not in off and exists(src):
                policy = "optional" if src in ("/etc/hosts", "/etc/localtime") else "site"
                mounts.append(Mount("bind", src, dst, readonly=True, file=not isdir(src), policy=policy))
    if site.resolv_conf and "/etc/resolv.conf" not in off and exists("/etc/resolv.conf") and not spec.dns:
        mounts.append(Mount("bind", "/etc/resolv.conf", "/etc/resolv.conf", readonly=True, file=True,
                            policy="site"))  # fmt: skip
    index = 0
    for b in spec.binds:
        check_bind(b)
        source = b.source if b.source.startswith("/") else os.path.join(host.cwd, b.source)
        if not exists(source):
            raise SifboxError(
                f"can't bind `{b.source}` to `{b.target}`: the source does not exist",
                hint="create it, or fix the --bind option",
            )
        if is_image_bind(b):
            if isdir(source):
                raise UsageError(f"can't bind `{b.source}` to `{b.target}`: image-src and id are for image files, "
                                 "and this is a directory", hint="bind the directory without image-src")  # fmt: skip
            mounts.append(Mount("image", str(index), b.target, readonly=b.readonly, options=b.image_src or "/",
                                policy="asked"))  # fmt: skip
            index += 1
        else:
            mounts.append(Mount("rbind", source, b.target, readonly=b.readonly, file=not isdir(source),
                                policy="asked"))  # fmt: skip
    if "cwd" not in off and not spec.contain and spec.pwd is None:
        cwd = host.cwd
        # A directory the plan binds already is not bound again, nor a private
        # tmpfs itself (a contained container's /tmp): a directory below one is.
        covered = [m.target for m in mounts if m.kind in ("bind", "rbind") and not m.file]
        private = {_norm(m.target) for m in mounts if m.kind == "tmpfs"}
        if (cwd and cwd != "/" and isdir(cwd) and not any(_under(cwd, t) for t in covered)
                and _norm(cwd) not in private):  # fmt: skip
            if not _system_path(cwd):
                mounts.insert(before_home, Mount("rbind", cwd, cwd, readonly=contained, policy="if-present"))
    if contained:
        mounts += containment(mounts)
    return mounts


def is_image_bind(b: BindMount) -> bool:
    """A bind of a directory in an image file (`image-src=`, `id=`)."""
    return b.image_src is not None or b.part_id is not None


def image_binds(spec: ContainerSpec) -> list[BindMount]:
    """The image binds of `spec`, in the order of the "image" mounts' indexes."""
    return [b for b in spec.binds if is_image_bind(b)]


def scratch_dirs(spec: ContainerSpec) -> list[str]:
    """The --scratch directories (each option may list several, comma-separated)."""
    found: list[str] = []
    for item in spec.scratch:
        for d in filter(None, (p.strip() for p in item.split(","))):
            if not d.startswith("/"):
                raise UsageError(f"can't use --scratch `{d}`: it must be an absolute container path")
            d = _norm(d)
            if d == "/" or any(_under(d, p) for p in ("/proc", "/sys", "/dev")):
                raise UsageError(f"can't use --scratch `{d}`: it would hide a system directory")
            if d not in found:
                found.append(d)
    return found


def scratch_source(workdir: str, d: str) -> str:
    """Where a --scratch directory lives on the host with --workdir (as Apptainer: WORKDIR/scratch/DIR)."""
    return os.path.join(workdir, "scratch", d.lstrip("/"))


def workdir_dirs(spec: ContainerSpec, host: Host) -> list[tuple[str, int]]:
    """The directories of --workdir the container needs, and their modes: made
    (by the caller, on the host) before it starts."""
    if not spec.workdir:
        return []
    workdir = _absolute(spec.workdir, host.cwd)
    found: list[tuple[str, int]] = []
    if spec.contain and "tmp" not in spec.no_mount:
        found += [(os.path.join(workdir, "tmp"), 0o1777), (os.path.join(workdir, "var_tmp"), 0o1777)]
    if spec.contain and not spec.home_source and not spec.no_home and "home" not in spec.no_mount:
        found.append((os.path.join(workdir, "home"), 0o700))
    found += [(scratch_source(workdir, d), 0o750) for d in scratch_dirs(spec)]
    return found


def _absolute(path: str, cwd: str) -> str:
    return os.path.normpath(os.path.join(cwd, path))


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


def check_bind(b: BindMount) -> None:
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


def merge_group(image_text: str, host: Host, group_name: str | Callable[[], str]) -> str:
    """The image's /etc/group with the caller's group appended, unless it has its gid
    (`group_name`: its name, or the function that looks it up, called only then)."""
    lines = [ln for ln in image_text.splitlines() if ln]
    if any(_uid(ln) == host.gid for ln in lines):
        return "\n".join(lines) + "\n"
    if callable(group_name):
        group_name = group_name()
    lines = [ln for ln in lines if ln.split(":")[0] != group_name]
    return "\n".join(lines) + ("\n" if lines else "") + f"{group_name}:x:{host.gid}:\n"


def _uid(line: str) -> int | None:
    parts = line.split(":")
    try:
        return int(parts[2]) if len(parts) > 2 else None
    except ValueError:
        return None
