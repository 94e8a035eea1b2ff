"""`sifbox instance start|run|list|stop|stats`: containers running as services.

    sifbox instance start [options] IMAGE NAME [ARGS...]   the startscript, detached
    sifbox instance run [options] IMAGE NAME [ARGS...]     the runscript, detached
    sifbox instance list [--json|--logs] [--user U] [PATTERN]
    sifbox instance stop [--all] [--force] [--signal SIG] [--timeout N] [NAME|PATTERN]
    sifbox instance stats [--json] [--no-stream] [--user U] NAME   its cgroup's usage (instancestats)
    sifbox exec|run|shell|test instance://NAME ...         join a running instance

State and logs live in ~/.sifbox/instances (see sifbox.runtime.instances).
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import SifboxError, UsageError

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
    s = sub.add_parser("stats", help="Get stats for a named instance",
                       description="Show the CPU, memory, block I/O and process counts of instance NAME, read from "
                       "the cgroup of its resource limits (an instance started with --memory, --cpus, "
                       "--pids-limit, ... or --apply-cgroups).")  # fmt: skip
    s.add_argument("name", metavar="NAME", help="the instance's name")
    s.add_argument("-j", "--json", action="store_true", help="print one sample as JSON (runc's stats)")
    s.add_argument("--no-stream", action="store_true", help="print one sample, not one every second")
    s.add_argument("-u", "--user", metavar="USER", help="if running as root, the instance of USER")


def main(args: argparse.Namespace) -> int:
    verb = args.instance_command
    if verb == "stats":
        from sifbox.cli.commands import instancestats

        return instancestats.main(args)
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
    from sifbox.runtime import instances, launcher

    name = instances.check_name(args.instance_name)
    if args.image.startswith(instances.URI):
        raise UsageError(f"can't start instance `{name}` from `{args.image}`: an instance is not an image")
    args.command = verb
    pid_file = args.pid_file or action.flag_env("PID_FILE")
    return launcher.run(action.build_launch(args, instance=name, pid_file=pid_file))
