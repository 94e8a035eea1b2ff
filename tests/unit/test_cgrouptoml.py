"""`--apply-cgroups FILE` (sifbox.hpc.cgrouptoml): Apptainer's cgroups TOML into limits. Its e2e
test files (e2e/testdata/cgroups) parse as they do there; hostile files (huge, a FIFO, a link
to /dev/zero, wrong types, negative numbers, unknown keys) are refused by name, without hanging."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sifbox.hpc import cgrouptoml
from sifbox.hpc.cgroups import Limits
from sifbox.util.errors import NotAvailableError, UsageError


def _load(tmp_path: Path, text: str) -> Limits | None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return cgrouptoml.load(str(f), cpu_count=2)


@pytest.mark.parametrize("text, limits", [
    ("[cpu]\n  shares = 512\n\n\n", Limits(cpu_shares=512)),  # cpu_success.toml
    ("[memory]\n  limit = 1024\n", Limits(memory=1024)),  # memory_limit.toml
    ("[pids]\n  limit = 1024\n", Limits(pids=1024)),  # pids_limit.toml
    (("[memory]\nlimit = 1048576\nreservation = 524288\nswap = 2097152\ndisableOOMKiller = true\n"
      "[cpu]\nquota = 50000\nperiod = 100000\ncpus = \"0-1\"\nmems = \"0\"\n[blockIO]\nweight = 500\n"),
     Limits(1 << 20, 2 << 20, 0.5, None, None, "0-1", "0", 1 << 19, True, 500)),
    ("[memory]\nlimit = 1048576\nswap = -1\n", Limits(memory=1 << 20, memory_swap=-1)),
    ("# nothing\n[memory]\n", None),
    ("[memory]\ndisableOOMKiller = false\n", None),
])  # fmt: skip
def test_apptainers_files(tmp_path: Path, text: str, limits: Limits | None) -> None:
    assert _load(tmp_path, text) == limits


@pytest.mark.parametrize("text, part", [
    ("# This is an invalid toml file\nmemory]\n  limit = 1024\n", "not TOML"),  # invalid.toml
    ("[cpu]\nshares = \"512\"\n", "`cpu.shares` must be an integer"),
    ("[cpu]\nshares = 5.0\n", "`cpu.shares` must be an integer"),
    ("[memory]\nlimit = true\n", "`memory.limit` must be an integer"),
    ("[memory]\ndisableOOMKiller = 1\n", "must be true or false"),
    ("[cpu]\ncpus = 0\n", "`cpu.cpus` must be a string"),
    ("memory = 5\n", "`memory` is not a table"),
    ("[memory]\nlimit = -1\n", "`memory.limit` is -1: it must be more than 0"),
    ("[pids]\nlimit = -1\n", "`pids.limit` is -1"),
    ("[pids]\nlimit = 0\n", "`pids.limit` is 0"),
    ("[memory]\nreservation = -4096\n", "`memory.reservation` is -4096"),
    ("[memory]\nlimit = 4096\nswap = -2\n", "`memory.swap` is -2"),
    ("[memory]\nlimit = 8192\nswap = 4096\n", "less than `memory.limit`"),
    ("[memory]\nswap = 4096\n", "needs `memory.limit`"),
    ("[cpu]\nshares = 1\n", "`cpu.shares` is 1: it must be from 2 to 262144"),
    ("[cpu]\nquota = 100\n", "0.001 CPUs: out of range"),
    ("[cpu]\nperiod = 100000\n", "`cpu.period` needs `cpu.quota`"),
    ("[cpu]\nquota = 50000\nperiod = 10\n", "`cpu.period` is 10"),
    ("[cpu]\ncpus = \"0-9\"\n", "CPU 9 does not exist here"),
    ("[cpu]\ncpus = \"1-0\"\n", "is not a range"),
    ("[cpu]\nmems = \"0;1\"\n", "not a list of numbers"),
    ("[blockIO]\nweight = 5\n", "`blockIO.weight` is 5: it must be from 10 to 1000"),
    ("[memory]\nlimit = 99999999999999999999\n", "`memory.limit` is out of range"),
    ("[bogus]\na = 1\n", "unknown key `bogus`"),
    ("[memory]\nlimits = 1024\n", "unknown key `memory.limits`"),
    ("[cpu]\n\"shares\\u0000\" = 1\n", "unknown key"),
])  # fmt: skip
def test_bad_files(tmp_path: Path, text: str, part: str) -> None:
    with pytest.raises(UsageError, match=part.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as err:
        _load(tmp_path, text)
    assert err.value.message.startswith("can't use --apply-cgroups `")


@pytest.mark.parametrize("text, name", [
    ("[[devices]]\nallow = false\naccess = \"rwm\"\n", "devices"),
    ("[unified]\n\"pids.max\" = \"512\"\n", "unified"),
    ("[[hugepageLimits]]\npageSize = \"2MB\"\nlimit = 1\n", "hugepageLimits"),
    ("[memory]\nswappiness = 10\n", "memory.swappiness"),
    ("[memory]\nkernel = 1024\n", "memory.kernel"),
    ("[cpu]\nrealtimeRuntime = 5\n", "cpu.realtimeRuntime"),
    ("[[blockIO.weightDevice]]\nmajor = 8\nminor = 0\nweight = 10\n", "blockIO.weightDevice"),
])  # fmt: skip
def test_keys_not_applied_are_refused_by_name(tmp_path: Path, text: str, name: str) -> None:
    with pytest.raises(NotAvailableError, match=f"sifbox does not apply `{name}`"):
        _load(tmp_path, text)


def test_hostile_paths_are_refused_without_reading(tmp_path: Path) -> None:
    """A huge file, a FIFO with no writer, a link to /dev/zero, a directory: each refused at
    once (a thread guards against a hang)."""
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n[cpu]\nshares = 2\n")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    cases = [(big, "larger than 64 KiB"), (fifo, "not a regular file"), (zero, "not a regular file"),
             (tmp_path, "not a regular file"), (tmp_path / "missing.toml", "no such file"),
             (tmp_path / "big.toml/x", "not a directory")]  # fmt: skip
    outcomes: list[str] = []

    def run() -> None:
        for path, _ in cases:
            try:
                cgrouptoml.load(str(path))
                outcomes.append("loaded")
            except UsageError as err:
                outcomes.append(err.message)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "reading a hostile --apply-cgroups path hung"
    for (_, part), got in zip(cases, outcomes):
        assert part in got, (part, got)


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_bytes(b"[cpu]\nshares = 2 # \xff\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        cgrouptoml.load(str(f))
