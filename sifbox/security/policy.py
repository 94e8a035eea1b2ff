"""Site policy on which images may run: `limit container paths|owners|groups`,
`allow container sif|encrypted|squashfs|extfs|dir`, and the per-user
allowed directory of the admission store (`limit container store`).

The decision is pure (`decide`): it takes the fully resolved path of the
file the runtime actually opened, its owner, group and kind, and the
limits read from sifbox.conf. `check_opened` feeds it from the open
descriptor (`/proc/self/fd/N` and `fstat`), so what is checked is what gets
mounted: a symlink into an allowed directory that points outside is judged
by where it points, and swapping the file after the check changes nothing.

Paths match whole components: `/scratch` admits `/scratch/a.sif` and
`/scratch` itself, never `/scratch2/a.sif`. The limits apply to every
caller, root included (Apptainer enforces them only in its setuid mode and
never for root; sifbox has no setuid mode, so it applies them always).

Strength: without a privileged helper these limits are the site's policy,
not a security boundary against an unprivileged user: anyone who can run
`squashfuse` and `unshare` can mount an image by hand. `sifbox config check`
says so.
"""

from __future__ import annotations

import os
from sifbox.util.errors import ExitStatus, SifboxError

#: Image kinds, as named by `allow container KIND`.
KINDS = ("sif", "encrypted", "squashfs", "extfs", "dir")

#: The reason given for each refused limit (Apptainer's wording for paths).
REASONS = {
    "path": "image is not in an allowed configured path",
    "owner": "image is not owned by an allowed configured owner",
    "group": "image is not owned by an allowed configured group",
    "kind": "image type {kind} is not allowed by the configuration",
}


class PolicyError(SifboxError):
    """The site policy refuses to run an image."""

    reference = "policy-refused"
    exit_status = ExitStatus.CANNOT_LAUNCH


class Limits:
    """What sifbox.conf limits: allowed directories (resolved, absolute), owner
    uids, group gids (empty: no limit) and the allowed image kinds (a frozenset of `KINDS`)."""

    __slots__ = ("groups", "kinds", "owners", "paths")

    def __init__(self, paths: tuple[str, ...], owners: frozenset[int], groups: frozenset[int],
                 kinds: frozenset[str]) -> None:  # fmt: skip
        self.paths, self.owners, self.groups, self.kinds = paths, owners, groups, kinds


def active(cfg) -> bool:  # type: ignore[no-untyped-def]
    """True when sifbox.conf sets any limit (cheap: no system call)."""
    return bool(
        cfg.get_list("limit container paths")
        or cfg.get_list("limit container owners")
        or cfg.get_list("limit container groups")
        or cfg.get_bool("limit container store")
        or not all(cfg.get_bool(f"allow container {k}") for k in KINDS)
    )


def store_root(cfg) -> str:  # type: ignore[no-untyped-def]
    """The admission store's directory (`store path`, default /var/lib/sifbox/store)."""
    return cfg.get_str("store path") or DEFAULT_STORE_PATH


DEFAULT_STORE_PATH = "/var/lib/sifbox/store"


def user_dir(cfg, user: str) -> str:  # type: ignore[no-untyped-def]
    """The per-user allowed directory of `user` in the admission store."""
    return os.path.join(store_root(cfg), user)


def limits_from_config(cfg, user: str) -> Limits:  # type: ignore[no-untyped-def]
    """The limits in force for `user` (names of owners and groups looked up)."""
    paths = [_resolved(p) for p in cfg.get_list("limit container paths")]
    if cfg.get_bool("limit container store"):
        paths.append(_resolved(user_dir(cfg, user)))
    owners = {_uid(n) for n in cfg.get_list("limit container owners")}
    groups = {_gid(n) for n in cfg.get_list("limit container groups")}
    kinds = frozenset(k for k in KINDS if cfg.get_bool(f"allow container {k}"))
    return Limits(tuple(paths), frozenset(owners - {None}), frozenset(groups - {None}), kinds)


def _resolved(path: str) -> str:
    # The allowed directory itself may be a symlink (/scratch -> /gpfs/scratch):
    # compare resolved with resolved.
    return os.path.realpath(path)


def _uid(name: str) -> int | None:
    import pwd

    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None  # an unknown user owns nothing


def _gid(name: str) -> int | None:
    import grp

    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def within(path: str, directory: str) -> bool:
    """True if `path` is `directory` or below it, by whole components (both absolute)."""
    directory = directory.rstrip("/") or "/"
    if directory == "/":
        return path.startswith("/")
    return path == directory or path.startswith(directory + "/")


def decide(path: str, uid: int, gid: int, kind: str, limits: Limits) -> str | None:
    """Why the image is refused (a reason of `REASONS`), or None when it may run.

    `path` is the fully resolved path of the opened file, `uid`/`gid` its
    owner and group, `kind` one of `KINDS`. Limits on paths and on owners and
    groups add up: an image must pass all that are set.
    """
    if kind not in limits.kinds:
        return REASONS["kind"].format(kind=kind)
    if limits.paths and not any(within(path, d) for d in limits.paths):
        return REASONS["path"]
    if limits.owners and uid not in limits.owners:
        return REASONS["owner"]
    if limits.groups and gid not in limits.groups:
        return REASONS["group"]
    return None


def kind_of(source) -> str:  # type: ignore[no-untyped-def]
    """The `allow container` kind of an opened `ImageSource`."""
    from sifbox.image.source import ImageKind

    if source.kind is ImageKind.SANDBOX:
        return "dir"
    if source.kind is ImageKind.SQUASHFS:
        return "squashfs"
    return "sif"


def opened_path(fd: int) -> str:
    """The resolved path of the file open on `fd` (what the kernel opened)."""
    path = os.readlink(f"/proc/self/fd/{fd}")
    if not path.startswith("/") or path.endswith(" (deleted)"):
        # A deleted file, a pipe or an anonymous file: in no directory at all.
        return ""
    return path


def check_opened(source, cfg, *, verb: str, image: str, user: str) -> None:  # type: ignore[no-untyped-def]
    """Raise PolicyError if sifbox.conf does not allow running the opened image."""
    limits = limits_from_config(cfg, user)
    st = os.fstat(source.fd)
    reason = decide(opened_path(source.fd), st.st_uid, st.st_gid, kind_of(source), limits)
    if reason is not None:
        raise PolicyError(f"can't {verb} `{image}`: {reason}",
                          hint="`sifbox config check` shows the limits of the site's sifbox.conf")  # fmt: skip


STRENGTH = (
    "Enforcement: these limits are applied by sifbox itself, on the file it opens and mounts. "
    "sifbox has no setuid helper, so an unprivileged user who can run squashfuse (or "
    "squashfuse_ll) and unshare user namespaces on this machine can mount and run an image by "
    "hand (squashfuse through a setuid fusermount3 also works without user namespaces), "
    "outside these limits: for such users they are site policy, not a security boundary. "
    "They bind users only where unprivileged user namespaces and FUSE are closed to them, "
    "and only for images they cannot read."
)
