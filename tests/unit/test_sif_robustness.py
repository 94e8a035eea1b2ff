"""Robustness of the SIF reader and writer against damaged and hostile files.

Properties checked (spec sections 4, 5 and `sifbox.formats.sif.image`'s
promise that "nothing read from the file is trusted"):

* On any input -- random bytes, corpus images with mutated header or
  descriptor bytes, truncated images, absurd counts, offsets and sizes --
  `SifImage.load`, every read API and the renderers either work or raise
  `SifError`; never another exception, never a hang, never a read larger
  than the file itself.
* A write operation on such an image either works (and leaves a loadable
  image) or raises `SifError` and leaves the file byte for byte unchanged.
* create/load/add/delete round-trip: descriptors and data come back, IDs are
  slot index + 1 and are reused after delete, objects are placed per the
  alignment rule, and add + delete-with-compact of the last object restores
  the previous bytes.

The Hypothesis runs are derandomized and use no example database, so a run is
the same everywhere (CI included).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import signal
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from sifbox.formats.sif import SifError, SifImage, edit, render
from sifbox.formats.sif import constants as c
from sifbox.formats.sif.layout import (
    Descriptor,
    pad_extra,
    partition_extra,
)
from sifbox.util.errors import SifboxError

from .sifcorpus import IMAGES, load_fuzz_target

T = TypeVar("T")

CORPUS = sorted(IMAGES.glob("*.sif"))
CORPUS_BYTES = {p.name: p.read_bytes() for p in CORPUS}

#: Settings of every property test: no per-example deadline (the guard below
#: catches hangs instead); randomness and the example database follow the profile
#: that tests/conftest.py chose (derandomized in CI).
PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def prop(max_examples: int) -> settings:
    return settings(PROPERTY, max_examples=max_examples)


#: Longest time one example may take before it counts as a hang.
HANG_SECONDS = 10.0
#: A write may grow the file by the new object plus alignment padding at most.

# Header field offsets (spec section 2) and descriptor field offsets (section 3).
H_INT64_FIELDS = {
    "created_at": 64,
    "modified_at": 72,
    "descriptors_free": 80,
    "descriptors_total": 88,
    "descriptors_offset": 96,
    "descriptors_size": 104,
    "data_offset": 112,
    "data_size": 120,
}
D_INT64_FIELDS = {
    "offset": 17,
    "size": 25,
    "size_with_padding": 33,
    "created_at": 41,
    "modified_at": 49,
    "uid": 57,
    "gid": 65,
}
D_UINT32_FIELDS = {"data_type": 0, "id": 5, "group": 9, "link": 13}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# -- guards ----------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the alarm when one example runs for too long."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Turn a hang into a test failure (SIGALRM; a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"no result after {seconds} s: the reader hangs")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# The fuzz target and these tests share one guard: a read larger than the
# whole file, or a write far past its end, means a size from the file was trusted.
GuardedBytesIO = load_fuzz_target().GuardedBytesIO


def note(text: str) -> None:
    """Count an outcome in `--hypothesis-show-statistics` (property tests only)."""
    if currently_in_test_context():
        event(text)


def tolerate(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call `fn`; a SifError gives None, any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except SifError as err:
        assert str(err), "a SifError needs a message"
        return None


def load_or_none(data: bytes) -> tuple[GuardedBytesIO, SifImage | None]:
    fp = GuardedBytesIO(data)
    return fp, tolerate(SifImage.load, fp)


def exercise_reads(img: SifImage) -> None:
    """Every read API and renderer on `img`; results must be self-consistent."""
    for text in (tolerate(render.header_text, img), tolerate(render.list_text, img)):
        assert text is None or isinstance(text, str)
    tolerate(img.groups)
    tolerate(img.primary_partition)
    objects = tolerate(img.objects) or []
    for d in img.descriptors:
        tolerate(render.info_text, d)
    ids = {d.id for d in objects}
    for d in objects:
        got = tolerate(img.get, d.id)
        assert got is not None and got.id == d.id and got.used
        data = tolerate(img.read, d)
        if data is not None:
            assert len(data) == d.size
        limited = tolerate(img.read, d, limit=64)
        if limited is not None:
            assert d.size <= 64 and limited == data
        chunks = tolerate(lambda d=d: b"".join(img.iter_chunks(d)))
        small_chunks = tolerate(lambda d=d: b"".join(img.iter_chunks(d, chunk=1000)))
        assert chunks == data and small_chunks == data, "read() and iter_chunks() disagree"
        digest = tolerate(img.digest, d)
        if data is not None:
            assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    for missing in (0, 2**32 - 1, 2**32, -1):
        if missing not in ids:
            with pytest.raises(SifError):
                img.get(missing)


def check_reads(data: bytes) -> SifImage | None:
    with no_hang():
        _, img = load_or_none(data)
        note("loaded" if img is not None else "refused by load")
        if img is not None:
            exercise_reads(img)
        return img


# -- mutation strategies -------------------------------------------------------------
def used_slots(data: bytes | bytearray) -> int:
    """1 + the index of the last used slot of a well-formed image (0 if none)."""
    total = struct.unpack_from("<q", data, 88)[0]
    return max(
        (i + 1 for i in range(total) if data[c.DESCRIPTORS_OFFSET + i * c.DESCRIPTOR_SIZE + 4]),
        default=0,
    )


def interesting_int64(size: int) -> st.SearchStrategy[int]:
    """Values a hostile or damaged file would carry in an int64 field."""
    # fmt: off
    edges = [
        0, 1, -1, 2, 585, 4096, 32176, 32768, size - 1, size, size + 1,
        2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1, 2**32, 2**40, 2**62, INT64_MAX,
        INT64_MIN, INT64_MIN + 1, -(2**32), -585, -4096,
    ]
    # fmt: on
    return st.one_of(st.sampled_from(edges), st.integers(INT64_MIN, INT64_MAX))


UINT32_EDGES = st.one_of(
    st.sampled_from([0, 1, 2, 3, 48, 49, 0x0FFFFFFF, 0xF0000000, 0xF0000001, 0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF),
)
MUTATIONS: tuple[str, ...] = ("flip", "byte", "header-int64", "descriptor-int64")
MUTATIONS += ("descriptor-uint32", "used", "past-eof", "truncate")


def mutate(draw: st.DrawFn, image: bytes, count: int) -> bytes:
    """`count` damaging edits to the header, the descriptor table or the length
    of a well-formed image (one with its table at offset 4096)."""
    buf = bytearray(image)
    size = len(buf)
    slots = used_slots(buf) + 1  # the used slots and the first free one
    table_end = c.DESCRIPTORS_OFFSET + slots * c.DESCRIPTOR_SIZE

    def slot_at(slot: int, field: int) -> int:
        return c.DESCRIPTORS_OFFSET + slot * c.DESCRIPTOR_SIZE + field

    for _ in range(count):
        kind = draw(st.sampled_from(MUTATIONS))
        if kind in ("flip", "byte"):
            ranges = [(0, min(c.HEADER_SIZE, len(buf)) - 1)]
            ranges.append((c.DESCRIPTORS_OFFSET, min(table_end, len(buf)) - 1))
            ranges = [(lo, hi) for lo, hi in ranges if lo <= hi]
            if not ranges:
                continue
            lo, hi = draw(st.sampled_from(ranges))
            pos = draw(st.integers(lo, hi))
            if kind == "flip":
                buf[pos] ^= 1 << draw(st.integers(0, 7))
            else:
                buf[pos] = draw(st.integers(0, 255))
        elif kind == "header-int64":
            field = H_INT64_FIELDS[draw(st.sampled_from(sorted(H_INT64_FIELDS)))]
            if field + 8 <= len(buf):
                struct.pack_into("<q", buf, field, draw(interesting_int64(size)))
        elif kind == "descriptor-int64":
            name = draw(st.sampled_from(sorted(D_INT64_FIELDS)))
            at = slot_at(draw(st.integers(0, slots - 1)), D_INT64_FIELDS[name])
            if at + 8 <= len(buf):
                struct.pack_into("<q", buf, at, draw(interesting_int64(size)))
        elif kind == "descriptor-uint32":
            name = draw(st.sampled_from(sorted(D_UINT32_FIELDS)))
            at = slot_at(draw(st.integers(0, slots - 1)), D_UINT32_FIELDS[name])
            if at + 4 <= len(buf):
                struct.pack_into("<I", buf, at, draw(UINT32_EDGES))
        elif kind == "used":
            at = slot_at(draw(st.integers(0, slots)), 4)
            if at < len(buf):
                buf[at] = draw(st.sampled_from([0, 1, 2, 0xFF]))
        elif kind == "past-eof":
            # Point an object's data past the end of the file.
            slot = draw(st.integers(0, slots - 1))
            off, sz = slot_at(slot, 17), slot_at(slot, 25)
            if sz + 8 > len(buf):
                continue
            beyond = draw(st.integers(1, 2**20))
            if draw(st.booleans()):
                struct.pack_into("<q", buf, off, size + beyond)
            else:
                (offset,) = struct.unpack_from("<q", buf, off)
                if not -(2**63) <= size - offset + beyond < 2**63:
                    continue  # an earlier mutation made the offset huge: no int64 reaches past it
                struct.pack_into("<q", buf, sz, size - offset + beyond)
        else:  # truncate
            del buf[draw(st.integers(0, len(buf))) :]
    return bytes(buf)


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    """A corpus image with 1-4 damaging edits to its header, table or length."""
    name = draw(st.sampled_from(sorted(CORPUS_BYTES)))
    return mutate(draw, CORPUS_BYTES[name], draw(st.integers(1, 4)))


@st.composite
def synthetic_image(draw: st.DrawFn) -> bytes:
    """A valid magic and version with arbitrary header fields and table bytes."""
    size = draw(st.integers(c.HEADER_SIZE, 8192))
    fields = [draw(interesting_int64(size)) for _ in range(8)]
    head = struct.pack(
        "<32s10s3s3s16sqqqqqqqq",
        draw(st.binary(max_size=32)),
        c.MAGIC,
        c.VERSION,
        draw(st.sampled_from([b"00\0", b"02\0", b"99\0", b"\xff\xff\xff"])),
        draw(st.binary(min_size=16, max_size=16)),
        *fields,
    )
    tail = draw(st.binary(max_size=2 * c.DESCRIPTOR_SIZE))
    return (head + tail).ljust(size, b"\0") if draw(st.booleans()) else head + tail


@st.composite
def generated_image(draw: st.DrawFn) -> bytes:
    """A fresh image of random objects (see `object_inputs`), capacity 1-6, with
    0-3 damaging edits: most stay loadable and many writable, so the paths past
    `load` and `check_writable` get exercised on unusual layouts."""
    objs = draw(object_lists(4))
    capacity = len(objs) + draw(st.integers(0, 2))
    if capacity == 0 or ends_past_file(objs, capacity):
        capacity = len(objs) + 1
        objs = [o for o in objs if input_data(o)]
    fp = io.BytesIO()
    edit.create(fp, objs, deterministic=draw(st.booleans()), capacity=capacity)
    return mutate(draw, fp.getvalue(), draw(st.sampled_from([0, 0, 1, 1, 2, 3])))


# -- reads on arbitrary input ---------------------------------------------------------
def test_sif_error_is_a_sifbox_error() -> None:
    assert issubclass(SifError, SifboxError)


@prop(300)
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    check_reads(data)


@prop(200)
@given(st.binary(max_size=32), st.binary(max_size=4096))
def test_random_bytes_after_magic_and_version(script: bytes, rest: bytes) -> None:
    check_reads(script.ljust(32, b"\0") + c.MAGIC + c.VERSION + rest)


@prop(300)
@given(synthetic_image())
def test_arbitrary_header_fields(data: bytes) -> None:
    check_reads(data)


@prop(200)
@given(generated_image())
def test_generated_images(data: bytes) -> None:
    check_reads(data)


@pytest.mark.parametrize("name", sorted(CORPUS_BYTES))
def test_corpus_images_read_cleanly(name: str) -> None:
    img = check_reads(CORPUS_BYTES[name])
    assert img is not None, f"{name} must load"
    for d in img.objects():
        assert len(img.read(d)) == d.size


@prop(400)
@given(mutated_image())
def test_mutated_corpus_images(data: bytes) -> None:
    check_reads(data)


@prop(100)
@given(st.sampled_from(sorted(CORPUS_BYTES)), st.data())
def test_truncated_corpus_images(name: str, draw: st.DataObject) -> None:
    full = CORPUS_BYTES[name]
    cut = draw.draw(st.integers(0, len(full) - 1))
    img = check_reads(full[:cut])
    if cut < c.DESCRIPTORS_OFFSET + 48 * c.DESCRIPTOR_SIZE:
        assert img is None, f"{name} cut to {cut} bytes lacks its descriptor table"


# -- writes on arbitrary input --------------------------------------------------------
WRITE_OPS = (
    "add",
    "add-partition",
    "add-primary",
    "delete",
    "delete-zero-compact",
    "set-primary",
    "set-metadata",
)


def run_write(img: SifImage, op: str, object_id: int) -> Descriptor | None:
    if op == "add":
        return edit.add_object(img, edit.ObjectInput(c.DataType.GENERIC, b"new object"))
    if op in ("add-partition", "add-primary"):
        part = c.PartType.PRIMSYS if op == "add-primary" else c.PartType.SYSTEM
        return edit.add_object(
            img,
            edit.ObjectInput(
                c.DataType.PARTITION,
                b"hsqs",
                extra=partition_extra(c.FsType.SQUASHFS, part, "amd64"),
            ),
        )
    if op == "delete":
        edit.delete_object(img, object_id)
    elif op == "delete-zero-compact":
        edit.delete_object(img, object_id, zero=True, compact=True)
    elif op == "set-primary":
        edit.set_primary(img, object_id)
    elif op == "set-metadata":
        edit.set_metadata(img, object_id, b'{"robust":true}')
    else:
        raise AssertionError(op)
    return None


def check_write(data: bytes, op: str, pick: int) -> None:
    with no_hang():
        fp, img = load_or_none(data)
        if img is None:
            return
        ids = [d.id for d in img.descriptors if d.used] or [1]
        object_id = ids[pick % len(ids)] if pick >= 0 else -pick
        try:
            added = run_write(img, op, object_id)
        except SifError as err:
            note(f"{op} refused")
            assert str(err)
            assert fp.getvalue() == data, f"failed `{op}` ({err}) modified the file"
            return
        note(f"{op} done")
        after = fp.getvalue()
        again = tolerate(SifImage.load, GuardedBytesIO(after))
        assert again is not None, f"`{op}` succeeded but left an image that does not load"
        exercise_reads(again)
        if added is not None:
            slot = again.descriptors[added.id - 1]
            assert slot == added
            assert again.read(slot) == (b"new object" if op == "add" else b"hsqs")
        elif op.startswith("delete"):
            with pytest.raises(SifError):
                again.get(object_id)
        elif op == "set-metadata":
            assert again.get(object_id).extra == pad_extra(b'{"robust":true}')


@prop(300)
@given(mutated_image(), st.sampled_from(WRITE_OPS), st.integers(-60, 60))
def test_writes_on_mutated_images(data: bytes, op: str, pick: int) -> None:
    check_write(data, op, pick)


@pytest.mark.parametrize("op", WRITE_OPS)
@pytest.mark.parametrize("name", sorted(CORPUS_BYTES))
def test_writes_on_corpus_images(name: str, op: str) -> None:
    for pick in (0, 1, 2, -40, -49):
        check_write(CORPUS_BYTES[name], op, pick)


@prop(100)
@given(synthetic_image(), st.sampled_from(WRITE_OPS), st.integers(-3, 3))
def test_writes_on_arbitrary_headers(data: bytes, op: str, pick: int) -> None:
    check_write(data, op, pick)


@prop(300)
@given(generated_image(), st.sampled_from(WRITE_OPS), st.integers(-3, 3))
def test_writes_on_generated_images(data: bytes, op: str, pick: int) -> None:
    check_write(data, op, pick)


# -- round trips -------------------------------------------------------------------------
ALIGNMENTS = st.sampled_from([None, None, 0, -1, 1, 2, 3, 8, 128, 4096])
GROUPS = st.one_of(st.sampled_from([0, 1, 2, c.MAX_GROUP]), st.integers(0, c.MAX_GROUP))
OTHER_TYPES = [t for t in sorted(c.DATA_TYPE_NAMES) if t != c.DataType.PARTITION] + [0, 1, 0x7FFFFFFF, -1]


@st.composite
def links(draw: st.DrawFn) -> int:
    kind = draw(st.sampled_from(["none", "object", "group", "raw"]))
    if kind == "none":
        return 0
    if kind == "object":
        return edit.link_object(draw(st.integers(1, 0xFFFFFFFF)))
    if kind == "group":
        return edit.link_group(draw(st.integers(1, c.MAX_GROUP)))
    return draw(st.integers(0, 0xFFFFFFFF))


@st.composite
def object_inputs(draw: st.DrawFn, primary: bool = True) -> edit.ObjectInput:
    data = draw(st.binary(max_size=48))
    common: dict[str, Any] = {
        "group_id": draw(GROUPS),
        "link": draw(links()),
        "alignment": draw(ALIGNMENTS),
        "name": draw(st.binary(max_size=c.NAME_SIZE)),
    }
    if draw(st.integers(0, 3)) == 0:
        parts = [c.PartType.SYSTEM, c.PartType.DATA, c.PartType.OVERLAY]
        if primary:
            parts.append(c.PartType.PRIMSYS)
        part_extra = partition_extra(
            draw(st.sampled_from(sorted(c.FS_TYPE_NAMES))),
            draw(st.sampled_from(parts)),
            draw(st.sampled_from(sorted(c.ARCH_CODES))),
        )
        return edit.ObjectInput(c.DataType.PARTITION, data, extra=part_extra, **common)
    extra = draw(st.one_of(st.none(), st.binary(max_size=c.EXTRA_SIZE)))
    return edit.ObjectInput(draw(st.sampled_from(OTHER_TYPES)), data, extra=extra, **common)


def object_lists(max_size: int = 6) -> st.SearchStrategy[list[edit.ObjectInput]]:
    """Random object lists with at most one primary partition (create refuses two)."""

    def one_primary(objs: list[edit.ObjectInput]) -> list[edit.ObjectInput]:
        primaries = [i for i, o in enumerate(objs) if o.is_primary_partition]
        return [o for i, o in enumerate(objs) if i not in primaries[1:]]

    return st.lists(object_inputs(), max_size=max_size).map(one_primary)


def aligned(n: int, alignment: int) -> int:
    return n if alignment <= 0 else -(-n // alignment) * alignment


def input_data(o: edit.ObjectInput) -> bytes:
    assert isinstance(o.data, bytes)
    return o.data


def expected_extra(o: edit.ObjectInput) -> bytes:
    if o.extra is not None:
        return pad_extra(o.extra)
    if o.data_type in (c.DataType.OCI_BLOB, c.DataType.OCI_ROOT_INDEX):
        return pad_extra(b"sha256:" + hashlib.sha256(input_data(o)).hexdigest().encode())
    return bytes(c.EXTRA_SIZE)


def ends_past_file(objs: list[edit.ObjectInput], capacity: int = c.DEFAULT_CAPACITY) -> bool:
    """True when empty objects placed last are padded past the last byte written:
    the zero-length-write case of test_empty_aligned_last_object (a known bug)."""
    end = file_end = c.DESCRIPTORS_OFFSET + capacity * c.DESCRIPTOR_SIZE
    for o in objs:
        end = aligned(end, o.effective_alignment) + len(input_data(o))
        if input_data(o):
            file_end = end
    return end > file_end


@prop(150)
@given(object_lists(), st.integers(0, 3))
def test_create_load_round_trip(objs: list[edit.ObjectInput], spare: int) -> None:
    capacity = len(objs) + spare
    fp = io.BytesIO()
    edit.create(fp, objs, deterministic=True, capacity=capacity)
    data = fp.getvalue()
    img = SifImage.load(io.BytesIO(data))
    h = img.header
    assert h.deterministic and h.descriptors_total == capacity
    assert h.descriptors_free == capacity - len(objs)
    assert h.descriptors_offset == c.DESCRIPTORS_OFFSET
    assert h.data_offset == c.DESCRIPTORS_OFFSET + capacity * c.DESCRIPTOR_SIZE
    got = img.objects()
    assert [d.id for d in got] == list(range(1, len(objs) + 1))  # spec 4.3
    end = h.data_offset
    for o, d in zip(objs, got):
        assert d.data_type == o.data_type
        assert d.group_id == o.group_id and d.raw_group == o.group_id | c.GROUP_MASK
        assert d.raw_link == o.link
        assert d.raw_name == bytes(o.name).ljust(c.NAME_SIZE, b"\0")
        assert d.extra == expected_extra(o)
        assert d.created_at == d.modified_at == c.ZERO_TIME
        # spec 4.2: absolute alignment after the largest end so far
        assert d.offset == aligned(end, o.effective_alignment)
        assert d.size == len(input_data(o))
        assert d.size_with_padding == d.offset - end + d.size
        end = d.offset + d.size
        if o.effective_alignment > 0:
            assert d.offset % o.effective_alignment == 0
        if not ends_past_file(objs, capacity):
            assert img.read(d) == input_data(o)
    assert h.data_size == end - h.data_offset
    if not ends_past_file(objs, capacity):
        assert len(data) == end, "the file ends at the end of the last object (spec 1)"
    primaries = [o for o in objs if o.is_primary_partition]
    expected_arch = (
        Descriptor(extra=primaries[0].extra or b"").partition()[2] if primaries else c.ARCH_UNKNOWN
    )
    assert h.arch == expected_arch


@prop(150)
@given(object_lists(5), object_inputs(primary=False), st.booleans())
def test_add_then_delete_last_with_compact_restores_bytes(
    objs: list[edit.ObjectInput], new: edit.ObjectInput, zero: bool
) -> None:
    assume(not ends_past_file(objs) and not ends_past_file(objs + [new]))
    fp = io.BytesIO()
    edit.create(fp, objs, deterministic=True)
    before = fp.getvalue()
    img = SifImage.load(fp)
    d = edit.add_object(img, new)
    assert d.id == len(objs) + 1
    assert SifImage.load(io.BytesIO(fp.getvalue())).read(d) == input_data(new)
    edit.delete_object(img, d.id, compact=True, zero=zero)
    assert fp.getvalue() == before


@prop(100)
@given(object_lists(6).filter(lambda objs: len(objs) >= 2), st.data())
def test_deleted_ids_are_reused(objs: list[edit.ObjectInput], draw: st.DataObject) -> None:
    assume(not ends_past_file(objs))
    victim = draw.draw(st.integers(1, len(objs)), label="victim")
    new = draw.draw(object_inputs(primary=False), label="new")
    fp = io.BytesIO()
    edit.create(fp, objs, deterministic=True)
    img = SifImage.load(fp)
    edit.delete_object(img, victim)
    remaining = [d.end for d in img.objects()]
    d = edit.add_object(img, new)
    assert d.id == victim, "add uses the first free slot (spec 4.3)"
    unaligned = max(remaining) if remaining else img.header.data_offset
    assert d.offset == aligned(unaligned, new.effective_alignment)
    assert d.size_with_padding == d.offset - unaligned + d.size
    again = SifImage.load(io.BytesIO(fp.getvalue()))
    assert again.get(victim) == d
    if d.size:
        assert again.read(d) == input_data(new)
    assert again.header.descriptors_free == again.header.descriptors_total - len(objs)


@prop(50)
@given(st.lists(object_inputs(), min_size=1, max_size=3), st.integers(0, 2))
def test_create_over_capacity_is_refused(objs: list[edit.ObjectInput], short: int) -> None:
    capacity = max(len(objs) - 1 - short, 0)
    with pytest.raises(SifError, match="do not fit|descriptor"):
        edit.create(io.BytesIO(), objs, deterministic=True, capacity=capacity)


# -- targeted bad inputs, with the messages a user sees --------------------------------------
def header(**fields: int) -> bytearray:
    """A valid empty-image header (48 slots) with some int64 fields replaced."""
    fp = io.BytesIO()
    edit.create(fp, deterministic=True)
    buf = bytearray(fp.getvalue())
    for name, value in fields.items():
        struct.pack_into("<q", buf, H_INT64_FIELDS[name], value)
    return buf


def one_object_image(
    header_fields: dict[str, int] | None = None, /, **descriptor_fields: int
) -> bytearray:
    """A 7-byte generic object in slot 0, with header and descriptor int64 fields replaced."""
    fp = io.BytesIO()
    edit.create(fp, [edit.ObjectInput(c.DataType.GENERIC, b"payload")], deterministic=True)
    buf = bytearray(fp.getvalue())
    for name, value in (header_fields or {}).items():
        struct.pack_into("<q", buf, H_INT64_FIELDS[name], value)
    for name, value in descriptor_fields.items():
        struct.pack_into("<q", buf, c.DESCRIPTORS_OFFSET + D_INT64_FIELDS[name], value)
    return buf


def load_error(data: bytes) -> str:
    with pytest.raises(SifError) as info:
        SifImage.load(io.BytesIO(bytes(data)))
    return str(info.value)


def test_empty_file() -> None:
    assert "not a SIF image" in load_error(b"")


def test_ten_byte_file() -> None:
    msg = load_error(b"0123456789")
    assert "not a SIF image" in msg and "10 bytes" in msg


def test_wrong_magic() -> None:
    buf = header()
    buf[32:42] = b"NOT_MAGIC\0"
    assert "not a SIF image" in load_error(buf)


def test_squashfs_is_not_a_sif_image() -> None:
    assert "not a SIF image" in load_error(b"hsqs" + bytes(200))


def test_version_00() -> None:
    buf = header()
    buf[42:45] = b"00\0"
    msg = load_error(buf)
    assert "incompatible SIF version" in msg and "00" in msg


def test_version_02() -> None:
    buf = header()
    buf[42:45] = b"02\0"
    msg = load_error(buf)
    assert "incompatible SIF version" in msg and "02" in msg


def test_truncated_header() -> None:
    msg = load_error(header()[:100])
    assert "truncated" in msg and "header" in msg and "100 bytes" in msg


def test_header_only() -> None:
    msg = load_error(header()[: c.HEADER_SIZE])
    assert "descriptor table" in msg


def test_descriptor_count_beyond_file_end() -> None:
    buf = header(descriptors_total=49, descriptors_size=49 * c.DESCRIPTOR_SIZE)
    msg = load_error(buf)
    assert "descriptor table" in msg and "end of the file" in msg


def test_descriptor_table_offset_beyond_file_end() -> None:
    assert "descriptor table" in load_error(header(descriptors_offset=2**40))


@pytest.mark.parametrize("total", [2**40, 2**32 - 1, 2**62, INT64_MAX, -1, INT64_MIN])
def test_absurd_descriptor_counts_are_refused_quickly(total: int) -> None:
    buf = header(descriptors_total=total, descriptors_size=INT64_MAX)
    tracemalloc.start()
    start = time.monotonic()
    try:
        msg = load_error(buf)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 1.0
    assert peak < 4 << 20, f"refusing {total} descriptors took {peak} bytes"
    assert "descriptor" in msg


def test_descriptor_size_field_smaller_than_table() -> None:
    assert "descriptor" in load_error(header(descriptors_size=585))


def test_negative_descriptor_offset() -> None:
    assert "descriptor table offset" in load_error(header(descriptors_offset=-4096))


@pytest.mark.parametrize(
    "fields",
    [
        {"offset": 2**40},
        {"offset": 40000},
        {"size": 2**40},
        {"size": INT64_MAX},
        {"offset": INT64_MAX, "size": INT64_MAX},
        {"offset": -1},
        {"size": -1},
        {"offset": INT64_MIN},
    ],
    ids=str,
)
def test_object_outside_the_file(fields: dict[str, int]) -> None:
    img = SifImage.load(GuardedBytesIO(bytes(one_object_image(**fields))))
    (d,) = img.objects()
    tracemalloc.start()
    try:
        for call in (
            lambda: img.read(d),
            lambda: img.read(d, limit=1 << 30),
            lambda: b"".join(img.iter_chunks(d)),
            lambda: img.digest(d),
        ):
            with pytest.raises(SifError, match="outside the file"):
                call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    # Listing and info still work on such an image.
    assert str(d.offset) in render.info_text(d)
    assert render.list_text(img).count("\n") == 4


def test_read_limit_message() -> None:
    img = SifImage.load(io.BytesIO(bytes(one_object_image())))
    (d,) = img.objects()
    with pytest.raises(SifError, match="7 bytes, more than the 3 allowed"):
        img.read(d, limit=3)
    assert img.read(d, limit=7) == b"payload"


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"offset": 2**40}, "outside the data area"),
        ({"size": INT64_MAX}, "outside the data area"),
        ({"offset": 100}, "outside the data area"),
    ],
)
def test_writes_refuse_objects_outside_the_file(fields: dict[str, int], reason: str) -> None:
    data = bytes(one_object_image(**fields))
    for op in WRITE_OPS:
        fp = io.BytesIO(data)
        img = SifImage.load(fp)
        with pytest.raises(SifError, match=reason):
            run_write(img, op, 1)
        assert fp.getvalue() == data


@pytest.mark.parametrize(
    "fields, reason",
    [
        # slot 7 of a table at offset 1 is the real slot 0 (1 + 7 * 585 = 4096)
        ({"descriptors_offset": 1}, "overlaps the header"),
        ({"data_offset": 2**40}, "invalid data offset"),
        ({"data_offset": 4096}, "invalid data offset"),
        ({"descriptors_free": -1}, "free descriptor count"),
        ({"descriptors_free": 49}, "free descriptor count"),
    ],
)
def test_writes_refuse_damaged_headers(fields: dict[str, int], reason: str) -> None:
    data = bytes(one_object_image(fields))
    assert SifImage.load(io.BytesIO(data)).get(1)  # reading tolerates these headers
    for op in WRITE_OPS:
        fp = io.BytesIO(data)
        with pytest.raises(SifError, match=reason):
            run_write(SifImage.load(fp), op, 1)
        assert fp.getvalue() == data


def test_delete_missing_object_leaves_file_unchanged() -> None:
    data = bytes(one_object_image())
    fp = io.BytesIO(data)
    with pytest.raises(SifError, match="object 2 not found"):
        edit.delete_object(SifImage.load(fp), 2)
    assert fp.getvalue() == data


def test_add_without_free_slot_leaves_file_unchanged() -> None:
    fp = io.BytesIO()
    edit.create(fp, [edit.ObjectInput(c.DataType.GENERIC, b"x")], capacity=1, deterministic=True)
    data = fp.getvalue()
    with pytest.raises(SifError, match="insufficient descriptor capacity"):
        edit.add_object(SifImage.load(fp), edit.ObjectInput(c.DataType.GENERIC, b"y"))
    assert fp.getvalue() == data


# -- regressions: bugs the property tests found ------------------------------------------------
def test_empty_aligned_last_object() -> None:
    """An empty partition placed last at 32768 is a zero-length write, so the file
    stays shorter than its offset; the image the library wrote must stay readable
    and writable by the library."""
    fp = io.BytesIO()
    objs = [
        edit.ObjectInput(c.DataType.GENERIC, b"ab"),
        edit.ObjectInput(c.DataType.PARTITION, b"", extra=partition_extra(1, 1, "386")),
    ]
    edit.create(fp, objs, deterministic=True)
    img = SifImage.load(io.BytesIO(fp.getvalue()))
    assert img.read(img.get(2)) == b""
    edit.add_object(img, edit.ObjectInput(c.DataType.GENERIC, b"x"))


def test_failed_add_from_short_stream_leaves_file_unchanged() -> None:
    """After a delete without compact the deleted object's bytes stay at the tail;
    an add that then fails (input shorter than announced) has already written
    over them, and the rollback only truncates what lies past the old end."""
    fp = io.BytesIO()
    objs = [
        edit.ObjectInput(c.DataType.GENERIC, b"abc"),
        edit.ObjectInput(c.DataType.GENERIC, b"defgh"),
    ]
    edit.create(fp, objs, deterministic=True)
    img = SifImage.load(fp)
    edit.delete_object(img, 2)
    before = fp.getvalue()
    with pytest.raises(SifError, match="short"):
        edit.add_object(img, edit.ObjectInput(c.DataType.GENERIC, io.BytesIO(b"xy"), size=10))
    assert fp.getvalue() == before


@pytest.mark.parametrize(
    "fields",
    [
        {"data_type": 2**31},
        {"data_type": -(2**31) - 1},
        {"time": 2**63},
        {"alignment": 2**62},
        {"size": -1},
    ],
    ids=str,
)
def test_out_of_range_object_fields_are_refused(fields: dict[str, int]) -> None:
    """Values that cannot be stored must give a SifError before anything is
    written, from `ObjectInput` itself, `create` or `add_object`."""
    kw: dict[str, Any] = {"data_type": c.DataType.GENERIC, "data": b"x", **fields}
    fp = io.BytesIO()
    edit.create(fp, deterministic=True)
    before = fp.getvalue()
    with pytest.raises(SifError):
        edit.add_object(SifImage.load(fp), edit.ObjectInput(**kw))
    assert fp.getvalue() == before
    with pytest.raises(SifError):
        edit.create(io.BytesIO(), [edit.ObjectInput(**kw)])


@pytest.mark.parametrize("t", [2**63, -(2**63) - 1])
def test_out_of_range_operation_time_is_refused(t: int) -> None:
    fp = io.BytesIO()
    edit.create(fp, [edit.ObjectInput(c.DataType.GENERIC, b"x")], deterministic=True)
    before = fp.getvalue()
    for op in (
        lambda img: edit.set_metadata(img, 1, b"m", time=t),
        lambda img: edit.add_object(img, edit.ObjectInput(c.DataType.GENERIC, b"y"), time=t),
        lambda img: edit.delete_object(img, 1, time=t),
    ):
        with pytest.raises(SifError):
            op(SifImage.load(fp))
        assert fp.getvalue() == before
    with pytest.raises(SifError):
        edit.create(io.BytesIO(), time=t)


def test_iter_chunks_with_a_zero_chunk_size_terminates() -> None:
    img = SifImage.load(io.BytesIO((IMAGES / "one-group.sif").read_bytes()))
    d = img.get(2)
    assert b"".join(img.iter_chunks(d, chunk=0)) == img.read(d)


@pytest.mark.parametrize("epoch", ["soon", str(2**64)])
def test_invalid_source_date_epoch_is_refused(monkeypatch: pytest.MonkeyPatch, epoch: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    with pytest.raises(SifError, match="SOURCE_DATE_EPOCH"):
        edit.create(io.BytesIO())


def test_source_date_epoch_sets_the_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    fp = io.BytesIO()
    edit.create(fp, [edit.ObjectInput(c.DataType.GENERIC, b"x")])
    img = SifImage.load(fp)
    assert img.header.created_at == img.get(1).created_at == 1700000000
