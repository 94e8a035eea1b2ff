"""Create the container's namespaces in the calling process (which must never
have started a thread: unshare(CLONE_NEWUSER) refuses a threaded process).

User and mount namespaces first (only a mount namespace for root without
--userns); then, in a second step so that they belong to the new user
namespace, the PID, IPC, UTS and network namespaces asked for. With
subordinate ID ranges (`Namespaces.maps`), newuidmap/newgidmap (setuid helpers
of the `uidmap` package) write the maps from outside: a forked helper waits
until this process has unshared, runs them on its pid, and is reaped here.
"""

from __future__ import annotations

import os

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import LaunchError, Namespaces
from sifbox.util.errors import describe_os_error


def enter(ns: Namespaces, *, image: str) -> None:
    """Unshare what `ns` asks for and set it up; raise LaunchError if the kernel refuses."""
    extra = (
        (sc.CLONE_NEWPID if ns.pid else 0)
        | (sc.CLONE_NEWIPC if ns.ipc else 0)
        | (sc.CLONE_NEWUTS if ns.uts or ns.hostname else 0)
        | (sc.CLONE_NEWNET if ns.net and ns.net_fd is None else 0)
    )
    try:
        if ns.net_fd is not None:  # first: it belongs to the host's user namespace
            sc.setns(ns.net_fd, sc.CLONE_NEWNET)
        if ns.user and ns.maps is not None:
            _unshare_with_helpers(ns)
        elif ns.user:
            sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            write_own_maps(ns.uid, ns.gid, ns.inside)
        else:
            sc.unshare(sc.CLONE_NEWNS)
        if extra:
            sc.unshare(extra)
        for flag, fd in ns.join:  # the kernel checks that `fd` is a namespace of that kind
            sc.setns(fd, flag)
            os.close(fd)
        if ns.hostname:
            sc.sethostname(ns.hostname)
        if ns.net and ns.net_fd is None:
            sc.loopback_up()
    except LaunchError:
        raise
    except OSError as err:
        raise LaunchError(
            f"can't start a container from `{image}`: can't create namespaces: {describe_os_error(err)}",
            hint="unprivileged user namespaces may be disabled; `sifbox doctor` checks this",
        ) from None


def new_network(*, image: str) -> int:
    """A new network namespace with its loopback up, open (read-only, close-on-exec) at the
    descriptor returned. A forked child makes it and ends; this process stays where it is."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            try:
                sc.unshare(sc.CLONE_NEWNET)
                sc.loopback_up()
                os.write(ready_w, b"\0")
            except OSError as err:
                os.write(ready_w, bytes([err.errno or 1]))
            os.read(done_r, 1)  # until the parent has it open
            status = 0
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(done_r)
    try:
        answer = os.read(ready_r, 1)
        if answer != b"\0":
            code = answer[0] if answer else 0
            raise LaunchError(f"can't start a container from `{image}`: can't create a network namespace: "
                              f"{os.strerror(code) if code else 'the helper died'}")  # fmt: skip
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


KINDS = {sc.CLONE_NEWNS: "mount", sc.CLONE_NEWUTS: "UTS", sc.CLONE_NEWIPC: "IPC", sc.CLONE_NEWUSER: "user",
         sc.CLONE_NEWPID: "PID", sc.CLONE_NEWNET: "network", sc.CLONE_NEWCGROUP: "cgroup"}  # fmt: skip


def open_network(path: str) -> int:
    """The network namespace at `path` (`--netns-path`: /run/netns/NAME, /proc/PID/ns/net),
    open (read-only, close-on-exec) at the descriptor returned, for `Namespaces.net_fd`.

    The path is opened once, and what was opened is checked: a namespace file (never a FIFO
    or a device, which opening could block on or act on: they are refused from an O_PATH
    descriptor first), and a network namespace. A symlink swapped after the check changes
    nothing: the descriptor is what gets joined (setns checks its kind again)."""
    import stat

    what = f"can't join the network namespace `{path}`"
    try:
        probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as err:
        raise LaunchError(f"{what}: {describe_os_error(err)}",
                          hint="`ip netns add NAME` makes /run/netns/NAME; a process's is /proc/PID/ns/net") from None  # fmt: skip
    try:
        if not stat.S_ISREG(os.fstat(probe).st_mode):
            raise LaunchError(f"{what}: not a network namespace (not a namespace file)")
        try:
            fd = os.open(f"/proc/self/fd/{probe}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as err:
            raise LaunchError(f"{what}: {describe_os_error(err)}") from None
    finally:
        os.close(probe)
    try:
        kind = sc.namespace_type(fd)
    except OSError:
        os.close(fd)
        raise LaunchError(f"{what}: not a network namespace (not a namespace file)") from None
    if kind != sc.CLONE_NEWNET:
        os.close(fd)
        raise LaunchError(f"{what}: not a network namespace (a {KINDS.get(kind, 'other')} namespace)")
    return fd


def write_own_maps(uid: int, gid: int, inside: int | None = None) -> None:
    """Map the caller to itself (or to `inside`, e.g. 0 for fakeroot)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid if inside is None else inside} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid if inside is None else inside} {gid} 1")


def _unshare_with_helpers(ns: Namespaces) -> None:
    uid_lines, gid_lines = ns.maps
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper stays outside the new namespace
        status = 1
        try:
            os.close(go_w)
            os.close(done_r)
            os.read(go_r, 1)
            target = str(os.getppid())
            status = 0
            for tool, lines in ((ns.tools[0], uid_lines), (ns.tools[1], gid_lines)):
                args = [str(n) for line in lines for n in line]
                child = os.fork()
                if child == 0:
                    os.execv(tool, [tool, target, *args])
                _, st = os.waitpid(child, 0)
                if os.waitstatus_to_exitcode(st) != 0:
                    status = 2
                    break
        finally:
            os.write(done_w, bytes([status]))
            os._exit(0)
    os.close(go_r)
    os.close(done_w)
    try:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        result = os.read(done_r, 1)
        os.close(done_r)
        os.waitpid(pid, 0)
    if result != b"\0":
        raise LaunchError("can't start a fakeroot container: newuidmap/newgidmap could not map the ID ranges",
                          hint="check the caller's ranges in /etc/subuid and /etc/subgid")  # fmt: skip
