"""`sifbox.image.source.open_image` and `sifbox.formats.squashfs` on image
files built in tmp_path (SIF, bare SquashFS, sandbox directory) and on the
shared corpus: where the root file system lies, and the one-line error for
each kind of unusable image. Every returned source is closed."""

from __future__ import annotations

import os
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sifbox.formats import squashfs
from sifbox.formats.sif import constants as c
from sifbox.formats.sif import edit
from sifbox.formats.sif.image import SifImage
from sifbox.formats.sif.layout import partition_extra
from sifbox.image.source import ImageKind, ImageSource, open_image
from sifbox.util.errors import SifboxError

from .sifcorpus import IMAGES, INPUTS

SQUASHFS = (INPUTS / "root.squashfs").read_bytes()
EXT3 = (INPUTS / "root.ext3").read_bytes()
SB = squashfs.SUPERBLOCK_SIZE


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """open_image closes its descriptor on every error; tests close what it returns."""
    before = _open_fds()
    yield
    assert _open_fds() <= before


def _part(data: bytes, fs: int, pt: int, arch: str = "amd64", group: int = 1) -> edit.ObjectInput:
    return edit.ObjectInput(
        c.DataType.PARTITION, data, extra=partition_extra(fs, pt, arch), group_id=group
    )


def make_sif(path: Path, *objects: edit.ObjectInput) -> Path:
    with open(path, "wb+") as fp:
        edit.create(fp, objects, deterministic=True)
    return path


def sif_partition(path: Path, object_id: int | None = None) -> tuple[int, int]:
    with open(path, "rb") as fp:
        img = SifImage.load(fp)
        d = img.primary_partition() if object_id is None else img.get(object_id)
        assert d is not None
        return d.offset, d.size


def expect_error(path: Path | str, verb: str = "run") -> SifboxError:
    with pytest.raises(SifboxError) as exc:
        open_image(str(path), verb)
    err = exc.value
    assert err.message.startswith(f"can't {verb} `{path}`: "), err.message
    assert "\n" not in err.message
    return err


# -- working images ---------------------------------------------------------------------
def test_sif_with_a_primary_squashfs_partition(tmp_path: Path) -> None:
    sif = make_sif(
        tmp_path / "img.sif",
        edit.ObjectInput(c.DataType.GENERIC_JSON, b"{}"),
        _part(SQUASHFS, c.FsType.SQUASHFS, c.PartType.PRIMSYS),
    )
    offset, size = sif_partition(sif)
    src = open_image(str(sif))
    try:
        assert src.kind is ImageKind.SIF
        assert (src.offset, src.size) == (offset, size) == (offset, len(SQUASHFS))
        assert src.offset % c.PARTITION_ALIGNMENT == 0
        assert src.path == str(sif)
        assert src.fd is not None
        assert os.pread(src.fd, len(SQUASHFS), src.offset) == SQUASHFS
    finally:
        src.close()
    assert src.fd is None
    src.close()  # closing twice is harmless


def test_a_sif_is_read_through_its_one_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No copy of the descriptor: on a FUSE or NFS file server every close of a copy is a
    request (FLUSH), one more per rank of a job for nothing."""
    sif = make_sif(tmp_path / "img.sif", _part(SQUASHFS, c.FsType.SQUASHFS, c.PartType.PRIMSYS))

    def no_dup(fd: int) -> int:
        raise AssertionError(f"descriptor {fd} copied")

    monkeypatch.setattr(os, "dup", no_dup)
    src = open_image(str(sif))
    try:
        assert src.kind is ImageKind.SIF and src.size == len(SQUASHFS)
        assert src.fd is not None and os.lseek(src.fd, 0, os.SEEK_CUR) >= 0
    finally:
        src.close()


def test_sif_without_primary_uses_a_system_squashfs_partition(tmp_path: Path) -> None:
    sif = make_sif(
        tmp_path / "sys.sif",
        _part(b"\x00" * 16, c.FsType.RAW, c.PartType.DATA),
        _part(SQUASHFS, c.FsType.SQUASHFS, c.PartType.SYSTEM),
    )
    src = open_image(str(sif))
    try:
        assert src.kind is ImageKind.SIF
        assert (src.offset, src.size) == sif_partition(sif, 2)
    finally:
        src.close()


def test_corpus_two_groups_opens_its_primary_squashfs() -> None:
    path = IMAGES / "two-groups.sif"
    src = open_image(str(path))
    try:
        assert src.kind is ImageKind.SIF
        assert (src.offset, src.size) == sif_partition(path)
        assert src.fd is not None
        assert os.pread(src.fd, 4, src.offset) == squashfs.MAGIC
    finally:
        src.close()


def test_bare_squashfs(tmp_path: Path) -> None:
    path = tmp_path / "root.sqfs"
    path.write_bytes(SQUASHFS)
    src = open_image(str(path), "exec")
    try:
        assert src.kind is ImageKind.SQUASHFS
        assert (src.offset, src.size) == (0, len(SQUASHFS))
        assert src.fd is not None
    finally:
        src.close()


def test_sandbox_directory_is_opened_and_its_real_path_kept(tmp_path: Path) -> None:
    real = tmp_path / "sandbox"
    (real / "bin").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    src = open_image(str(link) + "/")
    try:
        assert src.kind is ImageKind.SANDBOX
        assert src.path == str(real)
        assert src.fd is not None
        assert os.path.samestat(os.fstat(src.fd), os.stat(real))
        assert (src.offset, src.size) == (0, 0)
    finally:
        src.close()


def test_image_source_repr_fields() -> None:
    src = ImageSource("/x", ImageKind.SANDBOX, None)
    assert (src.path, src.kind, src.fd, src.offset, src.size) == (
        "/x",
        ImageKind.SANDBOX,
        None,
        0,
        0,
    )
    src.close()


# -- unusable images ----------------------------------------------------------------------
def test_missing_path(tmp_path: Path) -> None:
    err = expect_error(tmp_path / "nope.sif")
    assert err.message.endswith(": no such file or directory")


@pytest.mark.parametrize("data", [b"", b"hello world\n" * 20, b"\x7fELF" + bytes(200)])
def test_not_an_image(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "file.txt"
    path.write_bytes(data)
    err = expect_error(path, "shell")
    assert err.message.endswith(": not a SIF, SquashFS or sandbox image")
    assert err.hint and "directories" in err.hint


def test_not_a_regular_file() -> None:
    err = expect_error("/dev/null", "exec")
    assert err.message.endswith(": not a regular file or directory")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | ImageSource] = []

    def target() -> None:
        try:
            outcome.append(open_image(str(fifo)))
        except BaseException as err:  # noqa: BLE001 -- reported below
            outcome.append(err)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(0.3)
    hung = t.is_alive()
    if hung:  # unblock the reader's open() so the thread ends and its fd is closed
        w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        t.join(5)
        os.close(w)
    for o in outcome:
        if isinstance(o, ImageSource):
            o.close()
    assert not hung, "open_image blocked on a FIFO"
    assert isinstance(outcome[0], SifboxError)
    assert "not a regular file" in str(outcome[0])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.sif"
    path.write_bytes(SQUASHFS)
    path.chmod(0)
    err = expect_error(path)
    assert err.message.endswith(": permission denied")


def test_sif_without_a_partition() -> None:
    path = IMAGES / "one-object-generic-json.sif"
    err = expect_error(path)
    assert err.message.endswith(": the SIF image has no root file system partition")
    assert err.hint == f"`sifbox sif list {path}` shows what it holds"


def test_empty_sif(tmp_path: Path) -> None:
    err = expect_error(make_sif(tmp_path / "empty.sif"))
    assert "no root file system partition" in err.message


def test_sif_with_only_a_data_partition(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "data.sif", _part(SQUASHFS, c.FsType.SQUASHFS, c.PartType.DATA))
    assert "no root file system partition" in expect_error(sif).message


def test_sif_whose_root_is_ext3(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "ext3.sif", _part(EXT3, c.FsType.EXT3, c.PartType.PRIMSYS))
    err = expect_error(sif, "exec")
    assert err.message.endswith(": the root file system is Ext3, sifbox runs SquashFS images")


def test_sif_whose_root_is_raw(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "raw.sif", _part(b"\xfa\xce", c.FsType.RAW, c.PartType.PRIMSYS))
    assert expect_error(sif).message.endswith(
        ": the root file system is Raw, sifbox runs SquashFS images"
    )


def test_damaged_squashfs_superblock_in_a_sif(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "bad.sif", _part(SQUASHFS, c.FsType.SQUASHFS, c.PartType.PRIMSYS))
    offset, _ = sif_partition(sif)
    with open(sif, "r+b") as f:
        f.seek(offset)
        f.write(b"XXXX")
    err = expect_error(sif)
    assert err.message.endswith(": the root file system is damaged: no SquashFS magic")


@pytest.mark.parametrize(
    "pos,value,reason",
    [
        (28, struct.pack("<H", 3), "unsupported SquashFS version 3.0"),
        (12, struct.pack("<I", 12345), "invalid SquashFS block size 12345"),
        (
            40,
            struct.pack("<Q", 1 << 40),
            f"SquashFS of {1 << 40} bytes in a partition of {len(SQUASHFS)}",
        ),
    ],
)
def test_damaged_bare_squashfs(tmp_path: Path, pos: int, value: bytes, reason: str) -> None:
    data = bytearray(SQUASHFS)
    data[pos : pos + len(value)] = value
    path = tmp_path / "bad.sqfs"
    path.write_bytes(bytes(data))
    assert expect_error(path).message.endswith(f": the root file system is damaged: {reason}")


def test_truncated_bare_squashfs(tmp_path: Path) -> None:
    info = squashfs.parse_superblock(SQUASHFS)
    used = int(info["bytes_used"])
    short = tmp_path / "short.sqfs"
    short.write_bytes(SQUASHFS[: used - 1])
    assert expect_error(short).message.endswith(
        f": the root file system is damaged: SquashFS of {used} bytes in a partition of {used - 1}"
    )
    tiny = tmp_path / "tiny.sqfs"
    tiny.write_bytes(SQUASHFS[:50])
    assert expect_error(tiny).message.endswith(
        ": the root file system is damaged: truncated SquashFS superblock"
    )


def test_truncated_sif(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "cut.sif", _part(SQUASHFS, c.FsType.SQUASHFS, c.PartType.PRIMSYS))
    offset, _ = sif_partition(sif)
    with open(sif, "r+b") as f:
        f.truncate(offset + 100)
    err = expect_error(sif)
    assert "outside the file" in err.message


def test_sif_partition_smaller_than_its_squashfs(tmp_path: Path) -> None:
    # The partition holds only the superblock; bytes_used says more.
    sif = make_sif(
        tmp_path / "small.sif", _part(SQUASHFS[:SB], c.FsType.SQUASHFS, c.PartType.PRIMSYS)
    )
    used = squashfs.parse_superblock(SQUASHFS)["bytes_used"]
    assert expect_error(sif).message.endswith(f"SquashFS of {used} bytes in a partition of {SB}")


def test_copy_of_a_corpus_image_is_still_found(tmp_path: Path) -> None:
    copy = shutil.copy(IMAGES / "two-groups.sif", tmp_path / "c.sif")
    src = open_image(str(copy))
    src.close()
    assert src.kind is ImageKind.SIF


# -- squashfs.parse_superblock --------------------------------------------------------------
def test_parse_superblock_of_the_corpus_squashfs() -> None:
    info = squashfs.parse_superblock(SQUASHFS)
    assert info == {
        "inodes": 2,
        "block_size": 131072,
        "compressor": "gzip",
        "bytes_used": 249,
        "mtime": 1648584618,
    }
    assert squashfs.probe(SQUASHFS)
    assert not squashfs.probe(b"sqsh" + SQUASHFS[4:])  # big-endian magic
    assert not squashfs.probe(b"")


def _mutate(pos: int, value: bytes) -> bytes:
    data = bytearray(SQUASHFS[:SB])
    data[pos : pos + len(value)] = value
    return bytes(data)


def _block(size: int, log: int) -> bytes:
    """The superblock with block size `size` and block log `log` (consistent or not)."""
    return (
        _mutate(22, struct.pack("<H", log))[:12]
        + struct.pack("<I", size)
        + _mutate(22, struct.pack("<H", log))[16:]
    )


@pytest.mark.parametrize(
    "buf,reason",
    [
        (SQUASHFS[: SB - 1], "truncated SquashFS superblock"),
        (b"", "truncated SquashFS superblock"),
        (_mutate(0, b"sqsh"), "no SquashFS magic"),
        (_mutate(0, b"\0\0\0\0"), "no SquashFS magic"),
        (_mutate(28, struct.pack("<HH", 3, 1)), "unsupported SquashFS version 3.1"),
        (_mutate(28, struct.pack("<HH", 5, 0)), "unsupported SquashFS version 5.0"),
        # block size must be 2**block_log and within 4 KiB .. 1 MiB
        (_mutate(12, struct.pack("<I", 65536)), "invalid SquashFS block size 65536"),
        (_block(2048, 11), "invalid SquashFS block size 2048"),
        (_block(1 << 21, 21), f"invalid SquashFS block size {1 << 21}"),
        (_block(0, 0), "invalid SquashFS block size 0"),
    ],
)
def test_parse_superblock_rejects(buf: bytes, reason: str) -> None:
    with pytest.raises(squashfs.SquashfsError, match=f"^{reason}$"):
        squashfs.parse_superblock(buf)


@pytest.mark.parametrize("log", [12, 17, 20])
def test_parse_superblock_accepts_every_valid_block_size(log: int) -> None:
    buf = _block(1 << log, log)
    assert squashfs.parse_superblock(buf)["block_size"] == 1 << log


def test_parse_superblock_unknown_compressor() -> None:
    assert (
        squashfs.parse_superblock(_mutate(20, struct.pack("<H", 9)))["compressor"] == "unknown (9)"
    )
    assert squashfs.parse_superblock(_mutate(20, struct.pack("<H", 6)))["compressor"] == "zstd"


def test_squashfs_error_is_a_value_error() -> None:
    assert issubclass(squashfs.SquashfsError, ValueError)
