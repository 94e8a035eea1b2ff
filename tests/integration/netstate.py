"""The host's network state that CNI plugins touch, saved and restored around network tests.

The plugins leave what CNI runtimes leave by design: the bridge, net.ipv4.ip_forward=1, the
iptables tables and chains they made (empty once DEL ran). `restored()` puts all of it back as
it was, and reports what DEL should have removed but did not (a rule, a veth, a lease).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def rules() -> list[str]:
    """iptables-save's rules (`-A` lines), counters dropped."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in out.splitlines() if line.startswith("-A"))


def tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {line.strip() for line in out.splitlines() if line.startswith("table")}


def chains() -> set[tuple[str, str, str]]:
    """(family, table, chain) of every nftables chain."""
    out = subprocess.run(["nft", "list", "chains"], capture_output=True, text=True, check=False).stdout
    found, table = set(), None
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["table"] and len(words) >= 3:
            table = (words[1], words[2])
        elif words[:1] == ["chain"] and table and len(words) >= 2:
            found.add((*table, words[1]))
    return found


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def veths() -> set[str]:
    return {n for n in links() if n.startswith("veth")}


@contextlib.contextmanager
def restored(bridges: tuple[str, ...], ipam: tuple[Path, ...] = ()) -> Iterator[list[str]]:
    """Yield a list to which the caller may add problems; restore the host afterwards (the
    `ipam` directories of host-local too, when they are new: its bookkeeping, never a lease)."""
    forward, before_tables, before_rules, before_links = FORWARD.read_text(), tables(), rules(), links()
    before_chains = chains()
    new_ipam = [d for d in ipam if not d.exists()]
    problems: list[str] = []
    try:
        yield problems
    finally:
        # A container's own rules (its chains CNI-<hash>, CNI-DN-<hash>, rules naming its id);
        # the plugins' shared chains (CNI-HOSTPORT-*, CNI-FORWARD) stay by design, until below.
        left = [r for r in rules() if r not in before_rules and re.search(r'CNI-DN-|CNI-[0-9a-f]{20}|id: \\?"sifbox', r)]
        if left:
            problems.append(f"iptables rules left: {left}")
        for name in links() - before_links:  # (other links may come and go: other work on the machine)
            if name in bridges:
                subprocess.run(["ip", "link", "del", name], check=False)
            elif name.startswith("veth"):
                problems.append(f"veth left: {name}")
        for table in tables() - before_tables:
            subprocess.run(["nft", "delete", *table.split()], check=False)
        for family, table, chain in chains() - before_chains:  # chains the plugins made in tables that were there
            subprocess.run(["nft", "flush", "chain", family, table, chain], check=False)
            subprocess.run(["nft", "delete", "chain", family, table, chain], check=False)
        FORWARD.write_text(forward)
        for d in new_ipam:
            if leases(d):
                problems.append(f"IPAM leases left in {d}: {leases(d)}")
            shutil.rmtree(d, ignore_errors=True)


def leases(data_dir: Path) -> list[str]:
    """The IPAM leases host-local holds in `data_dir` (its lock and bookkeeping aside)."""
    if not data_dir.exists():
        return []
    return sorted(p.name for p in data_dir.rglob("*") if p.is_file() and re.fullmatch(r"[0-9a-f.:]+", p.name)
                  and not p.name.startswith("last_"))  # fmt: skip


def cached_results() -> list[str]:
    d = "/run/sifbox/network"
    return sorted(os.listdir(d)) if os.path.isdir(d) else []
