"""OCI hooks of a bundle (config.json `hooks`), run as the runtime spec says: each with
its own argv and environment only, the container's state as JSON on its stdin, killed
after its `timeout` seconds, one after the other in the order given.

    prestart, createRuntime, createContainer   `create`, once the container's process
                                               exists (parked), in the runtime's namespaces
    startContainer                             `start`, in the container, before the
                                               process's program is exec'd
    poststart                                  `start`, once the program runs
    poststop                                   `delete`, once the container's processes ended

A hook that fails (status, signal, timeout, can't exec) fails the step it belongs to,
except poststop (a warning, and the deletion goes on), as with runc. Only os/time are used
when running: startContainer hooks run after pivot_root, where no module can be imported.
"""

from __future__ import annotations

import os
import time

from sifbox.util.records import record as namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
#: Run by `create` (the container's process parked), before anything of the container runs.
CREATE_KINDS = ("prestart", "createRuntime", "createContainer")


if TYPE_CHECKING:

    class Hook(NamedTuple):
        path: str
        args: tuple[str, ...]
        env: tuple[str, ...]
        timeout: int | None

else:
    Hook = namedtuple("Hook", "path args env timeout")


class HookFailed(Exception):
    """A hook did not succeed: the message says which and how."""


def parse(doc: Any, fail: Any) -> tuple[tuple[str, Hook], ...]:
    """config.json's `hooks` as (kind, Hook) pairs in order; `fail(what)` makes the error.
    Unknown kinds are ignored (as runc); a hook's path must be absolute."""
    if doc is None:
        return ()
    if not isinstance(doc, dict):
        raise fail("`hooks` must be an object")
    out = []
    for kind in KINDS:
        items = doc.get(kind)
        if items is None:
            continue
        if not isinstance(items, list):
            raise fail(f"`hooks.{kind}` must be a list")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"].startswith("/"):
                raise fail(f"a `hooks.{kind}` entry has no absolute `path`")
            if "\0" in item["path"]:
                raise fail(f"a `hooks.{kind}` path is not a path")
            args = item.get("args") or [item["path"]]
            env = item.get("env") or []
            if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a for a in args):
                raise fail(f"`hooks.{kind}` args of `{item['path']}` must be a list of strings")
            if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e and "\0" not in e for e in env):
                raise fail(f"`hooks.{kind}` env of `{item['path']}` must be a list of NAME=VALUE")
            timeout = item.get("timeout")
            if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
                raise fail(f"`hooks.{kind}` timeout of `{item['path']}` must be a positive number of seconds")
            out.append((kind, Hook(item["path"], tuple(args), tuple(env), timeout)))
    return tuple(out)


def to_json(hooks: tuple[tuple[str, Hook], ...]) -> list[list[Any]]:
    """The hooks as saved in the container's state (read back by `start` and `delete`)."""
    return [[kind, h.path, list(h.args), list(h.env), h.timeout] for kind, h in hooks]


def from_json(doc: Any) -> tuple[tuple[str, Hook], ...]:
    if not isinstance(doc, list):
        return ()
    return tuple((str(k), Hook(str(p), tuple(a), tuple(e), t)) for k, p, a, e, t in doc)


def of_kind(hooks: tuple[tuple[str, Hook], ...], *kinds: str) -> list[tuple[str, Hook]]:
    return [(k, h) for k, h in hooks if k in kinds]


def run(hooks: list[tuple[str, Hook]], state: bytes) -> None:
    """Run `hooks` in order, each with `state` on its stdin and this process's stderr as its
    stdout and stderr; raise HookFailed at the first that fails."""
    for kind, hook in hooks:
        why = _run_one(hook, state)
        if why:
            raise HookFailed(f"the {kind} hook `{hook.path}` {why}")


def _run_one(hook: Hook, state: bytes) -> str:
    """'' if the hook succeeded, else why not."""
    r, w = os.pipe()
    err_r, err_w = os.pipe()  # closed by a successful exec (CLOEXEC), else the errno
    os.set_inheritable(err_w, False)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.close(err_r)
            os.dup2(r, 0)
            os.dup2(2, 1)
            os.closerange(3, err_w)
            os.closerange(err_w + 1, 1 << 16)
            os.setsid()
            os.execve(hook.path, list(hook.args), dict(e.split("=", 1) for e in hook.env))
        except OSError as err:
            os.write(err_w, str(err.errno).encode())
        finally:
            os._exit(127)
    os.close(r)
    os.close(err_w)
    try:
        data = os.read(err_r, 16)
    finally:
        os.close(err_r)
    if data:
        os.close(w)
        _wait(pid, None)
        return f"can't be run: {os.strerror(int(data))}"
    try:
        os.write(w, state)  # a hook that does not read its stdin: fine
    except OSError:
        pass
    os.close(w)
    status = _wait(pid, hook.timeout)
    if status is None:
        return f"did not end within its timeout ({hook.timeout} s): killed"
    if status != 0:
        return f"failed with exit status {status}" if status > 0 else f"was killed by signal {-status}"
    return ""


def _wait(pid: int, timeout: int | None) -> int | None:
    """The exit code of `pid` (negative: the signal), or None after killing it at `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        except InterruptedError:
            continue
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
