"""`sifbox oci`: an OCI runtime bundle run as runc runs it, through sifbox's own launcher.

A thin planner: config.json (`ocispec.Bundle`) becomes the launcher's
`Prepared` (namespaces, mounts, payload, identity), and the launcher's one
orchestration (`launcher.launch_prepared`) builds the container, as for every other
sifbox container. The container ends in `park` (the launcher's `hold`) instead
of a supervisor, which gives runc's create/start split:

    sifbox oci create            (exits once the container is created)
      watcher   (detached; the launcher's namespaces; waits, then cleans up)
        init    (PID 1 with a PID namespace: pivoted, locked down), parked on
                ROOT/ID/exec.sock until `start` connects, then the payload
                itself, exec'd through the sealed trampoline (as runc's init)

The watcher's pid is the container's (`state`, `--pid-file`): it ends with the
payload's status, so a subreaper that ran `create` (containerd's shim) sees the
container end. The init's pid (`kill`, `exec`, `ps`) comes from its "ready" on
a socket pair, whose SCM_CREDENTIALS give it as the caller sees it. With
`process.terminal`, the init makes a pty in the container's devpts and sends its
master to `--console-socket` (SCM_RIGHTS).

Everything `park` uses runs after pivot_root: imported at the top.
"""

from __future__ import annotations

import _socket as socket  # the C modules: `socket` and `signal` import enum, and socket
import fcntl  # selectors and collections too, ~10 ms of CPU of every `oci run`
import os
import resource
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal

from sifbox.runtime import ocihooks, ocispec, ocistate
from sifbox.runtime.readiness import wait_ready  # not after the fork: its pages would be copied
from sifbox.runtime.ocistate import OciError
from sifbox.runtime.sandbox import rootfs
from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import Helper
from sifbox.runtime.sandbox.process import Trampoline, exec_error
from sifbox.util.errors import SifboxError, report
from sifbox.util.paths import chase

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

CREATE_LOG = "create.log"


class Channels:
    """The descriptors the container's processes inherit from `create`."""

    __slots__ = ("console", "hooks", "immediate", "listen", "notify", "stderr")

    def __init__(self, listen: int, notify: int, console: int, stderr: int, immediate: bool,
                 hooks: list[tuple[str, ocihooks.Hook]]) -> None:  # fmt: skip
        self.listen, self.notify, self.console, self.stderr, self.immediate = listen, notify, console, stderr, immediate
        self.hooks = hooks  # startContainer: run in the container once `start` comes


# --- the plan -----------------------------------------------------------------------------------


def preserved_fds(count: int) -> frozenset[int]:
    """`--preserve-fds N`: descriptors 3 to 3+N-1, which the container's process inherits (as
    runc passes them); N within the open-files limit."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if count < 0 or count > limit - 3:
        raise OciError(f"can't use --preserve-fds `{count}`: not between 0 and {limit - 3} (the open files limit)")
    return frozenset(range(3, 3 + count))


def plan(b: ocispec.Bundle, cid: str, image: Any = None, keep_fds: frozenset[int] = frozenset()) -> Any:
    """The launcher's `Prepared` for bundle `b` (container `cid`). With `image` (a RootImage
    opened and admitted by the caller: `--oci`), that is the root, never written in place.
    `keep_fds`: the caller's descriptors the process inherits (`--preserve-fds`)."""
    import pwd

    from sifbox.config import sysconf
    from sifbox.image.source import ImageSource
    from sifbox.runtime import images, launcher
    from sifbox.runtime.options import LaunchOptions
    from sifbox.runtime.plan import site_from_config
    from sifbox.runtime.sandbox.ops import RootImage
    from sifbox.runtime.spec import ContainerSpec, Host

    uid, gid = os.getuid(), os.getgid()
    try:
        entry = pwd.getpwuid(uid)
        host = Host(uid, gid, entry.pw_name, entry.pw_dir, "/", uid == 0)
    except KeyError:
        host = Host(uid, gid, f"uid{uid}", "/", "/", uid == 0)
    proc = b.process
    ns, inner = _namespaces(b, host)
    userns = bool(ns.user)
    in_place, squashfuse = image is None, None
    if image is None:
        rootfs_path = os.path.realpath(b.rootfs)
        try:
            fd = os.open(rootfs_path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise OciError(f"can't create container `{cid}`: can't open the root file system `{b.rootfs}`: "
                           f"{err.strerror}") from None  # fmt: skip
        image = RootImage("dir", fd, 0, 0, rootfs_path)
    else:
        rootfs_path = image.path
        if userns and image.kind != "dir":
            from sifbox.util.paths import which

            squashfuse = which("squashfuse_ll")
            if squashfuse is None:
                raise OciError(f"can't run `{rootfs_path}`: squashfuse_ll is not installed",
                               hint="install the Debian package `squashfuse`")  # fmt: skip
    new = _new_namespaces(b)
    spec = ContainerSpec(image=b.path if in_place else rootfs_path, action="exec", command=list(proc.args),
                         no_home=True, contain=True, writable=in_place and not b.readonly,
                         writable_tmpfs=not in_place and not b.readonly, pwd=proc.cwd, identity_files=False, userns=userns,
                         pid="pid" in new, ipc="ipc" in new, uts="uts" in new, net="network" in new,
                         hostname=b.hostname)  # fmt: skip
    mounts = [m._replace(source=ocispec.host_device(m.source, m.target)) if _is_device(m) else m for m in b.mounts]
    cfg = sysconf.load(None)
    run_as: tuple[int, int, tuple[int, ...]] | None = (proc.uid, proc.gid, proc.groups)
    if userns and run_as == (inner.uid, inner.gid, ()):
        run_as = None  # already that identity (and setgroups is denied in a user namespace mapped alone)
    elif userns and proc.groups and ns.maps is None:
        raise OciError(f"can't create container `{cid}`: additionalGids need a user namespace with "
                       "several gids mapped", hint="map a gid range (gidMappings), or drop additionalGids")
    env = dict(proc.env)  # HOME added by prepare_root when missing, as runc adds it
    seccomp = None
    if b.seccomp is not None:
        from sifbox.runtime.caps import names
        from sifbox.security.seccomp import compile_profile

        seccomp = compile_profile(b.seccomp, caps=frozenset(names(proc.caps)), what="linux.seccomp of config.json")
    return launcher.Prepared(
        seccomp=seccomp, cgroups=None, action="exec", spec=spec, host=host, inner=inner, cfg=cfg, site=site_from_config(cfg),
        log=launcher.verbose_log(), caps=proc.caps, contained=True, userns=userns, squashfuse=squashfuse,
        source=None, opened=images.Opened(ImageSource(rootfs_path, "sandbox", None), image, [], []), image=image,
        layers=[], data=[], identity=False, mounts=mounts, fixed=(list(proc.args), env),
        keep_fds=keep_fds, ns=ns, options=LaunchOptions(run_as=run_as), no_init=False,
        prepare_root=lambda root: _prepare_root(root, proc, env),
    )  # fmt: skip


def _plan_root(b: ocispec.Bundle, cid: str, keep_fds: frozenset[int]) -> Any:
    """`plan` for `create`: a root file system that is an image file (`root.path`, or the
    bundle's `rootfs` linked to a SIF or SquashFS image) is opened, admitted by the site's
    policy and mounted as sifbox mounts any image (never extracted; read-only, a tmpfs over
    it unless root.readonly); a directory is the root itself."""
    import stat

    try:
        is_file = stat.S_ISREG(os.stat(b.rootfs).st_mode)
    except OSError:
        is_file = False
    if not is_file:
        return plan(b, cid, keep_fds=keep_fds)
    from sifbox.config import sysconf
    from sifbox.runtime import images
    from sifbox.runtime.spec import ContainerSpec, Host
    from sifbox.security.admission import Gate

    uid = os.getuid()
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    cfg = sysconf.load(None)
    conf_path = os.environ.get(sysconf.ENV_VAR) or sysconf.DEFAULT_PATH
    gate = Gate.from_config(cfg, conf_path, user=name, verb="exec")
    host = Host(uid, os.getgid(), name, "/", "/", uid == 0)
    opened = images.open_all(ContainerSpec(image=os.path.realpath(b.rootfs), action="exec"), host, "exec", gate)
    try:
        p = plan(b, cid, image=opened.image, keep_fds=keep_fds)
    except BaseException:
        opened.close()
        raise
    p.opened, p.source = opened, opened.source
    return p


def _is_device(m: Any) -> bool:
    return bool(m.kind == "bind" and m.source and m.source[:2] in ("c:", "b:"))


def _new_namespaces(b: ocispec.Bundle) -> frozenset[str]:
    """The namespace kinds the container gets new (the others of config.json are joined by path)."""
    return frozenset(b.namespaces) - frozenset(b.ns_paths or ())


def _join(b: ocispec.Bundle) -> tuple[tuple[int, int], ...]:
    """The existing namespaces of config.json (`path`): (CLONE_NEW* flag, open descriptor)."""
    flags = {"pid": sc.CLONE_NEWPID, "network": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS,
             "cgroup": sc.CLONE_NEWCGROUP}  # fmt: skip
    out: list[tuple[int, int]] = []
    for kind, path in sorted((b.ns_paths or {}).items()):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            for _, opened in out:
                os.close(opened)
            raise OciError(f"can't join the {kind} namespace `{path}`: {err.strerror}") from None
        out.append((flags[kind], fd))
    return tuple(out)


def _namespaces(b: ocispec.Bundle, host: Any) -> tuple[Any, Any]:
    """The sandbox's Namespaces for the bundle, and the identity the container starts with."""
    from sifbox.runtime.sandbox.ops import Namespaces
    from sifbox.util.paths import which

    new = _new_namespaces(b)
    extra = {"pid": "pid" in new, "ipc": "ipc" in new, "uts": "uts" in new, "net": "network" in new,
             "hostname": b.hostname, "join": _join(b)}  # fmt: skip
    if "user" not in b.namespaces:
        if not host.is_root:
            raise OciError("can't create a rootless container: config.json has no user namespace",
                           hint='add {"type": "user"} and uidMappings/gidMappings; `runc spec --rootless` '
                           "writes such a config.json")  # fmt: skip
        return Namespaces(False, host.uid, host.gid, **extra), host
    uids, gids = b.uid_maps, b.gid_maps
    if not uids or not gids:
        raise OciError("can't create the container: a user namespace needs uidMappings and gidMappings")
    if len(uids) == 1 and len(gids) == 1 and uids[0][2] == 1 and gids[0][2] == 1 and uids[0][0] == gids[0][0]:
        inside, outside, _ = uids[0]
        if not host.is_root and (outside, gids[0][1]) != (host.uid, host.gid):
            raise OciError(f"can't create a rootless container: uid {outside} and gid {gids[0][1]} are not "
                           f"the caller's ({host.uid}, {host.gid})", hint="map your own uid and gid")  # fmt: skip
        ns = Namespaces(True, outside, gids[0][1], inside=inside, **extra)
        return ns, host._replace(uid=inside, gid=inside)
    if host.is_root:
        raise OciError("can't create the container: several uid/gid ranges in a user namespace are not "
                       "supported for root yet", hint="map one uid and one gid")  # fmt: skip
    tools = which("newuidmap"), which("newgidmap")
    if None in tools:
        raise OciError("can't create a rootless container with several ID ranges: newuidmap is not installed",
                       hint="install the Debian package `uidmap`")  # fmt: skip
    ns = Namespaces(True, host.uid, host.gid, maps=(uids, gids), tools=tools, **extra)
    inside_uid = next((i for i, o, _ in uids if o == host.uid), 0)
    inside_gid = next((i for i, o, _ in gids if o == host.gid), 0)
    return ns, host._replace(uid=inside_uid, gid=inside_gid)


def home_of(root: str, uid: int) -> str:
    """The home directory of `uid` in the /etc/passwd of `root` ("/" if none), as runc finds HOME."""
    from sifbox.runtime.sandbox.rootfs import read_text

    for line in read_text(root, "/etc/passwd").splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid) and fields[5].startswith("/"):
            return fields[5]
    return "/"


def _prepare_root(root: str, proc: ocispec.Process, env: dict[str, str]) -> None:
    """In the container's init, before pivot_root: HOME when the process has none, the
    working directory made (as runc makes it), the rlimits set (the payload inherits them)."""
    if "HOME" not in env:
        env["HOME"] = home_of(root, proc.uid)
    try:
        chase(root, proc.cwd, create="dir")
    except OSError as err:
        raise OciError(f"can't create the working directory `{proc.cwd}`: {err.strerror}") from None
    for kind, soft, hard in proc.rlimits:
        try:
            resource.setrlimit(getattr(resource, kind), (soft, hard))
        except (OSError, ValueError) as err:
            raise OciError(f"can't set {kind} to {soft}:{hard}: {err}") from None


# --- create, run --------------------------------------------------------------------------------


def hook_state(doc: dict[str, Any], status: str, *, inside: bool = False) -> bytes:
    """The state a hook reads on its stdin; its `pid` is the container's process (in the
    container's namespaces: /proc/PID/ns/net of a network hook), as the container sees it for
    a hook `inside` it (1 with a PID namespace), none once stopped (as runc)."""
    from sifbox.util import cjson

    state: dict[str, Any] = {"ociVersion": doc.get("ociVersion", "1.0.2"), "id": doc["id"], "status": status}
    pid = int(doc["init"])
    if inside:
        try:
            with open(f"/proc/{pid}/status") as f:
                pid = int(next(ln for ln in f if ln.startswith("NSpid:")).split()[-1])
        except (OSError, StopIteration, ValueError):
            pass
    if status != "stopped":
        state["pid"] = pid
    state["bundle"] = doc.get("bundle", "")
    if doc.get("annotations"):
        state["annotations"] = doc["annotations"]
    return cjson.dumps(state).encode()


def create(b: ocispec.Bundle, cid: str, root: str, *, pid_file: str | None = None,
           console_socket: str | None = None, detach: bool = True, preserve_fds: int = 0,
           parked: bool | None = None) -> tuple[int, int]:  # fmt: skip
    """Create container `cid` from bundle `b`; return (the payload's pid, the watcher's pid).

    The watcher's pid is the container's (`state`, `--pid-file`): it ends when the
    payload ends, with its status, as runc's init would, and a subreaper that
    started `create` (containerd's shim) reaps it.

    With `detach` (create), the watcher leaves this process (setsid, second fork)
    and the payload waits for `start`; without (run), the watcher stays this
    process's child and the payload starts at once, unless `parked` (then it waits for
    `start` too: a run with hooks). The create hooks run before this returns."""
    parked = detach if parked is None else parked
    if b.process.terminal and not console_socket and detach:
        raise OciError(f"can't create container `{cid}`: process.terminal is set but no --console-socket was given",
                       hint="pass --console-socket, or set process.terminal to false")  # fmt: skip
    dir_fd = ocistate.make_dir(root, cid)
    here = f"/proc/self/fd/{dir_fd}"
    created = False
    cgroups = None
    try:
        # linux.resources, and the freezer of `pause` (when this caller can have cgroups): joined
        # by the container's process before pivot_root
        from sifbox.hpc.cgroups import CgroupError, Cgroups, Limits

        if b.limits is not None:
            cgroups = Cgroups.create(f"sifbox-oci-{cid}", b.limits, what=f"container `{cid}`", extra=("freezer",))
        else:
            # no limits yet: the controllers `update` may set, when this caller can have them
            for extra in (("freezer", "memory", "cpu", "pids", "cpuacct"), ("freezer",)):
                try:
                    cgroups = Cgroups.create(f"sifbox-oci-{cid}", Limits(), what=f"container `{cid}`", extra=extra)
                    break
                except (CgroupError, OSError):
                    cgroups = None  # no pause/resume (or no update) for this container
        if cgroups is not None:
            cgroups.warm()  # while the plan is made: the container's join then doesn't wait
        p = _plan_root(b, cid, preserved_fds(preserve_fds))
        p.cgroups = cgroups
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(f"{here}/{ocistate.EXEC_SOCKET}")
        listener.listen(1)
        console = None
        if b.process.terminal and console_socket:
            import termios  # noqa: F401 - for terminal_to, in the container's root

            console = connect_console(console_socket, f"create container `{cid}`")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        log_fd = os.open(f"{here}/{CREATE_LOG}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # What the watcher and the container's process import, imported here: after the
        # fork, each would copy the pages it touches (the modules' code is shared).
        from sifbox.runtime import identity, supervisor  # noqa: F401
        from sifbox.runtime.sandbox import mountplan, namespaces  # noqa: F401

        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            ours.close()
            chans = Channels(listener.fileno(), theirs.fileno(), console.fileno() if console else -1,
                             os.dup(2), immediate=not parked, hooks=ocihooks.of_kind(b.hooks, "startContainer"))  # fmt: skip
            _watcher(p, chans, log_fd, proc_fd, detach, parent)
        theirs.close()
        listener.close()
        os.close(log_fd)
        os.close(proc_fd)
        if console is not None:
            console.close()
        if detach:
            os.waitpid(child, 0)
        seen: dict[str, int] = {}
        try:
            pid, status = wait_ready(ours, seen)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): take the half-created container down.
            try:
                os.kill(seen.get("watcher", child), signal.SIGKILL)
            except ProcessLookupError:
                pass
            if not detach:
                reap(child)
            raise
        finally:
            ours.close()
        watcher = seen.get("watcher", child)
        if pid is None:
            if not detach:
                reap(child)
            raise _create_error(cid, here, status)
        started, wstarted = ocistate.start_time(pid), ocistate.start_time(watcher)
        doc = {
            "id": cid, "init": pid, "initStart": started if started is not None else -1, "pid": watcher,
            "pidStart": wstarted if wstarted is not None else -1, "bundle": b.path, "rootfs": b.rootfs,
            "created": ocistate.now_rfc3339(), "ociVersion": b.oci_version, "annotations": b.annotations,
            "owner": "", "hooks": ocihooks.to_json(b.hooks),
        }  # fmt: skip
        if p.cgroups is not None:  # for `delete`, when the watcher could not remove them (killed)
            doc["cgroups"] = p.cgroups.paths()
        ocistate.write(root, cid, doc)
        try:
            ocihooks.run(ocihooks.of_kind(b.hooks, *ocihooks.CREATE_KINDS), hook_state(doc, "creating"))
        except ocihooks.HookFailed as err:
            for target in (watcher, pid):
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not detach:
                reap(child)
            raise OciError(f"can't create container `{cid}`: {err}") from None
        created = True
        if pid_file:
            write_pid_file(pid_file, watcher)
        return pid, watcher
    finally:
        os.close(dir_fd)
        if not created:
            ocistate.remove(root, cid)
            if cgroups is not None:
                cgroups.remove(joined=False)  # its process joined them, this one didn't


def _create_error(cid: str, here: str, status: int) -> SifboxError:
    try:
        with open(f"{here}/{CREATE_LOG}", errors="replace") as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        lines = []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("sifbox: error: "):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            hint = following[6:] if following.startswith("hint: ") else None
            return OciError(lines[i][len("sifbox: error: "):], hint=hint)
    detail = f": {lines[-1]}" if lines else ""
    return OciError(f"can't create container `{cid}`: it stopped while starting (status {status}){detail}")


def write_pid_file(path: str, pid: int) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.rename(tmp, path)
    except OSError as err:
        raise OciError(f"can't write the pid file `{path}`: {err.strerror}") from None


def reap(pid: int) -> int:
    while True:
        try:
            _, st = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(st)
        except ChildProcessError:
            return 255


def _watcher(p: Any, chans: Channels, log_fd: int, proc_fd: int, detach: bool, parent: int) -> None:
    """The first child of create: detach (create), then run the launcher with
    `park` as its hold; when the container ends, kill what is left in its mount
    namespace and reap. Never returns."""
    from sifbox.runtime import launcher

    status = 126
    try:
        if detach:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
        else:
            # run: the container ends with the `sifbox oci run` that waits for it (SIGKILLed by
            # Slurm at the end of a step, say): nothing of it outlives its caller
            sc.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(status)
        sc.set_child_subreaper()
        os.write(chans.notify, b"watcher")
        os.dup2(log_fd, 2)  # errors while creating: read back by create
        os.close(log_fd)
        host_mnt = os.readlink("self/ns/mnt", dir_fd=proc_fd)

        def hold(start: Callable[[], None] | None, tramp: Trampoline | None, name: str,
                 helpers: Sequence[Helper]) -> int:  # fmt: skip
            return park(start, tramp, name, helpers, chans)

        try:
            status = launcher.launch_prepared(p, hold)
        except SifboxError as err:
            status = report(err)
        finally:
            if p.cgroups is not None:
                p.cgroups.remove(joined=False)  # its process joined them, this one didn't
        try:
            os.write(chans.notify, f"exit {status}".encode())
        except OSError:
            pass
        # With its own PID namespace, whatever ran in the container ended with its PID 1 (the
        # kernel kills and waits for the namespace's processes first): no /proc scan then.
        if not p.ns.pid and os.readlink("self/ns/mnt", dir_fd=proc_fd) != host_mnt:
            from sifbox.runtime.holder import kill_namespace_peers

            kill_namespace_peers(proc_fd)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
    except BaseException:  # noqa: BLE001 - a bug: into the log
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
            if 128 < status < 160:
                die_by(status - 128)
        finally:
            os._exit(status)


def guard_caller(sig: int) -> int:
    """Have `sig` sent to this process when its parent ends; return that parent's pid,
    for the handler to tell an orphaned run (`os.getppid()` changed) from a signal."""
    parent = os.getppid()
    sc.set_parent_death_signal(sig)
    if os.getppid() != parent:  # ended already
        os.kill(os.getpid(), sig)
    return parent


def die_by(sig: int) -> None:
    """End as the payload ended, by signal `sig` (128+N: a payload that exits with
    such a status itself can't be told apart), as runc's init does for its waiter."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)


# --- in the container ---------------------------------------------------------------------------


def park(start: Callable[[], None] | None, tramp: Trampoline | None, name: str, helpers: Sequence[Helper],
         chans: Channels) -> int:  # fmt: skip
    """The container's init (pivoted, locked down) parks until `start` connects to
    exec.sock (not with `chans.immediate`), then execs the payload."""
    try:
        return _park(start, tramp, name, chans)
    finally:
        rootfs.stop_helpers(list(helpers))


def _park(start: Callable[[], None] | None, tramp: Trampoline | None, name: str, chans: Channels) -> int:
    """This process becomes the payload (PID 1 of its PID namespace, as with runc):
    it returns only if the trampoline could not be exec'd."""
    if start is None:
        return 0
    if "/" in name and not os.access(name, os.X_OK):
        err = 2 if not os.path.exists(name) else 13
        raise exec_error(name, err)  # found now, at create, as runc finds it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # the payload ends with its watcher (its parent), as runc's init ends with its parent:
    # set here, after the identity change that would clear it (the trampoline keeps it)
    sc.set_parent_death_signal(signal.SIGKILL)
    _payload(start, chans)
    return 127


def _payload(start: Callable[[], None], chans: Channels) -> None:
    """In the payload process: its stdio (a pty with a console socket), "ready",
    the wait for `start`, the exec."""
    os.dup2(chans.stderr, 2)
    os.close(chans.stderr)
    if chans.console >= 0:
        terminal_to(socket.socket(fileno=chans.console))
    os.write(chans.notify, b"ready")
    os.close(chans.notify)
    if not chans.immediate:
        listener = socket.socket(fileno=chans.listen)
        while True:
            conn = socket.socket(fileno=listener._accept()[0])  # type: ignore[attr-defined]  # accept4, CLOEXEC
            message = conn.recv(1 << 16)
            if message.startswith(b"start"):
                break  # `conn` closes with the exec: `start` then knows the process runs
            conn.close()
        if chans.hooks:
            try:
                ocihooks.run(chans.hooks, message[len(b"start"):])
            except ocihooks.HookFailed as err:
                conn.sendall(str(err).encode(errors="replace"))
                os._exit(1)
    start()


# --- start, kill, delete ------------------------------------------------------------------------


def start(root: str, cid: str) -> None:
    doc = ocistate.load(root, cid)
    st = ocistate.status(root, cid, doc)
    if st != "created":
        raise OciError(f"can't start container `{cid}`: " + (
            "cannot start an already running container" if st == "running" else
            "cannot start a container that has stopped"),
            hint=f"`sifbox oci delete {cid}` removes it" if st == "stopped" else None)  # fmt: skip
    hooks = ocihooks.from_json(doc.get("hooks"))
    dir_fd = os.open(ocistate.container_dir(root, cid), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(f"/proc/self/fd/{dir_fd}/{ocistate.EXEC_SOCKET}")
            s.sendall(b"start" + (hook_state(doc, "created", inside=True) if ocihooks.of_kind(hooks, "startContainer") else b""))
            failed = s.recv(4096)  # EOF: exec'd (the connection closed with it); else a hook's failure
        finally:
            s.close()
        os.unlink(ocistate.EXEC_SOCKET, dir_fd=dir_fd)
    except OSError as err:
        raise OciError(f"can't start container `{cid}`: {err.strerror}") from None
    finally:
        os.close(dir_fd)
    if failed:
        raise OciError(f"can't start container `{cid}`: {failed.decode(errors='replace')}")
    try:
        ocihooks.run(ocihooks.of_kind(hooks, "poststart"), hook_state(doc, "running"))
    except ocihooks.HookFailed as err:
        kill(root, cid, signal.SIGKILL, all_processes=True)
        raise OciError(f"can't start container `{cid}`: {err}") from None


def pause(root: str, cid: str, on: bool = True) -> None:
    """Freeze (`pause`) or thaw (`resume`) every process of the container."""
    from sifbox.hpc.cgroups import freeze, freezer_file

    doc = ocistate.load(root, cid)
    st = ocistate.status(root, cid, doc)
    verb = "pause" if on else "resume"
    if st != ("running" if on else "paused"):
        raise OciError(f"can't {verb} container `{cid}`: container not " + ("running" if on else "paused"))
    path = freezer_file(int(doc["init"]), f"sifbox-oci-{cid}")
    if path is None:
        raise OciError(f"can't {verb} container `{cid}`: it has no freezer cgroup",
                       hint="`sifbox doctor` says whether this user can have cgroups")  # fmt: skip
    try:
        freeze(path, on)
    except OSError as err:
        raise OciError(f"can't {verb} container `{cid}`: {err.strerror}") from None


def update(root: str, cid: str, limits: Any) -> None:
    """`update`: new resource limits for the running container `cid`."""
    from sifbox.hpc.cgroups import update as write

    doc = ocistate.load(root, cid)
    if ocistate.status(root, cid, doc) == "stopped":
        raise OciError(f"can't update container `{cid}`: container not running")
    write(int(doc["init"]), f"sifbox-oci-{cid}", limits, f"container `{cid}`")


def stats(root: str, cid: str) -> dict[str, Any]:
    """`events --stats`: runc's stats event of the running container `cid`."""
    from sifbox.hpc.cgroups import stats as read

    doc = ocistate.load(root, cid)
    if ocistate.status(root, cid, doc) == "stopped":
        raise OciError(f"can't read the stats of container `{cid}`: container not running")
    return {"type": "stats", "id": cid, "data": read(int(doc["init"]), f"sifbox-oci-{cid}")}


def parse_signal(text: str) -> int:
    import signal

    name = text.upper()
    if name.isdigit():
        number = int(name)
    else:
        name = name if name.startswith("SIG") else "SIG" + name
        number = getattr(signal.Signals, name, 0) if name in signal.Signals.__members__ else 0
    if not 0 < number < 65:
        raise OciError(f"can't send signal `{text}`: unknown signal", hint="e.g. TERM, KILL, 9, SIGUSR1")
    return int(number)


def kill(root: str, cid: str, sig: int, *, all_processes: bool = False) -> None:
    doc = ocistate.load(root, cid)
    if ocistate.status(root, cid, doc) == "stopped":
        raise OciError(f"can't kill container `{cid}`: container not running")
    pid = int(doc["init"])
    targets = ocistate.peers(pid, _own_processes(doc)) if all_processes else [pid]
    for target in targets or [pid]:
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass


def _own_processes(doc: dict[str, Any]) -> set[int]:
    """sifbox's processes of a container: the watcher and the init (the payload's parent)."""
    own = {int(doc.get("pid", 0))}
    try:
        with open(f"/proc/{int(doc['init'])}/stat", "rb") as f:
            data = f.read()
        own.add(int(data[data.rfind(b")") + 2 :].split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    return own


def processes(root: str, cid: str) -> list[int]:
    doc = ocistate.load(root, cid)
    if ocistate.status(root, cid, doc) == "stopped":
        return []
    return ocistate.peers(int(doc["init"]), _own_processes(doc))


def delete(root: str, cid: str, *, force: bool = False) -> None:
    import time

    try:
        doc = ocistate.load(root, cid)
    except OciError:
        if force:
            return
        raise
    st = ocistate.status(root, cid, doc)
    if st in ("running", "paused") and not force:
        raise OciError(f"can't delete container `{cid}`: cannot delete container {cid} that is not stopped: {st}",
                       hint=f"`sifbox oci kill {cid} KILL` first, or `sifbox oci delete --force {cid}`")  # fmt: skip
    pid, started = int(doc["init"]), int(doc.get("initStart", -1))
    watcher, wstarted = int(doc.get("pid", 0)), int(doc.get("pidStart", -1))
    if st == "paused":
        pause(root, cid, on=False)  # a frozen process can't end, not even by SIGKILL
    if st != "stopped":
        for target in [pid, *ocistate.peers(pid, {watcher})]:
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (ocistate.alive(pid, started) or ocistate.alive(watcher, wstarted)):
        time.sleep(0.01)
    poststop = ocihooks.of_kind(ocihooks.from_json(doc.get("hooks")), "poststop")
    if poststop:
        try:
            ocihooks.run(poststop, hook_state(doc, "stopped"))
        except ocihooks.HookFailed as err:
            from sifbox.util import log

            log.log.warning("container `%s`: %s", cid, err)
    if doc.get("cgroups"):
        from sifbox.hpc.cgroups import remove_left

        remove_left(doc["cgroups"], f"sifbox-oci-{cid}")
    ocistate.remove(root, cid)


# --- terminals ----------------------------------------------------------------------------------


def connect_console(path: str, what: str) -> socket.socket:
    """A connection to the caller's --console-socket, which receives the terminal's master."""
    console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        console.connect(path)
    except OSError as err:
        console.close()
        raise OciError(f"can't {what}: can't connect to the console socket `{path}`: {err.strerror}") from None
    return console



def terminal_to(console: socket.socket) -> None:
    """A new pty: its master sent to the console socket (runc's protocol: the pty's name and the
    master as SCM_RIGHTS), its slave this process's controlling terminal and stdio. (termios:
    imported by the caller before the container's root is entered.)"""
    import termios

    master, slave = os.openpty()
    console.sendmsg([os.ttyname(slave).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", master))])
    os.close(master)
    console.close()
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
