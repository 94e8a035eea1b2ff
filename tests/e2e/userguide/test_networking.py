"""networking.rst (Network virtualization): --dns, --hostname, --net, --network (bridge, ptp,
bridge,ptp, none), --network-args "portmap=8080:80/tcp" reaching an instance's server from the
host; and SingularityCE's --netns-path section (Apptainer has the flag, its guide not yet).

The networks are the shipped ones (/etc/sifbox/network: bridge `sbr0` 10.22.0.0/16, ptp
10.23.0.0/16); the host's bridge, iptables/nftables state, ip_forward and IPAM directories are
restored after the module (tests.integration.netstate). The guide's `hostname -I` is the
addresses of `ip -4 addr` (busybox's hostname has no -I); its `nslookup sylabs.io` needs the
internet and is left out (--dns's resolv.conf is checked). NGINX is @nginx@ (busybox httpd on
port 80 inside), started by the instance's startscript, so the guide's `exec instance://web2
nginx` step is not needed; the host port is a free one, not 8080. The guide runs these with
sudo; root and the test user run each, and a user gets Apptainer's refusal for every network
but `none`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.apptainer.cases import C, contains, exact, params, regex, run_case
from tests.e2e.userguide import guide
from tests.e2e.userguide.test_running_services import free_port, instances  # noqa: F401

pytestmark = pytest.mark.integration

NW = "networking.rst"
#: `hostname -I`: the container's global IPv4 addresses, on one line
HOSTNAME_I = ("sh", "-c", r"ip -4 -o addr show scope global | sed 's/.* inet \([0-9.]*\).*/\1/' | xargs")
REFUSED = "network {} is not permitted for unprivileged users"
USER_EXIT = {"root": 0, "user": 125}

CASES = [
    C(f"{NW}:--dns", "exec", "--dns", "8.8.8.8", "@alpine@", "cat", "/etc/resolv.conf",
      out=exact("nameserver 8.8.8.8")),
    C(f"{NW}:--hostname", "exec", "--hostname", "hal-9000", "@alpine@", "hostname", out=exact("hal-9000")),
    C(f"{NW}:--net", "exec", "--net", "@alpine@", *HOSTNAME_I, only="root", out=regex(r"^10\.22\.\d+\.\d+\n$")),
    # A user's --net is the `none` network: loopback only, no address of the bridge's.
    C(f"{NW}:--net[user]", "exec", "--net", "@alpine@", "ls", "/sys/class/net", only="user", out=exact("lo")),
    C(f"{NW}:--network[ptp]", "exec", "--net", "--network", "ptp", "@alpine@", *HOSTNAME_I, exit=USER_EXIT,
      out=regex(r"^(10\.23\.\d+\.\d+\n)?$"), err=regex(r"^$|" + REFUSED.format("ptp"))),
    C(f"{NW}:--network[bridge,ptp]", "exec", "--net", "--network", "bridge,ptp", "@alpine@", *HOSTNAME_I,
      exit=USER_EXIT, out=regex(r"^(10\.22\.\d+\.\d+ 10\.23\.\d+\.\d+\n)?$"),
      err=regex(r"^$|" + REFUSED.format("bridge"))),
    # --network-args "IP=..." for one network of several (NETWORK:KEY=VALUE), the other's by its IPAM
    C(f"{NW}:--network-args[IP=]", "exec", "--net", "--network", "bridge,ptp", "--network-args", "ptp:IP=10.23.77.7",
      "@alpine@", *HOSTNAME_I, only="root", out=regex(r"^10\.22\.\d+\.\d+ 10\.23\.77\.7\n$")),
    # "none (must be used alone)", the only network of unprivileged users
    C(f"{NW}:--network[none]", "exec", "--net", "--network", "none", "@alpine@", "ls", "/sys/class/net",
      out=exact("lo")),
    C(f"{NW}:--network[none,bridge]", "exec", "--net", "--network", "none,bridge", "@alpine@", "true", exit=125,
      err=contains("can't use --network")),
    # --netns-path: "A non-root user can only join a network namespace if" `allow netns paths` lists it
    C(f"{NW}:--netns-path[user]", "exec", "--netns-path", "/proc/self/ns/net", "@alpine@", "true", only="user",
      exit=125, err=contains("joining this network namespace is not permitted for unprivileged users")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(CASES))
def test_networking(request, sb, case, host_network) -> None:  # type: ignore[no-untyped-def]
    run_case(request, sb, case)


@pytest.mark.usefixtures("instances")
def test_network_args_portmap(request, sb, host_network) -> None:  # type: ignore[no-untyped-def]
    """`sudo apptainer instance start --writable-tmpfs --net --network-args "portmap=8080:80/tcp"
    docker://nginx web2`, then `curl localhost:8080` gets NGINX's page from the container."""
    if not sb.who.is_root:
        pytest.skip("the guide starts this instance with sudo (CNI networks need root)")
    port = free_port()
    guide.run(request, sb, C(f"{NW}:--network-args", "instance", "start", "--writable-tmpfs", "--net",
                             "--network-args", f"portmap={port}:80/tcp", "@nginx@", "@id@web2"))  # fmt: skip
    page = guide.fetch(f"http://localhost:{port}/")
    assert "<h1>Welcome to nginx!</h1>" in page, page
    listed = sb.run(["instance", "list", "@id@web2"])
    assert "10.22." in listed.stdout, listed  # the instance's address on the bridge
    stopped = sb.run(["instance", "stop", "@id@web2"])
    assert stopped.status == 0, stopped


@pytest.fixture
def my_net(sb) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """SingularityCE's `ip netns add my-net` and `ip netns exec my-net ip link add dummy0 type
    dummy`, without touching the host's /run/netns: a namespace kept by a bind mount on a file
    of the test's work directory (unmounted after), with a veth pair (the kernel here has no
    dummy driver)."""
    if not sb.who.is_root:
        pytest.skip("joining a network namespace needs root (sifbox has no setuid helper)")
    path = sb.work / "my-net"
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "ip", "link", "add", "dummy0", "type", "veth", "peer", "name",
                    "dummy1"], check=True)  # fmt: skip
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_netns_path(request, sb, my_net: str) -> None:  # type: ignore[no-untyped-def]
    """`sudo singularity run --netns-path /run/netns/my-net alpine`, then `ip a` shows dummy0."""
    guide.run(request, sb, C("networking.rst:--netns-path (SingularityCE)", "exec", "--netns-path", my_net,
                             "@alpine@", "ls", "/sys/class/net", out=exact("dummy0\ndummy1\nlo")))  # fmt: skip
