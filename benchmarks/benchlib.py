"""What the benchmark scripts share: running a command as root or as the
unprivileged test user through one and the same wrapper, and their errors."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """The row can't be run here: a tool or the image is missing."""


class Failed(Exception):
    """A command exited non-zero."""


class UserEnv:
    """How to run a command as root or as the unprivileged user, with the same wrapper every time."""

    def __init__(self, user: str, lang: str = "C.UTF-8") -> None:
        self.user = user
        self.runuser = shutil.which("runuser") or next(
            (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None)
        try:
            self.pw: pwd.struct_passwd | None = pwd.getpwnam(user)
        except KeyError:
            self.pw = None
        base = {"PATH": PATH, "LANG": lang}
        self.env = {"root": {**base, "USER": "root", "LOGNAME": "root", "HOME": "/root"}}
        if self.pw is not None:
            self.env[user] = {**base, "USER": user, "LOGNAME": user, "HOME": self.pw.pw_dir}
        # The benchmark's own runtime directory per user (XDG_RUNTIME_DIR, which sifbox honours
        # for the node's shared mounts): its holders are its own, and stop_holders() stops
        # them only, never those of other users or runs on the node.
        self.runtime = {who: tempfile.mkdtemp(prefix=f"sifbox-bench-run.{who}.", dir="/tmp") for who in self.env}
        for who, path in self.runtime.items():
            if who != "root" and self.pw is not None:
                os.chown(path, self.pw.pw_uid, self.pw.pw_gid)
            self.env[who]["XDG_RUNTIME_DIR"] = path

    def user_problem(self) -> str | None:
        if self.runuser is None:
            return "runuser not installed"
        if self.pw is None:
            return f"no user `{self.user}` (scripts/create-test-user.sh)"
        return None

    def wrap(self, who: str, argv: list[str]) -> list[str]:
        if who == "root":
            return argv
        problem = self.user_problem()
        if problem:
            raise Unavailable(problem)
        assert self.runuser is not None  # user_problem() checked it
        return [self.runuser, "-u", self.user, "--", *argv]

    def stop_holders(self, wait: float = 5.0) -> int:
        """Stop the holders of the shared mounts this benchmark started (those recorded in its
        own runtime directories); returns how many were stopped."""
        pids = []
        for path in self.runtime.values():
            state_dir = os.path.join(path, "sifbox")
            try:
                names = [n for n in os.listdir(state_dir) if n.endswith(".state")]
            except OSError:
                continue
            for name in names:
                try:
                    with open(os.path.join(state_dir, name)) as f:
                        doc = dict(line.partition(" ")[::2] for line in f.read().splitlines())
                    pid, start = int(doc["pid"]), int(doc["starttime"])
                except (OSError, KeyError, ValueError):
                    continue
                if _starttime(pid) == start:
                    os.kill(pid, signal.SIGTERM)
                    pids.append((pid, start))
        deadline = time.monotonic() + wait
        for pid, start in pids:
            while _starttime(pid) == start:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        return len(pids)

    def close(self) -> None:
        """Stop this benchmark's holders and remove its runtime directories."""
        self.stop_holders()
        for path in self.runtime.values():
            shutil.rmtree(path, ignore_errors=True)


def _starttime(pid: int) -> int | None:
    """The start time of a live, non-zombie process `pid`; None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def root_strace(prog: str) -> str | None:
    """strace's path for a tracing benchmark run as root; None (with the reason printed on
    stderr) when not root or strace is missing."""
    import shutil
    import sys

    if os.geteuid() != 0:
        print(f"{prog}: run as root", file=sys.stderr)
        return None
    strace = shutil.which("strace")
    if strace is None:
        print(f"{prog}: strace is not installed (apt-get install strace)", file=sys.stderr)
    return strace


def trace_events(trace: str) -> Iterator[tuple[str, float, str]]:
    """(pid, time, call and result) of each line of an `strace -f -ttt` output."""
    for line in trace.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            yield parts[0], float(parts[1]), parts[2]


def drop_caches() -> None:
    """`sync; echo 3 > /proc/sys/vm/drop_caches` (root): the next run reads from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def prune_holders(env: UserEnv, sifbox: str | None) -> None:
    """Stop root's and the user's node mount holders (`sifbox mounts prune --force`)."""
    import subprocess

    if sifbox:
        for who in ("root", env.user):
            try:
                argv = env.wrap(who, [sifbox, "mounts", "prune", "--force"])
            except Unavailable:
                continue
            subprocess.run(argv, env=env.env[who], capture_output=True, check=False, timeout=120)
