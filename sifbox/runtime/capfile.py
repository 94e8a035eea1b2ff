"""capability.json: the capabilities root grants users and groups, kept beside sifbox.conf in
Apptainer's format, so the file moves both ways::

    {"users": {"root": ["CAP_NET_BIND_SERVICE"]}, "groups": {"wheel": ["CAP_CHOWN"]}}

`sifbox capability add|drop|list|avail` edit and show it (root only); the runtime reads it
(`sifbox.runtime.caps.read_capability_file`, the one reader) for root's containers when
sifbox.conf says `root default capabilities = file`. A user's container runs in a user
namespace and has no capability outside it, whatever the file says: only root's entries
(user `root`, group `root`) take effect in sifbox.

Edits are whole-file replacements (a temporary file renamed over it, mode 0644, root's),
serialised by a lock on the directory: an edit is never lost to another one, and a reader
sees the old file or the new one.
"""

from __future__ import annotations

import os

from sifbox.runtime import caps
from sifbox.util.errors import SifboxError

#: What each capability lets a process do (`sifbox capability avail`).
DESCRIPTIONS = {
    "CAP_CHOWN": "Change the owner and group of any file.",
    "CAP_DAC_OVERRIDE": "Read, write and execute any file whatever its permission bits.",
    "CAP_DAC_READ_SEARCH": "Read any file and search any directory whatever their permission bits.",
    "CAP_FOWNER": "Act as the owner of any file (chmod, utime, ...) where the owner's rights are checked.",
    "CAP_FSETID": "Keep set-user-ID and set-group-ID bits when a file is modified, set set-group-ID of any group.",
    "CAP_KILL": "Send signals to any process.",
    "CAP_SETGID": "Change group IDs and supplementary groups at will.",
    "CAP_SETUID": "Change user IDs at will.",
    "CAP_SETPCAP": "Drop capabilities from the bounding set, change securebits.",
    "CAP_LINUX_IMMUTABLE": "Set the immutable and append-only attributes of files.",
    "CAP_NET_BIND_SERVICE": "Bind sockets to ports below 1024.",
    "CAP_NET_BROADCAST": "Broadcast and listen to multicast (unused by the kernel).",
    "CAP_NET_ADMIN": "Configure network interfaces, routes, firewalls and sockets.",
    "CAP_NET_RAW": "Use raw and packet sockets (ping, traffic capture, forged packets).",
    "CAP_IPC_LOCK": "Lock memory (mlock, mlockall, huge pages).",
    "CAP_IPC_OWNER": "Bypass the permission checks of System V IPC objects.",
    "CAP_SYS_MODULE": "Load and unload kernel modules.",
    "CAP_SYS_RAWIO": "Perform I/O port operations and access raw devices.",
    "CAP_SYS_CHROOT": "Use chroot and change mount namespaces with setns.",
    "CAP_SYS_PTRACE": "Trace and inspect any process (ptrace, process_vm_readv).",
    "CAP_SYS_PACCT": "Switch process accounting on and off.",
    "CAP_SYS_ADMIN": "Mount file systems, and many other system administration operations.",
    "CAP_SYS_BOOT": "Reboot the machine and load a new kernel.",
    "CAP_SYS_NICE": "Raise process priorities and set real-time scheduling and CPU affinity of any process.",
    "CAP_SYS_RESOURCE": "Override resource limits and quotas.",
    "CAP_SYS_TIME": "Set the system clock and the real-time clock.",
    "CAP_SYS_TTY_CONFIG": "Hang up terminals (vhangup) and configure consoles.",
    "CAP_MKNOD": "Create device nodes.",
    "CAP_LEASE": "Take leases on any file.",
    "CAP_AUDIT_WRITE": "Write records to the kernel's audit log.",
    "CAP_AUDIT_CONTROL": "Configure kernel auditing and its rules.",
    "CAP_SETFCAP": "Set file capabilities, and map user ID 0 in a new user namespace.",
    "CAP_MAC_OVERRIDE": "Override mandatory access control (Smack).",
    "CAP_MAC_ADMIN": "Configure mandatory access control (Smack).",
    "CAP_SYSLOG": "Use privileged syslog operations, see kernel addresses.",
    "CAP_WAKE_ALARM": "Set alarms that wake the system up.",
    "CAP_BLOCK_SUSPEND": "Keep the system from suspending.",
    "CAP_AUDIT_READ": "Read the audit log over multicast netlink.",
    "CAP_PERFMON": "Use performance monitoring (perf_event_open) on any process.",
    "CAP_BPF": "Load BPF programs and create BPF maps.",
    "CAP_CHECKPOINT_RESTORE": "Checkpoint and restore processes (set PIDs, read other processes' maps).",
}
assert set(DESCRIPTIONS) == set(caps.NAMES)

KINDS = ("users", "groups")


def path_for(conf_path: str) -> str:
    """capability.json beside the configuration file `conf_path`."""
    return os.path.join(os.path.dirname(os.path.abspath(conf_path)), caps.CAPABILITY_FILE)


def names(text: str) -> list[str]:
    """`CAP_NET_RAW,chown` or `all` -> capability names in kernel order; an unknown name is
    refused (it would grant nothing, silently)."""
    found = caps.parse(text)
    if not found:
        from sifbox.util.errors import UsageError

        raise UsageError(f"can't use capabilities `{text}`: no capability named",
                         hint="names look like CAP_NET_RAW; `all` means every one")  # fmt: skip
    return caps.names(found)


def describe(selected: list[str]) -> str:
    """Apptainer's `capability avail` text for the capabilities `selected` (all when empty)."""
    return "".join(f"{name + ':':<22} {DESCRIPTIONS[name]}\n\n" for name in selected or caps.NAMES)


def listing(doc: dict[str, dict[str, list[str]]], *, user: str | None = None, group: str | None = None) -> str:
    """Apptainer's `capability list` lines: `NAME [user]: CAP_A,CAP_B` (every entry when
    neither `user` nor `group` is given)."""
    out = []
    everything = user is None and group is None
    for kind, label, only in (("users", "user", user), ("groups", "group", group)):
        for name in sorted(doc[kind]):
            if (everything or name == only) and doc[kind][name]:
                out.append(f"{name} [{label}]: {','.join(doc[kind][name])}\n")
    return "".join(out)


def edit(conf_dir: str, *, add: bool, kind: str, name: str, wanted: list[str], warn) -> None:  # type: ignore[no-untyped-def]
    """Add `wanted` to (or drop them from) the capabilities of user or group `name` (`kind`
    "users" or "groups") in capability.json of `conf_dir`."""
    import fcntl
    import json

    from sifbox.util.atomic import write_file

    path = os.path.join(conf_dir, caps.CAPABILITY_FILE)
    label = kind[:-1]
    try:
        lock = os.open(conf_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise SifboxError(f"can't edit `{path}`: {err.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = caps.read_capability_file(conf_dir)
        have = doc[kind].get(name)
        every = len(wanted) == len(caps.NAMES)  # `all`: no word about each one it already is (or is not)
        if every:
            warn = _silent
        if add:
            have = list(have or [])
            for cap in wanted:
                if cap in have:
                    warn(f"Won't add capability '{cap}', already assigned to {label} {name}")  # Apptainer's
                else:
                    have.append(cap)
        else:
            if not have:
                raise SifboxError(f"can't drop capabilities of {label} `{name}`: it has none in `{path}`")
            for cap in wanted:
                if cap in have:
                    have.remove(cap)
                else:
                    warn(f"Won't drop capability '{cap}', not assigned to {label} {name}")  # Apptainer's
        if have:
            doc[kind][name] = sorted(have, key=caps.NUMBERS.__getitem__)
        else:
            doc[kind].pop(name, None)
        ordered = {k: {n: doc[k][n] for n in sorted(doc[k])} for k in KINDS}
        try:
            write_file(path, (json.dumps(ordered, indent=4) + "\n").encode(), 0o644)
        except OSError as err:
            raise SifboxError(f"can't write `{path}`: {err.strerror}") from None
    finally:
        os.close(lock)


def _silent(message: str) -> None:
    pass
