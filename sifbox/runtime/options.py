"""How a container is run, beyond what it contains: Apptainer's privilege, fakeroot-mode,
timeout and image-source options, parsed and checked (pure: no system calls).

    --security uid:N,gid:N[:M...]   root only: the payload runs as uid N, gid N (and the
                                    supplementary groups M...), as Apptainer's
    --security seccomp:FILE                  a seccomp profile (OCI/Docker JSON), compiled with libseccomp
    --security apparmor:|selinux:            refused
    --runscript-timeout DURATION    Go's duration syntax (`30s`, `1m30s`, `500ms`): the
                                    image's environment scripts must be done within it
    --ignore-subuid                 --fakeroot maps root alone, whatever /etc/subuid says
    --ignore-userns                 root: no user namespace, even with -u
    --disable-cache, --no-https     for images named by a URI (docker://...)
    --no-share                      mount the image for this container alone
"""

from __future__ import annotations

import os

from sifbox.util.errors import NotAvailableError, UsageError
from sifbox.util.records import record

#: The options of a launch that `sifbox.runtime.launcher.Launch` carries as `options`.
#:   run_as          (uid, gid, supplementary gids) of `--security uid:,gid:`, or None
#:   timeout         seconds the environment scripts may take (--runscript-timeout), or None
#:   timeout_text    the timeout as Go writes a duration (`1s`, `1m30s`), for messages
#:   subuid          False with --ignore-subuid
#:   ignore_userns   --ignore-userns (root)
#:   disable_cache   --disable-cache: an image URI is converted for this launch alone
#:   no_https        --no-https: registries of docker:// URIs over plain HTTP
#:   seccomp         the profile of `--security seccomp:FILE`, or None
#:   limits          sifbox.hpc.cgroups.Limits of --memory, --cpus, ... or None
#:   key             the key of an encrypted image (sifbox.security.cryptkey.Key), from
#:                   --passphrase, --pem-path or SIFBOX_ENCRYPTION_*; None: none given
#:   share           False with --no-share: the image is mounted for this container alone,
#:                   not joined from the node's mount of it (sifbox.runtime.nodemount)
LaunchOptions = record(
    "LaunchOptions",
    "run_as timeout timeout_text subuid ignore_userns disable_cache no_https seccomp limits key share",
    defaults=(None, None, "", True, False, False, False, None, None, None, True),
)

#: `--security` kinds that sifbox does not apply, and why.
_REFUSED = {
    "apparmor": "sifbox does not apply AppArmor profiles (the host's policy for sifbox applies)",
    "selinux": "sifbox does not apply SELinux contexts (the host's policy for sifbox applies)",
}
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


def _id(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > _MAX_ID:
        raise UsageError(f"can't use --security `{item}`: `{text}` is not a numeric ID",
                         hint="uid:N,gid:N[:M...] take numbers, as Apptainer's")  # fmt: skip
    return int(text)


def parse_security(
    values: list[str] | tuple[str, ...], *, is_root: bool
) -> tuple[int, int, tuple[int, ...]] | None:
    """(uid, gid, groups) of the `--security` values (comma-separated, repeatable), or None
    when they name no identity: `gid:N:M...` makes N the group and N, M... the groups. Only
    root may name one; AppArmor and SELinux are refused. A uid alone keeps gid 0, a
    gid alone keeps uid 0 (root's), as Apptainer. (`seccomp:FILE` is parse_seccomp's.)"""
    uid: int | None = None
    gids: list[int] | None = None
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            kind, sep, rest = item.partition(":")
            kind = kind.lower()
            if kind in _REFUSED:
                raise NotAvailableError(f"can't use --security `{item}`: {_REFUSED[kind]}")
            if kind == "seccomp" and sep and rest:
                continue  # parse_seccomp's
            if kind not in ("uid", "gid") or not sep or not rest:
                raise UsageError(f"can't use --security `{item}`: not one of uid:N, gid:N[:M...], seccomp:FILE, "
                                 "apparmor:PROFILE, selinux:CONTEXT")  # fmt: skip
            if kind == "uid":
                uid = _id(rest, item)
            else:
                gids = [_id(g, item) for g in rest.split(":")]
    if uid is None and gids is None:
        return None
    if not is_root:
        which = "uid" if uid is not None else "gid"
        raise UsageError(f"can't use --security `{which}:`: only root can run a container as another user or group",
                         hint="a user's container always runs as that user (or as root of a user namespace, "
                         "with --fakeroot)")  # fmt: skip
    groups = tuple(dict.fromkeys(gids or ()))
    return (uid or 0, (gids or [0])[0], groups)


def parse_seccomp(values: list[str] | tuple[str, ...]) -> str | None:
    """The profile of the last `seccomp:FILE` of the `--security` values, or None."""
    found = None
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            kind, _, rest = item.partition(":")
            if kind.lower() == "seccomp" and rest:
                found = rest
    return found


def seccomp_program(options: object, caps: frozenset[int]) -> bytes | None:
    """The BPF program of `--security seccomp:FILE` (`options`: LaunchOptions), for a payload
    keeping `caps`; None without one."""
    path = getattr(options, "seccomp", None)
    if not path:
        return None
    from sifbox.runtime.caps import names
    from sifbox.security.seccomp import SeccompError, load_file

    try:
        return load_file(path, caps=frozenset(names(caps)))
    except SeccompError as err:
        raise UsageError(f"can't use --security `seccomp:{path}`: {err.message.partition(': ')[2]}",
                         hint=err.hint) from None  # fmt: skip


def limits_cgroup(options: object, image: str, instance: str | None = None) -> object | None:
    """The container's cgroup (sifbox.hpc.cgroups.Cgroups) of --memory, --cpus, ... in
    `options` (LaunchOptions); None without limits. An instance's is named after it (it
    outlives this process) and is in the memory, pids, cpuacct and blkio hierarchies this
    caller has too, for `instance stats`."""
    limits = getattr(options, "limits", None)
    if limits is None:
        return None
    from sifbox.hpc.cgroups import Cgroups

    if instance is not None:
        return Cgroups.create(f"sifbox-{os.getuid()}-{instance}", limits, what=f"instance `{instance}`",
                              optional=("memory", "pids", "cpuacct", "io"))  # fmt: skip
    return Cgroups.create(f"sifbox-{os.getpid()}", limits, what=f"`{image}`")


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration (`1s`, `1.5h`, `2m30s`, `300ms`); a bare 0 is 0."""
    where = f"can't use --runscript-timeout `{text}`"
    s = text.strip()
    if s in ("0", "+0"):
        return 0.0
    if s.startswith("-"):
        raise UsageError(f"{where}: a timeout can't be negative")
    s = s.removeprefix("+")
    total, i = 0.0, 0
    if not s:
        raise UsageError(
            f"{where}: not a duration", hint="write it as Go does: 30s, 1m30s, 2h, 500ms"
        )
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        number = s[i:j]
        k = j
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        unit = s[j:k]
        try:
            value = float(number)
        except ValueError:
            value = -1.0
        if value < 0 or not number.isascii() or unit not in _UNITS:
            raise UsageError(
                f"{where}: not a duration", hint="write it as Go does: 30s, 1m30s, 2h, 500ms"
            )
        total += value * _UNITS[unit]
        i = k
    return total


def format_duration(seconds: float) -> str:
    """`seconds` as Go prints a time.Duration: `1s`, `1m30s`, `1h0m0s`, `500ms`, `1.5s`."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{_trim(ns / size)}{unit}"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"
