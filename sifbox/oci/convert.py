"""OCI image -> SquashFS -> SIF, streaming: no root file system tree is ever written.

    layers (gzip/zstd/tar, digests checked)
      -> pass 1: tar headers only -> merged file set (whiteouts, opaque dirs, safety checks)
      -> pass 2: ONE merged tar stream (+ the generated /.singularity.d entries)
      -> `tar2sqfs` (squashfs-tools-ng) writes the SquashFS straight into the output's
         temporary file
      -> the SIF header, descriptors and metadata objects are put in front of it
         (`fallocate(FALLOC_FL_INSERT_RANGE)`, no copy where the file system allows it)
      -> rename over the destination.

Ownership, setuid bits, device nodes and FIFOs come from the tar headers, so they are kept
for unprivileged users too. With SOURCE_DATE_EPOCH set, the output is reproducible: same
inputs, same bytes (times, file order, SIF header and image ID).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import BinaryIO, Protocol

from sifbox.oci import imageconfig, prescan
from sifbox.oci.layers import DIR, LayerError, Merger, grow_pipe, iter_members, open_layer, open_tar, write_merged
from sifbox.oci.layout import SQUASHFS_LAYER, Image
from sifbox.util.errors import SifboxError, describe_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.singularityd import Entry

FALLOC_FL_INSERT_RANGE = 0x20


class Step(Protocol):
    """Reports a step of the conversion; `size`: the bytes the step reads, when known."""

    def __call__(self, message: str, size: int | None = None, /) -> None: ...

DEFAULT_COMPRESSOR = "zstd"
DEFAULT_LEVEL = 3
#: The buffer of the merged tar stream on its way to tar2sqfs: the headers and small files of
#: many entries go in one write, not a pipe write (and a wake-up of tar2sqfs) every 8 KiB.
FEED_BUFFER = 1 << 20


class ConvertError(SifboxError):
    reference = "oci-convert"


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    try:
        epoch = int(value)
    except ValueError:
        raise ConvertError(f"can't use SOURCE_DATE_EPOCH `{value}`: not a number of seconds") from None
    if epoch < 0:
        raise ConvertError(f"can't use SOURCE_DATE_EPOCH `{value}`: negative")
    return epoch


def _tar2sqfs() -> str:
    exe = shutil.which("tar2sqfs")
    if exe is None:
        raise ConvertError("can't build the SquashFS image: `tar2sqfs` is not installed",
                           hint="install the Debian package `squashfs-tools-ng`")  # fmt: skip
    return exe


def tar2sqfs_argv(out: str, *, compressor: str, level: int | None, procs: int, epoch: int) -> list[str]:
    argv = [_tar2sqfs(), "--quiet", "--no-skip", "--force", "--compressor", compressor,
            "--num-jobs", str(max(1, procs)), "--defaults", f"uid=0,gid=0,mode=0755,mtime={epoch}"]  # fmt: skip
    if level is not None and compressor in ("zstd", "gzip", "xz", "lzma"):
        argv += ["--comp-extra", f"level={level}"]
    return [*argv, out]


def merge_plan(img: Image, *, source: str, epoch: int, warn: Callable[[str], None],
               step: Step, finish: bool = True, generate: bool = True):  # type: ignore[no-untyped-def]  # fmt: skip
    """Pass 1 over every layer (headers only, digests verified) plus the generated entries
    (`finish`: a pull's whole /.singularity.d tree; else an OCI bootstrap's part of it;
    none without `generate`: an OCI-SIF's layer holds the image's files alone)."""

    merger = Merger(warn)
    n = len(img.layers)
    for i in range(n):
        scanned = prescan.take(img.layers[i])
        if scanned is not None:  # read while it downloaded
            merger.add_layer(i, scanned, f"layer {i + 1}")
            continue
        step(f"Reading layer {i + 1}/{n} ({img.layers[i].label})", img.layers[i].size)
        what = f"layer {i + 1} of `{img.source}`"
        with open_layer(img, i) as stream:
            merger.add_layer(i, iter_members(open_tar(stream, what), what), f"layer {i + 1}")
            stream.finish()
    tree = generated(img, source=source, epoch=epoch, finish=finish) if generate else []
    merger.add_extra(imageconfig.extras(tree, epoch))
    return merger


def generated(img: Image, *, source: str, epoch: int, finish: bool = True) -> list[Entry]:
    """The /.singularity.d tree (and mount points) generated for `img`."""
    from sifbox import __version__

    arch = str(img.config.get("architecture") or "")
    return imageconfig.tree(img.config, arch=arch, source=source, epoch=epoch, version=__version__,
                            finish=finish)  # fmt: skip


def inspect_metadata(merger: Merger, tree: list[Entry], deffile: str) -> bytes | None:
    """The `inspect-metadata.json` object of a pulled image (what `inspect --all` shows), or
    None when the image's layers bring metadata files of their own (/.singularity.d/env
    scripts, SCIF apps), which `inspect` then reads from the image itself."""
    import fnmatch

    from sifbox.formats import inspectmeta
    from sifbox.formats.singularityd import files_of

    extra = merger.layer_count - 1
    files = [p.strip("/").split("/") for p in inspectmeta.PATTERNS]
    apps = [inspectmeta.APP_PATTERN.strip("/").split("/")]

    def matches(parts: list[str], patterns: list[list[str]]) -> bool:
        return any(len(parts) == len(p) and all(map(fnmatch.fnmatchcase, parts, p)) for p in patterns)

    for path, node in merger.tree.items():
        if node.layer == extra:
            continue
        if path in (".singularity.d", "scif", "scif/apps"):
            if node.kind != DIR:  # a link: the generated files went elsewhere
                return None
        elif path.startswith((".singularity.d/", "scif/apps/")):
            if matches(path.split("/"), apps if node.kind == DIR else files):
                return None
    meta = inspectmeta.collect(files_of(tree), [], deffile)
    return inspectmeta.render_json(meta, indent=False).encode()


def build_squashfs(img: Image, out: str, *, source: str, epoch: int, compressor: str = DEFAULT_COMPRESSOR,
                   level: int | None = DEFAULT_LEVEL, procs: int | None = None,
                   warn: Callable[[str], None], step: Step,
                   dest: str | None = None, generate: bool = True) -> Merger:  # fmt: skip
    """Write the image's merged root file system as SquashFS at `out` (overwritten);
    `dest` names the final file in messages. Returns the merge (what came from where)."""
    merger = merge_plan(img, source=source, epoch=epoch, warn=warn, step=step, generate=generate)
    plan = merger.plan()
    argv = tar2sqfs_argv(out, compressor=compressor, level=level, procs=procs or os.cpu_count() or 1,
                         epoch=epoch)  # fmt: skip
    step(f"Creating SquashFS ({plan.file_count} entries, {compressor})")
    fed: list[int] = []
    with tempfile.TemporaryFile() as errfile:
        rc = _feed_tar2sqfs(argv, errfile, lambda stdin: fed.append(write_merged(
            plan, img, stdin, extra_layer=merger.layer_count - 1,
            progress=lambda s, size: step(f"Copying files of {s}", size))))  # fmt: skip
        errfile.seek(0)
        msg = errfile.read().decode(errors="replace").strip().splitlines()
    if rc != 0:
        reason = msg[-1] if msg else f"exit status {rc}"
        if "No space left" in "\n".join(msg) or ("I/O error" in reason and _disk_full(out, sum(fed))):
            raise ConvertError(f"can't write `{dest or out}`: no space left on device")
        raise ConvertError(f"can't build the SquashFS image: tar2sqfs failed ({reason})",
                           hint=f"the error originates from `{shlex.join(argv)}` (status {rc})")  # fmt: skip
    return merger


def _disk_full(path: str, fed: int) -> bool:
    """tar2sqfs says "I/O error" (and removes its output) when a write fails for lack of
    space: the disk was full if it cannot hold what tar2sqfs was given."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < max(fed, 1 << 20)


def _feed_tar2sqfs(argv: list[str], errfile: BinaryIO, feed: Callable[[BinaryIO], object]) -> int:
    """Run tar2sqfs with `feed` writing its standard input; return its exit status.
    On any failure of `feed` (or Ctrl-C), tar2sqfs is killed and the failure re-raised."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=errfile, stderr=errfile, bufsize=FEED_BUFFER)
    assert proc.stdin is not None
    grow_pipe(proc.stdin.fileno())
    failure: BaseException | None = None
    try:
        feed(proc.stdin)  # type: ignore[arg-type]
    except BrokenPipeError:
        pass  # tar2sqfs stopped; its status and message say why
    except BaseException as err:  # noqa: BLE001 - re-raised once tar2sqfs is stopped
        failure = err
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        if failure is not None:
            proc.kill()
        rc = proc.wait()
    if failure is not None:
        raise failure
    return rc


# -- SIF assembly ------------------------------------------------------------------------
class _Layout(io.RawIOBase):
    """A write-only file that keeps the bytes written before the partition data and only
    counts the partition data (marked by identity of the chunk object)."""

    def __init__(self, marker: bytes):
        self.buf = bytearray()
        self.pos = 0
        self.size = 0
        self.marker = marker

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        n = len(b)
        if b is not self.marker and not (isinstance(b, memoryview) and b.obj is self.marker):
            end = self.pos + n
            if len(self.buf) < end:
                self.buf.extend(bytes(end - len(self.buf)))
            self.buf[self.pos : end] = b
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def read(self, n: int = -1) -> bytes:
        data = bytes(self.buf[self.pos : self.pos + n if n >= 0 else None])
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        del self.buf[size:]
        self.size = size
        return size

    def flush(self) -> None:
        pass


class _Zeros:
    """A reader of `size` bytes that always hands out the same chunk object."""

    def __init__(self, size: int, chunk: bytes):
        self.left = size
        self.chunk = chunk

    def read(self, n: int) -> bytes | memoryview:
        n = min(n, self.left)
        self.left -= n
        return self.chunk if n == len(self.chunk) else memoryview(self.chunk)[:n]


def sif_prefix(sqfs_size: int, objects_before: list, *, arch: str, image_id: bytes | None,
               when: int | None) -> tuple[bytes, int]:  # fmt: skip
    """The bytes of a SIF up to its primary SquashFS partition, and the partition offset."""
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import edit
    from sifbox.formats.sif import layout as sl

    chunk = bytes(1 << 20)
    part = edit.ObjectInput(c.DataType.PARTITION, data=_Zeros(sqfs_size, chunk),  # type: ignore[arg-type]
                            size=sqfs_size, extra=sl.partition_extra(c.FsType.SQUASHFS, c.PartType.PRIMSYS, arch))  # fmt: skip
    buf = _Layout(chunk)
    img = edit.create(buf, [*objects_before, part], launch_script=c.RUN_SINGULARITY, image_id=image_id,  # type: ignore[arg-type]
                      time=when)  # fmt: skip
    d = next(d for d in img.descriptors if d.used and d.data_type == c.DataType.PARTITION)
    return bytes(buf.buf[: d.offset]).ljust(d.offset, b"\0"), d.offset


def _insert_range(fd: int, length: int) -> bool:
    """Shift the file's content right by `length` bytes without copying (ext4, xfs)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        rc = fallocate(fd, FALLOC_FL_INSERT_RANGE, 0, length)
    except (OSError, AttributeError):
        return False
    return rc == 0


def wrap_sif(sqfs_path: str, out_path: str, objects_before: list, *, arch: str, image_id: bytes | None,
             when: int | None) -> None:  # fmt: skip
    """Turn the SquashFS file `sqfs_path` into the SIF `out_path` (renamed over it).

    The SquashFS file becomes the SIF itself when the file system can insert a range at its
    start; otherwise the SIF is written beside it and the SquashFS copied in."""
    size = os.path.getsize(sqfs_path)
    prefix, offset = sif_prefix(size, objects_before, arch=arch, image_id=image_id, when=when)
    fd = os.open(sqfs_path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if _insert_range(fd, offset):
            os.pwrite(fd, prefix, 0)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(sqfs_path, out_path)
            return
        directory = os.path.dirname(os.path.abspath(out_path))
        tfd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out_path)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(tfd, "wb") as dst, os.fdopen(os.dup(fd), "rb") as src:
                dst.write(prefix)
                src.seek(0)
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(tmp, out_path)
            os.unlink(sqfs_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        if fd >= 0:
            os.close(fd)


def _mkstemp_into(created: list[str], directory: str, name: str) -> int:
    """mkstemp, its name appended to `created` before SIGINT/SIGTERM may interrupt."""
    import signal

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        created.append(path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return fd


def reproducible_id(img: Image, epoch: int) -> bytes:
    h = hashlib.sha256(f"{img.config_digest}\n{epoch}\n".encode())
    for layer in img.layers:
        h.update(f"{layer.digest or layer.diff_id}\n".encode())
    return uuid.UUID(bytes=h.digest()[:16], version=4).bytes


def convert(img: Image, out_path: str, *, source: str, compressor: str = DEFAULT_COMPRESSOR,
            level: int | None = DEFAULT_LEVEL, procs: int | None = None,
            warn: Callable[[str], None], step: Step) -> None:  # fmt: skip
    """Convert `img` to the SIF `out_path`, atomically (nothing is left on failure)."""
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import edit

    epoch = source_date_epoch()
    reproducible = epoch is not None
    if epoch is None:
        epoch = int(time.time())
    arch = str(img.config.get("architecture") or "")
    if arch not in c.ARCH_CODES:
        raise ConvertError(f"can't convert `{source}`: unknown architecture `{arch}` in the image config")
    directory = os.path.dirname(os.path.abspath(out_path))
    created: list[str] = []
    try:
        fd = _mkstemp_into(created, directory, os.path.basename(out_path))
        tmp = created[0]
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o777 & ~umask)  # a SIF is executable (its launch script), as Apptainer makes it
        os.close(fd)
        merger = build_squashfs(img, tmp, source=source, epoch=epoch, compressor=compressor, level=level,
                                procs=procs, warn=warn, step=step, dest=out_path)  # fmt: skip
        step("Creating SIF file...")  # Apptainer's words
        deffile = imageconfig.deffile(source)
        oci_config = json.dumps(img.config.get("config") or {}, sort_keys=True).encode()
        objects = [edit.ObjectInput(c.DataType.DEFFILE, data=deffile.encode())]
        meta = inspect_metadata(merger, generated(img, source=source, epoch=epoch), deffile)
        if meta is not None:
            objects.append(edit.ObjectInput(c.DataType.GENERIC_JSON, data=meta, name=b"inspect-metadata.json"))
        objects.append(edit.ObjectInput(c.DataType.GENERIC_JSON, data=oci_config, name=b"oci-config.json"))
        wrap_sif(tmp, out_path, objects, arch=arch,
                 image_id=reproducible_id(img, epoch) if reproducible else None,
                 when=epoch if reproducible else None)  # fmt: skip
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ConvertError(f"can't write `{out_path}`: no space left on device") from err
        raise ConvertError(f"can't write `{out_path}`: {describe_os_error(err)}") from err
    except LayerError:
        raise
    finally:
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)


def convert_oci_sif(img: Image, out_path: str, *, source: str, compressor: str = DEFAULT_COMPRESSOR,
                    level: int | None = DEFAULT_LEVEL, procs: int | None = None,
                    warn: Callable[[str], None], step: Step) -> None:  # fmt: skip
    """Convert `img` to the OCI-SIF `out_path` (SingularityCE's `pull --oci` layout): its layers
    squashed into one SquashFS layer, its config and a manifest naming that layer, a root
    index; atomically, streamed as a classic pull (no root file system on disk)."""
    from sifbox import __version__
    from sifbox.formats.sif import oci
    from sifbox.image.sif_file import write_atomically

    if img.layers and all(layer.media_type == SQUASHFS_LAYER for layer in img.layers):
        _copy_oci_sif(img, out_path, step)  # an OCI-SIF pushed to a registry: its blobs as they are
        return
    epoch = source_date_epoch()
    when = time.gmtime(epoch if epoch is not None else time.time())
    directory = os.path.dirname(os.path.abspath(out_path))
    created: list[str] = []
    try:
        os.close(_mkstemp_into(created, directory, os.path.basename(out_path)))
        sqfs = created[0]
        build_squashfs(img, sqfs, source=source, epoch=epoch if epoch is not None else int(time.time()),
                       compressor=compressor, level=level, procs=procs, warn=warn, step=step, dest=out_path,
                       generate=False)  # fmt: skip
        step("Writing OCI-SIF file...")
        with open(sqfs, "rb") as layer:
            h = hashlib.sha256()
            for chunk in iter(lambda: layer.read(1 << 20), b""):
                h.update(chunk)
            size, digest = layer.tell(), "sha256:" + h.hexdigest()
            config = oci.squashed_config(img.config, digest, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
                                         created_by=f"sifbox {__version__}",
                                         source_digest=img.manifest_digest)  # fmt: skip
            manifest = oci.manifest_for(config, [(digest, size)])

            def write(fp: BinaryIO) -> None:
                layer.seek(0)
                oci.write(fp, [(layer, size, digest), config, manifest], oci.index_for([manifest]),
                          spare=oci.SPARE_DESCRIPTORS)  # fmt: skip

            write_atomically(out_path, write, verb="write", mode=0o666)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ConvertError(f"can't write `{out_path}`: no space left on device") from err
        raise ConvertError(f"can't write `{out_path}`: {describe_os_error(err)}") from err
    finally:
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _copy_oci_sif(img: Image, out_path: str, step: Step) -> None:
    """The OCI-SIF of an image whose layers are SquashFS already: its blobs, config and
    manifest as the source has them (each digest checked while it is copied)."""
    from sifbox.formats.sif import oci
    from sifbox.image.sif_file import write_atomically

    manifest = img.manifest_bytes
    if manifest is None or any(layer.digest is None or layer.size is None for layer in img.layers):
        raise ConvertError(f"can't write `{out_path}`: the layers of `{img.source}` have no digest or size")
    step("Copying SquashFS layers into the OCI-SIF file...")

    def write(fp: BinaryIO) -> None:
        readers = [img.open_layer(layer) for layer in img.layers]
        try:
            blobs: list[bytes | tuple[BinaryIO, int, str]] = [
                (r, int(layer.size or 0), str(layer.digest)) for r, layer in zip(readers, img.layers)  # type: ignore[misc]
            ]
            oci.write(fp, [*blobs, img.config_bytes, manifest], oci.index_for([manifest]),
                      spare=oci.SPARE_DESCRIPTORS)  # fmt: skip
            for r in readers:
                r.finish()  # the size and digest, checked
        finally:
            for r in readers:
                r.close()

    try:
        write_atomically(out_path, write, verb="write", mode=0o666)
    except OSError as err:
        raise ConvertError(f"can't write `{out_path}`: {describe_os_error(err)}") from err
