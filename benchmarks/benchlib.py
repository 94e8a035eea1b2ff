"""What the benchmark scripts share: running a command as root or as the
unprivileged test user through one and the same wrapper, and their errors."""

from __future__ import annotations

import os
import pwd
import shutil

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
