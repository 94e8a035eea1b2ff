"""Apptainer's other cgroup options (`--cpu-shares`, `--cpuset-cpus`, `--cpuset-mems`,
`--memory-reservation`, `--oom-kill-disable`, `--blkio-weight`), `--apply-cgroups FILE`, the
cgroup of an instance with limits and `instance stats`, proven from inside the container: the
CPUs it may run on, the values in its cgroup's files (Apptainer's e2e/cgroups table: their
flags, their expected file values), a memory hog OOM-killed and a fork loop stopped by a TOML
file's limits. As root (the v1 half of this v1/v2 hybrid) and as a user (cgroups v2 only: this
machine's v2 hierarchy has no controller, so the limits are refused with the reason). Each
test checks that the cgroups it made are gone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.integration import images, oci_bundle
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
CLI = os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox")
HOG = "dd if=/dev/zero of=/dev/null bs=300M count=1 2>/dev/null; echo hog=$?"  # a 300 MiB buffer, touched
FORKS = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do sleep 1 & done; wait; echo done"
#: A payload printing `FILE=VALUE` for each cgroup file named (v1: CONTROLLER/FILE), read
#: through /proc/self/cgroup, as Apptainer's e2e test reads them (or at the top of the
#: controller's mount: runc mounts the container's own cgroup there).
READ = r"""for f in "$@"; do c=${f%%/*}; n=${f#*/}
p=$(grep "[:,]$c[:,]" /proc/self/cgroup | cut -d: -f3); g=/sys/fs/cgroup/$c$p/$n; [ -e "$g" ] || g=/sys/fs/cgroup/$c/$n
printf '%s=' "$f"; head -1 "$g"
done; grep Cpus_allowed_list /proc/self/status; echo cgroup=$(grep -o 'sifbox-[^/]*$' /proc/self/cgroup | head -1)"""


def _sb(run_as: Any, who: Any, *argv: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_as(who, [CLI, *map(str, argv)], env=env_for(who), timeout=LAUNCH_TIMEOUT, **kw)


def _ours(name: str) -> list[str]:
    """The cgroup directories named `name` left anywhere."""
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if d == name]
    return found


def _user_refusal(proc: subprocess.CompletedProcess[str], who: Any) -> None:
    """A user: this machine's v2 cgroups have no controller to delegate, so the limits are refused
    with one clear line (status 126); the test then stops there."""
    assert proc.returncode == 126, (proc.returncode, proc.stderr)
    line = proc.stderr.splitlines()[0]
    assert line.startswith("sifbox: error: can't limit the resources of "), proc.stderr
    assert "cgroup v1 limits need root" in line or "not delegated" in line, line


def _v2_has(who: Any, controllers: set[str]) -> bool:
    proc = subprocess.run(["runuser", "-u", who.name, "--", "cat", "/proc/self/cgroup"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    path = next((ln.split(":", 2)[2] for ln in proc.stdout.splitlines() if ln.startswith("0::")), "/")
    for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        f = Path(top) / path.lstrip("/") / "cgroup.controllers"
        if f.exists():
            return controllers <= set(f.read_text().split()) and os.access(f.parent, os.W_OK)
    return False


def _values(stdout: str) -> dict[str, str]:
    """The files' values the payload printed (and, under `cgroup`, its cgroup's name)."""
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def test_apptainers_flags_write_their_files(run_as: Any, as_who: Any, action_images: ActionImages) -> None:
    """Apptainer's e2e/cgroups resourceFlagTests on cgroups v1 (root here): every flag of the table
    at once, each file read from inside the container; --cpuset-cpus 0 leaves the payload CPU 0."""
    flags = ["--cpus", "0.5", "--cpu-shares", "123", "--cpuset-cpus", "0", "--cpuset-mems", "0",
             "--memory", "250M", "--memory-swap", "500M", "--memory-reservation", "200M",
             "--oom-kill-disable", "--pids-limit", "123"]  # fmt: skip
    files = ["cpu/cpu.cfs_quota_us", "cpu/cpu.shares", "cpuset/cpuset.cpus", "cpuset/cpuset.mems",
             "memory/memory.limit_in_bytes", "memory/memory.memsw.limit_in_bytes",
             "memory/memory.soft_limit_in_bytes", "memory/memory.oom_control", "pids/pids.max"]  # fmt: skip
    proc = _sb(run_as, as_who, "exec", *flags, action_images.sif, "sh", "-c", READ, "sh", *files)
    if not as_who.is_root and not _v2_has(as_who, {"cpu", "cpuset", "memory", "pids"}):
        _user_refusal(proc, as_who)
        return
    assert proc.returncode == 0, proc.stderr
    assert "Cpus_allowed_list:\t0" in proc.stdout, proc.stdout
    values = _values(proc.stdout)
    cgroup = values.pop("cgroup")
    assert cgroup.startswith("sifbox-"), proc.stdout
    if Path("/sys/fs/cgroup/cpu/cgroup.procs").exists():  # the v1 half of the hybrid
        assert values == {
            "cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.shares": "123", "cpuset/cpuset.cpus": "0",
            "cpuset/cpuset.mems": "0", "memory/memory.limit_in_bytes": "262144000",
            "memory/memory.memsw.limit_in_bytes": "524288000", "memory/memory.soft_limit_in_bytes": "209715200",
            "memory/memory.oom_control": "oom_kill_disable 1", "pids/pids.max": "123"}, proc.stdout  # fmt: skip
    assert _ours(cgroup) == []


def test_blkio_weight_without_io_weights_is_refused(run_as: Any, action_images: ActionImages) -> None:
    """This kernel's disks keep no I/O weights (no blkio.weight): refused with that reason, as runc's
    write would fail; where the file exists, Apptainer's e2e value (50) is read back."""
    root = images.user_named("root")
    proc = _sb(run_as, root, "exec", "--blkio-weight", "50", action_images.sif, "sh", "-c", READ, "sh",
               "blkio/blkio.weight")  # fmt: skip
    if Path("/sys/fs/cgroup/blkio/blkio.weight").exists():
        assert _values(proc.stdout)["blkio/blkio.weight"] == "50", proc.stderr
    else:
        assert proc.returncode == 126, proc.stderr
        assert proc.stderr.startswith("sifbox: error: can't set the block I/O weight of "), proc.stderr
        assert "`blkio.weight` is missing" in proc.stderr and "hint: " in proc.stderr


def test_apply_cgroups_toml(run_as: Any, as_who: Any, action_images: ActionImages, shared_tmp: Path) -> None:
    """A TOML file's memory limit OOM-kills the hog and its pids limit stops the forks; Apptainer's
    memory_limit.toml (1024 bytes) kills the payload at once (137) and cpu_success.toml runs
    /bin/true (0), their e2e expectations."""
    toml = shared_tmp / "limits.toml"
    toml.write_text("[memory]\n  limit = 50331648\n[pids]\n  limit = 8\n")
    tiny = shared_tmp / "memory_limit.toml"
    tiny.write_text("[memory]\n  limit = 1024\n")
    proc = _sb(run_as, as_who, "exec", "--apply-cgroups", toml, action_images.sif, "sh", "-c", HOG + "; " + FORKS)
    if not as_who.is_root and not _v2_has(as_who, {"memory", "pids"}):
        _user_refusal(proc, as_who)
        return
    assert proc.stdout.splitlines()[0] == "hog=137", (proc.stdout, proc.stderr)  # SIGKILL by the OOM killer
    assert "can't fork" in proc.stderr, proc.stderr
    proc = _sb(run_as, as_who, "exec", "--apply-cgroups", tiny, action_images.sif, "/bin/sleep", "5")
    assert proc.returncode == 137, proc.stderr
    cpu = shared_tmp / "cpu_success.toml"
    cpu.write_text("[cpu]\n  shares = 512\n\n\n")
    proc = _sb(run_as, as_who, "exec", "--apply-cgroups", cpu, action_images.sif, "/bin/true")
    assert (proc.returncode, proc.stderr) == (0, "")


def test_apply_cgroups_refusals(run_as: Any, as_who: Any, action_images: ActionImages, shared_tmp: Path) -> None:
    """Refused before any launch, with the file and the reason (125): together with a limit option
    (as Apptainer), a FIFO and a link to /dev/zero (not read: no hang), a huge file, wrong types,
    negative numbers, a CPU out of range, a missing file, invalid TOML (Apptainer's invalid.toml)."""
    fifo = shared_tmp / "fifo.toml"
    os.mkfifo(fifo)
    (shared_tmp / "zero.toml").symlink_to("/dev/zero")
    cases = {"huge.toml": "# " + "x" * (200 << 10) + "\n", "type.toml": "[cpu]\nshares = \"512\"\n",
             "negative.toml": "[memory]\nlimit = -1024\n", "cpuset.toml": "[cpu]\ncpus = \"0-4095\"\n",
             "invalid.toml": "# This is an invalid toml file\nmemory]\n  limit = 1024\n",
             "devices.toml": "[[devices]]\nallow = false\naccess = \"rwm\"\n"}  # fmt: skip
    for name, text in cases.items():
        (shared_tmp / name).write_text(text)
    expect = [(["--memory", "1g"], "ok.toml", "can't use --apply-cgroups with --memory"),
              ([], "fifo.toml", "not a regular file"), ([], "zero.toml", "not a regular file"),
              ([], "huge.toml", "larger than 64 KiB"), ([], "type.toml", "`cpu.shares` must be an integer"),
              ([], "negative.toml", "`memory.limit` is -1024"), ([], "cpuset.toml", "does not exist here"),
              ([], "missing.toml", "no such file or directory"), ([], "invalid.toml", "not TOML"),
              ([], "devices.toml", "sifbox does not apply `devices`")]  # fmt: skip
    (shared_tmp / "ok.toml").write_text("[pids]\nlimit = 10\n")
    for extra, name, part in expect:
        proc = _sb(run_as, as_who, "exec", *extra, "--apply-cgroups", shared_tmp / name, action_images.sif, "true")
        assert proc.returncode == 125, (name, proc.stderr)
        assert proc.stderr.startswith("sifbox: error: can't use --apply-cgroups") and part in proc.stderr, proc.stderr


def test_instance_limits_and_stats(run_as: Any, as_who: Any, action_images: ActionImages) -> None:
    """Apptainer's e2e instanceStats and instanceFlags: an instance started with --memory 250M has
    its own cgroup, which a process joining it (`exec instance://`) is in; `instance stats` shows
    the columns and `/ 250MiB`, `--json` the limit; stopping it removes the cgroup. A user's
    instance: its limits are refused with the reason, and `stats` of an instance without limits
    says why there are none."""
    name = f"cgstats{os.getpid()}"
    start = _sb(run_as, as_who, "instance", "start", "--memory", "250M", "--pids-limit", "50", action_images.sif, name)
    if not as_who.is_root and not _v2_has(as_who, {"memory", "pids"}):
        assert start.returncode == 126, start.stderr
        assert "can't limit the resources of instance `" in start.stderr, start.stderr
        assert _sb(run_as, as_who, "instance", "start", action_images.sif, name).returncode == 0
        try:
            stats = _sb(run_as, as_who, "instance", "stats", "--no-stream", name)
            assert stats.returncode != 0 and "it has no cgroup of its own" in stats.stderr, stats.stderr
        finally:
            _sb(run_as, as_who, "instance", "stop", name)
        return
    assert start.returncode == 0, start.stderr
    cgroup = f"sifbox-{as_who.uid}-{name}"
    try:
        inside = _sb(run_as, as_who, "exec", f"instance://{name}", "sh", "-c", READ, "sh",
                     "memory/memory.limit_in_bytes", "pids/pids.max")  # fmt: skip
        if Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
            values = _values(inside.stdout)
            assert (values["memory/memory.limit_in_bytes"], values["pids/pids.max"]) == ("262144000", "50"), inside
        stats = _sb(run_as, as_who, "instance", "stats", "--no-stream", name)
        assert stats.returncode == 0, stats.stderr
        header, row = stats.stdout.splitlines()
        for column in ("INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT", "MEM %", "BLOCK I/O", "PIDS"):
            assert column in header
        assert row.startswith(name) and "/ 250MiB" in row, stats.stdout
        assert f"Stats for {name} instance of " in stats.stderr
        doc = json.loads(_sb(run_as, as_who, "instance", "stats", "--json", name).stdout)
        assert doc["memory_stats"]["usage"]["limit"] == 262144000 and doc["pids_stats"]["limit"] == 50
        assert doc["pids_stats"]["current"] >= 1 and doc["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        assert _ours(cgroup)
    finally:
        assert _sb(run_as, as_who, "instance", "stop", name).returncode == 0
    assert _ours(cgroup) == []


def test_oci_mode_and_bundles(run_as: Any, action_images: ActionImages, shared_tmp: Path) -> None:
    """`--oci` applies the options as native mode does; an OCI bundle's linux.resources cpu.shares,
    cpu.cpus and memory.reservation land in the same files under `sifbox oci` as under runc."""
    oci_bundle.become_subreaper()
    root = images.user_named("root")
    # (-B /sys/fs/cgroup: OCI mode's /sys has no cgroup mount; Apptainer's e2e binds it too)
    proc = _sb(run_as, root, "exec", "--oci", "-B", "/sys/fs/cgroup", "--cpuset-cpus", "0", "--cpu-shares", "123",
               action_images.sif, "sh", "-c", READ, "sh", "cpu/cpu.shares")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Cpus_allowed_list:\t0" in proc.stdout
    if Path("/sys/fs/cgroup/cpu/cgroup.procs").exists():
        assert _values(proc.stdout)["cpu/cpu.shares"] == "123"

    def edit(doc: dict[str, Any]) -> None:
        doc["linux"]["resources"] = {"cpu": {"shares": 123, "cpus": "0"}, "memory": {"reservation": 200 << 20}}

    files = ["cpu/cpu.shares", "memory/memory.soft_limit_in_bytes"]
    bundle = oci_bundle.make(shared_tmp / "b", ["sh", "-c", READ, "sh", *files], edit=edit)
    runtimes = [("sifbox", [CLI, "oci"])] + ([("runc", ["runc"])] if os.path.exists("/usr/sbin/runc") else [])
    outs = {}
    for rt, argv in runtimes:
        r = run_as(root, [*argv, "--root", shared_tmp / f"state-{rt}", "run", "r1"], cwd=bundle)
        outs[rt] = (r.returncode, r.stdout)
    assert outs["sifbox"][0] == 0 and "Cpus_allowed_list:\t0" in outs["sifbox"][1], outs
    if Path("/sys/fs/cgroup/cpu/cgroup.procs").exists():
        assert _values(outs["sifbox"][1]) == {"cpu/cpu.shares": "123", "cgroup": "sifbox-oci-r1",
                                              "memory/memory.soft_limit_in_bytes": "209715200"}, outs  # fmt: skip
    if "runc" in outs:  # runc's cgroup has its own name
        assert outs["runc"][0] == 0 and {**_values(outs["runc"][1]), "cgroup": ""} == {
            **_values(outs["sifbox"][1]), "cgroup": ""}, outs
    assert _ours("sifbox-oci-r1") == []


def test_oci_update_of_the_other_limits(run_as: Any, shared_tmp: Path) -> None:
    """`sifbox oci update --cpu-share --cpuset-cpus --memory-reservation` (runc's flags) rewrite a
    running container's cgroup files; a bad value is refused before anything is written."""
    oci_bundle.become_subreaper()
    root = images.user_named("root")

    def edit(doc: dict[str, Any]) -> None:
        doc["linux"]["resources"] = {"cpu": {"shares": 512}, "memory": {"limit": 256 << 20}, "pids": {"limit": 64}}

    bundle = oci_bundle.make(shared_tmp / "b", ["sleep", "100"], edit=edit)
    state, pid_file, cid = shared_tmp / "state", shared_tmp / "pid", f"cgupd{os.getpid()}"
    with open(shared_tmp / "out", "w") as out:
        r = run_as(root, [CLI, "oci", "--root", state, "run", "-d", "--pid-file", pid_file, cid], cwd=bundle,
                   capture_output=False, stdout=out, stderr=out)  # fmt: skip
    assert r.returncode == 0, (shared_tmp / "out").read_text()
    try:
        r = run_as(root, [CLI, "oci", "--root", state, "update", "--cpu-share", "300", "--memory-reservation",
                          "100m", cid])  # fmt: skip
        assert r.returncode == 0, r.stderr
        if Path("/sys/fs/cgroup/cpu/cgroup.procs").exists():
            (cpu,) = [d for d in _ours(f"sifbox-oci-{cid}") if "/cpu/" in d]
            assert Path(cpu, "cpu.shares").read_text().strip() == "300"
            (mem,) = [d for d in _ours(f"sifbox-oci-{cid}") if "/memory/" in d]
            assert Path(mem, "memory.soft_limit_in_bytes").read_text().strip() == str(100 << 20)
        r = run_as(root, [CLI, "oci", "--root", state, "update", "--cpu-share", "1", cid])
        assert r.returncode == 125 and "--cpu-shares `1`: out of range" in r.stderr, r.stderr
    finally:
        run_as(root, [CLI, "oci", "--root", state, "delete", "--force", cid])
        oci_bundle.reap(int(pid_file.read_text()))
    assert _ours(f"sifbox-oci-{cid}") == []
