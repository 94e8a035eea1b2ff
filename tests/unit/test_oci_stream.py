"""Layer streams decompressed by a process of their own, and pass 1 read during the download
(`sifbox.oci.prescan`): same result as the in-process path, and hostile blobs never hang the
download nor leave a process or thread behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import threading
import zlib
from pathlib import Path

import pytest

from sifbox.oci import layers as LY
from sifbox.oci import prescan
from sifbox.oci.layout import DigestMismatch, Layer, VerifiedReader
from tests.unit.test_oci_layout import tar_layer

TAR = tar_layer([
    {"name": "d", "type": "dir"}, {"name": "d/a", "data": b"a" * 5000},
    {"name": "d/b", "data": os.urandom(3 << 20)}, {"name": "d/l", "type": "hardlink", "target": "d/a"},
    {"name": "s", "type": "symlink", "target": "d/a"}, {"name": "d/.wh.x"}, {"name": "e/.wh..wh..opq"},
])  # fmt: skip


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read(blob: bytes, *, digest: str | None = None, diff: str | None = None) -> bytes:
    reader = VerifiedReader(io.BytesIO(blob), digest or _digest(blob), len(blob), "blob")  # type: ignore[arg-type]
    stream = LY.LayerStream(reader, Layer(digest, len(blob), "", diff), "layer 1")
    try:
        data = stream.read()
        stream.finish()
        return data
    finally:
        stream.close()


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                found.add(int(pid))
    return found


@pytest.fixture
def no_igzip(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(LY.shutil, "which", lambda name: None if name == "igzip" else real(name))


needs_igzip = pytest.mark.skipif(shutil.which("igzip") is None, reason="igzip (Debian: isal) not installed")


@needs_igzip
def test_igzip_and_zlib_give_the_same_bytes(no_igzip: None) -> None:
    blob = gzip.compress(TAR[:7000], mtime=0) + gzip.compress(TAR[7000:], mtime=0)  # two members
    assert _read(blob, diff=_digest(TAR)) == TAR  # zlib, in-process


@needs_igzip
def test_igzip_reads_several_members() -> None:
    blob = gzip.compress(TAR[:7000], mtime=0) + gzip.compress(TAR[7000:], mtime=0)
    assert LY.decompressor("gzip") is not None
    assert _read(blob, diff=_digest(TAR)) == TAR


@needs_igzip
@pytest.mark.parametrize("cut", [10, 2000, -6])
def test_truncated_gzip_is_an_error_not_a_short_layer(cut: int) -> None:
    blob = gzip.compress(TAR, mtime=0)[:cut]
    before = _children()
    with pytest.raises(LY.LayerError, match="invalid gzip data"):
        _read(blob)
    assert _children() <= before


@needs_igzip
def test_a_blob_that_is_not_its_digest_says_so_rather_than_bad_gzip() -> None:
    good = gzip.compress(TAR, mtime=0)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(DigestMismatch):
        _read(bytes(bad), digest=_digest(good))


@needs_igzip
def test_uncompressed_digest_is_checked() -> None:
    with pytest.raises(DigestMismatch, match="uncompressed"):
        _read(gzip.compress(TAR, mtime=0), diff=_digest(b"other"))


# -- pass 1 during the download -----------------------------------------------------------------
def _scan(blob: bytes, chunk: int = 65536, *, abandon_at: int | None = None) -> list | None:
    digest = _digest(blob)
    with prescan.scanning(digest, len(blob)) as scan:
        for i in range(0, len(blob), chunk):
            if abandon_at is not None and i >= abandon_at:
                scan.abandon()
            scan.write(blob[i : i + chunk])
    return prescan.take(Layer(digest, len(blob), ""))


def _pass1(blob: bytes) -> list[tuple]:
    reader = VerifiedReader(io.BytesIO(blob), _digest(blob), len(blob), "blob")  # type: ignore[arg-type]
    stream = LY.LayerStream(reader, Layer(_digest(blob), len(blob), ""), "layer")
    try:
        return [_key(LY.strip_member(m)) for m in LY.iter_members(LY.open_tar(stream, "t"), "t")]
    finally:
        stream.close()


def _key(m) -> tuple:  # type: ignore[no-untyped-def]
    return (m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.linkname, m.size, m.offset_data, m.sparse,
            m.pax_headers)  # fmt: skip


@pytest.mark.parametrize("compress", [gzip.compress, lambda b: b, zlib.compress], ids=["gzip", "tar", "zlib"])
def test_scan_while_downloading_equals_pass_1(compress) -> None:  # type: ignore[no-untyped-def]
    blob = compress(TAR)
    threads = threading.active_count()
    got = _scan(blob)
    if compress is zlib.compress:  # not a layer format: no result, pass 1 reports the error
        assert got is None
    else:
        assert got is not None and [_key(m) for m in got] == _pass1(blob)
    assert threading.active_count() == threads


@pytest.mark.parametrize("blob", [os.urandom(3 << 20), gzip.compress(os.urandom(3 << 20)),
                                  b"\x1f\x8b" + os.urandom(3 << 20)], ids=["random", "not-tar", "bad-gzip"])  # fmt: skip
def test_hostile_blob_never_blocks_the_download(blob: bytes) -> None:
    before, threads = _children(), threading.active_count()
    done = threading.Event()
    result: list = []
    t = threading.Thread(target=lambda: (result.append(_scan(blob, 1 << 20)), done.set()), daemon=True)
    t.start()
    assert done.wait(60), "the download waited on a failed scan"
    assert result == [None]
    assert _children() <= before and threading.active_count() == threads


def test_abandoned_or_unverified_scan_is_not_used() -> None:
    blob = gzip.compress(TAR)
    assert _scan(blob, abandon_at=65536) is None
    digest = _digest(blob)
    with pytest.raises(RuntimeError), prescan.scanning(digest, len(blob)) as scan:
        scan.write(blob)
        raise RuntimeError  # the download failed (digest, connection): nothing registered
    assert prescan.take(Layer(digest, len(blob), "")) is None
    # a layer with an uncompressed digest to check is read again by pass 1
    with prescan.scanning(digest, len(blob)) as scan:
        scan.write(blob)
    assert prescan.take(Layer(digest, len(blob), "", _digest(TAR))) is None
