"""Bootstrap agents of OCI images: `oci`, `oci-archive`, `docker-archive`, `docker`.

    Bootstrap: oci              From: /path/to/layout[:TAG|@DIGEST]
    Bootstrap: oci-archive      From: image.tar[:TAG]
    Bootstrap: docker-archive   From: saved.tar[:REF]
    Bootstrap: docker           From: NAME[:TAG|@DIGEST]   (Registry:, Namespace: optional)

The layers are merged as `sifbox pull` merges them (sifbox.oci.layers: digests checked,
whiteouts and opaque directories applied, one tar stream with the generated /.singularity.d
of the image config on top: runscript, environment, labels) and that stream is unpacked into
the build root; the build adds the definition's metadata. The agent runs
as root, real or of the build's fakeroot user namespace, so owners, modes (setuid too),
hard links, FIFOs and extended attributes of the layers are kept; with subuid ranges files
of other users keep their owners, as in Apptainer's fakeroot builds. A user namespace cannot
create device nodes: each becomes an empty file in the root and is put back as a device
node when the SquashFS is written (`device_pseudo_file`).
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import threading
from collections.abc import Iterable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.build.agents import BootstrapContext
    from sifbox.formats.deffile import Stage

from sifbox.util.errors import NotAvailableError, SifboxError

#: The file in the build's scratch directory listing the device nodes that are empty files in
#: the root (mksquashfs pseudo definitions, one per line).
DEVICES_FILE = "oci-devices.pseudo"


class OciBootstrapError(SifboxError):
    reference = "bootstrap-failed"


# -- the image reference (pure) ------------------------------------------------------------
def image_uri(stage: Stage) -> str:
    """The URI (`sifbox pull` syntax) a stage's header names."""
    agent = stage.bootstrap
    source = stage.get("from").strip()
    if not source:
        raise OciBootstrapError(f"can't bootstrap with `{agent}`: the header has no `From:`",
                                hint=_FROM_HINT.get(agent))  # fmt: skip
    if agent == "docker":
        return "docker://" + docker_reference(source, stage.get("registry"), stage.get("namespace"))
    prefix = f"{agent}:"
    return prefix + source.removeprefix(prefix)  # `From: oci:/path` says the transport twice


_FROM_HINT = {
    "oci": "write `From: /path/to/layout[:tag]`",
    "oci-archive": "write `From: image.tar[:tag]`",
    "docker-archive": "write `From: saved.tar[:name:tag]`",
    "docker": "write `From: name:tag` (e.g. `From: debian:12`)",
}


def docker_reference(source: str, registry: str = "", namespace: str = "") -> str:
    """`From:` of a docker stage with its `Namespace:` and `Registry:` in front, as
    Apptainer reads them: NAMESPACE/FROM, then REGISTRY/NAMESPACE/FROM."""
    ref = source.removeprefix("docker://").lstrip("/")
    namespace = namespace.strip().strip("/")
    registry = registry.strip().removeprefix("https://").removeprefix("http://").strip("/")
    if namespace:
        ref = f"{namespace}/{ref}"
    if registry:
        ref = f"{registry}/{ref}"
    return ref


def pseudo_line(path: str, info: tarfile.TarInfo) -> str:
    """The mksquashfs pseudo definition of the device node `info` at `path` (in the root)."""
    kind = "c" if info.ischr() else "b"
    name = "/" + path.strip("/")
    quoted = (
        '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if any(c in name for c in ' "\\')
        else name
    )
    return f"{quoted} {kind} {info.mode & 0o7777:o} {info.uid} {info.gid} {info.devmajor} {info.devminor}"


# -- the agents ----------------------------------------------------------------------------
def oci_image(stage: Stage, root: str, ctx: BootstrapContext) -> None:
    """Fill `root` with the image a `Bootstrap: oci|oci-archive|docker-archive|docker` names."""
    import shutil

    from sifbox.oci.layout import SourceRef, open_image, parse_platform, parse_source

    uri = image_uri(stage)
    platform = parse_platform(None, ctx.arch)
    private = None  # a layout fetched without the cache, removed when done
    if stage.bootstrap == "docker":
        layout = _fetch_remote(uri, str(platform), ctx)
        private = layout if ctx.disable_cache else None
        ref = SourceRef("oci", layout)
    else:
        ref = parse_source(uri)
    try:
        img = open_image(ref, platform)
        try:
            have = img.platform
            if have.architecture and have.architecture != platform.architecture:
                _warn(f"the image is for `{have}`, this machine is `{platform}`")
            unpack(img, root, source=uri, ctx=ctx)
        finally:
            img.store.close()
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _fetch_remote(uri: str, platform: str, ctx: BootstrapContext) -> str:
    import importlib

    try:
        registry = importlib.import_module("sifbox.oci.registry")
    except ModuleNotFoundError as err:
        if err.name != "sifbox.oci.registry":
            raise
        raise NotAvailableError(
            f"can't bootstrap from `{uri}`: this sifbox has no registry client "
            "(`sifbox.oci.registry`) yet",
            hint="copy the image first (`skopeo copy docker://... oci:DIR:TAG`) and "
            "build from `Bootstrap: oci` with `From: DIR:TAG`",
        ) from None
    from sifbox.oci.cache import default_cache_dir

    ctx.step(f"fetching {uri}")
    layout = registry.fetch_image(
        uri, platform=platform, cache_dir=default_cache_dir(), disable_cache=ctx.disable_cache
    )
    return str(layout)


def _warn(message: str) -> None:
    from sifbox.util.log import log

    log.warning("%s", message)


# -- unpacking the merged stream -----------------------------------------------------------
class _RootTar(tarfile.TarFile):
    """Extracts the merged stream as root: numeric owners, xattrs, and device nodes that a
    user namespace refuses recorded as empty files."""

    devices: list[tuple[str, tarfile.TarInfo]]
    dest: str
    unmapped: int = 0  # entries whose owner this user namespace does not map

    def makedev(self, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        try:
            super().makedev(tarinfo, targetpath)
        except PermissionError:
            fd = os.open(
                targetpath,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            os.close(fd)
            self.devices.append((os.path.relpath(targetpath, self.dest), tarinfo))

    def chown(self, tarinfo: tarfile.TarInfo, targetpath: str, numeric_owner: bool) -> None:
        try:
            super().chown(tarinfo, targetpath, numeric_owner)
        except tarfile.ExtractError:
            self.unmapped += 1
        for key, value in tarinfo.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                with contextlib.suppress(OSError):  # trusted.* and the like stay with real root
                    os.setxattr(targetpath, key[len("SCHILY.xattr."):],
                                value.encode("utf-8", "surrogateescape"), follow_symlinks=False)  # fmt: skip


def _checked(members: Iterable[tarfile.TarInfo]) -> Iterator[tarfile.TarInfo]:
    """The merged stream has relative, resolved names only; refuse anything else."""
    for m in members:
        if m.name.startswith("/") or ".." in m.name.split("/"):
            raise OciBootstrapError(f"can't unpack `{m.name}`: the name leaves the image")
        if m.islnk() and (m.linkname.startswith("/") or ".." in m.linkname.split("/")):
            raise OciBootstrapError(
                f"can't unpack `{m.name}`: hard link to `{m.linkname}` leaves the image"
            )
        yield m


def unpack(img, root: str, *, source: str, ctx: BootstrapContext) -> None:  # type: ignore[no-untyped-def]
    """Merge the layers of `img` (with the generated /.singularity.d) into `root`."""
    import time

    from sifbox.oci.convert import merge_plan, source_date_epoch
    from sifbox.oci.layers import write_merged

    epoch = source_date_epoch()
    if epoch is None:
        epoch = int(time.time())

    def step(message: str, size: int | None = None) -> None:
        ctx.step(message[0].lower() + message[1:])

    merger = merge_plan(img, source=source, epoch=epoch, warn=_warn, step=step, finish=False)
    plan = merger.plan()
    ctx.step(f"unpacking {plan.file_count} entries of {len(img.layers)} layers")
    r, w = os.pipe()
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            with open(w, "wb", buffering=1 << 20) as out:
                write_merged(plan, img, out, extra_layer=merger.layer_count - 1)
        except BrokenPipeError:
            pass  # the reader stopped; its error is the one to report
        except BaseException as err:  # noqa: BLE001 - reported by the reading side
            failure.append(err)

    writer = threading.Thread(target=feed, name="oci-layers", daemon=True)
    writer.start()
    devices: list[tuple[str, tarfile.TarInfo]] = []
    error: BaseException | None = None
    unmapped = 0
    try:
        with open(r, "rb", buffering=1 << 20) as stream:
            try:
                tf = _RootTar.open(fileobj=stream, mode="r|")
                assert isinstance(tf, _RootTar)
                tf.devices, tf.dest = devices, root
                with tf:
                    # Names are checked by _checked; extraction filters (Python >= 3.11.4) would
                    # drop the setuid bits and owners an image root must keep.
                    kw = (
                        {"filter": "fully_trusted"}
                        if hasattr(tarfile, "fully_trusted_filter")
                        else {}
                    )
                    tf.extractall(root, members=_checked(tf), numeric_owner=True, **kw)
                    unmapped = tf.unmapped
                while stream.read(1 << 20):  # the end of the archive, so the writer finishes
                    pass
            except (tarfile.TarError, OSError) as err:
                error = err
    finally:
        writer.join()  # the read end is closed: a writer still writing stops
    if failure:
        raise failure[0]
    if error is not None:
        err = error
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        where = f" (`{err.filename}`)" if isinstance(err, OSError) and err.filename else ""
        raise OciBootstrapError(f"can't unpack `{source}` into the build root: {detail}{where}")
    if unmapped:
        _warn(f"{unmapped} files of `{source}` belong to users this build cannot map (no or too small "
              "/etc/subuid and /etc/subgid range): they are root's in the image")  # fmt: skip
    if devices:
        record_devices(ctx.tmpdir, root, devices)


def _devices_file(tmpdir: str, root: str) -> str:
    return os.path.join(tmpdir, f"{os.path.basename(os.path.normpath(root))}.{DEVICES_FILE}")


def record_devices(tmpdir: str, root: str, devices: list[tuple[str, tarfile.TarInfo]]) -> None:
    """Add the device nodes kept as empty files in `root` to its pseudo definitions."""
    with open(_devices_file(tmpdir, root), "a", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(pseudo_line(path, info) + "\n" for path, info in devices)


def _standins(tmpdir: str, root: str) -> list[tuple[str, str]]:
    """(pseudo definition, path in `root`) of each device node recorded while unpacking
    whose empty stand-in is still there (%post may have removed or replaced it)."""
    import stat

    path = _devices_file(tmpdir, root)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        name = _pseudo_name(line).lstrip("/")
        try:
            st = os.lstat(os.path.join(root, name))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            out.append((line, name))
    return out


def drop_device_standins(tmpdir: str, root: str) -> list[str]:
    """Remove the empty stand-ins of device nodes from `root` (a sandbox cannot have the
    nodes a user namespace could not create); returns their paths."""
    dropped = []
    for _, name in _standins(tmpdir, root):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(root, name))
            dropped.append("/" + name)
    return dropped


def device_pseudo_file(tmpdir: str, root: str) -> tuple[str, str] | None:
    """(pseudo definitions, exclude list) for mksquashfs: the device nodes recorded while
    unpacking whose empty stand-in is still in `root`; None when there are none."""
    found = _standins(tmpdir, root)
    keep, exclude = [line for line, _ in found], [name for _, name in found]
    if not keep:
        return None
    pseudo = os.path.join(tmpdir, "devices.pseudo")
    excl = os.path.join(tmpdir, "devices.exclude")
    with open(pseudo, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("\n".join(keep) + "\n")
    with open(excl, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("\n".join(exclude) + "\n")
    return pseudo, excl


def _pseudo_name(line: str) -> str:
    if line.startswith('"'):
        out, i = [], 1
        while i < len(line) and line[i] != '"':
            if line[i] == "\\" and i + 1 < len(line):
                i += 1
            out.append(line[i])
            i += 1
        return "".join(out)
    return line.split(" ", 1)[0]
