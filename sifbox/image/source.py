"""Find the root file system of an image: a SIF's primary SquashFS
partition, a bare SquashFS file, or a directory (sandbox).

The image file is opened once; the same descriptor is what gets mounted,
so the file cannot be swapped between the checks and the mount.
"""

from __future__ import annotations

import os
import stat

from sifbox.util import filestat
from sifbox.util.errors import SifboxError, describe_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.sif.image import SifImage
    from sifbox.formats.sif.oci import OciImage


class ImageKind:
    SIF = "sif"
    SQUASHFS = "squashfs"
    SANDBOX = "sandbox"


class ImageSource:
    """An opened image: where its root file system lies."""

    __slots__ = ("encryption", "fd", "key_message", "kind", "oci", "offset", "overlay", "path", "size")

    def __init__(self, path: str, kind: str, fd: int | None, offset: int = 0, size: int = 0,
                 overlay: tuple[int, int] | None = None, oci: OciImage | None = None):  # fmt: skip
        self.path = path
        self.kind = kind
        self.fd = fd
        self.offset = offset
        self.size = size
        #: (offset, size) of a SIF's EXT3 overlay partition, if it has one
        self.overlay = overlay
        #: an OCI-SIF's image (config, layers): the root file system is its bottom layer
        self.oci = oci
        #: "gocryptfs" (SIF fstype 6) or "luks" (fstype 5) for an encrypted root file system
        self.encryption: str | None = None
        #: the CryptoMessage (PEM key message) linked to an encrypted partition, if any
        self.key_message: bytes | None = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_image(path: str, verb: str = "run") -> ImageSource:
    """Open `path` and locate its root file system, or raise a one-line error."""
    where = f"can't {verb} `{path}`"
    try:
        # O_NONBLOCK: a FIFO or device given as the image must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SifboxError(f"{where}: no such file or directory") from None
    except OSError as err:
        raise SifboxError(f"{where}: {describe_os_error(err)}") from None
    try:
        return _locate(fd, path, where)
    except BaseException:
        os.close(fd)
        raise


def locate(fd: int, path: str, verb: str = "run") -> ImageSource:
    """The image open at `fd` (named `path` in messages), located as `open_image` does,
    without opening it again (on a file server every open is a request): the source's
    descriptor is `fd` itself, which the caller keeps and closes."""
    return _locate(fd, path, f"can't {verb} `{path}`")


def _locate(fd: int, path: str, where: str) -> ImageSource:
    from sifbox.formats import squashfs  # here: an OCI bundle's directory root needs neither
    from sifbox.formats.sif import constants as c

    st = filestat.fstat(fd)  # without the access time: no request to a file server
    if stat.S_ISDIR(st.st_mode):
        return ImageSource(_opened(fd, path), ImageKind.SANDBOX, fd)
    if not stat.S_ISREG(st.st_mode):
        raise SifboxError(f"{where}: not a regular file or directory")
    head = os.pread(fd, 128, 0)
    if head[32:42] == c.MAGIC:
        src = _sif_partition(fd, path, where)
    elif squashfs.probe(head):
        src = ImageSource(_opened(fd, path), ImageKind.SQUASHFS, fd, 0, st.st_size)
    else:
        raise SifboxError(
            f"{where}: not a SIF, SquashFS or sandbox image",
            hint="images are .sif files, bare SquashFS files, or directories",
        )
    if src.encryption == "luks":  # a LUKS2 header, not a SquashFS, comes first
        return src
    parts = [(src.offset, src.size)] if src.oci is None else [(x.offset, x.size) for x in src.oci.layers]
    for n, (offset, size) in enumerate(parts):
        what = "the root file system" if n == 0 else f"layer {n + 1} of the image"
        _check_squashfs(fd, offset, size, f"{where}: {what} is damaged")
    return src


def _check_squashfs(fd: int, offset: int, size: int, damaged: str) -> None:
    from sifbox.formats import squashfs

    try:
        info = squashfs.parse_superblock(os.pread(fd, squashfs.SUPERBLOCK_SIZE, offset))
    except squashfs.SquashfsError as err:
        raise SifboxError(f"{damaged}: {err}") from None
    if int(info["bytes_used"]) > size:
        raise SifboxError(f"{damaged}: SquashFS of {info['bytes_used']} bytes in a partition of {size}")


def _opened(fd: int, path: str) -> str:
    """The path of the file open at `fd`, as the kernel resolved it when it was
    opened (not looked up again: the path may have changed since)."""
    try:
        found = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.abspath(path)
    return found if found.startswith("/") else os.path.abspath(path)


def _sif_partition(fd: int, path: str, where: str) -> ImageSource:
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError, SifImage
    from sifbox.util.preadfile import reader

    with reader(fd) as fp:  # no copy of fd, nor its shared offset
        try:
            img = SifImage.load(fp)
        except SifError as err:
            raise SifboxError(f"{where}: {err}") from None
        part = img.primary_partition()
        if part is None:
            parts = [d for d in img.objects() if d.data_type == c.DataType.PARTITION]
            part = next((d for d in parts if d.partition()[1] == c.PartType.SYSTEM), None)
        if part is None and img.find(lambda d: d.data_type == c.DataType.OCI_ROOT_INDEX):
            return _oci_sif(img, fd, path, where)
        if part is None:
            raise SifboxError(f"{where}: the SIF image has no root file system partition",
                              hint=f"`sifbox sif list {path}` shows what it holds")  # fmt: skip
        fs = part.partition()[0]
        encryption = None
        if fs != c.FsType.SQUASHFS:  # (the crypt module, for the images that may be encrypted)
            from sifbox.formats.sif import crypt

            encryption = crypt.encryption_of(part)
        if fs != c.FsType.SQUASHFS and encryption is None:
            name = c.display(c.FS_TYPE_NAMES, fs)
            raise SifboxError(f"{where}: the root file system is {name}, sifbox runs SquashFS images")
        try:
            img.check_bounds(part)
        except SifError as err:
            raise SifboxError(f"{where}: {err}") from None
        message = None
        if encryption is not None:
            found = crypt.key_message(img, part)
            if found is not None:
                try:
                    message = img.read(found, limit=crypt.MAX_MESSAGE)
                except SifError as err:
                    raise SifboxError(f"{where}: its key message is damaged: {err}") from None
        overlay = None
        for d in img.objects():
            if d.data_type == c.DataType.PARTITION and d.partition()[:2] == (c.FsType.EXT3, c.PartType.OVERLAY):
                try:
                    img.check_bounds(d)
                except SifError as err:
                    raise SifboxError(f"{where}: the overlay partition is damaged: {err}") from None
                overlay = (d.offset, d.size)
    src = ImageSource(_opened(fd, path), ImageKind.SIF, fd, part.offset, part.size, overlay)
    src.encryption, src.key_message = encryption, message
    return src


def _oci_sif(img: SifImage, fd: int, path: str, where: str) -> ImageSource:
    """An OCI-SIF (SingularityCE 4): the image for this machine, its bottom layer the root."""
    from sifbox.formats.sif.image import SifError

    try:
        image = oci_image(img)
    except SifError as err:
        raise SifboxError(f"{where}: {err}", hint=f"`sifbox sif list {path}` shows what it holds") from None
    bottom, top = image.layers[0], image.overlay
    return ImageSource(_opened(fd, path), ImageKind.SIF, fd, bottom.offset, bottom.size,
                       None if top is None else (top.offset, top.size), image)  # fmt: skip


def oci_image(img: SifImage) -> OciImage:
    """The image of the OCI-SIF `img` for this machine (raises SifError)."""
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import oci

    machine = os.uname().machine
    return oci.load_image(img, c.MACHINE_ARCH.get(machine, machine))


def one_layer(src: ImageSource, verb: str) -> None:
    """Refuse an OCI-SIF whose root is more than its bottom layer, where the caller reads the
    root file system from one SquashFS (bootstrap, SBOM): only a container stacks the layers."""
    if src.oci is not None and (len(src.oci.layers) > 1 or src.oci.overlay is not None):
        count = len(src.oci.layers) + (src.oci.overlay is not None)
        src.close()
        raise SifboxError(f"can't {verb} `{src.path}`: an OCI-SIF image of {count} layers; sifbox reads the "
                          "files of single-layer OCI-SIF images only",
                          hint="`sifbox pull --oci` squashes an OCI image into one layer")  # fmt: skip
