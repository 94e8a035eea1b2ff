"""The images a container sees, opened once and admitted on their descriptors.

The main image, each `--overlay` (and SIFBOX_OVERLAY), a SIF's overlay partition and the
images bound with `image-src=`/`id=` are opened here, each judged by the site's admission
(sifbox.security.admission) on the descriptor that the sandbox then mounts. A command that
joins an instance has the images its holder keeps open judged again (`admit_instance`).
"""

from __future__ import annotations

import os

from sifbox.util.errors import SifboxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sifbox.image.source import ImageSource
    from sifbox.runtime.instances import State
    from sifbox.runtime.spec import ContainerSpec, Host
    from sifbox.security.admission import Gate


class Opened:
    """The open images of one container: `source` (the main image), `image` (what the
    sandbox mounts as root), `layers` (overlays, top first) and `data` (bound images)."""

    __slots__ = ("data", "image", "layers", "source")

    def __init__(self, source: ImageSource, image: Any, layers: list[Any], data: list[Any]) -> None:
        self.source, self.image, self.layers, self.data = source, image, layers, data

    def close(self, *, keep_writable: bool = False) -> None:
        """Close the descriptors (an ext3 overlay's lock goes with its descriptor:
        `keep_writable` keeps the writable layer's for as long as this process runs)."""
        self.source.close()
        for layer in [*self.layers, *self.data]:
            if layer.fd is None or (keep_writable and layer.writable):
                continue
            try:
                os.close(layer.fd)
            except OSError:
                pass


def kind_of(source: ImageSource) -> str:
    """The `allow container` kind of the main image."""
    from sifbox.image.source import ImageKind

    if getattr(source, "encryption", None):
        return "encrypted"
    if source.kind == ImageKind.SANDBOX:
        return "dir"
    return "squashfs" if source.kind == ImageKind.SQUASHFS else "sif"


def open_all(spec: ContainerSpec, host: Host, action: str, gate: Gate, key: Any = None,
             borrow: Callable[[str], int | None] | None = None) -> Opened:  # fmt: skip
    """Open the image, the overlays and the bound images; admit each on its descriptor.
    `key` (sifbox.security.cryptkey.Key) opens an encrypted image. `borrow(path)`: a
    descriptor of the image that a node holder already has open (`borrow.borrow`),
    used in place of opening it if it is a plain image that the site admits."""
    from sifbox.image.source import ImageKind, open_image
    from sifbox.runtime.sandbox.ops import RootImage

    source = _borrowed(spec, action, gate, borrow) if borrow is not None else None
    admitted = source is not None
    if source is None:
        source = open_image(spec.image, verb=action)
    layers: list[Any] = []
    try:
        assert source.fd is not None
        if source.encryption is not None and not gate.allows_encrypted():
            gate.refuse_encrypted(spec.image)
        if gate.active and not admitted:
            gate.admit(source.fd, kind=kind_of(source), image=spec.image)
        if source.encryption is not None:
            image = _encrypted_root(spec, host, action, source, key)
        else:
            image = RootImage("dir" if source.kind == ImageKind.SANDBOX else "squashfs", source.fd, source.offset,
                              source.size, source.path)  # fmt: skip
        if source.oci is not None and spec.writable and source.overlay is None:
            raise UsageError(f"can't {action} `{spec.image}` with --writable: the OCI-SIF image has no writable "
                             "overlay layer, and its SquashFS layers are read-only",
                             hint="--writable-tmpfs gives a writable root whose changes vanish; "
                             "--overlay DIR keeps them in DIR")  # fmt: skip
        layers = _overlays(spec, action, source, gate) + _oci_layers(source)
        data = _bound(spec, host, gate)
    except BaseException:
        Opened(source, None, layers, []).close()
        raise
    return Opened(source, image, layers, data)


def _borrowed(spec: ContainerSpec, action: str, gate: Gate, borrow: Callable[[str], int | None]) -> Any:
    """The image from the descriptor `borrow` gives, located and admitted exactly as an
    opened one is; None (the caller opens the image) if there is none, or it is not a
    plain SquashFS root (an overlay partition, more OCI layers, encryption: those read
    through copies of the descriptor), or it fails anything: the caller's own open and
    checks then decide, and say why."""
    from sifbox.image.source import ImageKind, locate

    fd = borrow(spec.image)
    if fd is None:
        return None
    try:
        source = locate(fd, spec.image, action)
        plain = (source.kind in (ImageKind.SIF, ImageKind.SQUASHFS) and source.encryption is None
                 and source.overlay is None and (source.oci is None or len(source.oci.layers) == 1))  # fmt: skip
        if plain and gate.active:
            gate.admit(fd, kind=kind_of(source), image=spec.image)
    except (SifboxError, OSError):
        plain = False
    if not plain:
        os.close(fd)
        return None
    return source


def _encrypted_root(spec: ContainerSpec, host: Host, action: str, source: ImageSource, key: Any) -> Any:
    """The RootImage of an encrypted image: gocryptfs (SIF fstype 6), with the key in a
    pipe for gocryptfs's stdin. LUKS2 (fstype 5) needs root and dm-crypt."""
    from sifbox.runtime.sandbox.ops import RootImage
    from sifbox.security import cryptkey
    from sifbox.util.paths import which

    what = f"`{spec.image}`"
    if source.encryption == "luks":
        if not host.is_root:
            raise SifboxError(f"can't {action} {what}: it is encrypted with LUKS2 (dm-crypt), which only root "
                              "can open", hint="build the image as a user with --encrypt: sifbox and Apptainer "
                              "then encrypt it with gocryptfs, which any user can run")  # fmt: skip
        raise SifboxError(f"can't {action} {what}: LUKS2-encrypted images are not available in this version "
                          "of sifbox (they need dm-crypt)", hint="build it again with `sifbox build --encrypt`, "
                          "which encrypts with gocryptfs for root and users alike")  # fmt: skip
    if key is None:
        raise UsageError(f"can't {action} {what}: the image is encrypted and no key was given",
                         hint="give its passphrase (--passphrase, or SIFBOX_ENCRYPTION_PASSPHRASE) or its "
                         "private PEM key (--pem-path, or SIFBOX_ENCRYPTION_PEM_PATH)")  # fmt: skip
    tool = which("gocryptfs")
    if tool is None:
        raise SifboxError(f"can't {action} {what}: gocryptfs is not installed",
                          hint="install the Debian package `gocryptfs`")  # fmt: skip
    if key.pem_path:
        if source.key_message is None:
            raise SifboxError(f"can't {action} {what}: the image holds no PEM key message",
                              hint="it was encrypted with a passphrase: give it with --passphrase")  # fmt: skip
        secret = cryptkey.unwrap(key.pem_path, source.key_message, verb=action, what=what)
    else:
        secret = bytearray(key.passphrase)
    try:
        key_fd = cryptkey.key_pipe(secret)
    finally:
        cryptkey.wipe(secret)
        key.wipe()
    return RootImage("gocryptfs", source.fd, source.offset, source.size, source.path, key_fd, tool)


def _overlays(spec: ContainerSpec, action: str, source: ImageSource, gate: Gate) -> list[Any]:
    """The --overlay images, plus the SIF's own overlay partition (read-only, or
    the writable layer with --writable); each admitted like the image."""
    if not spec.overlays and not spec.writable and source.overlay is None:
        return []
    from sifbox.image import overlay
    from sifbox.image.source import ImageKind
    from sifbox.runtime.sandbox.ops import Layer

    if spec.writable and source.kind == ImageKind.SQUASHFS:
        raise UsageError(f"can't {action} `{spec.image}` with --writable: a SquashFS image is read-only",
                         hint="--overlay DIR keeps changes in DIR; --writable-tmpfs gives a writable root whose "
                         "changes vanish")  # fmt: skip
    found: list[Any] = overlay.open_overlays(list(spec.overlays), verb=action)
    try:
        if spec.writable_tmpfs and not spec.writable and any(o.writable for o in found):
            # As Apptainer: the changes go to one place, the overlay or the tmpfs.
            raise UsageError(f"can't {action} `{spec.image}` with --writable-tmpfs and a writable --overlay",
                             hint="add `:ro` to the overlay, or keep the changes in it without --writable-tmpfs")
        for o in found:
            if gate.active:
                gate.admit(o.fd, kind=overlay.policy_kind(o), image=o.path, role="overlay")
        if spec.writable and source.kind == ImageKind.SIF:
            if any(o.writable for o in found):
                raise UsageError(f"can't {action} `{spec.image}` with --writable and a writable --overlay",
                                 hint="add `:ro` to the overlay")  # fmt: skip
            found.insert(0, overlay.sif_overlay_partition(spec.image, verb=action, fd=source.fd))
        elif source.overlay is not None and source.fd is not None:
            # As Apptainer: a SIF's overlay partition is a read-only layer unless --writable.
            offset, size = source.overlay
            found.append(overlay.Overlay(source.path, "ext3", os.dup(source.fd), offset, size, False))
        if source.overlay is not None and source.fd is not None and gate.active:
            gate.admit_partition(source.fd, image=spec.image)
    except BaseException:
        overlay.close(found)
        raise
    return [Layer(o.path, o.kind, o.fd, o.offset, o.size, o.writable) for o in found]


def _oci_layers(source: ImageSource) -> list[Any]:
    """An OCI-SIF's SquashFS layers above its bottom one (the root), top first: read-only
    layers under the overlays, mounted through the image's descriptor (admitted with it)."""
    if source.oci is None or len(source.oci.layers) < 2 or source.fd is None:
        return []
    from sifbox.runtime.sandbox.ops import Layer

    return [Layer(source.path, "squashfs", os.dup(source.fd), x.offset, x.size, False)
            for x in reversed(source.oci.layers[1:])]  # fmt: skip


def oci_files(source: ImageSource) -> list[tuple[str, bytes, int]]:
    """What the image config of an OCI-SIF gives the container, as a Docker image pulled
    to SIF has it in `/.singularity.d` (runscript from ENTRYPOINT/CMD, env script from ENV,
    labels): (path, bytes, mode) for the container's own layer; none for other images."""
    if source.oci is None:
        return []
    from sifbox.formats.sif import oci

    return oci.singularity_files(source.oci.config)


def oci_workdir(source: ImageSource | None) -> str | None:
    """The WORKDIR of an OCI-SIF's image config, where its container starts."""
    if source is None or source.oci is None:
        return None
    inner = source.oci.config.get("config")
    workdir = inner.get("WorkingDir") if isinstance(inner, dict) else None
    return workdir if isinstance(workdir, str) and workdir.startswith("/") else None


def _bound(spec: ContainerSpec, host: Host, gate: Gate) -> list[Any]:
    """The images bound with `image-src=` or `id=`, in the order of the plan's
    "image" mounts; each admitted like the image."""
    from sifbox.runtime.plan import image_binds

    binds = image_binds(spec)
    if not binds:
        return []
    from sifbox.image import dataimage, overlay
    from sifbox.runtime.sandbox.ops import Layer

    found: list[Any] = []
    try:
        for b in binds:
            source = os.path.join(host.cwd, b.source)
            found.append(dataimage.open_data_image(source, b.target, readonly=b.readonly, part_id=b.part_id))
            if gate.active:
                d = found[-1]
                gate.admit(d.fd, kind=dataimage.policy_kind(d.fd, d.kind), image=b.source, role="bind")
    except BaseException:
        overlay.close(found)
        raise
    return [Layer(d.path, d.kind, d.fd, d.offset, d.size, d.writable) for d in found]


def admit_instance(instance: State, gate: Gate) -> None:
    """Judge the images of a running instance again, through the descriptors its
    holder keeps open: the site's rules are those of now, not of its start."""
    if not gate.active:
        return
    config = instance.config if isinstance(instance.config, dict) else {}
    own = config.get("sifbox")
    held = own.get("images") if isinstance(own, dict) else None
    if not held or not isinstance(held, list):
        raise SifboxError(f"can't join instance `{instance.name}`: its images can't be checked against the "
                          "site's policy", hint=f"restart it: `sifbox instance stop {instance.name}`")  # fmt: skip
    for entry in held:
        try:
            fd, kind, path, role = entry
            flags = (os.O_PATH | os.O_DIRECTORY if kind == "dir" else os.O_RDONLY) | os.O_CLOEXEC
            opened = os.open(f"/proc/{instance.pid}/fd/{int(fd)}", flags)
        except (OSError, ValueError, TypeError) as err:
            raise SifboxError(f"can't join instance `{instance.name}`: can't open its image: {err}") from None
        try:
            gate.admit(opened, kind=str(kind), image=str(path), role="instance" if role == "image" else str(role))
        finally:
            os.close(opened)


def instance_record(spec: ContainerSpec, opened: Opened) -> dict[str, object]:
    """What an instance was started with (stored base64-encoded, as Apptainer's engine
    configuration), and the descriptors of its images in its holder (`admit_instance`)."""
    namespaces = (("pid", spec.pid), ("ipc", spec.ipc), ("uts", spec.uts or bool(spec.hostname)), ("net", spec.net))
    source, image = opened.source, opened.image
    images: list[list[object]] = [[image.fd, "dir" if image.kind == "dir" else kind_of(source), source.path, "image"]]
    own = source.path if source.oci is not None else None  # an OCI-SIF's upper layers: the SIF's own file
    images += [[layer.fd, "dir" if layer.kind == "dir" else "sif" if layer.path == own and layer.kind == "squashfs"
                else "extfs" if layer.kind == "ext3" else "squashfs", layer.path, "overlay"]
               for layer in opened.layers]  # fmt: skip
    if opened.data:
        from sifbox.image import dataimage

        images += [[d.fd, dataimage.policy_kind(d.fd, d.kind), d.path, "bind"] for d in opened.data]
    return {
        "engineName": "sifbox",
        "containerID": "",
        "sifbox": {
            "image": spec.image, "contain": spec.contain, "writableTmpfs": spec.writable_tmpfs,
            "fakeroot": spec.fakeroot, "binds": [list(b) for b in spec.binds],
            "namespaces": [n for n, on in namespaces if on], "images": images,
        },
    }  # fmt: skip
