"""An OCI runtime bundle's config.json, read and checked: what `sifbox oci` runs.

Pure: the document in, a `Bundle` out (runc's specconv + configs/validate, in
one pass). Everything a hostile config.json could use to reach the host is
refused here, before any namespace exists: mounts onto /proc (runc's
CVE-2019-19921 family), destinations that are not clean absolute paths,
devices outside /dev or of unknown kinds, masked/read-only paths that are not
absolute. Symlinks inside the rootfs are resolved later, inside the root
(`sifbox.util.paths.chase`), by the sandbox.
"""

from __future__ import annotations

import os
import posixpath

from sifbox.runtime.caps import NUMBERS as CAP_NUMBERS
from sifbox.runtime.sandbox.ops import Mount
from sifbox.util.errors import SifboxError
from sifbox.util.records import record as namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

SUPPORTED_NAMESPACES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup")
#: /proc files a bind may cover (lxcfs and the like), as runc's checkProcMount allows.
PROC_ALLOWED = frozenset({"/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
                          "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
                          "/proc/sys/kernel/ns_last_pid"})  # fmt: skip
#: The devices every container gets (runc's AllowedDevices that are created).
DEFAULT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
#: Mount options that are flags (not data for the file system).
_FLAGS = frozenset({"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "bind", "rbind", "private",
                    "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable", "relatime",
                    "norelatime", "strictatime", "nostrictatime", "noatime", "atime", "nodiratime", "diratime",
                    "sync", "async", "dirsync", "remount", "mand", "nomand", "recursive", "rro", "rrw",
                    "idmap", "ridmap", "tmpcopyup"})  # fmt: skip
RLIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
           "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_RSS",
           "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK")  # fmt: skip


class ConfigError(SifboxError):
    """config.json asks for something wrong or unsupported."""

    reference = "oci-config"


if TYPE_CHECKING:

    class Process(NamedTuple):
        args: tuple[str, ...]
        env: dict[str, str]
        cwd: str
        uid: int = 0
        gid: int = 0
        groups: tuple[int, ...] = ()
        terminal: bool = False
        caps: frozenset[int] = frozenset()
        rlimits: tuple[tuple[str, int, int], ...] = ()
        no_new_privs: bool = True

    class Bundle(NamedTuple):
        path: str
        oci_version: str
        rootfs: str
        readonly: bool
        process: Process
        hostname: str | None
        mounts: tuple[Any, ...]
        namespaces: frozenset[str]
        uid_maps: tuple[tuple[int, int, int], ...]
        gid_maps: tuple[tuple[int, int, int], ...]
        annotations: dict[str, str]
        seccomp: dict[str, Any] | None = None
        limits: Any = None  # sifbox.hpc.cgroups.Limits of linux.resources
        hooks: tuple[tuple[str, Any], ...] = ()  # (kind, ocihooks.Hook), in order
        ns_paths: dict[str, str] | None = None  # kind: the path of an existing namespace to join

else:
    Process = namedtuple("Process", "args env cwd uid gid groups terminal caps rlimits no_new_privs",
                         defaults=(0, 0, (), False, frozenset(), (), True))
    Bundle = namedtuple("Bundle", "path oci_version rootfs readonly process hostname mounts namespaces uid_maps "
                        "gid_maps annotations seccomp limits hooks ns_paths", defaults=(None, None, (), None))


def _fail(what: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"can't use the bundle's config.json: {what}", hint=hint)


def _obj(doc: Any, key: str, kind: type, default: Any) -> Any:
    value = doc.get(key, default) if isinstance(doc, dict) else default
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(f"`{key}` must be {kind.__name__}")
    return value


def clean_path(path: Any, what: str) -> str:
    """An absolute container path, normalized; `..` can't climb out of `/`."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise _fail(f"{what} `{path}` is not a path")
    if not path.startswith("/"):
        raise _fail(f"{what} `{path}` is not an absolute path")
    return posixpath.normpath("/" + path.lstrip("/"))


def parse_process(doc: Any, *, default_cwd: str = "/") -> Process:
    """The `process` object of config.json (or of `exec -p process.json`)."""
    if not isinstance(doc, dict):
        raise _fail("`process` is missing")
    args = _obj(doc, "args", list, [])
    if not args or not all(isinstance(a, str) for a in args):
        raise _fail("`process.args` must be a non-empty list of strings")
    env: dict[str, str] = {}
    for item in _obj(doc, "env", list, []):
        if not isinstance(item, str) or "=" not in item:
            raise _fail(f"`process.env` entry `{item}` is not NAME=VALUE")
        name, _, value = item.partition("=")
        env[name] = value
    cwd = clean_path(_obj(doc, "cwd", str, default_cwd), "`process.cwd`")
    if cwd == "/proc" or cwd.startswith("/proc/"):
        raise _fail(f"`process.cwd` `{cwd}` is inside /proc", hint="a working directory in /proc could be a "
                    "descriptor of the runtime's (CVE-2024-21626); use a directory of the container")  # fmt: skip
    user = _obj(doc, "user", dict, {})
    uid, gid = _obj(user, "uid", int, 0), _obj(user, "gid", int, 0)
    groups = _obj(user, "additionalGids", list, [])
    if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in groups) or uid < 0 or gid < 0:
        raise _fail("`process.user` IDs must be non-negative integers")
    caps: set[int] = set()
    for name in _obj(_obj(doc, "capabilities", dict, {}), "bounding", list, []):
        number = CAP_NUMBERS.get(str(name).upper())
        if number is None:
            raise _fail(f"unknown capability `{name}`")
        caps.add(number)
    rlimits = []
    for item in _obj(doc, "rlimits", list, []):
        kind = _obj(item, "type", str, "")
        if kind not in RLIMITS:
            raise _fail(f"unknown rlimit `{kind}`")
        rlimits.append((kind, _obj(item, "soft", int, 0), _obj(item, "hard", int, 0)))
    return Process(tuple(args), env, cwd, uid, gid, tuple(groups), bool(_obj(doc, "terminal", bool, False)),
                   frozenset(caps), tuple(rlimits), bool(_obj(doc, "noNewPrivileges", bool, False)))  # fmt: skip


def _id_maps(doc: Any, key: str) -> tuple[tuple[int, int, int], ...]:
    maps = []
    for item in _obj(doc, key, list, []):
        inside, outside, size = (_obj(item, k, int, -1) for k in ("containerID", "hostID", "size"))
        if min(inside, outside) < 0 or size < 1:
            raise _fail(f"`linux.{key}` entry {item} is not containerID, hostID, size")
        maps.append((inside, outside, size))
    return tuple(maps)


def load(bundle: str) -> Bundle:
    """Read BUNDLE/config.json."""
    from sifbox.util import cjson

    path = os.path.abspath(bundle)
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            doc = cjson.loads(f.read(16 << 20))
    except OSError as err:
        raise ConfigError(f"can't read `{path}/config.json`: {err.strerror}",
                          hint="a bundle is a directory with config.json and a root file system; "
                          "`runc spec` writes a config.json") from None  # fmt: skip
    except ValueError as err:
        raise ConfigError(f"can't read `{path}/config.json`: not JSON: {err}") from None
    return parse(doc, path)


def parse(doc: Any, bundle: str) -> Bundle:
    """Check and translate config.json (`doc`) of the bundle at `bundle`."""
    if not isinstance(doc, dict):
        raise _fail("not a JSON object")
    root = _obj(doc, "root", dict, None)
    if root is None or not isinstance(root.get("path"), str) or not root["path"]:
        raise _fail("`root.path` is missing")
    rootfs = root["path"] if root["path"].startswith("/") else os.path.join(bundle, root["path"])
    process = parse_process(doc.get("process"))
    linux = _obj(doc, "linux", dict, {})
    namespaces = set()
    ns_paths: dict[str, str] = {}
    for ns in _obj(linux, "namespaces", list, []):
        kind = _obj(ns, "type", str, "")
        if kind not in SUPPORTED_NAMESPACES:
            raise _fail(f"unknown namespace type `{kind}`")
        path = _obj(ns, "path", str, "")
        if path:
            if kind in ("mount", "user"):
                raise _fail(f"joining an existing {kind} namespace (`path`) is not supported",
                            hint="sifbox joins existing pid, network, ipc, uts and cgroup namespaces")  # fmt: skip
            if not path.startswith("/") or "\0" in path:
                raise _fail(f"the path `{path}` of the {kind} namespace is not an absolute path")
            ns_paths[kind] = path
        namespaces.add(kind)
    if "mount" not in namespaces:
        raise _fail("a mount namespace is required", hint='add {"type": "mount"} to linux.namespaces')
    uid_maps, gid_maps = _id_maps(linux, "uidMappings"), _id_maps(linux, "gidMappings")
    if (uid_maps or gid_maps) and "user" not in namespaces:
        raise _fail("uidMappings/gidMappings need a user namespace", hint='add {"type": "user"} to linux.namespaces')
    hostname = _obj(doc, "hostname", str, "") or None
    if hostname is not None and ("uts" not in namespaces or "uts" in ns_paths):
        raise _fail("a hostname needs a UTS namespace of the container's own",
                    hint='add {"type": "uts"} (without a path) to linux.namespaces, or drop the hostname')  # fmt: skip
    mounts = [m for item in _obj(doc, "mounts", list, []) for m in _mount(item, bundle, namespaces)]
    mounts += devices(_obj(linux, "devices", list, []))
    for p in _obj(linux, "maskedPaths", list, []):
        mounts.append(Mount("mask", None, clean_path(p, "masked path")))
    for p in _obj(linux, "readonlyPaths", list, []):
        mounts.append(Mount("readonly", None, clean_path(p, "read-only path")))
    annotations = {str(k): str(v) for k, v in _obj(doc, "annotations", dict, {}).items()}
    seccomp = _obj(linux, "seccomp", dict, None)
    from sifbox.hpc.cgroups import from_oci
    from sifbox.runtime import ocihooks

    return Bundle(bundle, _obj(doc, "ociVersion", str, "1.0.2"), rootfs, bool(root.get("readonly", False)),
                  process, hostname, tuple(mounts), frozenset(namespaces), uid_maps, gid_maps, annotations,
                  seccomp, from_oci(linux.get("resources")), ocihooks.parse(doc.get("hooks"), _fail),
                  ns_paths or None)  # fmt: skip


def _mount(item: Any, bundle: str, namespaces: set[str]) -> list[Any]:
    dest = clean_path(_obj(item, "destination", str, ""), "mount destination")
    kind = _obj(item, "type", str, "")
    options = [str(o) for o in _obj(item, "options", list, [])]
    source = _obj(item, "source", str, "")
    readonly = "ro" in options or "rro" in options
    data = ",".join(o for o in options if o not in _FLAGS) or None
    bind = kind == "bind" or "bind" in options or "rbind" in options
    if dest == "/proc" and kind == "proc":
        return [Mount("proc", None, dest)]
    if dest == "/":
        raise _fail("a mount over the container's root `/` is not allowed")
    if (dest == "/proc" or dest.startswith("/proc/")) and not (bind and dest in PROC_ALLOWED):
        raise _fail(f"mounting `{kind or 'bind'}` on `{dest}` is not allowed: it is inside /proc",
                    hint="only /proc itself (type proc) and a few files (/proc/cpuinfo, /proc/meminfo...) "
                    "may be mount destinations")  # fmt: skip
    noexec = "noexec" in options
    if bind:
        if not source:
            raise _fail(f"the bind mount on `{dest}` has no source")
        source = source if source.startswith("/") else os.path.join(bundle, source)
        is_file = os.path.exists(source) and not os.path.isdir(source)
        return [Mount("rbind" if "rbind" in options else "bind", source, dest, readonly, file=is_file, noexec=noexec)]
    if kind == "tmpfs":
        return [Mount("tmpfs", None, dest, readonly, data, noexec=noexec)]
    if kind == "devpts":
        return [Mount("devpts", None, dest, False, data)]
    if kind in ("sysfs", "mqueue"):
        return [Mount(kind, None, dest, readonly, None)]
    if kind == "cgroup":
        # No cgroup namespace of its own yet: the host's hierarchy, read-only.
        return [Mount("rbind", "/sys/fs/cgroup", dest, True)]
    raise _fail(f"mount type `{kind}` on `{dest}` is not supported",
                hint="sifbox supports bind, proc, tmpfs, devpts, sysfs, mqueue and cgroup mounts")  # fmt: skip


def devices(items: list[Any]) -> list[Any]:
    """The default devices and `linux.devices`, each a bind of the host's node
    (resolved later, see `host_device`): a /dev path, a character or block device."""
    found: dict[str, tuple[str, int, int]] = {}
    for path in DEFAULT_DEVICES:
        found[path] = ("c", -1, -1)
    for item in items:
        path = clean_path(_obj(item, "path", str, ""), "device path")
        if not path.startswith("/dev/") or path in ("/dev/pts", "/dev/shm", "/dev/mqueue"):
            raise _fail(f"device `{path}` is not a device path under /dev")
        kind = _obj(item, "type", str, "")
        if kind not in ("c", "b", "u"):
            raise _fail(f"device `{path}` has type `{kind}`: only c, u and b devices are supported")
        found[path] = ("b" if kind == "b" else "c", _obj(item, "major", int, -1), _obj(item, "minor", int, -1))
    return [Mount("bind", f"{kind}:{major}:{minor}", path, file=True) for path, (kind, major, minor) in found.items()]


def host_device(spec: str, path: str, *, dev: str = "/dev") -> str:
    """The host's node for a device of the plan (`spec` "c:MAJOR:MINOR", -1: the host's
    node at `path`): a character or block device of the host's /dev with those numbers."""
    import stat

    kind, major, minor = spec.split(":")
    want = stat.S_IFBLK if kind == "b" else stat.S_IFCHR
    candidates = [path] if int(major) < 0 else [path, *(os.path.join(dev, n) for n in sorted(os.listdir(dev)))]
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_IFMT(st.st_mode) != want:
            continue
        if int(major) < 0 or (os.major(st.st_rdev), os.minor(st.st_rdev)) == (int(major), int(minor)):
            return candidate
    raise ConfigError(f"can't create device `{path}` ({spec}): the host has no such device",
                      hint="sifbox binds the host's device nodes; remove it from linux.devices")  # fmt: skip
