"""`sifbox push` uploads to a real registry (Debian's docker-registry on 127.0.0.1): chunked
uploads (PATCH + Content-Range) that resume after a dropped connection, cross-repository blob
mounts, `--layer-format tar` (skopeo + umoci unpack the pushed image to the tree umoci unpacks
from the source), and a registry that refuses or fails: one error line, no manifest pushed.
As root and as the test user.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.faulty_proxy import FaultyProxy
from tests.integration.test_pull import SOURCES, _run, compare, images, registry

__all__ = ["images", "registry"]

pytestmark = pytest.mark.integration

CREDS = "puller:pull-Pw1"
CHUNK = 64 << 10


def _env(who, shared_tmp: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFBOX_", "APPTAINER_", "SINGULARITY_"))}
    env.update(HOME=who.home, SIFBOX_CACHEDIR=str(shared_tmp / "cache"), SIFBOX_DOCKER_USERNAME="puller",
               SIFBOX_DOCKER_PASSWORD="pull-Pw1", SIFBOX_PUSH_CHUNK_SIZE=str(CHUNK), **extra)  # fmt: skip
    return env


@pytest.fixture(scope="module")
def ocisif(images: Path) -> Path:
    """The test image as an OCI-SIF (one SquashFS layer of a few hundred KiB: several chunks)."""
    out = images / "image.oci.sif"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIFBOX_")}
    env["SIFBOX_CACHEDIR"] = str(images / "ocisif-cache")
    _run("sifbox", "pull", "--oci", str(out), SOURCES["oci"](images), env=env)
    os.chmod(out, 0o644)
    return out


def _host(registry: str) -> str:
    return registry.split("/", 1)[0]


def _manifest_exists(host: str, repo: str) -> bool:
    proc = __import__("subprocess").run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", CREDS,
                                         f"docker://{host}/{repo}"], capture_output=True)  # fmt: skip
    return proc.returncode == 0


def test_layer_format_tar_unpacks_to_the_source_tree(images, registry, ocisif, run_as, as_who, sifbox_cli,
                                                     shared_tmp) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """`push --layer-format tar`: OCI tools copy and unpack the pushed image to the tree `umoci
    unpack` gives of the source (whiteouts, opaque directory, owners, setuid, FIFO, device,
    hard links); the config's diff_ids are the tars' digests; pushed in chunks."""
    env = _env(as_who, shared_tmp)
    ref = f"{_host(registry)}/{as_who.name}/tar:1"
    proc = run_as(as_who, [sifbox_cli, "push", "--layer-format", "tar", str(ocisif), f"docker://{ref}"], env=env)
    assert proc.returncode == 0, proc.stderr
    copied = shared_tmp / "copied"
    _run("skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-creds", CREDS, f"docker://{ref}",
         f"oci:{copied}:1")  # fmt: skip
    index = json.loads((copied / "index.json").read_text())
    manifest = json.loads((copied / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    config = json.loads((copied / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    _run("umoci", "unpack", "--image", f"{copied}:1", str(shared_tmp / "bundle"))
    compare(images / "reference" / "rootfs", shared_tmp / "bundle" / "rootfs")
    assert config["config"]["Entrypoint"] == ["/bin/echo"] and config["config"]["WorkingDir"] == "/data"
    gz = (copied / "blobs/sha256" / manifest["layers"][0]["digest"][7:]).read_bytes()
    import gzip

    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(gzip.decompress(gz)).hexdigest()]
    # --layer-format squashfs: the layers as they are, the OCI-SIF's manifest digest
    ref2 = f"{_host(registry)}/{as_who.name}/sqfs:1"
    proc = run_as(as_who, [sifbox_cli, "push", "--layer-format", "squashfs", str(ocisif), f"docker://{ref2}"],
                  env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_as(as_who, [sifbox_cli, "push", "--layer-format", "tar", str(ocisif), f"oras://{ref2}"], env=env)
    assert proc.returncode == 125 and "an oras:// image is a SIF" in proc.stderr, proc.stderr


def test_chunked_upload_resumes_after_a_dropped_connection(registry, ocisif, run_as, as_who, sifbox_cli,
                                                           shared_tmp) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """The second and third chunks are cut part-way by a proxy: the client asks the registry
    how much it has and goes on from there; the image then pulls back byte for byte."""

    def rule(method: str, path: str, index: int) -> tuple[str, int] | None:
        return ("cut", CHUNK // 3) if method == "PATCH" and index in (1, 2) else None

    with FaultyProxy(_host(registry), rule) as proxy:
        env = _env(as_who, shared_tmp)
        ref = f"{proxy.host}/{as_who.name}/resumed:1"
        proc = run_as(as_who, [sifbox_cli, "push", str(ocisif), f"docker://{ref}"], env=env)
        assert proc.returncode == 0, proc.stderr
        patches = [r for r in proxy.requests if r.startswith("PATCH")]
        assert len(patches) >= ocisif.stat().st_size // CHUNK, proxy.requests
        assert sum(r.startswith("GET /v2/") and "/blobs/uploads/" in r for r in proxy.requests) == 2, proxy.requests
        back = shared_tmp / "back.oci.sif"
        proc = run_as(as_who, [sifbox_cli, "pull", "--oci", str(back), f"docker://{ref}"], env=env)
        assert proc.returncode == 0, proc.stderr
        assert back.read_bytes() == ocisif.read_bytes()


def test_upload_that_keeps_failing_is_one_error_and_no_manifest(registry, ocisif, run_as, as_who, sifbox_cli,
                                                                 shared_tmp) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    def rule(method: str, path: str, index: int) -> tuple[str, int] | None:
        return ("cut", 100) if method == "PATCH" and index >= 1 else None

    with FaultyProxy(_host(registry), rule) as proxy:
        env = _env(as_who, shared_tmp)
        ref = f"{proxy.host}/{as_who.name}/broken:1"
        proc = run_as(as_who, [sifbox_cli, "push", str(ocisif), f"docker://{ref}"], env=env)
        assert proc.returncode == 255, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("sifbox: error: can't upload blob `sha256:") and "failed 7 times" in lines[-1], lines
        assert not any(line.startswith("sifbox: error") for line in lines[:-1]), lines
        assert "Traceback" not in proc.stderr
        assert not any(r.startswith("PUT /v2/") and "/manifests/" in r for r in proxy.requests)
    assert not _manifest_exists(_host(registry), f"{as_who.name}/broken:1")


@pytest.mark.parametrize(("status", "said"), [(403, "HTTP 403 DENIED"), (404, "HTTP 404 DENIED"),
                                              (500, "answered HTTP 500"), (429, "answered HTTP 429")])  # fmt: skip
def test_registry_refusing_uploads(status, said, registry, ocisif, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """POST of an upload answered 403/404/429/5xx (after retries for the transient ones): one line."""

    def rule(method: str, path: str, index: int) -> tuple[str, int] | None:
        return ("status", status) if method == "POST" else None

    with FaultyProxy(_host(registry), rule) as proxy:
        env = _env(as_who, shared_tmp)
        ref = f"{proxy.host}/{as_who.name}/refused:1"
        proc = run_as(as_who, [sifbox_cli, "push", str(ocisif), f"docker://{ref}"], env=env)
    assert proc.returncode == 255, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sifbox: error:")]
    assert len(errors) == 1 and errors[0].startswith("sifbox: error: can't ") and said in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cross_repository_mount(registry, ocisif, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """A blob this user pushed to one repository is mounted into another of the same registry
    (POST ?mount=&from=, 201), not uploaded again; the image is complete there."""
    with FaultyProxy(_host(registry), lambda m, p, i: None) as proxy:
        env = _env(as_who, shared_tmp)
        first = f"{proxy.host}/{as_who.name}/first:1"
        assert run_as(as_who, [sifbox_cli, "push", str(ocisif), f"docker://{first}"], env=env).returncode == 0
        proxy.requests.clear()
        second = f"{proxy.host}/{as_who.name}/second:1"
        proc = run_as(as_who, [sifbox_cli, "push", str(ocisif), f"docker://{second}"], env=env)
        assert proc.returncode == 0, proc.stderr
        mounts = [r for r in proxy.requests if "mount=sha256" in r]
        assert mounts and all(f"from={as_who.name}%2Ffirst" in r for r in mounts), proxy.requests
        assert not any(r.startswith("PATCH") for r in proxy.requests), proxy.requests
    assert _manifest_exists(_host(registry), f"{as_who.name}/second:1")
    shutil.rmtree(shared_tmp / "cache", ignore_errors=True)


def test_progress_bar_on_a_terminal_only(registry, ocisif, sifbox_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On a terminal, push draws a bar per blob uploaded; not with -q, not into a pipe."""
    import pty
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIFBOX_")}
    env.update(SIFBOX_CACHEDIR=str(tmp_path / "cache"), SIFBOX_DOCKER_USERNAME="puller",
               SIFBOX_DOCKER_PASSWORD="pull-Pw1", SIFBOX_PUSH_CHUNK_SIZE=str(CHUNK))  # fmt: skip

    def on_tty(*flags: str, tag: str) -> str:
        master, slave = pty.openpty()
        argv = [sifbox_cli, *flags, "push", str(ocisif), f"docker://{_host(registry)}/progress/{tag}:1"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env)
        os.close(slave)
        out = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
        os.close(master)
        assert proc.wait(timeout=120) == 0, out
        return out.decode(errors="replace")

    shown = on_tty(tag="a")
    assert "\rUploading layer 1/1" in shown.replace("\x1b[K", "") and "100%" in shown, shown
    assert on_tty("-q", tag="b") == ""
    piped = subprocess.run([sifbox_cli, "push", str(ocisif), f"docker://{_host(registry)}/progress/c:1"], env=env,
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert piped.returncode == 0 and "Uploading" not in piped.stderr, piped.stderr


@pytest.mark.parametrize("damaged", ["root-index", "config"])
def test_damaged_oci_sif_is_not_pushed(damaged, registry, ocisif, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """An OCI-SIF whose root index or config no longer matches its digest: one error line, and
    nothing reaches the registry (not a blob, not a manifest)."""
    from sifbox.formats.sif import SifImage
    from sifbox.formats.sif import constants as c

    bad = shared_tmp / "bad.oci.sif"
    data = bytearray(ocisif.read_bytes())
    with open(ocisif, "rb") as f:
        img = SifImage.load(f)
        objs = list(img.objects())
    if damaged == "root-index":
        d = next(o for o in objs if o.data_type == c.DataType.OCI_ROOT_INDEX)
    else:  # the config: the smallest blob
        d = min((o for o in objs if o.data_type == c.DataType.OCI_BLOB), key=lambda o: o.size)
    data[d.offset + 2] ^= 0x01
    bad.write_bytes(bytes(data))
    bad.chmod(0o644)
    with FaultyProxy(_host(registry), lambda m, p, i: None) as proxy:
        ref = f"{proxy.host}/{as_who.name}/damaged:1"
        proc = run_as(as_who, [sifbox_cli, "push", str(bad), f"docker://{ref}"], env=_env(as_who, shared_tmp))
    assert proc.returncode == 255, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith(f"sifbox: error: can't push `{bad}`"), proc.stderr
    assert not any(r.startswith(("POST", "PUT", "PATCH")) for r in proxy.requests), proxy.requests
