"""`instance stats` rendering (sifbox.cli.commands.instancestats) and the limit options' parsing
(--apply-cgroups is refused with the other limit options, as Apptainer)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from sifbox.cli.commands import action, instancestats
from sifbox.util.errors import UsageError


@pytest.mark.parametrize("n, text", [(0, "0B"), (1023, "1023B"), (1024, "1KiB"), (262144000, "250MiB"),
                                     (1560000, "1.488MiB"), (3 << 30, "3GiB")])  # fmt: skip
def test_sizes_as_docker_units(n: int, text: str) -> None:
    assert instancestats.size(n) == text


def test_row_and_table() -> None:
    s0 = {"cpu": {"usage": {"total": 1_000_000}}}
    s1 = {"cpu": {"usage": {"total": 501_000_000}}, "memory": {"usage": {"usage": 1 << 20, "limit": 262144000}},
          "pids": {"current": 3, "limit": 50},
          "blkio": {"ioServiceBytesRecursive": [{"op": "Read", "value": 4096}, {"op": "Write", "value": 2048},
                                                {"op": "Total", "value": 6144}]}}  # fmt: skip
    row = instancestats.row("web", (0, s0), (1_000_000_000, s1))
    assert row == ("web", "50.00%", "1MiB / 250MiB", "0.40%", "4KiB / 2KiB", "3")
    lines = instancestats.render_table([row]).splitlines()
    assert lines[0].split("    ")[:3] == ["INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT"]
    assert lines[0].index("CPU USAGE") == lines[1].index("50.00%") == len("INSTANCE NAME") + 4
    doc = json.loads(instancestats.render_json(s1))
    assert doc["memory_stats"]["usage"] == {"usage": 1 << 20, "limit": 262144000}
    assert doc["pids_stats"] == {"current": 3, "limit": 50}
    assert doc["cpu_stats"]["cpu_usage"]["total_usage"] == 501_000_000


def test_no_memory_limit_shows_the_machines_memory() -> None:
    row = instancestats.row("x", (0, {}), (1, {"memory": {"usage": {"usage": 1, "limit": 0}}}))
    assert not row[2].endswith(" / 0B")


def test_apply_cgroups_is_not_combined_with_limit_options(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[pids]\nlimit = 10\n")
    args = types.SimpleNamespace(apply_cgroups=str(f), memory="1g", cpu_shares="5")
    with pytest.raises(UsageError, match="can't use --apply-cgroups with --memory, --cpu-shares"):
        action._limits(args, None)
    assert action._limits(types.SimpleNamespace(apply_cgroups=str(f)), "inst").pids == 10
    assert action._limits(types.SimpleNamespace(oom_kill_disable=True), None).oom_kill_disable is True


def test_limit_options_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As every action option: SIFBOX_<OPTION>, then APPTAINER_, then SINGULARITY_ (Apptainer's
    EnvKeys: MEMORY, CPU_SHARES, CPUSET_CPUS, OOM_KILL_DISABLE, APPLY_CGROUPS, ...)."""
    monkeypatch.setenv("APPTAINER_CPU_SHARES", "300")
    monkeypatch.setenv("SINGULARITY_OOM_KILL_DISABLE", "1")
    limits = action._limits(types.SimpleNamespace(), None)
    assert (limits.cpu_shares, limits.oom_kill_disable) == (300, True)
    monkeypatch.setenv("SIFBOX_CPU_SHARES", "400")
    assert action._limits(types.SimpleNamespace(), None).cpu_shares == 400
    assert action._limits(types.SimpleNamespace(cpu_shares="500"), None).cpu_shares == 500
    f = tmp_path / "c.toml"
    f.write_text("[pids]\nlimit = 10\n")
    monkeypatch.setenv("APPTAINER_APPLY_CGROUPS", str(f))
    with pytest.raises(UsageError, match="with --cpu-shares, --oom-kill-disable"):
        action._limits(types.SimpleNamespace(), None)
    for name in ("APPTAINER_CPU_SHARES", "SINGULARITY_OOM_KILL_DISABLE", "SIFBOX_CPU_SHARES"):
        monkeypatch.delenv(name)
    assert action._limits(types.SimpleNamespace(), None).pids == 10
