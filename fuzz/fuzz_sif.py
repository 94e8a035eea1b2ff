"""Fuzz target: the SIF reader, renderers and writer (`sifbox.formats.sif`).

    python fuzz/fuzz_sif.py -max_total_time=60

(see fuzz/fuzzlib.py for the directories and defaults; any libFuzzer option may be added,
`-jobs=2`, `-rss_limit_mb=512`, `-timeout=5`, ...; a FILE argument replays one input).

One input is one file. `TestOneInput` loads it with `SifImage.load`, calls
every read API and renderer, then applies one write operation (chosen by the
last byte of the input) to a BytesIO copy. A crash is any exception that is
not a `SifError`, a read larger than the file (a size taken from the file
on trust), or a failed write that changed the file.

`TestOneInput` does not need atheris (it is imported only when this file is
run), so `tests/unit/test_fuzz_target.py` runs it on the corpus in CI.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.formats.sif import SifError, SifImage, edit, render
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.layout import partition_extra

#: A write may grow the file by the new object plus its alignment at most.
WRITE_SLACK = 1 << 20


def _empty_object_past_slack(img: SifImage) -> bool:
    """New data goes after the last object, as in the reference, even after an empty one
    that an alignment put past the end of the file; `check_writable` allows that up to
    `edit.MAX_ALIGNMENT`, more than this harness lets a BytesIO grow."""
    near, far = img.size + WRITE_SLACK, img.size + edit.MAX_ALIGNMENT
    return any(d.used and not d.size and near < d.offset <= far for d in img.descriptors)


class GuardedBytesIO(io.BytesIO):
    """A BytesIO that refuses reads larger than the file and writes far past its
    end: either would mean a size read from the file was trusted."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.max_read = max(len(data), c.HEADER_SIZE)
        self.max_end = len(data) + WRITE_SLACK

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > self.max_read:
            raise AssertionError(f"read of {size} bytes from a file of {self.max_read} bytes")
        return super().read(size)

    def write(self, b: Any) -> int:
        end = self.tell() + len(memoryview(b))
        if end > self.max_end:
            raise AssertionError(f"write up to offset {end}, past the file end {self.max_end}")
        return super().write(b)


def _tolerate(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except SifError:
        return None


def _reads(img: SifImage) -> None:
    _tolerate(render.header_text, img)
    _tolerate(render.list_text, img)
    _tolerate(img.groups)
    _tolerate(img.primary_partition)
    for d in img.descriptors:
        _tolerate(render.info_text, d)
    for d in _tolerate(img.objects) or []:
        got = _tolerate(img.get, d.id)
        if got is None or got.id != d.id:
            raise AssertionError(f"get({d.id}) does not find a listed object")
        data = _tolerate(img.read, d)
        if data is not None and len(data) != d.size:
            raise AssertionError(f"read() of object {d.id} returned {len(data)} of {d.size} bytes")
        _tolerate(img.read, d, limit=64)
        chunks = _tolerate(lambda d=d: b"".join(img.iter_chunks(d, chunk=4096)))
        if chunks != data:
            raise AssertionError(f"read() and iter_chunks() disagree on object {d.id}")
        digest = _tolerate(img.digest, d)
        if data is not None and digest != "sha256:" + hashlib.sha256(data).hexdigest():
            raise AssertionError(f"digest() of object {d.id} is wrong")
    _tolerate(img.get, 0)


def _write(img: SifImage, op: int, object_id: int) -> None:
    op %= 6
    if op == 0:
        edit.add_object(img, edit.ObjectInput(c.DataType.GENERIC, b"fuzz"))
    elif op == 1:
        extra = partition_extra(c.FsType.SQUASHFS, c.PartType.PRIMSYS, "amd64")
        edit.add_object(img, edit.ObjectInput(c.DataType.PARTITION, b"hsqs", extra=extra))
    elif op == 2:
        edit.delete_object(img, object_id)
    elif op == 3:
        edit.delete_object(img, object_id, zero=True, compact=True)
    elif op == 4:
        edit.set_primary(img, object_id)
    else:
        edit.set_metadata(img, object_id, b'{"fuzz":1}')


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    """Load `data` as a SIF image, read everything, apply one write operation."""
    try:
        img = SifImage.load(GuardedBytesIO(data))
    except SifError:
        return
    _reads(img)

    # One write on a copy; the last two bytes choose the operation and the target.
    op = data[-1] if data else 0
    ids = [d.id for d in img.descriptors if d.used] or [1]
    object_id = ids[(data[-2] if len(data) > 1 else 0) % len(ids)]
    fp = GuardedBytesIO(data)
    if op % 6 in (0, 1) and _empty_object_past_slack(img):
        return
    try:
        img = SifImage.load(fp)
        _write(img, op, object_id)
    except SifError:
        if fp.getvalue() != data:
            raise AssertionError(f"a failed write (op {op % 6}) modified the file") from None
        return
    try:
        again = SifImage.load(GuardedBytesIO(fp.getvalue()))
    except SifError as err:
        raise AssertionError(f"write op {op % 6} succeeded but left an unloadable image") from err
    _reads(again)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
