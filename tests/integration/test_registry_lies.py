"""A registry that lies: Debian's docker-registry on 127.0.0.1 behind a proxy that alters its
answers (tests/integration/faulty_proxy.py): a wrong `Docker-Content-Digest` on a pulled
manifest and on a pushed blob or manifest, a layer truncated or altered on the way, a
consistent manifest whose media types lie, 401/403/404, 429 with `Retry-After`, 5xx until the
retries run out. `pull`, `pull --oci` and `push` (docker:// and oras://): one error line, no
traceback, nothing half-written, the cache as it was; a transient failure followed by
success is a success, after the pause the registry asked for. As root and as the test user.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.faulty_proxy import FaultyProxy
from tests.integration.images import env_for
from tests.integration.registry_server import RegistryServer, busybox_registry

pytestmark = pytest.mark.integration

CLI = os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox")
REPO = "test/busybox"
ZEROS = "sha256:" + "0" * 64


@dataclass
class Lab:
    reg: RegistryServer
    manifest: dict[str, Any]
    sif: Path
    ocisif: Path

    @property
    def layer(self) -> str:
        return str(self.manifest["layers"][0]["digest"])

    def manifest_with(self, **change: Any) -> bytes:
        """The image's manifest with `config`/`layer` media types changed: a consistent lie."""
        doc = json.loads(json.dumps(self.manifest))
        if "config" in change:
            doc["config"]["mediaType"] = change["config"]
        if "layer" in change:
            doc["layers"][0]["mediaType"] = change["layer"]
        return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the registry is started as root")
    with busybox_registry("sifbox-lies-", f"{REPO}:1") as reg:
        req = urllib.request.Request(f"http://{reg.host}/v2/{REPO}/manifests/1",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            manifest = json.loads(resp.read())
        work = reg.workdir.parent
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIFBOX_")},
               "SIFBOX_CACHEDIR": str(work / "cache")}  # fmt: skip
        out = []
        for name, flags in (("img.sif", []), ("img.oci.sif", ["--oci"])):
            r = subprocess.run([CLI, "pull", *flags, str(work / name), f"docker://{reg.host}/{REPO}:1"],
                               capture_output=True, text=True, check=False, env=env, timeout=300)  # fmt: skip
            assert r.returncode == 0, r.stderr
            (work / name).chmod(0o644)
            out.append(work / name)
        r = subprocess.run([CLI, "push", str(out[0]), f"oras://{reg.host}/test/sif:1"], capture_output=True, text=True,
                           check=False, env=env, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        yield Lab(reg, manifest, out[0], out[1])


def _env(who: Any, tmp: Path) -> dict[str, str]:
    return env_for(who, SIFBOX_CACHEDIR=str(tmp / "cache"), SIFBOX_PUSH_CHUNK_SIZE=str(256 << 10))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _cache_holds_only_verified_blobs(cache: Path) -> None:
    """What a failed pull may leave in the cache: whole blobs, checked against their digest (the
    next pull reuses them); no manifest, image layout or SIF, no partial file."""
    for f in _files(cache):
        path = cache / f
        if path.is_dir() or f.startswith("locks/") or f == "blob/oci-layout":
            continue
        assert f.startswith("blob/blobs/sha256/"), f
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f
        try:
            doc = json.loads(path.read_bytes())
        except ValueError:
            doc = None
        assert not (isinstance(doc, dict) and "layers" in doc), f"a manifest was cached: {f}"


def _one_error(proc: subprocess.CompletedProcess[str], said: str) -> str:
    assert proc.returncode == 255, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
    assert len(errors) == 1 and errors[0].startswith("sifbox: error: can't "), proc.stderr
    assert said in errors[0] or f"hint: {said}" in proc.stderr, proc.stderr
    assert all(ln.startswith(("INFO", "sifbox: error:", "hint:")) for ln in proc.stderr.splitlines()), proc.stderr
    return errors[0]


Rule = Callable[[str, str, int], tuple[Any, ...] | None]


def _on(method: str, part: str, action: tuple[Any, ...], times: int = 1 << 30) -> Rule:
    """`action` on the first `times` requests `method` whose path holds `part`."""
    seen = [0]

    def rule(m: str, path: str, index: int) -> tuple[Any, ...] | None:
        if m == method and part in path and seen[0] < times:
            seen[0] += 1
            return action
        return None

    return rule


# -- pull ---------------------------------------------------------------------------------------
PULL_LIES: dict[str, tuple[Callable[[Lab], Rule], str]] = {
    "truncated-layer": (lambda lab: _on("GET", lab.layer, ("truncate", 1000)), "can't download blob"),
    "altered-layer": (lambda lab: _on("GET", lab.layer, ("flip", 5000)), "digest mismatch"),
    "manifest-digest-header": (lambda lab: _on("GET", "/manifests/1", ("header", "Docker-Content-Digest", ZEROS)),
                               "digest mismatch"),
    "layer-media-type": (lambda lab: _on("GET", "/manifests/1", (
        "body", lab.manifest_with(layer="application/vnd.example.not-a-layer"))), "not a tar layer"),
    "config-media-type": (lambda lab: _on("GET", "/manifests/1", (
        "body", lab.manifest_with(config="application/vnd.sylabs.sif.config.v1+json"))), "pull it with `oras://"),
    "manifest-401": (lambda lab: _on("GET", "/manifests/", ("status", 401)), "requires authentication"),
    "layer-403": (lambda lab: _on("GET", lab.layer, ("status", 403)), "HTTP 403"),
    "layer-404": (lambda lab: _on("GET", lab.layer, ("status", 404)), "not found"),
    "layer-503": (lambda lab: _on("GET", lab.layer, ("status", 503)), "answered HTTP 503"),
}  # fmt: skip


#: `pull --oci` shares the client and the cache with `pull`: the lies about blobs and manifests.
PULL_OCI_LIES = ("truncated-layer", "altered-layer", "manifest-digest-header", "config-media-type")


@pytest.mark.parametrize(("lie", "oci"), [(lie, False) for lie in PULL_LIES] + [(lie, True) for lie in PULL_OCI_LIES],
                         ids=[*PULL_LIES, *(f"{lie}-oci" for lie in PULL_OCI_LIES)])  # fmt: skip
def test_pull_from_a_lying_registry(lie: str, oci: bool, lab: Lab, run_as: Any, as_who: Any,
                                    shared_tmp: Path) -> None:  # fmt: skip
    make_rule, said = PULL_LIES[lie]
    out = shared_tmp / "got.sif"
    with FaultyProxy(lab.reg.host, make_rule(lab)) as proxy:
        argv = [CLI, "pull", *(["--oci"] if oci else []), str(out), f"docker://{proxy.host}/{REPO}:1"]
        proc = run_as(as_who, argv, env=_env(as_who, shared_tmp), timeout=300)
    _one_error(proc, said)
    if lie == "layer-503":  # the retry limit: the first try and 3 more
        assert sum(r.startswith("GET") and lab.layer in r for r in proxy.requests) == 4, proxy.requests
    assert sorted(os.listdir(shared_tmp)) in ([], ["cache"]), os.listdir(shared_tmp)  # nothing half-written
    _cache_holds_only_verified_blobs(shared_tmp / "cache")
    assert lab.layer[7:] not in _files(shared_tmp / "cache" / "blob"), lie


def test_pull_oras_of_a_docker_image_and_docker_of_a_sif(lab: Lab, run_as: Any, as_who: Any, shared_tmp: Path) -> None:
    """The media types the real registry gives are checked: oras:// of an OCI image, docker://
    of a SIF pushed with oras://."""
    out = shared_tmp / "got.sif"
    proc = run_as(as_who, [CLI, "pull", str(out), f"oras://{lab.reg.host}/{REPO}:1"], env=_env(as_who, shared_tmp))
    _one_error(proc, "not a SIF artifact")
    for flags in ([], ["--oci"]):
        proc = run_as(as_who, [CLI, "pull", *flags, str(out), f"docker://{lab.reg.host}/test/sif:1"],
                      env=_env(as_who, shared_tmp))  # fmt: skip
        _one_error(proc, "pull it with `oras://")
    assert sorted(os.listdir(shared_tmp)) in ([], ["cache"]), os.listdir(shared_tmp)


def test_pull_waits_as_a_429_asks_then_succeeds(lab: Lab, run_as: Any, as_who: Any, shared_tmp: Path) -> None:
    """429 with `Retry-After: 1` on the layer, 500 on the manifest, then the real answers: the
    pull (`pull --oci` for the user) succeeds, the layer asked again no sooner than the registry
    said."""
    layer_429 = _on("GET", lab.layer, ("status", 429, {"Retry-After": "1"}), times=1)
    manifest_500 = _on("GET", "/manifests/1", ("status", 500), times=1)

    def rule(m: str, path: str, index: int) -> tuple[Any, ...] | None:
        return layer_429(m, path, index) or manifest_500(m, path, index)

    out = shared_tmp / "got.sif"
    with FaultyProxy(lab.reg.host, rule) as proxy:
        argv = [CLI, "pull", *([] if as_who.is_root else ["--oci"]), str(out), f"docker://{proxy.host}/{REPO}:1"]
        proc = run_as(as_who, argv, env=_env(as_who, shared_tmp), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
    gets = [t for t, r in proxy.times if r.startswith("GET") and lab.layer in r]
    assert len(gets) == 2 and gets[1] - gets[0] >= 0.95, proxy.times


# -- push ---------------------------------------------------------------------------------------
def _registry_has(lab: Lab, repo: str, tag: str) -> bool:
    req = urllib.request.Request(f"http://{lab.reg.host}/v2/{repo}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30):
            return True
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise


PUSH_LIES: dict[str, tuple[Rule, str]] = {
    "blob-put-digest": (_on("PUT", "/blobs/uploads/", ("header", "Docker-Content-Digest", ZEROS)),
                        "the registry stored it as `sha256:000"),
    "manifest-put-digest": (_on("PUT", "/manifests/", ("header", "Docker-Content-Digest", ZEROS)),
                            "the registry stored the manifest"),
    "manifest-put-503": (_on("PUT", "/manifests/", ("status", 503)), "answered HTTP 503"),
    "blob-put-digest-escapes": (_on("PUT", "/blobs/uploads/", ("header", "Docker-Content-Digest", "\x1b[31mred")),
                                "the registry stored it as `\\x1b[31mred`"),
}  # fmt: skip


@pytest.mark.parametrize(("lie", "scheme"), [(lie, "docker") for lie in PUSH_LIES]
                         + [("blob-put-digest", "oras"), ("manifest-put-digest", "oras")])  # fmt: skip
def test_push_to_a_lying_registry(lie: str, scheme: str, lab: Lab, run_as: Any, as_who: Any,
                                  shared_tmp: Path) -> None:  # fmt: skip
    rule, said = PUSH_LIES[lie]
    repo = f"{as_who.name}/lie-{uuid.uuid4().hex[:8]}"
    image = lab.ocisif if scheme == "docker" else lab.sif
    with FaultyProxy(lab.reg.host, rule) as proxy:
        proc = run_as(as_who, [CLI, "push", str(image), f"{scheme}://{proxy.host}/{repo}:1"],
                      env=_env(as_who, shared_tmp), timeout=300)  # fmt: skip
    _one_error(proc, said)
    manifest_puts = sum(r.startswith("PUT") and "/manifests/" in r for r in proxy.requests)
    if lie.startswith("blob-put"):
        assert manifest_puts == 0, proxy.requests  # no manifest names a blob the registry got wrong
        assert not _registry_has(lab, repo, "1")
    elif lie == "manifest-put-503":
        assert manifest_puts == 4, proxy.requests


def test_push_waits_as_a_429_asks_then_succeeds(lab: Lab, run_as: Any, as_who: Any, shared_tmp: Path) -> None:
    """429 with `Retry-After: 1` on the first upload, 502 on the manifest, then the real
    answers: the push (docker:// as root, oras:// as the user) succeeds, after the pause."""
    for scheme, image in [("docker", lab.ocisif) if as_who.is_root else ("oras", lab.sif)]:
        repo = f"{as_who.name}/retry-{uuid.uuid4().hex[:8]}"
        post_429 = _on("POST", "/blobs/uploads/", ("status", 429, {"Retry-After": "1"}), times=1)
        put_502 = _on("PUT", "/manifests/", ("status", 502), times=1)

        def rule(m: str, path: str, index: int, a: Rule = post_429, b: Rule = put_502) -> tuple[Any, ...] | None:
            return a(m, path, index) or b(m, path, index)

        with FaultyProxy(lab.reg.host, rule) as proxy:
            proc = run_as(as_who, [CLI, "push", str(image), f"{scheme}://{proxy.host}/{repo}:1"],
                          env=_env(as_who, shared_tmp), timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        posts = [t for t, r in proxy.times if r.startswith("POST")]
        assert len(posts) >= 2 and posts[1] - posts[0] >= 0.9, proxy.times
        assert _registry_has(lab, repo, "1")
