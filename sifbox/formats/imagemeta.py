"""The `/.singularity.d` metadata tree and SCIF app layout of an image (pure).

Functions here return {path inside the image: (bytes, mode)}; the builder
writes them. The layout is the one Apptainer writes and reads, so images
move both ways::

    /.singularity.d/actions/{exec,run,shell,start,test}
    /.singularity.d/env/01-base.sh 90-environment.sh 91-environment.sh
                        94-appsbase.sh 95-apps.sh 99-base.sh 99-runtimevars.sh
    /.singularity.d/labels.json runscript runscript.help startscript test Singularity
    /.singularity.d/libs/
    /scif/apps/NAME/{bin,lib,scif/{runscript,startscript,test,runscript.help,labels.json,env/}}
    /scif/data/NAME/{input,output}
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.deffile import App, Script, Stage

SD = "/.singularity.d"
#: Directories every image gets.
BASE_DIRS = (SD, f"{SD}/actions", f"{SD}/env", f"{SD}/libs", "/dev", "/proc", "/sys", "/tmp", "/var/tmp",
             "/home", "/root", "/etc", "/bin", "/usr", "/var", "/opt", "/mnt", "/srv")  # fmt: skip
ENVIRONMENT_SCRIPT = f"{SD}/env/91-environment.sh"

Files = dict[str, tuple[bytes, int]]

_SOURCE_ENV = """for __sifbox_f in /.singularity.d/env/*.sh; do
    if [ -f "$__sifbox_f" ]; then
        . "$__sifbox_f"
    fi
done
unset __sifbox_f
"""

_ACTIONS = {
    "exec": "#!/bin/sh\n\n" + _SOURCE_ENV + '\nexec "$@"\n',
    "run": "#!/bin/sh\n\n"
    + _SOURCE_ENV
    + """
if [ -n "${SINGULARITY_APPNAME:-${SCIF_APPNAME:-}}" ]; then
    __app=${SINGULARITY_APPNAME:-$SCIF_APPNAME}
    if [ -x "/scif/apps/$__app/scif/runscript" ]; then
        exec "/scif/apps/$__app/scif/runscript" "$@"
    fi
    echo "No runscript for contained app: $__app" >&2
    exit 1
fi
if [ -x /.singularity.d/runscript ]; then
    exec /.singularity.d/runscript "$@"
fi
echo "No runscript found in container, executing /bin/sh" >&2
exec /bin/sh "$@"
""",
    "shell": "#!/bin/sh\n\n"
    + _SOURCE_ENV
    + """
if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then
    exec "$SINGULARITY_SHELL" "$@"
fi
if [ -x /bin/bash ]; then
    exec /bin/bash --norc "$@"
fi
exec /bin/sh "$@"
""",
    "start": "#!/bin/sh\n\n"
    + _SOURCE_ENV
    + """
if [ -x /.singularity.d/startscript ]; then
    exec /.singularity.d/startscript "$@"
fi
""",
    "test": "#!/bin/sh\n\n"
    + _SOURCE_ENV
    + """
if [ -n "${SINGULARITY_APPNAME:-${SCIF_APPNAME:-}}" ]; then
    __app=${SINGULARITY_APPNAME:-$SCIF_APPNAME}
    if [ -x "/scif/apps/$__app/scif/test" ]; then
        exec "/scif/apps/$__app/scif/test" "$@"
    fi
    echo "No tests for contained app: $__app" >&2
    exit 1
fi
if [ -x /.singularity.d/test ]; then
    exec /.singularity.d/test "$@"
fi
echo "No test script found in container, exiting" >&2
exit 0
""",
}

_ENV_01 = """#!/bin/sh
# The image's base environment; later scripts may change it.
"""
_ENV_90_HEAD = """#!/bin/sh
# Custom environment shell code should follow

"""
_ENV_91 = """#!/bin/sh
# Written by %post through $SINGULARITY_ENVIRONMENT at build time.
"""
_ENV_95 = """#!/bin/sh
# The environment of the SCIF app given with --app.
if [ -n "${SCIF_APPNAME:-${SINGULARITY_APPNAME:-}}" ]; then
    __app=${SCIF_APPNAME:-$SINGULARITY_APPNAME}
    if [ -d "/scif/apps/$__app/scif/env" ]; then
        for __f in "/scif/apps/$__app/scif/env"/*.sh; do
            [ -f "$__f" ] && . "$__f"
        done
        unset __f
    fi
    unset __app
fi
"""
_ENV_99 = """#!/bin/sh
# Values every container starts with.
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH=/.singularity.d/libs
else
    case ":$LD_LIBRARY_PATH:" in
    *:/.singularity.d/libs:*) ;;
    *) LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs" ;;
    esac
fi
export LD_LIBRARY_PATH
"""
_ENV_99_RUNTIME = """#!/bin/sh
# Variables given to Apptainer on the host (APPTAINERENV_PATH, ..._PREPEND_PATH,
# ..._APPEND_PATH) arrive as SING_USER_DEFINED_*; apply them last.
if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PREPEND_PATH:$PATH"
fi
if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
    PATH="$PATH:$SING_USER_DEFINED_APPEND_PATH"
fi
if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PATH"
fi
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
"""


def base_files() -> Files:
    """What every image built by sifbox holds in /.singularity.d before its
    definition adds to it (files that already exist are kept by the builder)."""
    files: Files = {
        f"{SD}/actions/{name}": (text.encode(), 0o755) for name, text in _ACTIONS.items()
    }
    files[f"{SD}/env/01-base.sh"] = (_ENV_01.encode(), 0o755)
    files[f"{SD}/env/90-environment.sh"] = (_ENV_90_HEAD.encode(), 0o755)
    files[f"{SD}/env/95-apps.sh"] = (_ENV_95.encode(), 0o755)
    files[f"{SD}/env/99-base.sh"] = (_ENV_99.encode(), 0o755)
    files[f"{SD}/env/99-runtimevars.sh"] = (_ENV_99_RUNTIME.encode(), 0o755)
    return files


def script_text(script: Script, default_shell: str = "/bin/sh") -> bytes:
    """A section as an executable script: shebang (`-c SHELL` or the default), body."""
    shell = script.shell or default_shell
    return f"#!{shell}\n\n{script.text}".encode()


def stage_files(stage: Stage, deffile_text: str, labels: Mapping[str, str]) -> Files:
    """The files a definition's final stage writes into /.singularity.d."""
    files: Files = {f"{SD}/Singularity": (deffile_text.encode(), 0o644)}
    if stage.environment:
        files[f"{SD}/env/90-environment.sh"] = ((_ENV_90_HEAD + stage.environment).encode(), 0o755)
    for name in ("runscript", "startscript", "test"):
        script = getattr(stage, name)
        if script is not None:
            files[f"{SD}/{name}"] = (script_text(script), 0o755)
    if stage.help:
        files[f"{SD}/runscript.help"] = (stage.help.encode(), 0o644)
    files[f"{SD}/labels.json"] = (labels_json(labels), 0o644)
    if stage.apps:
        files[f"{SD}/env/94-appsbase.sh"] = (apps_base(sorted(stage.apps)), 0o755)
    return files


def labels_json(labels: Mapping[str, str]) -> bytes:
    """labels.json as Apptainer writes it: tab-indented, keys sorted."""
    return json.dumps(dict(sorted(labels.items())), indent="\t", ensure_ascii=False).encode()


def build_date(epoch: int) -> str:
    """`Monday_23_November_2026_15:58:56_UTC`, Apptainer's build-date label."""
    return time.strftime("%A_%d_%B_%Y_%H:%M:%S_UTC", time.gmtime(epoch))


def default_labels(stage: Stage, *, arch: str, epoch: int, version: str) -> dict[str, str]:
    """The org.label-schema labels of a built image (label-schema rc1)."""
    labels = {
        "org.label-schema.build-arch": arch,
        "org.label-schema.build-date": build_date(epoch),
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.usage.singularity.version": version,
        "org.label-schema.usage.sifbox.version": version,
    }
    if stage.help:
        labels["org.label-schema.usage"] = f"{SD}/runscript.help"
        labels["org.label-schema.usage.singularity.runscript.help"] = f"{SD}/runscript.help"
    for key, value in stage.header.items():
        if key in ("bootstrap", "from", "stage", "mirrorurl", "osversion", "include", "library", "registry",
                   "namespace"):  # fmt: skip
            labels[f"org.label-schema.usage.singularity.deffile.{key}"] = value
    return labels


def apps_base(names: list[str]) -> bytes:
    """94-appsbase.sh: where every app lives, as SCIF_APP*_NAME variables."""
    lines = ["#!/bin/sh", "# The SCIF apps of this image."]
    for name in names:
        var = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
        root = f"/scif/apps/{name}"
        values = {
            "SCIF_APPDATA": f"/scif/data/{name}",
            "SCIF_APPROOT": root,
            "SCIF_APPMETA": f"{root}/scif",
            "SCIF_APPBIN": f"{root}/bin",
            "SCIF_APPLIB": f"{root}/lib",
            "SCIF_APPRUN": f"{root}/scif/runscript",
            "SCIF_APPTEST": f"{root}/scif/test",
            "SCIF_APPENV": f"{root}/scif/env/90-environment.sh",
            "SCIF_APPLABELS": f"{root}/scif/labels.json",
            "SCIF_APPHELP": f"{root}/scif/runscript.help",
            "SCIF_APPINPUT": f"/scif/data/{name}/input",
            "SCIF_APPOUTPUT": f"/scif/data/{name}/output",
        }
        for key, value in values.items():
            lines.append(f"{key}_{var}={value}")
        lines.append("export " + " ".join(f"{key}_{var}" for key in values))
    return ("\n".join(lines) + "\n").encode()


def app_dirs(name: str) -> tuple[str, ...]:
    root = f"/scif/apps/{name}"
    return (root, f"{root}/bin", f"{root}/lib", f"{root}/scif", f"{root}/scif/env",
            f"/scif/data/{name}", f"/scif/data/{name}/input", f"/scif/data/{name}/output")  # fmt: skip


def app_files(app: App) -> Files:
    """The metadata files of one SCIF app."""
    meta = f"/scif/apps/{app.name}/scif"
    files: Files = {}
    if app.run is not None:
        files[f"{meta}/runscript"] = (script_text(app.run), 0o755)
    if app.start is not None:
        files[f"{meta}/startscript"] = (script_text(app.start), 0o755)
    if app.test is not None:
        files[f"{meta}/test"] = (script_text(app.test), 0o755)
    if app.help:
        files[f"{meta}/runscript.help"] = (app.help.encode(), 0o644)
    if app.env:
        files[f"{meta}/env/90-environment.sh"] = ((_ENV_90_HEAD + app.env).encode(), 0o755)
    labels = {"SCIF_APP_NAME": app.name, **app.labels}
    files[f"{meta}/labels.json"] = (labels_json(labels), 0o644)
    return files


def inspect_metadata(labels: Mapping[str, str], files: Files, deffile_text: str) -> bytes:
    """The `inspect-metadata.json` object of a built SIF."""

    def text(path: str) -> str:
        entry = files.get(path)
        return entry[0].decode("utf-8", "replace") if entry else ""

    attrs = {
        "labels": dict(sorted(labels.items())),
        "deffile": deffile_text,
        "runscript": text(f"{SD}/runscript"),
        "startscript": text(f"{SD}/startscript"),
        "test": text(f"{SD}/test"),
        "helpfile": text(f"{SD}/runscript.help"),
        "environment": {"90-environment.sh": text(f"{SD}/env/90-environment.sh")},
    }
    return json.dumps({"data": {"attributes": attrs}, "type": "container"}, indent="\t").encode()
