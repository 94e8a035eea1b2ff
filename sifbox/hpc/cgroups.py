"""Resource limits through cgroups: `--memory`, `--memory-swap`, `--memory-reservation`,
`--oom-kill-disable`, `--cpus`, `--cpu-shares`, `--cpuset-cpus`, `--cpuset-mems`,
`--blkio-weight`, `--pids-limit` (Apptainer's names; `--apply-cgroups FILE` is
sifbox.hpc.cgrouptoml's) and an OCI bundle's `linux.resources`.

What each limit writes, as runc writes it:

    limit                v1                           v2
    --memory             memory.limit_in_bytes        memory.max
    --memory-swap        memory.memsw.limit_in_bytes  memory.swap.max (swap alone: the difference)
    --memory-reservation memory.soft_limit_in_bytes   memory.low
    --oom-kill-disable   memory.oom_control = 1       nothing: v2 has no switch (a warning)
    --cpus               cpu.cfs_quota_us/period_us   cpu.max
    --cpu-shares S       cpu.shares = S               cpu.weight = 1 + (S - 2) * 9999 // 262142
    --cpuset-cpus/-mems  cpuset.cpus, cpuset.mems     cpuset.cpus, cpuset.mems
    --blkio-weight W     blkio.bfq.weight or          io.bfq.weight = W, or
                         blkio.weight = W             io.weight = 1 + (W - 10) * 9999 // 990
    --pids-limit         pids.max                     pids.max

One cgroup per container, `sifbox-PID`, made below the caller's own cgroup:

  v2 (unified)  the controllers (memory, cpu, pids) must be available in the caller's cgroup
                (`cgroup.controllers`) and enabled for its children (`cgroup.subtree_control`):
                root's cgroups, or a subtree delegated to the user (chown of the directory and
                of its cgroup.procs, cgroup.subtree_control, as systemd's Delegate=yes does;
                without systemd, an admin does it once per user: `mkdir /sys/fs/cgroup/U &&
                echo +memory +cpu +pids > /sys/fs/cgroup/cgroup.subtree_control && chown -R U
                /sys/fs/cgroup/U`).
  v1 (legacy, and the v1 half of a v1/v2 hybrid)  one directory per controller hierarchy;
                root only (v1 has no safe delegation).

The v2 controllers are used when the caller's cgroup has them; else v1 for root; else
the limits are refused with the reason. The container's process joins the cgroup before
it becomes the container (`join`, in the sandbox's process before pivot_root, through
descriptors opened here); `remove` takes the caller out of it if needed and removes it,
also through descriptors, so it works after pivot_root.
"""

from __future__ import annotations

import errno
import os

from sifbox.util.errors import ExitStatus, SifboxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

CGROUP_ROOT = "/sys/fs/cgroup"
CPU_PERIOD = 100000  # microseconds, as runc and Docker
_SIGKILL = 9
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


if TYPE_CHECKING:
    from typing import NamedTuple

    class _LimitsBase(NamedTuple):
        memory: int | None = None  # bytes
        memory_swap: int | None = None  # bytes of memory + swap; -1: unlimited swap
        cpus: float | None = None
        pids: int | None = None
        cpu_shares: int | None = None
        cpuset_cpus: str | None = None  # a CPU list: 0-3,5
        cpuset_mems: str | None = None  # a memory node list
        memory_reservation: int | None = None  # bytes
        oom_kill_disable: bool | None = None
        blkio_weight: int | None = None  # 10 to 1000

else:
    from sifbox.util.records import record

    _LimitsBase = record("Limits", "memory memory_swap cpus pids cpu_shares cpuset_cpus cpuset_mems "
                         "memory_reservation oom_kill_disable blkio_weight", defaults=(None,) * 10)  # fmt: skip


class Limits(_LimitsBase):
    __slots__ = ()

    def controllers(self) -> list[str]:
        """The controllers the limits need (`io` is v1's `blkio`)."""
        wanted = (("memory", (self.memory, self.memory_reservation, self.oom_kill_disable)),
                  ("cpu", (self.cpus, self.cpu_shares)), ("cpuset", (self.cpuset_cpus, self.cpuset_mems)),
                  ("pids", (self.pids,)), ("io", (self.blkio_weight,)))  # fmt: skip
        return [c for c, values in wanted if any(v is not None for v in values)]


#: The v1 hierarchy of a controller whose v2 name differs.
V1_NAMES = {"io": "blkio"}


class CgroupError(SifboxError):
    reference = "cgroups"
    exit_status = ExitStatus.CANNOT_LAUNCH


def parse_size(text: str, what: str) -> int:
    """Bytes of `512m`, `1g`, `1048576`, `2GiB` (units of 1024, as Docker and Apptainer)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b") if text.strip().lower() not in ("", "b") else ""
    number, unit = (t[:-1], t[-1]) if t and t[-1] in _UNITS else (t, "")
    try:
        value = int(float(number) * _UNITS[unit])
    except ValueError:
        raise UsageError(f"can't use {what} `{text}`: not a size", hint="e.g. 512m, 2g, 1073741824") from None
    if value <= 0:
        raise UsageError(f"can't use {what} `{text}`: it must be more than 0")
    return value


def from_options(memory: str | None = None, memory_swap: str | None = None, cpus: str | None = None,
                 pids_limit: str | None = None, *, cpu_shares: str | None = None, cpuset_cpus: str | None = None,
                 cpuset_mems: str | None = None, memory_reservation: str | None = None,
                 oom_kill_disable: bool = False, blkio_weight: str | None = None,
                 cpu_count: int | None = None) -> Limits | None:  # fmt: skip
    """The limits of the command line's options (None: no limit asked for); `cpu_count`:
    the CPUs --cpuset-cpus may name (0 to cpu_count - 1), unchecked when None. A --cpu-shares or
    --blkio-weight of 0 asks for none, as Apptainer's."""
    cpu_shares, blkio_weight = (None if v is not None and v.strip() == "0" else v for v in (cpu_shares, blkio_weight))
    if not any((memory, memory_swap, cpus, pids_limit, cpu_shares, cpuset_cpus, cpuset_mems, memory_reservation,
                oom_kill_disable, blkio_weight)):  # fmt: skip
        return None
    mem = parse_size(memory, "--memory") if memory else None
    swap = None
    if memory_swap:
        swap = -1 if memory_swap.strip() == "-1" else parse_size(memory_swap, "--memory-swap")
        if mem is None:
            raise UsageError("can't use --memory-swap without --memory")
        if swap != -1 and swap < mem:
            raise UsageError(f"can't use --memory-swap `{memory_swap}`: less than --memory `{memory}`",
                             hint="--memory-swap is memory and swap together")  # fmt: skip
    cpu = None
    if cpus:
        try:
            cpu = float(cpus)
        except ValueError:
            raise UsageError(f"can't use --cpus `{cpus}`: not a number", hint="e.g. 1.5") from None
        if not 0.01 <= cpu <= 1024:
            raise UsageError(f"can't use --cpus `{cpus}`: out of range (0.01 to 1024)")
    pids = None
    if pids_limit:
        if not pids_limit.strip().isdigit() or int(pids_limit) < 1:
            raise UsageError(f"can't use --pids-limit `{pids_limit}`: not a positive number")
        pids = int(pids_limit)
    return Limits(
        mem, swap, cpu, pids,
        cpu_shares=_integer(cpu_shares, "--cpu-shares", SHARES) if cpu_shares else None,
        cpuset_cpus=parse_cpuset(cpuset_cpus, "--cpuset-cpus", cpu_count) if cpuset_cpus else None,
        cpuset_mems=parse_cpuset(cpuset_mems, "--cpuset-mems") if cpuset_mems else None,
        memory_reservation=parse_size(memory_reservation, "--memory-reservation") if memory_reservation else None,
        oom_kill_disable=True if oom_kill_disable else None,
        blkio_weight=_integer(blkio_weight, "--blkio-weight", BLKIO_WEIGHTS) if blkio_weight else None,
    )  # fmt: skip


SHARES = (2, 262144)  # the kernel's cpu.shares range
BLKIO_WEIGHTS = (10, 1000)  # blkio.weight's, and Apptainer's
MAX_CPUSET = 8192  # CPU or memory node numbers; more is no list of this machine's


def _integer(text: str, what: str, bounds: tuple[int, int]) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or len(t) > 12:
        raise UsageError(f"can't use {what} `{text}`: not a number")
    if not bounds[0] <= int(t) <= bounds[1]:
        raise UsageError(f"can't use {what} `{text}`: out of range ({bounds[0]} to {bounds[1]})")
    return int(t)


def parse_cpuset(text: str, what: str, count: int | None = None) -> str:
    """`text` checked as a cpuset list (`0-3,5`), normalised; with `count`, every number must
    be below it."""
    items = text.strip().split(",")
    highest = -1
    for item in items:
        lo, sep, hi = item.strip().partition("-")
        if not all(p.isascii() and p.isdigit() and len(p) <= 5 for p in ((lo, hi) if sep else (lo,))):
            raise UsageError(f"can't use {what} `{text}`: not a list of numbers and ranges", hint="e.g. 0-3,6")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or last >= MAX_CPUSET:
            raise UsageError(f"can't use {what} `{text}`: `{item.strip()}` is not a range")
        highest = max(highest, last)
    if count is not None and highest >= count:
        raise UsageError(f"can't use {what} `{text}`: CPU {highest} does not exist here",
                         hint=f"this machine's CPUs are 0 to {count - 1}")  # fmt: skip
    return ",".join(i.strip() for i in items)


def from_oci(resources: object) -> Limits | None:
    """The limits of an OCI bundle's `linux.resources` (memory, cpu, cpuset, pids, blockIO
    weight), or None; values out of the kernel's ranges are left out, as absent."""
    if not isinstance(resources, dict):
        return None

    def section(name: str) -> dict[str, object]:
        value = resources.get(name)  # type: ignore[union-attr]
        return value if isinstance(value, dict) else {}

    def positive(d: dict[str, object], key: str, bounds: tuple[int, int] = (1, 1 << 62)) -> int | None:
        v = d.get(key)
        return v if type(v) is int and bounds[0] <= v <= bounds[1] else None

    def cpuset(d: dict[str, object], key: str) -> str | None:
        v = d.get(key)
        if not isinstance(v, str) or not v.strip():
            return None
        try:
            return parse_cpuset(v, key)
        except UsageError:
            return None

    memory, cpu, pids, blkio = section("memory"), section("cpu"), section("pids"), section("blockIO")
    mem = positive(memory, "limit")
    swap = memory.get("swap") if type(memory.get("swap")) is int and mem is not None else None
    if swap is not None and swap != -1 and swap < mem:  # type: ignore[operator]
        swap = None
    cpus = None
    quota = positive(cpu, "quota")
    if quota is not None:
        cpus = quota / (positive(cpu, "period") or CPU_PERIOD)
    limits = Limits(mem, swap, cpus, positive(pids, "limit"),  # type: ignore[arg-type]
                    cpu_shares=positive(cpu, "shares", SHARES), cpuset_cpus=cpuset(cpu, "cpus"),
                    cpuset_mems=cpuset(cpu, "mems"), memory_reservation=positive(memory, "reservation"),
                    oom_kill_disable=True if memory.get("disableOOMKiller") is True else None,
                    blkio_weight=positive(blkio, "weight", BLKIO_WEIGHTS))  # fmt: skip
    return limits if limits.controllers() else None


def own_paths(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the v2 (unified) path under ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        for name in names.split(",") if names else [""]:
            paths[name.removeprefix("name=")] = path
    return paths


def files(limits: Limits, version: int, exists: Callable[[str], bool] | None = None) -> dict[str, list[tuple[str, str]]]:
    """The files to write, per controller, for `limits` (cgroup `version` 1 or 2); `exists`
    says whether a file is in the cgroup (BFQ's weight files, used when there)."""
    has = exists or (lambda name: False)
    out: dict[str, list[tuple[str, str]]] = {}
    mem: list[tuple[str, str]] = []
    if limits.memory is not None:
        if version == 2:
            mem.append(("memory.max", str(limits.memory)))
            if limits.memory_swap is not None:
                swap = "max" if limits.memory_swap == -1 else str(limits.memory_swap - limits.memory)
                mem.append(("memory.swap.max", swap))
        else:
            mem.append(("memory.limit_in_bytes", str(limits.memory)))
            if limits.memory_swap is not None:
                mem.append(("memory.memsw.limit_in_bytes", str(limits.memory_swap)))
    if limits.memory_reservation is not None:
        mem.append(("memory.low" if version == 2 else "memory.soft_limit_in_bytes", str(limits.memory_reservation)))
    if limits.oom_kill_disable and version == 1:
        mem.append(("memory.oom_control", "1"))
    if mem:
        out["memory"] = mem
    cpu = []
    if limits.cpus is not None:
        quota = str(max(1000, int(limits.cpus * CPU_PERIOD)))
        cpu += ([("cpu.max", f"{quota} {CPU_PERIOD}")] if version == 2 else
                [("cpu.cfs_period_us", str(CPU_PERIOD)), ("cpu.cfs_quota_us", quota)])  # fmt: skip
    if limits.cpu_shares is not None:
        cpu.append(("cpu.weight", str(shares_to_weight(limits.cpu_shares))) if version == 2 else
                   ("cpu.shares", str(limits.cpu_shares)))  # fmt: skip
    if cpu:
        out["cpu"] = cpu
    cpuset = [(f, v) for f, v in (("cpuset.cpus", limits.cpuset_cpus), ("cpuset.mems", limits.cpuset_mems)) if v]
    if cpuset:
        out["cpuset"] = cpuset  # type: ignore[assignment]
    if limits.pids is not None:
        out["pids"] = [("pids.max", str(limits.pids))]
    if limits.blkio_weight is not None:
        prefix = "io" if version == 2 else "blkio"
        if has(f"{prefix}.bfq.weight"):
            out["io"] = [(f"{prefix}.bfq.weight", str(limits.blkio_weight))]
        elif version == 2:
            out["io"] = [("io.weight", f"default {blkio_to_io_weight(limits.blkio_weight)}")]
        else:
            out["io"] = [("blkio.weight", str(limits.blkio_weight))]
    return out


def ignored(limits: Limits, version: int) -> list[str]:
    """What `limits` asks that cgroups `version` can't do (said as warnings, as runc ignores it)."""
    if limits.oom_kill_disable and version == 2:
        return [("--oom-kill-disable has no effect with cgroups v2: the kernel has no switch to disable "
                 "a cgroup's OOM killer")]
    return []


def shares_to_weight(shares: int) -> int:
    """cpu.weight (1 to 10000) of cpu.shares (2 to 262144), as runc converts them."""
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """io.weight (1 to 10000) of blkio.weight (10 to 1000), as runc converts them."""
    return 1 + ((weight - 10) * 9999) // 990


class Cgroups:
    """The container's cgroup directories, held by descriptors: (parent fd, name, procs fd)."""

    __slots__ = ("dirs", "version")

    def __init__(self, version: int, dirs: list[tuple[int, str, int]]) -> None:
        self.version, self.dirs = version, dirs

    @classmethod
    def create(cls, name: str, limits: Limits, *, root: str = CGROUP_ROOT, proc_self: str | None = None,
               what: str = "the container", extra: tuple[str, ...] = (),
               optional: tuple[str, ...] = ()) -> Cgroups:  # fmt: skip
        """Make cgroup `name` below the caller's, with `limits` written; `extra`: more
        controllers it must be in (the freezer, for `sifbox oci pause`); `optional`: more it is
        put in where the chosen hierarchy has them (an instance's, for `instance stats`)."""
        if proc_self is None:
            with open("/proc/self/cgroup") as f:
                proc_self = f.read()
        own = own_paths(proc_self)
        wanted = limits.controllers() + [c for c in extra if c not in limits.controllers()]
        version, places, reason = _choose(root, own, wanted, optional=optional)
        if version == 0:
            raise CgroupError(f"can't limit the resources of {what}: {reason}",
                              hint="README's `Resource limits` says how a site delegates cgroups v2 to users")  # fmt: skip
        if ignored(limits, version):
            from sifbox.util.log import log

            for message in ignored(limits, version):
                log.warning(message)
        made = cls(version, [])
        parents: dict[str, int] = {}  # v1 hierarchies mounted together (cpu,cpuacct): one directory
        try:
            for controller, parent in places.items():
                real = os.path.realpath(parent)
                if real in parents:
                    pfd = parents[real]
                else:
                    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        os.mkdir(name, 0o755, dir_fd=pfd)
                    except OSError:
                        os.close(pfd)
                        raise
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    if real not in parents:
                        parents[real] = pfd
                        procs = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=dfd)
                        made.dirs.append((pfd, name, procs))
                    to_write = files(limits, version, lambda f, d=dfd: _exists(d, f))
                    if version == 1 and controller == "cpuset":
                        _inherit_cpuset(pfd, dfd, to_write.get("cpuset", []), what)
                    entries = to_write.get(controller, []) if version == 1 else [
                        kv for c in wanted for kv in to_write.get(c, [])]  # fmt: skip
                    for fname, value in entries:
                        _write(dfd, fname, value, what)
                finally:
                    os.close(dfd)
        except OSError as err:
            made.remove()
            raise CgroupError(f"can't limit the resources of {what}: can't make its cgroup: {err.strerror}") from None
        except CgroupError:
            made.remove()
            raise
        return made

    def paths(self) -> list[str]:
        """The directories' paths (for a record that outlives this process: `remove_left`)."""
        found = []
        for pfd, name, _ in self.dirs:
            try:
                found.append(os.path.join(os.readlink(f"/proc/self/fd/{pfd}"), name))
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL what is left in the cgroup (a container that ended: its daemons). Runs in
        an instance's watcher after pivot_root: no import that needs a file (`signal`, the
        Python module, would be one)."""
        for pfd, name, _ in self.dirs:
            try:
                fd = os.open(f"{name}/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC, dir_fd=pfd)
            except OSError:
                continue
            try:
                pids = os.read(fd, 1 << 20).split()
            finally:
                os.close(fd)
            for pid in pids:
                try:
                    os.kill(int(pid), _SIGKILL)
                except (OSError, ValueError):
                    pass

    def join(self) -> None:
        """Move the calling process into the cgroup (its children follow)."""
        for _, _, procs in self.dirs:
            os.write(procs, b"0")

    def warm(self) -> None:
        """Move the caller into its own cgroup again (no change), in a thread of its own,
        started now. The kernel takes its lock for migrations, whose first taking after a
        quiet spell waits for an RCU grace period (8 to 20 ms here) while holding the cgroup
        mutex; migrations within about one grace period of it don't wait. The caller goes
        on making the container meanwhile (nothing that reads or writes cgroup files: that
        would wait too), and the container's `join` comes too soon to wait again."""
        import _thread

        if not self.dirs:
            return
        try:
            fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.dirs[0][0])
        except OSError:
            return

        running = _thread.allocate_lock()
        running.acquire()

        def move_self() -> None:
            running.release()
            try:
                os.write(fd, b"0")
            except OSError:
                pass
            finally:
                os.close(fd)

        try:
            _thread.start_new_thread(move_self, ())
        except RuntimeError:  # no thread to be had (a process limit): the join waits instead
            os.close(fd)
            return
        running.acquire()  # the thread has the interpreter's lock now, not after 5 ms of this one's

    def remove(self, joined: bool = True) -> None:
        """Take the caller out (if it may have joined) and remove the directories; the
        container's processes must have ended. (`joined=False`: a caller that never joined
        skips that write, a cgroup migration that may wait for an RCU grace period.)"""
        for pfd, name, procs in self.dirs:
            os.close(procs)
            try:
                if joined:
                    with os.fdopen(os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=pfd), "wb", 0) as f:
                        f.write(b"0")  # the caller, back in its own cgroup (a no-op if it never left)
            except OSError:
                pass
            for _ in range(100):
                try:
                    os.rmdir(name, dir_fd=pfd)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: a process is still leaving
                    import time

                    time.sleep(0.01)
            os.close(pfd)
        self.dirs = []


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd)
    except OSError:
        return False
    return True


def _inherit_cpuset(pfd: int, dfd: int, given: list[tuple[str, str]], what: str) -> None:
    """v1: a new cpuset cgroup has no CPUs and no memory nodes; those not given are the parent's."""
    for fname in ("cpuset.cpus", "cpuset.mems"):
        if any(f == fname for f, _ in given):
            continue
        fd = os.open(fname, os.O_RDONLY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            value = os.read(fd, 4096).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        _write(dfd, fname, value or "0", what)


def _write(dfd: int, name: str, value: str, what: str) -> None:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        if name.startswith(("memory.memsw.", "memory.swap.")):
            raise CgroupError(f"can't limit the swap of {what}: the kernel accounts no swap (`{name}` is missing)",
                              hint="boot with swapaccount=1, or leave --memory-swap out") from None  # fmt: skip
        if name.startswith(("blkio.", "io.")):
            raise CgroupError(f"can't set the block I/O weight of {what}: the kernel has no I/O weights here "
                              f"(`{name}` is missing: the disks' I/O scheduler keeps none)",
                              hint="leave --blkio-weight out, or use the BFQ I/O scheduler") from None  # fmt: skip
        raise CgroupError(f"can't limit the resources of {what}: the kernel has no `{name}`") from None
    try:
        os.write(fd, value.encode())
    except OSError as err:
        hint = None
        if name.startswith("cpuset."):
            hint = "the CPUs and memory nodes must be among those of the caller's cgroup (`cpuset.effective_cpus`, `cpuset.effective_mems`)"
        raise CgroupError(f"can't limit the resources of {what}: can't write `{value}` to {name}: {err.strerror}",
                          hint=hint) from None  # fmt: skip
    finally:
        os.close(fd)


def probe(wanted: tuple[str, ...] = ("memory", "cpu", "pids"), root: str = CGROUP_ROOT) -> tuple[int, str]:
    """(cgroup version the caller's limits would use, 0: none; why not), changing nothing."""
    try:
        with open("/proc/self/cgroup") as f:
            own = own_paths(f.read())
    except OSError as err:
        return 0, f"can't read /proc/self/cgroup: {err.strerror}"
    version, _, reason = _choose(root, own, list(wanted), enable=False)
    return version, reason


#: What `sifbox doctor` reports, one line each: a name, the options, the controllers they need.
FEATURES = (("memory", "--memory, --memory-swap", ("memory",)), ("cpus", "--cpus", ("cpu",)),
            ("pids", "--pids-limit", ("pids",)), ("freezer", "sifbox oci pause/resume", ("freezer",)))  # fmt: skip


def report(root: str = CGROUP_ROOT, proc_self: str | None = None) -> tuple[str, list[tuple[str, str, int, str]]]:
    """(the layout, with the v2 controllers of the caller's cgroup; for each of FEATURES: its name,
    options, the cgroup version they would use for this caller (0: none), why not), changing nothing."""
    try:
        if proc_self is None:
            with open("/proc/self/cgroup") as f:
                proc_self = f.read()
    except OSError as err:
        return f"can't read /proc/self/cgroup: {err.strerror}", [(n, o, 0, "") for n, o, _ in FEATURES]
    own = own_paths(proc_self)
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        layout, unified = "cgroups v2 (unified)", root
    elif os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
        layout, unified = "cgroups v1/v2 hybrid", os.path.join(root, "unified")
    else:
        layout, unified = "cgroups v1", None
    if unified is not None and "" in own:
        try:
            with open(os.path.join(unified, own[""].lstrip("/"), "cgroup.controllers")) as f:
                available = f.read().split()
        except OSError:
            available = []
        layout += f", v2 controllers here: {' '.join(available) or 'none'}"
    rows = []
    for name, options, wanted in FEATURES:
        version, _, reason = _choose(root, own, list(wanted), enable=False)
        rows.append((name, options, version, reason))
    return layout, rows


def _choose(root: str, own: dict[str, str], wanted: list[str], enable: bool = True,
            optional: tuple[str, ...] = ()) -> tuple[int, dict[str, str], str]:  # fmt: skip
    """(version, {controller: parent directory}, why not) for the controllers `wanted` (and
    those of `optional` that the chosen version has); with `enable`, they are enabled for the
    children of the caller's v2 cgroup."""
    unified = next((p for p in (root, os.path.join(root, "unified")) if os.path.exists(os.path.join(p, "cgroup.controllers"))), None)  # fmt: skip
    v2_reason = "no cgroup v2 hierarchy"
    if unified is not None and "" in own:
        base = os.path.join(unified, own[""].lstrip("/"))
        try:
            with open(os.path.join(base, "cgroup.controllers")) as f:
                available = set(f.read().split())
        except OSError:
            available = set()
        # v2: cgroup.freeze and cpu.stat, in every cgroup
        needed = [c for c in wanted if c not in ("freezer", "cpuacct")]
        missing = [c for c in needed if c not in available]
        if not missing and os.access(base, os.W_OK):
            needed += [c for c in optional if c in available and c not in needed]
            try:
                if enable and needed:
                    with open(os.path.join(base, "cgroup.subtree_control"), "w") as f:
                        f.write(" ".join("+" + c for c in needed))
                return 2, {"": base}, ""
            except OSError as err:
                v2_reason = f"can't enable the {', '.join(needed)} controllers below `{base}`: {err.strerror}"
        elif missing:
            v2_reason = (f"the cgroup v2 controller{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"{'are' if len(missing) > 1 else 'is'} not available in `{base}` (bound to cgroup v1)")  # fmt: skip
        else:
            v2_reason = f"`{base}` is not delegated to this user"
    if os.geteuid() != 0:
        return 0, {}, v2_reason + "; cgroup v1 limits need root"
    places = {}
    for c in wanted + [c for c in optional if c not in wanted]:
        v1 = V1_NAMES.get(c, c)
        mount = os.path.join(root, v1)
        if v1 not in own or not os.path.exists(os.path.join(mount, "cgroup.procs")):
            if c not in wanted:
                continue
            return 0, {}, f"{v2_reason}, and no cgroup v1 `{v1}` hierarchy is mounted at `{mount}`"
        places[c] = os.path.join(mount, own[v1].lstrip("/"))
    return 1, places, ""


# --- a running container's cgroups (sifbox oci update, events) -------------------------------------


def container_dirs(pid: int, name: str, root: str = CGROUP_ROOT) -> tuple[str | None, dict[str, str]]:
    """(its v2 directory, {v1 controller: directory}) of the cgroups named `name` that process
    `pid` is in (sifbox made them: `sifbox-oci-ID`)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = own_paths(f.read())
    except OSError:
        return None, {}
    v2, v1 = None, {}
    for controller, path in paths.items():
        if not path.rstrip("/").endswith("/" + name):
            continue
        if controller:
            d = os.path.join(root, controller, path.lstrip("/"))
            if os.path.exists(os.path.join(d, "cgroup.procs")):
                v1[controller] = d
        else:
            for top in (root, os.path.join(root, "unified")):
                d = os.path.join(top, path.lstrip("/"))
                if os.path.exists(os.path.join(d, "cgroup.controllers")):
                    v2 = d
                    break
    return v2, v1


def join_of(pid: int, name: str, what: str, root: str = CGROUP_ROOT) -> None:
    """Move the calling process into the cgroups `name` of process `pid` (a process joining
    an instance is limited and counted as the instance is)."""
    v2, v1 = container_dirs(pid, name, root)
    for d in ([v2] if v2 else []) + list(v1.values()):
        try:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write("0")
        except OSError as err:
            raise CgroupError(f"can't join the cgroup of {what}: {err.strerror}") from None


def update(pid: int, name: str, limits: Limits, what: str, root: str = CGROUP_ROOT) -> None:
    """Write `limits` to the cgroups `name` of process `pid` (v2 when its v2 cgroup has the
    controllers, else its v1 ones)."""
    v2, v1 = container_dirs(pid, name, root)
    wanted = limits.controllers()
    version, places = 0, {}
    if v2 is not None:
        with open(os.path.join(v2, "cgroup.controllers")) as f:
            if set(wanted) <= set(f.read().split()):
                version, places = 2, {"": v2}
    if not version and v1 and all(V1_NAMES.get(c, c) in v1 for c in wanted):
        version, places = 1, {c: v1[V1_NAMES.get(c, c)] for c in wanted}
    if not version:
        missing = [c for c in wanted if V1_NAMES.get(c, c) not in v1]
        raise CgroupError(f"can't update the resources of {what}: it has no cgroup with the "
                          f"{', '.join(missing or wanted)} controller{'s' if len(missing or wanted) > 1 else ''}",
                          hint="`sifbox doctor` says which cgroup limits this user can have")  # fmt: skip
    for controller in wanted:
        d = places[""] if version == 2 else places[controller]
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for fname, value in files(limits, version, lambda f, d=dfd: _exists(d, f)).get(controller, []):
                _write(dfd, fname, value, what)
        finally:
            os.close(dfd)


def stats(pid: int, name: str, root: str = CGROUP_ROOT) -> dict[str, dict[str, object]]:
    """runc's `events --stats` data of the cgroups `name` of process `pid`: cpu (ns), memory
    (bytes), pids; what the cgroups do not account is left out."""
    v2, v1 = container_dirs(pid, name, root)

    def read(d: str | None, fname: str) -> str | None:
        try:
            with open(os.path.join(d, fname)) as f:  # type: ignore[arg-type]
                return f.read().strip()
        except (OSError, TypeError):
            return None

    def number(text: str | None) -> int | None:
        return int(text) if text and text.isdigit() else None

    out: dict[str, dict[str, object]] = {}
    cpu_stat = read(v2, "cpu.stat")
    usec = next((int(ln.split()[1]) for ln in (cpu_stat or "").splitlines() if ln.startswith("usage_usec ")), None)
    total = usec * 1000 if usec is not None else number(read(v1.get("cpuacct") or v1.get("cpu"), "cpuacct.usage"))
    if total is not None:
        out["cpu"] = {"usage": {"total": total}}
    usage = number(read(v2, "memory.current"))
    limit = read(v2, "memory.max")
    if usage is None:
        usage, limit = number(read(v1.get("memory"), "memory.usage_in_bytes")), read(v1.get("memory"), "memory.limit_in_bytes")
    if usage is not None:
        out["memory"] = {"usage": {"usage": usage, "limit": number(limit) or 0}}
    current = number(read(v2, "pids.current")) if v2 and read(v2, "pids.current") else number(read(v1.get("pids"), "pids.current"))
    if current is not None:
        pids_max = read(v2, "pids.max") if v2 and read(v2, "pids.max") else read(v1.get("pids"), "pids.max")
        out["pids"] = {"current": current, "limit": number(pids_max) or 0}
    io = _io_bytes(read(v2, "io.stat"), read(v1.get("blkio"), "blkio.throttle.io_service_bytes_recursive"))
    if io is not None:
        out["blkio"] = {"ioServiceBytesRecursive": io}
    return out


def _io_bytes(v2_stat: str | None, v1_stat: str | None) -> list[dict[str, object]] | None:
    """runc's blkio entries (major, minor, op, value) of v2's io.stat or v1's io_service_bytes."""
    entries: list[dict[str, object]] = []
    if v2_stat is not None:
        for line in v2_stat.splitlines():
            dev, *pairs = line.split()
            major, _, minor = dev.partition(":")
            for pair in pairs:
                key, _, value = pair.partition("=")
                op = {"rbytes": "Read", "wbytes": "Write"}.get(key)
                if op and major.isdigit() and minor.isdigit() and value.isdigit():
                    entries.append({"major": int(major), "minor": int(minor), "op": op, "value": int(value)})
        return entries
    if v1_stat is None:
        return None
    for line in v1_stat.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit() and ":" in parts[0]:
            major, _, minor = parts[0].partition(":")
            if major.isdigit() and minor.isdigit():
                entries.append({"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])})
    return entries


# --- the freezer (sifbox oci pause/resume) -----------------------------------------------------


def freezer_file(pid: int, name: str, root: str = CGROUP_ROOT) -> str | None:
    """The freezer file (v1 freezer.state, v2 cgroup.freeze) of the cgroup `name` that process
    `pid` is in; None when it is in none of that name."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = own_paths(f.read())
    except OSError:
        return None
    for controller, top, fname in (("freezer", os.path.join(root, "freezer"), "freezer.state"),
                                   ("", root, "cgroup.freeze"), ("", os.path.join(root, "unified"), "cgroup.freeze")):  # fmt: skip
        path = paths.get(controller)
        if path is None or not path.rstrip("/").endswith("/" + name):
            continue
        candidate = os.path.join(top, path.lstrip("/"), fname)
        if os.path.exists(candidate):
            return candidate
    return None


def frozen(path: str) -> bool:
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return False
    return value in ("FROZEN", "FREEZING", "1")


def freeze(path: str, on: bool) -> None:
    """Freeze (or thaw) the cgroup of freezer file `path`, and wait until it is."""
    import time

    v1 = path.endswith("freezer.state")
    with open(path, "w") as f:
        f.write(("FROZEN" if on else "THAWED") if v1 else ("1" if on else "0"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if v1:
            with open(path) as f:
                if f.read().strip() == ("FROZEN" if on else "THAWED"):
                    return
        else:
            with open(os.path.join(os.path.dirname(path), "cgroup.events")) as f:
                if f"frozen {int(on)}" in f.read():
                    return
        time.sleep(0.005)


def remove_left(paths: object, name: str, root: str = CGROUP_ROOT) -> None:
    """Remove cgroup directories `paths` (as `Cgroups.paths` gave them) named `name` that their
    maker could not (it was killed: `scancel` ends a step with SIGKILL), with what is left in
    them. Only paths under `root` whose last part is `name` are touched; the caller's own
    rights bound the rest (a state file is the user's to edit)."""
    if not isinstance(paths, list):
        return
    for path in paths:
        if (not isinstance(path, str) or not path.startswith(root + "/") or os.path.basename(path) != name
                or "/../" in path + "/" or "/./" in path + "/"):  # fmt: skip
            continue
        try:
            with open(os.path.join(path, "cgroup.procs"), "rb") as f:
                pids = f.read(1 << 20).split()
        except FileNotFoundError:
            pids = []
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), _SIGKILL)
            except (OSError, ValueError):
                pass
        for _ in range(100):
            try:
                os.rmdir(path)
            except OSError as err:
                if err.errno == errno.EBUSY:  # a process is still leaving
                    import time

                    time.sleep(0.01)
                    continue
            break
