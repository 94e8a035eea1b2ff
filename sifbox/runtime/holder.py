"""The processes that keep an instance alive, and clean up after it.

    watcher (outside the container, parent of the holder)
      holder  (in the container: its namespaces and root; PID 1 with --pid)
        startscript (own process group), squashfuse_ll, ...

The holder starts the startscript, tells `instance start` it is ready, then
stays: as Apptainer's instance process, it outlives the startscript, so
that commands can join its namespaces until the instance is stopped. It
reaps orphans (it is a subreaper, or PID 1), passes every signal it gets
to the startscript's process group, and ends once it got a signal and that
group is empty. The watcher then kills whatever still runs in the
instance's mount namespace (commands that joined it) and removes the
state, so a stopped or crashed instance leaves neither process nor mount.

Everything here runs after pivot_root: no lazy imports.
"""

from __future__ import annotations

import os
import sys

from sifbox.runtime.readiness import message as _message
from sifbox.runtime.readiness import wait_ready
from sifbox.runtime.sandbox import rootfs
from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import Helper
from sifbox.runtime.sandbox.process import Trampoline, exec_error
from sifbox.util.errors import ExitStatus, SifboxError, report

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a `sifbox oci run` some 5 ms of CPU: not imported to run
    import signal
    import socket
    from collections.abc import Callable, Sequence
    from typing import Any
else:  # the C modules: `signal` and `socket` import enum (and selectors), milliseconds of a first launch
    import _signal as signal
    import _socket as socket

_SYNCHRONOUS = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGILL,
    signal.SIGFPE,
    signal.SIGTRAP,
    signal.SIGABRT,
}
#: Signals the holder takes (and passes on); SIGKILL and SIGSTOP can't be.
WATCHED = frozenset(
    s for s in signal.valid_signals()
    if s < 32 and s not in (signal.SIGKILL, signal.SIGSTOP) and s not in _SYNCHRONOUS
)  # fmt: skip
#: Passed on, but not a request to stop (job control, terminal size, urgent data).
NOT_STOPPING = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGWINCH, signal.SIGURG})
PROCESS_NAME = "sifbox-instance"


def hold(start: Callable[[], None] | None, notify_fd: int, *, tramp: Trampoline | None = None, name: str = "",
         helpers: Sequence[Helper] = ()) -> int:  # fmt: skip
    """Run `start` (the startscript) in a child and keep the instance. `start`
    execs through `tramp`, whose report says whether `name` could start; the
    `helpers` (FUSE servers) are stopped and reaped when the instance ends."""
    try:
        return _hold(start, notify_fd, tramp, name)
    finally:
        rootfs.stop_helpers(list(helpers))


def _hold(start: Callable[[], None] | None, notify_fd: int, tramp: Trampoline | None, name: str) -> int:
    sc.set_child_subreaper()
    try:
        sc.set_process_name(PROCESS_NAME)
    except OSError:
        pass
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    group = 0
    if start is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            try:
                sc.set_parent_death_signal(signal.SIGKILL)
                os.setpgid(0, 0)
                for default in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(default, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                os.close(notify_fd)
                start()
            finally:
                os._exit(127)
        try:
            os.setpgid(child, child)
        except OSError:
            pass  # the child did it first (or is gone already)
        group = child
        if tramp is not None:
            err = tramp.report()
            if err:
                report(exec_error(name, err))
    try:
        os.write(notify_fd, b"ready")
    except OSError:
        pass  # `instance start` went away: the instance runs anyway
    os.close(notify_fd)
    stop_signal = 0
    while True:
        info = signal.sigwaitinfo(WATCHED)
        sig = info.si_signo
        if sig == signal.SIGCHLD:
            _reap()
        else:
            if sig not in NOT_STOPPING:
                stop_signal = sig
            if group:
                try:
                    os.kill(-group, sig)
                except ProcessLookupError:
                    group = 0
        if stop_signal and not _group_alive(group):
            return 128 + stop_signal


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(group: int) -> bool:
    if not group:
        return False
    _reap()
    try:
        os.kill(-group, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# --- the watcher ---------------------------------------------------------------------------------


def kill_namespace_peers(proc_fd: int) -> int:
    """SIGKILL every other process in this process's mount namespace (seen
    through `proc_fd`, a descriptor of the host's /proc). Returns how many."""
    try:
        own = os.readlink("self/ns/mnt", dir_fd=proc_fd)
        me = os.getpid()
        entries = os.listdir(proc_fd)
    except OSError:
        return 0
    killed = 0
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.readlink(f"{entry}/ns/mnt", dir_fd=proc_fd) == own:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
        except OSError:
            continue
    return killed


def remove_own_state(app_dir_fd: int, name: str) -> None:
    """Remove NAME/NAME.json under `app_dir_fd` if it still names this
    watcher (a new instance of the same name may have replaced it)."""
    import fcntl

    try:
        fcntl.flock(app_dir_fd, fcntl.LOCK_EX)
        dir_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=app_dir_fd)
    except OSError:
        return
    try:
        try:
            fd = os.open(f"{name}.json", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            with os.fdopen(fd) as f:
                import json

                doc = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return
        if not isinstance(doc, dict) or doc.get("ppid") != os.getpid():
            return
        for entry in os.listdir(dir_fd):
            try:
                os.unlink(entry, dir_fd=dir_fd)
            except OSError:
                pass
        os.rmdir(name, dir_fd=app_dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --- starting an instance --------------------------------------------------------------------------


def start_instance(p, name: str, pid_file: str | None, config: dict[str, object], *,  # type: ignore[no-untyped-def]
                   launch: Callable[[Callable[..., int]], int]) -> int:
    """Start instance `name` detached; return once it is ready (or failed).

    This process forks the watcher (which detaches: setsid, second fork); the
    watcher runs `launch(hold)`, whose container ends in `hold` (this module's
    holder loop) instead of a supervisor. The holder reports "ready" on a
    socket pair (its pid in SCM_CREDENTIALS); then the state is written.
    """

    from sifbox.runtime import instances

    paths = instances.paths_for()
    err_log, out_log = paths.logs(name)
    with instances.locked(paths) as lock_fd:
        existing = instances.load(paths, name)
        if existing is not None and instances.alive(paths, existing):
            raise instances.InstanceError(f"can't start instance `{name}`: an instance of that name already exists",
                                          hint=f"`sifbox instance stop {name}` stops it; or choose another name")  # fmt: skip
        instances.remove_state(paths, name)  # stale, or left by a start that failed
        os.makedirs(paths.log_dir, mode=0o700, exist_ok=True)
        os.makedirs(paths.state_dir(name), mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            err_fd = os.open(err_log, flags, 0o644)
            out_fd = os.open(out_log, flags, 0o644)
        except OSError as err:
            instances.remove_state(paths, name)
            raise instances.InstanceError(f"can't start instance `{name}`: can't open its log: {err.strerror}") from None
        log_start = os.fstat(err_fd).st_size
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            ours.close()
            if lock_fd is not None:
                os.close(lock_fd)  # the lock must not outlive this command
            _watcher(name, paths, theirs, err_fd, out_fd, launch)
        theirs.close()
        os.close(err_fd)
        os.close(out_fd)
        os.waitpid(child, 0)
        seen: dict[str, Any] = {}
        try:
            holder, status = wait_ready(ours, seen)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): take the half-started instance down.
            if seen.get("watcher"):
                _kill(seen["watcher"], signal.SIGKILL)
            instances.remove_state(paths, name)
            raise
        finally:
            ours.close()
        if holder is None:
            instances.remove_state(paths, name)
            raise _start_error(name, err_log, log_start, status)
        st = instances.proc_stat(holder)
        watcher = st[0] if st else 0
        wst = instances.proc_stat(watcher) if watcher else None
        state = instances.State(
            pid=holder, ppid=watcher, name=name, user=paths.user, image=p.source.path,
            config=config, userns=bool(p.userns), cgroup=getattr(p.options, "limits", None) is not None, logErrPath=err_log, logOutPath=out_log, ip=seen.get("ip", ""),
            starttime=st[1] if st else 0, ppidStarttime=wst[1] if wst else 0,
            path=paths.state_file(name),
        )  # fmt: skip
        instances.write_state(state)
    p.source.close()
    if pid_file:
        _write_pid_file(pid_file, holder)
    from sifbox.util import log

    log.log.info("instance started successfully")
    return 0


def limited(p, name: str, launch: Callable[[], int]) -> int:  # type: ignore[no-untyped-def]
    """`launch()` of instance `name`, in its watcher, in the cgroup of its limits (if any), which
    goes when the instance ends, with what its startscript left in it."""
    from sifbox.runtime.options import limits_cgroup

    p.cgroups = limits_cgroup(p.options, p.spec.image, instance=name)
    try:
        return launch()
    finally:
        if p.cgroups is not None:
            p.cgroups.kill_all()
            p.cgroups.remove()


def _watcher(name, paths, sock, err_fd: int, out_fd: int, launch) -> None:  # type: ignore[no-untyped-def]
    """In the first child: detach (setsid, second fork), then become the watcher
    of the instance: run it, clean up after it. Never returns."""
    status = int(ExitStatus.CANNOT_LAUNCH)
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        sc.set_child_subreaper()  # the holder's orphans (its helpers, if it dies first) come here
        sock.send(b"watcher")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (devnull, out_fd, err_fd):
            os.close(fd)
        app_fd = os.open(paths.app_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        host_mnt = os.readlink("/proc/self/ns/mnt")
        notify = sock.fileno()

        def keep(start, tramp, payload_name: str, helpers) -> int:  # type: ignore[no-untyped-def]
            return hold(start, notify, tramp=tramp, name=payload_name, helpers=helpers)

        def addresses(found: list[str]) -> None:  # the CNI networks' addresses, for `instance list`
            sock.send(("ip " + ",".join(found)).encode())

        keep.addresses = addresses  # type: ignore[attr-defined]

        try:
            status = launch(keep)
        except SifboxError as err:
            status = report(err)
        try:
            sock.send(f"exit {status}".encode())
        except OSError:
            pass
        sock.close()
        if os.readlink("self/ns/mnt", dir_fd=proc_fd) != host_mnt:  # never the host's namespace
            kill_namespace_peers(proc_fd)
        remove_own_state(app_fd, name)
        _reap()
    except BaseException:  # noqa: BLE001 - a bug: into the log, never into the caller's terminal
        import contextlib
        import traceback

        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _start_error(name: str, err_log: str, offset: int, status: int) -> SifboxError:
    """The error the instance wrote to its log while starting."""
    try:
        with open(err_log, errors="replace") as f:
            f.seek(offset)
            lines = f.read(1 << 16).splitlines()
    except OSError:
        lines = []
    for i in range(len(lines) - 1, -1, -1):
        for head, hint_head in (("sifbox: error: ", "hint: "), ("FATAL:   ", "INFO:    ")):  # either message format
            if lines[i].startswith(head):
                following = lines[i + 1] if i + 1 < len(lines) else ""
                hint = following[len(hint_head):] if following.startswith(hint_head) else None
                return SifboxError(lines[i][len(head):], hint=hint, exit_status=status or ExitStatus.CANNOT_LAUNCH)
    return SifboxError(f"can't start instance `{name}`: it stopped while starting (status {status})",
                       hint=f"see its log `{err_log}`", exit_status=ExitStatus.CANNOT_LAUNCH)  # fmt: skip


def _write_pid_file(path: str, pid: int) -> None:
    from sifbox.util import log

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
    except OSError as err:
        log.log.warning("can't write the pid file `%s`: %s", path, err.strerror)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- node mount holders (sifbox.runtime.nodemount) -------------------------------------------------


def start_node_mount(image, *, dir_fd: int, key: str, uid: int, gid: int, userns: bool,  # type: ignore[no-untyped-def]
                     squashfuse: str | None, slave: bool, idle: int, fuse_threads: bool = False) -> dict[str, object]:  # fmt: skip
    """Start the holder of `image` (a RootImage: the admitted descriptor) detached (setsid,
    second fork, as an instance's watcher) and return its state once its mount answers:
    pid, start time, the descriptor of the image in it, where the image is mounted in its
    namespace, the mount's device and its FUSE server (pid, start time), if any. The holder
    reports on a socket pair (its pid in SCM_CREDENTIALS), as an instance's does.

    Detached, it is no child of the caller's parent (a `script` or a CI runner that waits
    for every child of its own would wait for it): it goes to the nearest child subreaper
    (systemd --user, a test session), else to PID 1, which reaps it when it ends. It reaps
    its FUSE server itself."""

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        status = int(ExitStatus.CANNOT_LAUNCH)
        try:
            ours.close()
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")  # no directory of the caller's kept busy
            import gc

            gc.enable()  # a launch turns the collector off; the holder lives for minutes
            status = _node_holder(image, theirs.fileno(), dir_fd, key, uid, gid, userns, squashfuse, slave, idle,
                                  fuse_threads)  # fmt: skip
        except BaseException:  # noqa: BLE001 - into the holder's log, never the caller's terminal
            import contextlib
            import traceback

            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)
    theirs.close()
    os.waitpid(child, 0)
    try:
        data, pid = _message(ours)
    finally:
        ours.close()
    words = data.split()
    if pid <= 0 or len(words) != 6 or words[0] != b"ready":
        detail = data.decode(errors="replace").partition(" ")[2] or "it stopped while starting"
        raise SifboxError(f"can't start the node mount holder of `{image.path}`: {detail}")
    from sifbox.runtime import nodemount

    seen = nodemount._proc(pid)
    helper = (int(words[4]), int(words[5])) if int(words[4]) else None
    return {"pid": pid, "starttime": seen[1] if seen else 0, "dev": int(words[1]),
            "mount": words[2].decode(), "fd": int(words[3]), "helper": helper}  # fmt: skip


def _node_holder(image, notify: int, dir_fd: int, key: str, uid: int, gid: int, userns: bool,  # type: ignore[no-untyped-def]
                 squashfuse: str | None, slave: bool, idle: int, fuse_threads: bool) -> int:  # fmt: skip
    """The holder: its namespaces with the image mounted, kept until it is idle for
    `idle` seconds (no container holds KEY.refs), it gets a signal, or its FUSE server ends."""
    import time

    from sifbox.runtime import nodemount
    from sifbox.runtime.sandbox import namespaces, process
    from sifbox.runtime.sandbox.ops import Namespaces

    log = os.open(f"{key}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for n, fd in ((0, devnull), (1, devnull), (2, log)):
        os.dup2(fd, n)
    low = 3
    for fd in sorted({image.fd, notify, dir_fd}):  # nothing else of the launch: its locks least of all
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    sc.set_process_name(nodemount.PROCESS_NAME)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    helpers: list[Helper] = []
    where = ""
    try:
        try:
            namespaces.enter(Namespaces(userns, uid, gid), image=image.path)
            if not userns:
                process.seal_self()
            session = rootfs.Session.open(image=image.path, size_mib=1, slave=slave, uid=uid, gid=gid,
                                          userns=userns, squashfuse=squashfuse, fuse_threads=fuse_threads)  # fmt: skip
            helpers = session.helpers
            where = session.mount_image(image)
            dev = os.stat(where).st_dev  # answered: the FUSE server runs
        except SifboxError as err:
            os.write(notify, f"failed {err.message}".encode())
            return int(err.exit_status)
        served = helpers[0].pid if helpers else 0
        seen = nodemount._proc(served) if served else None
        os.write(notify, f"ready {dev} {where} {image.fd} {served} {seen[1] if seen else 0}".encode())
        os.close(notify)
        period = max(0.05, idle / 4)
        idle_since: float | None = None
        joined = nodemount.last_join(dir_fd, key)
        while True:
            info = signal.sigtimedwait(WATCHED, period)
            if info is None:
                before, joined = joined, nodemount.last_join(dir_fd, key)
                if joined != before:  # used since the last look, if only briefly
                    idle_since = None
                    continue
                lock = nodemount.idle_now(dir_fd, key)
                if lock is None:
                    idle_since = None
                    continue
                now = time.monotonic()
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= idle:
                    nodemount.forget(dir_fd, key, os.getpid())
                    os.close(lock)
                    return 0
                os.close(lock)
                continue
            if info.si_signo == signal.SIGCHLD:
                _reap()
                if served and nodemount._proc(served) is None:
                    break  # its FUSE server died: the mount is of no use any more
            elif info.si_signo not in NOT_STOPPING:
                break
        lock = nodemount._lock(dir_fd, f"{key}.lock")
        nodemount.forget(dir_fd, key, os.getpid())
        os.close(lock)
        return 0
    finally:
        if where:
            rootfs.release(where)
        rootfs.stop_helpers(list(helpers))
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
