"""sifbox.formats.remoteconf: Apptainer's remote.yaml, read strictly and written back, its
endpoint rules (sync with the system's, keyserver order), and hostile files."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sifbox.formats import hkp
from sifbox.formats import remoteconf as rc

APPTAINER = b"""Active: DefaultRemote
Remotes:
  DefaultRemote:
    URI: cloud.apptainer.org
    System: true
    Exclusive: false
"""


def test_apptainer_file() -> None:
    conf = rc.parse(APPTAINER)
    assert conf.active == "DefaultRemote"
    ep = conf.remotes["DefaultRemote"]
    assert (ep.uri, ep.system, ep.exclusive) == ("cloud.apptainer.org", True, False)
    assert [k.uri for k in ep.active_keyservers()] == [rc.DEFAULT_KEYSERVER]
    assert rc.parse(rc.dump(conf)) == conf
    assert rc.dump(conf).decode().startswith("Active: DefaultRemote\nRemotes:\n  DefaultRemote:\n    URI: cloud")


def test_round_trip_all_fields() -> None:
    conf = rc.RemoteConfig("yes", {"yes": rc.Endpoint("h", "tok", False, True, [rc.ServiceConfig("hkp://k", True, True, True)])},
                           [rc.Credential("https://k", "Basic eDp5", True)])  # fmt: skip
    text = rc.dump(conf)
    assert b"Active: 'yes'" in text or b'Active: "yes"' in text
    assert rc.parse(text) == conf
    assert "eDp5" not in repr(conf.credentials[0])


def test_empty() -> None:
    assert rc.parse(b"") == rc.RemoteConfig()
    assert rc.parse(b"Active: ''\nRemotes: {}\n") == rc.RemoteConfig()


@pytest.mark.parametrize("data", [
    b"Active: x\nBogus: 1\n", b"Remotes:\n  a:\n    Unknown: 1\n", b"Remotes: [1]\n", b"- a\n",
    b"Remotes:\n  a:\n    System: maybe\n", b"Active: [1]\n", b"Remotes:\n  a b: {}\n", b"Remotes:\n  'a/b': {}\n",
    b"\xff\xfe", b"Active: 'x\n", b"[" * 100000, b"? [a]\n: b\n", b"Credentials: {a: 1}\n",
    b"Remotes:\n  a:\n    URI: \"x\\x1b[2J\"\n", b"a: " + b"x" * (rc.MAX_SIZE + 1),
    b"Remotes:\n  a:\n    Keyservers: [" + b"{URI: u}," * (rc.MAX_ENTRIES + 1) + b"]\n",
])  # fmt: skip
def test_refused(data: bytes) -> None:
    with pytest.raises(rc.RemoteConfError):
        rc.parse(data)


def test_aliases_stay_bounded() -> None:
    # a billion-laughs file: aliases share one list; the schema walk stops at its first entry
    lines = [b"Active: a", b"Remotes:", b"  a:", b"    Keyservers: &l0 [{URI: u}]"]
    lines += [b"  b%d:\n    Keyservers: &l%d [*l%d, *l%d]" % (i, i, i - 1, i - 1) for i in range(1, 30)]
    with pytest.raises(rc.RemoteConfError, match="expected a mapping"):
        rc.parse(b"\n".join(lines) + b"\n")


@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    try:
        rc.parse(data)
    except rc.RemoteConfError:
        pass


def test_sync_from() -> None:
    user = rc.RemoteConfig("", {"mine": rc.Endpoint("m"), "DefaultRemote": rc.Endpoint("u")})
    system = rc.RemoteConfig("DefaultRemote", {"DefaultRemote": rc.Endpoint("s", system=True), "site": rc.Endpoint("x", system=True)})
    assert rc.sync_from(user, system) == ["DefaultRemote"]
    assert user.active == "DefaultRemote" and user.remotes["DefaultRemote"].uri == "u"
    assert user.remotes["site"].system
    excl = rc.RemoteConfig("", {"site": rc.Endpoint("x", system=True, exclusive=True)})
    mine = rc.RemoteConfig("mine", {"mine": rc.Endpoint("m")})
    rc.sync_from(mine, excl)
    assert mine.active == "site"


def test_keyserver_order() -> None:
    ep = rc.Endpoint(rc.DEFAULT_CLOUD, system=True)
    rc.add_keyserver(ep, "hkp://a", 0, False, hkp.same_keyserver)
    rc.add_keyserver(ep, "hkp://b", 1, True, hkp.same_keyserver)
    assert [k.uri for k in ep.keyservers] == ["hkp://b", rc.DEFAULT_KEYSERVER, "hkp://a"]
    with pytest.raises(rc.RemoteConfError, match="already configured"):
        rc.add_keyserver(ep, "http://a:11371", 0, False, hkp.same_keyserver)
    with pytest.raises(rc.RemoteConfError, match="out of range"):
        rc.add_keyserver(ep, "hkp://c", 9, False, hkp.same_keyserver)
    rc.remove_keyserver(ep, rc.DEFAULT_KEYSERVER, hkp.same_keyserver)  # the cloud's is skipped, not removed
    assert [k.uri for k in ep.active_keyservers()] == ["hkp://b", "hkp://a"]
    rc.add_keyserver(ep, rc.DEFAULT_KEYSERVER, 1, False, hkp.same_keyserver)  # and comes back
    assert ep.active_keyservers()[0].uri == rc.DEFAULT_KEYSERVER
    rc.remove_keyserver(ep, "hkp://a", hkp.same_keyserver)
    rc.remove_keyserver(ep, "hkp://b", hkp.same_keyserver)
    with pytest.raises(rc.RemoteConfError, match="primary keyserver"):
        rc.remove_keyserver(ep, rc.DEFAULT_KEYSERVER, hkp.same_keyserver)
    with pytest.raises(rc.RemoteConfError, match="not configured"):
        rc.remove_keyserver(ep, "hkp://zzz", hkp.same_keyserver)
