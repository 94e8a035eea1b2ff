"""sifbox.runtime.network.plan: which networks a launch joins, and who may ask (no plugin runs)."""

from __future__ import annotations

import os

import pytest

from sifbox.config.sysconf import defaults
from sifbox.runtime import network
from sifbox.runtime.spec import ContainerSpec
from sifbox.util.errors import UsageError


def spec(**kw: object) -> ContainerSpec:
    return ContainerSpec(image="/img.sif", action="exec", **{"net": True, **kw})


def plan(s: ContainerSpec, is_root: bool, warnings: list[str] | None = None):  # type: ignore[no-untyped-def]
    return network.plan(s, defaults(), "/etc/sifbox/sifbox.conf", is_root, "bob",
                        (warnings if warnings is not None else []).append)  # fmt: skip


def test_no_namespace_or_loopback_only_is_no_plan() -> None:
    assert plan(spec(net=False), True) is None
    assert plan(spec(network=("none",)), True) is None
    assert plan(spec(), False) is None  # a user's plain --net: loopback only


def test_users_are_refused_with_apptainers_words() -> None:
    for s in (spec(network=("bridge",)), spec(network=("none",), network_args=("portmap=80:80/tcp",))):
        with pytest.raises(UsageError) as err:
            plan(s, False)
        assert "not permitted for unprivileged users" in err.value.message or "--network-args" in err.value.message


def test_a_users_fakeroot_falls_back_to_none_with_apptainers_warnings() -> None:
    warnings: list[str] = []
    assert plan(spec(fakeroot=True, network=("bridge",)), False, warnings) is None
    assert "only --network=fakeroot is permitted" in warnings[0] and "falling back" in warnings[1]


@pytest.mark.skipif(not os.path.exists("/usr/lib/cni/bridge"), reason="containernetworking-plugins not installed")
def test_roots_default_is_the_shipped_bridge() -> None:
    got = plan(spec(network_args=("portmap=8080:80/tcp",)), True)
    assert [n.name for n in got.networks] == ["bridge"] and got.container.startswith("sifbox")
    assert [p["type"] for p in got.networks[0].plugins] == ["bridge", "firewall", "portmap"]
    assert plan(spec(fakeroot=True, network=("fakeroot",)), True).networks[0].name == "fakeroot"
