"""Launch time with CNI networks: `sifbox exec --net --network ...` next to the plugins alone.

    /usr/bin/python3 benchmarks/network.py [--runs 15] [--warmup 2] [--sifbox PATH]

Run as root. Builds the busybox-static SIF of benchmarks/startup.py and times `/bin/true` in it:
without --net, with `--net --network none` (loopback only), `bridge` and `ptp` (sifbox's shipped
configurations: bridge|ptp, firewall, portmap). The peer row runs the same three plugins of the
bridge network by hand (ADD in order with prevResult, DEL in reverse) for a network namespace held
by `unshare --net sleep`, with no container at all: what the plugins cost by themselves. Rows are
taken round-robin (one run of each per round, so that load from elsewhere weighs on all alike);
each shows the median and minimum wall time and the ratio of the median to the launch without
--net. The host's bridge, nftables tables and ip_forward are restored afterwards. Prints a table
and never asserts timings. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import build_images

PLUGINS = "/usr/lib/cni"
BRIDGE = [
    {"type": "bridge", "bridge": "sbxbench0", "isGateway": True, "ipMasq": True,
     "ipam": {"type": "host-local", "subnet": "10.79.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "firewall"},
    {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
]  # fmt: skip


def plugins_alone(run: int) -> None:
    """ADD then DEL of BRIDGE's plugins for a fresh network namespace."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        netns = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):
            if os.readlink(netns) != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.001)
        prev = None
        for command, chain in (("ADD", BRIDGE), ("DEL", list(reversed(BRIDGE)))):
            for plugin in chain:
                conf = {**plugin, "name": "sbxbench", "cniVersion": "1.0.0"}
                if prev is not None:
                    conf["prevResult"] = prev
                env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{os.getpid()}x{run}", "CNI_NETNS": netns,
                       "CNI_IFNAME": "eth0", "CNI_PATH": PLUGINS, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # fmt: skip
                out = subprocess.run([f"{PLUGINS}/{plugin['type']}"], input=json.dumps(conf).encode(), env=env,
                                     capture_output=True, check=True).stdout  # fmt: skip
                if command == "ADD":
                    prev = json.loads(out)
    finally:
        holder.kill()
        holder.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run me as root: CNI networks are root's", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="sifbox-bench-net."))
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    try:
        os.chmod(tmp, 0o755)
        sif = build_images(tmp, args.sifbox).sif
        if sif is None:
            print("can't build the image", file=sys.stderr)
            return 1
        exec_ = [args.sifbox, "exec"]
        rows = {
            "sifbox exec (no --net)": lambda _: subprocess.run([*exec_, str(sif), "true"], check=True),
            "sifbox exec --net --network none": lambda _: subprocess.run(
                [*exec_, "--net", "--network", "none", str(sif), "true"], check=True),
            "sifbox exec --net --network bridge": lambda _: subprocess.run(
                [*exec_, "--net", "--network", "bridge", str(sif), "true"], check=True),
            "sifbox exec --net --network ptp": lambda _: subprocess.run(
                [*exec_, "--net", "--network", "ptp", str(sif), "true"], check=True),
            "peer: bridge, firewall, portmap ADD+DEL alone": plugins_alone,
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in rows}
        for run in range(args.warmup + args.runs):
            for name, row in rows.items():
                start = time.perf_counter()
                row(run)
                if run >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times["sifbox exec (no --net)"])
        load = os.getloadavg()[0]
        print(f"{args.runs} rounds, root, load average {load:.1f} on {os.cpu_count()} CPUs\n")
        print(f"| {'row':46} | median s | min s  | ratio |")
        print(f"|{'-' * 48}|----------|--------|-------|")
        for name, values in times.items():
            med = statistics.median(values)
            print(f"| {name:46} | {med:8.3f} | {min(values):6.3f} | {med / base:5.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
        now = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        for bridge in ("sbr0", "sbxbench0"):
            if f": {bridge}:" in now and f": {bridge}:" not in links:
                subprocess.run(["ip", "link", "del", bridge], check=False)
        after = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
        for line in set(after.splitlines()) - set(tables.splitlines()):
            subprocess.run(["nft", "delete", *line.split()], check=False)
        shutil.rmtree("/var/lib/cni/networks/sbxbench", ignore_errors=True)  # the peer's IPAM bookkeeping
    return 0


if __name__ == "__main__":
    sys.exit(main())
