"""Fixtures of the examples of Apptainer's user guide (apptainer/apptainer-userdocs), ported
with the table, runner and xfail machinery of tests/e2e/apptainer (read its cases.py first).

A case is named after the guide's page and section, `PAGE.rst:Section title` (a suffix in
brackets tells apart the examples of one section). Its command line is the guide's with
`apptainer` replaced by the sifbox CLI, and it expects what the guide says the command prints
and returns. The guide's examples pull from the network (docker://alpine, library://lolcow,
oras://); here every image comes from this machine:

    images (session, built once as root from data/*.def, readable by every user)
        @lolcow@        quick_start.rst's lolcow_latest.sif (data/lolcow.def)
        @env@           environment_and_metadata.rst's env.sif
        @mycontainer@   the guide's `mycontainer.sif`, which it never defines: its runscript
                        prints its environment and what is in /mnt (data/mycontainer.def)
        @my_container@  definition_files.rst's example with every section
        @scif@          definition_files.rst's SCIF apps foo and bar
        @multistage@    definition_files.rst's multi-stage build
        @labels@        environment_and_metadata.rst's labelled `ubuntu.sif`
        @alpine@        running_services.rst's alpine_latest.sif (data/alpine.def)
        @nginx@         running_services.rst's nginx.sif (busybox httpd for nginx)
    registry (session, started on first use; docker-registry and skopeo; `reg` fixture)
        @registry@      HOST:PORT of a registry on 127.0.0.1 holding `alpine` (amd64 and
                        arm64), `ubuntu`, `python:3.7` and `apptainer/lolcow`: the guide's
                        docker:// images
        @pulled_alpine@ docker://alpine pulled, and @python@, python.sif built from
                        docker://python:3.7, once (`oci` fixture)
    keys (session, made with GnuPG; `keys` fixture)
        @keys@          the directory of signer.asc and pinkie-pie.asc (key_commands.rst's
                        Pinkie Pie, passphrase `pinkie`); @signer_fp@, @pinkie_fp@ their
                        fingerprints
    per test
        @work@          a fresh 0777 directory under /tmp, the command's working directory
        @id@            a short name unique to the test (instance names, files in homes)
        @host@          this machine's hostname (instance log paths)
    per module and user (`ws` fixture)
        @ws@            a directory the user owns, kept from case to case of one module, for
                        the pages whose examples build on each other (keys, overlays, cache)

Host paths the examples name (/data, /opt, /tmp/...) are directories under @work@ or @ws@.
Commands that write the caller's keyrings or cache run with HOME in @ws@; instances cannot be
moved that way (they live in the passwd home), so their names carry @id@ and each test stops
what it started.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import Runner, new_dir, remove_dir
from tests.e2e.apptainer.conftest import leak_guard, need_image_tools
from tests.e2e.userguide.guide import DATA, stage

BUILD_TIMEOUT = 120
#: How long one command may take.
TIMEOUT = 60

#: The session's images: placeholder name -> (definition file, files it copies)
IMAGES = {
    "lolcow": ("lolcow.def", ("cowsay", "lolcat")),
    "env": ("env.def", ()),
    "mycontainer": ("mycontainer.def", ()),
    "my_container": ("my_container.def", ()),
    "scif": ("scif.def", ("foo.txt",)),
    "multistage": ("multistage.def", ()),
    "labels": ("labels.def", ()),
    "alpine": ("alpine.def", ()),
    "nginx": ("nginx.def", ()),
}


@dataclass(frozen=True)
class Images:
    root: Path
    paths: dict[str, Path]

    def placeholders(self) -> dict[str, str]:
        return {f"@{name}@": str(path) for name, path in self.paths.items()}


def build(cli: str, out: Path, source: str | Path, cwd: Path) -> None:
    proc = subprocess.run(
        [cli, "build", "--force", str(out), str(source)],
        cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(
            f"can't build {out.name}: sifbox build exited {proc.returncode}\n{proc.stderr[-3000:]}"
        )


#: The file name of each image (the guide's own names where it gives one).
FILE_NAMES = {"lolcow": "lolcow_latest.sif", "labels": "ubuntu.sif", "alpine": "alpine_latest.sif"}


@pytest.fixture(scope="session")
def guide_images(sifbox_cli: str) -> Iterator[Images]:
    """The images of the guide's examples, built once per session as root; removed after."""
    need_image_tools("the user guide's images")
    base = new_dir("guide-images")
    try:
        work = base / "work"
        work.mkdir()
        paths = {}
        for name, (deffile, files) in IMAGES.items():
            stage(work, deffile, *files)
            out = base / FILE_NAMES.get(name, f"{name}.sif")
            build(sifbox_cli, out, work / deffile, cwd=work)
            out.chmod(0o644)
            paths[name] = out
        shutil.rmtree(work)
        yield Images(base, paths)
    finally:
        remove_dir(base)


# --- the registry --------------------------------------------------------------------------------
# The guide's docker:// images, as OCI images of this machine's busybox: `alpine` (with Alpine's
# /etc/os-release; an index of amd64 and arm64, both with this machine's busybox, for --arch),
# `ubuntu` (Ubuntu's /etc/os-release), `apptainer/lolcow` (the cowsay and lolcat stand-ins of
# data/, run by its CMD as the real image's runscript runs them) and `python:3.7` (the ENV
# PYTHON_VERSION of its Dockerfile).

GAMES_PATH = "/usr/games:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _layer(files: dict[str, bytes | str]) -> bytes:
    """A tar of `files`: bytes are files (0755), "->target" symlinks, "/" directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            elif content == "/":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                assert isinstance(content, bytes)
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), compresslevel=1, mtime=0)


def write_layout(path: Path, tag: str, files: dict[str, bytes | str], config: dict[str, object],
                 arches: tuple[str, ...] = ("amd64",)) -> None:  # fmt: skip
    """An OCI layout at `path` whose image `tag` has one layer of `files`, for `arches`."""
    import hashlib

    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(data: bytes, media: str, **extra: object) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data), **extra}

    layer = _layer(files)
    diff = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")
    manifests = []
    for arch in arches:
        cfg = json.dumps({"architecture": arch, "os": "linux", "config": config,
                          "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()  # fmt: skip
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(cfg, "application/vnd.oci.image.config.v1+json"), "layers": [layer_desc],
        }).encode()  # fmt: skip
        manifests.append(blob(manifest, "application/vnd.oci.image.manifest.v1+json",
                              platform={"architecture": arch, "os": "linux"}))  # fmt: skip
    if len(manifests) == 1:
        top = dict(manifests[0])
        top.pop("platform")
    else:
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": manifests}).encode()  # fmt: skip
        top = blob(index, "application/vnd.oci.image.index.v1+json")
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))


def _busybox(os_release: str) -> dict[str, bytes | str]:
    return {
        "bin": "/", "bin/busybox": Path("/bin/busybox").read_bytes(), "bin/sh": "->busybox",
        "etc": "/", "etc/os-release": os_release.encode(), "tmp": "/", "root": "/", "usr": "/",
        "usr/bin": "/", "usr/sbin": "/",
    }  # fmt: skip


ALPINE_OS_RELEASE = (
    'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.0\nPRETTY_NAME="Alpine Linux v3.19"\n'
)
UBUNTU_OS_RELEASE = 'NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\nPRETTY_NAME="Ubuntu 22.04 LTS"\n'


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """HOST:PORT of a registry on 127.0.0.1 with the guide's docker:// images; stopped after."""
    from tests.integration.registry_server import RegistryServer, need, push_layout

    need("docker-registry", "skopeo")
    work = new_dir("guide-registry")
    try:
        sh_cmd = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        }
        write_layout(
            work / "alpine", "latest", _busybox(ALPINE_OS_RELEASE), sh_cmd, ("amd64", "arm64")
        )
        write_layout(work / "ubuntu", "latest", _busybox(UBUNTU_OS_RELEASE), sh_cmd)
        lolcow = {**_busybox(UBUNTU_OS_RELEASE), "usr/games": "/",
                  "usr/games/cowsay": (DATA / "cowsay").read_bytes(),
                  "usr/games/lolcat": (DATA / "lolcat").read_bytes()}  # fmt: skip
        write_layout(work / "lolcow", "latest", lolcow,
                     {"Env": [f"PATH={GAMES_PATH}", "LC_ALL=C"],
                      "Cmd": ["/bin/sh", "-c", "date | cowsay | lolcat"]})  # fmt: skip
        # docker://python:3.7 of environment_and_metadata.rst: its Dockerfile's ENV
        python_env = {"Env": ["PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "PYTHON_VERSION=3.7.7"], "Cmd": ["/bin/sh"]}  # fmt: skip
        write_layout(work / "python", "3.7", _busybox(UBUNTU_OS_RELEASE), python_env)
        with RegistryServer(work / "registry") as reg:
            for name, repo, tag in (("alpine", "library/alpine", "latest"),
                                    ("ubuntu", "library/ubuntu", "latest"),
                                    ("lolcow", "apptainer/lolcow", "latest"),
                                    ("python", "library/python", "3.7")):  # fmt: skip
                push_layout(work / name, tag, f"{reg.host}/{repo}:{tag}")
            yield reg.host
    finally:
        remove_dir(work)


@pytest.fixture(scope="session")
def pulled(registry: str, sifbox_cli: str) -> Iterator[dict[str, str]]:
    """Images made once (as root) from the registry: docker://alpine pulled (its OCI runscript),
    and python.sif built from docker://python:3.7."""
    base = new_dir("guide-pulled")
    try:
        for out, verb, ref in (("alpine_latest.sif", "pull", "library/alpine"),
                               ("python.sif", "build", "library/python:3.7")):  # fmt: skip
            argv = [sifbox_cli, verb, *(("--disable-cache",) if verb == "pull" else ()), str(base / out),
                    f"docker://{registry}/{ref}"]  # fmt: skip
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
                                  env={**os.environ, "HOME": str(base)})  # fmt: skip
            if proc.returncode != 0:
                pytest.fail(f"can't {verb} {ref}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            (base / out).chmod(0o644)
        yield {
            "@pulled_alpine@": str(base / "alpine_latest.sif"),
            "@python@": str(base / "python.sif"),
        }
    finally:
        remove_dir(base)


@pytest.fixture
def oci(sb: Runner, reg: str, pulled: dict[str, str]) -> None:
    """The registry's images made into SIF files, as @pulled_alpine@ and @python@."""
    sb.extra.update(pulled)


# --- OpenPGP keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgpKeys:
    """Secret keys made with GnuPG for the tests, armored, in `dir` (readable by every user):
    signer.asc (no passphrase) and pinkie-pie.asc, key_commands.rst's "Pinkie Pie (Eternal chaos
    comes with chocolate rain!) <balloons@example.com>" (passphrase `pinkie`)."""

    dir: Path
    signer: str
    pinkie: str

    def placeholders(self) -> dict[str, str]:
        return {"@keys@": str(self.dir), "@signer_fp@": self.signer, "@pinkie_fp@": self.pinkie}


@pytest.fixture(scope="session")
def pgp_keys() -> Iterator[PgpKeys]:
    """Two RSA keys made once per session (2048 bits: quick; the guide's own are 4096 or 1024)."""
    if shutil.which("gpg") is None:
        pytest.skip("`gpg` is not installed (Debian package gnupg)")
    base = new_dir("guide-keys")
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
    try:
        fprs = []
        for uid, passphrase, out in (
            ("Fingerprint Tester <tester@example.com>", "", "signer.asc"),
            ("Pinkie Pie (Eternal chaos comes with chocolate rain!) <balloons@example.com>", "pinkie",
             "pinkie-pie.asc"),
        ):  # fmt: skip
            subprocess.run([*gpg, "--passphrase", passphrase, "--quick-gen-key", uid, "rsa2048", "sign",
                            "never"], check=True, capture_output=True, timeout=120)  # fmt: skip
            listing = subprocess.run([*gpg, "--with-colons", "--list-secret-keys", uid], check=True,
                                     capture_output=True, text=True).stdout  # fmt: skip
            fprs.append(
                next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
            )
            secret = subprocess.run([*gpg, "--passphrase", passphrase, "--armor", "--export-secret-keys",
                                     fprs[-1]], check=True, capture_output=True).stdout  # fmt: skip
            (base / out).write_bytes(secret)
            (base / out).chmod(0o644)
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True,
                       check=False)  # fmt: skip
        shutil.rmtree(home)
        yield PgpKeys(base, fprs[0], fprs[1])
    finally:
        remove_dir(base)


@pytest.fixture
def keys(sb: Runner, pgp_keys: PgpKeys) -> PgpKeys:
    """The session's keys, as @keys@, @signer_fp@ and @pinkie_fp@ of this test's cases."""
    sb.extra.update(pgp_keys.placeholders())
    return pgp_keys


# --- per test ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leaks(guide_images: Images, sifbox_cli: str) -> Iterator[None]:
    """Fail a test that leaves a mount, a FUSE helper, a loop device or an instance behind
    (the leak guard of tests/e2e/apptainer)."""
    yield from leak_guard(sifbox_cli)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that root and the test user can both write (0777)."""
    base = new_dir("work", 0o777)
    try:
        yield base
    finally:
        remove_dir(base)


@pytest.fixture
def sb(as_who, sifbox_cli: str, guide_images: Images, work_dir: Path) -> Runner:  # type: ignore[no-untyped-def]
    """The runner of one test (see tests/e2e/apptainer/conftest.py), with the guide's images and
    the @id@ and @host@ placeholders."""
    extra = {"@id@": f"guide{uuid.uuid4().hex[:8]}", "@host@": socket.gethostname()}
    return Runner(who=as_who, cli=sifbox_cli, images=guide_images, work=work_dir,
                  timeout=TIMEOUT, extra=extra)  # fmt: skip


@pytest.fixture
def reg(sb: Runner, registry: str) -> str:
    """The registry, as the @registry@ placeholder of this test's cases."""
    sb.extra["@registry@"] = registry
    return registry


_WORKSPACES: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def workspaces() -> Iterator[Path]:
    base = new_dir("guide-ws")
    try:
        yield base
    finally:
        _WORKSPACES.clear()
        remove_dir(base)


@pytest.fixture
def ws(request: pytest.FixtureRequest, sb: Runner, workspaces: Path) -> Path:
    """This module's directory of this user (made on first use, owned by the user, kept for the
    module's later cases), as @ws@; `@ws@/home` is there for commands run with HOME in it."""
    key = (request.module.__name__, sb.who.name)
    if key not in _WORKSPACES:
        path = workspaces / f"{request.module.__name__.rsplit('.', 1)[-1]}-{sb.who.name}"
        (path / "home").mkdir(parents=True)
        for p in (path, path / "home"):
            os.chown(p, sb.who.uid, sb.who.gid)
        _WORKSPACES[key] = path
    sb.extra["@ws@"] = str(_WORKSPACES[key])
    return _WORKSPACES[key]
