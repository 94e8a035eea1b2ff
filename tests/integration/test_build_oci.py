"""`sifbox build` from OCI images: `Bootstrap: oci`, `oci-archive`, `docker-archive` (and
`docker`, which needs the registry client), as root and as the unprivileged test user.

The image is the multi-layer busybox image of test_pull.py (umoci and skopeo: a whiteout,
an opaque directory, hard links, a setuid file, a FIFO, a device node, files of uid 1234,
ENV/ENTRYPOINT/CMD/labels in the config). Each definition runs a %post that writes a file
and replaces the runscript; the SIF is then run, and its SquashFS checked entry by entry.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.images import env_for
from tests.integration.test_pull import TAG, extract, images  # noqa: F401 - `images` is a fixture

pytestmark = pytest.mark.integration
TIMEOUT = 180

FROM = {
    "oci": lambda b: f"{b}/layout:{TAG}",
    "oci-archive": lambda b: f"{b}/image.tar:{TAG}",
    "docker-archive": lambda b: f"{b}/docker.tar",
}

DEF = """Bootstrap: {agent}
From: {source}

%post
    echo "made in %post" > /post-file
    /bin/busybox chown 1234:5678 /post-file
    test "$(stat -c %u /home/alice/notes)" = 1234
    test "$GREETING" = "hello from oci"  # the image's ENV is in effect, as in Apptainer

%environment
    export FROM_DEF="def env"

%runscript
    echo "runscript: $GREETING, $FROM_DEF, $*"

%labels
    org.example.def yes
"""


def _sifbox(run_as, who, cli, *args: str, cwd: Path | str = "/", **env: str):  # type: ignore[no-untyped-def]
    return run_as(who, [cli, *args], env=env_for(who, **env), cwd=str(cwd), timeout=TIMEOUT)


def _build(run_as, who, cli, work: Path, out: Path, source: str):  # type: ignore[no-untyped-def]
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    scratch.chmod(0o777)
    proc = _sifbox(
        run_as, who, cli, "build", str(out), source, cwd=work, SIFBOX_TMPDIR=str(scratch)
    )
    assert list(scratch.iterdir()) == [], "the build left scratch files behind"
    return proc


def _def(work: Path, agent: str, source: str, text: str = DEF) -> Path:
    path = work / f"{agent}.def"
    path.write_text(text.format(agent=agent, source=source))
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("agent", list(FROM))
def test_build_from_oci_image(agent, images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    deffile = _def(shared_tmp, agent, FROM[agent](images))
    out = shared_tmp / "built.sif"
    proc = _build(run_as, as_who, sifbox_cli, shared_tmp, out, str(deffile))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    assert out.stat().st_uid == as_who.uid

    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out), "a", "b c")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "runscript: hello from oci, def env, a b c\n"
    ex = _sifbox(run_as, as_who, sifbox_cli, "exec", str(out), "/bin/sh", "-c",
                 'echo "$GREETING|$FROM_DEF"; cat /post-file /data/keep /data/opaque/upper')  # fmt: skip
    assert ex.returncode == 0, ex.stderr
    assert ex.stdout == "hello from oci|def env\nmade in %post\nkept, changed in layer 2\nupper\n"

    got = extract(out, shared_tmp / "root")
    # ownership, modes, hard links, FIFOs and device nodes of the layers are kept
    for rel in ("home/alice", "home/alice/notes", "post-file"):
        st = (got / rel).lstat()
        assert (st.st_uid, st.st_gid) == (1234, 5678), rel
    assert stat.S_IMODE((got / "bin/suid").lstat().st_mode) == 0o4755
    assert (got / "bin/busybox").stat().st_ino == (got / "bin/busybox-hard").stat().st_ino
    assert stat.S_ISFIFO((got / "run/fifo").lstat().st_mode)
    dev = (got / "devs/null").lstat()
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    assert os.readlink(got / "bin/sh") == "busybox"
    assert not (got / "data/rm-me").exists() and not (got / "data/old/sub").exists()
    assert sorted(os.listdir(got / "data/opaque")) == ["upper"]
    # /.singularity.d: the image config as `sifbox pull` writes it, the definition on top
    sd = got / ".singularity.d"
    assert (
        'GREETING="${GREETING:-"hello from oci"}"'
        in (sd / "env/10-docker2singularity.sh").read_text()
    )
    assert 'FROM_DEF="def env"' in (sd / "env/90-environment.sh").read_text()
    assert "OCI_ENTRYPOINT" not in (sd / "runscript").read_text()
    assert (sd / "Singularity").read_text() == deffile.read_text()
    labels = json.loads((sd / "labels.json").read_text())
    assert labels["org.example"] == "yes" and labels["org.example.def"] == "yes"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == agent
    assert not (got / ".sifbox-build-script").exists()


def test_oci_runscript_and_conversion(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    """Without %runscript the image's ENTRYPOINT/CMD runscript stays; `sifbox build out.sif
    oci:DIR:TAG` converts as `sifbox pull` does."""
    deffile = _def(shared_tmp, "oci", FROM["oci"](images),
                   "Bootstrap: {agent}\nFrom: {source}\n\n%post\n    touch /marker\n")  # fmt: skip
    out = shared_tmp / "plain.sif"
    proc = _build(run_as, as_who, sifbox_cli, shared_tmp, out, str(deffile))
    assert proc.returncode == 0, proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out))
    assert (run.returncode, run.stdout) == (0, "default-cmd\n"), run.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out), "x y")
    assert run.stdout == "x y\n", run.stderr

    conv = shared_tmp / "conv.sif"
    proc = _build(
        run_as, as_who, sifbox_cli, shared_tmp, conv, f"oci-archive:{FROM['oci-archive'](images)}"
    )
    assert proc.returncode == 0, proc.stderr
    ex = _sifbox(run_as, as_who, sifbox_cli, "exec", str(conv), "/bin/sh", "-c", 'echo "$GREETING"')
    assert ex.stdout == "hello from oci\n", ex.stderr
    insp = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--deffile", str(conv))
    assert "bootstrap: oci-archive" in insp.stdout.lower(), insp.stdout + insp.stderr


def test_bad_sources_are_clear_errors(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    cases = [
        ("oci", f"{shared_tmp}/missing:{TAG}", "does not exist"),
        ("oci", f"{images}/layout:nosuchtag", "no image tagged `nosuchtag`"),
        ("docker-archive", f"{images}/layout", "is a directory"),
    ]
    for agent, source, reason in cases:
        deffile = _def(shared_tmp, agent, source, "Bootstrap: {agent}\nFrom: {source}\n")
        out = shared_tmp / "bad.sif"
        proc = _build(run_as, as_who, sifbox_cli, shared_tmp, out, str(deffile))
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        err = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
        assert len(err) == 1 and reason in err[0], proc.stderr
        assert not out.exists()
        assert [p for p in shared_tmp.iterdir() if p.name.startswith(".bad")] == []


def _has_registry_client(cli: str) -> bool:
    bindir = Path(cli).resolve().parent
    python = next((bindir / n for n in ("python3", "python") if (bindir / n).exists()), None)
    if python is None:
        return False
    probe = [str(python), "-I", "-c", "import sifbox.oci.registry"]
    return subprocess.run(probe, capture_output=True, cwd="/", check=False).returncode == 0


def test_docker_needs_the_registry_client(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    if _has_registry_client(sifbox_cli):
        pytest.skip("this sifbox has a registry client: test_docker_from_local_registry covers it")
    text = "Bootstrap: {agent}\nFrom: {source}\nRegistry: 127.0.0.1:5000\nNamespace: tools\n"
    deffile = _def(shared_tmp, "docker", "alpine:3.20", text)
    out = shared_tmp / "docker.sif"
    proc = _build(run_as, as_who, sifbox_cli, shared_tmp, out, str(deffile))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
    assert len(err) == 1, proc.stderr
    assert "docker://127.0.0.1:5000/tools/alpine:3.20" in err[0]
    assert "sifbox.oci.registry" in err[0]
    assert not out.exists()


@pytest.fixture
def local_registry(images, sifbox_cli, shared_tmp) -> Iterator[str]:  # noqa: F811
    """docker-registry on 127.0.0.1 holding the test image as tools/busy:v1; stopped after."""
    import shutil
    import socket
    import time
    import urllib.request

    if not _has_registry_client(sifbox_cli):
        pytest.skip("this sifbox has no registry client (`sifbox.oci.registry`) yet")
    if shutil.which("docker-registry") is None:
        pytest.skip("`docker-registry` is not installed (Debian package `docker-registry`)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = shared_tmp / "registry"
    base.mkdir()
    (base / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {base}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(base / "log", "wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(base / "config.yml")], stdout=log, stderr=log
        )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"docker-registry did not start: {(base / 'log').read_text()}")
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{images}/layout:{TAG}",
                        f"docker://127.0.0.1:{port}/tools/busy:{TAG}"], check=True, capture_output=True)  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_docker_from_local_registry(local_registry, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    text = DEF.replace(
        "From: {source}", f"From: {{source}}\nRegistry: {local_registry}\nNamespace: tools"
    )
    deffile = _def(shared_tmp, "docker", f"busy:{TAG}", text)
    out = shared_tmp / "docker.sif"
    cache = shared_tmp / f"cache-{as_who.name}"
    scratch = shared_tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    scratch.chmod(0o777)
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", str(out), str(deffile), cwd=shared_tmp,
                   SIFBOX_TMPDIR=str(scratch), SIFBOX_CACHEDIR=str(cache))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out), "x")
    assert run.stdout == "runscript: hello from oci, def env, x\n", run.stderr
    got = extract(out, shared_tmp / "root")
    assert (got / "home/alice/notes").lstat().st_uid == 1234
    assert (got / "post-file").read_text() == "made in %post\n"
    labels = json.loads((got / ".singularity.d/labels.json").read_text())
    assert labels["org.label-schema.usage.singularity.deffile.registry"] == local_registry
    assert labels["org.label-schema.usage.singularity.deffile.namespace"] == "tools"
    assert cache.is_dir()
    # --disable-cache: the cache is neither read nor written, and nothing is left behind
    nocache = shared_tmp / "nocache"
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", "--force", "--disable-cache", str(out), str(deffile),
                   cwd=shared_tmp, SIFBOX_TMPDIR=str(scratch), SIFBOX_CACHEDIR=str(nocache))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not nocache.exists()
    assert list(scratch.iterdir()) == []
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out), "y")
    assert run.stdout == "runscript: hello from oci, def env, y\n", run.stderr


def test_reproducible(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    """With SOURCE_DATE_EPOCH, equal inputs give equal bytes, for root and fakeroot builds alike."""
    deffile = _def(shared_tmp, "oci-archive", FROM["oci-archive"](images))
    sums = []
    for n, who in enumerate((as_who, as_who, None)):
        if who is None and as_who.is_root:
            break
        out = shared_tmp / f"r{n}.sif"
        scratch = shared_tmp / "scratch"
        scratch.mkdir(exist_ok=True)
        scratch.chmod(0o777)
        env = env_for(who or as_who, SIFBOX_TMPDIR=str(scratch), SOURCE_DATE_EPOCH="1700000000")
        if who is None:  # root, for the same definition the test user built
            env = {**os.environ, "SIFBOX_TMPDIR": str(scratch), "SOURCE_DATE_EPOCH": "1700000000"}
        proc = run_as(who, [sifbox_cli, "build", str(out), str(deffile)], env=env, cwd=str(shared_tmp),
                      timeout=TIMEOUT)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        sums.append(out.read_bytes())
    assert all(s == sums[0] for s in sums[1:])


def test_corrupt_layer_is_refused(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    import shutil

    lay = shared_tmp / "layout"
    shutil.copytree(images / "layout", lay)
    index = json.loads((lay / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((lay / "blobs/sha256" / mdigest).read_text())
    blob = lay / "blobs/sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-40] ^= 0xFF
    blob.write_bytes(bytes(data))
    subprocess.run(["chmod", "-R", "a+rX", str(lay)], check=True)
    deffile = _def(shared_tmp, "oci", f"{lay}:{TAG}", DEF)
    out = shared_tmp / "corrupt.sif"
    proc = _build(run_as, as_who, sifbox_cli, shared_tmp, out, str(deffile))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
    assert len(err) == 1, proc.stderr
    assert "digest mismatch" in err[0]
    assert "running %post" not in proc.stderr
    assert not out.exists()


def test_build_oci_sif_from_definition(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    """`build --oci OUT.oci.sif app.def`: the built root (its /.singularity.d too) as the one
    SquashFS layer of an OCI-SIF whose config says ENTRYPOINT Apptainer's run action, the
    plain %environment assignments as Env, the labels; it runs (natively and --oci), inspects,
    and SOURCE_DATE_EPOCH makes it byte for byte reproducible."""
    from sifbox.formats.sif import SifImage, oci

    deffile = _def(shared_tmp, "oci", FROM["oci"](images))
    outs = []
    for name in ("a.oci.sif", "b.oci.sif"):
        out = shared_tmp / name
        scratch = shared_tmp / "scratch"
        scratch.mkdir(exist_ok=True)
        scratch.chmod(0o777)
        proc = _sifbox(run_as, as_who, sifbox_cli, "build", "--oci", str(out), str(deffile), cwd=shared_tmp,
                       SIFBOX_TMPDIR=str(scratch), SOURCE_DATE_EPOCH="1700000000")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"wrote OCI-SIF {out}" in proc.stderr and ".sqfs" not in proc.stderr, proc.stderr
        assert sorted(p.name for p in shared_tmp.iterdir() if p.name.startswith(".")) == [], "temporary files left"
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with open(outs[0], "rb") as f:
        img = SifImage.load(f)
        got = oci.load_image(img, "amd64")
    assert len(got.layers) == 1
    inner = got.config["config"]
    assert inner["Entrypoint"] == ["/.singularity.d/actions/run"] and "FROM_DEF=def env" in inner["Env"]
    assert inner["Labels"]["org.example.def"] == "yes" and got.config["created"] == "2023-11-14T22:13:20Z"
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(outs[0]), "a", "b c")
    assert (run.returncode, run.stdout) == (0, "runscript: hello from oci, def env, a b c\n"), run.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", "--oci", str(outs[0]), "x")
    assert (run.returncode, run.stdout) == (0, "runscript: hello from oci, def env, x\n"), run.stderr
    ex = _sifbox(run_as, as_who, sifbox_cli, "exec", str(outs[0]), "cat", "/post-file")
    assert (ex.returncode, ex.stdout) == (0, "made in %post\n"), ex.stderr
    ins = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--json", "--labels", "--runscript", str(outs[0]))
    assert ins.returncode == 0, ins.stderr
    attrs = json.loads(ins.stdout)["data"]["attributes"]
    assert attrs["labels"]["org.example.def"] == "yes" and "runscript: $GREETING" in attrs["runscript"]
    # a URI that is no OCI source, or a missing file, is one clear error
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", "--oci", str(shared_tmp / "c.oci.sif"), "library://x/y",
                   cwd=shared_tmp)  # fmt: skip
    assert proc.returncode == 125 and "definition files" in proc.stderr, proc.stderr
