"""OCI runtime bundles for the `sifbox oci` tests: a busybox-static root file system and
config.json as `runc spec` writes it (tests/data/oci/runc-spec.json, runc 1.1), made rootless
as `runc spec --rootless` makes it for an unprivileged user."""

from __future__ import annotations

import copy
import ctypes
import json
import os
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "tests" / "data" / "oci" / "runc-spec.json"
BUSYBOX = "/usr/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "sleep", "id", "hostname", "ps", "true", "false", "readlink", "env",
           "pwd", "grep", "touch", "mkdir", "stat", "test", "kill", "trap", "wc", "tty", "head")  # fmt: skip


def config(args: list[str], *, uid: int = 0, gid: int = 0, terminal: bool = False) -> dict[str, Any]:
    """runc's default config.json running `args`; rootless (for host `uid`, `gid`) when uid != 0."""
    doc: dict[str, Any] = json.loads(SPEC.read_text())
    doc["process"]["args"] = list(args)
    doc["process"]["terminal"] = terminal
    if uid != 0:
        doc["linux"].pop("resources", None)
        doc["linux"]["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
        doc["linux"]["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
        doc["linux"]["namespaces"] = [ns for ns in doc["linux"]["namespaces"] if ns["type"] != "network"]
        doc["linux"]["namespaces"].append({"type": "user"})
        for m in doc["mounts"]:
            if m["type"] == "devpts":
                m["options"] = [o for o in m["options"] if o != "gid=5"]
            if m["type"] == "sysfs":
                m.update(type="none", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"])
    return copy.deepcopy(doc)


def make(where: Path, args: list[str], *, uid: int = 0, gid: int = 0, terminal: bool = False,
         edit: Any = None) -> Path:  # fmt: skip
    """A bundle at `where` (owned by uid:gid) running `args`; `edit(doc)` changes config.json."""
    rootfs = where / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (rootfs / d).mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    doc = config(args, uid=uid, gid=gid, terminal=terminal)
    if edit is not None:
        edit(doc)
    (where / "config.json").write_text(json.dumps(doc, indent=2))
    for path in [where, *where.rglob("*")]:
        os.lchown(path, uid, gid)
    return where


def become_subreaper() -> None:
    """Make this process the subreaper of what it starts, as containerd's shim is: a runtime's
    detached container process comes here when it ends (PID 1 of this machine does not reap)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap(pid: int) -> int | None:
    """The exit status of `pid`, a child (or an orphan that came to this subreaper); None if it is not ours."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def oci_image_tar(dest: Path, name: str, cmd: list[str], *, entrypoint: list[str] | None = None,
                  env: tuple[str, ...] = ("PATH=/bin",), workdir: str = "/", user: str | None = None,
                  files: dict[str, bytes] | None = None) -> Path:  # fmt: skip
    """An OCI image layout tarball (one layer: the busybox-static root file system), named
    `name` for `ctr images import`. Built from the host's busybox, byte for byte the same each time."""
    import gzip
    import hashlib
    import io
    import tarfile

    def blob(data: bytes) -> tuple[str, int]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = Path(BUSYBOX).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for path, data in (files or {}).items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = layer.getvalue()
    packed = gzip.compress(raw, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": list(env), "Cmd": cmd, "WorkingDir": workdir,
                                    **({"Entrypoint": entrypoint} if entrypoint else {}),
                                    **({"User": user} if user else {})},
                         "rootfs": {"type": "layers", "diff_ids": [blob(raw)[0]]}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config)[0],
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(packed)[0],
                    "size": len(packed)}],
    }).encode()  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest)[0],
        "size": len(manifest), "annotations": {"io.containerd.image.name": name,
                                               "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}]})  # fmt: skip
    with tarfile.open(dest, "w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index.encode()}
        for data in (packed, config, manifest):
            files[f"blobs/sha256/{blob(data)[0][7:]}"] = data
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest
