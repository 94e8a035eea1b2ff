"""Pure parts of the registry client and of the `cache`/`registry` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sifbox.cli.commands.cache import human_size, parse_types
from sifbox.cli.main import main
from sifbox.oci import netconf, registry
from sifbox.util.errors import UsageError


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ({"mediaType": registry.OCI_INDEX, "manifests": []}, "", registry.OCI_INDEX),
        ({"schemaVersion": 2, "layers": []}, registry.DOCKER_MANIFEST, registry.DOCKER_MANIFEST),
        ({"schemaVersion": 2, "layers": []}, "application/json", registry.OCI_MANIFEST),
        ({"schemaVersion": 2, "manifests": []}, "text/plain", registry.OCI_INDEX),
        ({"schemaVersion": 1, "fsLayers": []}, "", registry.DOCKER_SCHEMA1[0]),
        (
            {"schemaVersion": 1},
            registry.DOCKER_SCHEMA1[1] + "; charset=utf-8",
            registry.DOCKER_SCHEMA1[1],
        ),
    ],
)
def test_media_type(body: dict[str, object], content_type: str, expected: str) -> None:
    assert registry._media_type(json.dumps(body).encode(), content_type) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("registry.example.org", False),
        ("localhost.example.org:5000", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert netconf.is_loopback(host) is loopback


def test_proxy_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert netconf.proxy_for("https", "reg.example.org") is None
    monkeypatch.setenv("https_proxy", "http://user:pw@proxy.site:3128/")
    monkeypatch.setenv("http_proxy", "proxy.site:8080")
    monkeypatch.setenv("no_proxy", "internal.site,.lan")
    assert netconf.proxy_for("https", "reg.example.org") == "proxy.site:3128"
    assert netconf.proxy_for("http", "reg.example.org:5000") == "proxy.site:8080"
    assert netconf.proxy_for("https", "internal.site") is None
    assert netconf.proxy_for("https", "box.lan:5000") is None
    assert netconf.proxy_for("https", "127.0.0.1:5000") is None


def test_registry_error_body() -> None:
    err = registry._HTTPError(
        404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
    )
    assert err.registry_error() == ("MANIFEST_UNKNOWN", "manifest unknown")
    assert registry._HTTPError(500, b"<html>").registry_error() == ("", "")


def test_descriptor_checks() -> None:
    good = {"digest": "sha256:" + "a" * 64, "size": 3, "mediaType": "x"}
    assert registry._descriptor(good, "m") == ("sha256:" + "a" * 64, 3, "x")
    for bad in (
        None,
        {"digest": "sha256:../../x", "size": 1},
        {"digest": "sha256:" + "a" * 64},
        {"digest": "sha256:" + "a" * 64, "size": -1},
    ):
        with pytest.raises(registry.RegistryError, match="can't read m"):
            registry._descriptor(bad, "m")


def test_fetch_image_bad_reference(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"can't pull `docker://Bad/Name`: .*not a valid"):
        registry.fetch_image("Bad/Name", platform=None, cache_dir=tmp_path, disable_cache=False)
    with pytest.raises(UsageError, match=r"can't pull `docker://Bad`: .*not a valid"):
        registry.fetch_image("docker://Bad", platform=None, cache_dir=tmp_path, disable_cache=False)
    with pytest.raises(UsageError, match="is not a platform"):
        registry.fetch_image("busybox", platform="a/b/c/d", cache_dir=tmp_path, disable_cache=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0.00 KiB"),
        (2048, "2.00 KiB"),
        (1536 * 1024, "1.50 MiB"),
        (3 << 30, "3.00 GiB"),
        (5 << 40, "5.00 TiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_parse_types() -> None:
    assert parse_types("all") == ("blob", "oci", "library", "oras", "shub", "net")
    assert parse_types("blob,oci,blob") == ("blob", "oci")
    assert parse_types("library, all") == parse_types("all")
    with pytest.raises(UsageError, match="can't use cache type `docker`"):
        parse_types("blob,docker")


def test_cache_list_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIFBOX_CACHEDIR", str(tmp_path / "none"))
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert out == (
        "There are 0 container file(s) using 0.00 KiB and 0 oci blob file(s) using 0.00 KiB of space\n"
        "Total space used: 0.00 KiB\n"
    )
    assert not (tmp_path / "none").exists()  # listing creates nothing


def test_registry_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIFBOX_CONFIGDIR", str(tmp_path))
    assert main(["registry", "login", "-u", "x", "-p", "y", "https://reg.example.org"]) == 125
    assert "only docker:// and oras://" in capsys.readouterr().err
    assert main(["registry", "logout", "docker://reg.example.org"]) == 255
    err = capsys.readouterr().err
    assert err.startswith(
        "sifbox: error: can't log out from registry `reg.example.org`: not logged in"
    )
    assert main(["registry", "list"]) == 0
    assert capsys.readouterr().out.split() == ["URI", "USERNAME"]


@pytest.mark.parametrize(("value", "want"), [
    ("2", 2.0), (" 0 ", 0.0), ("999999999999", 30.0), ("30", 30.0), ("-5", None), ("1.5", None), ("", None),
    (None, None), ("soon", None), ("٣", None), ("x" * 100, None),
    ("Thu, 01 Jan 1970 00:00:10 GMT", 10.0), ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # at now=0
    ("Fri, 31 Dec 9999 23:59:59 GMT", 30.0), ("Thu, 32 Jan 1970 00:00:10 GMT", None),
])  # fmt: skip
def test_retry_after_is_bounded(value: str | None, want: float | None) -> None:
    """A registry's Retry-After (seconds or an HTTP date) is honoured up to MAX_RETRY_AFTER;
    anything else is no request at all (the usual back-off applies)."""
    from sifbox.oci.registry import MAX_RETRY_AFTER, _Transient, backoff, retry_after

    assert MAX_RETRY_AFTER == 30.0
    assert retry_after(value, now=0.0) == want
    assert backoff(0.25, _Transient("x", want)) == max(0.25, want or 0.0)
    assert backoff(0.5, OSError()) == 0.5
