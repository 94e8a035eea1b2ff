"""config.json of an OCI bundle, read and checked without running anything (sifbox.runtime.ocispec)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sifbox.runtime import ocispec, ocistate
from sifbox.runtime.caps import NUMBERS

SPEC = json.loads((Path(__file__).resolve().parents[2] / "tests/data/oci/runc-spec.json").read_text())


def doc(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(SPEC)
    d.update(changes)
    return d


def test_runc_default_spec() -> None:
    b = ocispec.parse(doc(), "/b")
    assert b.rootfs == "/b/rootfs" and b.readonly
    assert b.process.args == ("sh",) and b.process.env["TERM"] == "xterm" and b.process.cwd == "/"
    assert b.process.caps == {NUMBERS["CAP_AUDIT_WRITE"], NUMBERS["CAP_KILL"], NUMBERS["CAP_NET_BIND_SERVICE"]}
    assert b.process.rlimits == (("RLIMIT_NOFILE", 1024, 1024),)
    assert b.namespaces == {"pid", "network", "ipc", "uts", "mount"}
    assert b.hostname == "runc"
    kinds = [(m.kind, m.target) for m in b.mounts]
    assert kinds[:7] == [("proc", "/proc"), ("tmpfs", "/dev"), ("devpts", "/dev/pts"), ("tmpfs", "/dev/shm"),
                         ("mqueue", "/dev/mqueue"), ("sysfs", "/sys"), ("rbind", "/sys/fs/cgroup")]  # fmt: skip
    devpts = b.mounts[2]
    assert devpts.options == "newinstance,ptmxmode=0666,mode=0620,gid=5"
    assert ("bind", "/dev/null") in kinds and ("mask", "/proc/kcore") in kinds and ("readonly", "/proc/sys") in kinds


@pytest.mark.parametrize("dest", ["/proc/self/attr/exec", "/proc/sys", "/proc/../proc/sysrq-trigger",
                                  "/proc/1/../self/fd", "//proc//kcore"])  # fmt: skip
def test_mounts_into_proc_refused(dest: str) -> None:
    d = doc()
    d["mounts"].append({"destination": dest, "type": "tmpfs", "source": "tmpfs"})
    with pytest.raises(ocispec.ConfigError, match="inside /proc"):
        ocispec.parse(d, "/b")


def test_proc_allowlist_binds() -> None:
    d = doc()
    d["mounts"].append({"destination": "/proc/cpuinfo", "type": "bind", "source": "/tmp/c", "options": ["bind"]})
    assert ocispec.parse(d, "/b").mounts[-1 - len(d["linux"]["maskedPaths"]) - len(d["linux"]["readonlyPaths"])
                                          - len(ocispec.DEFAULT_DEVICES)].target == "/proc/cpuinfo"  # fmt: skip


@pytest.mark.parametrize("dest, found", [("/../../etc", "/etc"), ("/a/./b/../c", "/a/c"), ("//x//y/", "/x/y")])
def test_destinations_normalized(dest: str, found: str) -> None:
    d = doc()
    d["mounts"].append({"destination": dest, "type": "tmpfs", "source": "tmpfs"})
    assert found in [m.target for m in ocispec.parse(d, "/b").mounts]


@pytest.mark.parametrize("mount, reason", [
    ({"destination": "relative", "type": "tmpfs"}, "not an absolute path"),
    ({"destination": "/", "type": "tmpfs"}, "root"),
    ({"destination": "/x", "type": "nfs", "source": "h:/e"}, "not supported"),
    ({"destination": "/x", "type": "bind", "options": ["rbind"]}, "no source"),
    ({"destination": "/x\0y", "type": "tmpfs"}, "not a path"),
])  # fmt: skip
def test_bad_mounts(mount: dict[str, Any], reason: str) -> None:
    d = doc()
    d["mounts"].append(mount)
    with pytest.raises(ocispec.ConfigError, match=reason):
        ocispec.parse(d, "/b")


def test_relative_bind_source_is_the_bundles() -> None:
    d = doc()
    d["mounts"].append({"destination": "/data", "type": "none", "source": "data", "options": ["rbind", "ro"]})
    m = next(m for m in ocispec.parse(d, "/b").mounts if m.target == "/data")
    assert (m.kind, m.source, m.readonly) == ("rbind", "/b/data", True)


@pytest.mark.parametrize("cwd", ["/proc/self/fd/7", "/proc", "relative"])
def test_bad_cwd(cwd: str) -> None:
    d = doc()
    d["process"]["cwd"] = cwd
    with pytest.raises(ocispec.ConfigError):
        ocispec.parse(d, "/b")


@pytest.mark.parametrize("linux, reason", [
    ({"namespaces": [{"type": "pid"}]}, "mount namespace is required"),
    ({"namespaces": [{"type": "mount"}, {"type": "time"}]}, "unknown namespace"),
    ({"namespaces": [{"type": "mount"}, {"type": "net", "path": "/proc/1/ns/net"}]}, "unknown namespace"),
    ({"namespaces": [{"type": "mount", "path": "/proc/1/ns/mnt"}]}, "joining an existing mount namespace"),
    ({"namespaces": [{"type": "mount"}], "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]},
     "need a user namespace"),
    ({"namespaces": [{"type": "mount"}, {"type": "user"}], "uidMappings": [{"containerID": 0, "hostID": 1}]},
     "containerID, hostID, size"),
    ({"namespaces": [{"type": "mount"}], "devices": [{"path": "/etc/x", "type": "c"}]}, "under /dev"),
    ({"namespaces": [{"type": "mount"}], "devices": [{"path": "/dev/pts", "type": "c"}]}, "under /dev"),
    ({"namespaces": [{"type": "mount"}], "devices": [{"path": "/dev/p", "type": "p"}]}, "only c, u and b"),
    ({"namespaces": [{"type": "mount"}], "maskedPaths": ["relative"]}, "absolute"),
])  # fmt: skip
def test_bad_linux(linux: dict[str, Any], reason: str) -> None:
    d = doc(linux=linux)
    d.pop("hostname")
    with pytest.raises(ocispec.ConfigError, match=reason):
        ocispec.parse(d, "/b")


@pytest.mark.parametrize("process, reason", [
    ({"args": [], "cwd": "/"}, "non-empty list"),
    ({"args": ["sh"], "env": ["NOEQUALS"]}, "NAME=VALUE"),
    ({"args": ["sh"], "user": {"uid": -1}}, "non-negative"),
    ({"args": ["sh"], "user": {"uid": True}}, "must be int"),
    ({"args": ["sh"], "capabilities": {"bounding": ["CAP_NOPE"]}}, "unknown capability"),
    ({"args": ["sh"], "rlimits": [{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]}, "unknown rlimit"),
])  # fmt: skip
def test_bad_process(process: dict[str, Any], reason: str) -> None:
    with pytest.raises(ocispec.ConfigError, match=reason):
        ocispec.parse(doc(process=process), "/b")


def test_hostname_needs_uts() -> None:
    d = doc()
    d["linux"]["namespaces"] = [ns for ns in d["linux"]["namespaces"] if ns["type"] != "uts"]
    with pytest.raises(ocispec.ConfigError, match="UTS namespace"):
        ocispec.parse(d, "/b")


def test_devices_default_and_extra() -> None:
    d = doc()
    d["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    devices = {m.target: m.source for m in ocispec.parse(d, "/b").mounts if m.kind == "bind"}
    assert devices["/dev/null"] == "c:-1:-1" and devices["/dev/fuse"] == "c:10:229"


def test_host_device(tmp_path: Path) -> None:
    assert ocispec.host_device("c:-1:-1", "/dev/null") == "/dev/null"
    assert ocispec.host_device("c:1:3", "/dev/whatever") == "/dev/null"
    with pytest.raises(ocispec.ConfigError, match="no such device"):
        ocispec.host_device("c:4095:4095", "/dev/x")
    with pytest.raises(ocispec.ConfigError, match="no such device"):
        ocispec.host_device("b:1:3", "/dev/null")  # a character device is not a block device


@pytest.mark.parametrize("cid", ["", ".", "..", "a/b", "a b", "../x", "x\n"])
def test_bad_container_ids(cid: str) -> None:
    with pytest.raises(ocistate.OciError, match="invalid id"):
        ocistate.check_id(cid)


def test_good_container_ids() -> None:
    for cid in ("a", "web-1", "x_y.z+1", "0123456789abcdef" * 4):
        assert ocistate.check_id(cid) == cid


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ocispec.ConfigError, match="can't read"):
        ocispec.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ocispec.ConfigError, match="not JSON"):
        ocispec.load(str(tmp_path))


def test_seccomp_profiles_compile() -> None:
    seccomp = pytest.importorskip("sifbox.security.seccomp")
    try:
        seccomp.binding()
    except seccomp.SeccompError:
        pytest.skip("python3-seccomp is not installed")
    base = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
    program = seccomp.compile_profile(base)
    assert program and len(program) % 8 == 0
    cond = copy.deepcopy(base)
    cond["syscalls"].append({"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}})
    assert seccomp.compile_profile(cond) == program  # the condition does not hold: no rule
    assert seccomp.compile_profile(cond, caps=frozenset({"CAP_SYS_ADMIN"})) != program
    args = copy.deepcopy(base)
    args["syscalls"].append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]})  # fmt: skip
    assert seccomp.compile_profile(args) != program
    for bad, reason in (({"defaultAction": "SCMP_ACT_NOPE"}, "unknown action"),
                        ({**base, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                                "args": [{"index": 0, "op": "SCMP_CMP_ABOUT"}]}]}, "unknown operator"),
                        ([], "not a JSON object")):  # fmt: skip
        with pytest.raises(seccomp.SeccompError, match=reason):
            seccomp.compile_profile(bad)


def test_seccomp_in_config() -> None:
    d = doc()
    d["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW"}
    assert ocispec.parse(d, "/b").seccomp == {"defaultAction": "SCMP_ACT_ALLOW"}
    assert ocispec.parse(doc(), "/b").seccomp is None


def test_spec_is_runcs() -> None:
    """`sifbox oci spec` writes runc spec's config.json (but the hostname), and it parses."""
    from sifbox.runtime.ocimode import runc_spec

    ours = runc_spec()
    assert {**ours, "hostname": "runc", "ociVersion": SPEC["ociVersion"]} == SPEC
    rootless = runc_spec(rootless=True)
    assert {"type": "user"} in rootless["linux"]["namespaces"] and "resources" not in rootless["linux"]
    assert ocispec.parse(rootless, "/b").uid_maps and ocispec.parse(ours, "/b").hostname == "sifbox"


def test_namespaces_by_path() -> None:
    """pid/network/ipc/uts/cgroup namespaces may be joined by path; mount and user ones, a
    relative path, or a hostname for a joined UTS namespace are refused."""
    from sifbox.runtime import ocispec

    def doc(namespaces: list[dict[str, str]], **extra: object) -> dict[str, object]:
        return {"root": {"path": "rootfs"}, "process": {"args": ["true"]},
                "linux": {"namespaces": [{"type": "mount"}, *namespaces]}, **extra}  # fmt: skip

    b = ocispec.parse(doc([{"type": "network", "path": "/run/netns/x"}, {"type": "pid"}]), "/b")
    assert b.ns_paths == {"network": "/run/netns/x"} and {"network", "pid"} <= b.namespaces
    assert ocispec.parse(doc([{"type": "pid"}]), "/b").ns_paths is None
    for bad in ([{"type": "user", "path": "/proc/1/ns/user"}], [{"type": "network", "path": "run/netns/x"}]):
        with pytest.raises(ocispec.ConfigError):
            ocispec.parse(doc(bad), "/b")
    with pytest.raises(ocispec.ConfigError, match="hostname needs a UTS namespace"):
        ocispec.parse(doc([{"type": "uts", "path": "/proc/1/ns/uts"}], hostname="h"), "/b")
    with pytest.raises(ocispec.ConfigError, match="mount namespace"):
        ocispec.parse({"root": {"path": "r"}, "process": {"args": ["true"]},
                       "linux": {"namespaces": [{"type": "mount", "path": "/proc/1/ns/mnt"}]}}, "/b")  # fmt: skip
