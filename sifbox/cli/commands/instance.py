"""`sifbox instance start|run|list|stop`: containers running as services.

    sifbox instance start [options] IMAGE NAME [ARGS...]   the startscript, detached
    sifbox instance run [options] IMAGE NAME [ARGS...]     the runscript, detached
    sifbox instance list [--json|--logs] [--user U] [PATTERN]
    sifbox instance stop [--all] [--force] [--signal SIG] [--timeout N] [NAME|PATTERN]
    sifbox exec|run|shell|test instance://NAME ...         join a running instance

State and logs live in ~/.sifbox/instances (see sifbox.runtime.instances).
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import ExitStatus, NotAvailableError, SifboxError, UsageError

STOP_TIMEOUT = 10  # seconds, as Apptainer's --timeout default


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sifbox.cli.commands import action

    p.set_defaults(instance_command=None)
    sub = p.add_subparsers(dest="instance_command", metavar="SUBCOMMAND", title="subcommands",
                           parser_class=type(p))  # fmt: skip
    for verb, what in (("start", "startscript"), ("run", "runscript")):
        s = sub.add_parser(verb, help=f"Start a named instance of the given container image ({what})",
                           description=f"Start a named instance of IMAGE in the background, running its {what} "
                           "with ARGS; it keeps running until `sifbox instance stop NAME`.")  # fmt: skip
        s.add_argument(
            "image", metavar="IMAGE", help="SIF file, SquashFS file or sandbox directory"
        )
        s.add_argument("instance_name", metavar="NAME", help="the instance's name")
        s.add_argument(
            "args", nargs=argparse.REMAINDER, metavar="ARGS", help=f"arguments of the {what}"
        )
        s.add_argument("--pid-file", metavar="FILE", help="write the instance's PID to FILE")
        action.add_options(s, "start")
    s = sub.add_parser("list", help="List all running and named instances",
                       description="List the caller's running instances (all, or those matching PATTERN).")  # fmt: skip
    s.add_argument(
        "pattern", nargs="?", default="*", metavar="PATTERN", help="instance name or shell pattern"
    )
    s.add_argument(
        "-j", "--json", action="store_true", help="print structured json instead of list"
    )
    s.add_argument(
        "-l", "--logs", action="store_true", help="display location of stdout and stderr log files"
    )
    s.add_argument(
        "-u", "--user", metavar="USER", help="if running as root, list the instances of USER"
    )
    s.add_argument("-a", "--all", action="store_true", help="display all instances")
    s = sub.add_parser("stop", help="Stop a named instance of a given container image",
                       description="Stop the named instance (or those matching PATTERN, or --all): send it "
                       "SIGINT (or --signal), and SIGKILL after --timeout seconds.")  # fmt: skip
    s.add_argument("pattern", nargs="?", metavar="NAME", help="instance name or shell pattern")
    s.add_argument("-a", "--all", action="store_true", help="stop all of the user's instances")
    s.add_argument("-F", "--force", action="store_true", help="force kill instance (SIGKILL)")
    s.add_argument(
        "-s", "--signal", metavar="SIGNAL", help="signal sent to the instance (default SIGINT)"
    )
    s.add_argument("-t", "--timeout", type=int, default=STOP_TIMEOUT, metavar="N",
                   help=f"force kill non stopped instances after N seconds (default {STOP_TIMEOUT})")  # fmt: skip
    s.add_argument(
        "-u", "--user", metavar="USER", help="if running as root, stop the instances of USER"
    )
    s = sub.add_parser("stats", help="Get stats for a named instance (not available yet)")
    s.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    verb = args.instance_command
    if verb == "stats":
        raise NotAvailableError(
            "can't show instance statistics: they need cgroups, "
            "not available in this version of sifbox yet"
        )
    if verb is None:
        args._parser._subparsers._group_actions[0].choices[args.command].print_help()
        return 0
    if verb in ("start", "run"):
        return _start(args, verb)
    if verb == "list":
        return _list(args)
    return _stop(args)


# --- list ----------------------------------------------------------------------------------------


def _other_user(user: str | None, verb: str) -> str | None:
    if user and os.getuid() != 0:
        raise UsageError(f"can't {verb} the instances of `{user}`: only root can")
    return user or None


def _list(args: argparse.Namespace) -> int:
    from sifbox.runtime import instances

    if args.json and args.logs:
        raise UsageError("can't list instances: --json and --logs can't be used together")
    other = _other_user(args.user, "list")
    paths = instances.paths_for(other)
    # root never removes files in another user's directory (they could be links anywhere)
    states = instances.list_states(paths, args.pattern, clean=other is None)
    if args.json:
        sys.stdout.write(instances.render_json(states))
    elif args.logs:
        sys.stdout.write(instances.render_logs(states))
    else:
        sys.stdout.write(instances.render_table(states))
    return 0


# --- stop ----------------------------------------------------------------------------------------


def _stop(args: argparse.Namespace) -> int:
    import pwd
    import signal
    import time

    from sifbox.runtime import instances
    from sifbox.util import log

    if not args.pattern and not args.all:
        raise UsageError("can't stop an instance: give its NAME, a pattern, or --all",
                         hint="`sifbox instance list` shows the running instances")  # fmt: skip
    pattern = "*" if args.all and not args.pattern else args.pattern
    sig = (
        signal.SIGKILL
        if args.force
        else instances.parse_signal(args.signal)
        if args.signal
        else signal.SIGINT
    )
    if args.timeout < 0:
        raise UsageError(f"can't use --timeout {args.timeout}: it must be 0 or more seconds")
    other = _other_user(args.user, "stop")
    paths = instances.paths_for(other)
    states = instances.list_states(paths, pattern, clean=other is None)
    # The state file is the owner's to write: signal only the owner's processes.
    owner = pwd.getpwnam(other).pw_uid if other is not None else os.getuid()
    states = [s for s in states if instances.proc_uid(s.pid) == owner]
    if not states:
        raise instances.InstanceError(f"can't stop instance `{pattern}`: no instance found",
                                      hint="`sifbox instance list` shows the running instances")  # fmt: skip
    for state in states:
        log.log.info("Stopping %s instance of %s (PID=%d)", state.name, state.image, state.pid)
        _kill(state.pid, sig)
    deadline = time.monotonic() + args.timeout
    waiting = list(states)
    while waiting and time.monotonic() < deadline:
        time.sleep(0.01)
        waiting = [s for s in waiting if instances.watcher_running(s) or instances.is_running(s)]
    for state in waiting:
        log.log.info(
            "Killing %s instance of %s (PID=%d) (Timeout)", state.name, state.image, state.pid
        )
        if instances.is_running(state) and instances.proc_uid(state.pid) == owner:
            _kill(state.pid, signal.SIGKILL)
    # The watcher cleans up after the holder (kills what joined, removes the
    # state); give it a moment, then do its work if it is gone too.
    deadline = time.monotonic() + 5
    while waiting and time.monotonic() < deadline:
        time.sleep(0.01)
        waiting = [s for s in waiting if instances.watcher_running(s) or instances.is_running(s)]
    for state in waiting:
        if instances.watcher_running(state) and instances.proc_uid(state.ppid) == owner:
            _kill(state.ppid, signal.SIGKILL)
    if other is None:
        for state in states:
            instances.clean_stale(paths, state.name)
    return 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as err:
        raise SifboxError(f"can't signal process {pid}: {err.strerror}") from None


# --- start / run ---------------------------------------------------------------------------------


def _start(args: argparse.Namespace, verb: str) -> int:
    from sifbox.cli.commands import action
    from sifbox.runtime import instances

    name = instances.check_name(args.instance_name)
    if args.image.startswith(instances.URI):
        raise UsageError(
            f"can't start instance `{name}` from `{args.image}`: an instance is not an image"
        )
    args.command = verb
    pid_file = args.pid_file or action.flag_env("PID_FILE")

    def launch(spec, host, source, mounts, payload, site, log_fn, overlays=()) -> int:  # type: ignore[no-untyped-def]
        return _launch(name, pid_file, spec, host, source, mounts, payload, site, log_fn, overlays)

    return int(action.main(args, launch=launch))


def _launch(name, pid_file, spec, host, source, mounts, payload, site, log_fn, overlays=()) -> int:  # type: ignore[no-untyped-def]
    """Start the instance detached; return once it is ready (or failed)."""
    import signal
    import socket

    from sifbox.runtime import instances

    paths = instances.paths_for()
    err_log, out_log = paths.logs(name)
    with instances.locked(paths) as lock_fd:
        existing = instances.load(paths, name)
        if existing is not None and instances.alive(paths, existing):
            source.close()
            raise instances.InstanceError(f"can't start instance `{name}`: an instance of that name already exists",
                                          hint=f"`sifbox instance stop {name}` stops it; or choose another name")  # fmt: skip
        instances.remove_state(paths, name)  # stale, or left by a start that failed
        os.makedirs(paths.log_dir, mode=0o700, exist_ok=True)
        os.makedirs(paths.state_dir(name), mode=0o700)
        try:
            err_fd = os.open(
                err_log,
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
            out_fd = os.open(
                out_log,
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
        except OSError as err:
            instances.remove_state(paths, name)
            raise instances.InstanceError(
                f"can't start instance `{name}`: can't open its log: {err.strerror}"
            ) from None
        log_start = os.fstat(err_fd).st_size
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            ours.close()
            os.close(lock_fd)  # the lock must not outlive this command
            _daemon(
                name,
                paths,
                theirs,
                err_fd,
                out_fd,
                spec,
                host,
                source,
                mounts,
                payload,
                site,
                log_fn,
                overlays,
            )
        theirs.close()
        os.close(err_fd)
        os.close(out_fd)
        source.close()
        os.waitpid(child, 0)
        seen: dict[str, int] = {}
        try:
            holder, status = _wait_ready(ours, seen)
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
            pid=holder, ppid=watcher, name=name, user=paths.user, image=source.path,
            config=_config(spec), userns=not host.is_root or spec.userns, logErrPath=err_log, logOutPath=out_log,
            starttime=st[1] if st else 0, ppidStarttime=wst[1] if wst else 0,
            path=paths.state_file(name),
        )  # fmt: skip
        instances.write_state(state)
    if pid_file:
        _write_pid_file(pid_file, holder)
    from sifbox.util import log

    log.log.info("instance started successfully")
    return 0


def _config(spec) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What the instance was started with (stored base64-encoded, as Apptainer's engine config)."""
    namespaces = (
        ("pid", spec.pid),
        ("ipc", spec.ipc),
        ("uts", spec.uts or bool(spec.hostname)),
        ("net", spec.net),
    )
    return {
        "engineName": "sifbox",
        "containerID": "",
        "sifbox": {
            "image": spec.image,
            "contain": spec.contain,
            "writableTmpfs": spec.writable_tmpfs,
            "fakeroot": spec.fakeroot,
            "binds": [list(b) for b in spec.binds],
            "namespaces": [n for n, on in namespaces if on],
        },
    }


def _wait_ready(sock, seen: dict[str, int]) -> tuple[int | None, int]:  # type: ignore[no-untyped-def]
    """(holder pid, 0) once the holder says it is ready; (None, status) if
    the instance ended first. The watcher's pid goes into `seen`."""
    import socket
    import struct

    status = int(ExitStatus.CANNOT_LAUNCH)
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(12))
        except InterruptedError:
            continue
        if not data:
            return None, status
        pid = 0
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(raw) >= 12:
                pid = struct.unpack("iII", raw[:12])[0]
        if data == b"ready" and pid > 0:
            return pid, 0
        if data == b"watcher" and pid > 0:
            seen["watcher"] = pid
        if data.startswith(b"exit "):
            try:
                status = int(data[5:])
            except ValueError:
                pass


def _start_error(name: str, err_log: str, offset: int, status: int) -> SifboxError:
    """The error the instance wrote to its log while starting."""
    try:
        with open(err_log, errors="replace") as f:
            f.seek(offset)
            lines = f.read(1 << 16).splitlines()
    except OSError:
        lines = []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("sifbox: error: "):
            hint = (
                lines[i + 1][6:]
                if i + 1 < len(lines) and lines[i + 1].startswith("hint: ")
                else None
            )
            return SifboxError(
                lines[i][15:], hint=hint, exit_status=status or ExitStatus.CANNOT_LAUNCH
            )
    return SifboxError(f"can't start instance `{name}`: it stopped while starting (status {status})",
                       hint=f"see its log `{err_log}`", exit_status=ExitStatus.CANNOT_LAUNCH)  # fmt: skip


def _write_pid_file(path: str, pid: int) -> None:
    from sifbox.util import log

    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
    except OSError as err:
        log.log.warning("can't write the pid file `%s`: %s", path, err.strerror)


def _daemon(name, paths, sock, err_fd, out_fd, spec, host, source, mounts, payload, site, log_fn, overlays=()):  # type: ignore[no-untyped-def]
    """In the first child: detach (setsid, second fork), then become the
    watcher of the instance. Never returns."""
    status = int(ExitStatus.CANNOT_LAUNCH)
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        sock.send(b"watcher")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (devnull, out_fd, err_fd):
            os.close(fd)
        import contextlib
        import traceback

        from sifbox.runtime import holder
        from sifbox.runtime.sandbox.setup import enter

        app_fd = os.open(paths.app_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        host_mnt = os.readlink("/proc/self/ns/mnt")
        notify = sock.fileno()
        try:
            status = enter(spec, host, source, mounts, payload, log=log_fn, site=site, overlays=overlays,
                           hold=lambda start: holder.hold(start, notify))  # fmt: skip
        except SifboxError as err:
            sys.stderr.write(f"sifbox: error: {err.message}\n")
            if err.hint:
                sys.stderr.write(f"hint: {err.hint}\n")
            status = int(err.exit_status)
        try:
            sock.send(f"exit {status}".encode())
        except OSError:
            pass
        sock.close()
        if os.readlink("self/ns/mnt", dir_fd=proc_fd) != host_mnt:  # never the host's namespace
            holder.kill_namespace_peers(proc_fd)
        holder.remove_own_state(app_fd, name)
    except BaseException:  # noqa: BLE001 - a bug: into the log, never into the caller's terminal
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
