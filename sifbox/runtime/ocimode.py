"""`sifbox exec|run|shell --oci IMAGE`: an image run with OCI semantics, through the OCI planner.

The image (SIF, SquashFS or sandbox, admitted like any other) becomes the root of an OCI
runtime configuration made here: runc's defaults (PID, IPC, UTS and mount namespaces; a user
namespace for a user, mapping them to themselves, or to root with --fakeroot; /proc, a
minimal /dev, /sys; masked and read-only /proc paths; runc's capability set), the image's OCI
config when the SIF has one (a pulled image's `oci-config.json`: Env, Entrypoint, Cmd,
WorkingDir, User: the process runs as the image's USER, resolved in its /etc/passwd and
/etc/group as runc does, the caller mapped to it; --fakeroot runs as root instead), and Apptainer's options mapped: -B/--bind and --mount, --env, --home/--no-home,
--pwd, --fakeroot, --writable-tmpfs, --hostname, --security seccomp:, --memory/--cpus/--pids-limit.
The process is PID 1 of its PID namespace; the host's environment is not passed (OCI: the
image's, then --env); the root is read-only unless --writable-tmpfs. Then the launcher runs it
in the foreground, as any sifbox container.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sifbox.util.errors import NotAvailableError, UsageError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: runc spec's defaults (tests/data/oci/runc-spec.json), as a user namespace needs them.
MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
]
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]  # fmt: skip
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
#: With --fakeroot: root of the user namespace with Docker's default set.
FAKEROOT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                 "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                 "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]  # fmt: skip


def runc_spec(*, rootless: bool = False) -> dict[str, Any]:
    """config.json as `runc spec` (or `runc spec --rootless`, for the caller) writes it."""
    caps = {k: list(CAPS) for k in ("bounding", "effective", "permitted", "ambient")}
    mounts = [dict(m) for m in MOUNTS]
    mounts[2]["options"] = [*mounts[2]["options"], *([] if rootless else ["gid=5"])]
    mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})  # fmt: skip
    linux: dict[str, Any] = {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
                             "maskedPaths": list(MASKED), "readonlyPaths": list(READONLY)}  # fmt: skip
    if rootless:
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"] + [{"type": "user"}]
        mounts[5] = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}  # fmt: skip
    else:
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": [f"PATH={DEFAULT_PATH}", "TERM=xterm"], "cwd": "/", "capabilities": caps,
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "sifbox",
        "mounts": mounts,
        "linux": linux,
    }  # fmt: skip


def image_config(source: Any) -> dict[str, Any]:
    """The OCI image config (`config` object) of an OCI-SIF, or the one a SIF pulled from an
    OCI image carries as `oci-config.json`; {} if none."""
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError, SifImage
    from sifbox.image.source import ImageKind

    oci = getattr(source, "oci", None)
    if oci is not None:
        inner = oci.config.get("config") if isinstance(oci.config, dict) else None
        return inner if isinstance(inner, dict) else {}
    if source.kind is not ImageKind.SIF or source.fd is None:
        return {}
    with os.fdopen(os.dup(source.fd), "rb") as fp:
        try:
            img = SifImage.load(fp)
            for d in img.objects():
                if d.data_type == c.DataType.GENERIC_JSON and d.name == "oci-config.json":
                    doc = json.loads(img.read(d, limit=1 << 20))
                    return doc if isinstance(doc, dict) else {}
        except (SifError, ValueError, RecursionError):
            return {}
    return {}


def _devices(request: Any) -> bool:
    return request is not None and any((request.nv, request.nvccli, request.rocm, request.devices))


def _check(launch: Any) -> None:
    spec = launch.spec
    refused = [(launch.instance is not None, "instances"), (bool(launch.app), "--app"),
               (bool(spec.overlays) or spec.writable, "--overlay/--writable"), (_devices(launch.devices), "--nv/--rocm/--device"),
               (spec.image.startswith("instance://"), "instance://"),
               (bool(spec.netns_path), "--netns-path"), (spec.net, "--net"),
               (any(b.image_src is not None or b.part_id is not None for b in spec.binds), "image binds (image-src=)"),
               (bool(launch.env_files), "--env-file")]  # fmt: skip
    for bad, what in refused:
        if bad:
            raise NotAvailableError(f"can't use {what} with --oci: not available in OCI mode yet",
                                    hint="run without --oci")  # fmt: skip


MAX_ID = (1 << 32) - 2


def parse_user(user: str, passwd: str, group: str) -> tuple[int, int]:
    """(uid, gid) of an image config's `User` (`name|uid[:group|gid]`), names looked up in
    the image's /etc/passwd and /etc/group text, as runc resolves a Docker USER: a uid not
    in passwd keeps gid 0 unless one is given. Raises UsageError for a name the image lacks
    or an ID out of range."""
    where = f"can't use the image's USER `{user[:80]}`"
    name, _, grp = user.strip().partition(":")
    if not name:
        raise UsageError(f"{where}: no user")

    def number(text: str) -> int | None:
        if not text.isascii() or not text.isdigit():
            return None
        value = int(text)
        if value > MAX_ID:
            raise UsageError(f"{where}: ID `{text[:20]}` out of range")
        return value

    entries = [line.split(":") for line in passwd.splitlines() if line.count(":") >= 3]
    uid = number(name)
    entry = next((e for e in entries if (e[2] == name if uid is not None else e[0] == name)), None)
    if uid is None:
        uid = number(entry[2]) if entry is not None else None
        if uid is None:
            raise UsageError(f"{where}: no user `{name[:40]}` in the image's /etc/passwd")
    gid = (number(entry[3]) if entry is not None else None) or 0
    if grp:
        given = number(grp)
        if given is None:
            found = next((g for g in (line.split(":") for line in group.splitlines()) if len(g) >= 3 and g[0] == grp),
                         None)  # fmt: skip
            given = number(found[2]) if found is not None else None
            if given is None:
                raise UsageError(f"{where}: no group `{grp[:40]}` in the image's /etc/group")
        gid = given
    return uid, gid


def image_user(oci: dict[str, Any], source: Any) -> tuple[int, int] | None:
    """The (uid, gid) the image's USER names, or None without one (or USER root)."""
    user = oci.get("User")
    if not isinstance(user, str) or not user.strip() or user.strip() in ("root", "0", "0:0", "root:root"):
        return None
    from sifbox.image import files

    def text(path: str) -> str:
        try:
            data = files.read_file(source, path)
        except Exception:  # noqa: BLE001 - an unreadable file is an empty one, as runc treats a missing one
            return ""
        return (data or b"")[: 1 << 20].decode("utf-8", "replace")

    grp = user.strip().partition(":")[2]
    passwd = text("/etc/passwd")
    group = text("/etc/group") if grp and not grp.isdigit() else ""
    return parse_user(user, passwd, group)


def home_env(oci: dict[str, Any], custom: str | None, home: str, *, image_user: bool, root: bool) -> dict[str, str]:
    """HOME of an --oci process, as SingularityCE's OCI mode chooses it: --home's destination
    when given; else, when the image declares a USER and the process runs as it (or as root),
    the image's own (its Env's HOME, or left out so that the container's init takes the home
    of the process's uid in the image's /etc/passwd, as runc does); else the caller's home
    path (/root with --fakeroot), over any HOME in the image's Env. `home`: that default."""
    if custom:
        return {"HOME": custom}
    declared = isinstance(oci.get("User"), str) and bool(str(oci.get("User")).strip())
    if declared and (image_user or root):
        return {}
    return {"HOME": home}


def config(launch: Any, host: Any, oci: dict[str, Any], user: tuple[int, int] | None = None) -> dict[str, Any]:
    """The OCI runtime configuration of the launch (`oci`: the image's OCI config; `user`:
    the uid and gid its USER names, or None)."""
    from sifbox.runtime import env as envmod

    spec, action, words = launch.spec, launch.action, list(launch.words)
    if action == "exec":
        args = words
    elif action == "shell":
        args = [words[0] or "/bin/sh", *words[1:]]
    elif action == "run":
        entry, cmd = list(oci.get("Entrypoint") or []), list(oci.get("Cmd") or [])
        args = entry + (words or cmd) if entry or cmd else ["/.singularity.d/runscript", *words]
    else:
        raise NotAvailableError(f"can't use --oci with `{action}`: only exec, run and shell")
    env = {"PATH": DEFAULT_PATH}
    for item in oci.get("Env") or []:
        k, sep, v = str(item).partition("=")
        if sep:
            env[k] = v
    fakeroot = spec.fakeroot and not host.is_root
    home = spec.home_target or ("/root" if fakeroot else host.home)
    inside = 0 if fakeroot or host.is_root else host.uid
    inside_gid = 0 if fakeroot or host.is_root else host.gid
    if user is not None and not spec.fakeroot:  # the image's USER, the caller mapped to it
        inside, inside_gid = user
    env.update(home_env(oci, spec.home_target, home, image_user=user is not None and not spec.fakeroot,
                        root=inside == 0))  # fmt: skip
    if os.environ.get("TERM"):
        env.setdefault("TERM", os.environ["TERM"])
    for k, v in envmod.parse_env_option(list(launch.env_opts)).items():
        env[k] = v
    mounts = [dict(m) for m in MOUNTS]
    if not spec.no_home and not spec.contain:
        source = spec.home_source or host.home
        mounts.append({"destination": home, "type": "bind", "source": source, "options": ["rbind"]})
    for b in spec.binds:
        mounts.append({"destination": b.target, "type": "bind", "source": b.source,
                       "options": ["rbind"] + (["ro"] if b.readonly else [])})  # fmt: skip
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    linux: dict[str, Any] = {"namespaces": namespaces, "maskedPaths": MASKED, "readonlyPaths": READONLY}
    if not host.is_root or spec.userns:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": inside, "hostID": host.uid, "size": 1}]
        linux["gidMappings"] = [{"containerID": inside_gid, "hostID": host.gid, "size": 1}]
        mounts[5] = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}  # fmt: skip
    caps = FAKEROOT_CAPS if fakeroot or (host.is_root and spec.userns) else CAPS if inside == 0 else []
    doc: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": [f"{k}={v}" for k, v in env.items()], "terminal": False,
                    "cwd": spec.pwd or oci.get("WorkingDir") or "/", "user": {"uid": inside, "gid": inside_gid},
                    "capabilities": {"bounding": caps}, "noNewPrivileges": True},
        "root": {"path": spec.image, "readonly": not spec.writable_tmpfs},
        "mounts": mounts,
        "linux": linux,
    }  # fmt: skip
    if spec.hostname:
        doc["hostname"] = spec.hostname
    return doc


def run(launch: Any) -> int:
    """Run the launch (`launcher.Launch` with --oci) in the foreground; its exit status."""
    from sifbox.config import sysconf
    from sifbox.runtime import images, launcher, ocirun, ocispec
    from sifbox.runtime.options import seccomp_program
    from sifbox.security.admission import Gate

    _check(launch)
    temporary = None
    if "://" in launch.spec.image:
        launch, temporary = launcher._fetch_uri(launch)
    host = launcher._host()
    cfg = sysconf.load(launch.config)
    conf_path = launch.config or os.environ.get(sysconf.ENV_VAR) or sysconf.DEFAULT_PATH
    if not host.is_root and not cfg.get_bool("allow user ns"):
        raise UsageError(f"can't run `{launch.spec.image}`: `allow user ns = no` in the site's sifbox.conf")
    gate = Gate.from_config(cfg, conf_path, user=host.user, verb=launch.action)
    try:
        key = launch.options.key if launch.options is not None else None
        opened = images.open_all(launch.spec._replace(binds=()), host, launch.action, gate, key=key)
    finally:
        if temporary is not None:  # open: its temporary copy can go
            import shutil

            shutil.rmtree(temporary, ignore_errors=True)
    try:
        oci = image_config(opened.source)
        doc = config(launch, host, oci, image_user(oci, opened.source))
        bundle = ocispec.parse(doc, os.path.dirname(os.path.abspath(opened.source.path)))
        p = ocirun.plan(bundle, "oci-mode", image=opened.image)
    except BaseException:
        opened.close()
        raise
    p.opened, p.source, p.no_init = opened, opened.source, True  # the process is PID 1
    options = launch.options
    p.seccomp = seccomp_program(options, p.caps) if options is not None else None
    if options is not None and options.limits is not None:
        from sifbox.hpc.cgroups import Cgroups

        p.cgroups = Cgroups.create(f"sifbox-{os.getpid()}", options.limits, what=f"`{launch.spec.image}`")
    try:
        return int(launcher.launch_prepared(p))
    finally:
        if p.cgroups is not None:
            p.cgroups.remove()
