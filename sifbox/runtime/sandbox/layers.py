"""The container's root file system: the image, the overlays given with
`--overlay`, and the overlay mount that stacks them.

Images are mounted read-only: SquashFS with the kernel on a loop device
(root) or squashfuse_ll (user namespace); EXT3 overlay images with the
kernel (root) or fuse2fs (user namespace). The stack is one overlay mount:

    upper    the writable overlay's `upper/`, else a tmpfs in the session
    lowers   [mount points] + read-only overlays (first given on top) + image

Mount points missing from every layer are made before the overlay is
mounted: in the tmpfs upper, or, when the upper is a persistent overlay,
in a tmpfs layer of their own on top of the lowers (so that they don't
litter the user's overlay). That is the only way that works in a user
namespace, where the image's root-owned directories can't be written.
"""

from __future__ import annotations

import os
import _signal as signal  # the C module: `signal` itself imports enum, ~5 ms of every launch
import time

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.util.errors import ExitStatus, SifboxError, describe_os_error
from sifbox.util.paths import chase_existing, which


class LaunchError(SifboxError):
    reference = "cannot-launch"
    exit_status = ExitStatus.CANNOT_LAUNCH


def fail(what: str, err: OSError, image: str) -> LaunchError:
    return LaunchError(f"can't start a container from `{image}`: {what}: {describe_os_error(err)}")


class Ctx:
    """What mounting needs to know about the container being built."""

    __slots__ = ("host", "image", "log", "session", "squashfuse", "userns")

    def __init__(self, *, host, image: str, log, session: str, squashfuse: str | None, userns: bool):  # type: ignore[no-untyped-def]
        self.host = host
        self.image = image
        self.log = log
        self.session = session
        self.squashfuse = squashfuse
        self.userns = userns


def mount_squashfs(ctx: Ctx, fd: int, offset: int, size: int, target: str, what: str) -> str:
    """Mount the SquashFS at `offset` of `fd` read-only on `target`; return the driver's name."""
    if ctx.squashfuse:
        fuse_server(ctx, ctx.squashfuse, ["-o", f"offset={offset}", f"/proc/self/fd/{fd}"], target,
                    keep=(fd,), flags=sc.MS_RDONLY, what=f"read {what}")  # fmt: skip
        return "squashfuse_ll (user namespace)"
    try:
        dev, loop_fd = sc.attach_loop(fd, offset, size)
        try:
            sc.mount(dev, target, "squashfs", sc.MS_RDONLY | sc.MS_NODEV | sc.MS_NOSUID)
        finally:
            os.close(loop_fd)
    except OSError as err:
        raise fail(f"can't mount the SquashFS of {what}", err, ctx.image) from None
    return f"kernel squashfs on {dev}"


def mount_ext3(ctx: Ctx, fd: int, offset: int, size: int, target: str, writable: bool, what: str) -> str:
    """Mount the EXT3 file system at `offset` of `fd` on `target`."""
    if ctx.userns:
        tool = which("fuse2fs")
        if tool is None:
            raise LaunchError(f"can't start a container from `{ctx.image}`: fuse2fs is not installed, "
                              f"so {what} can't be mounted", hint="install the Debian package `fuse2fs`")  # fmt: skip
        _fuse2fs(ctx, tool, fd, offset, target, writable, what)
        return "fuse2fs (user namespace)"
    flags = sc.MS_NODEV | sc.MS_NOSUID | (0 if writable else sc.MS_RDONLY)
    try:
        dev, loop_fd = sc.attach_loop(fd, offset, size, writable=writable)
        try:
            try:
                sc.mount(dev, target, "ext3", flags)
            except OSError:
                sc.mount(dev, target, "ext4", flags)
        finally:
            os.close(loop_fd)
    except OSError as err:
        raise fail(f"can't mount the EXT3 file system of {what}", err, ctx.image) from None
    return f"kernel ext3 on {dev}"


def fuse_server(ctx: Ctx, binary: str, args: list[str], mountpoint: str, *, keep: tuple[int, ...],
                flags: int, what: str) -> None:  # fmt: skip
    """Mount a FUSE file system served by `binary` (squashfuse_ll, fuse-overlayfs).

    This process opens /dev/fuse and mounts it (it holds CAP_SYS_ADMIN in
    its user namespace; the helper, once exec'd as the user, would not),
    then hands the descriptor to the helper as `/dev/fd/N`. The mount exists
    before the helper runs, so there is nothing to poll; the first access
    waits for the helper to answer. The helper gets SIGKILL when its parent
    dies, so it never outlives the container.
    """
    name = os.path.basename(binary)
    try:
        fuse = os.open("/dev/fuse", os.O_RDWR)
        sc.mount(name, mountpoint, f"fuse.{name}", sc.MS_NOSUID | sc.MS_NODEV | flags,
                 f"fd={fuse},rootmode=40000,user_id={ctx.host.uid},group_id={ctx.host.gid}")  # fmt: skip
    except OSError as err:
        raise fail(f"can't mount FUSE for {name}", err, ctx.image) from None
    logfile = _spawn(ctx, binary, [binary, "-f", *args, f"/dev/fd/{fuse}"], (fuse, *keep))
    os.close(fuse)
    try:
        os.stat(mountpoint)
    except OSError:
        raise _helper_failed(ctx, name, what, logfile) from None


def _fuse2fs(ctx: Ctx, binary: str, fd: int, offset: int, target: str, writable: bool, what: str) -> None:
    """fuse2fs is built on libfuse 2, which can't take a mounted /dev/fuse:
    it mounts by itself, with this user namespace's CAP_SYS_ADMIN kept
    across its exec, and the mount is awaited.

    It runs chrooted in a bind copy of the host's root: pivot_root moves
    every process whose root is the old root into the container, and
    fuse2fs, looking up paths through a root that holds its own mount,
    could wait on itself forever when it shuts down. The session directory
    is shared with its copy while fuse2fs mounts, so the mount shows here.
    """
    copy = os.path.join(ctx.session, f"hostroot-{os.path.basename(target)}")
    os.mkdir(copy)
    try:
        sc.mount(None, ctx.session, None, sc.MS_SHARED)
        sc.mount("/", copy, None, sc.MS_BIND | sc.MS_REC)
    except OSError as err:
        raise fail("can't prepare fuse2fs", err, ctx.image) from None
    try:
        opts = f"offset={offset}" + ("" if writable else ",ro")
        before = os.stat(target).st_dev
        # SIGTERM when the container's supervisor dies: fuse2fs then writes its
        # cached blocks back and closes the file system cleanly.
        logfile = _spawn(ctx, binary, [binary, f"/proc/self/fd/{fd}", target, "-f", "-o", opts], (fd,),
                         ambient_admin=True, death_signal=signal.SIGTERM, root=copy)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.stat(target).st_dev != before:
                    return
            except OSError:
                pass
            time.sleep(0.002)
        raise _helper_failed(ctx, "fuse2fs", f"mount {what}", logfile)
    finally:
        # pivot_root refuses a shared parent mount.
        sc.mount(None, ctx.session, None, sc.MS_PRIVATE)


def _spawn(ctx: Ctx, binary: str, argv: list[str], keep: tuple[int, ...], ambient_admin: bool = False,
           death_signal: int = signal.SIGKILL, root: str | None = None) -> str:  # fmt: skip
    name = os.path.basename(binary)
    logfile = os.path.join(ctx.session, f"{name}.{len(os.listdir(ctx.session))}.log")
    pid = os.fork()
    if pid == 0:  # the FUSE server
        try:
            sc.set_parent_death_signal(death_signal)
            if ambient_admin:
                sc.raise_ambient(sc.CAP_SYS_ADMIN)
            log = os.open(logfile, os.O_WRONLY | os.O_CREAT, 0o600)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(log, 2)
            low = 3
            for fd in sorted(set(keep)):
                os.set_inheritable(fd, True)
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, 1 << 20)
            if root is not None:
                os.chroot(root)
                os.chdir("/")
            os.execv(binary, argv)
        except BaseException as err:  # noqa: BLE001
            os.write(2, f"{name}: {err}\n".encode())
        os._exit(127)
    return logfile


def _helper_failed(ctx: Ctx, name: str, what: str, logfile: str) -> LaunchError:
    try:
        with open(logfile, errors="replace") as f:
            detail = f.read().strip().splitlines()
    except OSError:
        detail = []
    reason = detail[-1] if detail else "it stopped without a message"
    return LaunchError(f"can't start a container from `{ctx.image}`: {name} could not {what}: {reason}")


def stack(ctx: Ctx, lower: str, overlays, points: list[tuple[str, bool]], site) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    """Mount the overlays and the overlay stack on `session/root`.

    Returns the root and whether it is persistently writable (a writable
    `--overlay`, or the SIF's overlay partition with `--writable`).
    """
    session = ctx.session
    lowers: list[str] = []
    upper = work = None
    kernel = True  # the kernel's overlayfs can't take a FUSE upper layer (fuse2fs)
    for i, ov in enumerate(overlays):
        if ov.kind == "dir":
            top = ov.path
        else:
            top = os.path.join(session, f"overlay{i}")
            os.mkdir(top)
            what = f"overlay `{ov.path}`"
            if ov.kind == "squashfs":
                driver = mount_squashfs(ctx, ov.fd, ov.offset, ov.size, top, what)
            else:
                driver = mount_ext3(ctx, ov.fd, ov.offset, ov.size, top, ov.writable, what)
            if ctx.log:
                ctx.log("overlay %s: %s%s", ov.path, driver, "" if ov.writable else ", read-only")
        if ov.writable:
            kernel = not (ov.kind == "ext3" and ctx.userns)
            upper, work = os.path.join(top, "upper"), os.path.join(top, "work")
            for d in (upper, work):
                try:
                    os.makedirs(d, exist_ok=True)
                except OSError as err:
                    raise fail(f"can't use overlay `{ov.path}`", err, ctx.image) from None
        else:
            up = os.path.join(top, "upper")
            lowers.append(up if ov.kind != "squashfs" and os.path.isdir(up) else top)
    persistent = upper is not None
    if upper is None or work is None:
        upper, work = os.path.join(session, "upper"), os.path.join(session, "work")
        os.mkdir(upper)
        os.mkdir(work)
        made_in = upper
    else:
        made_in = os.path.join(session, "points")
        os.mkdir(made_in)
    _make_points(points, made_in, [upper, *lowers, lower] if persistent else [*lowers, lower])
    root = os.path.join(session, "root")
    os.mkdir(root)
    stack_lowers = ([made_in] if persistent else []) + lowers + [lower]
    esc = ":".join(_escape(p) for p in stack_lowers)
    _mount_overlay(ctx, root, f"lowerdir={esc},upperdir={_escape(upper)},workdir={_escape(work)}", site,
                   kernel=kernel, work=work)  # fmt: skip
    return root, persistent


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _make_points(points: list[tuple[str, bool]], made_in: str, layers: list[str]) -> None:
    for target, is_file in points:
        target = os.path.normpath("/" + target.lstrip("/"))
        best = None
        for layer in layers:
            try:
                found, missing = chase_existing(layer, target)
            except OSError:
                continue
            if not missing:
                best = None
                break
            if best is None or len(missing) < len(best[2]):
                best = (layer, found, missing)
        if best is None:
            continue  # present in a layer, or reported when the mount is applied
        layer, found, missing = best
        where = os.path.join(made_in, os.path.relpath(found, layer), *missing[:-1])
        os.makedirs(where, exist_ok=True)
        last = os.path.join(where, missing[-1])
        if is_file:
            os.close(os.open(last, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        else:
            os.makedirs(last, exist_ok=True)


def _mount_overlay(ctx: Ctx, root: str, options: str, site, *, kernel: bool, work: str) -> None:  # type: ignore[no-untyped-def]
    kernel_error: OSError | None = None
    if site.overlay != "driver" and kernel:  # `enable overlay = yes|try`: the kernel's overlayfs first
        try:
            sc.mount("overlay", root, "overlay", sc.MS_NOSUID | sc.MS_NODEV, options)
            return
        except OSError as err:
            kernel_error = err
        # A refused mount may leave its own work/work (mode 000) behind,
        # which fuse-overlayfs could not open.
        for d in ("work", "index"):
            try:
                os.rmdir(os.path.join(work, d))
            except OSError:
                pass
    tool = which("fuse-overlayfs")
    if tool is None:
        if kernel_error is not None:
            raise fail("can't mount the overlay on the image", kernel_error, ctx.image) from None
        raise LaunchError(f"can't start a container from `{ctx.image}`: fuse-overlayfs is not installed",
                          hint="install the Debian package `fuse-overlayfs`, or set `enable overlay = yes`")
    if ctx.log:
        ctx.log("overlay: fuse-overlayfs%s", "" if kernel_error is None else " (the kernel refused overlayfs)")
    # noxattrs: squashfuse_ll answers xattr queries with ENOTSUP, which
    # fuse-overlayfs would pass on as errors for every lookup.
    fuse_server(ctx, tool, ["-o", options + ",noxattrs=1"], root, keep=(), flags=0, what="mount the overlay")
