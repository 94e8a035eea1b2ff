"""OCI-SIF images (SingularityCE 4's layout, spec §8) run and inspect as root and as the test
user: the SquashFS layers found through the root index, manifest and config are mounted
without extraction, the image config's ENTRYPOINT/CMD make the runscript, ENV the
environment, WORKDIR the start directory; labels show in `inspect`. The site's policy
(`allow container sif`) and damaged images give one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sifbox.formats.sif import oci
from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration

CONFIG = {
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/bin/echo", "EP"], "Cmd": ["default", "cmd"],
               "Env": ["FROM_OCI=yes", "PATH=/usr/bin:/bin"], "WorkingDir": "/data",
               "Labels": {"org.example.flavour": "oci-sif"}},
}  # fmt: skip


def write_oci_sif(out: Path, layers: list[Path], config: dict[str, object], overlay: Path | None = None,
                  spare: int = 0) -> Path:  # fmt: skip
    """An OCI-SIF of SquashFS `layers` (bottom first), written by sifbox's formats writer; with
    `overlay`, an EXT3 layer on top (SingularityCE's `overlay create` of an OCI-SIF)."""
    blobs = [p.read_bytes() for p in layers]
    doc = dict(config, rootfs={"type": "layers", "diff_ids": [oci.sha256(b) for b in blobs]})
    cfg = json.dumps(doc).encode()
    manifest = oci.manifest_for(cfg, [(oci.sha256(b), len(b)) for b in blobs])
    if overlay is not None:
        blobs.append(overlay.read_bytes())
        doc = json.loads(manifest)
        doc["layers"].append(oci.descriptor(oci.EXT3_LAYER, oci.sha256(blobs[-1]), len(blobs[-1])))
        manifest = json.dumps(doc, separators=(",", ":")).encode()
    with open(out, "wb") as f:
        oci.write(f, [*blobs, cfg, manifest], oci.index_for([manifest]), spare=spare)
    out.chmod(0o644)
    return out


@pytest.fixture(scope="module")
def oci_images() -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix=images.SHARED_TMP_PREFIX + "oci-"))
    base.chmod(0o755)
    try:
        root = images.make_busybox_rootfs(base / "root")
        shutil.rmtree(root / ".singularity.d")  # an OCI image has none
        (root / "singularity").unlink()
        bottom = images.mksquashfs(root, base / "bottom.sqfs")
        upper_dir = base / "upper"
        (upper_dir / "data").mkdir(parents=True)
        (upper_dir / "data/upper.txt").write_text("from the upper layer\n")
        # an overlay whiteout (SingularityCE's squashed layers): hello.txt is removed
        os.mknod(upper_dir / "data/hello.txt", 0o600 | 0o020000, os.makedev(0, 0))
        upper = images.mksquashfs(upper_dir, base / "upper.sqfs")
        made = {
            "bottom": bottom,
            "one": write_oci_sif(base / "one.oci.sif", [bottom], CONFIG),
            "two": write_oci_sif(base / "two.oci.sif", [bottom, upper], {"config": {"Cmd": ["/bin/cat", "/data/upper.txt"]}}),
        }  # fmt: skip
        damaged = bytearray(made["one"].read_bytes())
        at = damaged.rfind(b'"manifests"')
        damaged[at : at + 11] = b'"manifestz"'
        (base / "damaged.oci.sif").write_bytes(bytes(damaged))
        made["damaged"] = base / "damaged.oci.sif"
        made["damaged"].chmod(0o644)
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sifbox(run_as, who, cli: str, *args: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return run_as(who, [cli, *args], env=env_for(who), timeout=LAUNCH_TIMEOUT, cwd=cwd)


def test_run_uses_entrypoint_and_cmd(run_as, as_who, sifbox_cli, oci_images) -> None:  # type: ignore[no-untyped-def]
    proc = sifbox(run_as, as_who, sifbox_cli, "run", str(oci_images["one"]))
    assert (proc.returncode, proc.stdout) == (0, "EP default cmd\n"), proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "run", str(oci_images["one"]), "my", "args")
    assert (proc.returncode, proc.stdout) == (0, "EP my args\n"), proc.stderr
    assert proc.stderr == ""


def test_exec_has_env_and_starts_in_workdir(run_as, as_who, sifbox_cli, oci_images) -> None:  # type: ignore[no-untyped-def]
    script = 'pwd; echo "$FROM_OCI"; id -u; cat /data/hello.txt'
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", str(oci_images["one"]), "/bin/sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["/data", "yes", str(as_who.uid), images.HELLO.strip()]
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", "--pwd", "/tmp", str(oci_images["one"]), "pwd")
    assert (proc.returncode, proc.stdout) == (0, "/tmp\n"), proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", "--env", "FROM_OCI=mine", str(oci_images["one"]),
                  "/bin/sh", "-c", 'echo "$FROM_OCI"')  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "mine\n"), proc.stderr


def test_shell_runs_the_image_shell(run_as, as_who, sifbox_cli, oci_images) -> None:  # type: ignore[no-untyped-def]
    proc = run_as(as_who, [sifbox_cli, "shell", str(oci_images["one"])], env=env_for(as_who),
                  input="echo in-shell $FROM_OCI\n", timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "in-shell yes" in proc.stdout


def test_layers_stack_with_whiteouts(run_as, as_who, sifbox_cli, oci_images) -> None:  # type: ignore[no-untyped-def]
    proc = sifbox(run_as, as_who, sifbox_cli, "run", str(oci_images["two"]))
    assert (proc.returncode, proc.stdout) == (0, "from the upper layer\n"), proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", str(oci_images["two"]), "ls", "/data")
    assert (proc.returncode, proc.stdout.split()) == (0, ["upper.txt"]), proc.stderr


def test_writable_tmpfs_and_writable(run_as, as_who, sifbox_cli, oci_images) -> None:  # type: ignore[no-untyped-def]
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", "--writable-tmpfs", str(oci_images["one"]),
                  "/bin/sh", "-c", "echo x > /new && cat /new")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "x\n"), proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", str(oci_images["one"]), "true")
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"sifbox: error: can't exec `{oci_images['one']}` with --writable: ")


def test_inspect(run_as, as_who, sifbox_cli, oci_images) -> None:  # type: ignore[no-untyped-def]
    proc = sifbox(run_as, as_who, sifbox_cli, "inspect", str(oci_images["one"]))
    assert (proc.returncode, proc.stdout) == (0, "org.example.flavour: oci-sif\n"), proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "inspect", "--json", str(oci_images["one"]))
    assert proc.returncode == 0, proc.stderr
    attrs = json.loads(proc.stdout)["data"]["attributes"]
    assert attrs["labels"] == {"org.example.flavour": "oci-sif"}
    proc = sifbox(run_as, as_who, sifbox_cli, "inspect", "--runscript", str(oci_images["one"]))
    assert "OCI_ENTRYPOINT='\"/bin/echo\" \"EP\"'" in proc.stdout
    proc = sifbox(run_as, as_who, sifbox_cli, "inspect", "--environment", str(oci_images["one"]))
    assert "FROM_OCI" in proc.stdout


def test_damaged_image_is_one_line(run_as, as_who, sifbox_cli, oci_images) -> None:  # type: ignore[no-untyped-def]
    for verb in ("exec", "inspect"):
        argv = [verb, str(oci_images["damaged"])] + (["true"] if verb == "exec" else [])
        proc = sifbox(run_as, as_who, sifbox_cli, *argv)
        assert proc.returncode != 0
        lines = proc.stderr.splitlines()
        # the root index no longer matches the digest its descriptor records
        assert lines[0].startswith(f"sifbox: error: can't {verb} `{oci_images['damaged']}`: malformed OCI-SIF "
                                   "image: the root index does not match its digest `sha256:"), proc.stderr  # fmt: skip
        assert lines[1:] == [f"hint: `sifbox sif list {oci_images['damaged']}` shows what it holds"]


def test_site_policy_applies(run_as, as_who, sifbox_cli, oci_images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    conf = shared_tmp / "sifbox.conf"
    conf.write_text("allow container sif = no\n")
    conf.chmod(0o644)
    proc = sifbox(run_as, as_who, sifbox_cli, "-c", str(conf), "exec", str(oci_images["one"]), "true")
    assert proc.returncode == 126, proc.stderr
    assert proc.stderr.startswith(f"sifbox: error: can't exec `{oci_images['one']}`: ")
    assert "Traceback" not in proc.stderr


def test_ext3_overlay_layer(run_as, as_who, sifbox_cli, oci_images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """The EXT3 layer SingularityCE's `overlay create` puts on top of an OCI-SIF: a read-only
    layer of the container, written with --writable (by its owner)."""
    img = shared_tmp / "ov.img"
    assert sifbox(run_as, as_who, sifbox_cli, "overlay", "create", "--size", "64", str(img)).returncode == 0
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", "--overlay", str(img), str(oci_images["one"]),
                  "/bin/sh", "-c", "echo in-the-overlay > /ov.txt")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = write_oci_sif(shared_tmp / "ov.oci.sif", [oci_images["bottom"]], {"config": {"Cmd": ["/bin/cat", "/ov.txt"]}},
                        overlay=img)  # fmt: skip
    os.chown(out, as_who.uid, as_who.gid)
    proc = sifbox(run_as, as_who, sifbox_cli, "run", str(out))
    assert (proc.returncode, proc.stdout) == (0, "in-the-overlay\n"), proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", str(out), "/bin/sh", "-c", "echo x > /ov.txt")
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "exec", "--writable", str(out), "/bin/sh", "-c", "echo changed > /ov.txt")
    assert proc.returncode == 0, proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "run", str(out))
    assert (proc.returncode, proc.stdout) == (0, "changed\n"), proc.stderr


def test_instance_of_layers_is_judged_as_a_sif(run_as, as_who, sifbox_cli, oci_images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """The upper layers of an OCI-SIF come from the SIF itself: joining an instance judges
    them as `allow container sif`, not as bare SquashFS images."""
    conf = shared_tmp / "sifbox.conf"
    conf.write_text("allow container squashfs = no\n")
    conf.chmod(0o644)
    name = f"ocisif{os.getpid()}{as_who.uid}"
    proc = sifbox(run_as, as_who, sifbox_cli, "-c", str(conf), "instance", "start", str(oci_images["two"]), name)
    assert proc.returncode == 0, proc.stderr
    try:
        proc = sifbox(run_as, as_who, sifbox_cli, "-c", str(conf), "exec", f"instance://{name}", "cat", "/data/upper.txt")
        assert (proc.returncode, proc.stdout) == (0, "from the upper layer\n"), proc.stderr
    finally:
        sifbox(run_as, as_who, sifbox_cli, "instance", "stop", name)


def test_files_of_many_layers_are_not_read_from_one(run_as, as_who, sifbox_cli, oci_images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """What reads an image's files from one SquashFS (SBOM, a localimage bootstrap) refuses an
    OCI-SIF of several layers instead of reading its bottom one alone."""
    two = oci_images["two"]
    proc = sifbox(run_as, as_who, sifbox_cli, "sbom", str(two))
    assert proc.returncode == 255
    assert proc.stderr.splitlines()[0] == (f"sifbox: error: can't read the SBOM of `{two}`: an OCI-SIF image of 2 "
                                           "layers; sifbox reads the files of single-layer OCI-SIF images only")  # fmt: skip
    deffile = shared_tmp / "two.def"
    deffile.write_text(f"Bootstrap: localimage\nFrom: {two}\n")
    proc = sifbox(run_as, as_who, sifbox_cli, "build", str(shared_tmp / "x.sif"), str(deffile), cwd=str(shared_tmp))
    assert proc.returncode != 0 and "an OCI-SIF image of 2 layers" in proc.stderr, proc.stderr
    assert not (shared_tmp / "x.sif").exists()
    proc = sifbox(run_as, as_who, sifbox_cli, "sbom", str(oci_images["one"]))
    assert proc.returncode == 0 and '"bomFormat": "CycloneDX"' in proc.stdout, proc.stderr


def test_ecl_admits_a_signed_oci_sif(run_as, as_who, sifbox_cli, oci_images, shared_tmp, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    """An activated ECL judges an OCI-SIF as any SIF: signed by a listed key (every blob and the
    root index, group 1), it runs; unsigned, it is refused in one line."""
    from tests.integration.test_admission import ECL_WHITELIST, _conf, _signed

    conf = _conf(shared_tmp / "etc", "", ecl=ECL_WHITELIST)
    signed = write_oci_sif(shared_tmp / "signed.oci.sif", [oci_images["bottom"]], CONFIG, spare=oci.SPARE_DESCRIPTORS)
    unsigned = shared_tmp / "unsigned.oci.sif"
    shutil.copyfile(signed, unsigned)
    unsigned.chmod(0o644)
    _signed(sifbox_cli, sif_corpus, signed, shared_tmp / "etc")
    signed.chmod(0o644)
    proc = sifbox(run_as, as_who, sifbox_cli, "-c", str(conf), "run", str(signed))
    assert (proc.returncode, proc.stdout) == (0, "EP default cmd\n"), proc.stderr
    proc = sifbox(run_as, as_who, sifbox_cli, "-c", str(conf), "run", str(unsigned))
    assert proc.returncode == 126, proc.stderr
    assert proc.stderr.startswith(f"sifbox: error: can't run `{unsigned}`: the execution control list refuses it")
