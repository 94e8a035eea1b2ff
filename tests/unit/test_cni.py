"""The CNI planning of sifbox.runtime.cni: names, --network-args, configurations, plugin stdin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sifbox.runtime import cni

SHIPPED = Path(__file__).resolve().parents[2] / "sifbox" / "data" / "network"


def test_network_names() -> None:
    assert cni.parse_networks("bridge, ptp") == ("bridge", "ptp")
    assert cni.parse_networks("none") == ("none",)


@pytest.mark.parametrize("text", ["../bridge", "/etc/passwd", "a/b", "none,bridge", "bridge,bridge", ",", "..",
                                  ".hidden", "x" * 80, "br\nidge"])  # fmt: skip
def test_hostile_network_names_are_refused(text: str) -> None:
    with pytest.raises(cni.NetworkError):
        cni.parse_networks(text)


def test_network_args() -> None:
    req = cni.parse_args(["portmap=8080:80/tcp", "IP=10.22.0.9,ptp:portmap=53:53/udp"], ("bridge", "ptp"))
    assert req.ports == ((None, {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}),
                         ("ptp", {"hostPort": 53, "containerPort": 53, "protocol": "udp"}))  # fmt: skip
    assert cni.runtime_config(req, "ptp") == {"portMappings": [p for _, p in req.ports]}
    assert cni.runtime_config(req, "bridge") == {"portMappings": [req.ports[0][1]]}
    assert cni.cni_args(req, "bridge") == "IgnoreUnknown=1;IP=10.22.0.9"
    assert cni.parse_portmap("8080:80") == {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}


@pytest.mark.parametrize("arg", [
    "IP=10.0.0.1;K8S_POD_NAME=x",      # a second CNI_ARGS pair smuggled in a value
    "IP=1.2.3.4=5", "A;B=1", "IP=not-an-ip", "X=a b", "X=$(id)", "X=", "portmap=99999:80/tcp",
    "portmap=8080:80/icmp", "portmap=80", "other:IP=10.0.0.1", "noequals", "X=\n",
])  # fmt: skip
def test_hostile_network_args_are_refused(arg: str) -> None:
    with pytest.raises(cni.NetworkError):
        cni.parse_args([arg], ("bridge",))


def test_shipped_configurations_are_apptainers_set() -> None:
    nets = {cni.parse_config(p.read_text(), str(p)).name: p.name for p in sorted(SHIPPED.iterdir())}
    assert nets == {"bridge": "00_bridge.conflist", "ptp": "10_ptp.conflist", "ipvlan": "20_ipvlan.conflist",
                    "macvlan": "30_macvlan.conflist", "fakeroot": "40_fakeroot.conflist"}  # fmt: skip


@pytest.mark.parametrize("plugin", ["../../tmp/evil", "/bin/sh", "a/b", "", "..", 7])
def test_plugin_types_are_names_not_paths(plugin: object) -> None:
    doc = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": plugin}]}
    with pytest.raises(cni.NetworkError, match="not a plugin name"):
        cni.parse_config(json.dumps(doc))
    doc = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge", "ipam": {"type": plugin}}]}
    with pytest.raises(cni.NetworkError):
        cni.parse_config(json.dumps(doc))


@pytest.mark.parametrize("doc", ['{"name": "n", "cniVersion": "9.9.9", "plugins": [{"type": "bridge"}]}',
                                 '{"name": "../n", "plugins": [{"type": "bridge"}]}', '[]', 'not json',
                                 '{"name": "n", "plugins": []}'])  # fmt: skip
def test_bad_configurations(doc: str) -> None:
    with pytest.raises(cni.NetworkError):
        cni.parse_config(doc)


def test_single_plugin_conf() -> None:
    net = cni.parse_config('{"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}')
    assert net.plugins == ({"type": "loopback"},) and net.version == "0.4.0"


def test_select_first_of_a_name_in_order_asked() -> None:
    a, b, c = (cni.Network(n, "1.0.0", ({"type": "x"},), p) for n, p in (("b", "1"), ("a", "2"), ("b", "3")))
    assert cni.select([a, b, c], ("a", "b")) == [b, a]
    with pytest.raises(cni.NetworkError, match="not configured"):
        cni.select([a], ("zzz",))


def test_plugin_stdin_has_name_version_prev_result_and_asked_capabilities() -> None:
    net = cni.Network("bridge", "1.0.0", ())
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}, "runtimeConfig": {"x": 1}}
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.22.0.5/16"}]}
    ports = {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}], "bandwidth": {}}
    conf = json.loads(cni.plugin_config(net, plugin, prev, ports))
    assert conf == {"type": "portmap", "capabilities": {"portMappings": True}, "name": "bridge",
                    "cniVersion": "1.0.0", "prevResult": prev,
                    "runtimeConfig": {"portMappings": ports["portMappings"]}}  # fmt: skip
    first = json.loads(cni.plugin_config(net, {"type": "bridge", "prevResult": {"forged": 1}}, None, ports))
    assert "prevResult" not in first and "runtimeConfig" not in first


def test_environment_and_results() -> None:
    env = cni.environment("ADD", "sifboxab", "/proc/1/fd/5", "eth0", "/usr/lib/cni", "IgnoreUnknown=1")
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_NETNS"] == "/proc/1/fd/5" and env["CNI_PATH"] == "/usr/lib/cni"
    assert cni.addresses({"ips": [{"address": "fd00::2/64"}, {"address": "10.22.0.2/16"}]}) == ["10.22.0.2", "fd00::2"]
    assert cni.error_message(b'{"code": 7, "msg": "no IP", "details": "range full"}', "bridge", 1) == (
        "plugin `bridge`: no IP (range full)")
    assert cni.error_message(b"garbage", "bridge", 2) == "plugin `bridge` failed with status 2"
    assert cni.supports(b'{"supportedVersions": ["0.4.0", "1.0.0"]}', "1.0.0")
    assert not cni.supports(b'{"supportedVersions": ["0.4.0"]}', "1.0.0")


def test_who_may_join() -> None:
    lists = {"users_ok": ("alice",), "groups_ok": ("lab",), "networks_ok": ("bridge",)}
    assert cni.allowed(("bridge", "ptp"), is_root=True, fakeroot=False, user="root", groups=(), **lists) is None
    assert cni.allowed(("none",), is_root=False, fakeroot=False, user="bob", groups=(), **lists) is None
    assert cni.allowed(("bridge",), is_root=False, fakeroot=False, user="alice", groups=(), **lists) is None
    assert cni.allowed(("bridge",), is_root=False, fakeroot=False, user="carol", groups=("lab",), **lists) is None
    assert cni.allowed(("bridge",), is_root=False, fakeroot=False, user="bob", groups=(), **lists) == (
        "network bridge is not permitted for unprivileged users")
    assert cni.allowed(("ptp",), is_root=False, fakeroot=False, user="alice", groups=(), **lists)


def test_resolv_conf() -> None:
    assert cni.resolv_conf(("8.8.8.8", " 1.1.1.1")) == "nameserver 8.8.8.8\nnameserver 1.1.1.1\n"
    with pytest.raises(cni.NetworkError):
        cni.resolv_conf(("8.8.8.8\nnameserver 6.6.6.6",))
