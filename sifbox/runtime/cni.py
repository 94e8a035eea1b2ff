"""CNI networks, planned: which networks a container joins, and how each plugin is called.

Pure: no file is read, no program runs here (`sifbox.runtime.network` does both). This is
the runtime side of the Container Network Interface (github.com/containernetworking/cni,
SPEC.md), written for sifbox: there is no maintained Python library for it.

    --network bridge,ptp        networks, found by the `name` of a configuration file in
                                /etc/sifbox/network (`*.conflist`, `*.conf`); `none` (alone):
                                loopback only
    --network-args ARGS         `[NETWORK:]KEY=VALUE`, comma-separated and repeatable:
                                `portmap=8080:80/tcp` (the portMappings capability),
                                `IP=10.22.0.9` and other keys (CNI_ARGS)

Each network gets an interface (eth0, eth1, ...). ADD calls the plugins of a conflist in
order, each given the result of the previous one (`prevResult`); DEL calls them in reverse
order with the result ADD gave, so that each undoes exactly what it did.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, NamedTuple

#: The CNI specification versions this runtime speaks (those of Debian's plugins, 1.1).
VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
#: Apptainer's rule: a network name is a file-name-like word (never a path).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A plugin `type` is the name of a program of the plugin directory (never a path).
_PLUGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A CNI_ARGS key, and what its value may hold (no `;`, `=` or control character).
_ARG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ARG_VALUE = re.compile(r"[A-Za-z0-9_.:/+@-]{1,256}")
_PORTMAP = re.compile(r"(\d{1,5}):(\d{1,5})(?:/(tcp|udp|sctp))?")
#: Networks an unprivileged user may always ask for.
NONE = "none"


class NetworkError(Exception):
    """A request or configuration that can't be used (rendered by the caller as a SifboxError)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Network(NamedTuple):
    """A network configuration list: `name`, `version` (cniVersion), its plugins' configurations."""

    name: str
    version: str
    plugins: tuple[dict[str, Any], ...]
    path: str = ""


class Request(NamedTuple):
    """What the command line asked: network names, port mappings and CNI_ARGS per network
    (`None` key: every network)."""

    names: tuple[str, ...]
    ports: tuple[tuple[str | None, dict[str, Any]], ...] = ()
    args: tuple[tuple[str | None, str, str], ...] = ()


def parse_networks(text: str) -> tuple[str, ...]:
    """The network names of --network (comma-separated); `none` must stand alone."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise NetworkError("no network named")
    for name in names:
        check_name(name)
    if NONE in names and len(names) > 1:
        raise NetworkError("`none` can't be combined with other networks")
    if len(set(names)) != len(names):
        raise NetworkError("a network is named twice")
    return names


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise NetworkError(f"`{name}` is not a network name",
                           hint="network names use letters, digits, `.`, `_` and `-`")  # fmt: skip


def parse_args(items: tuple[str, ...] | list[str], names: tuple[str, ...]) -> Request:
    """The request of --network-args ITEMS for networks `names`."""
    ports: list[tuple[str | None, dict[str, Any]]] = []
    args: list[tuple[str | None, str, str]] = []
    for group in items:
        for item in group.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, value = item.partition("=")
            if not eq:
                raise NetworkError(f"`{item}` is not KEY=VALUE")
            net: str | None = None
            if ":" in key:
                net, key = key.split(":", 1)
                if net not in names:
                    raise NetworkError(f"`{item}` is for network `{net}`, which is not asked for")
            if key == "portmap":
                ports.append((net, parse_portmap(value)))
                continue
            if not _ARG_KEY.fullmatch(key):
                raise NetworkError(f"`{key}` is not an argument name")
            if not _ARG_VALUE.fullmatch(value):
                raise NetworkError(f"the value of `{key}` has characters CNI arguments can't hold")
            if key == "IP":
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise NetworkError(f"`{value}` is not an IP address") from None
            args.append((net, key, value))
    return Request(tuple(names), tuple(ports), tuple(args))


def parse_portmap(value: str) -> dict[str, Any]:
    """`HOST:CONTAINER[/PROTOCOL]` (tcp by default) as a CNI portMappings entry."""
    m = _PORTMAP.fullmatch(value)
    if not m:
        raise NetworkError(f"`portmap={value}` is not HOST:CONTAINER/PROTOCOL (e.g. 8080:80/tcp)")
    host, container = int(m.group(1)), int(m.group(2))
    if not (0 < host < 65536 and 0 < container < 65536):
        raise NetworkError(f"`portmap={value}`: ports are 1 to 65535")
    return {"hostPort": host, "containerPort": container, "protocol": m.group(3) or "tcp"}


def parse_config(text: str, path: str = "") -> Network:
    """A network of a `.conflist` (or a single-plugin `.conf`) file's text."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise NetworkError(f"`{path}` is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise NetworkError(f"`{path}` is not a CNI network configuration")
    name, version = doc.get("name"), doc.get("cniVersion", "0.3.0")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise NetworkError(f"`{path}` has no valid network name")
    if version not in VERSIONS:
        raise NetworkError(f"network `{name}` ({path}) has cniVersion `{version}`; sifbox speaks {', '.join(VERSIONS)}")
    plugins = doc.get("plugins")
    if plugins is None and "type" in doc:  # a .conf: one plugin
        plugins = [{k: v for k, v in doc.items() if k not in ("name", "cniVersion")}]
    if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) for p in plugins):
        raise NetworkError(f"network `{name}` ({path}) has no plugins")
    for plugin in plugins:
        kind = plugin.get("type")
        if not isinstance(kind, str) or not _PLUGIN.fullmatch(kind):
            raise NetworkError(f"network `{name}` ({path}) names plugin `{kind}`, which is not a plugin name",
                               hint="a plugin `type` is the name of a program of the CNI plugin directory")  # fmt: skip
        _check_plugin_ipam(name, path, plugin)
    return Network(name, str(version), tuple(plugins), path)


def _check_plugin_ipam(name: str, path: str, plugin: dict[str, Any]) -> None:
    ipam = plugin.get("ipam")
    if isinstance(ipam, dict) and "type" in ipam:
        kind = ipam["type"]
        if not isinstance(kind, str) or not _PLUGIN.fullmatch(kind):
            raise NetworkError(f"network `{name}` ({path}) names IPAM plugin `{kind}`, which is not a plugin name")


def select(configs: list[Network], names: tuple[str, ...]) -> list[Network]:
    """The networks named, in the order asked (configurations sorted by file name: the first
    of a name wins, as libcni's)."""
    by_name: dict[str, Network] = {}
    for net in configs:
        by_name.setdefault(net.name, net)
    missing = [n for n in names if n not in by_name]
    if missing:
        known = ", ".join(sorted(by_name)) or "none configured"
        raise NetworkError(f"network `{missing[0]}` is not configured (known: {known})")
    return [by_name[n] for n in names]


def allowed(names: tuple[str, ...], *, is_root: bool, fakeroot: bool, user: str, groups: tuple[str, ...],
            users_ok: tuple[str, ...], groups_ok: tuple[str, ...], networks_ok: tuple[str, ...]) -> str | None:  # fmt: skip
    """Why the caller may not join `names` (None: they may). Root may join any; `none` is anyone's;
    a user listed in `allow net users` (or a member of `allow net groups`) may join the networks
    of `allow net networks` (sifbox.conf, as Apptainer's apptainer.conf)."""
    if is_root or names == (NONE,):
        return None
    listed = user in users_ok or any(g in groups_ok for g in groups)
    for name in names:
        if not listed or name not in networks_ok:
            return f"network {name} is not permitted for unprivileged users"
    return None


def interface(index: int) -> str:
    return f"eth{index}"


def plugin_config(net: Network, plugin: dict[str, Any], prev: dict[str, Any] | None,
                  runtime: dict[str, Any]) -> bytes:  # fmt: skip
    """The configuration of one plugin of `net` on its stdin: the network's name and
    cniVersion, `prevResult`, and the `runtimeConfig` of the capabilities it declares."""
    conf = dict(plugin)
    conf["name"], conf["cniVersion"] = net.name, net.version
    conf.pop("runtimeConfig", None)
    caps = plugin.get("capabilities")
    if isinstance(caps, dict):
        wanted = {k: v for k, v in runtime.items() if caps.get(k) is True}
        if wanted:
            conf["runtimeConfig"] = wanted
    if prev is not None:
        conf["prevResult"] = prev
    else:
        conf.pop("prevResult", None)
    return json.dumps(conf, sort_keys=True).encode()


def runtime_config(request: Request, net: str) -> dict[str, Any]:
    ports = [p for n, p in request.ports if n in (None, net)]
    return {"portMappings": ports} if ports else {}


def cni_args(request: Request, net: str) -> str:
    """CNI_ARGS for `net`: IgnoreUnknown=1 (plugins skip keys they don't know), then the
    arguments asked for it (each key once: the last wins)."""
    found: dict[str, str] = {}
    for n, key, value in request.args:
        if n in (None, net):
            found[key] = value
    return ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in found.items())])


def environment(command: str, container: str, netns: str, ifname: str, path: str, args: str) -> dict[str, str]:
    """The variables a plugin runs with (SPEC.md "Parameters"), and a minimal PATH for the
    programs plugins call (iptables, ip)."""
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
            "CNI_PATH": path, "CNI_ARGS": args, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # fmt: skip


def parse_result(out: bytes, plugin: str) -> dict[str, Any]:
    """A plugin's result (stdout of ADD); an error result raises."""
    try:
        doc = json.loads(out or b"{}")
    except ValueError:
        raise NetworkError(f"plugin `{plugin}` gave no JSON result") from None
    if not isinstance(doc, dict):
        raise NetworkError(f"plugin `{plugin}` gave no JSON object")
    return doc


def error_message(out: bytes, plugin: str, status: int) -> str:
    """The message of a failed plugin: its error result's `msg` (and `details`), else its status."""
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("msg"), str):
        detail = doc.get("details")
        return f"plugin `{plugin}`: {doc['msg']}" + (f" ({detail})" if isinstance(detail, str) and detail else "")
    return f"plugin `{plugin}` failed with status {status}"


def supports(out: bytes, version: str) -> bool:
    """Whether a plugin's VERSION answer lists `version`."""
    try:
        doc = json.loads(out)
    except ValueError:
        return False
    versions = doc.get("supportedVersions") if isinstance(doc, dict) else None
    return isinstance(versions, list) and version in versions


def addresses(result: dict[str, Any]) -> list[str]:
    """The container's addresses of a result (without prefix length), IPv4 first."""
    found = []
    for ip in result.get("ips", []) if isinstance(result.get("ips"), list) else []:
        if isinstance(ip, dict) and isinstance(ip.get("address"), str):
            found.append(ip["address"].split("/")[0])
    return sorted(found, key=lambda a: ":" in a)


def cache_name(net: str, container: str, ifname: str) -> str:
    """The file name of the result ADD gave, kept for DEL (libcni's results/NET-ID-IF)."""
    return f"{net}-{container}-{ifname}.json"


def resolv_conf(servers: tuple[str, ...]) -> str:
    """/etc/resolv.conf of --dns SERVERS (each an IP address)."""
    lines = []
    for server in servers:
        try:
            lines.append(f"nameserver {ipaddress.ip_address(server.strip())}")
        except ValueError:
            raise NetworkError(f"`{server}` is not an IP address") from None
    return "\n".join(lines) + "\n"
