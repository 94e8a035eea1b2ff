"""Who the caller is inside a container: the user namespace of --fakeroot (subordinate ID
ranges through newuidmap/newgidmap, else root mapped to the caller alone), and the image's
/etc/passwd and /etc/group with the caller added."""

from __future__ import annotations

import grp  # (a built-in module: imported before the launch forks its PID 1, which uses it)
import os

TYPE_CHECKING = False  # (not `typing`'s: its import costs every launch milliseconds)
if TYPE_CHECKING:
    from sifbox.runtime.spec import Host


def fakeroot_namespaces(host: Host, use_subids: bool = True, **extra: object):  # type: ignore[no-untyped-def]
    """A user namespace in which `host`'s user is root: with the caller's
    /etc/subuid and /etc/subgid ranges through newuidmap/newgidmap when
    configured (unless not `use_subids`: --ignore-subuid), else root mapped to the caller alone."""
    from sifbox.runtime import idmap
    from sifbox.runtime.sandbox.ops import Namespaces
    from sifbox.util.paths import which

    subuid = idmap.read_subid("/etc/subuid", host.user, host.uid) if use_subids else None
    subgid = idmap.read_subid("/etc/subgid", host.user, host.uid) if use_subids else None
    tools = which("newuidmap"), which("newgidmap")
    if subuid is None or subgid is None or None in tools:
        return Namespaces(True, host.uid, host.gid, inside=0, **extra)
    maps = (tuple(idmap.fakeroot_maps(host.uid, subuid)), tuple(idmap.fakeroot_maps(host.gid, subgid)))
    return Namespaces(True, host.uid, host.gid, maps=maps, tools=tools, **extra)


def enter_fakeroot(host: Host) -> None:
    """For an unprivileged build: become root of a new user namespace (with
    the caller's subordinate ID ranges when configured)."""
    from sifbox.runtime.sandbox import namespaces

    namespaces.enter(fakeroot_namespaces(host), image="the build")


def identity_files(session, root: str, host: Host, cfg) -> None:  # type: ignore[no-untyped-def]
    """/etc/passwd and /etc/group of the image, with the caller added."""
    from sifbox.runtime.plan import merge_group, merge_passwd
    from sifbox.runtime.sandbox.rootfs import read_text

    if cfg.get_bool("config passwd"):
        # A user's GECOS and shell, as Apptainer writes them (root's line stays the image's kind).
        entry = passwd_entry(host.uid) if host.uid == os.getuid() != 0 else (None, "/bin/sh")
        session.bind_text(root, "/etc/passwd", merge_passwd(read_text(root, "/etc/passwd"), host, *entry))
    if cfg.get_bool("config group"):

        def group_name() -> str:  # looked up (NSS) only if the image's /etc/group lacks the group
            try:
                return grp.getgrgid(host.gid).gr_name
            except KeyError:
                return host.user

        session.bind_text(root, "/etc/group", merge_group(read_text(root, "/etc/group"), host, group_name))


def passwd_entry(uid: int) -> tuple[str | None, str]:
    import pwd

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None, "/bin/sh"
    return entry.pw_gecos, entry.pw_shell or "/bin/sh"
