"""OCI image layouts: references, index/platform resolution, digest verification.

`make_layout` and `tar_layer` build small OCI layouts by hand; the integration tests use them
too (malicious layers)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from sifbox.oci import layout as L
from sifbox.util.errors import SifboxError, UsageError

MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


def tar_layer(entries: list[dict]) -> bytes:
    """A tar from dicts: name, type ("file", "dir", "symlink", "hardlink", "fifo", "chr"),
    data, mode, uid, gid, target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            t = tarfile.TarInfo(e["name"])
            kind = e.get("type", "file")
            t.mode = e.get("mode", 0o755 if kind == "dir" else 0o644)
            t.uid, t.gid = e.get("uid", 0), e.get("gid", 0)
            t.mtime = e.get("mtime", 1_600_000_000)
            data = e.get("data", b"")
            if kind == "file":
                t.size = len(data)
                tf.addfile(t, io.BytesIO(data))
                continue
            t.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                      "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]  # fmt: skip
            t.linkname = e.get("target", "")
            t.devmajor, t.devminor = e.get("dev", (0, 0))
            tf.addfile(t)
    return buf.getvalue()


def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = root / "blobs" / "sha256" / digest.split(":")[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return digest, len(data)


def add_image(root: Path, layers: list[bytes], config: dict | None = None, *, tag: str | None = "latest",
              compress: bool = True, arch: str = "amd64") -> dict:  # fmt: skip
    """Write an image into the layout at `root`; return its manifest descriptor (not yet indexed)."""
    diff_ids, descs = [], []
    for raw in layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        data = gzip.compress(raw, mtime=0) if compress else raw
        d, n = _blob(root, data)
        descs.append({"mediaType": MT_LAYER_GZ if compress else MT_LAYER, "digest": d, "size": n})
    cfg = {"architecture": arch, "os": "linux", "config": config or {},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
    cd, cn = _blob(root, json.dumps(cfg).encode())
    manifest = {"schemaVersion": 2, "mediaType": L.MT_OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
                "layers": descs}  # fmt: skip
    md, mn = _blob(root, json.dumps(manifest).encode())
    desc = {"mediaType": L.MT_OCI_MANIFEST, "digest": md, "size": mn,
            "platform": {"os": "linux", "architecture": arch}}  # fmt: skip
    if tag:
        desc["annotations"] = {L.REF_NAME: tag}
    return desc


def write_index(root: Path, manifests: list[dict]) -> Path:
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return root


def make_layout(root: Path, layers: list[bytes], config: dict | None = None, *, tag: str = "latest",
                compress: bool = True) -> Path:  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    return write_index(root, [add_image(root, layers, config, tag=tag, compress=compress)])


# -- references ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("oci:/x/lay", ("oci", "/x/lay", None, None)),
        ("oci:/x/lay:v1", ("oci", "/x/lay", "v1", None)),
        ("oci:lay@sha256:" + "a" * 64, ("oci", "lay", None, "sha256:" + "a" * 64)),
        ("oci-archive:/x/a.tar:v2", ("oci-archive", "/x/a.tar", "v2", None)),
        ("docker-archive:/x/a.tar:busybox:latest", ("docker-archive", "/x/a.tar", "busybox:latest", None)),
    ],
)
def test_parse_source(text: str, want: tuple) -> None:
    r = L.parse_source(text)
    assert (r.transport, r.path, r.tag, r.digest) == want


@pytest.mark.parametrize("text", ["docker:/x", "oci:", "oci:x@sha256:123", "plain"])
def test_parse_source_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        L.parse_source(text)


def test_parse_platform() -> None:
    assert L.parse_platform("linux/arm64") == L.Platform("linux", "arm64", "v8")
    assert L.parse_platform(None, "arm/v6") == L.Platform("linux", "arm", "v6")
    assert L.parse_platform(None, "x86_64") == L.Platform("linux", "amd64", "")
    with pytest.raises(UsageError):
        L.parse_platform("arm64")


# -- resolution ---------------------------------------------------------------------------
def test_open_by_tag_and_digest(tmp_path: Path) -> None:
    root = tmp_path / "lay"
    root.mkdir()
    a = add_image(root, [tar_layer([{"name": "a", "data": b"A"}])], tag="a")
    b = add_image(root, [tar_layer([{"name": "b", "data": b"B"}])], tag="b")
    write_index(root, [a, b])
    img = L.open_image(L.parse_source(f"oci:{root}:b"))
    assert img.manifest_digest == b["digest"] and img.ref_name == "b"
    img = L.open_image(L.parse_source(f"oci:{root}@{a['digest']}"))
    assert img.manifest_digest == a["digest"]
    with pytest.raises(SifboxError, match="holds 2 images"):
        L.open_image(L.parse_source(f"oci:{root}"))
    with pytest.raises(SifboxError, match="no image tagged `c`"):
        L.open_image(L.parse_source(f"oci:{root}:c"))


def test_index_by_platform(tmp_path: Path) -> None:
    root = tmp_path / "lay"
    root.mkdir()
    amd = add_image(root, [tar_layer([{"name": "amd"}])], tag=None, arch="amd64")
    arm = add_image(root, [tar_layer([{"name": "arm"}])], tag=None, arch="arm64")
    arm["platform"]["variant"] = "v8"
    index = {"schemaVersion": 2, "mediaType": L.MT_OCI_INDEX, "manifests": [amd, arm]}
    d, n = _blob(root, json.dumps(index).encode())
    write_index(root, [{"mediaType": L.MT_OCI_INDEX, "digest": d, "size": n,
                        "annotations": {L.REF_NAME: "multi"}}])  # fmt: skip
    ref = L.parse_source(f"oci:{root}:multi")
    assert L.open_image(ref, L.parse_platform("linux/arm64")).manifest_digest == arm["digest"]
    assert L.open_image(ref, L.parse_platform("linux/amd64")).manifest_digest == amd["digest"]
    with pytest.raises(SifboxError, match="no image for platform `linux/s390x`") as err:
        L.open_image(ref, L.parse_platform("linux/s390x"))
    assert "linux/arm64/v8" in (err.value.hint or "")


def test_blob_digest_is_verified(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "lay", [tar_layer([{"name": "f", "data": b"x" * 1000}])])
    img = L.open_image(L.parse_source(f"oci:{root}"))
    layer = img.layers[0]
    blob = root / layer.locator
    data = bytearray(blob.read_bytes())
    data[-9] ^= 0xFF  # inside the gzip trailer: same size, other digest
    blob.write_bytes(bytes(data))
    r = img.open_layer(layer)
    with pytest.raises(L.DigestMismatch, match="digest mismatch"):
        r.finish()


def test_bad_digest_in_descriptor_never_becomes_a_path(tmp_path: Path) -> None:
    root = tmp_path / "lay"
    root.mkdir()
    write_index(root, [{"mediaType": L.MT_OCI_MANIFEST, "digest": "sha256:../../../etc/passwd", "size": 1}])
    with pytest.raises(SifboxError, match="not a valid digest"):
        L.open_image(L.parse_source(f"oci:{root}"))


def test_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(SifboxError, match="does not exist"):
        L.open_image(L.parse_source(f"oci:{tmp_path / 'nope'}"))
    with pytest.raises(SifboxError, match="no `index.json`"):
        L.open_image(L.parse_source(f"oci:{tmp_path}"))


def test_oci_archive_reads_in_place(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "lay", [tar_layer([{"name": "f", "data": b"hello"}])], tag="v1")
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root, arcname=".")
    img = L.open_image(L.parse_source(f"oci-archive:{archive}:v1"))
    assert len(img.layers) == 1
    r = img.open_layer(img.layers[0])
    assert gzip.decompress(r.read()) .startswith(b"f")
    r.finish()


def test_docker_archive(tmp_path: Path) -> None:
    raw = tar_layer([{"name": "etc/hello", "data": b"hi"}])
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"]},
                      "rootfs": {"type": "layers",
                                 "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode()  # fmt: skip
    chex = hashlib.sha256(cfg).hexdigest()
    archive = tmp_path / "saved.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in ((f"{chex}.json", cfg), ("abc/layer.tar", raw),
                           ("manifest.json", json.dumps([{"Config": f"{chex}.json", "RepoTags": ["busybox:1.0"],
                                                          "Layers": ["abc/layer.tar"]}]).encode())):  # fmt: skip
            t = tarfile.TarInfo(name)
            t.size = len(data)
            tf.addfile(t, io.BytesIO(data))
    img = L.open_image(L.parse_source(f"docker-archive:{archive}"))
    assert img.ref_name == "busybox:1.0"
    assert img.layers[0].diff_id and img.layers[0].digest is None
    img = L.open_image(L.parse_source(f"docker-archive:{archive}:busybox:1.0"))
    assert img.config["config"]["Env"] == ["A=1"]
    with pytest.raises(SifboxError, match="no image `other`"):
        L.open_image(L.parse_source(f"docker-archive:{archive}:other"))
