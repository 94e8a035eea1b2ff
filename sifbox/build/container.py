"""Run a build script inside the image root being built (%post, %test).

Called as root (real root, or root of the build's fakeroot user namespace),
in a forked child: the launcher (`sifbox.runtime.buildrun.run_build_container`)
builds the container there, so that nothing of it touches this process.
Nothing is mounted on the host: everything goes away with the child's mount
namespace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from sifbox.util.errors import SifboxError, report
from sifbox.util.messages import error_text


def run_in_root(
    root: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    binds: Sequence[str] = (),
    writable: bool = True,
    writable_tmpfs: bool = False,
    what: str = "script",
    config_path: str | None = None,
) -> int:
    """Run `argv` with `env` in the image root `root`; return its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes the container
        status = 255
        try:
            from sifbox.runtime.buildrun import run_build_container

            status = run_build_container(root, list(argv), dict(env), binds=tuple(binds), writable=writable,
                                         writable_tmpfs=writable_tmpfs, config_path=config_path)  # fmt: skip
        except SifboxError as err:
            status = report(err)
        except KeyboardInterrupt:
            status = 130
        except BaseException as err:  # noqa: BLE001 - the forked child must always reach os._exit
            sys.stderr.write(error_text(f"can't run the {what}: {type(err).__name__}: {err}"))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    from sifbox.build.fakeroot import wait_child

    st, pending = wait_child(pid)
    if pending is not None:
        raise pending
    return os.waitstatus_to_exitcode(st)
