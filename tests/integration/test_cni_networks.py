"""--net with CNI networks (Debian's containernetworking-plugins, run by sifbox), --network-args,
--dns; root joins them, the test user is refused as Apptainer refuses; DEL always runs.

The networks are this module's own (bridge `sbxt0`, 10.77.0.0/24, IPAM leases in its own
directory), in a root-owned configuration directory named by the test's sifbox.conf; the host's
iptables/nftables state, links and ip_forward are restored afterwards (tests.integration.netstate).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sifbox.config.sysconf import render_default
from tests.conftest import _user
from tests.integration import images, netstate
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for, popen_as

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration

BRIDGE, SUBNET, GATEWAY = "sbxt0", "10.77.0", "10.77.0.1"
PARENT = "sbxpar0"  # the master of the ipvlan and macvlan networks, in a namespace of the test's
ROOT = _user("root")


class Net:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.conf = base / "sifbox.conf"
        self.networks = base / "network"
        self.leases = base / "leases"
        self.www = base / "www"
        self.problems: list[str] = []

    def env(self, who):  # type: ignore[no-untyped-def]
        return env_for(who, SIFBOX_CONFIG_FILE=str(self.conf))


def _conflist(name: str, plugins: list[dict]) -> str:  # type: ignore[type-arg]
    return json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, indent=1)


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("CNI networks need root")
    for tool in ("/usr/lib/cni/bridge", "/usr/sbin/nft", "/usr/sbin/iptables-save"):
        if not os.path.exists(tool):
            pytest.skip(f"{tool} is missing (Debian packages containernetworking-plugins, nftables, iptables)")
    n = Net(Path(tempfile.mkdtemp(prefix="sifbox-cni-", dir="/tmp")))
    n.base.chmod(0o755)
    n.networks.mkdir(mode=0o755)
    n.www.mkdir(mode=0o755)
    (n.www / "hello.txt").write_text("hello from the host\n")
    ipam = {"type": "host-local", "subnet": f"{SUBNET}.0/24", "dataDir": str(n.leases),
            "routes": [{"dst": "0.0.0.0/0"}]}  # fmt: skip
    (n.networks / "00_sbxtest.conflist").write_text(_conflist("sbxtest", [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "ipam": ipam},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]))  # fmt: skip
    for kind in ("ipvlan", "macvlan"):  # Apptainer's 20_ipvlan and 30_macvlan, over a parent of the tests'
        (n.networks / f"20_sbx{kind}.conflist").write_text(_conflist(f"sbx{kind}", [
            {"type": kind, "master": PARENT, "ipam": {"type": "static", "addresses": [
                {"address": "192.168.1.1/24", "gateway": "192.168.1.254"}], "routes": [{"dst": "0.0.0.0/0"}]}}]))  # fmt: skip
    n.conf.write_text(render_default() + f"cni configuration path = {n.networks}\n")
    with netstate.restored((BRIDGE,)) as problems:
        # The bridge beforehand, so that a host server can listen on its address.
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        try:
            yield n
        finally:
            subprocess.run(["rm", "-rf", str(n.base)], check=False)
    assert not problems, problems


@pytest.fixture
def sb(run_as, sifbox_cli, net: Net, action_images: ActionImages):  # type: ignore[no-untyped-def]
    def launch(who, *args: str):  # type: ignore[no-untyped-def]
        return run_as(who, [sifbox_cli, *args], env=net.env(who), cwd="/", timeout=LAUNCH_TIMEOUT)

    return launch


def _clean(net: Net) -> None:
    """Nothing of a finished container is left: lease, cached result, veth."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = (netstate.leases(net.leases), [c for c in netstate.cached_results() if "sbxtest" in c],
                 sorted(netstate.veths()))  # fmt: skip
        if state == ([], [], []):
            return
        time.sleep(0.1)
    pytest.fail(f"left behind (leases, cached results, veths): {state}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bridge_reaches_a_host_server(sb, net: Net, test_user, action_images: ActionImages, no_leaks) -> None:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", GATEWAY, "--directory", str(net.www),
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        script = (f"ls /sys/class/net; busybox ip -4 -o addr show eth0; "
                  f"printf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n' | busybox nc {GATEWAY} {port} | tail -n 1")  # fmt: skip
        for _ in range(50):  # the server is up once it accepts
            with socket.socket() as s:
                if s.connect_ex((GATEWAY, port)) == 0:
                    break
            time.sleep(0.1)
        proc = sb(ROOT, "exec", "--net", "--network", "sbxtest", "--network-args", f"IP={SUBNET}.42",
                  str(action_images.sif), "sh", "-c", script)  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["eth0", "lo"]  # the namespace's own /sys/class/net
    assert f"inet {SUBNET}.42/24" in lines[2]
    assert lines[3] == "hello from the host"
    _clean(net)


def test_portmap_instance_is_reachable_from_the_host(sb, net: Net, action_images: ActionImages, no_leaks) -> None:
    port = _free_port()
    name = f"cni{os.getpid()}"
    proc = sb(ROOT, "instance", "start", "--net", "--network", "sbxtest", "--network-args",
              f"portmap={port}:8080/tcp", str(action_images.sif), name)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    try:
        listed = json.loads(sb(ROOT, "instance", "list", "--json", name).stdout)["instances"]
        assert len(listed) == 1 and listed[0]["ip"].startswith(f"{SUBNET}."), listed
        assert f"{SUBNET}." in sb(ROOT, "instance", "list", name).stdout
        served = sb(ROOT, "exec", f"instance://{name}", "sh", "-c",
                    "mkdir -p /tmp/www && echo served-by-container > /tmp/www/index.html && "
                    "busybox httpd -p 8080 -h /tmp/www")  # fmt: skip
        assert served.returncode == 0, served.stderr
        host_ip = subprocess.run(["ip", "-4", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True,
                                 check=True).stdout.split(" src ")[1].split()[0]  # fmt: skip
        body = ""
        for _ in range(30):
            try:
                body = urllib.request.urlopen(f"http://{host_ip}:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body == "served-by-container\n"
    finally:
        stopped = sb(ROOT, "instance", "stop", name)
    assert stopped.returncode == 0, stopped.stderr
    _clean(net)
    assert not [r for r in netstate.rules() if str(port) in r]  # the port mapping went with DEL


@pytest.mark.parametrize("victim", ["payload", "sifbox"])
def test_del_runs_when_killed(net: Net, sifbox_cli, action_images: ActionImages, victim: str, no_leaks) -> None:
    proc = popen_as(ROOT, [sifbox_cli, "exec", "--net", "--network", "sbxtest", str(action_images.sif),  # type: ignore[arg-type]
                           "sh", "-c", "echo up; exec sleep 60"], env=net.env(ROOT))  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "up\n"
        assert len(netstate.leases(net.leases)) == 1 and netstate.veths()
        if victim == "sifbox":
            proc.send_signal(signal.SIGKILL)
        else:
            sleeper = subprocess.run(["pgrep", "-f", "-x", "sleep 60", "-P", ",".join(_descendants(proc.pid))],
                                     capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
            assert sleeper, "the payload was not found"
            os.kill(int(sleeper[0]), signal.SIGKILL)
        status = proc.wait(timeout=LAUNCH_TIMEOUT)
        assert status == (-9 if victim == "sifbox" else 137)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _clean(net)


def _descendants(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[str, list[str]] = {}
    for line in out.splitlines():
        p, pp = line.split()
        children.setdefault(pp, []).append(p)
    found, todo = [], [str(pid)]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _kernel_has(kind: str) -> bool:
    script = f"ip link add p0 type veth peer name p1 && ip link add v0 link p0 type {kind}"
    probe = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.parametrize("kind", ["macvlan", "ipvlan"])
def test_macvlan_and_ipvlan(net: Net, sifbox_cli, action_images: ActionImages, kind: str, no_leaks) -> None:
    """The shipped ipvlan and macvlan configurations (static 192.168.1.1/24, gateway .254), their
    master a veth of a network namespace the test makes, where sifbox runs (nsenter): the
    plugins find their master there, and the host's interfaces are never touched."""
    if not _kernel_has(kind):
        pytest.skip(f"this kernel has no {kind} driver (CONFIG_{kind.upper()})")
    parent = net.base / f"parent-{kind}"
    parent.touch()
    setup = (f"ip link add {PARENT} type veth peer name sbxpar1 && ip addr add 192.168.1.254/24 dev sbxpar1 "
             f"&& ip link set {PARENT} up && ip link set sbxpar1 up")  # fmt: skip
    subprocess.run(["unshare", f"--net={parent}", "sh", "-c", setup], check=True)
    probe = ("ls /sys/class/net | xargs; busybox ip -4 -o addr show eth0 | sed 's/.* inet \\([^ ]*\\).*/\\1/'; "
             "busybox ip route | grep ^default; busybox ping -c 1 -W 5 192.168.1.254 >/dev/null && echo reached")
    try:
        proc = subprocess.run(["nsenter", f"--net={parent}", sifbox_cli, "exec", "--net", "--network", f"sbx{kind}",
                               str(action_images.sif), "sh", "-c", probe], env=net.env(ROOT), capture_output=True,
                              text=True, timeout=LAUNCH_TIMEOUT, check=False)  # fmt: skip
        left = subprocess.run(["nsenter", f"--net={parent}", "ip", "-o", "link"], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    finally:
        subprocess.run(["umount", str(parent)], check=False)
        parent.unlink()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["eth0 lo", "192.168.1.1/24"], proc.stdout
    assert lines[2].startswith("default via 192.168.1.254 dev eth0"), proc.stdout
    assert lines[3:] == ["reached"], proc.stdout  # the parent's peer, through the master
    assert sorted(ln.split(":")[1].strip().split("@")[0] for ln in left.splitlines()) == ["lo", PARENT, "sbxpar1"]
    assert not [c for c in netstate.cached_results() if f"sbx{kind}" in c]


# --- refusals, hostile input ----------------------------------------------------------------------


def test_users_are_refused_as_by_apptainer(sb, net: Net, test_user, action_images: ActionImages) -> None:
    for args in (("--network", "sbxtest"), ("--network", "bridge"), ("--network-args", "portmap=8080:80/tcp")):
        proc = sb(test_user, "exec", "--net", *args, str(action_images.sif), "true")
        assert proc.returncode == 125, proc.stderr
        assert "is not permitted for unprivileged users" in proc.stderr or "--network-args" in proc.stderr
    # --fakeroot --net: Apptainer's fallback to the `none` network without a setuid installation
    proc = sb(test_user, "exec", "--fakeroot", "--net", str(action_images.sif), "ls", "/sys/class/net")
    assert (proc.returncode, proc.stdout.split()) == (0, ["lo"]), proc.stderr
    assert "falling back to the `none` network" in proc.stderr


@pytest.mark.parametrize("network", ["../network/00_sbxtest", "/etc/passwd", "a/b", "none,sbxtest"])
def test_network_names_with_path_separators(sb, network: str, action_images: ActionImages) -> None:
    proc = sb(ROOT, "exec", "--net", "--network", network, str(action_images.sif), "true")
    assert proc.returncode == 125 and "can't use --network" in proc.stderr, proc.stderr


@pytest.mark.parametrize("arg", ["IP=10.77.0.9;IgnoreUnknown=0", "K8S_POD_NAME=x;IP=10.77.0.9", "X=$(id)",
                                 "portmap=8080:80/tcp;x=1", "nosuch:IP=10.77.0.9"])  # fmt: skip
def test_network_args_injection(sb, arg: str, action_images: ActionImages) -> None:
    proc = sb(ROOT, "exec", "--net", "--network", "sbxtest", "--network-args", arg, str(action_images.sif), "true")
    assert proc.returncode == 125 and "can't use --network-args" in proc.stderr, proc.stderr


def test_untrusted_or_hostile_configurations(sb, net: Net, test_user, action_images: ActionImages) -> None:
    evil = net.networks / "50_evil.conflist"
    marker = net.base / "ran"
    script = net.base / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    try:
        # a plugin path outside the plugin directories
        evil.write_text(_conflist("evil", [{"type": f"../../..{script}"}]))
        proc = sb(ROOT, "exec", "--net", "--network", "evil", str(action_images.sif), "true")
        assert proc.returncode == 125 and "not a plugin name" in proc.stderr, proc.stderr
        # a configuration the user may write (owned by them; then writable by all)
        evil.write_text(_conflist("evil", [{"type": "bridge", "bridge": BRIDGE}]))
        os.chown(evil, test_user.uid, test_user.gid)
        proc = sb(ROOT, "exec", "--net", "--network", "sbxtest", str(action_images.sif), "true")
        assert proc.returncode == 125 and "is not trusted" in proc.stderr, proc.stderr
        os.chown(evil, 0, 0)
        evil.chmod(0o666)
        proc = sb(ROOT, "exec", "--net", "--network", "sbxtest", str(action_images.sif), "true")
        assert proc.returncode == 125 and "writable by other users" in proc.stderr, proc.stderr
    finally:
        evil.unlink()
    assert not marker.exists()


def test_dns(sb, as_who, action_images: ActionImages) -> None:
    proc = sb(as_who, "exec", "--dns", "192.0.2.53,2001:db8::53", str(action_images.sif), "cat", "/etc/resolv.conf")
    assert (proc.returncode, proc.stdout) == (0, "nameserver 192.0.2.53\nnameserver 2001:db8::53\n"), proc.stderr
    proc = sb(as_who, "exec", "--dns", "192.0.2.53\nnameserver 6.6.6.6", str(action_images.sif), "true")
    assert proc.returncode == 125
