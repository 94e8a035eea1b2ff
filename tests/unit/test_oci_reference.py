"""Image references and platforms (sifbox.oci.reference): pure parsing."""

from __future__ import annotations

import pytest

from sifbox.oci.reference import (
    ImageRef,
    Platform,
    ReferenceError,
    host_platform,
    parse_platform,
    parse_reference,
    platforms_of,
    select_manifest,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", ImageRef("docker.io", "library/busybox", "latest", None)),
        ("busybox:1.36", ImageRef("docker.io", "library/busybox", "1.36", None)),
        ("//busybox:1.36", ImageRef("docker.io", "library/busybox", "1.36", None)),
        ("docker://busybox:1.36", ImageRef("docker.io", "library/busybox", "1.36", None)),
        ("docker://localhost:5000/a", ImageRef("localhost:5000", "a", "latest", None)),
        ("user/app", ImageRef("docker.io", "user/app", "latest", None)),
        ("docker.io/busybox", ImageRef("docker.io", "library/busybox", "latest", None)),
        (
            "index.docker.io/library/busybox",
            ImageRef("docker.io", "library/busybox", "latest", None),
        ),
        ("ghcr.io/org/team/app:v1", ImageRef("ghcr.io", "org/team/app", "v1", None)),
        ("localhost/app", ImageRef("localhost", "app", "latest", None)),
        ("localhost:5000/app:x", ImageRef("localhost:5000", "app", "x", None)),
        ("127.0.0.1:5000/a/b", ImageRef("127.0.0.1:5000", "a/b", "latest", None)),
        (f"busybox@{D}", ImageRef("docker.io", "library/busybox", None, D)),
        (f"busybox:1@{D}", ImageRef("docker.io", "library/busybox", None, D)),
        (f"reg.example.org:443/x/y@{D}", ImageRef("reg.example.org:443", "x/y", None, D)),
        ("user/a.b-c_d__e", ImageRef("docker.io", "user/a.b-c_d__e", "latest", None)),
        ("a.b/c", ImageRef("a.b", "c", "latest", None)),
    ],
)
def test_parse_reference(text: str, expected: ImageRef) -> None:
    assert parse_reference(text) == expected


def test_reference_properties() -> None:
    ref = parse_reference("busybox")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.reference == "latest"
    assert str(ref) == "docker.io/library/busybox:latest"
    pinned = parse_reference(f"localhost:5000/app@{D}")
    assert pinned.api_host == "localhost:5000"
    assert pinned.reference == D
    assert str(pinned) == f"localhost:5000/app@{D}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Busybox", "not a valid repository name"),
        ("busybox@sha256:abc", "not a valid digest"),
        ("busybox@md5:" + "a" * 32, "not a valid digest"),
        ("busybox:-bad", "not a valid tag"),
        ("busybox:" + "a" * 200, "not a valid tag"),
        ("reg.example.org/", "empty"),
        ("a//b", "not a valid repository name"),
        ("../etc/passwd", "not a valid"),
        ("x/../etc", "not a valid repository name"),
        ("bad_host!.org:5000/x", "not a valid registry host"),
    ],
)
def test_bad_references(text: str, reason: str) -> None:
    with pytest.raises(ReferenceError, match=reason):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("amd64", Platform("linux", "amd64")),
        ("x86_64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("armhf", Platform("linux", "arm", "v7")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "/amd64"])
def test_bad_platform(text: str) -> None:
    with pytest.raises(ReferenceError):
        parse_platform(text)


def test_host_platform() -> None:
    assert host_platform("x86_64") == Platform("linux", "amd64")
    assert host_platform("aarch64") == Platform("linux", "arm64")
    assert host_platform("armv7l") == Platform("linux", "arm", "v7")


INDEX = {
    "manifests": [
        {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        {
            "digest": "sha256:v6",
            "platform": {"os": "linux", "architecture": "arm", "variant": "v6"},
        },
        {
            "digest": "sha256:v7",
            "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
        },
        {
            "digest": "sha256:arm64",
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        },
        {"digest": "sha256:win", "platform": {"os": "windows", "architecture": "amd64"}},
    ]
}


@pytest.mark.parametrize(
    ("wanted", "digest"),
    [
        ("linux/amd64", "sha256:amd"),
        ("linux/arm/v7", "sha256:v7"),
        ("linux/arm", "sha256:v6"),
        ("linux/arm64", "sha256:arm64"),
        ("linux/arm64/v8", "sha256:arm64"),
        ("windows/amd64", "sha256:win"),
        ("linux/s390x", None),
    ],
)
def test_select_manifest(wanted: str, digest: str | None) -> None:
    chosen = select_manifest(INDEX, parse_platform(wanted))
    assert (chosen or {}).get("digest") == digest


def test_platforms_of() -> None:
    assert platforms_of(INDEX) == [
        "linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8", "windows/amd64"
    ]  # fmt: skip
