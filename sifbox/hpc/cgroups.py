"""Resource limits through cgroups: `--memory`, `--memory-swap`, `--cpus`, `--pids-limit`
(Apptainer's names) and an OCI bundle's `linux.resources`.

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

import os

from sifbox.util.errors import ExitStatus, SifboxError, UsageError

CGROUP_ROOT = "/sys/fs/cgroup"
CPU_PERIOD = 100000  # microseconds, as runc and Docker
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _LimitsBase(NamedTuple):
        memory: int | None = None  # bytes
        memory_swap: int | None = None  # bytes of memory + swap; -1: unlimited swap
        cpus: float | None = None
        pids: int | None = None

else:
    from sifbox.util.records import record

    _LimitsBase = record("Limits", "memory memory_swap cpus pids", defaults=(None, None, None, None))


class Limits(_LimitsBase):
    __slots__ = ()

    def controllers(self) -> list[str]:
        return [c for c, v in (("memory", self.memory), ("cpu", self.cpus), ("pids", self.pids)) if v is not None]


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
                 pids_limit: str | None = None) -> Limits | None:  # fmt: skip
    """The limits of the command line's options (None: no limit asked for)."""
    if not any((memory, memory_swap, cpus, pids_limit)):
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
    return Limits(mem, swap, cpu, pids)


def from_oci(resources: object) -> Limits | None:
    """The limits of an OCI bundle's `linux.resources` (memory, cpu quota, pids), or None."""
    if not isinstance(resources, dict):
        return None
    memory = resources.get("memory") or {}
    cpu = resources.get("cpu") or {}
    pids = resources.get("pids") or {}
    mem = memory.get("limit") if isinstance(memory.get("limit"), int) and memory["limit"] > 0 else None
    swap = memory.get("swap") if isinstance(memory.get("swap"), int) and mem is not None else None
    cpus = None
    if isinstance(cpu.get("quota"), int) and cpu["quota"] > 0:
        period = cpu.get("period") if isinstance(cpu.get("period"), int) and cpu["period"] > 0 else CPU_PERIOD
        cpus = cpu["quota"] / period
    limit = pids.get("limit") if isinstance(pids.get("limit"), int) and pids["limit"] > 0 else None
    if mem is None and cpus is None and limit is None:
        return None
    return Limits(mem, swap if swap is None or swap == -1 or swap >= mem else None, cpus, limit)  # type: ignore[operator]


def own_paths(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the v2 (unified) path under ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        for name in names.split(",") if names else [""]:
            paths[name.removeprefix("name=")] = path
    return paths


def files(limits: Limits, version: int) -> dict[str, list[tuple[str, str]]]:
    """The files to write, per controller, for `limits` (cgroup `version` 1 or 2)."""
    out: dict[str, list[tuple[str, str]]] = {}
    if limits.memory is not None:
        if version == 2:
            mem = [("memory.max", str(limits.memory))]
            if limits.memory_swap is not None:
                swap = "max" if limits.memory_swap == -1 else str(limits.memory_swap - limits.memory)
                mem.append(("memory.swap.max", swap))
        else:
            mem = [("memory.limit_in_bytes", str(limits.memory))]
            if limits.memory_swap is not None:
                mem.append(("memory.memsw.limit_in_bytes", str(limits.memory_swap)))
        out["memory"] = mem
    if limits.cpus is not None:
        quota = str(max(1000, int(limits.cpus * CPU_PERIOD)))
        out["cpu"] = ([("cpu.max", f"{quota} {CPU_PERIOD}")] if version == 2 else
                      [("cpu.cfs_period_us", str(CPU_PERIOD)), ("cpu.cfs_quota_us", quota)])  # fmt: skip
    if limits.pids is not None:
        out["pids"] = [("pids.max", str(limits.pids))]
    return out


class Cgroups:
    """The container's cgroup directories, held by descriptors: (parent fd, name, procs fd)."""

    __slots__ = ("dirs", "version")

    def __init__(self, version: int, dirs: list[tuple[int, str, int]]) -> None:
        self.version, self.dirs = version, dirs

    @classmethod
    def create(cls, name: str, limits: Limits, *, root: str = CGROUP_ROOT, proc_self: str | None = None,
               what: str = "the container", extra: tuple[str, ...] = ()) -> Cgroups:  # fmt: skip
        """Make cgroup `name` below the caller's, with `limits` written; `extra`: more
        controllers it must be in (the freezer, for `sifbox oci pause`)."""
        if proc_self is None:
            with open("/proc/self/cgroup") as f:
                proc_self = f.read()
        own = own_paths(proc_self)
        wanted = limits.controllers() + [c for c in extra if c not in limits.controllers()]
        version, places, reason = _choose(root, own, wanted)
        if version == 0:
            raise CgroupError(f"can't limit the resources of {what}: {reason}",
                              hint="README's `Resource limits` says how a site delegates cgroups v2 to users")  # fmt: skip
        made = cls(version, [])
        to_write = files(limits, version)
        try:
            for controller, parent in places.items():
                pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.mkdir(name, 0o755, dir_fd=pfd)
                except OSError:
                    os.close(pfd)
                    raise
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    procs = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=dfd)
                    made.dirs.append((pfd, name, procs))
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

    def join(self) -> None:
        """Move the calling process into the cgroup (its children follow)."""
        for _, _, procs in self.dirs:
            os.write(procs, b"0")

    def warm(self) -> None:
        """Move the caller into its own cgroups again: no change, but the kernel takes its
        lock for migrations, whose first taking after a quiet spell waits for an RCU grace
        period (~10 ms; writes that follow within some ms don't wait). Done by the caller
        while the container's process is being set up, it spares that process's `join` the
        wait."""
        for pfd, _, _ in self.dirs[:1]:
            try:
                fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=pfd)
            except OSError:
                return
            try:
                os.write(fd, b"0")
            except OSError:
                pass
            finally:
                os.close(fd)

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


def _write(dfd: int, name: str, value: str, what: str) -> None:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        if name.startswith(("memory.memsw.", "memory.swap.")):
            raise CgroupError(f"can't limit the swap of {what}: the kernel accounts no swap (`{name}` is missing)",
                              hint="boot with swapaccount=1, or leave --memory-swap out") from None  # fmt: skip
        raise
    try:
        os.write(fd, value.encode())
    except OSError as err:
        raise CgroupError(f"can't limit the resources of {what}: can't write `{value}` to {name}: {err.strerror}") from None
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


def _choose(root: str, own: dict[str, str], wanted: list[str], enable: bool = True) -> tuple[int, dict[str, str], str]:
    """(version, {controller: parent directory}, why not) for the controllers `wanted`; with
    `enable`, they are enabled for the children of the caller's v2 cgroup."""
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
    for c in wanted:
        mount = os.path.join(root, c)
        if c not in own or not os.path.exists(os.path.join(mount, "cgroup.procs")):
            return 0, {}, f"{v2_reason}, and no cgroup v1 `{c}` hierarchy is mounted at `{mount}`"
        places[c] = os.path.join(mount, own[c].lstrip("/"))
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
    if not version and v1 and all(c in v1 for c in wanted):
        version, places = 1, {c: v1[c] for c in wanted}
    if not version:
        missing = [c for c in wanted if c not in v1]
        raise CgroupError(f"can't update the resources of {what}: it has no cgroup with the "
                          f"{', '.join(missing or wanted)} controller{'s' if len(missing or wanted) > 1 else ''}",
                          hint="`sifbox doctor` says which cgroup limits this user can have")  # fmt: skip
    for controller, entries in files(limits, version).items():
        d = places[""] if version == 2 else places[controller]
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for fname, value in entries:
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
    return out


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
