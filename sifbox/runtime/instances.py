"""Instance state: where it lives, what it says, whether it is still true.

An instance's state is Apptainer's, under `~/.sifbox/instances/`:

    app/HOST/USER/NAME/NAME.json    pid, ppid, name, user, image, config, userns,
                                    cgroup, ip, logErrPath, logOutPath, checkpoint
    logs/HOST/USER/NAME.out|.err    the instance's stdout and stderr (appended)

`pid` is the holder, the process whose namespaces and root a joining
command enters; `ppid` its parent, the watcher that cleans up when the
holder ends. sifbox adds `starttime` and `ppidStarttime` (field 22 of
/proc/PID/stat), so that a pid reused by another process after a crash is
never taken for the instance. `config` is base64 of a JSON document, as
Apptainer's Go encoder writes a byte array.

Parsing, naming, matching and rendering are pure (tested in tests/unit);
the rest reads /proc and the state directory.
"""

from __future__ import annotations

import base64
import fcntl
import fnmatch
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sifbox.util.errors import SifboxError, UsageError
from sifbox.util.paths import config_dir

URI = "instance://"
_NAME = re.compile(r"[a-zA-Z0-9._-]+\Z")
#: Apptainer's field order; sifbox's own fields follow.
FIELDS = ("pid", "ppid", "name", "user", "image", "config", "userns", "cgroup", "ip",
          "logErrPath", "logOutPath", "checkpoint")  # fmt: skip


class InstanceError(SifboxError):
    reference = "instance"


@dataclass
class State:
    pid: int
    ppid: int
    name: str
    user: str
    image: str
    config: dict[str, object] = field(default_factory=dict)
    userns: bool = False
    cgroup: bool = False
    ip: str = ""
    logErrPath: str = ""  # Apptainer's JSON names
    logOutPath: str = ""
    checkpoint: str = ""
    starttime: int = 0
    ppidStarttime: int = 0
    path: str = ""  # the state file (not stored)


def check_name(name: str, verb: str = "start") -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise UsageError(f"can't {verb} instance `{name}`: not a valid instance name",
                         hint="instance names use letters, digits, `.`, `_` and `-`")  # fmt: skip
    return name


def name_of(uri: str) -> str:
    """`instance://NAME` -> NAME."""
    return uri.removeprefix(URI)


# --- paths ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """The state and log directories of one user on one host."""

    home: str
    host: str
    user: str
    uid: int = -1  # the owner: only its processes count as its instances (-1: any)
    config: str = ""  # the configuration directory (default: HOME/.sifbox)

    @property
    def base(self) -> str:
        return os.path.join(self.config or os.path.join(self.home, ".sifbox"), "instances")

    @property
    def app_dir(self) -> str:
        return os.path.join(self.base, "app", self.host, self.user)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.base, "logs", self.host, self.user)

    def state_dir(self, name: str) -> str:
        return os.path.join(self.app_dir, name)

    def state_file(self, name: str) -> str:
        return os.path.join(self.app_dir, name, name + ".json")

    def logs(self, name: str) -> tuple[str, str]:
        """(stderr log, stdout log)."""
        return os.path.join(self.log_dir, name + ".err"), os.path.join(self.log_dir, name + ".out")


def paths_for(user: str | None = None) -> Paths:
    """The caller's paths, or (for root's --user) those of `user`."""
    import pwd

    host = os.uname().nodename
    try:
        entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        if user:
            raise UsageError(f"can't find the instances of `{user}`: no such user") from None
        return Paths(os.environ.get("HOME", "/"), host, f"uid{os.getuid()}", os.getuid(), config_dir())
    # The caller's own: SIFBOX_CONFIGDIR/APPTAINER_CONFIGDIR may move them; another user's (root's
    # `--user`) are in that user's ~/.sifbox.
    return Paths(entry.pw_dir, host, entry.pw_name, entry.pw_uid, "" if user else config_dir())


# --- the state file ------------------------------------------------------------------------------


def dump_state(state: State) -> str:
    doc: dict[str, object] = {}
    for key in FIELDS:
        value = getattr(state, key)
        if key == "config":
            value = base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()
        doc[key] = value
    doc["starttime"] = state.starttime
    doc["ppidStarttime"] = state.ppidStarttime
    return json.dumps(doc, separators=(",", ":"))


def parse_state(text: str, path: str = "") -> State:
    """A state file's text -> State; ValueError when it is not one."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - callers treat every bad file alike
    try:
        config = (
            json.loads(base64.b64decode(doc.get("config") or "e30=")) if doc.get("config") else {}
        )
    except (ValueError, TypeError, RecursionError):
        config = {}
    try:
        return State(
            pid=int(doc["pid"]), ppid=int(doc.get("ppid", 0)), name=str(doc["name"]),
            user=str(doc.get("user", "")), image=str(doc.get("image", "")),
            config=config if isinstance(config, dict) else {}, userns=bool(doc.get("userns")),
            cgroup=bool(doc.get("cgroup")), ip=str(doc.get("ip", "")),
            logErrPath=str(doc.get("logErrPath", "")), logOutPath=str(doc.get("logOutPath", "")),
            checkpoint=str(doc.get("checkpoint", "")), starttime=int(doc.get("starttime", 0)),
            ppidStarttime=int(doc.get("ppidStarttime", 0)), path=path,
        )  # fmt: skip
    except (KeyError, TypeError, OverflowError) as err:  # OverflowError: int(Infinity)
        raise ValueError(f"missing or bad field: {err}") from None


def write_state(state: State) -> None:
    """Atomically (temp file + rename) write `state` to `state.path`."""
    from sifbox.util.atomic import write_file

    write_file(state.path, dump_state(state).encode(), 0o644)


# --- processes -----------------------------------------------------------------------------------


def parse_stat(text: str) -> tuple[int, int]:
    """(ppid, start time in clock ticks since boot) from /proc/PID/stat."""
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[19])


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live process, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    if text[text.rindex(")") + 2 :].startswith("Z"):
        return None
    return parse_stat(text)


def proc_uid(pid: int) -> int | None:
    """The real uid of a process (as the host sees it), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_running(state: State) -> bool:
    """The holder still runs (same pid, same start time)."""
    if state.pid <= 0:
        return False
    st = proc_stat(state.pid)
    return st is not None and (not state.starttime or st[1] == state.starttime)


def alive(paths: Paths, state: State) -> bool:
    """`state` describes a running instance of the owner of `paths`."""
    return is_running(state) and (paths.uid < 0 or proc_uid(state.pid) == paths.uid)


def watcher_running(state: State) -> bool:
    if state.ppid <= 0:
        return False
    st = proc_stat(state.ppid)
    return st is not None and (not state.ppidStarttime or st[1] == state.ppidStarttime)


# --- the state directory -------------------------------------------------------------------------


@contextmanager
def locked(paths: Paths, blocking: bool = True) -> Iterator[int | None]:
    """Hold the lock of the user's state directory (created 0700 if needed);
    yields the locked descriptor (a child process must close it).

    Yields None (without the lock) when `blocking` is False and someone
    else holds it."""
    os.makedirs(paths.app_dir, mode=0o700, exist_ok=True)
    fd = os.open(paths.app_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def match(names: list[str], pattern: str) -> list[str]:
    """The names that `pattern` (a shell glob, as Apptainer's) matches, sorted."""
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def remove_state(paths: Paths, name: str) -> None:
    import shutil

    shutil.rmtree(paths.state_dir(name), ignore_errors=True)


def load(paths: Paths, name: str) -> State | None:
    path = paths.state_file(name)
    try:
        with open(path) as f:
            return parse_state(f.read(1 << 20), path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return State(
            pid=0, ppid=0, name=name, user=paths.user, image="", path=path
        )  # unreadable: stale


def list_states(paths: Paths, pattern: str = "*", clean: bool = True) -> list[State]:
    """The running instances whose names match `pattern`; state left by
    instances that are gone is removed on the way (when `clean`)."""
    try:
        names = [
            n for n in os.listdir(paths.app_dir) if os.path.isdir(os.path.join(paths.app_dir, n))
        ]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise InstanceError(
            f"can't list the instances in `{paths.app_dir}`: {err.strerror}"
        ) from None
    found = []
    for name in match(names, pattern):
        state = load(paths, name)
        if state is None:
            continue
        if alive(paths, state):
            found.append(state)
        elif clean:
            clean_stale(paths, name)
    return found


def clean_stale(paths: Paths, name: str) -> None:
    """Remove the state of `name` if (checked again under the lock) it is stale."""
    try:
        with locked(paths, blocking=False) as got:
            if got is None:
                return
            state = load(paths, name)
            if state is not None and not alive(paths, state):
                remove_state(paths, name)
    except OSError:
        pass


def find_running(uri: str, verb: str = "join") -> State:
    """The state of the caller's running instance `instance://NAME`."""
    name = check_name(name_of(uri), verb)
    paths = paths_for()
    found = list_states(paths, name)
    if not found:
        raise InstanceError(f"can't {verb} instance `{name}`: no instance of that name is running",
                            hint="`sifbox instance list` shows the running instances")  # fmt: skip
    return found[0]


# --- rendering (Apptainer's shapes) --------------------------------------------------------------


def tabulate(rows: list[list[str]], padding: int = 4) -> str:
    """Go's tabwriter (minwidth 0, padding 4, spaces): every cell but the
    last of a row is padded to its column's widest cell plus `padding`."""
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + padding) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + (row[-1] if row else ""))
    return "".join(line + "\n" for line in lines)


def render_table(states: list[State]) -> str:
    rows = [["INSTANCE NAME", "PID", "IP", "IMAGE"]]
    rows += [[s.name, str(s.pid), s.ip, s.image] for s in states]
    return tabulate(rows)


def render_logs(states: list[State]) -> str:
    rows = [["INSTANCE NAME", "PID", "LOGS"]]
    for s in states:
        rows += [[s.name, str(s.pid), s.logErrPath], ["", "", s.logOutPath]]
    return tabulate(rows)


def render_json(states: list[State]) -> str:
    doc = {
        "instances": [
            {"instance": s.name, "pid": s.pid, "img": s.image, "ip": s.ip,
             "logErrPath": s.logErrPath, "logOutPath": s.logOutPath}
            for s in states
        ]
    }  # fmt: skip
    text = json.dumps(doc, indent="\t", ensure_ascii=False)
    # Go's encoder escapes these for HTML safety; do the same, byte for byte.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"


# --- signals -------------------------------------------------------------------------------------


def parse_signal(text: str) -> int:
    """`TERM`, `SIGTERM`, `sigterm` or `15` -> 15."""
    import signal

    value = text.strip()
    if value.isdigit():
        number = int(value)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if isinstance(sig, signal.Signals):
            return int(sig)
    raise UsageError(f"can't use signal `{text}`: unknown signal", hint="e.g. TERM, SIGINT, 9")
