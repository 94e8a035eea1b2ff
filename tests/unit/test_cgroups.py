"""cgroup limits as data (sifbox.hpc.cgroups): options and linux.resources into limits, limits into
the files of cgroups v1 and v2, the layout chosen. The cgroups themselves are exercised in
tests/integration/test_cgroups.py; v2's file names are checked here because this machine's v2
hierarchy has no memory, cpu or pids controller to write them to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sifbox.hpc import cgroups
from sifbox.hpc.cgroups import Limits
from sifbox.util.errors import UsageError


@pytest.mark.parametrize("text, value", [("512m", 512 << 20), ("2g", 2 << 30), ("2GiB", 2 << 30), ("1048576", 1 << 20),
                                         ("64k", 64 << 10), ("1.5g", 3 << 29), ("100b", 100)])  # fmt: skip
def test_sizes(text: str, value: int) -> None:
    assert cgroups.parse_size(text, "--memory") == value


@pytest.mark.parametrize("text", ["lots", "", "-1m", "0", "12q"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError):
        cgroups.parse_size(text, "--memory")


def test_options() -> None:
    assert cgroups.from_options() is None
    assert cgroups.from_options("1g", "2g", "1.5", "100") == Limits(1 << 30, 2 << 30, 1.5, 100)
    assert cgroups.from_options("1g", "-1") == Limits(1 << 30, -1, None, None)
    for args, part in ((("1g", "512m"), "less than --memory"), ((None, "1g"), "without --memory"),
                       ((None, None, "x"), "not a number"), ((None, None, "5000"), "out of range"),
                       ((None, None, None, "0"), "positive")):  # fmt: skip
        with pytest.raises(UsageError, match=part):
            cgroups.from_options(*args)


def test_oci_resources() -> None:
    assert cgroups.from_oci(None) is None
    assert cgroups.from_oci({"devices": [{"allow": False, "access": "rwm"}]}) is None
    assert cgroups.from_oci({"memory": {"limit": 1 << 20, "swap": 2 << 20}, "cpu": {"quota": 50000, "period": 100000},
                             "pids": {"limit": 10}}) == Limits(1 << 20, 2 << 20, 0.5, 10)  # fmt: skip
    assert cgroups.from_oci({"cpu": {"quota": 200000}}) == Limits(None, None, 2.0, None)


def test_files_v1_and_v2() -> None:
    limits = Limits(1 << 30, 3 << 30, 1.5, 64)
    assert cgroups.files(limits, 1) == {
        "memory": [("memory.limit_in_bytes", str(1 << 30)), ("memory.memsw.limit_in_bytes", str(3 << 30))],
        "cpu": [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "150000")],
        "pids": [("pids.max", "64")],
    }
    assert cgroups.files(limits, 2) == {
        "memory": [("memory.max", str(1 << 30)), ("memory.swap.max", str(2 << 30))],
        "cpu": [("cpu.max", "150000 100000")],
        "pids": [("pids.max", "64")],
    }
    assert cgroups.files(Limits(1 << 20, -1), 2)["memory"][1] == ("memory.swap.max", "max")


def test_own_paths() -> None:
    text = "12:pids:/user.slice\n4:memory:/a/b\n1:name=systemd:/x\n2:cpu,cpuacct:/c\n0::/user.slice/u.scope\n"
    assert cgroups.own_paths(text) == {"pids": "/user.slice", "memory": "/a/b", "systemd": "/x", "cpu": "/c",
                                       "cpuacct": "/c", "": "/user.slice/u.scope"}  # fmt: skip


def test_v2_chosen_when_its_controllers_are_there(tmp_path: Path) -> None:
    """A v2 hierarchy whose caller's cgroup has the controllers is used (its subtree_control
    enabled); without them, v1 for root, or the reason."""
    base = tmp_path / "user.slice"
    base.mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    version, places, _ = cgroups._choose(str(tmp_path), {"": "/user.slice"}, ["memory", "pids"])
    assert (version, places) == (2, {"": str(base)})
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids"
    (base / "cgroup.controllers").write_text("cpu\n")
    version, _, reason = cgroups._choose(str(tmp_path), {"": "/user.slice"}, ["memory", "pids"])
    assert version == 0  # as root: no v1 hierarchy in this tree either
    assert "controllers memory, pids are not available" in reason


def test_probe_changes_nothing(tmp_path: Path) -> None:
    """What `sifbox doctor` reports: the layout the limits would use, without enabling anything."""
    base = tmp_path / "u"
    base.mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    assert cgroups._choose(str(tmp_path), {"": "/u"}, ["memory"], enable=False)[0] == 2
    assert (base / "cgroup.subtree_control").read_text() == ""
    version, reason = cgroups.probe()  # this machine: some answer, and a reason when none
    assert version in (0, 1, 2) and (version or reason)


def test_report_says_which_limits_work_and_why_not(tmp_path: Path) -> None:
    """`sifbox doctor`'s cgroup lines: a v2 cgroup with memory and pids but no cpu gives
    --memory and --pids-limit through v2, the freezer (cgroup.freeze, in every v2 cgroup) too,
    and --cpus not, with the reason; nothing is enabled."""
    base = tmp_path / "user.slice"
    base.mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.controllers").write_text("memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    layout, rows = cgroups.report(str(tmp_path), "0::/user.slice\n")
    assert layout == "cgroups v2 (unified), v2 controllers here: memory pids"
    got = {name: (version, reason) for name, _, version, reason in rows}
    assert list(got) == [n for n, _, _ in cgroups.FEATURES] == ["memory", "cpus", "pids", "freezer"]
    assert got["memory"] == (2, "")
    assert got["pids"] == (2, "")
    assert got["freezer"] == (2, "")
    version, reason = got["cpus"]
    assert version == 0 and "the cgroup v2 controller cpu is not available in" in reason
    assert (base / "cgroup.subtree_control").read_text() == ""


def test_report_hybrid_lists_the_v2_controllers(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    layout, rows = cgroups.report(str(tmp_path), "4:memory:/\n0::/\n")
    assert layout == "cgroups v1/v2 hybrid, v2 controllers here: hugetlb"
    assert all(version == 0 and reason for name, _, version, reason in rows if name != "freezer")


def test_v1_keeps_the_freezer_when_v2_lacks_the_limits(tmp_path: Path) -> None:
    """A hybrid whose v2 half has no controllers: root's limits go to v1, the freezer with them
    (it was dropped along with v2's cgroup.freeze)."""
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    for c in ("memory", "freezer"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    version, places, _ = cgroups._choose(str(tmp_path), {"": "/", "memory": "/", "freezer": "/"}, ["memory", "freezer"],
                                         enable=False)  # fmt: skip
    if os.geteuid() == 0:
        assert (version, sorted(places)) == (1, ["freezer", "memory"])


# --- Apptainer's other limit options ---------------------------------------------------------------


def test_the_other_options() -> None:
    limits = cgroups.from_options(cpu_shares="123", cpuset_cpus="0", cpuset_mems="0", memory_reservation="500M",
                                  oom_kill_disable=True, blkio_weight="50", cpu_count=2)  # fmt: skip
    assert limits == Limits(cpu_shares=123, cpuset_cpus="0", cpuset_mems="0", memory_reservation=500 << 20,
                            oom_kill_disable=True, blkio_weight=50)  # fmt: skip
    assert limits.controllers() == ["memory", "cpu", "cpuset", "io"]
    assert cgroups.from_options(oom_kill_disable=False) is None
    assert cgroups.from_options(cpu_shares="0", blkio_weight=" 0") is None  # Apptainer's "0 to disable"
    assert cgroups.from_options(cpuset_cpus=" 0-1, 3 ", cpu_count=4).cpuset_cpus == "0-1,3"  # type: ignore[union-attr]


@pytest.mark.parametrize("kw, part", [
    ({"cpu_shares": "1"}, "out of range (2 to 262144)"), ({"cpu_shares": "262145"}, "out of range"),
    ({"cpu_shares": "-5"}, "not a number"), ({"cpu_shares": "1e3"}, "not a number"),
    ({"blkio_weight": "9"}, "out of range (10 to 1000)"), ({"blkio_weight": "1001"}, "out of range"),
    ({"memory_reservation": "-1m"}, "--memory-reservation"), ({"cpuset_cpus": "2"}, "CPU 2 does not exist"),
    ({"cpuset_cpus": "1-0"}, "is not a range"), ({"cpuset_cpus": "0,,1"}, "not a list"),
    ({"cpuset_cpus": "a"}, "not a list"), ({"cpuset_mems": "0-99999999"}, "not a list"),
    ({"cpuset_cpus": "٣"}, "not a list"),
])  # fmt: skip
def test_bad_other_options(kw: dict[str, str], part: str) -> None:
    with pytest.raises(UsageError, match=part.replace("(", r"\(").replace(")", r"\)")):
        cgroups.from_options(cpu_count=2, **kw)  # type: ignore[arg-type]


def test_runc_conversions() -> None:
    """cpu.shares to cpu.weight and blkio.weight to io.weight as runc: the ends of the ranges map
    to the ends, 1024 (the default share) to 39, 123 to 5 (Apptainer's e2e accepts 5)."""
    assert [cgroups.shares_to_weight(s) for s in (2, 123, 1024, 262144)] == [1, 5, 39, 10000]
    assert [cgroups.blkio_to_io_weight(w) for w in (10, 50, 500, 1000)] == [1, 405, 4950, 10000]


def test_files_of_the_other_options() -> None:
    """Apptainer's e2e expectations (e2e/cgroups resourceFlagTests): their flags, their files."""
    limits = Limits(cpu_shares=123, cpuset_cpus="0", cpuset_mems="0", memory_reservation=524288000,
                    oom_kill_disable=True, blkio_weight=50)  # fmt: skip
    assert cgroups.files(limits, 1) == {
        "memory": [("memory.soft_limit_in_bytes", "524288000"), ("memory.oom_control", "1")],
        "cpu": [("cpu.shares", "123")],
        "cpuset": [("cpuset.cpus", "0"), ("cpuset.mems", "0")],
        "io": [("blkio.weight", "50")],
    }
    assert cgroups.files(limits, 2) == {
        "memory": [("memory.low", "524288000")],
        "cpu": [("cpu.weight", "5")],
        "cpuset": [("cpuset.cpus", "0"), ("cpuset.mems", "0")],
        "io": [("io.weight", "default 405")],
    }
    bfq = {"io.bfq.weight", "blkio.bfq.weight"}.__contains__
    assert cgroups.files(limits, 2, bfq)["io"] == [("io.bfq.weight", "50")]  # e2e: `default 50`
    assert cgroups.files(limits, 1, bfq)["io"] == [("blkio.bfq.weight", "50")]
    assert cgroups.ignored(limits, 2) and not cgroups.ignored(limits, 1)
    assert cgroups.ignored(Limits(memory=1), 2) == []


def test_oci_resources_of_the_other_options() -> None:
    doc = {"cpu": {"shares": 512, "cpus": "0-1", "mems": "0"}, "memory": {"reservation": 1 << 20,
           "disableOOMKiller": True}, "blockIO": {"weight": 300}}  # fmt: skip
    assert cgroups.from_oci(doc) == Limits(cpu_shares=512, cpuset_cpus="0-1", cpuset_mems="0",
                                           memory_reservation=1 << 20, oom_kill_disable=True, blkio_weight=300)  # fmt: skip
    # hostile or out-of-range values are left out, as absent
    assert cgroups.from_oci({"cpu": {"shares": 1, "cpus": "x;y"}, "blockIO": {"weight": 5000},
                             "memory": {"reservation": -1, "disableOOMKiller": "yes"}}) is None  # fmt: skip
    assert cgroups.from_oci({"cpu": {"shares": True}, "pids": {"limit": True}}) is None


def test_v1_names_and_optional_controllers(tmp_path: Path) -> None:
    """`io` is v1's `blkio`; optional controllers join when their hierarchy is there, and are
    skipped (not refused) when not."""
    for c in ("blkio", "memory", "pids"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    own = {"blkio": "/", "memory": "/m", "pids": "/"}
    version, places, reason = cgroups._choose(str(tmp_path), own, ["io"], enable=False,
                                              optional=("memory", "pids", "cpuacct"))  # fmt: skip
    if os.geteuid() == 0:
        assert version == 1
        assert {c: os.path.normpath(p) for c, p in places.items()} == {
            "io": str(tmp_path / "blkio"), "memory": str(tmp_path / "memory/m"), "pids": str(tmp_path / "pids")}
    else:
        assert version == 0 and "need root" in reason


def test_remove_left_touches_only_the_named_cgroups_under_the_root(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`oci delete` removes the cgroups a killed watcher left, from paths in the container's
    state file, which its user may edit: only directories under the cgroup root whose last
    part is the container's own name are touched."""
    from sifbox.hpc.cgroups import remove_left

    root = tmp_path / "cg"
    ours = root / "cpu" / "sifbox-oci-c1"
    other = root / "cpu" / "sifbox-oci-c2"
    outside = tmp_path / "elsewhere" / "sifbox-oci-c1"
    for d in (ours, other, outside):
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    (ours / "cgroup.procs").unlink()  # an empty cgroup directory (cgroupfs lists no files in rmdir's way)
    sneaky = f"{root}/cpu/../../elsewhere/sifbox-oci-c1"
    remove_left([str(other), str(outside), sneaky, 7, str(ours)], "sifbox-oci-c1", root=str(root))
    assert not ours.exists()
    assert other.exists() and outside.exists()
    remove_left("not a list", "sifbox-oci-c1", root=str(root))
