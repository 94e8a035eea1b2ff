"""Read files of an image without mounting it.

SquashFS images (a SIF's partition or a bare file) are read with
`unsquashfs -o OFFSET -cat`, sandboxes directly; paths are resolved inside
the image, never on the host.

An image may be hostile: SquashFS compresses repeated text so well that a file of a few
hundred megabytes, or a million files, fit in a megabyte (a decompression bomb). So
nothing here reads without a bound: `unsquashfs` output is read as it comes and the
program is stopped past a limit (and after a time limit); listings and batched reads
follow a `ReadBudget` (bytes, files, entries) and raise `BudgetExceeded` past it rather
than cut silently, since a cut package database would hide the packages after the cut.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence

from sifbox.image.source import ImageKind, ImageSource
from sifbox.util.errors import SifboxError
from sifbox.util.paths import chase

#: Most bytes `read_file` returns (the rest of a longer file is not read).
MAX_FILE = 16 << 20
#: Longest line of an `unsquashfs` listing (a path); PATH_MAX is 4096.
MAX_LINE = 64 << 10
#: Seconds an `unsquashfs` run may take.
TIMEOUT = 600


class ReadBudget:
    """How much may be read out of one image: `max_bytes` of file contents in `max_files`
    files (0: no limit), out of a listing of at most `max_entries` entries, each
    `unsquashfs` run within `timeout` seconds."""

    __slots__ = ("max_bytes", "max_entries", "max_files", "timeout")

    def __init__(self, max_bytes: int = 256 << 20, max_files: int = 20000,
                 max_entries: int = 4_000_000, timeout: float = TIMEOUT) -> None:  # fmt: skip
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.max_entries = max_entries
        self.timeout = timeout

    def check(self, files: int, size: int, what: str = "package database files") -> None:
        """Raise BudgetExceeded if `files` files of `size` bytes in all are too many."""
        if self.max_files and files > self.max_files:
            raise BudgetExceeded(f"{files} {what}, more than the limit of {self.max_files}")
        if self.max_bytes and size > self.max_bytes:
            raise BudgetExceeded(f"{size >> 20} MiB of {what} ({size} bytes), more than the "
                                 f"limit of {self.max_bytes >> 20} MiB")  # fmt: skip


class BudgetExceeded(SifboxError):
    """An image holds more than a `ReadBudget` allows; `reason` says what."""

    reference = "read-budget-exceeded"

    def __init__(self, reason: str) -> None:
        super().__init__(f"can't read the image: {reason} (a limit against decompression bombs)")
        self.reason = reason + " (a limit against decompression bombs)"


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
    argv = [_unsquashfs(), "-o", str(src.offset), "-cat", f"/proc/self/fd/{src.fd}", path.lstrip("/")]
    out = bytearray()
    run = _Run(argv, src.fd, TIMEOUT)
    try:
        for chunk in run.chunks():
            out += chunk
            if len(out) >= MAX_FILE:
                return bytes(out[:MAX_FILE])  # the rest is not read (and unsquashfs stopped)
    except BudgetExceeded:
        return None
    finally:
        run.close()
    return bytes(out) if run.status == 0 else None


def list_dir(src: ImageSource, path: str) -> list[str]:
    """Names of the entries of directory `path` in the image ([] if absent)."""
    if src.kind is ImageKind.SANDBOX:
        try:
            return sorted(os.listdir(chase(src.path, path)))
        except OSError:
            return []
    top = "/" + path.strip("/")
    argv = [_unsquashfs(), "-o", str(src.offset), "-d", "", "-ls", f"/proc/self/fd/{src.fd}", top.lstrip("/")]
    budget = ReadBudget()
    names = set()
    run = _Run(argv, src.fd, budget.timeout)
    try:
        for n, line in enumerate(run.lines()):
            if n >= budget.max_entries:
                break
            if line.startswith(top + "/"):
                rest = line[len(top) + 1 :]
                if rest and "/" not in rest:
                    names.add(rest)
    except BudgetExceeded:
        return []
    finally:
        run.close()
    return sorted(names)


# -- whole-tree listing and batched reads (SBOM) ----------------------------------------------

_LLS = None


def walk(src: ImageSource, budget: ReadBudget | None = None) -> list[tuple[str, str, int, str]]:
    """Every entry of the image as (path, type, size, symlink target); type is the
    first letter of `ls -l` (`-` file, `d` directory, `l` symlink, ...)."""
    return list(iter_entries(src, budget))


def iter_entries(src: ImageSource, budget: ReadBudget | None = None) -> Iterator[tuple[str, str, int, str]]:
    """The entries of `walk`, as they are listed: BudgetExceeded past `budget.max_entries`."""
    budget = budget or ReadBudget()
    count = 0
    for entry in _walk_dir(src.path) if src.kind is ImageKind.SANDBOX else _list_squashfs(src, budget):
        count += 1
        if budget.max_entries and count > budget.max_entries:
            raise BudgetExceeded(f"more than {budget.max_entries} entries in the image")
        yield entry


def _list_squashfs(src: ImageSource, budget: ReadBudget) -> Iterator[tuple[str, str, int, str]]:
    import re

    global _LLS
    if _LLS is None:
        _LLS = re.compile(r"^(\S)\S* \S+\s+(\d+|\d+,\s*\d+) \d{4}-\d\d-\d\d \d\d:\d\d (.*)$")
    argv = [_unsquashfs(), "-o", str(src.offset), "-d", "", "-lls", f"/proc/self/fd/{src.fd}"]
    run = _Run(argv, src.fd, budget.timeout)
    try:
        for line in run.lines():
            m = _LLS.match(line)
            if not m or not m.group(3):
                continue
            kind, size, rest = m.group(1), m.group(2), m.group(3)
            target = ""
            if kind == "l" and " -> " in rest:
                rest, target = rest.split(" -> ", 1)
            yield rest, kind, int(size) if size.isdigit() else 0, target
    finally:
        run.close()
    if run.status != 0:
        raise SifboxError(f"can't list `{src.path}`: unsquashfs failed: {run.stderr[:200]}")


def _walk_dir(root: str) -> Iterator[tuple[str, str, int, str]]:
    import stat

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
            yield os.path.join(rel, name), kind, st.st_size, target


def read_many(src: ImageSource, paths: Iterable[str], budget: ReadBudget | None = None) -> dict[str, bytes]:
    """The contents of the regular files `paths` (absolute, in the image) that exist;
    one unsquashfs run for all of them. Symlinks are not followed (give their
    targets, resolved in the image, instead). BudgetExceeded when there are more
    paths than `budget.max_files`, or more than `budget.max_bytes` to read."""
    budget = budget or ReadBudget()
    paths = list(paths)
    budget.check(len(paths), 0)
    found: dict[str, bytes] = {}
    if not paths:
        return found
    if src.kind is ImageKind.SANDBOX:
        return _read_below(src.path, paths, budget)
    import tempfile

    tmp = tempfile.mkdtemp(prefix="sifbox-read-", dir=os.environ.get("SIFBOX_TMPDIR"))
    base = os.path.join(tmp, "root")
    try:
        listing = os.path.join(tmp, "paths")
        with open(listing, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(p.lstrip("/") + "\n" for p in paths if "\n" not in p)
        try:
            subprocess.run(
                [_unsquashfs(), "-o", str(src.offset), "-d", base, "-no-xattrs", "-no-wildcards",
                 "-q", "-n", "-ef", listing, f"/proc/self/fd/{src.fd}"],
                capture_output=True, pass_fds=(src.fd,), check=False, timeout=budget.timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise BudgetExceeded(f"reading the files took more than {budget.timeout:.0f} s") from None
        found = _read_below(base, paths, budget)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


def _read_below(base: str, paths: list[str], budget: ReadBudget) -> dict[str, bytes]:
    import stat

    found = {}
    total = 0
    for path in paths:
        try:
            # chase resolves inside `base`; O_NOFOLLOW refuses a final symlink.
            real = chase(base, path) if base != "/" else path
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    continue
                left = budget.max_bytes - total if budget.max_bytes else -1
                data = f.read(left + 1) if left >= 0 else f.read()
        except OSError:
            continue
        total += len(data)
        budget.check(len(found) + 1, total)
        found[path] = data
    return found


class _Run:
    """`unsquashfs` with its output read as it comes, under a time limit; `close()` stops
    it (if it still runs) and waits for it. `status` is its exit status once it ended."""

    def __init__(self, argv: list[str], fd: int | None, timeout: float) -> None:
        import tempfile

        self.err = tempfile.TemporaryFile()
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.status: int | None = None
        #: the start of its standard error, once closed
        self.stderr = ""
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self.err, pass_fds=() if fd is None else (fd,))  # fmt: skip
        except BaseException:
            self.err.close()
            raise

    def chunks(self) -> Iterator[bytes]:
        import selectors

        assert self.proc.stdout is not None
        out = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while True:
                left = self.deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise BudgetExceeded(f"unsquashfs took more than {self.timeout:.0f} s")
                chunk = os.read(out, 1 << 16)
                if not chunk:
                    break
                yield chunk
        try:
            self.status = self.proc.wait(max(0.1, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise BudgetExceeded(f"unsquashfs took more than {self.timeout:.0f} s") from None

    def lines(self) -> Iterator[str]:
        rest = b""
        for chunk in self.chunks():
            rest += chunk
            *whole, rest = rest.split(b"\n")
            for line in whole:
                yield line.decode("utf-8", "surrogateescape")
            if len(rest) > MAX_LINE:
                raise BudgetExceeded(f"a path in the image is longer than {MAX_LINE} bytes")
        if rest:
            yield rest.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.seek(0)
        self.stderr = self.err.read(4096).decode("utf-8", "replace").strip()
        self.err.close()


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

    files = _read_below(base, sorted({p for pat in patterns for p in expand(pat)}), ReadBudget())
    dirs = []
    for path in sorted({p for pat in dir_patterns for p in expand(pat)}):
        try:
            if stat.S_ISDIR(os.stat(chase(base, path)).st_mode):
                dirs.append(path)
        except OSError:
            continue
    return files, dirs
