"""Image config -> /.singularity.d files, and the pull command's pure helpers."""

from __future__ import annotations

import json
import tarfile

from sifbox.cli.commands.pull import default_name
from sifbox.formats import singularityd as sd
from sifbox.oci import imageconfig as ic


def test_env_script_like_apptainer() -> None:
    text = sd.docker_env_script(["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "EMPTY", 'Q=a"b$c`d\\e', "bad-name=x"])
    assert text == (
        "#!/bin/sh\n"
        'export PATH="/usr/local/bin:/usr/bin"\n'
        'export LANG="${LANG:-"C.UTF-8"}"\n'
        'export EMPTY="${EMPTY:-}"\n'
        'export Q="${Q:-"a\\"b\\$c\\`d\\\\e"}"\n'
    )


def test_runscript_variables() -> None:
    lines = sd.oci_runscript(["/bin/echo", "it's"], ["a b"]).splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[1] == "OCI_ENTRYPOINT='\"/bin/echo\" \"it'\"'\"'s\"'"
    assert lines[2] == "OCI_CMD='\"a b\"'"
    assert "OCI_ENTRYPOINT=''\nOCI_CMD=''\n" in sd.oci_runscript([], [])


def test_labels_and_notes() -> None:
    cfg = {"config": {"Labels": {"maintainer": "me"}, "User": "1000", "WorkingDir": "/work"}}
    files = sd.files_of(ic.tree(cfg, arch="amd64", source="docker://busybox:1.36", epoch=0, version="x"))
    labels = json.loads(files["/.singularity.d/labels.json"])
    assert labels["maintainer"] == "me"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "docker"
    assert labels["org.label-schema.usage.singularity.deffile.from"] == "busybox:1.36"
    assert labels["org.label-schema.build-date"] == "Thursday_1_January_1970_0:0:0_UTC"
    assert files["/.singularity.d/Singularity"] == b"bootstrap: docker\nfrom: busybox:1.36\n"
    # an OCI bootstrap gets the image's labels only: the build adds its own
    part = sd.files_of(ic.tree(cfg, arch="amd64", source="docker://busybox:1.36", epoch=0, version="x",
                               finish=False))  # fmt: skip
    assert json.loads(part["/.singularity.d/labels.json"]) == {"maintainer": "me"}
    assert "/.singularity.d/Singularity" not in part
    notes = ic.notes(cfg)
    assert any("USER `1000`" in n for n in notes) and any("--pwd /work" in n for n in notes)


def test_entries_cover_the_metadata_tree() -> None:
    out = ic.entries({"config": {"Env": ["A=1"]}}, arch="amd64", source="oci:x", epoch=5, version="v")
    by_name = {e.info.name: e for e in out}
    for name in (".singularity.d/actions/run", ".singularity.d/env/01-base.sh",
                 ".singularity.d/env/10-docker2singularity.sh", ".singularity.d/env/99-runtimevars.sh",
                 ".singularity.d/runscript", ".singularity.d/labels.json", "etc/hosts"):  # fmt: skip
        assert by_name[name].info.isreg() and by_name[name].info.size == len(by_name[name].data)
        assert by_name[name].info.mtime == 5 and not by_name[name].if_absent  # the layers' are replaced
    assert by_name["tmp"].info.type == tarfile.DIRTYPE and by_name["tmp"].if_absent
    assert by_name["tmp"].info.mode == 0o1777
    assert by_name["singularity"].info.linkname == ".singularity.d/runscript" and by_name["singularity"].if_absent
    assert json.loads(by_name[".singularity.d/labels.json"].data)["org.label-schema.build-arch"] == "amd64"
    assert by_name[".singularity.d/env/10-docker2singularity.sh"].data == b'#!/bin/sh\nexport A="${A:-"1"}"\n'
    names = [e.info.name for e in out]
    assert names.index(".singularity.d") < names.index(".singularity.d/env") < names.index(
        ".singularity.d/env/01-base.sh")  # fmt: skip


def test_default_names() -> None:
    assert default_name("docker://busybox") == "busybox_latest.sif"
    assert default_name("docker://127.0.0.1:5000/ns/app:1.2") == "app_1.2.sif"
    assert default_name("docker://app@sha256:" + "ab" * 32) == "app_abababababab.sif"
    assert default_name("oci:/x/layout:v1") == "layout_v1.sif"
    assert default_name("oci-archive:/x/img.tar") == "img_latest.sif"
    assert default_name("docker-archive:/x/saved.tar:busybox:1.0") == "saved_1.0.sif"
