"""Images bound into a container with `--bind IMAGE:DEST:image-src=PATH[,id=N]`
(or `--mount type=bind,src=IMAGE,dst=DEST,image-src=PATH`): what each is and
where its file system lies.

An image is a SquashFS file, an EXT3 file, or a SIF: its first data partition,
or the partition with descriptor ID `id=N`. SquashFS is mounted read-only;
EXT3 read-write unless the bind is `ro`, as Apptainer does. An EXT3 image is
locked (flock) for as long as the container runs: one container writes it, or
any number read it, never both.

The image is opened once, here; the descriptor is what the site's policy
judges and what gets mounted, never the path looked up again.
"""

from __future__ import annotations

import fcntl
import os
import stat

from sifbox.formats import squashfs
from sifbox.formats.sif import constants as c
from sifbox.image.overlay import EXT_MAGIC, EXT_MAGIC_OFFSET, Overlay, lock
from sifbox.util.errors import SifboxError, describe_os_error


def open_data_image(path: str, target: str, *, readonly: bool, part_id: int | None) -> Overlay:
    """Open the image file `path` bound at `target`; raise one-line errors for bad ones.

    Returns its file system as an overlay.Overlay record: kind "squashfs" or
    "ext3", the open `fd`, `offset` and `size` of the file system in the file."""
    where = f"can't bind image `{path}` to `{target}`"
    try:
        # O_NONBLOCK: a FIFO or device given as the image must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise SifboxError(f"{where}: {describe_os_error(err)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SifboxError(f"{where}: not an image file",
                              hint="bind a directory without image-src= and id=")  # fmt: skip
        real = os.readlink(f"/proc/self/fd/{fd}")
        kind, offset, size = _probe(fd, st.st_size, where, part_id)
        writable = kind == "ext3" and not readonly
        if writable:
            try:
                wfd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as err:
                raise SifboxError(f"{where}: {describe_os_error(err)}",
                                  hint="add `ro` to bind it read-only (image-src=PATH,ro)") from None  # fmt: skip
            os.close(fd)
            fd = wfd
        if kind == "ext3" and not lock(fd, fcntl.LOCK_EX if writable else fcntl.LOCK_SH):
            raise SifboxError(f"{where}: it is in use by another container",
                              hint="an EXT3 image is written by one container, or read by any number (`ro`)")  # fmt: skip
        return Overlay(real, kind, fd, offset, size, writable)
    except BaseException:
        os.close(fd)
        raise


def policy_kind(fd: int, kind: str) -> str:
    """The `allow container` kind of the data image open at `fd` (its file system
    `kind`): sif, squashfs or extfs."""
    if os.pread(fd, 10, 32) == c.MAGIC:
        return "sif"
    return "extfs" if kind == "ext3" else "squashfs"


def _probe(fd: int, file_size: int, where: str, part_id: int | None) -> tuple[str, int, int]:
    head = os.pread(fd, 2048, 0)
    if head[32:42] == c.MAGIC:
        kind, offset, size = _sif_partition(fd, where, part_id)
    elif squashfs.probe(head):
        kind, offset, size = "squashfs", 0, file_size
    elif head[EXT_MAGIC_OFFSET : EXT_MAGIC_OFFSET + 2] == EXT_MAGIC:
        kind, offset, size = "ext3", 0, file_size
    else:
        raise SifboxError(f"{where}: not a SquashFS, EXT3 or SIF image")
    _check(fd, kind, offset, size, where)
    return kind, offset, size


def _sif_partition(fd: int, where: str, part_id: int | None) -> tuple[str, int, int]:
    """The first data partition of the SIF open at `fd`, or its descriptor `part_id`."""
    from sifbox.formats.sif.image import SifError, SifImage

    with os.fdopen(os.dup(fd), "rb") as fp:
        try:
            img = SifImage.load(fp)
            if part_id is not None:
                found = img.find(lambda d: d.id == part_id)
                if not found:
                    raise SifboxError(f"{where}: the SIF image has no descriptor {part_id}",
                                      hint="`sifbox sif list IMAGE` shows its descriptors")  # fmt: skip
                d = found[0]
                if d.data_type != c.DataType.PARTITION:
                    raise SifboxError(f"{where}: descriptor {part_id} of the SIF image is not a partition")
            else:
                parts = [d for d in img.objects()
                         if d.data_type == c.DataType.PARTITION and d.partition()[1] == c.PartType.DATA]  # fmt: skip
                if not parts:
                    raise SifboxError(f"{where}: the SIF image has no data partition",
                                      hint="id=N binds the partition of descriptor N")  # fmt: skip
                d = parts[0]
            img.check_bounds(d)
        except SifError as err:
            raise SifboxError(f"{where}: {err}") from None
        fs = d.partition()[0]
    if fs == c.FsType.SQUASHFS:
        return "squashfs", d.offset, d.size
    if fs == c.FsType.EXT3:
        return "ext3", d.offset, d.size
    name = c.display(c.FS_TYPE_NAMES, fs)
    raise SifboxError(f"{where}: the partition is {name}: only SquashFS and EXT3 partitions can be bound")


def _check(fd: int, kind: str, offset: int, size: int, where: str) -> None:
    """A first look at the file system, so that a damaged one is a clear error here."""
    if kind == "squashfs":
        try:
            info = squashfs.parse_superblock(os.pread(fd, squashfs.SUPERBLOCK_SIZE, offset))
        except squashfs.SquashfsError as err:
            raise SifboxError(f"{where}: the SquashFS file system is damaged: {err}") from None
        if int(info["bytes_used"]) > size:
            raise SifboxError(f"{where}: the SquashFS file system is damaged: {info['bytes_used']} bytes "
                              f"in {size}")  # fmt: skip
    elif os.pread(fd, 2, offset + EXT_MAGIC_OFFSET) != EXT_MAGIC:
        raise SifboxError(f"{where}: the EXT3 file system is damaged: no superblock")
