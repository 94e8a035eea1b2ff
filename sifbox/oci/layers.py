"""Apply OCI layers without unpacking them: merge the layer tars into ONE tar stream.

Pass 1 reads only the tar headers of every layer, in order, and keeps the merged file set
in memory: later layers override earlier ones, `.wh.NAME` deletes NAME (and what is under
it), `.wh..wh..opq` hides everything lower layers put in its directory. Pass 2 writes the
result as one tar stream: the root, every directory, symlink, FIFO and device node first
(parents before children), then the regular files in layer order, each followed by its hard
links, with the data copied from the layer that holds the surviving version. Nothing is
written to disk: the stream feeds a tar-to-SquashFS tool.

Layer content is untrusted. No path ever reaches the host file system, and the merged tree
stays well formed: names with `..` are skipped, absolute names are made relative, a parent
that is a symlink is followed *inside* the image (as containerd and umoci do, so an entry
under `evil -> /etc` lands in the image's own /etc), a whiteout of `.` or `..` is skipped,
hard links must name an entry already in the image (absolute targets are taken relative to
the image root). Each such case is reported as a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import shutil
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from sifbox.oci.layout import CHUNK, Image, Layer, VerifiedReader
from sifbox.oci.tarhead import FastTarInfo
from sifbox.util.errors import SifboxError, describe_os_error

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_LINKS = 40
#: Path components that following symbolic links may add to one lookup: bounds the work a
#: layer of long link targets can cause (the kernel bounds it by PATH_MAX per link).
MAX_LINK_COMPONENTS = 1024
BLOCK = tarfile.BLOCKSIZE

# node kinds
REG, LNK, DIR, OTHER = 1, 2, 3, 4


class LayerError(SifboxError):
    reference = "oci-layer"


# -- decompression ------------------------------------------------------------------------
class _GzipReader(io.RawIOBase):
    """gzip (possibly several members) decompressed in-process, where `igzip` is missing."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""
        self._eof = False
        self._fed = False  # the current member has received input

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._eof:
            if self._z.eof:
                rest = self._z.unused_data
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._fed = False
                if rest:
                    self._inflate(rest)
                    continue
            data = self._z.unconsumed_tail or self._raw.read(CHUNK)
            if not data:
                if self._fed and not self._z.eof:
                    raise LayerError("can't read layer: truncated gzip stream")
                self._eof = True
                break
            self._inflate(data)
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _inflate(self, data: bytes) -> None:
        self._fed = True
        try:
            self._pending = self._z.decompress(data, CHUNK)
        except zlib.error as err:
            raise LayerError(f"can't read layer: invalid gzip data ({err})") from None


#: Decompressors run as processes: Debian's package names, and their commands.
_TOOLS = {"gzip": ("isal", "igzip", "invalid gzip data"), "zstd": ("zstd", "zstd", "invalid zstd data")}
#: Pipe buffer asked for between the blob, the decompressor and its reader (Linux caps it).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


def grow_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """A larger pipe buffer: fewer context switches between the processes of a stream."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)


def decompressor(kind: str) -> str | None:
    """The decompressing program for `kind` ("gzip", "zstd"), None when not installed."""
    return shutil.which(_TOOLS[kind][1])


class _PipeReader(io.RawIOBase):
    """A layer decompressed in a process of its own (`igzip -dc`, `zstd -dc`), which uses
    another CPU than the reader's; a thread feeds it the blob through its (hashing) reader.

    When the tool fails, the rest of the blob is read first, so that a blob that is not
    the one its digest names is reported as such rather than as undecodable data."""

    def __init__(self, raw: BinaryIO, exe: str, kind: str, what: str):
        self.what = what
        self.kind = kind
        self._proc = subprocess.Popen([exe, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)  # fmt: skip
        assert self._proc.stdin is not None and self._proc.stdout is not None
        grow_pipe(self._proc.stdin.fileno())
        grow_pipe(self._proc.stdout.fileno())
        self._error: BaseException | None = None
        self._raw = raw
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        assert self._proc.stdin is not None
        try:
            while data := self._raw.read(CHUNK):
                self._proc.stdin.write(data)
        except BrokenPipeError:
            pass
        except BaseException as err:  # noqa: BLE001 - re-raised in the reading thread
            self._error = err
        finally:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        assert self._proc.stdout is not None
        n = self._proc.stdout.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            self._thread.join()
            if self._error is not None:
                raise self._error
            rc = self._proc.wait()
            if rc != 0:
                while self._raw.read(CHUNK):  # a corrupt blob: its digest says so
                    pass
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace").strip()
                tool = os.path.basename(self._proc.args[0])  # type: ignore[index]
                raise LayerError(f"can't read {self.what}: {_TOOLS[self.kind][2]} "
                                 f"(`{tool} -dc` failed with status {rc}: {err})")  # fmt: skip
        return n or 0

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._thread.join()
        for f in (self._proc.stdout, self._proc.stderr):
            if f:
                f.close()
        super().close()


class LayerStream:
    """An uncompressed, buffered view of a layer blob. `finish()` verifies the whole blob
    (and the uncompressed digest when known and `check_diff`) without decompressing what
    is left."""

    def __init__(self, blob: VerifiedReader, layer: Layer, what: str, check_diff: bool = True):
        self.blob = blob
        self.what = what
        head = io.BufferedReader(blob, CHUNK)  # type: ignore[arg-type]
        magic = head.peek(4)[:4]
        self._decoder: io.RawIOBase | None = None
        kind = "gzip" if magic[:2] == b"\x1f\x8b" else "zstd" if magic == b"\x28\xb5\x2f\xfd" else None
        exe = decompressor(kind) if kind else None
        if exe is not None:
            self._decoder = _PipeReader(head, exe, kind, what)  # type: ignore[arg-type]
        elif kind == "gzip":
            self._decoder = _GzipReader(head)  # type: ignore[arg-type]
        elif kind == "zstd":
            raise LayerError(f"can't read {what}: it is zstd-compressed and `zstd` is not installed",
                             hint="install the Debian package `zstd`")  # fmt: skip
        src: io.RawIOBase = self._decoder if self._decoder is not None else head  # type: ignore[assignment]
        self._head = head
        check = layer.diff_id and check_diff
        self.diff = VerifiedReader(src, layer.diff_id, None, f"{what} (uncompressed)") if check else None
        self.reader = io.BufferedReader(self.diff or src, CHUNK)  # type: ignore[arg-type]

    def read(self, n: int = -1) -> bytes:
        return self.reader.read(n)

    def finish(self, full: bool = False) -> None:
        """Check the blob: read the rest raw, or decompressed when an uncompressed digest
        must be checked too (or the decoder is a pipe)."""
        if self.diff is not None or isinstance(self._decoder, _PipeReader) or full:
            while self.reader.read(CHUNK):
                pass
        while self._head.read(CHUNK):
            pass
        self.blob.finish()

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
        self.blob.close()


@contextlib.contextmanager
def open_layer(img: Image, index: int, *, check_diff: bool = True) -> Iterator[LayerStream]:
    """The layer's uncompressed stream; `check_diff`: check its uncompressed digest too
    (pass 2 need not: pass 1 checked it, and each pass checks the blob's own digest, so
    both decompressed the same bytes)."""
    layer = img.layers[index]
    what = f"layer {index + 1} ({layer.label}) of `{img.source}`"
    try:
        blob = img.open_layer(layer)
    except FileNotFoundError:
        raise LayerError(f"can't read {what}: the blob is missing") from None
    except OSError as err:
        raise LayerError(f"can't read {what}: {describe_os_error(err)}") from None
    stream = LayerStream(blob, layer, what, check_diff)
    try:
        yield stream
    finally:
        stream.close()


class _EndsOnce:
    """A layer's uncompressed data for `tarfile`, which ends the tar at its end.

    To skip a member's data, a tar stream reads on until the end of that data even when
    the layer ends first: a header that declares 10^20 bytes would keep it reading nothing,
    forever. A read after the end has been reached is an error here."""

    def __init__(self, raw: io.BufferedReader, what: str):
        self._raw = raw
        self._what = what
        self._ended = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if not data and n != 0:
            if self._ended:
                raise LayerError(f"can't read {self._what}: the tar data ends inside a member")
            self._ended = True
        return data


def open_tar(stream: LayerStream, what: str) -> tarfile.TarFile | None:
    """The layer's tar, read as a stream (None for an empty layer)."""
    if not stream.reader.peek(1):
        return None
    try:
        data = _EndsOnce(stream.reader, what)
        return tarfile.open(fileobj=data, mode="r|", tarinfo=FastTarInfo)  # type: ignore[call-overload]
    except (tarfile.TarError, ValueError) as err:  # ValueError: a PAX number that is not one
        raise LayerError(f"can't read {what}: not a tar archive ({err})") from None


def iter_members(tf: tarfile.TarFile | None, what: str) -> Iterator[tarfile.TarInfo]:
    """The members of a layer tar, in order."""
    if tf is None:
        return
    while True:
        try:
            m = tf.next()
        except (tarfile.TarError, ValueError) as err:  # ValueError: a PAX number that is not one
            raise LayerError(f"can't read {what}: corrupt tar data ({err})") from None
        if m is None:
            return
        tf.members = []
        yield m


# -- pass 1: the merged file set -------------------------------------------------------
@dataclasses.dataclass(slots=True)
class Node:
    kind: int
    layer: int
    info: tarfile.TarInfo | None  # header for DIR/OTHER (emitted from memory); None for REG/LNK
    inode: tuple[int, int] | None = None  # the member holding the data (REG/LNK)


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """A regular file of a layer: its header, and where its data lies in the uncompressed tar."""

    info: tarfile.TarInfo
    offset: int
    size: int
    sparse: bool = False


@dataclasses.dataclass(frozen=True)
class Extra:
    """A generated entry (the /.singularity.d tree and the mount points).

    `if_absent`: only when nothing exists at that path yet (mount points, root symlinks)."""

    info: tarfile.TarInfo
    data: bytes = b""
    if_absent: bool = False


class _Skip(Exception):
    pass


class Merger:
    """The merged file system of a sequence of layers, from their headers only."""

    def __init__(self, warn: Callable[[str], None] | None = None):
        self.tree: dict[str, Node] = {}
        self.children: dict[str, set[str]] = {"": set()}
        self.warnings: list[str] = []
        self._warn_cb = warn
        self.extra: dict[tuple[int, int], tuple[tarfile.TarInfo, bytes]] = {}
        #: where each regular file's data lies in its layer's uncompressed tar
        self.data: dict[tuple[int, int], Member] = {}
        self.layer_count = 0

    # ---- helpers
    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self._warn_cb is not None:
            self._warn_cb(msg)

    def _kind_at(self, path: str) -> int | None:
        node = self.tree.get(path)
        if node is not None:
            return node.kind
        return DIR if path in self.children else None

    def _link(self, path: str) -> None:
        """Register `path` under its parent, creating implicit parents."""
        while path:
            parent, _, base = path.rpartition("/")
            kids = self.children.get(parent)
            if kids is None:
                self.children[parent] = {base}
                path = parent
                continue
            kids.add(base)
            return

    def _remove(self, path: str) -> None:
        todo = [path]
        while todo:
            p = todo.pop()
            self.tree.pop(p, None)
            for c in self.children.pop(p, ()):
                todo.append(f"{p}/{c}" if p else c)
        parent, _, base = path.rpartition("/")
        if parent in self.children:
            self.children[parent].discard(base)

    def _resolve(self, comps: list[str], what: str) -> tuple[str, bool]:
        """Resolve directory components inside the image, following symlinks within it.

        Returns the path and whether a symlink was followed; raises _Skip when a
        component is not a directory or the symlinks loop."""
        todo = list(reversed(comps))
        cur: list[str] = []
        hops = 0
        added = 0
        followed = False
        while todo:
            c = todo.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if cur:
                    cur.pop()
                continue
            path = "/".join([*cur, c])
            node = self.tree.get(path)
            if node is not None and node.kind == OTHER and node.info is not None and node.info.issym():
                hops += 1
                if hops > MAX_LINKS:
                    self.warn(f"skipped {what}: too many levels of symbolic links")
                    raise _Skip
                target = node.info.linkname
                parts = target.split("/")
                added += len(parts)
                if added > MAX_LINK_COMPONENTS:
                    self.warn(f"skipped {what}: its symbolic links expand to more than "
                              f"{MAX_LINK_COMPONENTS} path components")  # fmt: skip
                    raise _Skip
                if target.startswith("/"):
                    cur = []
                todo.extend(reversed(parts))
                followed = True
                continue
            if node is not None and node.kind != DIR:
                self.warn(f"skipped {what}: `{path}` is not a directory")
                raise _Skip
            cur.append(c)
        return "/".join(cur), followed

    def _name(self, raw: str, what: str) -> list[str]:
        if raw.startswith("/"):
            self.warn(f"{what}: absolute name, taken relative to the image root")
        comps = [c for c in raw.split("/") if c not in ("", ".")]
        if ".." in comps:
            self.warn(f"skipped {what}: the name leaves the image (`..`)")
            raise _Skip
        return comps

    # ---- layers
    def add_layer(self, index: int, members: Iterable[tarfile.TarInfo], label: str = "") -> None:
        label = label or f"layer {index + 1}"
        self.layer_count = max(self.layer_count, index + 1)
        for ordinal, m in enumerate(members):
            try:
                self._add(index, ordinal, m, label)
            except _Skip:
                pass

    def add_extra(self, entries: list[Extra]) -> None:
        """Generated entries, applied as one more layer after the image's."""
        index = self.layer_count
        self.layer_count += 1
        for ordinal, e in enumerate(entries):
            comps = [c for c in e.info.name.split("/") if c not in ("", ".")]
            try:
                parent, _ = self._resolve(comps[:-1], f"`{e.info.name}`")
            except _Skip:
                continue
            path = f"{parent}/{comps[-1]}" if parent else comps[-1]
            if e.if_absent and self._kind_at(path) is not None:
                continue
            try:
                self._add(index, ordinal, e.info, "generated", resolved=path)
            except _Skip:
                continue
            if e.info.isreg():
                self.extra[(index, ordinal)] = (e.info, e.data)

    def _add(self, layer: int, ordinal: int, m: tarfile.TarInfo, label: str, resolved: str | None = None) -> None:
        what = f"`{m.name}` in {label}"
        if resolved is None:
            comps = self._name(m.name, what)
            if not comps:
                if m.isdir():
                    info = _strip(m)
                    self.tree[""] = Node(DIR, layer, info)
                return
            base = comps[-1]
            if base.startswith(WHITEOUT):
                self._whiteout(layer, comps, what)
                return
            parent, followed = self._resolve(comps[:-1], what)
            path = f"{parent}/{base}" if parent else base
            if followed:
                self.warn(f"{what} lies under a symbolic link; stored as `/{path}` inside the image")
        else:
            path = resolved
        existing = self.tree.get(path)
        if m.isdir():
            if existing is not None and existing.kind != DIR:
                self._remove(path)
            self.tree[path] = Node(DIR, layer, _strip(m))
            self.children.setdefault(path, set())
            self._link(path)
            return
        if m.islnk():
            node = self._hardlink(m, what, path)
        elif m.isreg():
            node = Node(REG, layer, None, (layer, ordinal))
            if (layer, ordinal) not in self.extra:
                self.data[(layer, ordinal)] = Member(_strip(m), m.offset_data, m.size, m.issparse())
        elif m.issym() or m.isfifo() or m.ischr() or m.isblk():
            node = Node(OTHER, layer, _strip(m))
        else:
            self.warn(f"skipped {what}: unsupported tar entry type {m.type!r}")
            raise _Skip
        if existing is not None or path in self.children:
            self._remove(path)
        self.tree[path] = node
        self._link(path)

    def _hardlink(self, m: tarfile.TarInfo, what: str, path: str) -> Node:
        if m.linkname.startswith("/"):
            self.warn(f"{what}: hard link to absolute `{m.linkname}`, taken relative to the image root")
        comps = [c for c in m.linkname.split("/") if c not in ("", ".")]
        if ".." in comps or not comps:
            self.warn(f"skipped {what}: hard link target `{m.linkname}` leaves the image")
            raise _Skip
        parent, _ = self._resolve(comps[:-1], what)
        target = f"{parent}/{comps[-1]}" if parent else comps[-1]
        node = self.tree.get(target)
        if node is None and target in self.children:
            self.warn(f"skipped {what}: hard link to directory `{m.linkname}`")
            raise _Skip
        if node is None:
            self.warn(f"skipped {what}: hard link target `{m.linkname}` is not in the image")
            raise _Skip
        if target == path:
            raise _Skip
        if node.kind == DIR:
            self.warn(f"skipped {what}: hard link to directory `{m.linkname}`")
            raise _Skip
        if node.kind == OTHER:
            return Node(OTHER, node.layer, node.info)  # a copy of the symlink/FIFO/device
        return Node(LNK, node.layer, None, node.inode)

    def _whiteout(self, layer: int, comps: list[str], what: str) -> None:
        base = comps[-1]
        parent, _ = self._resolve(comps[:-1], what)
        if base == OPAQUE:
            if self._kind_at(parent) == DIR:
                self._prune(parent, layer)
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk, ...): nothing to apply
        name = base[len(WHITEOUT):]
        if name in ("", ".", ".."):
            self.warn(f"skipped {what}: whiteout of `{name}`")
            raise _Skip
        path = f"{parent}/{name}" if parent else name
        node = self.tree.get(path)
        if node is not None and node.layer == layer:
            return
        if node is not None or path in self.children:
            self._remove(path)

    def _prune(self, path: str, layer: int) -> None:
        """Remove what lower layers put below `path` (opaque directory). Iterative: a
        layer's directories may nest deeper than Python's recursion limit."""
        todo = [(path, False)]
        while todo:
            p, pruned = todo.pop()
            if pruned:  # an implicit directory whose content is done: drop it if empty
                if not self.children.get(p):
                    self._remove(p)
                continue
            for c in list(self.children.get(p, ())):
                cp = f"{p}/{c}" if p else c
                node = self.tree.get(cp)
                if node is None:  # implicit directory: keep this layer's content below it
                    todo += [(cp, True), (cp, False)]
                elif node.layer < layer:
                    self._remove(cp)
                elif node.kind == DIR:
                    todo.append((cp, False))

    # ---- the plan for pass 2
    def plan(self) -> Plan:
        groups: dict[tuple[int, int], list[str]] = {}
        for path, node in self.tree.items():
            if node.kind in (REG, LNK):
                assert node.inode is not None
                groups.setdefault(node.inode, []).append(path)
        carriers: dict[tuple[int, int], list[str]] = {}
        for inode, paths in groups.items():
            own = [p for p in paths if self.tree[p].kind == REG and self.tree[p].inode == inode]
            rest = sorted(p for p in paths if p not in own)
            carriers[inode] = own[:1] + sorted(own[1:]) + rest
        headers = sorted((p, n.info) for p, n in self.tree.items()
                         if n.kind in (DIR, OTHER) and p and n.info is not None)  # fmt: skip
        root = self.tree.get("")
        data = {k: self.data[k] for k in carriers if k in self.data}
        return Plan(root.info if root else None, headers, carriers, dict(self.extra), data)


@dataclasses.dataclass
class Plan:
    root: tarfile.TarInfo | None
    headers: list[tuple[str, tarfile.TarInfo]]
    carriers: dict[tuple[int, int], list[str]]
    extra: dict[tuple[int, int], tuple[tarfile.TarInfo, bytes]]
    data: dict[tuple[int, int], Member] = dataclasses.field(default_factory=dict)

    def layers_needed(self) -> set[int]:
        return {i for i, _ in self.carriers}

    @property
    def file_count(self) -> int:
        return len(self.headers) + sum(len(v) for v in self.carriers.values())


def _seconds(mtime: float) -> int:
    """A PAX `mtime` as whole seconds: `inf` and `nan` parse as floats, and are 0 here."""
    return int(mtime) if math.isfinite(mtime) else 0


def strip_member(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """A compact copy of a header that pass 1 can take later in place of `m`."""
    t = _strip(m)
    t.size, t.offset_data, t.sparse = m.size, m.offset_data, m.sparse
    return t


def _strip(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """A compact copy of a header: no buffers, only xattr PAX records."""
    t = tarfile.TarInfo(m.name)
    t.type = m.type
    t.mode = m.mode
    t.uid, t.gid = m.uid, m.gid
    t.mtime = _seconds(m.mtime)
    t.linkname = m.linkname
    t.devmajor, t.devminor = m.devmajor, m.devminor
    t.pax_headers = {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    return t


# -- pass 2: the merged tar stream -----------------------------------------------------
_FAST_TYPES = frozenset((tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                         tarfile.DIRTYPE, tarfile.FIFOTYPE))  # fmt: skip
_MAGIC = tarfile.POSIX_MAGIC
_MAGIC_SUM = sum(_MAGIC) + 8 * ord(" ")  # the magic, and the checksum field as spaces
_NO_DEVICE = bytes(16)


def ustar_header(name: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, linkname: str,
                 devmajor: int, devminor: int) -> bytes | None:  # fmt: skip
    """The 512-byte header tarfile writes (PAX format, no owner names) for an entry that needs
    no PAX record: ASCII names of at most 100 bytes, numbers that fit their octal fields;
    None for any other (tarfile writes it). Built here because pass 2 writes one per file of
    the image, and tarfile takes several times as long for each."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if (kind not in _FAST_TYPES or len(name) > 100 or len(linkname) > 100 or not name.isascii()
            or not linkname.isascii() or not (0 <= uid < 0o10000000 and 0 <= gid < 0o10000000)
            or not (0 <= size < 0o100000000000 and 0 <= mtime < 0o100000000000)):  # fmt: skip
        return None
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        if not (0 <= devmajor < 0o10000000 and 0 <= devminor < 0o10000000):
            return None
        device = b"%07o\0%07o\0" % (devmajor, devminor)
    else:
        device = _NO_DEVICE
    raw_name, raw_link = name.encode("ascii"), linkname.encode("ascii")
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    check = sum(raw_name) + sum(numbers) + kind[0] + sum(raw_link) + _MAGIC_SUM + sum(device)
    return b"".join((raw_name.ljust(100, b"\0"), numbers, b"%06o\0 " % check, kind, raw_link.ljust(100, b"\0"),
                     _MAGIC, bytes(64), device, bytes(167)))  # fmt: skip


class TarWriter:
    """Writes tar records (PAX) to a binary stream."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.written = 0

    def header(self, src: tarfile.TarInfo, name: str, *, type_: bytes | None = None, size: int = 0,
               linkname: str | None = None) -> None:  # fmt: skip
        kind = type_ if type_ is not None else src.type
        link = src.linkname if linkname is None else linkname
        mtime = max(0, _seconds(src.mtime))
        xattrs = [k for k in src.pax_headers if k.startswith("SCHILY.xattr.")]
        fast = None if xattrs else ustar_header(name, kind, src.mode & 0o7777, src.uid, src.gid, size, mtime, link,
                                                src.devmajor, src.devminor)  # fmt: skip
        if fast is not None:
            self._write(fast)
            return
        t = tarfile.TarInfo(name)
        t.type = kind
        t.mode = src.mode & 0o7777
        t.uid, t.gid = src.uid, src.gid
        t.uname = t.gname = ""
        t.mtime = mtime
        t.size = size
        t.linkname = link
        t.devmajor, t.devminor = src.devmajor, src.devminor
        t.pax_headers = {k: src.pax_headers[k] for k in xattrs}
        self._write(t.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def data(self, src: BinaryIO | bytes, size: int) -> None:
        if isinstance(src, bytes):
            self._write(src)
        else:
            left = size
            while left:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise LayerError("can't read layer: file data ends early")
                self._write(chunk)
                left -= len(chunk)
        pad = -size % BLOCK
        if pad:
            self._write(bytes(pad))

    def close(self) -> None:
        self._write(bytes(2 * BLOCK))
        self.out.flush()

    def _write(self, b: bytes) -> None:
        self.out.write(b)
        self.written += len(b)


def _copy_by_offset(plan: Plan, wanted: list[tuple[int, int]], stream: LayerStream, w: TarWriter,
                    what: str) -> None:  # fmt: skip
    """Copy the surviving files of one layer, found by the data offsets pass 1 recorded:
    no tar parsing the second time."""
    reader = stream.reader
    pos = 0
    for key in wanted:
        member = plan.data[key]
        skip = member.offset - pos
        if skip < 0:
            raise LayerError(f"can't read {what}: overlapping members")
        while skip:
            got = len(reader.read(min(skip, CHUNK)))
            if not got:
                raise LayerError(f"can't read {what}: it ends early (changed while being read?)")
            skip -= got
        paths = plan.carriers[key]
        w.header(member.info, paths[0], type_=tarfile.REGTYPE, size=member.size, linkname="")
        w.data(reader, member.size)  # type: ignore[arg-type]
        pos = member.offset + member.size
        for p in paths[1:]:
            w.header(member.info, p, type_=tarfile.LNKTYPE, linkname=paths[0])


def write_merged(plan: Plan, img: Image, out: BinaryIO, *, extra_layer: int,
                 progress: Callable[[str, int | None], None] | None = None) -> int:  # fmt: skip
    """Pass 2: write the merged image as one tar stream to `out`; return the bytes written."""
    w = TarWriter(out)
    if plan.root is not None:
        w.header(plan.root, "./")
    for path, info in plan.headers:
        w.header(info, path)
    needed = plan.layers_needed()
    for index in range(len(img.layers)):
        if index not in needed:
            continue  # pass 1 verified it; nothing of it survives
        if progress:
            progress(f"layer {index + 1}/{len(img.layers)}", img.layers[index].size)
        with open_layer(img, index, check_diff=False) as stream:
            what = f"layer {index + 1} of `{img.source}`"
            wanted = sorted(k for k in plan.carriers if k[0] == index)
            if all(k in plan.data and not plan.data[k].sparse for k in wanted):
                _copy_by_offset(plan, wanted, stream, w, what)
                stream.finish()
                continue
            last = wanted[-1][1]
            tf = open_tar(stream, what)
            assert tf is not None
            for ordinal, m in enumerate(iter_members(tf, what)):
                paths = plan.carriers.get((index, ordinal))
                if paths is not None:
                    if not m.isreg():
                        raise LayerError(f"can't read {what}: it changed while being read")
                    f = tf.extractfile(m)
                    w.header(m, paths[0], type_=tarfile.REGTYPE, size=m.size, linkname="")
                    w.data(f, m.size)  # type: ignore[arg-type]
                    for p in paths[1:]:
                        w.header(m, p, type_=tarfile.LNKTYPE, linkname=paths[0])
                if ordinal >= last:
                    break
            stream.finish()
    for key, paths in sorted(plan.carriers.items()):
        if key[0] != extra_layer:
            continue
        info, data = plan.extra[key]
        w.header(info, paths[0], type_=tarfile.REGTYPE, size=len(data), linkname="")
        w.data(data, len(data))
        for p in paths[1:]:
            w.header(info, p, type_=tarfile.LNKTYPE, linkname=paths[0])
    w.close()
    return w.written

