"""Turn a finished root directory into an image: SquashFS, SIF or sandbox.

The entry point for every producer of root file systems (definition-file
builds, OCI conversions) is `write_sif`::

    from sifbox.build.assemble import write_sif
    write_sif("/tmp/rootfs", "out.sif", deffile_text="Bootstrap: docker\\n...")
    write_sif("/tmp/root.sqfs", "out.sif")   # an existing SquashFS is used as is

Outputs are written beside the destination under a temporary name and
renamed into place only when complete, so an interrupted build leaves
nothing at the destination.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile

from sifbox.util.errors import SifboxError, describe_os_error

#: Compression when sifbox.conf says nothing (best size/time measured here).
DEFAULT_COMPRESSION = "zstd:3"
_COMP_LEVEL_FLAG = {"zstd": "-Xcompression-level", "gzip": "-Xcompression-level", "xz": None, "lz4": None,
                    "lzo": "-Xcompression-level", "lzma": None}  # fmt: skip


class BuildError(SifboxError):
    reference = "build-failed"


@dataclasses.dataclass(frozen=True)
class SquashOptions:
    """How mksquashfs runs: from sifbox.conf, the environment and the CLI."""

    mksquashfs: str = "mksquashfs"
    procs: int = 0  # 0: all
    mem: str | None = None
    compression: str = DEFAULT_COMPRESSION  # NAME[:LEVEL]
    extra_args: tuple[str, ...] = ()
    epoch: int | None = None  # reproducible: every time set to this
    progress: bool = False  # mksquashfs's progress bar (on a terminal)

    def argv(self, root: str, out: str) -> list[str]:
        argv = [self.mksquashfs, root, out, "-noappend", "-quiet"]
        if not self.progress:
            argv.append("-no-progress")
        name, _, level = self.compression.partition(":")
        argv += ["-comp", name]
        if level and _COMP_LEVEL_FLAG.get(name):
            argv += [_COMP_LEVEL_FLAG[name], level]  # type: ignore[list-item]
        if self.procs > 0:
            argv += ["-processors", str(self.procs)]
        if self.mem:
            argv += ["-mem", self.mem]
        if self.epoch is not None:
            argv += ["-mkfs-time", str(self.epoch), "-all-time", str(self.epoch)]
        return argv + list(self.extra_args)


def squash_options(config: object | None = None, *, epoch: int | None = None,
                   extra_args: str | None = None) -> SquashOptions:  # fmt: skip
    """SquashOptions from a loaded sifbox.conf (sifbox.config.sysconf)."""
    from sifbox.util.paths import which

    procs, mem, comp, path = 0, None, DEFAULT_COMPRESSION, None
    if config is not None:
        get = config.get  # type: ignore[attr-defined]
        procs = config.get_int("mksquashfs procs")  # type: ignore[attr-defined]
        mem = get("mksquashfs mem") or None
        comp = get("mksquashfs compression") or DEFAULT_COMPRESSION
        path = get("mksquashfs path") or None
    tool = path or which("mksquashfs")
    if tool is None:
        raise BuildError("can't build the image: mksquashfs is not installed",
                         hint="install the Debian package `squashfs-tools`")  # fmt: skip
    return SquashOptions(
        str(tool), procs, mem, str(comp), tuple(shlex.split(extra_args or "")), epoch
    )


def machine_arch() -> str:
    from sifbox.formats.sif.constants import MACHINE_ARCH

    return MACHINE_ARCH.get(platform.machine(), platform.machine())


def make_squashfs(root: str, out: str, opts: SquashOptions, *, more: tuple[str, ...] = ()) -> None:
    """mksquashfs `root` (and the files or directories `more`, at its top) into
    the file `out` (which is replaced)."""
    argv = opts.argv(root, out)
    argv[2:2] = more
    try:
        # mksquashfs refuses SOURCE_DATE_EPOCH next to -mkfs-time/-all-time, which say the same.
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=None if opts.progress else subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, check=False)  # fmt: skip
    except OSError as err:
        raise BuildError(f"can't run `{argv[0]}`: {describe_os_error(err)}") from None
    if proc.returncode != 0:
        with contextlib.suppress(OSError):
            os.unlink(out)
        detail = (proc.stderr or proc.stdout or b"").decode("utf-8", "replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        if "No space left" in "\n".join(detail):
            reason = "no space left on the device"
        raise BuildError(
            f"can't create the SquashFS image: mksquashfs failed: {reason}",
            hint=f"the command was `{shlex.join(argv)}` (exit status {proc.returncode}); the fault originates "
            "from mksquashfs",
        )


def _is_squashfs(path: str) -> bool:
    from sifbox.formats import squashfs

    try:
        with open(path, "rb") as f:
            return bool(squashfs.probe(f.read(96)))
    except OSError:
        return False


def _image_id(squashfs_path: str, deffile: bytes, epoch: int) -> bytes:
    """A reproducible image ID (UUID v4 layout) from the content."""
    h = hashlib.sha256()
    h.update(deffile)
    h.update(str(epoch).encode())
    with open(squashfs_path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    raw = bytearray(h.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


def scratch_dir() -> str:
    """SIFBOX_TMPDIR, else TMPDIR, else /tmp."""
    for var in ("SIFBOX_TMPDIR", "APPTAINER_TMPDIR", "SINGULARITY_TMPDIR", "TMPDIR"):
        value = os.environ.get(var)
        if value:
            return value
    return "/tmp"


def write_sif(
    rootfs: str,
    out_path: str,
    deffile_text: str | None = None,
    *,
    inspect_metadata: bytes | None = None,
    squash: SquashOptions | None = None,
    epoch: int | None = None,
    arch: str | None = None,
    tmpdir: str | None = None,
    fstype: int | None = None,
    key_message: bytes | None = None,
) -> None:
    """Write the SIF image `out_path` from `rootfs`.

    `rootfs` is a root directory (packed with mksquashfs, `squash` options)
    or an existing SquashFS file (used as is). The image holds, as
    Apptainer's builds do, in group 1: the definition (`deffile_text`, if
    any), the `inspect_metadata` JSON (if any), then the primary system
    partition for `arch` (default: this machine). With `epoch` (reproducible
    builds) every time in the SIF is `epoch` and the image ID derives from
    the content, so equal inputs give equal bytes. `fstype` marks an encrypted
    partition (sifbox.build.encrypt); `key_message` is then its CryptoMessage,
    linked to it (PEM, RSA-OAEP) as Apptainer stores it. Atomic: a temporary file
    beside `out_path` is renamed over it when complete.
    """
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import edit, layout
    from sifbox.image.sif_file import write_atomically

    arch = arch or machine_arch()
    if arch not in c.ARCH_CODES:
        raise BuildError(f"can't write `{out_path}`: unknown architecture `{arch}`")
    with contextlib.ExitStack() as stack:
        if os.path.isdir(rootfs):
            work = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="sifbox-sif.", dir=tmpdir or scratch_dir())
            )
            sqfs = os.path.join(work, "root.sqfs")
            make_squashfs(rootfs, sqfs, squash or squash_options(epoch=epoch))
        elif _is_squashfs(rootfs):
            sqfs = rootfs
        else:
            raise BuildError(
                f"can't write `{out_path}`: `{rootfs}` is neither a directory nor a SquashFS image"
            )
        deffile = (deffile_text or "").encode()
        image_id = _image_id(sqfs, deffile, epoch) if epoch is not None else None

        def write(fp):  # type: ignore[no-untyped-def]
            with open(sqfs, "rb") as part:
                objects = []
                if deffile:
                    objects.append(edit.ObjectInput(c.DataType.DEFFILE, deffile))
                if inspect_metadata:
                    objects.append(edit.ObjectInput(c.DataType.GENERIC_JSON, inspect_metadata,
                                                    name=b"inspect-metadata.json"))  # fmt: skip
                objects.append(edit.ObjectInput(
                    c.DataType.PARTITION, part,
                    extra=layout.partition_extra(fstype or c.FsType.SQUASHFS, c.PartType.PRIMSYS, arch),
                ))  # fmt: skip
                if key_message is not None:  # IDs are slot numbers + 1: the partition's is len(objects)
                    objects.append(edit.ObjectInput(
                        c.DataType.CRYPTO_MESSAGE, key_message, link=edit.link_object(len(objects)),
                        extra=layout.crypto_message_extra(c.FormatType.PEM, c.MessageType.RSA_OAEP),
                    ))  # fmt: skip
                return edit.create(fp, objects, launch_script=c.RUN_SINGULARITY, image_id=image_id,
                                   time=epoch, sync=True)  # fmt: skip

        write_atomically(out_path, write, verb="write", mode=0o777)  # executable, as Apptainer's


def write_squashfs(rootfs: str, out_path: str, squash: SquashOptions) -> None:
    """A bare SquashFS image at `out_path`, atomically."""
    directory = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(out_path)}.", suffix=".tmp", dir=directory
    )
    os.close(fd)
    try:
        make_squashfs(rootfs, tmp, squash)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.rename(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def extract_squashfs(image: str, offset: int, dest: str, *, extra_args: list[str] | None = None) -> None:
    """unsquashfs the SquashFS at `offset` of `image` into the new directory `dest`
    (`extra_args`: more unsquashfs options)."""
    from sifbox.util.paths import which

    tool = which("unsquashfs")
    if tool is None:
        raise BuildError("can't extract the image: unsquashfs is not installed",
                         hint="install the Debian package `squashfs-tools`")  # fmt: skip
    argv = [str(tool), "-f", "-n", "-d", dest]
    if offset:
        argv += ["-o", str(offset)]
    argv += [*(extra_args or ()), image]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise BuildError(
            f"can't extract `{image}`: unsquashfs failed: {detail[-1] if detail else proc.returncode}",
            hint=f"the command was `{shlex.join(argv)}`",
        )
