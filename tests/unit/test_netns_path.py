"""--netns-path: who may join which network namespace (network.existing), and what the sandbox
accepts as one (sandbox.namespaces.open_network): hostile paths first. No namespace is joined
here; opening one's own /proc/self/ns files needs no privilege."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sifbox.config.sysconf import defaults, parse
from sifbox.runtime import network
from sifbox.runtime.sandbox import namespaces
from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import LaunchError
from sifbox.runtime.spec import ContainerSpec
from sifbox.util.errors import UsageError


def spec(path: str, **kw: object) -> ContainerSpec:
    return ContainerSpec(image="/img.sif", action="exec", **{"net": True, "netns_path": path, **kw})


def refused(path: str) -> str:
    with pytest.raises(LaunchError) as err:
        fd = namespaces.open_network(path)
        os.close(fd)
    assert err.value.message.startswith(f"can't join the network namespace `{path}`: "), err.value.message
    return err.value.message


def test_a_network_namespace_is_opened() -> None:
    fd = namespaces.open_network("/proc/self/ns/net")
    try:
        assert sc.namespace_type(fd) == sc.CLONE_NEWNET
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_another_kind_of_namespace_is_refused() -> None:
    assert refused("/proc/self/ns/mnt").endswith("not a network namespace (a mount namespace)")
    assert refused("/proc/self/ns/uts").endswith("(a UTS namespace)")


@pytest.mark.parametrize("kind", ["file", "dir", "fifo", "devnull", "missing", "loop"])
def test_what_is_no_namespace_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ns"
    if kind == "file":
        path.write_text("net:[4026531840]\n")
    elif kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # opening it to read would block: refused from its O_PATH descriptor
    elif kind == "devnull":
        path.symlink_to("/dev/null")
    elif kind == "loop":
        path.symlink_to(path)
    message = refused(str(path))
    if kind == "missing":
        assert message.endswith("no such file or directory")
    elif kind == "loop":
        assert "too many levels of symbolic links" in message
    else:
        assert message.endswith("not a network namespace (not a namespace file)")


def test_a_symlink_swapped_after_the_check_changes_nothing(tmp_path: Path) -> None:
    link = tmp_path / "netns"
    link.symlink_to("/proc/self/ns/net")
    fd = namespaces.open_network(str(link))
    try:
        link.unlink()
        link.symlink_to("/proc/self/ns/mnt")  # what is joined is the descriptor, not the path
        assert sc.namespace_type(fd) == sc.CLONE_NEWNET
    finally:
        os.close(fd)
    assert "a mount namespace" in refused(str(link))


def test_root_joins_any_network_namespace() -> None:
    joined = network.plan(spec("/proc/self/ns/net"), defaults(), "/etc/sifbox/sifbox.conf", True, "root", print)
    assert isinstance(joined, network.Joined) and joined.addresses == []
    try:
        assert sc.namespace_type(joined.fd) == sc.CLONE_NEWNET
    finally:
        joined.detach()
    assert joined.fd == -1


def test_root_gets_the_sandboxs_refusal_before_anything_starts() -> None:
    with pytest.raises(LaunchError, match="a mount namespace"):
        network.plan(spec("/proc/self/ns/mnt"), defaults(), "/etc/sifbox/sifbox.conf", True, "root", print)


@pytest.mark.parametrize("extra", [{"network": ("bridge",)}, {"network_args": ("portmap=80:80/tcp",)},
                                   {"fakeroot": True}])  # fmt: skip
def test_combinations_apptainer_refuses(extra: dict[str, object]) -> None:
    for is_root in (True, False):
        with pytest.raises(UsageError, match="can't use --netns-path `/proc/self/ns/net` with"):
            network.existing(spec("/proc/self/ns/net", **extra), defaults(), is_root, "bob")


def _conf(text: str):  # type: ignore[no-untyped-def]
    return parse(text, "sifbox.conf")


@pytest.mark.parametrize(
    ("conf", "path", "why"),
    [
        ("", "/run/netns/lab", "not permitted"),
        # listed path, user not listed (and no group of theirs is)
        ("allow netns paths = /run/netns/lab\nallow net users = alice\n", "/run/netns/lab", "not permitted"),
        # listed user, another path; a path under a listed one is not that one
        ("allow netns paths = /run/netns/lab\nallow net users = bob\n", "/run/netns/other", "not permitted"),
        ("allow netns paths = /run/netns\nallow net users = bob\n", "/run/netns/lab", "not permitted"),
        ("allow netns paths = /run/netns/lab\nallow net users = bob\n", "/run/netns/lab/../lab2", "not permitted"),
        # listed user and path: still refused, for want of a setuid helper, and said so
        ("allow netns paths = /run/netns/lab\nallow net users = bob\n", "/run/netns/lab", "needs root"),
        ("allow netns paths = /run/netns/lab\nallow net users = bob\n", "/run/netns/./lab", "needs root"),
    ],
)
def test_users(conf: str, path: str, why: str) -> None:
    with pytest.raises(UsageError) as err:
        network.existing(spec(path), _conf(conf), False, "bob")
    assert why in err.value.message, err.value.message
    assert "allow netns paths" in (err.value.hint or "")
