"""The mount plan applied in the container's root (`rootfs` made the root): binds, tmpfs,
devpts, proc, sysfs, the read-only paths and masks of a contained root container; each
mount point resolved inside the root and pinned by a descriptor before it is mounted on.
"""

from __future__ import annotations

import os

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import LaunchError, Layer, Mount, fail
from sifbox.runtime.sandbox.rootfs import _RESTRICT, set_flags
from sifbox.util.errors import SifboxError, describe_os_error
from sifbox.util.paths import chase, chase_existing


def image_binds(mounts: list[Mount], data: list[str], images: list[Layer] | tuple[Layer, ...]) -> list[Mount]:
    """`mounts` with each "image" mount made a bind of its path (`options`) in
    the data image mounted at `data[int(source)]` (`images[int(source)]`),
    resolved inside that image."""
    out = []
    for m in mounts:
        if m.kind != "image":
            out.append(m)
            continue
        top, image = data[int(m.source)], images[int(m.source)].path
        try:
            source = chase(top, m.options or "/")
            is_dir = os.path.isdir(source)
        except OSError as err:
            raise SifboxError(f"can't bind `{m.options}` of image `{image}` to `{m.target}`: "
                              f"{describe_os_error(err)} in the image") from None  # fmt: skip
        out.append(m._replace(kind="bind", source=source, options=None, file=not is_dir))
    return out


def apply(root: str, mounts: list[Mount], *, image: str, restrict: bool, in_place: bool = False) -> list[str]:
    """Apply the plan's mounts in order; return the warnings of the mounts it
    skipped (see Mount's `policy`). `restrict`: every bind also nosuid,nodev (a
    root container: files of the host can't lend it privileges). `in_place`:
    the root is the image itself (a --writable sandbox), where no mount point
    the caller asked for is made."""
    done: list[str] = []  # where the mounts went (host paths), in order
    warnings = []
    # Resolved once: the root (sifbox's own directory); its /proc unless a link (None: at each
    # mount; no mount of the plan makes it one); the masks made, to bind again (`_mask`); and
    # the kinds of the paths the masks and read-only paths went through (`_Resolved.modes`).
    top, proc = os.path.realpath(root).rstrip("/") + "/", os.path.join(root, "proc")
    resolved = _Resolved(top, None if os.path.islink(proc) else proc)
    try:
        for m in mounts:
            try:
                where = _apply(root, m, image, restrict, done, in_place, resolved)
            except _Skipped:
                warnings.append(f"`{m.target}` is not mounted: it does not exist in the image")
                continue
            except LaunchError as err:
                if m.policy != "optional":
                    raise
                warnings.append(f"`{m.target}` is not mounted: {err.message.partition(': ')[2]}")
                continue
            if where is not None:
                done.append(where)
    finally:
        for fd in resolved.made.values():
            os.close(fd)
    return warnings


class _Resolved:
    """What `apply` resolves once: the root (`top`, ending in /), its /proc, the masks made
    (`_mask`), and `modes`, the kinds of the paths the masks and read-only paths of /proc
    and /sys were resolved through: each looked at once (a mount on a path forgets those
    at and below it; any other mount, all)."""

    __slots__ = ("made", "modes", "proc", "top")

    def __init__(self, top: str, proc: str | None) -> None:
        self.top, self.proc = top, proc
        self.made: dict[bool, int] = {}
        self.modes: dict[str, int] = {}

    def known(self, path: str) -> dict[str, int] | None:
        """`modes` for a path of the container's /proc or /sys (the kernel's, which no one
        but this launch changes meanwhile); None for any other (an OCI bundle's masked path
        in its root directory): looked up afresh."""
        return self.modes if path.startswith(("/proc/", "/sys/")) else None

    def forget(self, path: str) -> None:
        below = path + "/"
        for known in [k for k in self.modes if k == path or k.startswith(below)]:
            del self.modes[known]


def _apply(root: str, m: Mount, image: str, restrict: bool, done: list[str], in_place: bool,
           resolved: _Resolved) -> str | None:  # fmt: skip
    """Apply one mount; return where it went (None: skipped). `done`: where
    the mounts before it went; `resolved`: see `apply`."""
    if m.kind == "mask":
        _mask(root, m.target, image, resolved)
        return None
    if m.kind == "readonly":
        try:
            target = chase(root, m.target, modes=resolved.known(m.target))
        except OSError:
            return None
        resolved.forget(target)
        try:
            sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
            set_flags(target, sc.MOUNT_ATTR_RDONLY | _RESTRICT, recursive=True)
        except OSError as err:
            raise fail(f"can't make `{m.target}` read-only", err, image) from None
        return None
    resolved.modes.clear()
    if in_place and not _place(root, m, image, done):
        return None
    try:
        target = chase(root, m.target, create="file" if m.file else "dir")
    except OSError as err:
        raise fail(f"can't create the mount point `{m.target}`", err, image) from None
    if m.policy in ("site", "optional") and target in done:
        return None  # led by a symlink of the image onto a mount of the plan (/var/tmp -> /tmp)
    top, proc = resolved.top, resolved.proc
    if m.kind != "proc" and m.target != "/proc" and not m.target.startswith("/proc/") and _in_proc(root, target, proc):
        # runc's CVE-2019-19921: a fake /proc (or a file over /proc/self/attr) through a symlink
        raise LaunchError(f"can't start a container from `{image}`: can't mount on `{m.target}`: a symlink "
                          "of the image leads it into /proc")  # fmt: skip
    pinned = _pin(top, target, m.target, image)
    try:
        return _mount_one(root, m, target, f"/proc/self/fd/{pinned}", image, restrict)
    finally:
        os.close(pinned)


def _in_proc(root: str, target: str, proc: str | None = None) -> bool:
    if proc is None:
        try:
            proc = chase(root, "/proc")
        except OSError:
            return False
    return target == proc or target.startswith(proc.rstrip("/") + "/")


def _pin(top: str, target: str, shown: str, image: str) -> int:
    """An O_PATH descriptor of the mount point `target`, which must still be inside
    `top` (the resolved root, ending in /): a component swapped for a symlink since `chase`
    resolved it (runc's CVE-2021-30465) would lead the mount out of the container."""
    try:
        fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise fail(f"can't open the mount point `{shown}`", err, image) from None
    where = os.readlink(f"/proc/self/fd/{fd}")
    if not (where + "/").startswith(top):
        os.close(fd)
        raise LaunchError(f"can't start a container from `{image}`: the mount point `{shown}` moved out of "
                          "the container root while it was being mounted")  # fmt: skip
    return fd


def _mount_one(root: str, m: Mount, target: str, at: str, image: str, restrict: bool) -> str:
    """Mount `m` on the pinned mount point `at` (`target`)."""
    if m.kind == "proc":  # this process is PID 1 of the container's PID namespace
        try:
            sc.mount("proc", at, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        except OSError as err:
            raise fail("can't mount /proc of the PID namespace", err, image) from None
        return target
    try:
        if m.kind in ("bind", "rbind"):
            recursive = m.kind == "rbind"
            sc.mount(m.source, at, None, sc.MS_BIND | (sc.MS_REC if recursive else 0))
            # A device node the plan binds (/dev/null, a GPU) stays a device; nothing else may be one.
            restrict_this = restrict and not (m.kind == "bind" and _is_device(target))
            attrs = ((sc.MOUNT_ATTR_RDONLY if m.readonly else 0) | (_RESTRICT if restrict_this else 0)
                     | (sc.MOUNT_ATTR_NOEXEC if m.noexec else 0))  # fmt: skip
            if attrs:
                set_flags(target, attrs, recursive=recursive)
        elif m.kind == "tmpfs":
            sc.mount("tmpfs", at, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_RDONLY if m.readonly else 0)
                     | (sc.MS_NOEXEC if m.noexec else 0), m.options)  # fmt: skip
        elif m.kind in ("sysfs", "mqueue"):
            flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (sc.MS_RDONLY if m.readonly else 0)
            try:
                sc.mount(m.kind, at, m.kind, flags)
            except PermissionError:
                if m.kind == "mqueue":
                    raise
                # A user namespace without a network namespace of its own can't
                # mount sysfs: the host's, read-only (as runc does rootless).
                sc.mount("/sys", at, None, sc.MS_BIND | sc.MS_REC)
                set_flags(target, _RESTRICT | sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOEXEC, recursive=True)
        elif m.kind == "devpts":
            sc.mount("devpts", at, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, m.options)
            dev = os.path.dirname(target)
            for link, to in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
                if not os.path.lexists(os.path.join(dev, link)):
                    os.symlink(to, os.path.join(dev, link))
        else:
            raise LaunchError(f"can't start a container from `{image}`: unknown mount kind `{m.kind}`")
    except OSError as err:
        what = f"can't bind `{m.source}` to `{m.target}`" if m.source else f"can't mount {m.kind} on `{m.target}`"
        raise fail(what, err, image) from None
    return target


class _Skipped(Exception):
    """A mount of the site's whose mount point is missing from a root written in place."""


def _place(root: str, m: Mount, image: str, done: list[str]) -> bool:
    """On a root that is the image itself: whether the mount point of `m`
    exists or may be made (False: skip the mount). A mount point missing from
    the image is made in a place a mount of the plan brought (a host
    directory, a tmpfs); the home directory gets a tmpfs over its deepest
    existing parent; a mount the caller asked for fails; a mount of the site's
    is skipped (`_Skipped`, which `apply` turns into a warning), the current
    directory too (silently); others are made in the image."""
    try:
        found, missing = chase_existing(root, m.target)
    except OSError as err:
        raise fail(f"can't create the mount point `{m.target}`", err, image) from None
    if not missing or any(found == d or found.startswith(d.rstrip("/") + "/") for d in done):
        return True
    if m.policy == "if-present":
        return False
    if m.policy in ("site", "optional"):
        raise _Skipped
    if m.policy == "home" and found != root.rstrip("/"):
        try:
            sc.mount("tmpfs", found, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=755")
        except OSError as err:
            raise fail(f"can't make a place for the home directory `{m.target}`", err, image) from None
        done.append(found)
        return True
    if m.policy in ("asked", "home"):
        raise SifboxError(f"can't mount on `{m.target}` in `{image}`: it does not exist in the image, and "
                          "--writable does not create it", hint="make it in the sandbox, or mount elsewhere")  # fmt: skip
    return True


def _is_device(path: str) -> bool:
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _mask(root: str, path: str, image: str, resolved: _Resolved) -> None:
    """Hide `path` under an empty read-only directory or file: the first of each kind is made,
    the others are binds of it (descriptors in `resolved.made`), read-only, nosuid, nodev, noexec
    as it is."""
    made = resolved.made
    try:
        known = resolved.known(path)
        target = chase(root, path, modes=known)
        # (what chase found is never a link: it follows them)
        mode = (known or {}).get(target) or os.stat(target).st_mode
    except OSError:
        return  # nothing there to hide
    resolved.forget(target)
    is_dir = mode & 0o170000 == 0o040000
    try:
        if is_dir in made:
            sc.mount(f"/proc/self/fd/{made[is_dir]}", target, None, sc.MS_BIND)
            return
        if is_dir:
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                     "size=0,mode=0555")  # fmt: skip
        else:
            sc.mount("/dev/null", target, None, sc.MS_BIND)
            set_flags(target, sc.MOUNT_ATTR_RDONLY | _RESTRICT | sc.MOUNT_ATTR_NOEXEC)
        made[is_dir] = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise fail(f"can't mask `{path}` (mode {mode:o})", err, image) from None
