"""Run a build script inside the image root being built (%post, %test).

Called as root (real root, or root of the build's fakeroot user
namespace): the sifbox runtime puts the root directory in a private mount
namespace with /proc, /sys, a minimal /dev, private /tmp, /etc/resolv.conf
and /etc/hosts, and runs the script with root's capabilities. Nothing is
mounted on the host: everything goes away with the mount namespace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from sifbox.util.errors import SifboxError


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
    from sifbox.config import sysconf
    from sifbox.image.source import open_image
    from sifbox.runtime import caps
    from sifbox.runtime.plan import default_mounts, site_from_config
    from sifbox.runtime.sandbox.setup import enter
    from sifbox.runtime.spec import ContainerSpec, Host, parse_bind
    from sifbox.util.messages import error_text

    bind_list = []
    for text in binds:
        bind_list += parse_bind(text)
    spec = ContainerSpec(
        image=root, action="exec", command=list(argv), binds=tuple(bind_list), no_home=True, contain=True,
        writable=writable, writable_tmpfs=writable_tmpfs and not writable, pwd="/",
        no_mount=frozenset({"home", "cwd"}), identity_files=False,
        caps=frozenset(caps.kept(keep_privs=True, no_privs=False, add=set(), drop=set())),
    )  # fmt: skip
    host = Host(0, 0, "root", "/root", "/", True)
    site = site_from_config(sysconf.load(config_path))
    mounts = default_mounts(spec, host, site=site)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes the container
        status = 255
        try:
            source = open_image(root, verb="build")
            status = enter(
                spec, host, source, mounts, lambda _root: (list(argv), dict(env)), site=site
            )
        except SifboxError as err:
            sys.stderr.write(error_text(err.message, err.hint))
            status = int(err.exit_status)
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
