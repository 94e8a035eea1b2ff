"""A read-only passthrough FUSE file system that counts the requests it serves: the stand-in
for a parallel file server (NFS, GPFS, Lustre) in benchmarks/metadata.py.

    /usr/bin/python3 benchmarks/countfs.py SOURCE MOUNTPOINT --stats FILE [--timeout 1.0]

Serves SOURCE read-only at MOUNTPOINT (allow_other, default_permissions: every user may
read what the modes allow). Each request the kernel sends is counted by kind (lookup,
getattr, open, read, readdir, ...), with the bytes read. SIGUSR1 writes the counts to FILE
as JSON (atomically) and resets them; SIGTERM/SIGINT unmount and end it.

Like an NFS client, the kernel keeps what the server answered for a while: entries and
attributes for `--timeout` seconds (libfuse's default, 1 s; NFS's acregmin is 3 s) and file
pages across opens (keep_cache: close-to-open, the file did not change). Every open()
reaches the server, as NFS revalidates on open.

Built on pyfuse3 (Debian `python3-pyfuse3`, libfuse 3's low-level API): each request
arrives as the kernel sent it, uncoalesced, which is what is being counted; the high-level
python3-fuse (libfuse 2) would hide lookups behind path resolution, and a libfuse C example
needs a compiler and libfuse3-dev at benchmark time. Speed does not matter here: counts do.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import signal
import sys

import pyfuse3
import trio

XATTR_MISSING = getattr(errno, "ENOATTR", errno.ENODATA)


class CountFS(pyfuse3.Operations):
    def __init__(self, source: str, timeout: float) -> None:
        super().__init__()
        self.source = source
        self.timeout = timeout
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.root_ino = os.lstat(source).st_ino
        self.counts: collections.Counter[str] = collections.Counter()
        self.dirs: dict[int, list[str]] = {}
        self.next_dir = 1

    # -- helpers --
    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _inode(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

    def _attr(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as err:
            raise pyfuse3.FUSEError(err.errno) from None
        e = pyfuse3.EntryAttributes()
        e.st_ino = self._inode(st)
        e.generation = 0
        e.entry_timeout = e.attr_timeout = self.timeout
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns",
                     "st_mtime_ns", "st_ctime_ns", "st_blksize", "st_blocks"):  # fmt: skip
            setattr(e, name, getattr(st, name))
        self.paths[e.st_ino] = path
        return e

    # -- requests --
    async def lookup(self, parent_inode, name, ctx=None):  # type: ignore[no-untyped-def]
        self.counts["lookup"] += 1
        return self._attr(os.path.join(self._path(parent_inode), os.fsdecode(name)))

    async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
        self.counts["getattr"] += 1
        return self._attr(self._path(inode))

    async def readlink(self, inode, ctx):  # type: ignore[no-untyped-def]
        self.counts["readlink"] += 1
        try:
            return os.fsencode(os.readlink(self._path(inode)))
        except OSError as err:
            raise pyfuse3.FUSEError(err.errno) from None

    async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
        self.counts["opendir"] += 1
        path = self._path(inode)
        try:
            names = sorted(os.listdir(path))
        except OSError as err:
            raise pyfuse3.FUSEError(err.errno) from None
        fh = self.next_dir
        self.next_dir += 1
        self.dirs[fh] = [os.path.join(path, n) for n in names]
        return fh

    async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
        self.counts["readdir"] += 1
        entries = self.dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            try:
                attr = self._attr(entries[i])
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(os.path.basename(entries[i])), attr, i + 1):
                break

    async def releasedir(self, fh):  # type: ignore[no-untyped-def]
        self.counts["releasedir"] += 1
        self.dirs.pop(fh, None)

    async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
        self.counts["open"] += 1
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            fd = os.open(self._path(inode), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise pyfuse3.FUSEError(err.errno) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
        self.counts["read"] += 1
        try:
            data = os.pread(fh, size, off)
        except OSError as err:
            raise pyfuse3.FUSEError(err.errno) from None
        self.counts["read_bytes"] += len(data)
        return data

    async def flush(self, fh):  # type: ignore[no-untyped-def]
        self.counts["flush"] += 1

    async def release(self, fh):  # type: ignore[no-untyped-def]
        self.counts["release"] += 1
        try:
            os.close(fh)
        except OSError:
            pass

    async def statfs(self, ctx):  # type: ignore[no-untyped-def]
        self.counts["statfs"] += 1
        try:
            st = os.statvfs(self.source)
        except OSError as err:
            raise pyfuse3.FUSEError(err.errno) from None
        s = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):  # fmt: skip
            setattr(s, name, getattr(st, name))
        return s

    async def getxattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
        self.counts["getxattr"] += 1
        raise pyfuse3.FUSEError(XATTR_MISSING)

    async def listxattr(self, inode, ctx):  # type: ignore[no-untyped-def]
        self.counts["listxattr"] += 1
        return []

    async def access(self, inode, mode, ctx):  # type: ignore[no-untyped-def]
        self.counts["access"] += 1
        return True

    async def forget(self, inode_list):  # type: ignore[no-untyped-def]
        self.counts["forget"] += len(inode_list)


def _dump(fs: CountFS, stats: str) -> None:
    """Write the counts to `stats` (atomically) and start again from zero. Blocking, and
    quick: nothing else is served meanwhile, which is what a snapshot wants."""
    tmp = f"{stats}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(fs.counts), f)
    os.replace(tmp, stats)
    fs.counts.clear()


async def _serve(fs: CountFS, stats: str) -> None:
    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                if signum == signal.SIGUSR1:
                    _dump(fs, stats)
                else:
                    pyfuse3.terminate()
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--stats", required=True, help="where SIGUSR1 writes the counts (JSON)")
    parser.add_argument("--timeout", type=float, default=1.0, help="entry/attribute cache seconds (1.0)")
    args = parser.parse_args()
    fs = CountFS(os.path.realpath(args.source), args.timeout)
    options = set(pyfuse3.default_options) | {"fsname=countfs", "allow_other", "ro", "default_permissions"}
    pyfuse3.init(fs, args.mountpoint, options)
    try:
        trio.run(_serve, fs, args.stats)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
