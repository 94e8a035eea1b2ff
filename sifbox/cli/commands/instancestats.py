"""`sifbox instance stats [--json] [--no-stream] [--user U] NAME`: an instance's resource usage,
read from the cgroup it got for its limits (--memory, --cpus, ..., --apply-cgroups), as
Apptainer's:

    INSTANCE NAME    CPU USAGE    MEM USAGE / LIMIT    MEM %    BLOCK I/O      PIDS
    web              0.52%        1.52MiB / 250MiB     0.61%    0B / 4KiB      3

CPU USAGE is the share of one CPU used over the last second; a memory limit the cgroup
does not set shows the machine's memory. Without --no-stream the table is shown again every
second until Ctrl-C; --json prints one sample as runc's stats (cpu_stats, memory_stats,
pids_stats, blkio_stats).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sifbox.util.errors import SifboxError, UsageError

INTERVAL = 1.0  # seconds between the samples of CPU USAGE, as Apptainer's
COLUMNS = ("INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT", "MEM %", "BLOCK I/O", "PIDS")
_UNLIMITED = 1 << 62


def main(args: argparse.Namespace) -> int:
    from sifbox.runtime import instances
    from sifbox.util.log import log

    name = instances.check_name(args.name, "show the stats of")
    if args.user and os.getuid() != 0:
        raise UsageError(f"can't show the stats of the instances of `{args.user}`: only root can")
    paths = instances.paths_for(args.user or None)
    found = [s for s in instances.list_states(paths, name, clean=not args.user) if s.name == name]
    if not found:
        raise instances.InstanceError(f"can't show the stats of instance `{name}`: no instance of that name is running",
                                      hint="`sifbox instance list` shows the running instances")  # fmt: skip
    state = found[0]
    cgroup = _cgroup_name(state.pid, f"sifbox-{instances.proc_uid(state.pid)}-{name}")
    if not state.cgroup or cgroup is None:
        raise instances.InstanceError(f"can't show the stats of instance `{name}`: it has no cgroup of its own "
                                      "(it was started without resource limits)",
                                      hint="start it with a limit (e.g. --pids-limit 4096) or --apply-cgroups FILE")  # fmt: skip
    stream = not args.no_stream
    if args.json and stream:
        log.warning("JSON output is only available for a single sample (--no-stream)")
        stream = False
    if not args.json:
        log.info("Stats for %s instance of %s (PID=%d)", state.name, state.image, state.pid)
    previous = _sample(state.pid, cgroup, name)
    try:
        while True:
            time.sleep(INTERVAL)
            current = _sample(state.pid, cgroup, name)
            if args.json:
                sys.stdout.write(render_json(current[1]))
                return 0
            if stream and sys.stdout.isatty():
                sys.stdout.write("\x1b[2J\x1b[1;1H")
            sys.stdout.write(render_table([row(name, previous, current)]))
            sys.stdout.flush()
            if not stream:
                return 0
            previous = current
    except KeyboardInterrupt:
        return 0


def _cgroup_name(pid: int, name: str) -> str | None:
    """`name` when the instance whose holder is `pid` is in a cgroup of that name (the one
    sifbox.runtime.options.limits_cgroup made for it)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read(1 << 16)
    except OSError:
        return None
    return name if any(line.rpartition("/")[2] == name for line in text.splitlines()) else None


def _sample(pid: int, cgroup: str, name: str) -> tuple[int, dict[str, dict[str, object]]]:
    from sifbox.hpc import cgroups

    stats = cgroups.stats(pid, cgroup)
    if not stats:
        raise SifboxError(f"can't show the stats of instance `{name}`: its cgroup is gone (the instance stopped)")
    return time.monotonic_ns(), stats


def _number(stats: dict[str, dict[str, object]], *keys: str) -> int:
    value: object = stats
    for key in keys:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return value if isinstance(value, int) else 0


def _memory_limit(limit: int) -> int:
    """The cgroup's memory limit, or the machine's memory when it sets none."""
    if 0 < limit < _UNLIMITED:
        return limit
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _io(stats: dict[str, dict[str, object]]) -> tuple[int, int]:
    entries = stats.get("blkio", {}).get("ioServiceBytesRecursive", [])
    read = write = 0
    for entry in entries if isinstance(entries, list) else []:
        op, value = str(entry.get("op", "")).lower(), entry.get("value", 0)
        if op == "read":
            read += value
        elif op == "write":
            write += value
    return read, write


def row(name: str, previous: tuple[int, dict[str, dict[str, object]]],
        current: tuple[int, dict[str, dict[str, object]]]) -> tuple[str, ...]:  # fmt: skip
    """The table's row of two samples (monotonic ns, cgroups.stats) taken INTERVAL apart."""
    (t0, s0), (t1, s1) = previous, current
    cpu = _number(s1, "cpu", "usage", "total") - _number(s0, "cpu", "usage", "total")
    percent = 100.0 * max(cpu, 0) / (t1 - t0) if t1 > t0 else 0.0
    usage = _number(s1, "memory", "usage", "usage")
    limit = _memory_limit(_number(s1, "memory", "usage", "limit"))
    read, write = _io(s1)
    return (name, f"{percent:.2f}%", f"{size(usage)} / {size(limit)}",
            f"{100.0 * usage / limit if limit else 0.0:.2f}%", f"{size(read)} / {size(write)}",
            str(_number(s1, "pids", "current")))  # fmt: skip


def size(n: float) -> str:
    """Bytes in binary units, 4 significant digits: `250MiB`, `1.523KiB`, `0B` (as docker's units)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024.0
        i += 1
    return f"{n:.4g}{units[i]}"


def render_table(rows: list[tuple[str, ...]]) -> str:
    """Columns padded by 4 spaces beyond the widest cell (Go's tabwriter, as Apptainer's)."""
    table = [COLUMNS, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS) - 1)]
    return "".join("".join(c.ljust(w + 4) for c, w in zip(r, widths)) + r[-1] + "\n" for r in table)


def render_json(stats: dict[str, dict[str, object]]) -> str:
    """One sample as runc's (libcontainer's) stats document."""
    import json

    entries = stats.get("blkio", {}).get("ioServiceBytesRecursive", [])
    doc = {
        "cpu_stats": {"cpu_usage": {"total_usage": _number(stats, "cpu", "usage", "total")}},
        "memory_stats": {"usage": {"usage": _number(stats, "memory", "usage", "usage"),
                                   "limit": _number(stats, "memory", "usage", "limit")}},
        "pids_stats": {"current": _number(stats, "pids", "current"), "limit": _number(stats, "pids", "limit")},
        "blkio_stats": {"io_service_bytes_recursive": entries if isinstance(entries, list) else []},
    }  # fmt: skip
    return json.dumps(doc, indent="\t") + "\n"
