"""`sifbox pull --oci`: an OCI image (a local layout, or a registry on 127.0.0.1) to an OCI-SIF
in SingularityCE's layout: one SquashFS layer holding the merged tree `umoci unpack` gives
(nothing of sifbox's own in it), the config pointing at that layer, a manifest, the root index
last; deterministic SIF header, 8 spare descriptors. The OCI-SIF runs; SOURCE_DATE_EPOCH makes
it byte for byte reproducible. As root and as the test user.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from sifbox.formats.sif import SifImage, oci
from sifbox.formats.sif import constants as c
from tests.integration.test_pull import SOURCES, TAG, _run, compare, images, registry

__all__ = ["images", "registry"]  # the fixtures of test_pull, for this module too

pytestmark = pytest.mark.integration


def _env(who, shared_tmp: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFBOX_", "APPTAINER_", "SINGULARITY_"))}
    env.update(HOME=who.home, SIFBOX_CACHEDIR=str(shared_tmp / "cache"), **extra)
    return env


def _layer(path: Path) -> tuple[oci.OciImage, SifImage]:
    with open(path, "rb") as f:
        img = SifImage.load(f)
        return oci.load_image(img, "amd64"), img


def test_pull_oci_from_layout(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    out = shared_tmp / "img.oci.sif"
    proc = run_as(as_who, [sifbox_cli, "pull", "--oci", str(out), SOURCES["oci"](images)], env=_env(as_who, shared_tmp))
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and proc.stderr.rstrip().endswith(f"Wrote `{out}`"), proc.stderr
    got, img = _layer(out)
    h = img.header
    assert h.image_id == bytes(16) and h.created_at == c.ZERO_TIME and h.launch_script_text == ""
    assert (h.descriptors_total, h.descriptors_free) == (4 + oci.SPARE_DESCRIPTORS, oci.SPARE_DESCRIPTORS)
    types = [d.data_type for d in img.objects()]
    assert types == [c.DataType.OCI_BLOB] * 3 + [c.DataType.OCI_ROOT_INDEX]
    [layer] = got.layers
    assert layer.media_type == oci.SQUASHFS_LAYER
    assert got.config["rootfs"] == {"type": "layers", "diff_ids": [layer.digest]}
    assert got.config["config"]["WorkingDir"] == "/data"
    assert got.config["history"][-1]["comment"].startswith("oci-sif created from ")
    dest = shared_tmp / "extracted"
    _run("unsquashfs", "-no-progress", "-o", str(layer.offset), "-d", str(dest), str(out))
    assert not (dest / ".singularity.d").exists()  # the image's files alone
    compare(images / "reference" / "rootfs", dest)
    shutil.rmtree(dest)
    run = run_as(as_who, [sifbox_cli, "run", str(out)], cwd="/")
    assert (run.returncode, run.stdout) == (0, "default-cmd\n"), run.stderr
    ex = run_as(as_who, [sifbox_cli, "exec", str(out), "/bin/sh", "-c", 'pwd; echo "$GREETING"'], cwd="/")
    assert (ex.returncode, ex.stdout) == (0, "/data\nhello from oci\n"), ex.stderr


def test_pull_oci_from_registry(images, registry, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    env = _env(as_who, shared_tmp, SIFBOX_DOCKER_USERNAME="puller", SIFBOX_DOCKER_PASSWORD="pull-Pw1")
    proc = run_as(as_who, [sifbox_cli, "pull", "--oci", "--no-https", f"docker://{registry}"], env=env,
                  cwd=str(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = shared_tmp / f"image_{TAG}.oci.sif"  # SingularityCE's default name
    assert out.is_file() and out.stat().st_uid == as_who.uid
    got, _ = _layer(out)
    raw = _run("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "puller:pull-Pw1",
               f"docker://{registry}").stdout.encode()  # fmt: skip
    assert got.config["history"][-1]["comment"] == "oci-sif created from " + hashlib.sha256(raw).hexdigest()
    run = run_as(as_who, [sifbox_cli, "run", str(out)], cwd="/")
    assert (run.returncode, run.stdout) == (0, "default-cmd\n"), run.stderr
    # nothing half-written when the pull fails
    env.pop("SIFBOX_DOCKER_PASSWORD")
    env["SIFBOX_CACHEDIR"] = str(shared_tmp / "cache2")
    bad = shared_tmp / "no.oci.sif"
    proc = run_as(as_who, [sifbox_cli, "pull", "--oci", "--no-https", str(bad), f"docker://{registry}"], env=env)
    assert proc.returncode == 255 and "sifbox: error: can't authenticate" in proc.stderr, proc.stderr
    assert not bad.exists() and not [p for p in os.listdir(shared_tmp) if p.startswith(".no.oci.sif")]


def test_pull_oci_is_reproducible(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    env = _env(as_who, shared_tmp, SOURCE_DATE_EPOCH="1700000000")
    outs = [shared_tmp / "a.oci.sif", shared_tmp / "b.oci.sif"]
    for out in outs:
        proc = run_as(as_who, [sifbox_cli, "pull", "--oci", str(out), SOURCES["oci"](images)], env=env)
        assert proc.returncode == 0, proc.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes()
    got, _ = _layer(outs[0])
    assert got.config["history"][-1]["created"] == "2023-11-14T22:13:20Z"


def test_build_oci_is_pull_oci(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    env = _env(as_who, shared_tmp, SOURCE_DATE_EPOCH="1700000000")
    pulled, built = shared_tmp / "pulled.oci.sif", shared_tmp / "built.oci.sif"
    assert run_as(as_who, [sifbox_cli, "pull", "--oci", str(pulled), SOURCES["oci"](images)], env=env).returncode == 0
    proc = run_as(as_who, [sifbox_cli, "build", "--oci", str(built), SOURCES["oci"](images)], env=env)
    assert proc.returncode == 0, proc.stderr
    assert built.read_bytes() == pulled.read_bytes()
    # a definition file builds too (test_build_oci covers it); a source that is neither is refused
    proc = run_as(as_who, [sifbox_cli, "build", "--oci", str(shared_tmp / "def.oci.sif"), str(shared_tmp / "none.def")],
                  env=env)  # fmt: skip
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"sifbox: error: can't build `{shared_tmp}/def.oci.sif` with --oci from ")
    assert not (shared_tmp / "def.oci.sif").exists()


def test_signed_oci_sif_verifies_and_runs(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """The spare descriptors take a signature of group 1 (every blob and the root index)."""
    env = _env(as_who, shared_tmp)
    out = shared_tmp / "signed.oci.sif"
    assert run_as(as_who, [sifbox_cli, "pull", "--oci", str(out), SOURCES["oci"](images)], env=env).returncode == 0
    key, pub = shared_tmp / "key.pem", shared_tmp / "key.pub"
    _run("openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key))
    _run("openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub))
    os.chmod(key, 0o644)
    proc = run_as(as_who, [sifbox_cli, "sign", "--key", str(key), str(out)], env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_as(as_who, [sifbox_cli, "verify", "--key", str(pub), str(out)], env=env)
    assert proc.returncode == 0, proc.stderr
    assert [line.split("|")[3] for line in proc.stdout.splitlines() if line[:1].isdigit()] == \
        ["OCI.Blob", "OCI.Blob", "OCI.Blob", "OCI.RootIndex"]  # fmt: skip
    run = run_as(as_who, [sifbox_cli, "run", str(out)], cwd="/")
    assert (run.returncode, run.stdout) == (0, "default-cmd\n"), run.stderr
    got, _ = _layer(out)
    data = bytearray(out.read_bytes())
    data[got.layers[0].offset + 100] ^= 0xFF
    out.write_bytes(bytes(data))
    proc = run_as(as_who, [sifbox_cli, "verify", "--key", str(pub), str(out)], env=env)
    assert proc.returncode == 255 and "data object integrity compromised: 1" in proc.stderr, proc.stderr


def test_push_docker_then_pull_oci_round_trips(images, registry, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """An OCI-SIF pushed to docker:// is the OCI image it holds (skopeo, an independent client,
    copies it); `pull --oci` of it gives the same OCI-SIF byte for byte; a classic pull says
    to use --oci."""
    env = _env(as_who, shared_tmp, SIFBOX_DOCKER_USERNAME="puller", SIFBOX_DOCKER_PASSWORD="pull-Pw1")
    first = shared_tmp / "first.oci.sif"
    assert run_as(as_who, [sifbox_cli, "pull", "--oci", str(first), SOURCES["oci"](images)], env=env).returncode == 0
    ref = f"{registry.rsplit('/', 1)[0]}/{as_who.name}-ocisif:1"
    proc = run_as(as_who, [sifbox_cli, "push", str(first), f"docker://{ref}"], env=env)
    assert proc.returncode == 0, proc.stderr
    got, _ = _layer(first)
    raw = _run("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "puller:pull-Pw1", f"docker://{ref}")
    assert "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest() == got.manifest_digest
    copied = shared_tmp / "skopeo-layout"
    _run("skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-creds", "puller:pull-Pw1", f"docker://{ref}",
         f"oci:{copied}:1")  # fmt: skip
    assert (copied / "blobs/sha256" / got.layers[0].digest.split(":")[1]).stat().st_size == got.layers[0].size
    again = shared_tmp / "again.oci.sif"
    proc = run_as(as_who, [sifbox_cli, "pull", "--oci", str(again), f"docker://{ref}"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == first.read_bytes()
    proc = run_as(as_who, [sifbox_cli, "pull", str(shared_tmp / "classic.sif"), f"docker://{ref}"], env=env)
    assert proc.returncode == 255 and "its layers are SquashFS" in proc.stderr and "hint: pull it with --oci" in proc.stderr
    assert not (shared_tmp / "classic.sif").exists()
    # a SIF that is no OCI-SIF is refused in one line
    plain = shared_tmp / "plain.sif"
    assert run_as(as_who, [sifbox_cli, "pull", str(plain), SOURCES["oci"](images)], env=env).returncode == 0
    proc = run_as(as_who, [sifbox_cli, "push", str(plain), f"docker://{ref}"], env=env)
    assert proc.returncode == 255 and proc.stderr.startswith(f"sifbox: error: can't push `{plain}` to "), proc.stderr
    assert "not an OCI-SIF image" in proc.stderr
