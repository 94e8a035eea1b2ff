"""Linux capability names and the set a container keeps (pure).

Root's payload runs with no capabilities unless it asks: --keep-privs keeps
them all (minus --drop-caps), --add-caps keeps only those named. Users
without root get none (user namespaces drop them at exec), so for them the
options are refused rather than silently ignored.
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


def parse(text: str) -> set[int]:
    """`CAP_NET_RAW,sys_admin` or `all` -> capability numbers."""
    from sifbox.util.errors import UsageError

    out: set[int] = set()
    for item in filter(None, (p.strip() for p in text.split(","))):
        name = item.upper()
        if name == "ALL":
            return set(NUMBERS.values())
        if not name.startswith("CAP_"):
            name = "CAP_" + name
        if name not in NUMBERS:
            raise UsageError(f"can't use capability `{item}`: unknown capability",
                             hint="names look like CAP_NET_RAW; `all` means every one")  # fmt: skip
        out.add(NUMBERS[name])
    return out


def kept(*, keep_privs: bool, no_privs: bool, add: set[int], drop: set[int]) -> set[int]:
    """The capabilities root's payload keeps."""
    if no_privs:
        return set()
    base = set(NUMBERS.values()) if keep_privs else set()
    return (base | add) - drop
