"""`sifbox oci`: runc's command line, so that tools that drive runc drive sifbox.

    sifbox oci [--root DIR] [--log FILE] [--log-format text|json] COMMAND ...
      create --bundle B [--pid-file F] [--console-socket S] ID
      start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID | pause ID | resume ID
      run [--bundle B] [--pid-file F] [--console-socket S] [--detach] ID
      exec [--process process.json | [--env K=V] [--cwd D] [--user U[:G]] ARGS...] ID
      list [--format table|json] [-q] | ps [--format table|json] ID | features
      update [--memory M] [--pids-limit N] [--cpu-quota Q] [-r FILE] ID | events [--stats] ID
      spec [--bundle B] [--rootless]

The state lives under --root (/run/sifbox-oci for root, $XDG_RUNTIME_DIR/sifbox-oci
for a user). Errors are logged to --log as runc logs them (logrus text, or JSON
lines with --log-format json), besides the usual one-line error on stderr.
`sifbox-runc ARGS` is `sifbox oci ARGS` (containerd's runc shim: BinaryName).
"""

from __future__ import annotations

import os
import sys

from sifbox.util.errors import SifboxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

OCI_VERSION = "1.0.2"
#: The global options of `sifbox oci` without argparse (`fast_parse`): flag -> (dest, takes a value).
_GLOBALS = {"--root": ("root", True), "--log": ("log", True), "--log-format": ("log_format", True),
            "--systemd-cgroup": ("systemd_cgroup", False), "--debug": ("oci_debug", False),
            "--rootless": ("rootless", True)}  # fmt: skip
_CREATE = {"-b": ("bundle", True), "--bundle": ("bundle", True), "--pid-file": ("pid_file", True),
           "--console-socket": ("console_socket", True), "--no-pivot": ("no_pivot", False),
           "--no-new-keyring": ("no_new_keyring", False), "--preserve-fds": ("preserve_fds", True)}  # fmt: skip
#: The verbs `fast_parse` knows: their options, their defaults, their operands after ID.
_VERBS: dict[str, tuple[dict[str, tuple[str, bool]], dict[str, object], tuple[str, ...]]] = {
    "create": (_CREATE, {"bundle": ".", "pid_file": None, "console_socket": None, "no_pivot": False,
                         "no_new_keyring": False, "preserve_fds": 0}, ()),
    "run": ({**_CREATE, "-d": ("detach", False), "--detach": ("detach", False)},
            {"bundle": ".", "pid_file": None, "console_socket": None, "no_pivot": False, "no_new_keyring": False,
             "preserve_fds": 0, "detach": False}, ()),
    "start": ({}, {}, ()), "state": ({}, {}, ()),
    "kill": ({"-a": ("all", False), "--all": ("all", False)}, {"all": False, "signal": "TERM"}, ("signal",)),
    "delete": ({"-f": ("force", False), "--force": ("force", False)}, {"force": False}, ()),
}  # fmt: skip


def fast_parse(argv: list[str]) -> dict[str, object] | None:
    """`sifbox oci`'s common command lines (create, run, start, state, kill, delete: what
    containerd and Slurm run for every container) parsed without argparse, whose import costs
    ~20 ms of each; None when the command line needs argparse (help, other verbs, bad input:
    argparse then also gives the error message)."""
    values: dict[str, object] = {"root": None, "log": None, "log_format": "text", "systemd_cgroup": False,
                                 "oci_debug": False, "rootless": "auto"}  # fmt: skip
    i = _options(argv, 0, _GLOBALS, values)
    if i is None or i >= len(argv) or argv[i] not in _VERBS:
        return None
    verb = argv[i]
    flags, defaults, extra = _VERBS[verb]
    values.update(defaults, oci_command=verb)
    operands: list[str] = []
    i += 1
    while i < len(argv):
        if argv[i].startswith("-") and argv[i] != "-":
            j = _options(argv, i, flags, values)
            if j is None or j == i:
                return None
            i = j
        else:
            operands.append(argv[i])
            i += 1
    if not 1 <= len(operands) <= 1 + len(extra) or values["log_format"] not in ("text", "json"):
        return None
    values["id"] = operands[0]
    values.update(zip(extra, operands[1:]))
    if not str(values.get("preserve_fds", 0)).isdigit():
        return None
    if "preserve_fds" in values:
        values["preserve_fds"] = int(str(values["preserve_fds"]))
    return values


def _options(argv: list[str], i: int, flags: dict[str, tuple[str, bool]], values: dict[str, object]) -> int | None:
    """Read the options of `flags` from argv[i:] into `values`; the index after them (None:
    something argparse must see)."""
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, inline = argv[i].partition("=") if argv[i].startswith("--") else (argv[i], "", "")
        spec = flags.get(name)
        if spec is None:
            return None
        dest, valued = spec
        if not valued:
            if eq:
                return None
            values[dest] = True
            i += 1
        elif eq:
            values[dest] = inline
            i += 1
        elif i + 1 < len(argv):
            values[dest] = argv[i + 1]
            i += 2
        else:
            return None
    return i


def add_arguments(p: argparse.ArgumentParser) -> None:
    import argparse
    p.add_argument("--root", metavar="DIR", help="the state directory (default: /run/sifbox-oci for root, "
                   "$XDG_RUNTIME_DIR/sifbox-oci for a user)")  # fmt: skip
    p.add_argument("--log", metavar="FILE", help="log errors to FILE (as runc's --log)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="the format of --log")
    p.add_argument("--systemd-cgroup", action="store_true", help="accepted for runc compatibility; no effect")
    p.add_argument("--debug", dest="oci_debug", action="store_true", help="accepted for runc compatibility")
    p.add_argument("--rootless", default="auto", help="accepted for runc compatibility (auto, true, false)")
    sub = p.add_subparsers(dest="oci_command", metavar="COMMAND", parser_class=type(p))
    for verb in ("create", "run"):
        s = sub.add_parser(verb, help=f"{verb} a container from an OCI bundle")
        s.add_argument("-b", "--bundle", default=".", help="the bundle directory (default: the current one)")
        s.add_argument("--pid-file", metavar="FILE", help="write the container's pid to FILE")
        s.add_argument("--console-socket", metavar="PATH", help="send the pty master to this AF_UNIX socket")
        s.add_argument("--no-pivot", action="store_true", help="accepted for runc compatibility")
        s.add_argument("--no-new-keyring", action="store_true", help="accepted for runc compatibility")
        s.add_argument("--preserve-fds", type=int, default=0, metavar="N",
                       help="pass descriptors 3 to 3+N-1 to the container's process")
        if verb == "run":
            s.add_argument("-d", "--detach", action="store_true", help="create and start, then return")
        s.add_argument("id", metavar="ID")
    for verb, what in (("start", "start a created container"), ("state", "print the state of a container"),
                       ("pause", "freeze every process of a container (cgroup freezer)"),
                       ("resume", "thaw a paused container")):  # fmt: skip
        s = sub.add_parser(verb, help=what)
        s.add_argument("id", metavar="ID")
    s = sub.add_parser("kill", help="send a signal to the container's process (default SIGTERM)")
    s.add_argument("-a", "--all", action="store_true", help="send it to every process of the container")
    s.add_argument("id", metavar="ID")
    s.add_argument("signal", nargs="?", default="TERM", metavar="SIGNAL")
    s = sub.add_parser("delete", help="delete a container (stopped, or created; running with --force)")
    s.add_argument("-f", "--force", action="store_true", help="kill it first if it runs")
    s.add_argument("id", metavar="ID")
    s = sub.add_parser("exec", help="run a process in a running container")
    s.add_argument("-p", "--process", metavar="FILE", help="the process, as config.json's `process` object")
    s.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    s.add_argument("--cwd", metavar="DIR")
    s.add_argument("-u", "--user", metavar="UID[:GID]")
    s.add_argument("-t", "--tty", action="store_true", help="on a terminal (its master to --console-socket)")
    s.add_argument("--console-socket", metavar="PATH", help="send the pty master to this AF_UNIX socket")
    s.add_argument("-d", "--detach", action="store_true", help="run it in the background")
    s.add_argument("--pid-file", metavar="FILE", help="with --detach, write its pid to FILE")
    s.add_argument("--preserve-fds", type=int, default=0, metavar="N",
                   help="pass descriptors 3 to 3+N-1 to the process")
    s.add_argument("id", metavar="ID")
    s.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    s = sub.add_parser("list", help="list the containers")
    s.add_argument("-f", "--format", choices=("table", "json"), default="table")
    s.add_argument("-q", "--quiet", action="store_true", help="only the ids")
    s = sub.add_parser("ps", help="list the processes of a container")
    s.add_argument("-f", "--format", choices=("table", "json"), default="table")
    s.add_argument("id", metavar="ID")
    s = sub.add_parser("update", help="change the resource limits of a running container")
    s.add_argument("-r", "--resources", metavar="FILE", help="linux.resources as JSON (`-`: stdin)")
    s.add_argument("--memory", help="memory limit (bytes, or 512m, 2g)")
    s.add_argument("--memory-swap", help="memory and swap limit (-1: unlimited swap)")
    s.add_argument("--cpu-quota", type=int, help="CPU time per period (microseconds)")
    s.add_argument("--cpu-period", type=int, help="the period of --cpu-quota (microseconds, default 100000)")
    s.add_argument("--pids-limit", type=int, help="the most processes")
    s.add_argument("--cpu-share", help="CPU shares, a relative weight (2 to 262144)")
    s.add_argument("--cpuset-cpus", help="CPUs the container may use, e.g. 0-3")
    s.add_argument("--cpuset-mems", help="memory nodes the container may use, e.g. 0")
    s.add_argument("--memory-reservation", help="memory soft limit (bytes, or 256m)")
    s.add_argument("--blkio-weight", help="block I/O weight (10 to 1000)")
    for flag in ("--kernel-memory", "--kernel-memory-tcp", "--l3-cache-schema", "--mem-bw-schema"):
        s.add_argument(flag, dest="unsupported_" + flag[2:].replace("-", "_"), help=argparse.SUPPRESS)
    s.add_argument("id", metavar="ID")
    s = sub.add_parser("events", help="print the container's resource usage (cgroups) as JSON")
    s.add_argument("--stats", action="store_true", help="once, then exit")
    s.add_argument("--interval", type=float, default=5.0, help="seconds between two (default 5)")
    s.add_argument("id", metavar="ID")
    sub.add_parser("features", help="print what this runtime supports, as JSON")
    s = sub.add_parser("mount", help="make an OCI bundle of a SIF image, mounted (not extracted; root only)")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("bundle", metavar="BUNDLE", help="a new or empty directory")
    s = sub.add_parser("umount", help="undo `sifbox oci mount` of a bundle")
    s.add_argument("bundle", metavar="BUNDLE")
    s = sub.add_parser("spec", help="write a config.json to start a bundle from (runc's defaults)")
    s.add_argument("-b", "--bundle", default=".", help="the bundle directory (default: the current one)")
    s.add_argument("--rootless", dest="spec_rootless", action="store_true", help="for an unprivileged user")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except SifboxError as err:
        if args.log:
            _log_error(args.log, args.log_format, err)
        raise


def _log_error(path: str, fmt: str, err: SifboxError) -> None:
    import json

    from sifbox.runtime.ocistate import now_rfc3339

    if fmt == "json":
        line = json.dumps({"level": "error", "msg": err.message, "time": now_rfc3339()})
    else:
        line = f'time="{now_rfc3339()}" level=error msg={json.dumps(err.message)}'
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def _main(args: argparse.Namespace) -> int:
    from sifbox.runtime import ocirun, ocistate

    verb = args.oci_command
    if verb is None:
        raise UsageError("can't run `sifbox oci`: a command is needed", hint="see `sifbox oci --help`")
    root = os.path.abspath(args.root or ocistate.default_root())
    if verb == "features":
        import json

        print(json.dumps(_features(), indent=2))
        return 0
    if verb == "spec":
        return _spec(args.bundle, args.spec_rootless)
    if verb in ("mount", "umount"):
        from sifbox.runtime import ocimount

        if verb == "mount":
            ocimount.mount(args.image, args.bundle)
        else:
            ocimount.umount(args.bundle)
        return 0
    if verb == "list":
        return _list(root, args)
    if verb in ("create", "run"):
        return _create(root, args)
    if verb == "start":
        ocirun.start(root, args.id)
        return 0
    if verb in ("pause", "resume"):
        ocirun.pause(root, args.id, on=verb == "pause")
        return 0
    if verb == "state":
        import json

        doc = ocistate.load(root, args.id)
        print(json.dumps(ocistate.oci_state(root, args.id, doc), indent=2))
        return 0
    if verb == "kill":
        ocirun.kill(root, args.id, ocirun.parse_signal(args.signal), all_processes=args.all)
        return 0
    if verb == "delete":
        ocirun.delete(root, args.id, force=args.force)
        return 0
    if verb == "ps":
        pids = ocirun.processes(root, args.id)
        if args.format == "json":
            import json

            print(json.dumps(pids))
        else:
            _ps_table(pids)
        return 0
    if verb == "exec":
        return _exec(root, args)
    if verb == "update":
        ocirun.update(root, args.id, _update_limits(args))
        return 0
    if verb == "events":
        return _events(root, args)
    raise UsageError(f"can't run `sifbox oci {verb}`: unknown command")


def _create(root: str, args: argparse.Namespace) -> int:
    from sifbox.runtime import ocirun, ocispec, ocistate

    bundle = ocispec.load(args.bundle)
    detach = args.oci_command == "create" or args.detach
    kw = {"pid_file": args.pid_file, "console_socket": args.console_socket, "preserve_fds": args.preserve_fds}
    if args.oci_command == "create":
        ocirun.create(bundle, args.id, root, **kw)
        return 0
    if detach:
        ocirun.create(bundle, args.id, root, **kw)
        ocirun.start(root, args.id)
        return 0
    import _signal as signal  # the C module: `signal` imports enum

    # with hooks, the process is parked until their turn (startContainer runs at start)
    init, watcher = ocirun.create(bundle, args.id, root, detach=False, parked=bool(bundle.hooks), **kw)
    if bundle.hooks:
        try:
            ocirun.start(root, args.id)
        except BaseException:
            ocirun.delete(root, args.id, force=True)
            ocirun.reap(watcher)
            raise
    try:
        os.unlink(os.path.join(ocistate.container_dir(root, args.id), ocistate.EXEC_SOCKET))
    except OSError:
        pass

    def forward(sig: int, frame: object) -> None:
        if os.getppid() != caller:
            # the caller is gone (Slurm's `sh -c` ended by scancel's SIGTERM): no one waits for
            # the container or can reach it; take it down rather than leave it running
            sig = signal.SIGKILL
        try:
            os.kill(init, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGWINCH):  # fmt: skip
        signal.signal(sig, forward)
    caller = ocirun.guard_caller(signal.SIGHUP)
    try:
        while True:
            try:
                _, st = os.waitpid(watcher, 0)
                break
            except ChildProcessError:
                st = 255 << 8
                break
    finally:
        ocirun.delete(root, args.id, force=True)
    return os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)


def _update_limits(args: argparse.Namespace) -> object:
    """The limits of `update`'s options, or of its --resources document (linux.resources)."""
    import json

    from sifbox.hpc import cgroups

    for name, value in vars(args).items():
        if name.startswith("unsupported_") and value is not None:
            raise UsageError(f"can't use `sifbox oci update --{name[12:].replace('_', '-')}`: not supported",
                             hint="sifbox updates --memory, --memory-swap, --memory-reservation, --cpu-quota/"
                             "--cpu-period, --cpu-share, --cpuset-cpus, --cpuset-mems, --blkio-weight, --pids-limit")  # fmt: skip
    if args.resources:
        try:
            if args.resources == "-":
                doc = json.loads(sys.stdin.read(1 << 20))
            else:
                with open(args.resources, encoding="utf-8") as f:
                    doc = json.loads(f.read(1 << 20))
        except (OSError, ValueError) as err:
            raise UsageError(f"can't read the resources `{args.resources}`: {err}") from None
        limits = cgroups.from_oci(doc)
    else:
        limits = cgroups.from_options(memory=args.memory, memory_swap=args.memory_swap, pids_limit=(
            str(args.pids_limit) if args.pids_limit is not None else None), cpu_shares=args.cpu_share,
            cpuset_cpus=args.cpuset_cpus, cpuset_mems=args.cpuset_mems, memory_reservation=args.memory_reservation,
            blkio_weight=args.blkio_weight, cpu_count=os.cpu_count())  # fmt: skip
        if args.cpu_quota is not None:
            period = args.cpu_period or cgroups.CPU_PERIOD
            if args.cpu_quota <= 0 or period <= 0:
                raise UsageError("can't use --cpu-quota/--cpu-period: they must be positive")
            limits = (limits or cgroups.Limits())._replace(cpus=args.cpu_quota / period)
    if limits is None:
        raise UsageError("can't update the container: no limit given",
                         hint="e.g. --memory 512m, --pids-limit 100, --cpu-quota 50000")  # fmt: skip
    return limits


def _events(root: str, args: argparse.Namespace) -> int:
    """runc's `events`: a stats event now (--stats), or one every --interval until the container stops."""
    import json
    import time

    from sifbox.runtime import ocirun

    if args.interval <= 0:
        raise UsageError(f"can't use --interval `{args.interval}`: it must be positive")
    first = True
    while True:
        try:
            event = ocirun.stats(root, args.id)
        except SifboxError:
            if first:
                raise
            return 0  # it stopped
        print(json.dumps(event), flush=True)
        if args.stats:
            return 0
        first = False
        time.sleep(args.interval)


def _exec(root: str, args: argparse.Namespace) -> int:
    import json

    from sifbox.runtime import ociexec, ocispec

    if args.process:
        try:
            with open(args.process, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as err:
            raise UsageError(f"can't read the process file `{args.process}`: {err}") from None
        proc = ocispec.parse_process(doc)
    else:
        args_ = [a for a in args.args if a != "--"] if args.args[:1] == ["--"] else list(args.args)
        if not args_:
            raise UsageError("can't run `sifbox oci exec`: no process given",
                             hint="`sifbox oci exec ID COMMAND [ARGS...]`, or --process FILE")  # fmt: skip
        from sifbox.runtime import ocistate

        bundle = ocispec.load(ocistate.load(root, args.id)["bundle"])
        user: dict[str, int] = {"uid": bundle.process.uid, "gid": bundle.process.gid}
        if args.user:
            uid, _, gid = args.user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise UsageError(f"can't use --user `{args.user}`: not UID[:GID]")
            user = {"uid": int(uid), "gid": int(gid or 0)}
        env = [f"{k}={v}" for k, v in bundle.process.env.items()] + list(args.env)
        from sifbox.runtime.caps import names

        proc = ocispec.parse_process({
            "args": args_, "env": env, "cwd": args.cwd or bundle.process.cwd, "user": user,
            "capabilities": {"bounding": names(bundle.process.caps)}, "terminal": bool(args.tty),
        })  # fmt: skip
    if proc.terminal and not args.console_socket:
        raise UsageError("can't use `sifbox oci exec` with a terminal without --console-socket",
                         hint="pass --console-socket, or run the process without a terminal")  # fmt: skip
    if args.detach:
        ociexec.exec_detached(root, args.id, proc, args.pid_file, args.console_socket, args.preserve_fds)
        return 0
    if args.pid_file:
        raise UsageError("can't use `sifbox oci exec --pid-file` without --detach")
    return ociexec.exec_process(root, args.id, proc, args.console_socket, args.preserve_fds)


def _spec(bundle: str, rootless: bool) -> int:
    import json

    from sifbox.runtime.ocimode import runc_spec

    path = os.path.join(bundle, "config.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise SifboxError(f"can't write `{path}`: it exists", hint="remove it first") from None
    except OSError as err:
        raise SifboxError(f"can't write `{path}`: {err.strerror}") from None
    with os.fdopen(fd, "w") as f:
        json.dump(runc_spec(rootless=rootless), f, indent="\t")
        f.write("\n")
    return 0


def _list(root: str, args: argparse.Namespace) -> int:
    import json

    from sifbox.runtime import ocistate

    states = []
    for cid in ocistate.listing(root):
        try:
            states.append(ocistate.oci_state(root, cid, ocistate.load(root, cid)))
        except SifboxError:
            continue
    if args.quiet:
        for st in states:
            print(st["id"])
    elif args.format == "json":
        print(json.dumps(states))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"]) for s in states]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r, widths)) + "   " + r[5])
    return 0


def _ps_table(pids: list[int]) -> None:
    print("UID          PID    PPID  CMD")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            ppid = data[data.rfind(b")") + 2 :].split()[1].decode()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        print(f"{uid:<8} {pid:>7} {ppid:>7}  {cmd}")
    sys.stdout.flush()


def _features() -> dict[str, object]:
    from sifbox.runtime.caps import NAMES
    from sifbox.runtime.ocispec import SUPPORTED_NAMESPACES
    from sifbox.security import seccomp

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec"],
        "linux": {
            "namespaces": [ns for ns in SUPPORTED_NAMESPACES if ns != "cgroup"],
            "capabilities": list(NAMES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": seccomp.available()},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.sifbox.runtime": "native"},
    }
