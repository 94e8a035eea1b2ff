"""Overlays given with `--overlay` (and `--writable` on a SIF): what each is
and where its file system lies.

An overlay is a directory, an EXT3 image, a SquashFS image, or a SIF that
holds an EXT3 overlay partition (`sifbox overlay create IMAGE.sif`) or a
SquashFS partition. Directories and EXT3 file systems are writable unless
given as `PATH:ro`; SquashFS is always read-only. At most one overlay is
writable: it receives every change, in its `upper/` directory (with `work/`
beside it, as Apptainer lays them out); the read-only ones are stacked
below it, the first given on top.

EXT3 images are locked (flock) for as long as the container runs: one
container writes a file system, or any number read it, never both.
"""

from __future__ import annotations

import fcntl
import os
import stat
from sifbox.util.records import record as namedtuple

from sifbox.formats import squashfs
from sifbox.formats.sif import constants as c
from sifbox.util.errors import SifboxError, UsageError, describe_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.sif.image import SifImage

#: kind: "dir", "ext3" or "squashfs"; `path` the host path (the directory
#: itself for "dir"); `fd` the open image (None for "dir"); `offset`/`size`
#: the file system's bytes in the file.
Overlay = namedtuple("Overlay", "path kind fd offset size writable")

EXT_MAGIC_OFFSET = 1024 + 56
EXT_MAGIC = b"\x53\xef"
#: seconds to wait for an EXT3 overlay that another container holds
LOCK_WAIT = 3.0


def parse(text: str) -> tuple[str, bool]:
    """`PATH[:ro|:rw]` -> (path, read_only)."""
    path, sep, mode = text.rpartition(":")
    if sep and mode in ("ro", "rw"):
        if not path:
            raise UsageError(f"can't use overlay `{text}`: no path before `:{mode}`")
        return path, mode == "ro"
    return text, False


def open_overlays(texts: list[str], *, verb: str) -> list[Overlay]:
    """Open every `--overlay` argument; raise one-line errors for bad ones."""
    items: list[Overlay] = []
    try:
        for text in texts:
            for part in filter(None, text.split(",")):
                path, ro = parse(part)
                items.append(_open(path, ro, verb))
        writable = [o for o in items if o.writable]
        if len(writable) > 1:
            raise UsageError(
                f"can't {verb} with overlays {', '.join(o.path for o in writable)}: only one overlay can be writable",
                hint="add `:ro` to the others",
            )
    except BaseException:
        close(items)
        raise
    return items


def sif_overlay_partition(image: str, *, verb: str, fd: int | None = None) -> Overlay:
    """The writable EXT3 overlay partition of SIF `image`, for `--writable`;
    reopened through `fd` (the image already open and admitted) when given."""
    found = _open(image, False, verb, want_overlay_partition=True, opened=fd)
    if found.kind != "ext3":
        close([found])
        raise SifboxError(
            f"can't {verb} `{image}` with --writable: the SIF image has no writable overlay partition",
            hint=f"`sifbox overlay create --size 1024 {image}` adds one; --writable-tmpfs gives a throw-away one",
        )
    return found


def close(items: list[Overlay]) -> None:
    for o in items:
        if o.fd is not None:
            try:
                os.close(o.fd)
            except OSError:
                pass


def policy_kind(o: Overlay) -> str:
    """The `allow container` kind of an opened overlay: dir, extfs, sif or squashfs."""
    if o.kind == "dir":
        return "dir"
    if o.kind == "ext3":
        return "extfs"
    return "sif" if os.pread(o.fd, 10, 32) == c.MAGIC else "squashfs"


def _open(path: str, ro: bool, verb: str, want_overlay_partition: bool = False, opened: int | None = None) -> Overlay:
    """Open `path` once (or reopen the file open at `opened`): what is judged
    and mounted is that descriptor, never the path looked up again."""
    where = f"can't {verb} with overlay `{path}`"
    try:
        base = os.open(f"/proc/self/fd/{opened}" if opened is not None else path, os.O_PATH | os.O_CLOEXEC)
    except OSError as err:
        raise SifboxError(f"{where}: {describe_os_error(err)}") from None
    try:
        st = os.fstat(base)
        real = os.readlink(f"/proc/self/fd/{base}")
        if stat.S_ISDIR(st.st_mode):
            if not ro and not os.access(f"/proc/self/fd/{base}", os.W_OK):
                raise SifboxError(f"{where}: the directory is not writable by you", hint=f"use `{path}:ro`")
            fd, base = base, -1
            return Overlay(real, "dir", fd, 0, 0, not ro)
        if not stat.S_ISREG(st.st_mode):
            raise SifboxError(f"{where}: not a directory or an image file")
        flags = os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(f"/proc/self/fd/{base}", flags | os.O_RDONLY)
        except OSError as err:
            raise SifboxError(f"{where}: {describe_os_error(err)}") from None
    finally:
        if base >= 0:
            os.close(base)
    try:
        kind, offset, size = _probe(fd, st.st_size, where, want_overlay_partition)
        writable = kind == "ext3" and not ro
        if writable:
            try:
                wfd = os.open(f"/proc/self/fd/{fd}", flags | os.O_RDWR)
            except OSError as err:
                raise SifboxError(f"{where}: {describe_os_error(err)}", hint=f"use `{path}:ro`") from None
            os.close(fd)
            fd = wfd
        if kind == "ext3":
            # One writer, or any number of readers: never a reader beside a writer.
            if not lock(fd, fcntl.LOCK_EX if writable else fcntl.LOCK_SH):
                raise SifboxError(f"{where}: it is in use by another container",
                                  hint="an EXT3 overlay is used by one writer, or by readers only (`:ro`)")  # fmt: skip
        return Overlay(real, kind, fd, offset, size, writable)
    except BaseException:
        os.close(fd)
        raise


def lock(fd: int, how: int, wait: float = LOCK_WAIT) -> bool:
    """flock, waiting a little: the helper of a container that just ended
    may still be writing the file system back."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _probe(fd: int, file_size: int, where: str, want_overlay_partition: bool) -> tuple[str, int, int]:
    head = os.pread(fd, 2048, 0)
    if head[32:42] == c.MAGIC:
        return _sif_overlay(fd, where, want_overlay_partition)
    if squashfs.probe(head):
        return "squashfs", 0, file_size
    if head[EXT_MAGIC_OFFSET : EXT_MAGIC_OFFSET + 2] == EXT_MAGIC:
        return "ext3", 0, file_size
    raise SifboxError(f"{where}: not a directory, EXT3, SquashFS or SIF image",
                      hint="`sifbox overlay create --size 1024 overlay.img` makes an EXT3 overlay image")  # fmt: skip


def _sif_overlay(fd: int, where: str, want_overlay_partition: bool) -> tuple[str, int, int]:
    from sifbox.formats.sif.image import SifError, SifImage

    with os.fdopen(os.dup(fd), "rb") as fp:
        try:
            img = SifImage.load(fp)
        except SifError as err:
            raise SifboxError(f"{where}: {err}") from None
        parts = [d for d in img.objects() if d.data_type == c.DataType.PARTITION]
        for d in parts:
            fs, part, _ = d.partition()
            if part == c.PartType.OVERLAY and fs == c.FsType.EXT3:
                return "ext3", d.offset, d.size
        if not parts and want_overlay_partition:
            top = _oci_sif_overlay(img, where)  # an OCI-SIF's EXT3 overlay layer (SingularityCE 4)
            if top is not None:
                return "ext3", top[0], top[1]
        if not want_overlay_partition:
            # An image given as an overlay: its SquashFS partitions are read-only layers.
            for d in parts:
                fs, _, _ = d.partition()
                if fs == c.FsType.SQUASHFS:
                    return "squashfs", d.offset, d.size
    if want_overlay_partition:
        return "none", 0, 0
    raise SifboxError(f"{where}: the SIF image has no overlay or SquashFS partition")


def _oci_sif_overlay(img: SifImage, where: str) -> tuple[int, int] | None:
    """(offset, size) of the EXT3 overlay layer of the OCI-SIF `img`, if it is one and has one."""
    from sifbox.formats.sif import oci
    from sifbox.formats.sif.image import SifError
    from sifbox.image.source import oci_image

    if not oci.is_oci_sif(img):
        return None
    try:
        top = oci_image(img).overlay
    except SifError as err:
        raise SifboxError(f"{where}: {err}") from None
    return None if top is None else (top.offset, top.size)
