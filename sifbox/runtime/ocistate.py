"""The state of `sifbox oci` containers: one directory per container under the
state root (runc's `--root`), holding versioned JSON and, while the container
is created but not started, the socket its parked process waits on.

    ROOT/ID/state.json    {"version": 1, "id", "pid", "pidStart" (the watcher: the container's pid),
                           "init", "initStart" (the payload),
                           "bundle", "rootfs", "created", "ociVersion", "annotations", "owner"}
    ROOT/ID/exec.sock     created, not started yet (runc's exec.fifo)

The status is read from the processes, as runc does: `created` while exec.sock
exists and the process lives, `running` once started, `stopped` when the
process is gone (its start time tells a reused pid apart).
"""

from __future__ import annotations

import os

from sifbox.util import cjson
from sifbox.util.errors import SifboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
EXEC_SOCKET = "exec.sock"
STATE_FILE = "state.json"
#: The characters of a container id (runc's `^[\w+-\.]+$`), without importing `re`.
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


def _is_id(name: str) -> bool:
    return bool(name) and all(c in _ID_CHARS for c in name)


class OciError(SifboxError):
    reference = "oci-runtime"
    exit_status = 1  # as runc: tools that drive it test for non-zero


def default_root() -> str:
    """runc's choice: /run/sifbox-oci for root, $XDG_RUNTIME_DIR/sifbox-oci for a user
    (~/.sifbox/oci without one: never a guessable place in /tmp that another user could make first)."""
    if os.geteuid() == 0:
        return "/run/sifbox-oci"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "sifbox-oci")
    from sifbox.util.paths import config_dir

    return os.path.join(config_dir(), "oci")


def check_root(root: str) -> None:
    """The state directory must be the caller's (or root's) and writable by nobody else:
    state written there decides which processes `kill` and `delete` signal."""
    import stat

    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
        raise OciError(f"can't use the state directory `{root}`: it is not a directory of the caller's that "
                       "only the caller can write", hint="choose another --root, or fix its owner and mode")  # fmt: skip


def check_id(cid: str) -> str:
    if not cid or cid in (".", "..") or not _is_id(cid) or len(cid) > 1024:
        raise OciError(f"can't use container id `{cid}`: invalid id format",
                       hint="an id is letters, digits and `_+-.`")  # fmt: skip
    return cid


def container_dir(root: str, cid: str) -> str:
    return os.path.join(os.path.abspath(root), check_id(cid))


def make_dir(root: str, cid: str) -> int:
    """Create ROOT/ID (0700; the root 0700 too, as runc makes it); an O_PATH
    descriptor of it. Fails if the container exists."""
    check_root(root)
    os.makedirs(root, mode=0o700, exist_ok=True)
    check_root(root)
    path = container_dir(root, cid)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise OciError(f"can't create container `{cid}`: container with id exists: {cid}",
                       hint=f"`sifbox oci delete {cid}` removes it") from None  # fmt: skip
    except OSError as err:
        raise OciError(f"can't create container `{cid}`: can't make `{path}`: {err.strerror}") from None
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def write(root: str, cid: str, doc: dict[str, Any]) -> None:
    path = container_dir(root, cid)
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cjson.dumps({"version": VERSION, **doc}))
    os.rename(tmp, os.path.join(path, STATE_FILE))


def load(root: str, cid: str) -> dict[str, Any]:
    path = container_dir(root, cid)
    check_root(root)
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            doc = cjson.loads(f.read(16 << 20))
    except FileNotFoundError:
        raise OciError(f"can't find container `{cid}`: container does not exist",
                       hint="`sifbox oci list` lists the containers") from None  # fmt: skip
    except (OSError, ValueError) as err:
        raise OciError(f"can't read the state of container `{cid}`: {err}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise OciError(f"can't read the state of container `{cid}`: unknown state version")
    return doc


def listing(root: str) -> list[str]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [n for n in names if _is_id(n) and os.path.exists(os.path.join(root, n, STATE_FILE))]


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (None: no such process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    return pid > 0 and start_time(pid) == started


def status(root: str, cid: str, doc: dict[str, Any]) -> str:
    if not alive(int(doc.get("init", 0)), int(doc.get("initStart", -1))):
        return "stopped"
    if os.path.exists(os.path.join(container_dir(root, cid), EXEC_SOCKET)):
        return "created"
    from sifbox.hpc.cgroups import freezer_file, frozen

    path = freezer_file(int(doc["init"]), f"sifbox-oci-{cid}")
    return "paused" if path is not None and frozen(path) else "running"


def oci_state(root: str, cid: str, doc: dict[str, Any]) -> dict[str, Any]:
    """runc's `state` document."""
    st = status(root, cid, doc)
    out: dict[str, Any] = {
        "ociVersion": doc.get("ociVersion", "1.0.2"),
        "id": cid,
        "pid": int(doc["pid"]) if st != "stopped" else 0,
        "status": st,
        "bundle": doc.get("bundle", ""),
        "rootfs": doc.get("rootfs", ""),
        "created": doc.get("created", ""),
        "owner": doc.get("owner", ""),
    }
    if doc.get("annotations"):
        out["annotations"] = doc["annotations"]
    return out


def now_rfc3339() -> str:
    import time

    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def remove(root: str, cid: str) -> None:
    """Remove ROOT/ID and its files (state, socket, log: no subdirectory; not `shutil`,
    whose import costs every `oci run` ~5 ms)."""
    path = container_dir(root, cid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for name in os.listdir(fd):
            try:
                os.unlink(name, dir_fd=fd)
            except OSError:
                pass
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass


def peers(pid: int, exclude: set[int]) -> list[int]:
    """The processes in the mount namespace of `pid` (the container's), but `exclude`."""
    try:
        own = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/mnt") == own:
                found.append(int(entry))
        except OSError:
            continue
    return sorted(found)
