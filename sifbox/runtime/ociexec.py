"""`sifbox oci exec`: a process run in a running container (its namespaces, root and cgroups),
in the foreground or detached (`--detach`, as containerd runs it), on a terminal of the
container's with --tty/--console-socket.
"""

from __future__ import annotations

import os
import sys

from sifbox.runtime import ocispec, ocistate
from sifbox.runtime.ocirun import (
    connect_console,
    die_by,
    home_of,
    plan,
    preserved_fds,
    reap,
    terminal_to,
    write_pid_file,
)
from sifbox.runtime.ocistate import OciError
from sifbox.util.errors import SifboxError, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket as socket


def exec_process(root: str, cid: str, proc: ocispec.Process, console_socket: str | None = None,
                 preserve_fds: int = 0) -> int:  # fmt: skip
    """Run `proc` in the running container `cid` (its namespaces and root); its exit status.
    With `proc.terminal`, on a pty of the container whose master goes to `console_socket`."""
    from sifbox.runtime import env, launcher  # noqa: F401 - env: used once in the container's root

    doc = ocistate.load(root, cid)
    st = ocistate.status(root, cid, doc)
    if st != "running":
        raise OciError(f"can't exec in container `{cid}`: the container is {st}",
                       hint={"created": f"`sifbox oci start {cid}` starts it",
                             "paused": f"`sifbox oci resume {cid}` resumes it"}.get(st))  # fmt: skip
    b = ocispec.load(doc["bundle"])
    if "HOME" not in proc.env:
        proc = proc._replace(env={**proc.env, "HOME": home_of(f"/proc/{int(doc['init'])}/root", proc.uid)})
    p = plan(b._replace(process=proc), cid, keep_fds=preserved_fds(preserve_fds))
    from sifbox.util.records import record

    p.joining = record("Joining", "pid name")(int(doc["init"]), cid)
    os.close(p.image.fd)
    p.prepare_root = None
    if proc.terminal:
        if not console_socket:
            raise OciError(f"can't exec in container `{cid}`: a terminal needs --console-socket")
        import termios  # noqa: F401 - for terminal_to, in the container's root

        console = connect_console(console_socket, f"exec in container `{cid}`")
        p.prepare_root = lambda _root: _exec_terminal(console)
    _join_cgroups(int(doc["init"]), cid)
    return int(launcher._join(p))



def _exec_terminal(console: socket.socket) -> None:
    """In the joined process, before it forks the exec'd one: a pty of the container's devpts,
    its master sent to the console socket, its slave this process's controlling terminal and
    stdio (the exec'd process inherits them)."""
    terminal_to(console)



def _join_cgroups(init: int, cid: str) -> None:
    """Put this process (and so what it execs) in the cgroups sifbox made for container `cid`
    (its linux.resources), as the container's own process is."""
    from sifbox.hpc.cgroups import CGROUP_ROOT, own_paths

    try:
        with open(f"/proc/{init}/cgroup") as f:
            paths = own_paths(f.read())
    except OSError:
        return
    for controller, path in paths.items():
        if not path.rstrip("/").endswith(f"/sifbox-oci-{cid}"):
            continue
        tops = [os.path.join(CGROUP_ROOT, controller)] if controller else [CGROUP_ROOT, f"{CGROUP_ROOT}/unified"]
        for top in tops:
            try:
                with open(os.path.join(top, path.lstrip("/"), "cgroup.procs"), "w") as f:
                    f.write("0")
                break
            except OSError:
                continue



def exec_detached(root: str, cid: str, proc: ocispec.Process, pid_file: str | None,
                  console_socket: str | None = None, preserve_fds: int = 0) -> int:  # fmt: skip
    """`exec --detach`: run `proc` in container `cid` from a detached process (setsid,
    second fork) whose pid goes to `pid_file` and which ends as `proc` ends (a subreaper
    that ran `exec`, containerd's shim, reaps it). Returns that pid."""
    ocistate.load(root, cid)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        status = 126
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            try:
                status = exec_process(root, cid, proc, console_socket, preserve_fds)
            except SifboxError as err:
                status = report(err)
            sys.stderr.flush()
            if 128 < status < 160:
                die_by(status - 128)
        finally:
            os._exit(status)
    os.close(w)
    reap(child)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    if not data.isdigit():
        raise OciError(f"can't exec in container `{cid}`: the process did not start")
    pid = int(data)
    if pid_file:
        write_pid_file(pid_file, pid)
    return pid
