"""The one writer of /.singularity.d (sifbox.formats.singularityd): golden contents, modes,
label formats, Apptainer's build order; the shell scripts it writes, run with /bin/sh on a
stand-in root (paths rewritten), including hostile app names and image configs.

Set SIFBOX_REGEN_GOLDEN=1 to rewrite tests/data/golden/singularityd after a deliberate change.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from sifbox.formats import appenv
from sifbox.formats import singularityd as sd
from sifbox.formats.deffile import parse_deffile
from tests.inspect_e2e import INSPECTOR_DEF as INSPECTOR_TEMPLATE

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "singularityd"
BUILD = sd.BuildInfo(arch="amd64", epoch=1700000000, version="1.2.3")

#: Apptainer's e2e/testdata/inspector_container.def, on busybox instead of `oras`.
INSPECTOR_DEF = INSPECTOR_TEMPLATE.format(busybox="/bin/busybox")
#: What the inspector's %post leaves behind.
POST_LABELS = "first.build.labels  first\nsecond.build.labels second\n"


def built_tree(text: str = INSPECTOR_DEF, post_labels: str = "", force: bool = False) -> list[sd.Entry]:
    """The tree a build of `text` on a fresh root writes (base, then the definition)."""
    stage = parse_deffile(text).final
    base = sd.base_tree()
    files = {e.path: e.data for e in base if e.path in sd.EXISTING}
    rest, _ = sd.finish(sd.ImageMeta.from_stage(stage, text), sd.Existing(files, post_labels), BUILD, force=force)
    return sd.merge(base, rest)


def golden_cases() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    base = sd.files_of(sd.base_tree())
    for path in (*(f"{sd.SD}/actions/{a}" for a in ("exec", "run", "shell", "start", "test")),
                 *(f"{sd.ENV_DIR}/{n}" for n in ("01-base.sh", "90-environment.sh", "95-apps.sh", "99-base.sh",
                                                 "99-runtimevars.sh")),
                 sd.RUNSCRIPT, sd.STARTSCRIPT):  # fmt: skip
        out["base" + path.removeprefix(sd.SD)] = base[path]
    oci = sd.OciConfig(("/bin/echo", "it's"), ("a b", "$HOME"), ("PATH=/usr/bin:/bin", "LANG=C.UTF-8", "EMPTY"),
                       {"org.example": "<yes> & no"})  # fmt: skip
    for path, data in sd.files_of(sd.oci_tree(oci)).items():
        out["oci" + path.removeprefix(sd.SD)] = data
    built = sd.files_of(built_tree(post_labels=POST_LABELS))
    for path in (sd.LABELS_JSON, sd.ENV_90, sd.RUNSCRIPT, sd.STARTSCRIPT, sd.TEST, sd.HELP, sd.ENV_94, sd.DEFFILE):
        out["inspector" + path.removeprefix(sd.SD)] = built[path]
    for path, data in built.items():
        if path.startswith("/scif/apps/hello/"):
            out["inspector/" + path.removeprefix("/scif/apps/")] = data
    return out


def test_golden_files() -> None:
    cases = golden_cases()
    if os.environ.get("SIFBOX_REGEN_GOLDEN"):
        for rel, data in cases.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_bytes(data)
    have = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file()}
    assert have == set(cases), "golden files missing or left over"
    for rel, data in cases.items():
        assert (GOLDEN / rel).read_bytes() == data, rel


def test_base_tree_layout_and_modes() -> None:
    tree = sd.base_tree()
    by_path = {e.path: e for e in tree}
    assert [e.path for e in tree].index(sd.SD) < [e.path for e in tree].index(f"{sd.SD}/actions/run")
    for d in ("/proc", "/sys", "/dev", "/home", "/root", "/etc", "/var/tmp", f"{sd.SD}/libs", f"{sd.SD}/env"):
        assert by_path[d].kind is sd.Kind.DIR and by_path[d].keep_existing, d
    assert by_path["/tmp"].mode == by_path["/var/tmp"].mode == 0o1777
    for name in ("exec", "run", "shell", "start", "test"):
        e = by_path[f"{sd.SD}/actions/{name}"]
        assert e.kind is sd.Kind.FILE and e.mode == 0o755 and e.data.startswith(b"#!/bin/sh\n")
    for name in ("/etc/hosts", "/etc/resolv.conf"):
        assert by_path[name].data == b"" and by_path[name].mode == 0o644
    assert by_path["/singularity"].target == ".singularity.d/runscript"
    assert by_path["/environment"].target == ".singularity.d/env/90-environment.sh"
    # a localimage base keeps its own files; an OCI image's are replaced, its dirs kept
    assert all(e.keep_existing for e in tree)
    replaced = sd.replacing(tree)
    assert all(not e.keep_existing for e in replaced if e.kind is sd.Kind.FILE)
    assert all(e.keep_existing for e in replaced if e.kind is not sd.Kind.FILE)
    assert "/etc/passwd" not in by_path  # Apptainer's base environment leaves them to the image


@pytest.mark.parametrize(
    ("text", "shell", "want"),
    [
        ("echo hi\n", None, "#!/bin/sh\n\necho hi\n\n"),
        ("    echo hi\n", "/bin/bash", "#!/bin/bash\n\n    echo hi\n\n"),
        ("#!/usr/bin/env python3\nprint('hi')\n", None, "#!/usr/bin/env python3\n\nprint('hi')\n\n"),
        ("    #!/bin/bash -e  \n    [[ 1 ]]\n", None, "#!/bin/bash -e\n\n    [[ 1 ]]\n\n"),
        ("#!/bin/bash\necho\n", "/bin/zsh", "#!/bin/bash\n\necho\n\n"),  # the script's own line wins
        ("#!/bin/sh", None, "#!/bin/sh\n\n\n"),
    ],
)
def test_script_file_interpreter_line(text: str, shell: str | None, want: str) -> None:
    assert sd.script_file(text, shell) == want


def test_shebang_sections_of_a_definition() -> None:
    text = "Bootstrap: scratch\n\n%runscript\n#!/usr/bin/env python3\nprint(1)\n%test -c /bin/bash\n[[ -d / ]]\n"
    files = sd.files_of(built_tree(text))
    assert files[sd.RUNSCRIPT] == b"#!/usr/bin/env python3\n\nprint(1)\n\n"
    assert files[sd.TEST] == b"#!/bin/bash\n\n[[ -d / ]]\n\n"


@pytest.mark.parametrize(
    ("epoch", "want"),
    [
        (0, "Thursday_1_January_1970_0:0:0_UTC"),
        (1700000000, "Tuesday_14_November_2023_22:13:20_UTC"),
        (1709622489, "Tuesday_5_March_2024_7:8:9_UTC"),  # no zero padding anywhere
    ],
)
def test_build_date_format(epoch: int, want: str) -> None:
    assert sd.build_date(epoch) == want


def test_labels_of_a_build() -> None:
    labels = json.loads(sd.files_of(built_tree(post_labels=POST_LABELS))[sd.LABELS_JSON])
    assert labels == {
        "E2E": "AWESOME",
        "HI": '"HELLO WORLD"',
        "MAINTAINER": '"WestleyK <westley@sylabs.io>"',
        "e2e": "awesome",
        "first.build.labels": "first",
        "hi": '"hello world"',
        "org.label-schema.build-arch": "amd64",
        "org.label-schema.build-date": "Tuesday_14_November_2023_22:13:20_UTC",
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.usage": "/.singularity.d/runscript.help",
        "org.label-schema.usage.apptainer.runscript.help": "/.singularity.d/runscript.help",
        "org.label-schema.usage.sifbox.version": "1.2.3",
        "org.label-schema.usage.singularity.deffile.bootstrap": "busybox",
        "org.label-schema.usage.singularity.deffile.mirrorurl": "/bin/busybox",
        "second.build.labels": "second",
    }
    raw = sd.files_of(built_tree())[sd.LABELS_JSON].decode()
    assert "\\u003cwestley@sylabs.io\\u003e" in raw and raw.startswith('{\n\t"')  # Go's encoding


def _finish(text: str, files: dict[str, bytes], *, force: bool = False, post: str = "",
            history: int = 0) -> tuple[dict[str, bytes], list[str]]:  # fmt: skip
    stage = parse_deffile(text).final
    entries, warnings = sd.finish(sd.ImageMeta.from_stage(stage, text), sd.Existing(files, post, history), BUILD,
                                  force=force)  # fmt: skip
    return sd.files_of(entries), warnings


BASE_LABELS = {"org.example": "base", "maintainer": "base team", "org.label-schema.build-date": "old",
               "org.label-schema.usage.singularity.deffile.from": "debian:12"}  # fmt: skip
ON_BASE = "Bootstrap: localimage\nFrom: base.sif\n\n%labels\n    maintainer me\n    org.new yes\n"


def test_base_labels_are_kept_and_def_labels_added_as_apptainer_does() -> None:
    files, warnings = _finish(ON_BASE, {sd.LABELS_JSON: sd.labels_json(BASE_LABELS)}, post="post.label p\n")
    labels = json.loads(files[sd.LABELS_JSON])
    assert labels["org.example"] == "base"  # the base image's labels stay
    assert labels["org.new"] == "yes" and labels["post.label"] == "p"
    assert labels["org.label-schema.build-date"] == sd.build_date(BUILD.epoch)  # build labels override
    assert labels["org.label-schema.usage.singularity.deffile.from"] == "base.sif"
    # Apptainer keeps a base label a %labels line names again, unless --force
    assert labels["maintainer"] == "base team"
    assert warnings == ["Label: maintainer already exists and force option is false, not overwriting"]
    files, warnings = _finish(ON_BASE, {sd.LABELS_JSON: sd.labels_json(BASE_LABELS)}, force=True)
    assert json.loads(files[sd.LABELS_JSON])["maintainer"] == "me" and warnings == []


@pytest.mark.parametrize("bad", [b"{not json", b"[1, 2]", b'"text"'])
def test_broken_base_labels_are_ignored_with_a_warning(bad: bytes) -> None:
    files, warnings = _finish(ON_BASE, {sd.LABELS_JSON: bad})
    assert json.loads(files[sd.LABELS_JSON])["org.new"] == "yes"
    assert any("Ignoring the labels of the base image" in w for w in warnings)


def test_null_and_odd_label_values_of_a_base() -> None:
    files, warnings = _finish(ON_BASE, {sd.LABELS_JSON: b"null"})
    assert warnings == [] and "org.new" in json.loads(files[sd.LABELS_JSON])
    files, _ = _finish(ON_BASE, {sd.LABELS_JSON: b'{"n": 5, "l": [1], "s": "x"}'})
    labels = json.loads(files[sd.LABELS_JSON])
    assert (labels["n"], labels["l"], labels["s"]) == ("5", "[1]", "x")


def test_environment_is_appended_and_the_old_definition_kept() -> None:
    text = "Bootstrap: localimage\nFrom: x\n\n%environment\n    export B=2\n%help\n    new help\n"
    old = {sd.ENV_90: b"#!/bin/sh\nexport A=1\n", sd.DEFFILE: b"Bootstrap: busybox\n", sd.HELP: b"old help\n"}
    files, warnings = _finish(text, old, history=2)
    assert files[sd.ENV_90] == b"#!/bin/sh\nexport A=1\n\n    export B=2\n\n"
    assert files[f"{sd.HISTORY}/Apptainer2"] == b"Bootstrap: busybox\n"
    assert files[sd.DEFFILE] == text.encode()
    assert sd.HELP not in files  # an existing help stays, as in Apptainer without --force
    assert warnings == ["Help message already exists and force option is false, not overwriting"]
    files, _ = _finish(text, {})
    assert files[sd.ENV_90] == b"#!/bin/sh\n\n    export B=2\n\n"


def test_sections_not_built_are_not_written() -> None:
    text = "Bootstrap: scratch\n\n%runscript\n    run\n%test\n    t\n%environment\n    export E=1\n%labels\n    L 1\n"
    stage = parse_deffile(text).final
    meta = sd.ImageMeta.from_stage(stage, text, frozenset({"runscript"}))
    files = sd.files_of(sd.finish(meta, sd.Existing(), BUILD)[0])
    assert sd.RUNSCRIPT in files and sd.TEST not in files and sd.ENV_90 not in files
    labels = json.loads(files[sd.LABELS_JSON])
    assert "L" not in labels and labels["org.label-schema.schema-version"] == "1.0"  # labels.json always


def test_secret_header_keywords_stay_out_of_labels() -> None:
    labels = sd.build_labels({"bootstrap": "zypper", "regcode": "SECRET", "product": "SLES"}, BUILD, has_help=False)
    assert "SECRET" not in json.dumps(labels)
    assert labels["org.label-schema.usage.singularity.deffile.product"] == "SLES"


def test_a_pull_gets_what_a_build_of_the_same_source_gets() -> None:
    oci = sd.OciConfig(("/entry",), ("arg",), ("A=1",), {"org.example": "yes"})
    pulled = sd.files_of(sd.pull_tree(oci, "oci:/layout:v1", BUILD))
    text = "bootstrap: oci\nfrom: /layout:v1\n"
    first = sd.replacing(sd.merge(sd.base_tree(), sd.oci_tree(oci)))
    files = {e.path: e.data for e in first if e.path in sd.EXISTING}
    rest, warnings = sd.finish(sd.ImageMeta.from_stage(parse_deffile(text).final, text), sd.Existing(files), BUILD)
    built = sd.files_of(sd.merge(first, rest))
    assert warnings == [] and pulled == built
    labels = json.loads(pulled[sd.LABELS_JSON])
    assert labels["org.example"] == "yes" and labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "oci"
    assert pulled[sd.DEFFILE] == text.encode()
    assert sd.uri_deffile("docker://busybox:1.36") == "bootstrap: docker\nfrom: busybox:1.36\n"


def test_image_config_of_any_shape() -> None:
    hostile = {"config": {"Entrypoint": "/bin/sh", "Cmd": {"x": 1}, "Env": ["A=1", 5, "=x", "B C=2", "D"],
                          "Labels": ["not", "a", "map"]}}  # fmt: skip
    oci = sd.OciConfig.from_config(hostile)
    assert oci == sd.OciConfig(("/bin/sh",), (), ("A=1", "5", "=x", "B C=2", "D"), {})
    assert sd.docker_env_script(oci.env) == '#!/bin/sh\nexport A="${A:-"1"}"\nexport D="${D:-}"\n'
    for config in ({}, {"config": None}, {"config": []}, {"config": {"Labels": None}}):
        assert sd.OciConfig.from_config(config) == sd.OciConfig()


# -- the scripts, run --------------------------------------------------------------------------
def materialize(tree: Iterable[sd.Entry], root: Path) -> None:
    """Write `tree` under `root`, with the image paths in the scripts pointing there."""

    def rewrite(data: bytes) -> bytes:
        data = data.replace(b"/.singularity.d", f"{root}/.singularity.d".encode())
        return re.sub(rb"(?<![\w}])/scif/", f"{root}/scif/".encode(), data)  # not $SCIF_APPROOT/scif/

    for e in tree:
        path = root / e.path.lstrip("/")
        if e.kind is sd.Kind.DIR:
            path.mkdir(parents=True, exist_ok=True)
        elif e.kind is sd.Kind.FILE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rewrite(e.data))
            path.chmod(e.mode)


def sh(root: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    text = (root / script.lstrip("/")).read_text()
    base = {"PATH": "/usr/bin:/bin", "HOME": str(root)}
    return subprocess.run(["/bin/sh", "-c", text, "sh", *args], capture_output=True, text=True, check=False,
                          env={**base, **env}, cwd=root)  # fmt: skip


@pytest.fixture
def inspector(tmp_path: Path) -> Path:
    materialize(built_tree(), tmp_path)
    return tmp_path


def test_action_test_without_a_test_script_exits_0(inspector: Path) -> None:
    (inspector / ".singularity.d/test").unlink()
    proc = sh(inspector, "/.singularity.d/actions/test")
    assert (proc.returncode, proc.stderr) == (0, appenv.NO_TEST + "\n")


def test_action_test_of_an_app_without_tests_exits_1(inspector: Path) -> None:
    proc = sh(inspector, "/.singularity.d/actions/test", APPTAINER_APPNAME="world")
    assert (proc.returncode, proc.stderr) == (1, "No tests for contained app: world\n")
    ok = sh(inspector, "/.singularity.d/actions/test", SINGULARITY_APPNAME="hello")
    assert (ok.returncode, ok.stdout) == (0, "THIS IS A HELLO TEST\n"), ok.stderr


def test_action_run_of_an_app_and_its_environment(inspector: Path) -> None:
    app = inspector / "scif/apps/hello"
    (app / "scif/runscript").write_text(
        '#!/bin/sh\necho "$SCIF_APPNAME|$SCIF_APPROOT|$SCIF_APPDATA|$SCIF_APPINPUT|$HELLOTHISIS|$APPTAINER_APPNAME"\n'
        'echo "$PATH" | cut -d: -f1-2\necho "$LD_LIBRARY_PATH"\n')  # fmt: skip
    proc = sh(inspector, "/.singularity.d/actions/run", SIFBOX_APPNAME="hello")
    assert proc.returncode == 0, proc.stderr
    name, path, libs = proc.stdout.splitlines()
    scif = f"{inspector}/scif"  # the stand-in root's
    assert name == f"hello|{scif}/apps/hello|{scif}/data/hello|{scif}/data/hello/input|hello|"
    assert path == f"{app}/bin:{app}"
    assert libs == f"{app}/lib:{inspector}/.singularity.d/libs"


def test_action_run_of_a_missing_app(inspector: Path) -> None:
    proc = sh(inspector, "/.singularity.d/actions/run", APPTAINER_APPNAME="nosuch")
    assert (proc.returncode, proc.stderr) == (1, "Could not locate the container application: nosuch\n")


def test_action_run_without_runscript(inspector: Path) -> None:
    (inspector / ".singularity.d/runscript").unlink()
    proc = sh(inspector, "/.singularity.d/actions/run", "-c", "echo from sh")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "from sh\n", appenv.NO_RUNSCRIPT + "\n")


def test_default_runscript(tmp_path: Path) -> None:
    materialize(sd.base_tree(), tmp_path)
    proc = sh(tmp_path, "/.singularity.d/actions/run")
    assert (proc.returncode, proc.stdout) == (0, sd.DEFAULT_RUNSCRIPT_MESSAGE + "\n")


def test_base_env_scripts(tmp_path: Path) -> None:
    materialize(sd.base_tree(), tmp_path)
    libs = f"{tmp_path}/.singularity.d/libs"
    probe = ["sh", "-c", 'echo "$LD_LIBRARY_PATH|$PATH|$PS1"']
    proc = sh(tmp_path, "/.singularity.d/actions/exec", *probe, LD_LIBRARY_PATH=f"/x:{libs}",
              SING_USER_DEFINED_PREPEND_PATH="/pre", SING_USER_DEFINED_APPEND_PATH="/post", PS1="keep> ")  # fmt: skip
    assert proc.stdout == f"/x:{libs}|/pre:/usr/bin:/bin:/post|keep> \n", proc.stderr
    proc = sh(tmp_path, "/.singularity.d/actions/exec", *probe[:2], 'echo "$LD_LIBRARY_PATH|$PATH"')
    assert proc.stdout == f"{libs}|/usr/bin:/bin\n", proc.stderr


HOSTILE_APP = "x$(touch${IFS}PWNED)`touch${IFS}PWNED`'\";touch${IFS}PWNED"


def test_hostile_app_names_are_inert(tmp_path: Path) -> None:
    text = f"Bootstrap: scratch\n\n%apprun {HOSTILE_APP}\n    echo ran\n%appenv {HOSTILE_APP}\n    export X=1\n"
    tree = built_tree(text)
    materialize(tree, tmp_path)
    var = f"SCIF_APPROOT_{sd.var_suffix(HOSTILE_APP)}"
    assert f"\n{var}=" in sd.files_of(tree)[sd.ENV_94].decode()
    probe = ["sh", "-c", f'echo "${var}|$SCIF_APPNAME"']
    proc = sh(tmp_path, "/.singularity.d/actions/exec", *probe, APPTAINER_APPNAME=HOSTILE_APP)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{tmp_path}/scif/apps/{HOSTILE_APP}|{HOSTILE_APP}\n"
    run = sh(tmp_path, "/.singularity.d/actions/run", APPTAINER_APPNAME=HOSTILE_APP)
    assert run.stdout == "ran\n", run.stderr
    assert not list(tmp_path.rglob("PWNED"))


HOSTILE_WORDS = ["it's", "a b", '"q"', "$HOME", "`id`", "\\", "*", "", "-n"]


@pytest.mark.parametrize("no_eval", ["APPTAINER_NO_EVAL", "SINGULARITY_NO_EVAL"])
def test_oci_runscript_without_evaluation_passes_words_verbatim(tmp_path: Path, no_eval: str) -> None:
    materialize(sd.oci_tree(sd.OciConfig(("/usr/bin/printf", "[%s]"), tuple(HOSTILE_WORDS))), tmp_path)
    proc = sh(tmp_path, "/.singularity.d/runscript", **{no_eval: "1"})
    assert proc.stdout == "".join(f"[{w}]" for w in HOSTILE_WORDS), proc.stderr
    proc = sh(tmp_path, "/.singularity.d/runscript", "$(touch PWNED)", **{no_eval: "1"})
    assert proc.stdout == "[$(touch PWNED)]"
    assert not (tmp_path / "PWNED").exists()


def test_oci_runscript_evaluates_arguments_once_as_apptainer(tmp_path: Path) -> None:
    materialize(sd.oci_tree(sd.OciConfig(("/usr/bin/printf", "[%s]"), ("a b", "$HOME"))), tmp_path)
    assert sh(tmp_path, "/.singularity.d/runscript").stdout == "[a b][$HOME]"  # the image's words stay
    run = sh(tmp_path, "/.singularity.d/runscript", "x y", "-n", "$HOME")
    assert run.stdout == f"[x y][-n][{tmp_path}]"  # the caller's go through the shell (--no-eval: not)
    materialize(sd.oci_tree(sd.OciConfig((), ("/usr/bin/printf", "<%s>", "c"))), tmp_path)
    assert sh(tmp_path, "/.singularity.d/runscript").stdout == "<c>"
    assert sh(tmp_path, "/.singularity.d/runscript", "/usr/bin/printf", "{%s}", "d").stdout == "{d}"
