"""Linux capabilities: their names, and the set a root container keeps (pure).

Root's containers start from `root default capabilities` of sifbox.conf:

    default  a bounded set (below): enough for apt-get/dnf into a sandbox or
             overlay, chown, binding ports below 1024; the container is
             contained (see sifbox.runtime.plan.containment)
    file     the capabilities capability.json grants root (`sifbox capability`)
    no       none
    full     all of them: Apptainer's root container, which is NOT contained

then `--keep-privs` (all), `--no-privs` (none), `--add-caps`, `--drop-caps`
change it, as Apptainer's options do. Users get no capabilities outside their
user namespace: for them the options are refused rather than ignored.

The bounded set is Docker's default set without CAP_MKNOD (no device cgroup
keeps a device node made in a host directory from being used), with
CAP_NET_RAW only in a network namespace of the container's own (on the
host's network it would let a container sniff and forge the host's traffic).
A build's %post gets Docker's whole default set: its writable root is the
build's private scratch directory.
"""

from __future__ import annotations

NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
NUMBERS = {name: n for n, name in enumerate(NAMES)}
ALL = frozenset(NUMBERS.values())

#: Docker's default set (moby's oci/caps/defaults.go).
DOCKER = frozenset(NUMBERS[n] for n in (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
))  # fmt: skip
#: sifbox's bounded default for root containers (without NET_RAW: see `bounded`).
BOUNDED = DOCKER - {NUMBERS["CAP_MKNOD"], NUMBERS["CAP_NET_RAW"]}
#: What a build's %post keeps as root.
BUILD = DOCKER
MODES = ("default", "full", "file", "no")


def parse(text: str) -> set[int]:
    """`CAP_NET_RAW,sys_admin` or `all` -> capability numbers."""
    from sifbox.util.errors import UsageError

    out: set[int] = set()
    for item in filter(None, (p.strip() for p in text.split(","))):
        name = item.upper()
        if name == "ALL":
            return set(ALL)
        if not name.startswith("CAP_"):
            name = "CAP_" + name
        if name not in NUMBERS:
            raise UsageError(f"can't use capability `{item}`: unknown capability",
                             hint="names look like CAP_NET_RAW; `all` means every one")  # fmt: skip
        out.add(NUMBERS[name])
    return out


def bounded(*, own_net: bool) -> frozenset[int]:
    """The bounded default set; CAP_NET_RAW only in a network namespace of the container's own."""
    return BOUNDED | ({NUMBERS["CAP_NET_RAW"]} if own_net else set())


def root_set(mode: str, *, keep_privs: bool, no_privs: bool, add: set[int], drop: set[int],
             own_net: bool, from_file: frozenset[int] = frozenset()) -> frozenset[int]:  # fmt: skip
    """The capabilities root's payload keeps (--no-privs: none at all)."""
    if no_privs:
        return frozenset()
    base: frozenset[int]
    if keep_privs or mode == "full":
        base = ALL
    elif mode == "file":
        base = from_file
    elif mode == "no":
        base = frozenset()
    else:
        base = bounded(own_net=own_net)
    return frozenset((base | add) - drop)


def kept(*, keep_privs: bool, no_privs: bool, add: set[int], drop: set[int]) -> set[int]:
    """The capabilities root's payload keeps with `root default capabilities = no`
    (kept for callers that know no sifbox.conf)."""
    return set(root_set("no", keep_privs=keep_privs, no_privs=no_privs, add=add, drop=drop, own_net=False))


def names(caps: frozenset[int] | set[int]) -> list[str]:
    return [NAMES[n] for n in sorted(caps)]


CAPABILITY_FILE = "capability.json"


def parse_capability_file(text: str, where: str) -> dict[str, dict[str, list[str]]]:
    """capability.json as Apptainer keeps it: {"users": {NAME: [CAP...]}, "groups": {NAME: [CAP...]}}."""
    import json

    from sifbox.util.errors import SifboxError

    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError as err:
        raise SifboxError(f"can't read `{where}`: not JSON: {err}") from None
    out: dict[str, dict[str, list[str]]] = {"users": {}, "groups": {}}
    if not isinstance(doc, dict):
        raise SifboxError(f"can't read `{where}`: expected an object with `users` and `groups`")
    for key in ("users", "groups"):
        section = doc.get(key) or {}
        if not isinstance(section, dict):
            raise SifboxError(f"can't read `{where}`: `{key}` is not an object")
        for name, items in section.items():
            if not isinstance(items, list) or not all(isinstance(i, str) and i in NUMBERS for i in items):
                raise SifboxError(f"can't read `{where}`: `{key}.{name}` is not a list of capability names")
            out[key][str(name)] = list(items)
    return out


def read_capability_file(conf_dir: str) -> dict[str, dict[str, list[str]]]:
    """capability.json beside sifbox.conf (empty when there is none), checked as root reads
    what it trusts: owned by root, writable by no one else."""
    import os

    from sifbox.util import trusted
    from sifbox.util.errors import SifboxError

    path = os.path.join(conf_dir, CAPABILITY_FILE)
    try:
        with open(path, "rb") as f:
            reason = trusted.untrusted_reason(f.fileno())
            if reason is not None:
                raise SifboxError(f"can't read `{path}`: {reason}", hint=trusted.HINT)
            text = f.read(1 << 20).decode("utf-8", "replace")
    except FileNotFoundError:
        return {"users": {}, "groups": {}}
    except OSError as err:
        raise SifboxError(f"can't read `{path}`: {err.strerror}") from None
    return parse_capability_file(text, path)


def from_capability_file(conf_dir: str, user: str = "root", groups: tuple[str, ...] = ("root",)) -> frozenset[int]:
    """The capabilities capability.json (beside sifbox.conf) grants `user` and `groups`."""
    doc = read_capability_file(conf_dir)
    found = set(doc["users"].get(user, []))
    for g in groups:
        found.update(doc["groups"].get(g, []))
    return frozenset(NUMBERS[n] for n in found)
