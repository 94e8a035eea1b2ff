"""`sifbox oci mount IMAGE BUNDLE` and `sifbox oci umount BUNDLE`, as SingularityCE has them.

`mount` makes BUNDLE an OCI runtime bundle whose `rootfs` is the image's SquashFS mounted
where it lies in the file (kernel SquashFS on an auto-clearing loop device, read-only, nosuid,
nodev; never extracted), with a `config.json` from the image (runc's defaults, the image's
OCI config or its runscript, its labels as annotations) and a record (`MARK`) of what it
made. `umount` undoes exactly that, and nothing that record does not name. Root only: the
mount is in the host's mount namespace, where a user can't mount (a user's bundle links
`rootfs` to the image instead, which `sifbox oci` mounts at each create).
"""

from __future__ import annotations

import json
import os
import stat

from sifbox.runtime.ocistate import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The record `mount` leaves in the bundle: what `umount` may undo.
MARK = ".sifbox-oci-mount.json"
ROOTFS = "rootfs"
CONFIG = "config.json"


def _open_dir(path: str, what: str) -> int:
    """The directory `path` itself (not through a symbolic link as its last component), owned
    by this caller and writable by no one else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        reason = "it is a symbolic link" if os.path.islink(path) else (err.strerror or str(err)).lower()
        raise OciError(f"can't {what}: {reason}") from None
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        os.close(fd)
        raise OciError(f"can't {what}: it is not a directory of yours that only you can write")
    return fd


def mount(image: str, bundle: str) -> None:
    """Make `bundle` (a new or empty directory) a bundle of `image` (see the module doc)."""
    what = f"mount `{image}` as the OCI bundle `{bundle}`"
    if os.getuid() != 0:
        raise OciError(f"can't {what}: only root can (the image is mounted in the host's mount namespace)",
                       hint=f"as a user, link the bundle's root file system to the image: mkdir {bundle} && "
                            f"ln -s {os.path.abspath(image)} {bundle}/rootfs && sifbox oci spec --rootless "
                            f"--bundle {bundle}")  # fmt: skip
    bundle = os.path.abspath(bundle)
    created = False
    try:
        os.mkdir(bundle, 0o755)
        created = True
    except FileExistsError:
        pass
    except OSError as err:
        raise OciError(f"can't {what}: {(err.strerror or str(err)).lower()}") from None
    dir_fd = _open_dir(bundle, what)
    try:
        if not created and os.listdir(dir_fd):
            raise OciError(f"can't {what}: the directory is not empty",
                           hint="give a new or empty directory")  # fmt: skip
        source, doc = _open(image, what)
        try:
            _mount_into(dir_fd, bundle, source, doc, created, what)
        finally:
            source.close()
    except BaseException:
        if created:
            try:
                os.rmdir(bundle)
            except OSError:
                pass
        raise
    finally:
        os.close(dir_fd)


def _open(image: str, what: str) -> tuple[Any, dict[str, Any]]:
    """The image opened and admitted by the site's policy, and its OCI config."""
    import pwd

    from sifbox.config import sysconf
    from sifbox.image.source import ImageKind, open_image
    from sifbox.runtime.ocimode import image_config
    from sifbox.security.admission import AdmissionError, Gate

    source = open_image(os.path.abspath(image), verb="mount")
    try:
        layers = getattr(source.oci, "layers", ()) if source.oci is not None else ()
        if source.kind not in (ImageKind.SIF, ImageKind.SQUASHFS) or source.encryption is not None or len(layers) > 1:
            raise OciError(f"can't {what}: it is not a SIF image with one SquashFS root file system",
                           hint="an encrypted image, a sandbox or an OCI-SIF of several layers can't be mounted "
                                "as a bundle")  # fmt: skip
        assert source.fd is not None
        cfg = sysconf.load(None)
        conf_path = os.environ.get(sysconf.ENV_VAR) or sysconf.DEFAULT_PATH
        gate = Gate.from_config(cfg, conf_path, user=pwd.getpwuid(os.getuid()).pw_name, verb="mount")
        if gate.active:
            try:
                gate.admit(source.fd, kind="sif", image=source.path)
            except AdmissionError as err:
                raise OciError(f"can't {what}: {err.message}", hint=err.hint) from None
        return source, image_config(source)
    except BaseException:
        source.close()
        raise


def _mount_into(dir_fd: int, bundle: str, source: Any, oci: dict[str, Any], created: bool, what: str) -> None:
    from sifbox.runtime.sandbox import servicemount

    os.mkdir(ROOTFS, 0o755, dir_fd=dir_fd)
    rootfs = f"/proc/self/fd/{dir_fd}/{ROOTFS}"
    try:
        device = servicemount.mount_squashfs(source.fd, source.offset, source.size, rootfs)
    except OSError as err:
        os.rmdir(ROOTFS, dir_fd=dir_fd)
        raise OciError(f"can't {what}: {(err.strerror or str(err)).lower()}") from None
    try:
        mark = {"image": source.path, "device": device, "dev": os.stat(rootfs).st_dev, "created": created}
        _write(dir_fd, CONFIG, json.dumps(config(rootfs, oci), indent=2) + "\n")
        _write(dir_fd, MARK, json.dumps(mark) + "\n")
    except BaseException:
        servicemount.detach(rootfs)
        for name in (CONFIG, MARK):
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
        os.rmdir(ROOTFS, dir_fd=dir_fd)
        raise


def _write(dir_fd: int, name: str, text: str) -> None:
    """Write `name` in the bundle atomically (a temporary file renamed over it)."""
    tmp = f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def config(rootfs: str, oci: dict[str, Any]) -> dict[str, Any]:
    """runc's default config.json for root, running what the image runs: its OCI ENTRYPOINT
    and CMD, else its runscript (else a shell); its Env, WorkingDir and labels (annotations)."""
    from sifbox.runtime.ocimode import DEFAULT_PATH, runc_spec

    doc = runc_spec()
    entry, cmd = list(oci.get("Entrypoint") or []), list(oci.get("Cmd") or [])
    labels = _labels(rootfs)
    if entry or cmd:
        args = [str(a) for a in entry + cmd]
    elif _is_file(rootfs, "/.singularity.d/runscript"):
        args = ["/.singularity.d/runscript"]
    else:
        args = ["/bin/sh"]
    env = {"PATH": DEFAULT_PATH}
    for item in oci.get("Env") or []:
        k, sep, v = str(item).partition("=")
        if sep:
            env[k] = v
    doc["process"].update(terminal=False, args=args, env=[f"{k}={v}" for k, v in env.items()],
                          cwd=str(oci.get("WorkingDir") or "/"))  # fmt: skip
    doc["root"] = {"path": ROOTFS, "readonly": True}
    labels.update({str(k): str(v) for k, v in (oci.get("Labels") or {}).items()})
    if labels:
        doc["annotations"] = labels
    return doc


def _is_file(rootfs: str, path: str) -> bool:
    from sifbox.util.paths import chase

    try:
        return stat.S_ISREG(os.stat(chase(rootfs, path)).st_mode)
    except OSError:
        return False


def _labels(rootfs: str) -> dict[str, str]:
    """/.singularity.d/labels.json of the image (resolved inside it), string values only."""
    from sifbox.util.paths import chase

    try:
        path = chase(rootfs, "/.singularity.d/labels.json")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {}
            doc = json.loads(os.read(fd, 1 << 20))
        finally:
            os.close(fd)
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): v for k, v in doc.items() if isinstance(v, str)}


def umount(bundle: str) -> None:
    """Undo what `mount` made in `bundle`: the mount of its rootfs (only that mount, the one
    its record names), config.json, the record, rootfs, and the directory if mount made it."""
    from sifbox.runtime.sandbox import servicemount

    bundle = os.path.abspath(bundle)
    what = f"unmount the OCI bundle `{bundle}`"
    dir_fd = _open_dir(bundle, what)
    try:
        try:
            fd = os.open(MARK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                    raise ValueError
                mark = json.loads(os.read(fd, 1 << 16))
            finally:
                os.close(fd)
            dev, created = int(mark["dev"]), bool(mark["created"])
        except (OSError, ValueError, KeyError, TypeError):
            raise OciError(f"can't {what}: it is not a bundle that `sifbox oci mount` made",
                           hint="its rootfs was not mounted by sifbox; unmount it with the tool that mounted it") from None  # fmt: skip
        rootfs = f"/proc/self/fd/{dir_fd}/{ROOTFS}"
        try:
            rst = os.lstat(rootfs)
        except OSError:
            rst = None
        if rst is not None and stat.S_ISDIR(rst.st_mode) and rst.st_dev == dev:
            # the image's mount, as mount recorded it (a mount point of the bundle's own
            # directory: not followed through a link)
            if not servicemount.detach(rootfs):
                raise OciError(f"can't {what}: its rootfs is not a mount point")
        elif rst is not None and (not stat.S_ISDIR(rst.st_mode) or servicemount.is_mount_point(
                os.path.join(bundle, ROOTFS))):  # fmt: skip
            raise OciError(f"can't {what}: its rootfs is not the image `sifbox oci mount` mounted there")
        for name in (CONFIG, MARK):
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        if rst is not None:
            os.rmdir(ROOTFS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if created:
        try:
            os.rmdir(bundle)
        except OSError as err:
            raise OciError(f"can't remove the bundle `{bundle}`: {(err.strerror or str(err)).lower()}") from None
