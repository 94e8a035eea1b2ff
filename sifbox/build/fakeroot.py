"""Run build work as root: directly for root, in a fakeroot user namespace
for everyone else.

An unprivileged build runs whole (bootstrap, %post, mksquashfs, clean-up)
in a forked child that is root of a new user namespace, with the caller's
/etc/subuid and /etc/subgid ranges mapped when configured. So files the
image's package manager gives to other users stay readable and removable,
and the SquashFS records the ownership the image asked for.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

from sifbox.util.errors import ExitStatus, SifboxError
from sifbox.util.paths import in_user_namespace as in_user_namespace  # used by build.agents


def is_root() -> bool:
    return os.getuid() == 0


def wait_child(pid: int) -> tuple[int, BaseException | None]:
    """Wait for a child that does build work; (wait status, exception to raise after).

    Ctrl-C reached the child too (the terminal signals the whole group): wait
    while it cleans up. SIGTERM sent to this process alone is passed on.
    """
    pending: BaseException | None = None
    while True:
        try:
            return os.waitpid(pid, 0)[1], pending
        except ChildProcessError:
            return 0, pending
        except KeyboardInterrupt as err:
            pending = pending or err
        except BaseException as err:  # noqa: BLE001 - re-raised by the caller once the child is gone
            pending = pending or err
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def run_as_root(work: Callable[[], None], *, log: Callable[..., None] | None = None) -> None:
    """Run `work()` as root: in this process for root, else in a forked child
    that enters a fakeroot user namespace. A SifboxError raised by `work`
    is raised here; Ctrl-C waits for the child to clean up, then raises
    KeyboardInterrupt."""
    if is_root():
        work()
        return
    import pwd

    from sifbox.runtime.spec import Host

    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    host = Host(uid, gid, user, os.environ.get("HOME", "/"), os.getcwd(), False)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        status = 0
        report: dict[str, object] = {}
        try:
            from sifbox.runtime.identity import enter_fakeroot

            enter_fakeroot(host)
            if log:
                log("fakeroot: the build runs as root of a user namespace")
            work()
        except SifboxError as err:
            report = {"message": err.message, "hint": err.hint, "status": int(err.exit_status)}
            status = int(err.exit_status)
        except KeyboardInterrupt:
            status = ExitStatus.INTERRUPTED
            report = {"interrupted": True}
        except OSError as err:  # a fault no step described (full disk, a path changed under us)
            from sifbox.util.errors import os_fault

            fault = os_fault(err, "build")
            report = {"message": fault.message, "hint": fault.hint, "status": 255}
            status = 255
            if os.environ.get("SIFBOX_MESSAGELEVEL") == "10":
                import traceback

                traceback.print_exc()
        except BaseException as err:  # noqa: BLE001 - a bug: carry it to the parent's error boundary
            report = {
                "message": f"can't build: internal error: {type(err).__name__}: {err}",
                "status": 255,
            }
            status = 255
            if os.environ.get("SIFBOX_MESSAGELEVEL") == "10":
                import traceback

                traceback.print_exc()
        finally:
            try:
                os.write(w, json.dumps(report).encode())
            finally:
                os._exit(status)
    os.close(w)
    st, pending = wait_child(pid)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    try:
        report = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        report = {}
    if report.get("interrupted") or isinstance(pending, KeyboardInterrupt):
        raise KeyboardInterrupt
    if report.get("message"):
        raise SifboxError(str(report["message"]), hint=report.get("hint"),  # type: ignore[arg-type]
                          exit_status=int(report.get("status", 255)))  # type: ignore[call-overload]  # fmt: skip
    if pending is not None:
        raise pending
    code = os.waitstatus_to_exitcode(st)
    if code != 0:
        if code < 0 and -code == signal.SIGINT:
            raise KeyboardInterrupt
        raise SifboxError(f"can't build: the build process ended with status {code}")
