"""Downloading the blobs of one image into the cache: a few at a time, each once.

One flock per blob (see `sifbox.oci.cache`) makes concurrent pulls share the work: a pull
that finds a blob locked waits for it (and gives up waiting if its own pull fails). Progress
is one bar for all blobs on a terminal, plain step lines otherwise, nothing with `-q`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sifbox.oci import prescan
from sifbox.oci.cache import BlobWriter, Cache
from sifbox.oci.prescan import Prescan

if TYPE_CHECKING:
    from sifbox.oci.registry import RegistryClient


def _log(msg: str) -> None:
    from sifbox.util.log import log

    log.info(msg)


def _show_bar() -> bool:
    try:
        level = int(os.environ.get("SIFBOX_MESSAGELEVEL", "20"))
    except ValueError:
        level = 20
    return level <= 20 and sys.stderr.isatty()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


#: Layers downloaded at the same time (Docker's default too).
PARALLEL_DOWNLOADS = 3


class _Stopped(Exception):
    """Another download of the same pull failed: give up this one."""


class _Progress:
    """Bytes of all the blobs one pull downloads, drawn as one bar on a terminal."""

    def __init__(self, total: int, count: int, draw: bool):
        self.total = max(total, 1)
        self.count = count
        self.done = 0
        self.last = 0.0
        self.enabled = draw
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if self.enabled and (now - self.last >= 0.1 or self.done >= self.total):
                self.last = now
                self.draw()

    def draw(self, end: str = "") -> None:
        done = max(0, min(self.done, self.total))
        width = 30
        filled = width * done // self.total
        bar = ("=" * filled + ">" + " " * width)[:width]
        blobs = f"{self.count} blob" + ("s" if self.count != 1 else "")
        sys.stderr.write(
            f"\rCopying {blobs} [{bar}] {_mib(done)} / {_mib(self.total)} "
            f"{100 * done // self.total:3d}%{end}"
        )
        sys.stderr.flush()


class _TrackedWriter:
    """A BlobWriter that reports progress, hands each chunk to the layer's scan (pass 1 of the
    conversion, see `sifbox.oci.prescan`) and stops when the pull is given up."""

    def __init__(self, writer: BlobWriter, progress: _Progress, stop: threading.Event,
                 scan: Prescan | None = None):  # fmt: skip
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.scan = scan

    @property
    def size(self) -> int:
        return self.writer.size

    def truncate(self) -> None:
        self.progress.add(-self.writer.size)
        self.writer.truncate()
        if self.scan is not None:
            self.scan.abandon()  # it has seen bytes the blob will not have

    def write(self, data: bytes) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.writer.write(data)
        if self.scan is not None:
            self.scan.write(data)
        self.progress.add(len(data))


def _scan(label: str, digest: str, size: int) -> contextlib.AbstractContextManager[Prescan | None]:
    """Layers are scanned while they download; the config and manifests are not."""
    if label != "blob" or size <= 0:
        return contextlib.nullcontext()
    return prescan.scanning(digest, size)


def _ensure_blob(
    client: RegistryClient,
    cache: Cache,
    blob: tuple[str, int, str],
    progress: _Progress,
    stop: threading.Event,
) -> Path:
    digest, size, label = blob
    found = cache.has_blob(digest, size)
    if found:
        return found
    short = digest.split(":", 1)[1][:12]
    waited = False
    while True:  # wait for another pull of this blob, but not past a failure of ours
        with cache.blob_lock(digest, blocking=False) as got:
            if got:
                found = cache.has_blob(digest, size)
                if found:
                    progress.add(size)
                    return found
                if not progress.enabled:
                    _log(f"Copying {label} {short}")
                with cache.blob_writer(digest) as writer, _scan(label, digest, size) as scan:
                    tracked = _TrackedWriter(writer, progress, stop, scan)
                    client.download_blob(digest, size, tracked)  # type: ignore[arg-type]
                    return writer.commit()
        if stop.is_set():
            raise _Stopped
        if not waited:
            _log(f"Waiting for another pull of {label} {short}")
            waited = True
        time.sleep(0.1)


def download_all(client: RegistryClient, cache: Cache, blobs: list[tuple[str, int, str]]) -> None:
    """Every blob of `blobs` (digest, size, label) into the cache, a few at a time; the
    first failure stops the others and is raised."""
    missing = [b for b in dict.fromkeys(blobs) if not cache.has_blob(b[0], b[1])]
    if not missing:
        return
    progress = _Progress(sum(b[1] for b in missing), len(missing), _show_bar())
    stop = threading.Event()
    if progress.enabled:
        progress.draw()
    try:
        if len(missing) == 1:
            _ensure_blob(client, cache, missing[0], progress, stop)
        else:
            _parallel(client, cache, missing, progress, stop)
    finally:
        if progress.enabled:
            progress.draw("\n")


def _parallel(
    client: RegistryClient,
    cache: Cache,
    missing: list[tuple[str, int, str]],
    progress: _Progress,
    stop: threading.Event,
) -> None:
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    client.base_url()  # settle the scheme before the threads start
    pool = ThreadPoolExecutor(max_workers=min(PARALLEL_DOWNLOADS, len(missing)))
    try:
        futures = [pool.submit(_ensure_blob, client, cache, b, progress, stop) for b in missing]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            err = future.exception() if future.done() else None
            if err is not None and not isinstance(err, _Stopped):
                raise err
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
