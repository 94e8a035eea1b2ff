"""`sifbox overlay create [--size MiB] [--sparse] [--create-dir DIR] IMAGE`

Makes an EXT3 writable overlay: a new image file, or a partition added to
an existing SIF image (used by `--writable`). The file system holds
`upper/` and `work/` owned by the caller, as Apptainer lays it out, so
that `--overlay IMAGE` (or `--writable IMAGE.sif`) keeps the container's
changes there.
"""

from __future__ import annotations

import argparse
import os

from sifbox.util.errors import SifboxError, UsageError

#: As Apptainer: smaller EXT3 file systems leave little room once the journal is in.
MIN_SIZE_MIB = 64
DEFAULT_SIZE_MIB = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="overlay_command", metavar="COMMAND")
    sub.required = True
    c = sub.add_parser("create", help="Create an EXT3 writable overlay image, or add one to a SIF image")
    c.add_argument("image", metavar="IMAGE", help="new overlay image file, or an existing SIF image")
    c.add_argument("-s", "--size", type=int, default=DEFAULT_SIZE_MIB, metavar="MiB",
                   help=f"size of the EXT3 overlay in MiB (default {DEFAULT_SIZE_MIB})")
    c.add_argument("-S", "--sparse", action="store_true", help="create a sparse overlay image file")
    c.add_argument("--create-dir", action="append", default=[], metavar="DIR",
                   help="directory to create in the overlay (container path), repeatable")
    c.add_argument("-f", "--fakeroot", action="store_true",
                   help="make the overlay usable by actions run with --fakeroot")


def main(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    import tempfile

    from sifbox.util.paths import umask, which

    image = args.image
    verb = f"create an overlay in `{image}`"
    if args.size < MIN_SIZE_MIB:
        raise UsageError(f"can't {verb}: the size must be at least {MIN_SIZE_MIB} MiB")
    for d in args.create_dir:
        if not d.startswith("/") or ".." in d.split("/"):
            raise UsageError(f"can't {verb}: --create-dir `{d}` must be an absolute container path")
    mkfs = which("mkfs.ext3") or (which("mke2fs") and "mke2fs")
    if mkfs is None:
        raise SifboxError(f"can't {verb}: mkfs.ext3 is not installed", hint="install the Debian package `e2fsprogs`")
    into_sif = os.path.exists(image) and _is_sif(image)
    if os.path.exists(image) and not into_sif:
        raise SifboxError(f"can't {verb}: the file exists and is not a SIF image",
                          hint="give a new file name, or a SIF image to add the overlay to")  # fmt: skip
    if into_sif:
        _check_sif(image, verb)
    directory = os.path.dirname(os.path.abspath(image))
    tmpdir = tempfile.mkdtemp(prefix=".sifbox-overlay-", dir=directory if not into_sif else None)
    try:
        tree = os.path.join(tmpdir, "tree")
        for d in ("upper", "work"):
            os.makedirs(os.path.join(tree, d), mode=0o755)
        for d in args.create_dir:
            os.makedirs(os.path.join(tree, "upper", d.lstrip("/")), mode=0o755, exist_ok=True)
        fs = os.path.join(tmpdir, "overlay.img")
        with open(fs, "wb") as f:
            f.truncate(args.size << 20)
            if not args.sparse and not into_sif:
                os.posix_fallocate(f.fileno(), 0, args.size << 20)
        owner = f"{os.getuid()}:{os.getgid()}"
        # mkfs discards (punches holes in) a file's blocks unless told not to: an allocated
        # image keeps them, as Apptainer's takes its whole size on disk.
        extended = f"root_owner={owner}" + ("" if args.sparse or into_sif else ",nodiscard")
        cmd = [mkfs, "-q", "-F", "-t", "ext3", "-E", extended, "-d", tree, fs]
        if os.path.basename(mkfs) == "mkfs.ext3":
            cmd.remove("-t")
            cmd.remove("ext3")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["it failed"])[-1]
            raise SifboxError(f"can't {verb}: mkfs.ext3: {reason}")
        if into_sif:
            _add_partition(image, fs, verb)
        else:
            os.chmod(fs, 0o644 & ~umask())
            os.rename(fs, image)  # same directory: atomic
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


def _is_sif(path: str) -> bool:
    from sifbox.formats.sif import constants as c

    try:
        with open(path, "rb") as f:
            return f.read(64)[32:42] == c.MAGIC
    except OSError:
        return False


def _check_sif(image: str, verb: str) -> None:
    from sifbox.formats.sif import constants as c
    from sifbox.image.sif_file import open_sif

    with open_sif(image, verb=verb) as img:
        for d in img.objects():
            if d.data_type == c.DataType.PARTITION and d.partition()[1] == c.PartType.OVERLAY:
                raise SifboxError(f"can't {verb}: the SIF image already has an overlay partition")
        if any(d.data_type == c.DataType.SIGNATURE for d in img.objects()):
            raise SifboxError(f"can't {verb}: the SIF image is signed, and an overlay would change it",
                              hint="use a separate overlay image file with --overlay")  # fmt: skip
        from sifbox.formats.sif.crypt import encryption_of

        part = img.primary_partition()
        if part is not None and encryption_of(part) is not None:
            # As Apptainer: what the container writes would lie beside the encrypted root, in the clear.
            raise SifboxError(f"can't {verb}: the SIF image is encrypted, and its overlay would not be",
                              hint="use a separate overlay image file with --overlay")  # fmt: skip


def _add_partition(image: str, fs: str, verb: str) -> None:
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import edit, layout
    from sifbox.formats.sif.image import SifError
    from sifbox.image.sif_file import open_sif
    from sifbox.util.errors import describe_os_error

    with open(fs, "rb") as data, open_sif(image, verb=verb, write=True) as img:
        prim = img.primary_partition()
        arch = prim.partition()[2] if prim is not None else None
        if arch is None:
            raise SifboxError(f"can't {verb}: the SIF image has no primary partition to take the architecture from")
        obj = edit.ObjectInput(
            data_type=c.DataType.PARTITION, data=data, group_id=1,
            extra=layout.partition_extra(c.FsType.EXT3, c.PartType.OVERLAY, c.ARCH_NAMES.get(arch, "amd64")),
        )  # fmt: skip
        try:
            edit.add_object(img, obj, sync=True)
        except SifError as err:
            raise SifboxError(f"can't {verb}: {err}") from err
        except OSError as err:
            raise SifboxError(f"can't {verb}: {describe_os_error(err)}") from err
