"""Resolve paths inside an untrusted root without ever leaving it.

An image may hold symlinks such as `/home -> /etc` or `/tmp -> ../../..`;
joining strings and letting the kernel follow them would create mount
points (or bind mounts) on the host. `chase` follows every symlink itself,
treating absolute targets and `..` as relative to the root, like
`openat2(RESOLVE_IN_ROOT)`.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_LINKS = 40


def chase(root: str, path: str, *, create: str | None = None, modes: dict[str, int] | None = None) -> str:
    """The host path of `path` inside `root`, symlinks resolved within `root`.

    With `create="dir"` or `create="file"`, missing components are created
    (directories, and the last one as the given kind). Raises OSError.

    `modes`: the st_mode of host paths already looked at (lstat; 0: missing), read and
    filled in, for the caller who resolves many paths of a tree that does not change
    meanwhile (it forgets what a mount replaced). The path found (but `root` itself) is in it.
    """
    return _resolve(root, path, create=create, stop_at_missing=False, modes=modes)[0]


def chase_existing(root: str, path: str, modes: dict[str, int] | None = None) -> tuple[str, list[str]]:
    """Resolve `path` inside `root` as far as it exists.

    Returns the host path of the longest existing prefix (symlinks resolved
    within `root`) and the missing components after it. Raises OSError when
    a component that exists is not a directory, or on a symlink loop.
    `modes` as for `chase`.
    """
    return _resolve(root, path, create=None, stop_at_missing=True, modes=modes)


def _resolve(root: str, path: str, *, create: str | None, stop_at_missing: bool,
             modes: dict[str, int] | None = None) -> tuple[str, list[str]]:  # fmt: skip
    root = root.rstrip("/") or "/"
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        mode = modes.get(here) if modes is not None else None
        if mode is None:
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                mode = 0  # (missing)
            if modes is not None:
                modes[here] = mode
        if not mode:
            if stop_at_missing:
                return (os.path.join(root, *done) if done else root), [part] + [p for p in todo if p != ".."]
            if create is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), here)
            if todo or create == "dir":
                os.mkdir(here, 0o755)
                mode = stat.S_IFDIR | 0o755
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
                os.close(os.open(here, flags, 0o644))
                mode = stat.S_IFREG | 0o644
            if modes is not None:
                modes[here] = mode
            done.append(part)
            continue
        if stat.S_ISLNK(mode):
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and not stat.S_ISDIR(mode):
            raise OSError(errno.ENOTDIR, "not a directory", os.path.join("/", *done, part))
        done.append(part)
    return (os.path.join(root, *done) if done else root), []


def which(name: str, path: str | None = None) -> str | None:
    """The executable `name` on PATH, like shutil.which (which costs an import
    of shutil, bz2 and lzma on every container launch)."""
    for d in (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def umask() -> int:
    """The process's file mode creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Variables naming the user's configuration directory, first set wins (Apptainer reads
#: APPTAINER_CONFIGDIR): keys, instances, registry logins live below it.
CONFIGDIR_VARS = ("SIFBOX_CONFIGDIR", "APPTAINER_CONFIGDIR", "SINGULARITY_CONFIGDIR")


def config_dir(home: str | None = None) -> str:
    """The user's configuration directory: $SIFBOX_CONFIGDIR, else $APPTAINER_CONFIGDIR (then
    $SINGULARITY_CONFIGDIR), else ~/.sifbox. With `home` (root looking at another user's),
    that user's ~/.sifbox."""
    if home is not None:
        return os.path.join(home, ".sifbox")
    for var in CONFIGDIR_VARS:
        d = os.environ.get(var)
        if d:
            return d
    return os.path.join(os.environ.get("HOME") or os.path.expanduser("~"), ".sifbox")


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the host's (root of a
    fakeroot build is a user outside it)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split()[:3] != ["0", "0", "4294967295"]
    except OSError:
        return False
