"""Image references and platforms, as Docker and containers/image spell them (pure).

    busybox                      -> docker.io/library/busybox:latest
    ghcr.io/org/app:1.2          -> registry ghcr.io, repository org/app, tag 1.2
    localhost:5000/app@sha256:.. -> pinned by digest (a tag beside the digest is ignored)

Platforms are `os/arch[/variant]` (`linux/arm64/v8`); architecture names are
normalised the way the OCI image spec names them (x86_64 -> amd64, aarch64 -> arm64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API answers.
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)


class ReferenceError(ValueError):
    """A reference or platform that cannot be parsed; the message is the reason."""


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port], docker.io for Docker Hub
    repository: str  # library/busybox
    tag: str | None  # None when pinned by digest only
    digest: str | None  # sha256:...

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{name}@{self.digest}"
        return f"{name}:{self.tag or DEFAULT_TAG}"


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost" or part.startswith("[")


def parse_reference(text: str) -> ImageRef:
    """Parse `[registry/]repository[:tag][@digest]` (a leading `docker://` is allowed)."""
    ref = text.strip().removeprefix("docker:").removeprefix("//")
    if not ref:
        raise ReferenceError("the reference is empty")
    digest = None
    if "@" in ref:
        ref, digest = ref.rsplit("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ReferenceError(f"`{digest}` is not a valid digest (sha256:<64 hex digits>)")
    registry = DOCKER_HUB
    first, sep, rest = ref.partition("/")
    if sep and _looks_like_host(first):
        if not _HOST.fullmatch(first):
            raise ReferenceError(f"`{first}` is not a valid registry host")
        registry, ref = first, rest
    if registry in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        registry = DOCKER_HUB
    tag = None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ReferenceError(f"`{tag}` is not a valid tag")
    if not ref:
        raise ReferenceError("the repository name is empty")
    for component in ref.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise ReferenceError(
                f"`{ref}` is not a valid repository name (lowercase letters, digits, "
                "separators `.`, `_`, `-`, components joined by `/`)"
            )
    if registry == DOCKER_HUB and "/" not in ref:
        ref = f"library/{ref}"
    if digest is None and tag is None:
        tag = DEFAULT_TAG
    return ImageRef(registry, ref, None if digest else tag, digest)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64el": ("ppc64le", None),
}


def normalize_arch(arch: str, variant: str | None = None) -> tuple[str, str | None]:
    arch = arch.lower()
    if arch in _ARCH_ALIASES:
        arch, alias_variant = _ARCH_ALIASES[arch]
        variant = variant or alias_variant
    if arch == "arm64" and variant in ("v8", "8"):
        variant = None  # arm64 images usually omit the default variant
    if arch == "arm" and variant and not variant.startswith("v"):
        variant = f"v{variant}"
    return arch, variant


def parse_platform(text: str) -> Platform:
    """`os/arch[/variant]`, or a bare architecture (`--arch arm64`) for linux."""
    parts = text.strip().split("/")
    if len(parts) == 1 and parts[0]:
        parts = ["linux", parts[0]]
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ReferenceError(f"`{text}` is not a platform (os/arch[/variant], e.g. linux/arm64)")
    arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else None)
    return Platform(parts[0].lower(), arch, variant)


def host_platform(machine: str) -> Platform:
    """The platform of this machine from `os.uname().machine`."""
    arch, variant = normalize_arch(machine)
    if machine.startswith("armv") and arch not in ("arm64",):
        arch, variant = "arm", machine[3:5]
    return Platform("linux", arch, variant)


def platform_matches(wanted: Platform, candidate: dict[str, object]) -> bool:
    """Does a manifest list entry's `platform` object match `wanted`?"""
    if str(candidate.get("os", "")).lower() != wanted.os:
        return False
    arch, variant = normalize_arch(
        str(candidate.get("architecture", "")), str(candidate.get("variant") or "") or None
    )
    if arch != wanted.architecture:
        return False
    return wanted.variant is None or variant == wanted.variant


def select_manifest(index: dict[str, object], wanted: Platform) -> dict[str, object] | None:
    """The descriptor of an index/manifest list that matches `wanted`, or None.

    An exact variant match wins; without a variant wanted, the first entry for
    the os/arch does (attestation manifests with platform unknown/unknown never match).
    """
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        return None
    entries = [m for m in manifests if isinstance(m, dict) and isinstance(m.get("platform"), dict)]
    for entry in entries:
        if platform_matches(wanted, entry["platform"]):
            return entry
    return None


def platforms_of(index: dict[str, object]) -> list[str]:
    """The platforms an index offers, for an error message."""
    found = []
    manifests = index.get("manifests")
    for m in manifests if isinstance(manifests, list) else []:
        p = m.get("platform") if isinstance(m, dict) else None
        if isinstance(p, dict) and p.get("os") != "unknown":
            variant = p.get("variant")
            variant = None if variant is None else str(variant)
            found.append(str(Platform(str(p.get("os")), str(p.get("architecture")), variant)))
    return found
