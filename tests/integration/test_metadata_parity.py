"""One /.singularity.d for every way an image is made: a pulled OCI image, the same image
built from `Bootstrap: oci` and converted by `sifbox build out.sif oci:...` carry the same
metadata (apart from the definition each records); builds keep a base image's labels as
Apptainer does, and script sections keep their own `#!` line. As root and the test user.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.images import env_for
from tests.integration.test_pull import TAG, extract, images  # noqa: F401 - `images` is a fixture

pytestmark = pytest.mark.integration
TIMEOUT = 180
EPOCH = "1700000000"


def _sifbox(run_as, who, cli, *args: str, cwd: Path | str = "/", **env: str):  # type: ignore[no-untyped-def]
    scratch = Path(cwd) / "scratch"
    if Path(cwd) != Path("/"):
        scratch.mkdir(mode=0o777, exist_ok=True)
        scratch.chmod(0o777)
        env.setdefault("SIFBOX_TMPDIR", str(scratch))
    return run_as(who, [cli, *args], env=env_for(who, **env), cwd=str(cwd), timeout=TIMEOUT)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def _busybox() -> str:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            return p
    pytest.skip("busybox is not installed (Debian package busybox-static)")


def _tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """/.singularity.d of an extracted image: path -> (mode, content or link target)."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    top = root / ".singularity.d"
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            what = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
            out[str(p.relative_to(root))] = (st.st_mode, what)
    for link in ("singularity", ".run", ".exec", ".test", ".shell", "environment"):
        out[link] = (0, os.readlink(root / link))
    return out


def test_pulled_and_built_images_have_the_same_metadata(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    layout = f"{images}/layout:{TAG}"
    deffile = _write(shared_tmp / "plain.def", f"Bootstrap: oci\nFrom: {layout}\n")
    made = {
        "pulled": ("pull", str(shared_tmp / "pulled.sif"), f"oci:{layout}"),
        "built": ("build", str(shared_tmp / "built.sif"), str(deffile)),
        "converted": ("build", str(shared_tmp / "converted.sif"), f"oci:{layout}"),
    }
    docs, trees = {}, {}
    for name, (verb, out, source) in made.items():
        proc = _sifbox(run_as, as_who, sifbox_cli, verb, out, source, cwd=shared_tmp, SOURCE_DATE_EPOCH=EPOCH)
        assert proc.returncode == 0, proc.stderr
        insp = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--all", out)
        assert insp.returncode == 0 and insp.stderr == "", insp.stderr
        docs[name] = json.loads(insp.stdout)
        trees[name] = _tree(extract(Path(out), shared_tmp / f"{name}-root"))
    uri_def = f"bootstrap: oci\nfrom: {layout}"
    assert docs["pulled"]["data"]["attributes"].pop("deffile") == uri_def
    assert docs["converted"]["data"]["attributes"].pop("deffile") == uri_def
    assert docs["built"]["data"]["attributes"].pop("deffile") == deffile.read_text().rstrip("\n")
    assert docs["pulled"] == docs["built"] == docs["converted"]
    labels = docs["pulled"]["data"]["attributes"]["labels"]
    assert labels["org.example"] == "yes"
    assert labels["org.label-schema.build-date"] == "Tuesday_14_November_2023_22:13:20_UTC"
    assert labels["org.label-schema.usage.singularity.deffile.from"] == layout
    assert "OCI_ENTRYPOINT" in docs["pulled"]["data"]["attributes"]["runscript"]
    for tree in trees.values():
        assert tree.pop(".singularity.d/Singularity")[0] & 0o777 == 0o644
    assert trees["pulled"] == trees["built"] == trees["converted"]
    assert sorted(p for p in trees["pulled"] if p.startswith(".singularity.d/env/")) == [
        f".singularity.d/env/{n}" for n in ("01-base.sh", "10-docker2singularity.sh", "90-environment.sh",
                                            "94-appsbase.sh", "95-apps.sh", "99-base.sh", "99-runtimevars.sh")
    ]  # fmt: skip
    for name in ("pulled", "built"):
        run = _sifbox(run_as, as_who, sifbox_cli, "run", made[name][1], "x")
        assert (run.returncode, run.stdout) == (0, "x\n"), run.stderr


LABELS_DEF = """Bootstrap: oci
From: {layout}

%labels
    org.example no
    org.new yes
"""


def test_a_base_images_labels_are_kept(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # noqa: F811
    """As Apptainer: the base's labels stay; %labels adds new ones and, for one the base
    already has, warns and keeps the base's value unless --force."""
    deffile = _write(shared_tmp / "labels.def", LABELS_DEF.format(layout=f"{images}/layout:{TAG}"))
    out = shared_tmp / "labels.sif"
    for force, want in (([], "yes"), (["--force"], "no")):
        proc = _sifbox(run_as, as_who, sifbox_cli, "build", *force, str(out), str(deffile), cwd=shared_tmp)
        assert proc.returncode == 0, proc.stderr
        warned = "Label: org.example already exists and force option is false, not overwriting" in proc.stderr
        assert warned == (not force), proc.stderr
        labels = json.loads(_sifbox(run_as, as_who, sifbox_cli, "inspect", "--json", str(out)).stdout)
        labels = labels["data"]["attributes"]["labels"]
        assert (labels["org.example"], labels["org.new"]) == (want, "yes")
        assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "oci"


def test_a_local_base_image_keeps_its_metadata(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    base_def = _write(shared_tmp / "base.def", f"Bootstrap: busybox\nMirrorURL: {_busybox()}\n\n"
                      "%labels\n    from.base yes\n%environment\n    export FROM_BASE=1\n"
                      "%runscript\n    echo base runscript\n")  # fmt: skip
    base = shared_tmp / "base.sif"
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", str(base), str(base_def), cwd=shared_tmp)
    assert proc.returncode == 0, proc.stderr
    top_def = _write(shared_tmp / "top.def", f"Bootstrap: localimage\nFrom: {base}\n\n"
                     "%labels\n    from.top yes\n%environment\n    export FROM_TOP=1\n")  # fmt: skip
    top = shared_tmp / "top.sif"
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", str(top), str(top_def), cwd=shared_tmp)
    assert proc.returncode == 0, proc.stderr
    attrs = json.loads(_sifbox(run_as, as_who, sifbox_cli, "inspect", "--all", str(top)).stdout)["data"]["attributes"]
    assert attrs["labels"]["from.base"] == attrs["labels"]["from.top"] == "yes"
    assert attrs["labels"]["org.label-schema.usage.singularity.deffile.from"] == str(base)
    assert "FROM_BASE=1" in attrs["environment"]["/.singularity.d/env/90-environment.sh"]
    assert "FROM_TOP=1" in attrs["environment"]["/.singularity.d/env/90-environment.sh"]
    assert attrs["runscript"] == "#!/bin/sh\n\n    echo base runscript"
    assert attrs["deffile"] == top_def.read_text().rstrip("\n")
    root = extract(top, shared_tmp / "top-root")
    assert (root / ".singularity.d/bootstrap_history/Apptainer0").read_text() == base_def.read_text()
    run = _sifbox(run_as, as_who, sifbox_cli, "exec", str(top), "sh", "-c", 'echo "$FROM_BASE$FROM_TOP"')
    assert run.stdout == "11\n", run.stderr


SHEBANG_DEF = """Bootstrap: busybox
MirrorURL: {busybox}

%runscript
    #!/bin/awk -f
    BEGIN {{ printf "awk runs: %s\\n", ARGV[1] }}

%test
#!/bin/awk -f
BEGIN {{ print "test by awk"; exit 0 }}
"""


def test_script_sections_keep_their_interpreter(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    deffile = _write(shared_tmp / "shebang.def", SHEBANG_DEF.format(busybox=_busybox()))
    out = shared_tmp / "shebang.sif"
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", str(out), str(deffile), cwd=shared_tmp)
    assert proc.returncode == 0, proc.stderr
    assert "test by awk" in proc.stdout + proc.stderr  # the build's %test ran it with awk
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out), "x")
    assert (run.returncode, run.stdout) == (0, "awk runs: x\n"), run.stderr
    test = _sifbox(run_as, as_who, sifbox_cli, "test", str(out))
    assert (test.returncode, test.stdout) == (0, "test by awk\n"), test.stderr
    script = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--runscript", str(out)).stdout
    assert script.startswith("#!/bin/awk -f\n\n    BEGIN")


def test_without_runscript_as_apptainer(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    deffile = _write(shared_tmp / "bare.def", f"Bootstrap: busybox\nMirrorURL: {_busybox()}\n")
    out = shared_tmp / "bare.sif"
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", str(out), str(deffile), cwd=shared_tmp)
    assert proc.returncode == 0, proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out))
    assert (run.returncode, run.stdout) == (0, "There is no runscript defined for this container\n"), run.stderr
    test = _sifbox(run_as, as_who, sifbox_cli, "test", str(out))
    assert test.returncode == 0 and "No test script found in container, exiting" in test.stderr


def test_a_hostile_base_image(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    """Links in a base image's metadata never make the build read or write the host; a
    metadata path that is not what it should be is one clear error."""
    base = shared_tmp / "base"
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", "--sandbox", str(base),
                   str(_write(shared_tmp / "b.def", f"Bootstrap: busybox\nMirrorURL: {_busybox()}\n")),
                   cwd=shared_tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sd = base / ".singularity.d"
    for name, target in (("labels.json", "/etc/shadow"), ("env/90-environment.sh", "../../../../etc/shadow"),
                         ("runscript.help", "/etc/shadow")):  # fmt: skip
        (sd / name).unlink(missing_ok=True)
        (sd / name).symlink_to(target)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    shadow = Path("/etc/shadow").stat()
    top = _write(shared_tmp / "top.def", f"Bootstrap: localimage\nFrom: {base}\n\n%labels\n    top yes\n"
                 "%environment\n    export TOP=1\n%help\n    top help\n")  # fmt: skip
    out = shared_tmp / "top.sif"
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", str(out), str(top), cwd=shared_tmp)
    assert proc.returncode == 0, proc.stderr
    attrs = json.loads(_sifbox(run_as, as_who, sifbox_cli, "inspect", "--all", str(out)).stdout)["data"]["attributes"]
    assert attrs["labels"]["top"] == "yes" and attrs["helpfile"] == "    top help"
    env = attrs["environment"]["/.singularity.d/env/90-environment.sh"]  # the dangling link was replaced
    assert env == "#!/bin/sh\n# Custom environment shell code should follow\n\n\n    export TOP=1"
    assert Path("/etc/shadow").stat().st_mtime == shadow.st_mtime
    # bootstrap_history as a file: the definition can't be kept there
    (sd / "Singularity").write_text("Bootstrap: busybox\n")
    (sd / "bootstrap_history").write_text("not a directory\n")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    proc = _sifbox(run_as, as_who, sifbox_cli, "build", "--force", str(out), str(top), cwd=shared_tmp)
    assert proc.returncode == 255, proc.stderr
    assert proc.stderr.splitlines()[-1] == ("sifbox: error: can't write `/.singularity.d/bootstrap_history/"
                                            "Apptainer0` in the image: not a directory"), proc.stderr
    assert "Traceback" not in proc.stderr
