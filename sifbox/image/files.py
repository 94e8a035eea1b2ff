"""Read files of an image without mounting it.

SquashFS images (a SIF's partition or a bare file) are read with
`unsquashfs -o OFFSET -cat`, sandboxes directly; paths are resolved inside
the image, never on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from sifbox.image.source import ImageKind, ImageSource
from sifbox.util.errors import SifboxError
from sifbox.util.paths import chase

MAX_FILE = 16 << 20


def _unsquashfs() -> str:
    tool = shutil.which("unsquashfs")
    if tool is None:
        raise SifboxError("can't read the image: unsquashfs is not installed",
                          hint="install the Debian package `squashfs-tools`")  # fmt: skip
    return tool


def read_file(src: ImageSource, path: str) -> bytes | None:
    """The content of `path` in the image, or None when it is not there."""
    if src.kind is ImageKind.SANDBOX:
        try:
            with open(chase(src.path, path), "rb") as f:
                return f.read(MAX_FILE)
        except OSError:
            return None
    proc = subprocess.run(
        [_unsquashfs(), "-o", str(src.offset), "-cat", f"/proc/self/fd/{src.fd}", path.lstrip("/")],
        capture_output=True, pass_fds=(src.fd,), check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    return proc.stdout[:MAX_FILE]


def list_dir(src: ImageSource, path: str) -> list[str]:
    """Names of the entries of directory `path` in the image ([] if absent)."""
    if src.kind is ImageKind.SANDBOX:
        try:
            return sorted(os.listdir(chase(src.path, path)))
        except OSError:
            return []
    top = "/" + path.strip("/")
    proc = subprocess.run(
        [_unsquashfs(), "-o", str(src.offset), "-d", "", "-ls", f"/proc/self/fd/{src.fd}", top.lstrip("/")],
        capture_output=True, text=True, pass_fds=(src.fd,), check=False,
    )  # fmt: skip
    names = set()
    for line in proc.stdout.splitlines():
        if line.startswith(top + "/"):
            rest = line[len(top) + 1 :]
            if rest and "/" not in rest:
                names.add(rest)
    return sorted(names)


# -- whole-tree listing and batched reads (SBOM) ----------------------------------------------

#: Most bytes `read_many` extracts in one call (package databases are small).
MAX_BATCH = 512 << 20

_LLS = None


def walk(src: ImageSource) -> list[tuple[str, str, int, str]]:
    """Every entry of the image as (path, type, size, symlink target); type is the
    first letter of `ls -l` (`-` file, `d` directory, `l` symlink, ...)."""
    if src.kind is ImageKind.SANDBOX:
        return _walk_dir(src.path)
    import re

    global _LLS
    if _LLS is None:
        _LLS = re.compile(r"^(\S)\S* \S+\s+(\d+|\d+,\s*\d+) \d{4}-\d\d-\d\d \d\d:\d\d (.*)$")
    proc = subprocess.run(
        [_unsquashfs(), "-o", str(src.offset), "-d", "", "-lls", f"/proc/self/fd/{src.fd}"],
        capture_output=True, text=True, errors="surrogateescape", pass_fds=(src.fd,), check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SifboxError(f"can't list `{src.path}`: unsquashfs failed: {proc.stderr.strip()[:200]}")
    out = []
    for line in proc.stdout.splitlines():
        m = _LLS.match(line)
        if not m or not m.group(3):
            continue
        kind, size, rest = m.group(1), m.group(2), m.group(3)
        target = ""
        if kind == "l" and " -> " in rest:
            rest, target = rest.split(" -> ", 1)
        out.append((rest, kind, int(size) if size.isdigit() else 0, target))
    return out


def _walk_dir(root: str) -> list[tuple[str, str, int, str]]:
    import stat

    out = []
    for top, dirs, files in os.walk(root):
        rel = top[len(root):] or "/"
        for name in dirs + files:
            full = os.path.join(top, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else \
                "-" if stat.S_ISREG(st.st_mode) else "?"
            target = os.readlink(full) if kind == "l" else ""
            out.append((os.path.join(rel, name), kind, st.st_size, target))
    return out


def read_many(src: ImageSource, paths: list[str]) -> dict[str, bytes]:
    """The contents of the regular files `paths` (absolute, in the image) that exist;
    one unsquashfs run for all of them. Symlinks are not followed (give their
    targets, resolved in the image, instead)."""
    found: dict[str, bytes] = {}
    if not paths:
        return found
    if src.kind is ImageKind.SANDBOX:
        base = src.path
    else:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="sifbox-read-", dir=os.environ.get("SIFBOX_TMPDIR"))
        base = os.path.join(tmp, "root")
        try:
            listing = os.path.join(tmp, "paths")
            with open(listing, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.writelines(p.lstrip("/") + "\n" for p in paths if "\n" not in p)
            subprocess.run(
                [_unsquashfs(), "-o", str(src.offset), "-d", base, "-no-xattrs", "-no-wildcards",
                 "-q", "-n", "-ef", listing, f"/proc/self/fd/{src.fd}"],
                capture_output=True, pass_fds=(src.fd,), check=False,
            )  # fmt: skip
            found = _read_below(base, paths)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return found
    return _read_below(base, paths)


def _read_below(base: str, paths: list[str]) -> dict[str, bytes]:
    found = {}
    for path in paths:
        try:
            # chase resolves inside `base`; O_NOFOLLOW refuses a final symlink.
            real = chase(base, path) if base != "/" else path
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "rb") as f:
                import stat

                if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    found[path] = f.read(MAX_FILE)
        except OSError:
            continue
    return found


def read_glob(src: ImageSource, patterns: Sequence[str], dir_patterns: Sequence[str] = ()) -> tuple[dict[str, bytes], list[str]]:
    """The regular files `patterns` match (absolute paths, `*` and `?` within one component)
    and the directories `dir_patterns` match, resolved inside the image; one unsquashfs run
    for a SquashFS image. Symlinks are followed inside the image for the directories on
    the way, never for the files themselves."""
    if src.kind is ImageKind.SANDBOX:
        return read_glob_dir(src.path, patterns, list(dir_patterns))
    import tempfile

    tmp = tempfile.mkdtemp(prefix="sifbox-read-", dir=os.environ.get("SIFBOX_TMPDIR"))
    try:
        base = os.path.join(tmp, "root")
        listing = os.path.join(tmp, "patterns")
        with open(listing, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(p.lstrip("/") + "\n" for p in [*patterns, *dir_patterns] if "\n" not in p)
        subprocess.run(
            [_unsquashfs(), "-o", str(src.offset), "-d", base, "-no-xattrs", "-q", "-n", "-ef", listing,
             f"/proc/self/fd/{src.fd}"],
            capture_output=True, pass_fds=(src.fd,), check=False,
        )  # fmt: skip
        if not os.path.isdir(base):
            return {}, []
        return read_glob_dir(base, patterns, list(dir_patterns))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_glob_dir(base: str, patterns: Sequence[str], dir_patterns: Sequence[str] = ()) -> tuple[dict[str, bytes], list[str]]:
    """`read_glob` in the directory `base` (a root file system)."""
    import fnmatch
    import stat

    def expand(pattern: str) -> list[str]:
        paths = ["/"]
        for part in [p for p in pattern.split("/") if p]:
            if not any(ch in part for ch in "*?["):
                paths = [os.path.join(p, part) for p in paths]
                continue
            found = []
            for p in paths:
                try:
                    names = os.listdir(chase(base, p))
                except OSError:
                    continue
                found += [os.path.join(p, n) for n in sorted(names) if fnmatch.fnmatchcase(n, part)]
            paths = found
        return paths

    files = _read_below(base, sorted({p for pat in patterns for p in expand(pat)}))
    dirs = []
    for path in sorted({p for pat in dir_patterns for p in expand(pat)}):
        try:
            if stat.S_ISDIR(os.stat(chase(base, path)).st_mode):
                dirs.append(path)
        except OSError:
            continue
    return files, dirs
