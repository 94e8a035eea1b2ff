"""Networks through CNI, run: the plugins called for a container's network namespace.

`plan` (before any namespace exists) decides the networks of --net/--network and checks
that the caller may join them, with the configurations found and checked; `attach` (as
the launch starts, still in the host's network namespace) creates the network namespace,
runs ADD for each network, and forks the keeper. The keeper holds the namespace open and
waits until every process of the launch is gone (a pipe that reaches end-of-file), then
runs DEL with the results ADD gave (also kept on disk, as libcni keeps them): whether the
payload exits, is killed, or sifbox itself is killed, the veth pairs, iptables rules and
IPAM leases go. The process that started it reaps the keeper (`Attached.detach`).

Configuration files are those of `cni configuration path` (default: the `network`
directory beside sifbox.conf, else the ones sifbox ships), read only when root owns them
and no one else may write them; plugins are programs of `cni plugin path` (default
/usr/lib/cni, Debian's containernetworking-plugins, then /opt/cni/bin).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import Any

from sifbox.runtime import cni
from sifbox.util.errors import ExitStatus, SifboxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "network")
RESULTS = "/run/sifbox/network"
#: Seconds a plugin may take.
TIMEOUT = 60


class Plan:
    """The networks of a launch, decided before it."""

    __slots__ = ("container", "networks", "plugin_dirs", "request")

    def __init__(self, networks: list[cni.Network], request: cni.Request, plugin_dirs: tuple[str, ...]) -> None:
        self.networks = networks
        self.request = request
        self.plugin_dirs = plugin_dirs
        self.container = "sifbox" + secrets.token_hex(8)


def plan(spec: Any, cfg: Any, conf_path: str, is_root: bool, user: str,
         warn: Callable[[str], None]) -> Plan | Joined | None:  # fmt: skip
    """The CNI networks of `spec` (None: loopback only, or no network namespace of its own),
    or the existing network namespace of --netns-path."""
    if spec.netns_path:
        return existing(spec, cfg, is_root, user)
    if not spec.net:
        return None
    asked = tuple(spec.network)
    names = asked or (("bridge",) if is_root else (cni.NONE,))
    if spec.fakeroot and not is_root and asked != (cni.NONE,):
        # As Apptainer: a user's --fakeroot joins the `fakeroot` network, whatever was asked;
        # without a setuid installation, the `none` network instead.
        if asked not in ((), ("fakeroot",)):
            warn(f"only --network=fakeroot is permitted in --fakeroot mode; you requested `{','.join(asked)}`")
        warn("fakeroot without a privileged installation can't use the `fakeroot` network: "
             "falling back to the `none` network (loopback only)")  # fmt: skip
        names = (cni.NONE,)
    try:
        request = cni.parse_args(tuple(spec.network_args), names)
    except cni.NetworkError as err:
        raise UsageError(f"can't use --network-args: {err}", hint=err.hint) from None
    why = cni.allowed(names, is_root=is_root, fakeroot=spec.fakeroot, user=user, groups=_groups(),
                      users_ok=cfg.get_list("allow net users"), groups_ok=cfg.get_list("allow net groups"),
                      networks_ok=cfg.get_list("allow net networks"))  # fmt: skip
    if why is not None:
        raise UsageError(f"can't use --network `{','.join(names)}`: {why}",
                         hint="non-root users can only use --network=none unless permitted by the administrator")  # fmt: skip
    if names == (cni.NONE,):
        if request.ports or request.args:
            raise UsageError("can't use --network-args with the `none` network")
        return None
    if not is_root:
        # Listed in `allow net users/groups`, but the plugins need root on the host, and sifbox
        # installs nothing setuid.
        raise UsageError(f"can't use --network `{','.join(names)}`: CNI networks need root, and sifbox "
                         "has no setuid helper to run their plugins for users",
                         hint="unprivileged users can use `--network none` (loopback only)")  # fmt: skip
    directory = cfg.get("cni configuration path") or _default_dir(conf_path)
    plugin_dirs = tuple(cfg.get_list("cni plugin path")) or PLUGIN_DIRS
    try:
        networks = cni.select(load_configs(directory), names)
    except cni.NetworkError as err:
        raise UsageError(f"can't use --network `{','.join(names)}`: {err}", hint=err.hint) from None
    for net in networks:
        for plugin in net.plugins:
            find_plugin(plugin["type"], plugin_dirs, net.name)
            ipam = plugin.get("ipam")
            if isinstance(ipam, dict) and "type" in ipam:
                find_plugin(ipam["type"], plugin_dirs, net.name)
    return Plan(networks, request, plugin_dirs)


class Joined:
    """--netns-path: an existing network namespace, open at `fd` (checked to be one), joined
    instead of a new one; it has no addresses of sifbox's and no keeper (the launch's
    `attached`, as `Attached`)."""

    __slots__ = ("addresses", "fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        self.addresses: list[str] = []

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    release = detach = close_fd


def existing(spec: Any, cfg: Any, is_root: bool, user: str) -> Joined:
    """The network namespace of --netns-path, opened once (and checked: sandbox.namespaces).
    As Apptainer/SingularityCE: root may join any; a user only one whose path is listed in
    `allow netns paths`, when `allow net users`/`allow net groups` lists them; not with
    --fakeroot, nor with CNI networks (the namespace is set up already)."""
    path = spec.netns_path
    if spec.network or spec.network_args:
        raise UsageError(f"can't use --netns-path `{path}` with --network or --network-args: the container "
                         "joins an existing network namespace, whose interfaces are set up already")  # fmt: skip
    if spec.fakeroot:
        raise UsageError(f"can't use --netns-path `{path}` with --fakeroot", hint="run without --fakeroot")
    if not is_root:
        listed = user in cfg.get_list("allow net users") or any(g in cfg.get_list("allow net groups")
                                                                 for g in _groups())  # fmt: skip
        paths = {_resolved(p) for p in cfg.get_list("allow netns paths") if os.path.isabs(p)}
        hint = "root may join any network namespace; a user, those of `allow netns paths` in sifbox.conf"
        if not listed or _resolved(path) not in paths:
            raise UsageError(f"can't use --netns-path `{path}`: joining this network namespace is not permitted "
                             "for unprivileged users", hint=hint)  # fmt: skip
        # Listed: but joining a namespace of the host's user namespace needs CAP_SYS_ADMIN there,
        # and sifbox installs nothing setuid.
        raise UsageError(f"can't use --netns-path `{path}`: joining a network namespace needs root, and sifbox "
                         "has no setuid helper to join it for users", hint=hint)  # fmt: skip
    from sifbox.runtime.sandbox import namespaces

    return Joined(path, namespaces.open_network(path))


def _resolved(path: str) -> str:
    """`path` with its symlinks resolved, as far as the caller may (/proc/PID of another user's
    process is not theirs to read)."""
    try:
        return os.path.realpath(path)
    except OSError:
        return os.path.abspath(path)


def _default_dir(conf_path: str) -> str:
    beside = os.path.join(os.path.dirname(os.path.abspath(conf_path)), "network")
    return beside if os.path.isdir(beside) else SHIPPED


def _groups() -> tuple[str, ...]:
    import grp

    names = []
    for gid in os.getgroups():
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return tuple(names)


def load_configs(directory: str) -> list[cni.Network]:
    """The networks of `directory`'s *.conflist and *.conf files, sorted by file name. Root
    reads only a directory and files that root owns and no one else may write: a network's
    plugins run as root."""
    from sifbox.util.trusted import untrusted_reason

    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise cni.NetworkError(f"can't read the network configurations in `{directory}`: {err.strerror}") from None
    try:
        why = untrusted_reason(dir_fd)
        if why:
            raise cni.NetworkError(f"the network configuration directory `{directory}` is not trusted: {why}")
        found = []
        for entry in sorted(os.listdir(dir_fd)):
            if not entry.endswith((".conflist", ".conf")) or entry.startswith("."):
                continue
            path = os.path.join(directory, entry)
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as err:
                raise cni.NetworkError(f"can't read `{path}`: {err.strerror}") from None
            with os.fdopen(fd, "rb") as f:
                import stat

                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise cni.NetworkError(f"`{path}` is not a regular file")
                why = untrusted_reason(fd)
                if why:
                    raise cni.NetworkError(f"the network configuration `{path}` is not trusted: {why}",
                                           hint="`chown root:root FILE; chmod go-w FILE`")  # fmt: skip
                found.append(cni.parse_config(f.read(1 << 20).decode("utf-8", "replace"), path))
        return found
    finally:
        os.close(dir_fd)


def find_plugin(kind: str, dirs: tuple[str, ...], net: str) -> str:
    """The program of plugin `kind`: a regular executable file of one of `dirs` (never a path
    a configuration names: `kind` is a plain name, checked by `cni.parse_config`)."""
    import stat

    for d in dirs:
        path = os.path.join(d, kind)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return path
    raise UsageError(f"can't use network `{net}`: plugin `{kind}` is not in {':'.join(dirs)}",
                     hint="install the Debian package `containernetworking-plugins`, or set `cni plugin path`")  # fmt: skip


# --- ADD, and the keeper that runs DEL --------------------------------------------------------


def launch_with(p: Any, hold: Any, launch: Callable[[Any, Any], int]) -> int:
    """`launch(p, hold)` (the launcher's) in the namespace of `p.network`'s networks: joined
    before it, left to the keeper after it (which runs DEL); or in the namespace of
    --netns-path. An instance's `hold` is told the addresses (`instance list` shows them)."""
    p.attached = p.network if isinstance(p.network, Joined) else attach(p.network, p.spec.image)
    p.ns = p.ns._replace(net_fd=p.attached.fd)
    if hold is not None and hasattr(hold, "addresses"):
        hold.addresses(p.attached.addresses)
    try:
        return launch(p, hold)
    finally:
        p.attached.detach()


class Attached:
    """A network namespace with its networks: `fd` (to setns into), the addresses."""

    __slots__ = ("addresses", "fd", "keeper", "pipe")

    def __init__(self, fd: int, addresses: list[str], keeper: int, pipe: int) -> None:
        self.fd, self.addresses, self.keeper, self.pipe = fd, addresses, keeper, pipe

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """Let the keeper run DEL, once every other holder of the pipe is gone too."""
        self.close_fd()
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1

    def detach(self) -> None:
        """Release the keeper, and reap it."""
        self.release()
        if self.keeper > 0:
            try:
                os.waitpid(self.keeper, 0)
            except ChildProcessError:
                pass
            self.keeper = 0


def attach(p: Plan, image: str) -> Attached:
    """Create the network namespace and join it to the networks of `p`; fork the keeper."""
    from sifbox.runtime.sandbox import namespaces

    fd = namespaces.new_network(image=image)
    done: list[tuple[cni.Network, str, dict[str, Any] | None]] = []
    try:
        for index, net in enumerate(p.networks):
            ifname = cni.interface(index)
            done.append((net, ifname, None))
            result = _add(p, net, ifname, f"/proc/{os.getpid()}/fd/{fd}")
            done[-1] = (net, ifname, result)
    except BaseException:
        _delete_all(p, done, f"/proc/{os.getpid()}/fd/{fd}")
        os.close(fd)
        raise
    addresses = [a for _, _, result in done for a in cni.addresses(result or {})]
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the keeper
        status = 0
        try:
            os.close(write_end)
            _keep(read_end, fd, p, done)
        except BaseException:  # noqa: BLE001 - the keeper must end here, whatever happens
            status = 1
        finally:
            os._exit(status)
    os.close(read_end)
    return Attached(fd, addresses, pid, write_end)


def _keep(read_end: int, fd: int, p: Plan, done: list[tuple[cni.Network, str, dict[str, Any] | None]]) -> None:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C reaches the whole group: DEL must still run
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    keep = {0, 1, 2, read_end, fd}
    for name in os.listdir("/proc/self/fd"):
        n = int(name)
        if n not in keep:
            try:
                os.close(n)
            except OSError:
                pass
    while True:
        try:
            if not os.read(read_end, 64):
                break
        except InterruptedError:
            continue
    _delete_all(p, done, f"/proc/{os.getpid()}/fd/{fd}")


def _delete_all(p: Plan, done: list[tuple[cni.Network, str, dict[str, Any] | None]], netns: str) -> None:
    """DEL for each network, last first; a failure is reported, and the others still run."""
    for net, ifname, result in reversed(done):
        cache = os.path.join(RESULTS, cni.cache_name(net.name, p.container, ifname))
        for plugin in reversed(net.plugins):
            try:
                _call(p, net, plugin, "DEL", ifname, netns, result if net.version != "0.3.0" else None)
            except SifboxError as err:
                sys.stderr.write(f"sifbox: warning: {err}\n")
        try:
            os.unlink(cache)
        except OSError:
            pass


def _add(p: Plan, net: cni.Network, ifname: str, netns: str) -> dict[str, Any]:
    from sifbox.util.atomic import write_file

    for plugin in net.plugins:
        _check_version(p, net, plugin)
    prev: dict[str, Any] | None = None
    for plugin in net.plugins:
        out = _call(p, net, plugin, "ADD", ifname, netns, prev)
        prev = cni.parse_result(out, plugin["type"])
    result = prev or {}
    os.makedirs(RESULTS, mode=0o700, exist_ok=True)
    import json

    write_file(os.path.join(RESULTS, cni.cache_name(net.name, p.container, ifname)),
               json.dumps({"kind": "cniCacheV1", "containerId": p.container, "ifName": ifname,
                           "networkName": net.name, "result": result}).encode())  # fmt: skip
    return result


def _check_version(p: Plan, net: cni.Network, plugin: dict[str, Any]) -> None:
    program = find_plugin(plugin["type"], p.plugin_dirs, net.name)
    env = cni.environment("VERSION", "", "", "", ":".join(p.plugin_dirs), "")
    try:
        proc = subprocess.run([program], input=b'{"cniVersion":"%s"}' % net.version.encode(), env=env,
                              capture_output=True, timeout=TIMEOUT, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        raise _error(net, f"plugin `{plugin['type']}` did not answer VERSION: {err}") from None
    if not cni.supports(proc.stdout, net.version):
        raise _error(net, f"plugin `{plugin['type']}` does not support cniVersion {net.version}")


def _call(p: Plan, net: cni.Network, plugin: dict[str, Any], command: str, ifname: str, netns: str,
          prev: dict[str, Any] | None) -> bytes:  # fmt: skip
    program = find_plugin(plugin["type"], p.plugin_dirs, net.name)
    stdin = cni.plugin_config(net, plugin, prev, cni.runtime_config(p.request, net.name))
    env = cni.environment(command, p.container, netns, ifname, ":".join(p.plugin_dirs),
                          cni.cni_args(p.request, net.name))  # fmt: skip
    try:
        proc = subprocess.run([program], input=stdin, env=env, capture_output=True, timeout=TIMEOUT, check=False,
                              cwd="/")  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        raise _error(net, f"plugin `{plugin['type']}`: {err}", command) from None
    if proc.returncode != 0:
        raise _error(net, cni.error_message(proc.stdout, plugin["type"], proc.returncode), command)
    return proc.stdout


def _error(net: cni.Network, reason: str, command: str = "ADD") -> SifboxError:
    verb = "leave" if command == "DEL" else "join"
    return SifboxError(f"can't {verb} network `{net.name}`: {reason}", exit_status=ExitStatus.CANNOT_LAUNCH)
