"""One admission path for every image a container sees, and no way around it.

The site's limits (`limit container paths`, `allow container KIND`) and the ECL judge the
main image, each `--overlay` (and SIFBOX_OVERLAY), a SIF's overlay partition, each image bound
with `image-src=`/`id=` and the images of an instance a command joins, on their open
descriptors; what is judged is what is mounted (a sandbox, or a bound image, swapped for
another while the container starts never runs). `user bind control =
no` admits no bind the caller can steer through the environment. As root and as the test user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration

CORPUS_KEY = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"  # tests/data/sif-corpus/keys/private.asc
ECL_WHITELIST = f"""activated = true
[[execgroup]]
  tagname = "site"
  mode = "whitelist"
  dirpath = ""
  keyfp = ["{CORPUS_KEY}"]
"""


def _signed(sifbox_cli: str, sif_corpus: Path, image: Path, etc: Path) -> None:
    """Sign `image` as root with the corpus key, whose public key becomes the site's keyring."""
    home = etc.parent / "signer-home"
    home.mkdir(exist_ok=True)
    env = {**env_for(images.user_named("root")), "HOME": str(home)}
    for argv in (["key", "import", str(sif_corpus / "keys" / "private.asc")], ["sign", str(image)]):
        p = subprocess.run([sifbox_cli, *argv], env=env, capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stderr
    shutil.copyfile(home / ".sifbox" / "keys" / "pgp-public", etc / "global-pgp-public")
    (etc / "global-pgp-public").chmod(0o644)


def _conf(directory: Path, text: str, ecl: str | None = None) -> Path:
    directory.mkdir(exist_ok=True)
    conf = directory / "sifbox.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    if ecl is not None:
        (directory / "ecl.toml").write_text(ecl)
        (directory / "ecl.toml").chmod(0o644)
    return conf


def _exec(run_as, who, cli, conf: Path, *args: str, **env: str):  # type: ignore[no-untyped-def]
    return run_as(who, [cli, "-c", str(conf), "exec", *args], env=env_for(who, **env), timeout=LAUNCH_TIMEOUT)


def _refused(proc, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 126, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("sifbox: error: can't exec "), proc.stderr
    assert all(w in lines[0] for w in words), proc.stderr
    assert "Traceback" not in proc.stderr and "OVERLAY-FILE" not in proc.stdout


@pytest.fixture
def places(shared_tmp: Path, action_images: ActionImages) -> Path:
    """allowed/img.sif, and outside/ holding overlays of every kind, each with /overlay-file."""
    allowed, outside = shared_tmp / "allowed", shared_tmp / "outside"
    for d in (allowed, outside):
        d.mkdir()
        d.chmod(0o755)
    shutil.copy(action_images.sif, allowed / "img.sif")
    (allowed / "img.sif").chmod(0o644)
    layer = outside / "layer"
    (layer / "upper").mkdir(parents=True)
    (layer / "upper/overlay-file").write_text("OVERLAY-FILE\n")
    subprocess.run(["chmod", "-R", "a+rwX", str(layer)], check=True)
    images.mksquashfs(layer / "upper", outside / "layer.sqfs")
    return shared_tmp


@pytest.mark.parametrize(("directive", "overlay", "words"), [
    ("limit container paths = {allowed}", "{outside}/layer", ("with overlay `", "image is not in an allowed configured path")),
    ("allow container dir = no", "{outside}/layer", ("with overlay `", "image type dir is not allowed")),
    ("allow container squashfs = no", "{outside}/layer.sqfs", ("with overlay `", "image type squashfs is not allowed")),
])  # fmt: skip
@pytest.mark.parametrize("how", ["flag", "env"])
def test_overlays_obey_the_site_limits(run_as, as_who, sifbox_cli, places: Path, directive, overlay, words,
                                       how: str) -> None:  # fmt: skip
    allowed, outside = places / "allowed", places / "outside"
    conf = _conf(places / "etc", directive.format(allowed=allowed) + "\n")
    layer = overlay.format(outside=outside) + ":ro"
    image = str(allowed / "img.sif")
    cmd = (image, "cat", "/overlay-file")
    if how == "flag":
        proc = _exec(run_as, as_who, sifbox_cli, conf, "--overlay", layer, *cmd)
    else:
        proc = _exec(run_as, as_who, sifbox_cli, conf, *cmd, SIFBOX_OVERLAY=layer)
    _refused(proc, *words)
    # The same overlay without the limit: its files are what the container sees.
    ok = _exec(run_as, as_who, sifbox_cli, _conf(places / "open", ""), "--overlay", layer, *cmd)
    assert ok.returncode == 0 and ok.stdout == "OVERLAY-FILE\n", ok.stderr


def test_ecl_judges_overlays_and_partitions(run_as, as_who, sifbox_cli, places: Path, action_images: ActionImages,
                                            sif_corpus: Path) -> None:  # fmt: skip
    conf = _conf(places / "etc", "", ecl=ECL_WHITELIST)
    image = str(places / "allowed/signed.sif")
    for argv in (["sif", "new", image], ["sif", "add", "--datatype", "4", "--partfs", "1", "--parttype", "2",
                                         "--partarch", "2", "--groupid", "1", image, str(action_images.sqfs)]):
        subprocess.run([sifbox_cli, *argv], check=True, capture_output=True)
    _signed(sifbox_cli, sif_corpus, Path(image), places / "etc")
    Path(image).chmod(0o644)
    ok = _exec(run_as, as_who, sifbox_cli, conf, image, "true")
    assert ok.returncode == 0, ok.stderr
    for layer in (f"{places}/outside/layer:ro", f"{places}/outside/layer.sqfs"):
        proc = _exec(run_as, as_who, sifbox_cli, conf, "--overlay", layer, image, "cat", "/overlay-file")
        _refused(proc, "with overlay `", "execution control list refuses it", "only signed SIF images")
    # A sandbox is refused with one line too (not an internal error).
    proc = _exec(run_as, as_who, sifbox_cli, conf, str(action_images.sandbox), "true")
    _refused(proc, "execution control list refuses it", "not a directory")
    # A SIF's own overlay partition is not covered by its signatures.
    with_partition = places / "allowed/with-overlay.sif"
    shutil.copy(image, with_partition)
    # `sifbox overlay create` refuses a signed SIF: an attacker adds the partition with the SIF tools.
    ext3 = places / "overlay.ext3"
    subprocess.run(["mkfs.ext3", "-q", "-F", str(ext3), "8M"], check=True, capture_output=True)
    made = subprocess.run([sifbox_cli, "sif", "add", "--datatype", "4", "--partfs", "2", "--parttype", "4",
                           "--partarch", "2", str(with_partition), str(ext3)], capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    with_partition.chmod(0o644)
    proc = _exec(run_as, as_who, sifbox_cli, conf, str(with_partition), "true")
    # Refused by the signatures' verification itself (an object outside every signed group), and
    # otherwise by the admission of the partition.
    _refused(proc, "execution control list")


def test_a_sandbox_swapped_while_starting_never_runs(run_as, as_who, sifbox_cli, shared_tmp: Path,
                                                     action_images: ActionImages) -> None:  # fmt: skip
    allowed, forbidden = shared_tmp / "allowed", shared_tmp / "forbidden"
    allowed.mkdir()
    forbidden.mkdir()
    for d in (allowed, forbidden):
        d.chmod(0o755)
    shutil.copytree(action_images.sandbox, allowed / "sb", symlinks=True)
    shutil.copytree(action_images.sandbox, forbidden / "sb", symlinks=True)
    (forbidden / "sb/FORBIDDEN").write_text("FORBIDDEN-RAN\n")
    conf = _conf(shared_tmp / "etc", f"limit container paths = {allowed}\n")
    swapper = subprocess.Popen([sys.executable, "-c", f"""
import os, time
a, f = {str(allowed / "sb")!r}, {str(forbidden / "sb")!r}
while True:
    os.rename(a, a + ".real"); os.symlink(f, a); time.sleep(0.0005)
    os.unlink(a); os.rename(a + ".real", a); time.sleep(0.0005)
"""])  # fmt: skip
    try:
        outcomes = []
        for _ in range(40):
            proc = _exec(run_as, as_who, sifbox_cli, conf, str(allowed / "sb"), "cat", "/FORBIDDEN")
            assert "FORBIDDEN-RAN" not in proc.stdout, proc.stderr
            assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
            outcomes.append(proc.returncode)
    finally:
        swapper.kill()
        swapper.wait()
    assert set(outcomes) <= {1, 125, 126, 255}, outcomes  # `cat` fails on the allowed one, or refused


def test_joining_an_instance_judges_its_image_again(run_as, as_who, sifbox_cli, places: Path) -> None:
    image = str(places / "allowed/img.sif")
    open_conf = _conf(places / "open", "")
    strict = _conf(places / "etc", f"limit container paths = {places}/outside\n")
    name = f"adm{os.getpid()}"
    start = run_as(as_who, [sifbox_cli, "-c", str(open_conf), "instance", "start", image, name],
                   env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert start.returncode == 0, start.stderr
    try:
        ok = _exec(run_as, as_who, sifbox_cli, open_conf, f"instance://{name}", "true")
        assert ok.returncode == 0, ok.stderr
        proc = _exec(run_as, as_who, sifbox_cli, strict, f"instance://{name}", "true")
        _refused(proc, "the instance's image `", "image is not in an allowed configured path")
    finally:
        run_as(as_who, [sifbox_cli, "instance", "stop", name], env=env_for(as_who), timeout=LAUNCH_TIMEOUT)


# --- images bound with image-src= / id= ------------------------------------------------------------


@pytest.fixture
def bound(places: Path) -> Path:
    """allowed/data.sqfs (ALLOWED-DATA) and outside/data.sqfs (FORBIDDEN-DATA), SquashFS images of
    a directory holding `data`."""
    for where, text in (("allowed", "ALLOWED-DATA\n"), ("outside", "FORBIDDEN-DATA\n")):
        src = places / f"{where}-data"
        src.mkdir()
        (src / "data").write_text(text)
        images.mksquashfs(src, places / where / "data.sqfs")
    return places


@pytest.mark.parametrize(("directive", "words"), [
    ("limit container paths = {allowed}", ("with the bound image `", "image is not in an allowed configured path")),
    ("allow container squashfs = no", ("with the bound image `", "image type squashfs is not allowed")),
])  # fmt: skip
@pytest.mark.parametrize("how", ["--bind", "--mount", "SIFBOX_BIND"])
def test_bound_images_obey_the_site_limits(run_as, as_who, sifbox_cli, bound: Path, directive, words,
                                           how: str) -> None:  # fmt: skip
    allowed = bound / "allowed"
    conf = _conf(bound / "etc", directive.format(allowed=allowed) + "\n")
    image, data = str(allowed / "img.sif"), bound / "outside/data.sqfs"
    cmd = (image, "cat", "/mnt/data")
    if how == "--bind":
        proc = _exec(run_as, as_who, sifbox_cli, conf, "--bind", f"{data}:/mnt:image-src=/", *cmd)
    elif how == "--mount":
        proc = _exec(run_as, as_who, sifbox_cli, conf, "--mount", f"type=bind,src={data},dst=/mnt,image-src=/", *cmd)
    else:
        proc = _exec(run_as, as_who, sifbox_cli, conf, *cmd, SIFBOX_BIND=f"{data}:/mnt:image-src=/")
    _refused(proc, *words)
    assert "FORBIDDEN-DATA" not in proc.stdout
    # A link from an allowed place to the image is judged by what it leads to.
    link = allowed / "link.sqfs"
    link.symlink_to(data)
    proc = _exec(run_as, as_who, sifbox_cli, conf, "--bind", f"{link}:/mnt:image-src=/", *cmd)
    _refused(proc, *words)
    # Without the limit, the image's files are what the container sees.
    ok = _exec(run_as, as_who, sifbox_cli, _conf(bound / "open", ""), "--bind", f"{data}:/mnt:image-src=/", *cmd)
    assert ok.returncode == 0 and ok.stdout == "FORBIDDEN-DATA\n", ok.stderr


def test_ecl_judges_bound_images(run_as, as_who, sifbox_cli, bound: Path) -> None:
    conf = _conf(bound / "etc", "", ecl=ECL_WHITELIST)
    proc = _exec(run_as, as_who, sifbox_cli, conf, "--bind", f"{bound}/allowed/data.sqfs:/mnt:image-src=/",
                 str(bound / "allowed/img.sif"), "cat", "/mnt/data")  # fmt: skip
    _refused(proc, "execution control list")
    assert "DATA" not in proc.stdout


def test_a_bound_image_swapped_while_starting_never_shows(run_as, as_who, sifbox_cli, bound: Path) -> None:
    """The bind names a link that flips between an allowed image and a forbidden one: the image
    judged is the one mounted (its descriptor), so the forbidden one is never seen."""
    allowed = bound / "allowed"
    conf = _conf(bound / "etc", f"limit container paths = {allowed}\n")
    link = allowed / "flip.sqfs"
    link.symlink_to(allowed / "data.sqfs")
    swapper = subprocess.Popen([sys.executable, "-c", f"""
import os, time
link, a, f = {str(link)!r}, {str(allowed / "data.sqfs")!r}, {str(bound / "outside/data.sqfs")!r}
while True:
    for target in (f, a):
        os.symlink(target, link + ".new"); os.rename(link + ".new", link); time.sleep(0.0005)
"""])  # fmt: skip
    try:
        outcomes = []
        for _ in range(30):
            proc = _exec(run_as, as_who, sifbox_cli, conf, "--bind", f"{link}:/mnt:image-src=/",
                         str(allowed / "img.sif"), "cat", "/mnt/data")  # fmt: skip
            assert "FORBIDDEN" not in proc.stdout, proc.stderr
            assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
            outcomes.append((proc.returncode, proc.stdout))
    finally:
        swapper.kill()
        swapper.wait()
    assert {o for o, _ in outcomes} <= {0, 126, 255}, outcomes
    assert all(out == "ALLOWED-DATA\n" for status, out in outcomes if status == 0), outcomes


@pytest.mark.parametrize("damage", ["truncated", "garbage", "superblock", "sif-without-data", "sif-bad-id",
                                    "directory", "missing-path"])  # fmt: skip
def test_a_damaged_or_wrong_bound_image_is_one_line(run_as, as_who, sifbox_cli, bound: Path, damage: str) -> None:
    good = (bound / "allowed/data.sqfs").read_bytes()
    bad = bound / "bad.img"
    opt = "image-src=/"
    if damage == "truncated":
        bad.write_bytes(good[:128])  # the superblock and a little
    elif damage == "garbage":
        bad.write_bytes(os.urandom(64 << 10))
    elif damage == "superblock":  # the magic, then nonsense
        bad.write_bytes(good[:4] + b"\xff" * 92 + good[96:])
    elif damage == "sif-without-data":
        shutil.copy(bound / "allowed/img.sif", bad)  # a SIF without a data partition
    elif damage == "sif-bad-id":
        shutil.copy(bound / "allowed/img.sif", bad)
        opt = "id=99"
    elif damage == "directory":
        bad = bound / "allowed-data"
    else:
        shutil.copy(bound / "allowed/data.sqfs", bad)
        opt = "image-src=/no/such/dir"
    if bad.is_file():
        bad.chmod(0o644)
    proc = _exec(run_as, as_who, sifbox_cli, _conf(bound / "open", ""), "--bind", f"{bad}:/mnt:{opt}",
                 str(bound / "allowed/img.sif"), "cat", "/mnt/data")  # fmt: skip
    assert proc.returncode in (125, 126, 255) and proc.stdout == "", (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("sifbox: error: can't "), proc.stderr
    assert "Traceback" not in proc.stderr and len([ln for ln in lines if not ln.startswith("hint:")]) == 1, proc.stderr


# --- user bind control ------------------------------------------------------------------------------


@pytest.fixture
def spool(test_user) -> Path:
    """A root-owned directory outside every default bind, like slurmd's spool."""
    base = Path(f"/var/lib/sifbox-test-spool-{os.getpid()}")
    base.mkdir(mode=0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _step_dir(parent: Path, owner, name: str = "pmix.41.0") -> Path:  # type: ignore[no-untyped-def]
    d = parent / name
    d.mkdir(mode=0o700)
    (d / "marker").write_text("STEP-DIR\n")
    os.chown(d / "marker", owner.uid, owner.gid)
    os.chown(d, owner.uid, owner.gid)
    return d


def test_user_bind_control_admits_no_bind_steered_through_the_environment(run_as, test_user, sifbox_cli, shared_tmp,
                                                                          spool: Path, action_images) -> None:  # fmt: skip
    conf = _conf(shared_tmp / "etc", "user bind control = no\n")
    image = str(action_images.sif)
    user_parent = spool / "users-own"
    user_parent.mkdir()
    os.chown(user_parent, test_user.uid, test_user.gid)
    steered = _step_dir(user_parent, test_user)  # named like Slurm's, in a directory the user writes
    for target in (steered, Path("/etc")):
        proc = _exec(run_as, test_user, sifbox_cli, conf, image, "sh", "-c",
                     f"cat {target}/marker; ls {target}/debian_version", SLURM_STEP_ID="0",
                     PMIX_SERVER_TMPDIR=str(target))  # fmt: skip
        assert "STEP-DIR" not in proc.stdout and "debian_version" not in proc.stdout, proc.stdout
        assert "not binding PMIX_SERVER_TMPDIR" in proc.stderr, proc.stderr
    # What slurmd makes (pmix.JOB.STEP in its spool, which the user can't write) is bound.
    real = _step_dir(spool, test_user, "pmix.42.0")
    proc = _exec(run_as, test_user, sifbox_cli, conf, image, "cat", f"{real}/marker", SLURM_STEP_ID="0",
                 PMIX_SERVER_TMPDIR=str(real))  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "STEP-DIR\n", proc.stderr
    # And the options that bind host paths are refused with one line.
    for opts in (("-B", "/etc:/mnt"), ("--home", f"{shared_tmp}:/home/x"), ("--cdi-dirs", str(shared_tmp)),
                 ("-W", str(shared_tmp)), ("-S", "/scratch"),
                 ("--mount", f"type=bind,src={action_images.sqfs},dst=/mnt,image-src=/")):
        proc = _exec(run_as, test_user, sifbox_cli, conf, *opts, image, "true")
        assert proc.returncode == 255 and "user bind control is disabled" in proc.stderr, proc.stderr


def test_parse_time_errors_stay_one_line(run_as, as_who, sifbox_cli, shared_tmp, action_images) -> None:
    # `realpath` of a path that changes, a directory given where a file is expected: no traceback.
    conf = _conf(shared_tmp / "etc", "", ecl="not = [valid")
    proc = _exec(run_as, as_who, sifbox_cli, conf, str(action_images.sif), "true")
    assert proc.returncode == 125 and proc.stderr.startswith("sifbox: error: can't read ECL configuration"), proc.stderr
    time.sleep(0)
