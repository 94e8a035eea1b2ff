"""The image cache: verified blobs by digest, converted SIF images by manifest digest.

    $SIFBOX_CACHEDIR (else $APPTAINER_CACHEDIR, else $XDG_CACHE_HOME/sifbox, ~/.cache/sifbox)
      blob/oci-layout, blob/blobs/sha256/<hex>   every blob, manifest and config, verified
      oci-tmp/<hex>                              SIF converted from the image manifest <hex>
      layout/<hex>/                              OCI layout of one image: hard links into blob/
      locks/                                     one lock file per blob, image and layout
      tmp/                                       files and layouts being assembled

Safety: nothing reaches its final name before it is complete and verified. A blob is written
into an unnamed file (O_TMPFILE) in its final directory, checked, then linked into place, so a
killed download leaves nothing at all (a named temporary file under tmp/ where O_TMPFILE is not
supported, removed by the next download of that blob). One `flock` per blob makes concurrent
pulls of one image download each blob once: the others wait, then find it in place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sifbox.util.errors import SifboxError, describe_os_error

_DIGEST = re.compile(r"(sha256):([a-f0-9]{64})|(sha512):([a-f0-9]{128})")
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}

#: `cache list/clean -T` types, Apptainer's names, and where each lives.
TYPE_DIRS = {
    "blob": "blob",
    "oci": "oci-tmp",
    "library": "library",
    "oras": "oras",
    "shub": "shub",
    "net": "net",
}
ALL_TYPES = tuple(TYPE_DIRS)


class CacheError(SifboxError):
    reference = "cache"


def default_cache_dir() -> Path:
    for var in ("SIFBOX_CACHEDIR", "APPTAINER_CACHEDIR", "SINGULARITY_CACHEDIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "sifbox"
    home = os.environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".cache" / "sifbox"


#: Variables that disable the cache when true, first set wins (Apptainer reads APPTAINER_DISABLE_CACHE).
DISABLE_VARS = ("SIFBOX_DISABLE_CACHE", "APPTAINER_DISABLE_CACHE", "SINGULARITY_DISABLE_CACHE")


def _true(value: str) -> bool:
    return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")


def cache_in_use(disable: bool = False) -> Path | None:
    """The cache directory to use, or None when the cache is disabled: by `disable`
    (--disable-cache), by SIFBOX_DISABLE_CACHE (or APPTAINER_, SINGULARITY_DISABLE_CACHE),
    or, as in Apptainer, because the directory (or its first existing parent) is not
    writable, as on grids whose homes are read-only: then with a warning, not an error."""
    if disable:
        return None
    for var in DISABLE_VARS:
        value = os.environ.get(var)
        if value is not None and value.strip():
            if _true(value):
                return None
            break
    root = default_cache_dir()
    probe = root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        from sifbox.util.log import log

        log.warning("Cache disabled - cache location %s is not writable.", probe)  # Apptainer's words
        return None
    return root


def split_digest(digest: str) -> tuple[str, str]:
    """("sha256", hex) for a well-formed digest; anything else is refused (it names a path)."""
    m = _DIGEST.fullmatch(digest)
    if not m:
        raise CacheError(f"can't use digest `{digest}`: not of the form sha256:<64 hex digits>")
    return (m[1], m[2]) if m[1] else (m[3], m[4])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Entry:
    """One cache entry, for `cache list` and `cache clean`."""

    type: str
    name: str
    path: Path
    size: int
    mtime: float


class BlobWriter:
    """A file being downloaded for one blob; `commit()` puts it in place, else nothing remains."""

    def __init__(self, cache: Cache, digest: str):
        self.cache = cache
        self.digest = digest
        self.final = cache.blob_path(digest)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._named: Path | None = None
        try:
            self.fd = os.open(self.final.parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
            algo, hexdigest = split_digest(digest)
            self._named = cache.tmp_dir / f"{algo}-{hexdigest}.{os.getpid()}.part"
            self.fd = os.open(
                self._named, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def truncate(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0

    def commit(self) -> Path:
        os.fsync(self.fd)
        os.fchmod(self.fd, 0o644)
        if self._named is None:
            # linkat(AT_SYMLINK_FOLLOW), which os.link only uses when given a directory fd
            dir_fd = os.open(self.final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(f"/proc/self/fd/{self.fd}", self.final.name, dst_dir_fd=dir_fd)
            except FileExistsError:
                pass  # the same verified content, put there without our lock (a cache shared by hand)
            finally:
                os.close(dir_fd)
        else:
            os.replace(self._named, self.final)
            self._named = None
        os.close(self.fd)
        self.fd = -1
        _fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._named is not None:
            with contextlib.suppress(OSError):
                self._named.unlink()
            self._named = None

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Cache:
    """The cache under `root`. With `flat`, `root` itself is the blob store and the single
    OCI layout (for `--disable-cache`: a private directory the caller removes)."""

    def __init__(self, root: str | os.PathLike[str], *, flat: bool = False):
        self.root = Path(root)
        self.flat = flat
        self.blob_root = self.root if flat else self.root / "blob"
        self.lock_dir = self.root / ("locks" if not flat else ".locks")
        self.tmp_dir = self.root / ("tmp" if not flat else ".tmp")
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for d in (self.blob_root / "blobs", self.lock_dir, self.tmp_dir):
                d.mkdir(parents=True, exist_ok=True)
            layout_file = self.blob_root / "oci-layout"
            if not layout_file.exists():
                _write_atomic(layout_file, json.dumps(LAYOUT_VERSION).encode(), self.tmp_dir)
        except OSError as err:
            raise CacheError(
                f"can't use cache directory `{self.root}`: {describe_os_error(err)}",
                hint="set SIFBOX_CACHEDIR to a writable directory, or use --disable-cache",
            ) from err

    def _unusable(self, err: OSError, path: Path) -> CacheError:
        """The cache cannot be written here: most often a directory another user (root)
        made first, in a cache directory both use."""
        owner = ""
        with contextlib.suppress(OSError, KeyError):
            import pwd

            st = os.stat(path.parent)
            if st.st_uid != os.geteuid():
                owner = f" (`{path.parent}` belongs to {pwd.getpwuid(st.st_uid).pw_name})"
        return CacheError(
            f"can't use cache directory `{self.root}`: {describe_os_error(err)}: `{path}`{owner}",
            hint="use a cache directory of your own (SIFBOX_CACHEDIR, default ~/.cache/sifbox), "
            "or --disable-cache",
        )

    @classmethod
    def default(cls) -> Cache:
        return cls(default_cache_dir())

    # --- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algo, hexdigest = split_digest(digest)
        return self.blob_root / "blobs" / algo / hexdigest

    def has_blob(self, digest: str, size: int | None = None) -> Path | None:
        path = self.blob_path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if size is not None and st.st_size != size:
            return None
        return path

    @contextlib.contextmanager
    def lock(self, name: str, *, blocking: bool = True) -> Iterator[bool]:
        """An exclusive flock on `locks/<name>.lock`; yields False if not `blocking` and busy."""
        path = self.lock_dir / f"{name}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise self._unusable(err, path) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def blob_lock(
        self, digest: str, *, blocking: bool = True
    ) -> contextlib.AbstractContextManager[bool]:
        algo, hexdigest = split_digest(digest)
        return self.lock(f"{algo}-{hexdigest}", blocking=blocking)

    def blob_writer(self, digest: str) -> BlobWriter:
        """A writer for `digest`; call it with the blob's lock held. Leftovers of a killed
        earlier download of this blob are removed first."""
        algo, hexdigest = split_digest(digest)
        for stale in self.tmp_dir.glob(f"{algo}-{hexdigest}.*.part"):
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            return BlobWriter(self, digest)
        except (PermissionError, FileNotFoundError) as err:
            raise self._unusable(err, Path(err.filename or self.blob_path(digest))) from None

    # --- converted SIF images ---------------------------------------------------------------

    def sif_path(self, manifest_digest: str) -> Path:
        _, hexdigest = split_digest(manifest_digest)
        return self.root / TYPE_DIRS["oci"] / hexdigest

    def cached_sif(self, manifest_digest: str) -> Path | None:
        path = self.sif_path(manifest_digest)
        return path if path.is_file() else None

    def sif_lock(self, manifest_digest: str) -> contextlib.AbstractContextManager[bool]:
        """Hold it while converting, so that concurrent pulls convert an image once."""
        _, hexdigest = split_digest(manifest_digest)
        return self.lock(f"sif-{hexdigest}")

    def store_sif(self, manifest_digest: str, tmp_path: str | os.PathLike[str]) -> Path:
        """Move the finished SIF `tmp_path` into the cache (atomically); returns its path."""
        final = self.sif_path(manifest_digest)
        src = Path(tmp_path)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(src, final)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                part = self.tmp_dir / f"sif-{final.name}.{os.getpid()}.part"
                try:
                    shutil.copyfile(src, part)
                    shutil.copymode(src, part)
                    with open(part, "rb") as f:
                        os.fsync(f.fileno())
                    os.replace(part, final)
                finally:
                    with contextlib.suppress(OSError):
                        part.unlink()
                src.unlink()
            _fsync_dir(final.parent)
        except OSError as err:
            raise CacheError(
                f"can't store image `{manifest_digest}` in the cache: {describe_os_error(err)}"
            ) from err
        return final

    # --- OCI layouts ------------------------------------------------------------------------

    def make_layout(self, manifest: dict[str, object], blobs: list[str]) -> Path:
        """An OCI image layout holding exactly one image: `manifest` is its descriptor
        (mediaType, digest, size[, platform]); `blobs` every digest it needs (manifest,
        config, layers), which must be in the cache. Returns its directory."""
        digest = str(manifest["digest"])
        index = {"schemaVersion": 2, "manifests": [manifest]}
        index_bytes = json.dumps(index, indent=None, separators=(",", ":")).encode()
        if self.flat:
            _write_atomic(self.blob_root / "index.json", index_bytes, self.tmp_dir)
            for work_dir in (self.lock_dir, self.tmp_dir):  # the layout holds nothing else
                shutil.rmtree(work_dir, ignore_errors=True)
            return self.blob_root
        _, hexdigest = split_digest(digest)
        final = self.root / "layout" / hexdigest
        if _layout_complete(final, blobs):
            return final
        with self.lock(f"layout-{hexdigest}"):
            if _layout_complete(final, blobs):
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            work = self.tmp_dir / f"layout-{hexdigest}.{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            try:
                work.mkdir()
                (work / "oci-layout").write_text(json.dumps(LAYOUT_VERSION))
                (work / "index.json").write_bytes(index_bytes)
                for blob in dict.fromkeys(blobs):
                    src = self.blob_path(blob)
                    algo, h = split_digest(blob)
                    dst = work / "blobs" / algo / h
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(src, dst)
                    except OSError as err:
                        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                            raise
                        os.symlink(src, dst)
                if final.exists():
                    shutil.rmtree(final)  # incomplete: a blob of it was cleaned away
                os.rename(work, final)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        return final

    # --- listing and cleaning ---------------------------------------------------------------

    def entries(self, types: tuple[str, ...] = ALL_TYPES) -> list[Entry]:
        found: list[Entry] = []
        for kind in types:
            if kind == "blob":
                base = self.blob_root / "blobs"
                for algo_dir in sorted(base.iterdir()) if base.is_dir() else ():
                    found.extend(_files(kind, algo_dir))
            else:
                found.extend(_files(kind, self.root / TYPE_DIRS[kind]))
        return found

    def remove(self, entry: Entry) -> bool:
        """Remove one entry unless a pull holds it; False when it is busy."""
        if entry.type == "blob":
            lock = self.blob_lock(f"{entry.path.parent.name}:{entry.name}", blocking=False)
        elif entry.type == "oci":
            lock = self.lock(f"sif-{entry.name}", blocking=False)
        else:
            lock = contextlib.nullcontext(True)
        with lock as got:
            if not got:
                return False
            if entry.path.is_dir() and not entry.path.is_symlink():
                shutil.rmtree(entry.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.path.unlink()
        return True

    def prune(self, *, layouts: bool) -> None:
        """Remove what died with killed pulls (temporary files of dead processes, lock files
        nobody holds) and, with `layouts`, the layout directories (hard links: no data)."""
        for item in list(self.tmp_dir.iterdir()) if self.tmp_dir.is_dir() else ():
            pid = _pid_of(item.name)
            if pid is not None and _pid_alive(pid):
                continue
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    item.unlink()
        if layouts and (self.root / "layout").is_dir():
            for d in (self.root / "layout").iterdir():
                with self.lock(f"layout-{d.name}", blocking=False) as got:
                    if got:
                        shutil.rmtree(d, ignore_errors=True)
        for lock_file in list(self.lock_dir.iterdir()) if self.lock_dir.is_dir() else ():
            with self.lock(lock_file.stem, blocking=False) as got:
                if got:
                    with contextlib.suppress(OSError):
                        lock_file.unlink()


def _pid_of(name: str) -> int | None:
    """The pid in `name.PID` or `name.PID.part`."""
    parts = name.split(".")
    for part in reversed(parts[1:]):
        if part.isdigit():
            return int(part)
    return None


def _files(kind: str, directory: Path) -> list[Entry]:
    out: list[Entry] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith("."):
            continue
        path = directory / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        size = st.st_size
        if path.is_dir():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out.append(Entry(kind, name, path, size, st.st_mtime))
    return out


def _layout_complete(path: Path, blobs: list[str]) -> bool:
    if not (path / "index.json").is_file():
        return False
    for blob in blobs:
        algo, h = split_digest(blob)
        if not (path / "blobs" / algo / h).exists():  # follows a symlink: the blob must exist
            return False
    return True


def _write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.{time.monotonic_ns()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
