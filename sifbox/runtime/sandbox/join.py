"""Join a running instance: `sifbox exec|run|shell|test instance://NAME`.

The calling process (single-threaded) opens the holder's /proc/PID/ns/*
files and its root, joins the namespaces it does not share already (the
user namespace first, so that it may join the others; the mount namespace
last), chroots into the holder's root and runs the payload under the
supervisor, as a normal launch does.
"""

from __future__ import annotations

import os

from sifbox.runtime import supervisor
from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.setup import LaunchError, _chdir, _exec_or_exit
from sifbox.runtime.spec import ContainerSpec, Host
from sifbox.util.errors import describe_os_error

#: Join order: user first (it grants the rights to join the others), mnt last.
ORDER = (("user", sc.CLONE_NEWUSER), ("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS),
         ("net", sc.CLONE_NEWNET), ("pid", sc.CLONE_NEWPID), ("mnt", sc.CLONE_NEWNS))  # fmt: skip


def enter(instance, spec: ContainerSpec, host: Host, payload, log=None) -> int:  # type: ignore[no-untyped-def]
    what = f"can't join instance `{instance.name}`"
    fds: list[tuple[str, int, int]] = []
    root_fd = -1
    try:
        try:
            for name, flag in ORDER:
                theirs = os.stat(f"/proc/{instance.pid}/ns/{name}")
                ours = os.stat(f"/proc/self/ns/{name}")
                if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                    fds.append(
                        (
                            name,
                            flag,
                            os.open(f"/proc/{instance.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC),
                        )
                    )
            root_fd = os.open(
                f"/proc/{instance.pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError as err:
            raise LaunchError(f"{what}: can't open its namespaces: {describe_os_error(err)}",
                              hint="it may have just stopped; `sifbox instance list` shows it") from None  # fmt: skip
        joined_user = False
        for name, flag, fd in fds:
            try:
                sc.setns(fd, flag)
            except OSError as err:
                raise LaunchError(
                    f"{what}: can't join its {name} namespace: {describe_os_error(err)}"
                ) from None
            joined_user = joined_user or name == "user"
            if log:
                log(
                    "joined the %s namespace of instance %s (pid %d)",
                    name,
                    instance.name,
                    instance.pid,
                )
        try:
            os.fchdir(root_fd)
            os.chroot(".")
        except OSError as err:
            raise LaunchError(f"{what}: can't enter its root: {describe_os_error(err)}") from None
    finally:
        for _, _, fd in fds:
            os.close(fd)
        if root_fd >= 0:
            os.close(root_fd)
    _chdir(spec, host, "join instance")
    argv, env = payload("/")
    sc.set_no_new_privs()
    if host.is_root and not joined_user:
        sc.drop_all_capabilities(spec.caps)
    if argv is None:
        import sys

        sys.stderr.write(env + "\n")
        return 0
    return supervisor.run(lambda: _exec_or_exit(argv, env))
