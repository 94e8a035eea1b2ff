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

import json
import os
import signal
import sys
from collections.abc import Callable

from sifbox.runtime.sandbox import syscalls as sc

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
    s for s in signal.Signals
    if s < 32 and s not in (signal.SIGKILL, signal.SIGSTOP) and s not in _SYNCHRONOUS
)  # fmt: skip
#: Passed on, but not a request to stop (job control, terminal size, urgent data).
NOT_STOPPING = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGWINCH, signal.SIGURG})
PROCESS_NAME = "sifbox-instance"


def hold(start: Callable[[], None] | None, notify_fd: int) -> int:
    """Run `start` (the startscript) in a child and keep the instance."""
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
