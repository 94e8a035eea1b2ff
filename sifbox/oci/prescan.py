"""Pass 1 of a layer while it downloads: its tar headers read from the bytes on their way
into the cache, so that the conversion after the download starts at pass 2.

A download hands each chunk of a layer blob to its `Prescan`, which pipes it to a thread
that decompresses the stream and keeps the headers, as pass 1 would (with the data offsets).
The result is used only when the download verified the blob's digest and the whole blob
decoded (a registry's layers have no uncompressed digest that pass 1 would check; a layer
that has one is read again). Anything else (a resumed download that started over, a failed
one, a blob that is not a tar, a scan that fails) drops it, and the conversion reads the
layer from the cache as before. The download never waits on a failed scan: it stops feeding it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import tarfile
import threading
from collections.abc import Iterator

from sifbox.oci.layers import LayerStream, grow_pipe, iter_members, open_tar, strip_member
from sifbox.oci.layout import Layer, VerifiedReader

#: Headers a scan keeps at most (a layer of more entries is read again by pass 1).
MAX_MEMBERS = 2_000_000

_lock = threading.Lock()
_scans: dict[str, Prescan] = {}


class Prescan:
    """The headers of one layer blob, read from a copy of its download stream."""

    def __init__(self, digest: str, size: int):
        _reap_at_exit()
        self.digest = digest
        self.size = size
        self.members: list[tarfile.TarInfo] = []
        self.complete = False
        self.failed = False
        self._fed = 0
        r, w = os.pipe2(os.O_CLOEXEC)
        grow_pipe(w)
        self._w: int | None = w
        self._thread = threading.Thread(target=self._scan, args=(r,), name="prescan", daemon=True)
        self._thread.start()

    # -- the download's side
    def write(self, data: bytes) -> None:
        """Another chunk of the blob, in order; a scan that stopped is no longer fed."""
        if self._w is None:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._w, view)
                view = view[n:]
        except OSError:  # the scan stopped (EPIPE): drop it
            self.abandon()
            return
        self._fed += len(data)

    def abandon(self) -> None:
        """The download restarted or failed: the scan's result is not the blob's."""
        self.failed = True
        self.end()

    def end(self) -> None:
        if self._w is not None:
            with contextlib.suppress(OSError):
                os.close(self._w)
            self._w = None

    # -- the scanning thread
    def _scan(self, fd: int) -> None:
        what = f"layer `{self.digest}`"
        raw = io.FileIO(fd, "rb", closefd=True)
        try:
            blob = VerifiedReader(raw, None, None, what)
            stream = LayerStream(blob, Layer(self.digest, self.size, ""), what)
            try:
                tf = open_tar(stream, what)
                for m in iter_members(tf, what):
                    if len(self.members) >= MAX_MEMBERS:
                        raise OverflowError
                    self.members.append(strip_member(m))
                stream.finish(full=True)
                self.complete = True
            finally:
                stream.close()
        except BaseException:  # noqa: BLE001 - any failure only drops the scan
            self.failed = True
        finally:
            raw.close()  # a download still feeding it gets EPIPE, and stops

    def result(self, layer: Layer) -> list[tarfile.TarInfo] | None:
        """The headers of `layer`, when this scan read all of its verified blob."""
        self.end()
        self._thread.join()
        if self.failed or not self.complete or self._fed != self.size or layer.diff_id is not None:
            return None  # (an uncompressed digest to check: pass 1 reads the layer again)
        return self.members


@contextlib.contextmanager
def scanning(digest: str, size: int) -> Iterator[Prescan]:
    """A scan of the download of blob `digest`, registered for `take()` once the download
    returns; dropped when it raises."""
    scan = Prescan(digest, size)
    try:
        yield scan
    except BaseException:
        scan.abandon()
        scan.result(Layer(None, None, ""))  # reap the thread
        raise
    scan.end()
    with _lock:
        _scans[digest] = scan


def take(layer: Layer) -> list[tarfile.TarInfo] | None:
    """The headers pass 1 would read from `layer`, when its download scanned them; once."""
    if layer.digest is None:
        return None
    with _lock:
        scan = _scans.pop(layer.digest, None)
    return scan.result(layer) if scan is not None else None


@functools.cache
def _reap_at_exit() -> None:
    """A pull that fails after some layers downloaded (or finds the image converted by now)
    leaves scans nobody takes: their threads and decompressors end before sifbox does."""
    atexit.register(discard)


def discard() -> None:
    """Forget the scans nobody took (their threads end with their pipes)."""
    with _lock:
        scans = list(_scans.values())
        _scans.clear()
    for scan in scans:
        scan.end()
        scan._thread.join()
