"""The payload process: lock it down, then exec it through the trampoline.

`Trampoline.create()` (before pivot_root: it needs the host's /proc) writes
the trampoline into a memfd, seals it and keeps a read-only descriptor;
`exec_payload` (in the forked payload process) closes the host's descriptors
and execs the payload through it, so that no process of the container ever
has a host binary as its /proc/self/exe (see `trampoline`). Failures to exec
come back to the supervisor through `ExecReport`: the errno, or nothing.
"""

from __future__ import annotations

import errno
import os
import _struct as struct  # the C module: `struct` is a file looked for on sys.path at every launch

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox import trampoline
from sifbox.runtime.sandbox.ops import LaunchError
from sifbox.util.errors import ExitStatus, SifboxError, describe_os_error

_MFD_EXEC = 0x10  # Linux 6.3: an executable memfd even when vm.memfd_noexec = 1
_F_SEAL_EXEC = 0x20  # Linux 6.3: the mode bits can't change either
NAME = "sifbox-exec"


class Trampoline:
    """A sealed, read-only memfd holding the trampoline, and the pipe on which
    it reports a failed exec. Create it before pivot_root; use it in the
    payload process (`exec_payload`) and in the supervisor (`report`)."""

    __slots__ = ("errfd", "fd", "read_end", "write_end")

    def __init__(self, fd: int, errfd: int, read_end: int, write_end: int) -> None:
        self.fd, self.errfd, self.read_end, self.write_end = fd, errfd, read_end, write_end

    @classmethod
    def create(cls, keep: frozenset[int], image: str) -> Trampoline:
        """`keep`: descriptors the payload inherits (PMI_FD...): the report
        descriptor is the lowest other one above stderr."""
        machine = os.uname().machine
        if not trampoline.supported(machine):
            raise LaunchError(f"can't start a container from `{image}`: no exec trampoline for `{machine}`",
                              hint="sifbox runs containers on x86_64 and aarch64")  # fmt: skip
        errfd = 3
        while errfd in keep:
            errfd += 1
        code = trampoline.program(machine, errfd)
        import fcntl

        try:
            try:
                mfd = os.memfd_create(NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | _MFD_EXEC)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                mfd = os.memfd_create(NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.write(mfd, code)
                seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                try:
                    fcntl.fcntl(mfd, fcntl.F_ADD_SEALS, seals | _F_SEAL_EXEC)
                except OSError:
                    fcntl.fcntl(mfd, fcntl.F_ADD_SEALS, seals)
                # A descriptor open for writing would make execve fail (ETXTBSY):
                # keep a read-only one of the same memfd.
                fd = os.open(f"/proc/self/fd/{mfd}", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                os.close(mfd)
        except OSError as err:
            raise LaunchError(f"can't start a container from `{image}`: can't prepare the exec trampoline: "
                              f"{describe_os_error(err)}",
                              hint="executable memfds must be allowed (sysctl vm.memfd_noexec < 2)") from None  # fmt: skip
        read_end, write_end = os.pipe()
        return cls(fd, errfd, read_end, write_end)

    def report(self) -> int:
        """In the supervisor, after forking the payload: 0 once the payload is
        exec'd, else the errno of the failed exec (the payload then exits 127)."""
        os.close(self.write_end)
        data = b""
        while len(data) < 4:
            try:
                chunk = os.read(self.read_end, 4 - len(data))
            except InterruptedError:
                continue
            if not chunk:
                break
            data += chunk
        os.close(self.read_end)
        return struct.unpack("<i", data)[0] if len(data) == 4 else 0


def exec_payload(tramp: Trampoline, path: str, argv: list[str], env: dict[str, str], keep: frozenset[int],
                 seccomp: bytes | None = None) -> None:  # fmt: skip
    """In the payload process: every descriptor but stdio, `keep` and the
    trampoline's is closed; the `seccomp` BPF program is loaded; then the
    trampoline execs `path` with `argv`. Returns only if the trampoline itself
    could not be exec'd."""
    os.close(tramp.read_end)
    fd = tramp.fd
    if fd == tramp.errfd or fd in keep:
        fd = _dup_above(fd, {tramp.errfd, *keep})
    if tramp.write_end != tramp.errfd:
        os.dup2(tramp.write_end, tramp.errfd, inheritable=True)
    else:
        os.set_inheritable(tramp.errfd, True)
    low = 3
    for n in sorted({*keep, fd, tramp.errfd}) + [1 << 20]:
        if n >= low:
            os.closerange(low, n)
            low = n + 1
    if seccomp:
        sc.set_seccomp_filter(seccomp)
    os.execve(fd, [NAME, path, *argv], env)


def _dup_above(fd: int, taken: set[int]) -> int:
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(taken) + 1)
    os.close(fd)
    return new


def find_program(name: str, env: dict[str, str]) -> str | None:
    """Where `name` is found in the container, as execvp finds it (PATH of `env`)."""
    if "/" in name:
        return name
    for d in env.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def exec_error(name: str, err: int) -> SifboxError:
    """The error of a payload that could not be exec'd (errno `err`)."""
    if err == errno.ENOENT:
        return SifboxError(f"can't run `{name}` in the container: command not found", exit_status=ExitStatus.NOT_FOUND)
    reason = "permission denied" if err == errno.EACCES else describe_os_error(OSError(err, os.strerror(err)))
    return SifboxError(f"can't run `{name}` in the container: {reason}", exit_status=ExitStatus.CANNOT_LAUNCH)


def lock_down(*, keep_caps: frozenset[int] | None, run_as: tuple[int, int, tuple[int, ...]] | None = None) -> None:
    """The working directory must be inside the root (not one reached through a
    descriptor of the host's). No new privileges from now on (setuid bits, file capabilities); with
    `keep_caps` (a root container), no capabilities but those. With `run_as`
    (uid, gid, supplementary gids; root's `--security uid:,gid:`), this process
    becomes that identity, which leaves it no capability at all."""
    try:
        os.getcwd()  # ENOENT: "(unreachable)", a directory outside the root (runc's CVE-2024-21626)
    except OSError:
        raise LaunchError("can't start the container's process: its working directory is outside the "
                          "container", hint="a working directory through /proc/self/fd or a link to it "
                          "leads out of the container; use a path of the container") from None  # fmt: skip
    sc.set_no_new_privs()
    if keep_caps is not None:
        sc.drop_all_capabilities(keep_caps)
    if run_as is not None:
        uid, gid, groups = run_as
        try:
            try:
                os.setgroups(list(groups))
            except PermissionError:
                if groups:  # none to set: a user namespace that denies setgroups has none to clear
                    raise
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        except OSError as err:
            raise LaunchError(f"can't run as uid {uid}, gid {gid}: {describe_os_error(err)}") from None


def seal_self() -> None:
    """Make this process non-dumpable: processes of the container can't open its
    /proc/PID/exe (the host's interpreter), `mem` or `fd` without CAP_SYS_PTRACE.
    (execve makes the payload dumpable again; it runs the image's binaries.)"""
    sc.set_dumpable(False)
