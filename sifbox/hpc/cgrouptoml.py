"""`--apply-cgroups FILE`: Apptainer's cgroups TOML file, an OCI LinuxResources written as TOML,
read into sifbox.hpc.cgroups.Limits.

    [memory]                      [cpu]                         [pids]
    limit = 536870912             shares = 512                  limit = 100
    reservation = 268435456       quota = 50000
    swap = 1073741824             period = 100000               [blockIO]
    disableOOMKiller = false      cpus = "0-1"                  weight = 500
                                  mems = "0"

The keys are those of Apptainer's cgroups.toml (its Go struct's TOML tags). Keys that Apptainer
knows but sifbox does not apply (devices, hugepageLimits, network, rdma, unified, memory.kernel,
cpu.realtimeRuntime, blockIO's per-device entries...) are refused by name, never ignored: a
site's limit silently dropped is worse than a refusal. Any other key, a value of the wrong type
or out of range is a usage error naming it.

The file is read with care: a regular file (a FIFO, /dev/zero or a directory is refused without
reading it), at most MAX_SIZE bytes, UTF-8.
"""

from __future__ import annotations

import os
import stat

from sifbox.hpc.cgroups import BLKIO_WEIGHTS, SHARES, Limits, parse_cpuset
from sifbox.util.errors import NotAvailableError, UsageError

MAX_SIZE = 64 << 10

#: section: {key: kind}; kind "int", "uint", "bool", "str", "list" (per-device entries) or "" (known,
#: not applied by sifbox)
_SCHEMA: dict[str, dict[str, str]] = {
    "memory": {"limit": "int", "reservation": "int", "swap": "int", "disableOOMKiller": "bool",
               "kernel": "", "kernelTCP": "", "swappiness": ""},
    "cpu": {"shares": "uint", "quota": "int", "period": "uint", "cpus": "str", "mems": "str",
            "realtimeRuntime": "", "realtimePeriod": ""},
    "pids": {"limit": "int"},
    "blockIO": {"weight": "uint", "leafWeight": "", "weightDevice": "", "throttleReadBpsDevice": "",
                "throttleWriteBpsDevice": "", "throttleReadIOPSDevice": "", "throttleWriteIOPSDevice": ""},
}  # fmt: skip
_NOT_APPLIED = ("devices", "hugepageLimits", "network", "rdma", "unified")
_MAX = (1 << 63) - 1


def load(path: str, cpu_count: int | None = None) -> Limits | None:
    """The limits of cgroups TOML file `path` (None: it sets none); `cpu_count` bounds cpu.cpus."""
    return parse(read(path), path, cpu_count)


def read(path: str) -> str:
    where = f"can't use --apply-cgroups `{path}`"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        raise UsageError(f"{where}: {err.strerror.lower() if err.strerror else err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{where}: not a regular file")
        if st.st_size > MAX_SIZE:
            raise UsageError(f"{where}: larger than {MAX_SIZE >> 10} KiB", hint="a cgroups file is a few lines")
        data = b""
        while len(data) <= MAX_SIZE:
            chunk = os.read(fd, MAX_SIZE + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_SIZE:
            raise UsageError(f"{where}: larger than {MAX_SIZE >> 10} KiB", hint="a cgroups file is a few lines")
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text") from None


def parse(text: str, path: str = "-", cpu_count: int | None = None) -> Limits | None:
    """The limits of the TOML `text` (from file `path`, for messages)."""
    import tomllib

    where = f"can't use --apply-cgroups `{path}`"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{where}: not TOML: {err}") from None
    values: dict[str, dict[str, object]] = {}
    for section, body in doc.items():
        if section in _NOT_APPLIED:
            raise NotAvailableError(f"{where}: sifbox does not apply `{section}`",
                                    hint="sifbox applies memory, cpu, pids and blockIO.weight")  # fmt: skip
        if section not in _SCHEMA:
            raise UsageError(f"{where}: unknown key `{section[:64]}`",
                             hint="the sections are memory, cpu, pids, blockIO (as Apptainer's cgroups.toml)")  # fmt: skip
        if not isinstance(body, dict):
            raise UsageError(f"{where}: `{section}` is not a table", hint=f"write it as [{section}]")
        values[section] = {}
        for key, value in body.items():
            kind = _SCHEMA[section].get(key)
            name = f"{section}.{key[:64]}"
            if kind is None:
                raise UsageError(f"{where}: unknown key `{name}`",
                                 hint=f"the keys of [{section}] are {', '.join(_SCHEMA[section])}")  # fmt: skip
            if not kind:
                raise NotAvailableError(f"{where}: sifbox does not apply `{name}`",
                                        hint="sifbox applies memory, cpu, pids and blockIO.weight")  # fmt: skip
            values[section][key] = _check(value, kind, name, where)
    return _limits(values, where, cpu_count)


def _check(value: object, kind: str, name: str, where: str) -> object:
    if kind == "bool":
        if type(value) is not bool:
            raise UsageError(f"{where}: `{name}` must be true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise UsageError(f"{where}: `{name}` must be a string", hint='e.g. cpus = "0-3"')
        return value
    if type(value) is not int:
        raise UsageError(f"{where}: `{name}` must be an integer")
    if not -_MAX <= value <= _MAX:
        raise UsageError(f"{where}: `{name}` is out of range")
    return value


def _limits(values: dict[str, dict[str, object]], where: str, cpu_count: int | None) -> Limits | None:
    memory, cpu = values.get("memory", {}), values.get("cpu", {})
    pids, blkio = values.get("pids", {}), values.get("blockIO", {})

    def positive(d: dict[str, object], key: str, section: str, bounds: tuple[int, int] = (1, _MAX)) -> int | None:
        v = d.get(key)
        if v is None:
            return None
        assert isinstance(v, int)
        if not bounds[0] <= v <= bounds[1]:
            span = "more than 0" if bounds == (1, _MAX) else f"from {bounds[0]} to {bounds[1]}"
            raise UsageError(f"{where}: `{section}.{key}` is {v}: it must be {span}")
        return v

    limit = positive(memory, "limit", "memory")
    swap = memory.get("swap")
    if swap is not None and swap != -1:
        swap = positive(memory, "swap", "memory")
        if limit is None:
            raise UsageError(f"{where}: `memory.swap` needs `memory.limit`")
        if swap < limit:  # type: ignore[operator]
            raise UsageError(f"{where}: `memory.swap` is less than `memory.limit`",
                             hint="swap is memory and swap together, as --memory-swap")  # fmt: skip
    elif swap == -1 and limit is None:
        raise UsageError(f"{where}: `memory.swap` needs `memory.limit`")
    cpus = None
    quota = positive(cpu, "quota", "cpu")
    period = positive(cpu, "period", "cpu", (1000, 1000000))
    if quota is not None:
        cpus = quota / (period or 100000)
        if not 0.01 <= cpus <= 1024:
            raise UsageError(f"{where}: `cpu.quota` / `cpu.period` is {cpus:g} CPUs: out of range (0.01 to 1024)")
    elif period is not None:
        raise UsageError(f"{where}: `cpu.period` needs `cpu.quota`")
    sets = {}
    for key, count in (("cpus", cpu_count), ("mems", None)):
        text = cpu.get(key)
        if isinstance(text, str) and text.strip():
            try:
                sets[key] = parse_cpuset(text, f"`cpu.{key}`", count)
            except UsageError as err:
                raise UsageError(f"{where}: {err.message.removeprefix('can' + chr(39) + 't use ')}",
                                 hint=err.hint) from None  # fmt: skip
    limits = Limits(
        limit, swap, cpus, positive(pids, "limit", "pids"),  # type: ignore[arg-type]
        cpu_shares=positive(cpu, "shares", "cpu", SHARES), cpuset_cpus=sets.get("cpus"), cpuset_mems=sets.get("mems"),
        memory_reservation=positive(memory, "reservation", "memory"),
        oom_kill_disable=True if memory.get("disableOOMKiller") is True else None,
        blkio_weight=positive(blkio, "weight", "blockIO", BLKIO_WEIGHTS),
    )  # fmt: skip
    return limits if limits.controllers() else None
