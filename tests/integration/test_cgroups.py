"""Resource limits through cgroups (sifbox.hpc.cgroups): `--memory`, `--cpus`, `--pids-limit` and
an OCI bundle's linux.resources, proven by payloads that hit them (a memory hog is OOM-killed, a
fork loop stops at the pid limit), as root (cgroups v2 when the caller's cgroup has the
controllers, else the v1 half of this machine's v1/v2 hybrid) and as a user (cgroups v2 only,
on a delegated subtree; refused with the reason otherwise). Nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration import images, oci_bundle
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
CLI = os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox")
HOG = "dd if=/dev/zero of=/dev/null bs=300M count=1 2>/dev/null; echo hog=$?"  # a 300 MiB buffer, touched
FORKS = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do sleep 1 & done; wait; echo done"


def _v2_controllers(user: Any) -> set[str]:
    """The controllers of the v2 cgroup a process of `user` starts in (as the runuser below)."""
    proc = subprocess.run(["runuser", "-u", user.name, "--", "cat", "/proc/self/cgroup"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    path = next((ln.split(":", 2)[2] for ln in proc.stdout.splitlines() if ln.startswith("0::")), None)
    for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        f = Path(top) / (path or "/").lstrip("/") / "cgroup.controllers"
        if f.exists() and os.access(f.parent, os.W_OK) if user.is_root else f.exists():
            return set(f.read_text().split())
    return set()


def _leftovers() -> list[str]:
    found = []
    for top, _, dirs in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if d.startswith("sifbox-")]
    return found


def _sb(run_as: Any, who: Any, *argv: Any) -> subprocess.CompletedProcess[str]:
    return run_as(who, [CLI, *map(str, argv)], env=env_for(who), timeout=LAUNCH_TIMEOUT)


def _refused_for_user(proc: subprocess.CompletedProcess[str], who: Any) -> None:
    """A user without delegated v2 controllers: one clear line, then the test is skipped with it."""
    if who.is_root or {"memory", "pids", "cpu"} <= _v2_controllers(who):
        return
    assert proc.returncode == 126, proc.stderr
    line = proc.stderr.splitlines()[0]
    assert line.startswith("sifbox: error: can't limit the resources of ") and "cgroup" in line, proc.stderr
    pytest.skip(f"as a user: {line.partition(': ')[2].partition(': ')[2]}")


def test_memory_hog_is_oom_killed(run_as: Any, as_who: Any, action_images: ActionImages) -> None:
    proc = _sb(run_as, as_who, "exec", "--memory", "48m", action_images.sif, "sh", "-c",
               "grep -c sifbox- /proc/self/cgroup; " + HOG)  # fmt: skip
    _refused_for_user(proc, as_who)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "hog=137", proc.stdout  # SIGKILL by the OOM killer
    assert int(proc.stdout.splitlines()[0]) >= 1
    unlimited = _sb(run_as, as_who, "exec", "--memory", "400m", action_images.sif, "sh", "-c", HOG)
    assert unlimited.stdout.splitlines()[-1] == "hog=0", unlimited.stderr
    assert _leftovers() == []


def test_pids_limit_stops_forks(run_as: Any, as_who: Any, action_images: ActionImages) -> None:
    proc = _sb(run_as, as_who, "exec", "--pids-limit", "8", action_images.sif, "sh", "-c", FORKS)
    _refused_for_user(proc, as_who)
    assert "can't fork" in proc.stderr or "Resource temporarily unavailable" in proc.stderr, proc.stderr
    free = _sb(run_as, as_who, "exec", "--pids-limit", "64", action_images.sif, "sh", "-c", FORKS)
    assert (free.returncode, free.stdout.strip(), free.stderr) == (0, "done", "")
    assert _leftovers() == []


def test_cpus_sets_the_quota(run_as: Any, as_who: Any, action_images: ActionImages) -> None:
    """--cpus 0.5: half of each 100 ms period, read from the container's cgroup while it runs."""
    argv = [CLI, "exec", "--cpus", "0.5", str(action_images.sif), "sh", "-c", "cat /proc/self/cgroup; read x"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env_for(as_who))  # fmt: skip
    assert p.stdout is not None and p.stdin is not None
    lines = []
    while True:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith("0::"):
            break
    if not lines:
        out, err = p.communicate(timeout=LAUNCH_TIMEOUT)
        _refused_for_user(subprocess.CompletedProcess(argv, p.returncode, out, err), as_who)
        pytest.fail(err)
    paths = {c: path for ln in lines for _, cs, path in [ln.split(":", 2)] for c in cs.split(",")}
    if "cpu" in paths and paths["cpu"] != "/":
        quota = Path("/sys/fs/cgroup/cpu", paths["cpu"].lstrip("/"), "cpu.cfs_quota_us").read_text().split()
        period = Path("/sys/fs/cgroup/cpu", paths["cpu"].lstrip("/"), "cpu.cfs_period_us").read_text().split()
        assert (quota, period) == (["50000"], ["100000"])
    else:
        top = "/sys/fs/cgroup" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "/sys/fs/cgroup/unified"
        assert Path(top, paths[""].lstrip("/"), "cpu.max").read_text().split() == ["50000", "100000"]
    p.stdin.write("\n")
    p.stdin.close()
    assert p.wait(LAUNCH_TIMEOUT) == 0
    assert _leftovers() == []


def test_bad_limits(run_as: Any, action_images: ActionImages) -> None:
    for argv, part in ((["--memory", "lots"], "--memory `lots`"), (["--memory-swap", "1g"], "without --memory"),
                       (["--cpus", "0"], "--cpus `0`"), (["--pids-limit", "-3"], "--pids-limit")):  # fmt: skip
        proc = _sb(run_as, images.user_named("root"), "exec", *argv, action_images.sif, "true")
        assert proc.returncode == 125 and part in proc.stderr, proc.stderr


def test_oci_resources_as_runc(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """linux.resources of config.json: the memory limit OOM-kills the hog and the pids limit stops
    the forks, under sifbox as under runc (root; runc has no cgroups rootless here)."""
    oci_bundle.become_subreaper()

    def edit(doc: dict[str, Any]) -> None:
        doc["linux"]["resources"] = {"memory": {"limit": 48 << 20}, "pids": {"limit": 8}}

    bundle = oci_bundle.make(shared_tmp / "b", ["sh", "-c", HOG + "; " + FORKS], uid=as_who.uid, gid=as_who.gid,
                             edit=edit)  # fmt: skip
    runtimes = [("sifbox", [CLI, "oci"])] + ([("runc", ["runc"])] if as_who.is_root and os.path.exists("/usr/sbin/runc") else [])
    outs = {}
    for name, argv in runtimes:
        proc = run_as(as_who, [*argv, "--root", shared_tmp / f"state-{name}", "run", "r1"], cwd=bundle)
        if name == "sifbox":
            _refused_for_user(proc, as_who)
        outs[name] = (proc.returncode, proc.stdout, "can't fork" in proc.stderr)
    assert outs["sifbox"] == (2, "hog=137\n", True), outs  # the shell gives up when it can't fork
    if "runc" in outs:
        assert outs["runc"] == outs["sifbox"]
    assert _leftovers() == []


def test_oci_exec_joins_the_containers_cgroup(shared_tmp: Path, run_as: Any) -> None:
    """A process exec'd in a container with linux.resources is limited as the container is."""
    oci_bundle.become_subreaper()
    root = images.user_named("root")

    def edit(doc: dict[str, Any]) -> None:
        doc["linux"]["resources"] = {"memory": {"limit": 48 << 20}}

    bundle = oci_bundle.make(shared_tmp / "b", ["sleep", "100"], edit=edit)
    state = shared_tmp / "state"
    pid_file = shared_tmp / "pid"
    with open(shared_tmp / "out", "w") as out:
        r = run_as(root, [CLI, "oci", "--root", state, "run", "-d", "--pid-file", pid_file, "c1"], cwd=bundle,
                   capture_output=False, stdout=out, stderr=out)  # fmt: skip
    assert r.returncode == 0, (shared_tmp / "out").read_text()
    try:
        r = run_as(root, [CLI, "oci", "--root", state, "exec", "c1", "sh", "-c", HOG])
        assert r.stdout == "hog=137\n", r.stderr
    finally:
        run_as(root, [CLI, "oci", "--root", state, "delete", "--force", "c1"])
        oci_bundle.reap(int(pid_file.read_text()))
    assert _leftovers() == []


def _delegated_v2(user: Any) -> Path:
    """A v2 cgroup delegated to `user` as a site without systemd delegates one (mkdir, then chown
    of the directory, cgroup.procs, cgroup.subtree_control, cgroup.threads)."""
    top = next((Path(t) for t in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified") if Path(t, "cgroup.controllers").exists()), None)  # fmt: skip
    if top is None:
        pytest.skip("no cgroup v2 hierarchy on this machine")
    sub = top / f"sifbox-delegated-{os.getpid()}"
    sub.mkdir()
    for path in (sub, sub / "cgroup.procs", sub / "cgroup.subtree_control", sub / "cgroup.threads"):
        os.chown(path, user.uid, user.gid)
    return sub


def _undelegate(sub: Path) -> None:
    """Move what is left in `sub` (and below) to its parent, then remove it."""
    for path in sorted(sub.rglob("cgroup.procs"), key=lambda p: -len(p.parts)):
        for pid in path.read_text().split():
            try:
                (sub.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        if path.parent != sub:
            path.parent.rmdir()
    sub.rmdir()


def test_user_on_a_delegated_v2_subtree(run_as: Any, test_user: Any, shared_tmp: Path) -> None:
    """A user whose shell starts in a delegated v2 cgroup: `sifbox doctor` says which limits work
    there (the freezer always: cgroup.freeze; memory, cpu, pids only if the subtree has those
    controllers, which this hybrid machine keeps on v1), and `sifbox oci pause`/`resume` freeze
    and thaw the user's container through its cgroup below the delegated one."""
    oci_bundle.become_subreaper()
    sub = _delegated_v2(test_user)
    try:
        have = set((sub / "cgroup.controllers").read_text().split())

        def in_sub(*argv: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
            return run_as(None, ["sh", "-c", f'echo $$ > {sub}/cgroup.procs && exec runuser -u {test_user.name} -- "$@"',
                                 "sh", CLI, *map(str, argv)], env=env_for(test_user), timeout=LAUNCH_TIMEOUT, **kw)  # fmt: skip

        r = in_sub("doctor", "--json")
        rows = {c["check"]: c for c in json.loads(r.stdout)}
        assert rows["cgroups:freezer"]["status"] == "ok", rows["cgroups:freezer"]
        assert rows["cgroups:freezer"]["detail"].endswith("through cgroups v2")
        for check, controller in (("cgroups:memory", "memory"), ("cgroups:pids", "pids"), ("cgroups:cpus", "cpu")):
            if controller in have:
                assert rows[check]["status"] == "ok", rows[check]
            else:
                assert rows[check]["status"] == "warn", rows[check]
                assert f"controller {controller} is not available in `{sub}" in rows[check]["detail"], rows[check]

        bundle = oci_bundle.make(shared_tmp / "b", ["sh", "-c", "while true; do sleep 0.05; done"],
                                 uid=test_user.uid, gid=test_user.gid)  # fmt: skip
        state = shared_tmp / "state"
        pid_file = shared_tmp / "pid"
        # run -d: the container keeps the command's stdout and stderr, so no pipes for them
        r = in_sub("oci", "--root", state, "run", "-d", "--pid-file", pid_file, "--bundle", bundle, "d1",
                   capture_output=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        assert r.returncode == 0
        try:
            pids = json.loads(in_sub("oci", "--root", state, "ps", "--format", "json", "d1").stdout)
            # the container's shell (its sleeps come and go)
            assert pids and min(pids) in map(int, (sub / "sifbox-oci-d1" / "cgroup.procs").read_text().split())
            assert in_sub("oci", "--root", state, "pause", "d1").returncode == 0
            assert json.loads(in_sub("oci", "--root", state, "state", "d1").stdout)["status"] == "paused"
            assert (sub / "sifbox-oci-d1" / "cgroup.freeze").read_text().strip() == "1"
            r = in_sub("oci", "--root", state, "resume", "d1")
            assert r.returncode == 0, r.stderr
            assert json.loads(in_sub("oci", "--root", state, "state", "d1").stdout)["status"] == "running"
        finally:
            assert in_sub("oci", "--root", state, "delete", "--force", "d1").returncode == 0
            oci_bundle.reap(int(pid_file.read_text()))
        assert not (sub / "sifbox-oci-d1").exists()
    finally:
        _undelegate(sub)
