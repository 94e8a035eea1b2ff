"""The supervisor: start the payload, forward signals, return its status.

After the container is built, the sifbox process forks: the child execs the
payload (and dies with SIGKILL if the supervisor is killed), the parent
waits. Signals sent to sifbox (kill, scancel, srun) are forwarded; signals
the terminal sent to the whole foreground group already reached the
payload and are not sent twice. When the payload stops (Ctrl-Z), the
supervisor stops too, so the shell's job control sees the job stopped.
The exit status is the payload's: its code, or 128+N when a signal N
killed it. Before it returns, the container's helpers (FUSE servers) are
stopped and reaped: nothing is left for PID 1 to collect.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # the C module: `signal` itself imports enum, ~5 ms of every launch

from sifbox.runtime.sandbox import rootfs
from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.process import exec_error
from sifbox.util.errors import ExitStatus, SifboxError, report

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sifbox.runtime.sandbox.ops import Helper
    from sifbox.runtime.sandbox.process import Trampoline

FORWARDED = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH, signal.SIGCONT,
)  # fmt: skip
_WATCHED = (*FORWARDED, signal.SIGCHLD)
#: si_code of signals from the kernel (e.g. the terminal driver) rather than kill(2).
_SI_KERNEL = 0x80


def run(start: Callable[[], None], *, tramp: Trampoline | None = None, name: str = "",
        helpers: Sequence[Helper] = (), prelude_timeout: tuple[float, str, str, str] | None = None) -> int:  # fmt: skip
    """Fork; the child calls `start()` (which must exec or _exit); the parent
    supervises it and returns its exit status. With `tramp`, the child execs
    through the trampoline, whose report says whether program `name` started.
    With `prelude_timeout` (seconds, prelude script, image, timeout as shown), a
    payload still running the prelude (`/bin/sh -c SCRIPT`: the image's environment
    scripts) after that time is killed, with its children (--runscript-timeout)."""
    supervisor = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        sc.set_parent_death_signal(signal.SIGKILL)
        # The supervisor died before the line above? (In a new PID namespace
        # the parent is outside it and getppid() reads 0.)
        if os.getppid() not in (supervisor, 0):
            os._exit(128 + signal.SIGKILL)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            start()
        except BaseException as err:  # noqa: BLE001 - the forked child must end here, whatever happens
            try:
                os.write(2, f"sifbox: error: can't start the payload: {err}\n".encode())
            finally:
                os._exit(int(ExitStatus.CANNOT_LAUNCH))
        os._exit(127)
    failed = 0
    if tramp is not None:
        errno_ = tramp.report()
        if errno_:
            failed = report(exec_error(name, errno_))
    status = _supervise(pid, prelude_timeout)
    rootfs.stop_helpers(list(helpers))
    return failed or status


def _supervise(child: int, prelude_timeout: tuple[float, str, str, str] | None = None) -> int:
    import time

    deadline = time.monotonic() + prelude_timeout[0] if prelude_timeout is not None else None
    timed_out = None
    while True:
        if deadline is None:
            info = signal.sigwaitinfo(_WATCHED)
        else:
            got = signal.sigtimedwait(_WATCHED, max(0.0, deadline - time.monotonic()))
            if got is None:
                assert prelude_timeout is not None
                deadline = None
                timed_out = _end_prelude(child, prelude_timeout)
                continue
            info = got
        sig = info.si_signo
        if sig != signal.SIGCHLD:
            if info.si_code != _SI_KERNEL or sig in (signal.SIGCONT, signal.SIGALRM):
                _send(child, sig)
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return 255
            if pid == 0:
                break
            if pid != child:
                continue  # e.g. an orphan of the payload (PID 1, subreaper): reap it
            if os.WIFSTOPPED(status):
                os.kill(os.getpid(), signal.SIGSTOP)  # resumed by the shell's SIGCONT
                _send(child, signal.SIGCONT)
                continue
            if timed_out is not None:
                return report(timed_out)
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def _end_prelude(child: int, prelude_timeout: tuple[float, str, str, str]) -> SifboxError | None:
    """At the --runscript-timeout deadline: if `child` still runs the prelude, kill it and
    the commands it runs (an environment script's), and return the error to report.
    Reads /proc (the container's): without it, nothing can be told and nothing is killed."""
    _, script, image, shown = prelude_timeout
    argv = _cmdline(child)
    if argv is None or argv[:3] != ["/bin/sh", "-c", script]:
        return None  # the payload proper runs: the timeout no longer applies
    tree = _descendants(child)
    running = next((_cmdline(pid) for pid in reversed(tree)), None)
    for pid in [*reversed(tree), child]:
        _send(pid, signal.SIGKILL)
    what = f'command "{" ".join(running)}"' if running else "the environment scripts"
    return SifboxError(f"can't run `{image}`: {what} was killed after {shown} timeout",
                       hint="--runscript-timeout bounds the time of the image's environment scripts "
                       "(/.singularity.d/env/*.sh)")  # fmt: skip


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in data.split(b"\0")[:-1]] if data else None


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, parents before their children (from /proc's children lists)."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 4096:
        parent = todo.pop(0)
        try:
            with open(f"/proc/{parent}/task/{parent}/children", "rb") as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            continue
        found += kids
        todo += kids
    return found


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reap_all() -> None:
    """Wait for every child left (orphans of a PID namespace whose PID 1 ended, which
    the kernel has killed): none is left for PID 1 to collect."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
