"""OCI image config -> the `/.singularity.d` tree, as Apptainer writes it for Docker/OCI images.

* `Env` -> `env/10-docker2singularity.sh` (`export NAME="${NAME:-value}"`, PATH set outright),
* `Entrypoint`/`Cmd` -> `runscript` with `OCI_ENTRYPOINT`/`OCI_CMD` and Apptainer's rules
  (arguments replace CMD; with `SINGULARITY_NO_EVAL`/`APPTAINER_NO_EVAL` no shell evaluation),
* `Labels` -> `labels.json`, with the org.label-schema build labels,
* the base environment scripts and the `actions/` scripts, the mount points and root symlinks.

`WorkingDir` and `User` are not applied at run time (as in Apptainer's native mode): the
runscript does not change directory and the container runs as the caller. They are kept in
the image config stored in the SIF and reported by `notes()`.
"""

from __future__ import annotations

import json
import re
import tarfile
import time

from sifbox.oci.layers import Extra

ENV_SCRIPTS_LOOP = """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""

ACTION_EXEC = f"""#!/bin/sh

{ENV_SCRIPTS_LOOP}
exec "$@"
"""

ACTION_RUN = f"""#!/bin/sh

{ENV_SCRIPTS_LOOP}
if test -n "${{APPTAINER_APPNAME:-}}"; then

    if test -x "/scif/apps/${{APPTAINER_APPNAME:-}}/scif/runscript"; then
        exec "/scif/apps/${{APPTAINER_APPNAME:-}}/scif/runscript" "$@"
    elif test -x "/scif/apps/singularity/scif/runscript"; then
        exec "/scif/apps/singularity/scif/runscript" "$@"
    else
        echo "No Apptainer runscript for contained app: ${{APPTAINER_APPNAME:-}}"
        exit 1
    fi

elif test -x "/.singularity.d/runscript"; then
    exec "/.singularity.d/runscript" "$@"
else
    echo "No Apptainer runscript found, executing /bin/sh"
    exec /bin/sh "$@"
fi
"""

ACTION_SHELL = f"""#!/bin/sh

{ENV_SCRIPTS_LOOP}
if test -n "$APPTAINER_SHELL" -a -x "$APPTAINER_SHELL"; then
    exec $APPTAINER_SHELL "$@"

    echo "ERROR: Failed running shell as defined by '\\$APPTAINER_SHELL'" 1>&2
    exit 1

elif test -x /bin/bash; then
    SHELL=/bin/bash
    PS1="Apptainer $APPTAINER_NAME:\\\\w> "
    export SHELL PS1
    exec /bin/bash --norc "$@"
elif test -x /bin/sh; then
    SHELL=/bin/sh
    export SHELL
    exec /bin/sh "$@"
else
    echo "ERROR: /bin/sh does not exist in container" 1>&2
fi
exit 1
"""

ACTION_START = f"""#!/bin/sh

# if we are here start notify PID 1 to continue
# DON'T REMOVE
kill -CONT 1

{ENV_SCRIPTS_LOOP}
if test -x "/.singularity.d/startscript"; then
    exec "/.singularity.d/startscript"
fi
"""

ACTION_TEST = f"""#!/bin/sh

{ENV_SCRIPTS_LOOP}

if test -n "${{APPTAINER_APPNAME:-}}"; then

    if test -x "/scif/apps/${{APPTAINER_APPNAME:-}}/scif/test"; then
        exec "/scif/apps/${{APPTAINER_APPNAME:-}}/scif/test" "$@"
    elif test -x "/scif/apps/singularity/scif/test"; then
        exec "/scif/apps/singularity/scif/test" "$@"
    else
        echo "No tests for contained app: ${{APPTAINER_APPNAME:-}}"
        exit 1
    fi
elif test -x "/.singularity.d/test"; then
    exec "/.singularity.d/test" "$@"
else
    echo "No test found in container, executing /bin/sh -c true"
    exec /bin/sh -c true
fi
"""

ENV_01_BASE = "#!/bin/sh\n# Sourced first by every action; the base image environment.\n\n"
ENV_90_ENVIRONMENT = "#!/bin/sh\n# Custom environment shell code should follow\n\n"

ENV_95_APPS = """#!/bin/sh
# The environment of the SCIF app named by APPTAINER_APPNAME, if any.

if test -n "${APPTAINER_APPNAME:-}"; then

    # The active app should be exported
    export APPTAINER_APPNAME

    if test -d "/scif/apps/${APPTAINER_APPNAME:-}/"; then
        SCIF_APPS="/scif/apps"
        SCIF_APPROOT="/scif/apps/${APPTAINER_APPNAME:-}"
        export SCIF_APPROOT SCIF_APPS
        PATH="/scif/apps/${APPTAINER_APPNAME:-}:/scif/apps/singularity:$PATH"

        # Automatically add application bin to path
        if test -d "/scif/apps/${APPTAINER_APPNAME:-}/bin"; then
            PATH="/scif/apps/${APPTAINER_APPNAME:-}/bin:$PATH"
        elif test -d "/scif/apps/singularity/bin"; then
            PATH="/scif/apps/singularity/bin:$PATH"
        fi

        # Automatically add application lib to LD_LIBRARY_PATH
        if test -d "/scif/apps/${APPTAINER_APPNAME:-}/lib"; then
            LD_LIBRARY_PATH="/scif/apps/${APPTAINER_APPNAME:-}/lib:$LD_LIBRARY_PATH"
            export LD_LIBRARY_PATH
        elif test -d "/scif/apps/singularity/lib"; then
            LD_LIBRARY_PATH="/scif/apps/singularity/lib:$LD_LIBRARY_PATH"
            export LD_LIBRARY_PATH
        fi

        # Automatically source environment
        if [ -f "/scif/apps/${APPTAINER_APPNAME:-}/scif/env/01-base.sh" ]; then
            . "/scif/apps/${APPTAINER_APPNAME:-}/scif/env/01-base.sh"
        elif [ -f "/scif/apps/singularity/scif/env/01-base.sh" ]; then
            . "/scif/apps/singularity/scif/env/01-base.sh" "$@"
        fi
        if [ -f "/scif/apps/${APPTAINER_APPNAME:-}/scif/env/90-environment.sh" ]; then
            . "/scif/apps/${APPTAINER_APPNAME:-}/scif/env/90-environment.sh"
        elif [ -f "/scif/apps/singularity/scif/env/90-environment.sh" ]; then
            . "/scif/apps/singularity/scif/env/90-environment.sh" "$@"
        fi

        export PATH
    else
        echo "Could not locate the container application: ${APPTAINER_APPNAME}"
        exit 1
    fi
fi

"""

ENV_99_BASE = """#!/bin/sh
# Sourced last: the library directory GPU options bind into, and the prompt.

if [ -z "$LD_LIBRARY_PATH" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi

PS1="Apptainer> "
export LD_LIBRARY_PATH PS1
"""

ENV_99_RUNTIMEVARS = """#!/bin/sh
# PATH changes asked for at run time (PREPEND_PATH, APPEND_PATH, PATH).

if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
\tPATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"
fi

if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
\tPATH="${PATH}:${SING_USER_DEFINED_APPEND_PATH}"
fi

if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
\tPATH="${SING_USER_DEFINED_PATH}"
fi

unset SING_USER_DEFINED_PREPEND_PATH \\
\t  SING_USER_DEFINED_APPEND_PATH \\
\t  SING_USER_DEFINED_PATH

export PATH
"""

STARTSCRIPT = "#!/bin/sh\n"

#: The runscript body after OCI_ENTRYPOINT/OCI_CMD (same behaviour as Apptainer's).
_RUNSCRIPT_BODY = """
# When SINGULARITY_NO_EVAL set, use OCI compatible behavior that does
# not evaluate resolved CMD / ENTRYPOINT / ARGS through the shell, and
# does not modify expected quoting behavior of args.
if [ -n "$SINGULARITY_NO_EVAL" ]; then
    # ENTRYPOINT only - run entrypoint plus args
    if [ -z "$OCI_CMD" ] && [ -n "$OCI_ENTRYPOINT" ]; then
{prepend_ep_8}
        exec "$@"
    fi

    # CMD only - run CMD or override with args
    if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then
{cmd_only}        exec "$@"
    fi

    # ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
    # override with user provided args
{both}    exec "$@"
fi

# Standard Apptainer behavior evaluates CMD / ENTRYPOINT / ARGS
# combination through shell before exec, and requires special quoting
# due to concatenation of CMDLINE_ARGS.
CMDLINE_ARGS=""
# prepare command line arguments for evaluation
for arg in "$@"; do
        CMDLINE_ARGS="${{CMDLINE_ARGS}} \\"$arg\\""
done

# ENTRYPOINT only - run entrypoint plus args
if [ -z "$OCI_CMD" ] && [ -n "$OCI_ENTRYPOINT" ]; then
    if [ $# -gt 0 ]; then
        SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}} ${{CMDLINE_ARGS}}"
    else
        SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}}"
    fi
fi

# CMD only - run CMD or override with args
if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then
    if [ $# -gt 0 ]; then
        SINGULARITY_OCI_RUN="${{CMDLINE_ARGS}}"
    else
        SINGULARITY_OCI_RUN="${{OCI_CMD}}"
    fi
fi

# ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
# override with user provided args
if [ $# -gt 0 ]; then
    SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}} ${{CMDLINE_ARGS}}"
else
    SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}} ${{OCI_CMD}}"
fi

# Evaluate shell expressions first and set arguments accordingly,
# then execute final command as first container process
eval "set ${{SINGULARITY_OCI_RUN}}"
exec "$@"
"""

#: Directories every image gets (created only when absent), and root symlinks.
BASE_DIRS = (".singularity.d", ".singularity.d/libs", ".singularity.d/actions", ".singularity.d/env",
             "dev", "proc", "root", "var", "var/tmp", "tmp", "etc", "sys", "home")  # fmt: skip
ROOT_SYMLINKS = (
    ("apptainer", ".singularity.d/runscript"),
    ("singularity", ".singularity.d/runscript"),
    (".run", ".singularity.d/actions/run"),
    (".exec", ".singularity.d/actions/exec"),
    (".test", ".singularity.d/actions/test"),
    (".shell", ".singularity.d/actions/shell"),
    ("environment", ".singularity.d/env/90-environment.sh"),
)


# -- quoting, as Apptainer's shell helpers do -------------------------------------------
def escape_double(s: str) -> str:
    """Escape for use inside double quotes: backslash, `"`, backquote and `$`."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")


def escape_single(s: str) -> str:
    return s.replace("'", "'\"'\"'")


def args_quoted(args: list[str]) -> str:
    return " ".join(f'"{escape_double(a)}"' for a in args)


def _inner(config: dict) -> dict:
    """The `config` object of an image config ({} when it is missing or not an object)."""
    inner = config.get("config")
    return inner if isinstance(inner, dict) else {}


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: object) -> str:
    """A value of the config as text that can be written out: a lone surrogate (`"\\ud800"`
    is valid JSON, not valid Unicode) becomes U+FFFD, as Go's JSON decoder makes it."""
    return _SURROGATE.sub("\ufffd", str(value))


def _strings(value: object) -> list[str]:
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, str):
        return [_text(value)]
    return []


# -- the files --------------------------------------------------------------------------
def env_script(env: list[str]) -> str:
    """`/.singularity.d/env/10-docker2singularity.sh` from the config's Env list."""
    lines = ["#!/bin/sh"]
    for item in env:
        name, sep, value = item.partition("=")
        if not name or not _is_name(name):
            continue
        if not sep:
            lines.append(f'export {name}="${{{name}:-}}"')
        elif name == "PATH":
            lines.append(f'export PATH="{escape_double(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{escape_double(value)}"}}"')
    return "\n".join(lines) + "\n"


def _is_name(name: str) -> bool:
    return (name[0].isalpha() or name[0] == "_") and all(c.isalnum() or c == "_" for c in name)


def runscript(entrypoint: list[str], cmd: list[str]) -> str:
    """`/.singularity.d/runscript` with Apptainer's OCI_ENTRYPOINT/OCI_CMD semantics."""
    head = "#!/bin/sh\n"
    head += f"OCI_ENTRYPOINT='{escape_single(args_quoted(entrypoint))}'\n"
    head += f"OCI_CMD='{escape_single(args_quoted(cmd))}'\n"

    def prepend(args: list[str], indent: int) -> str:
        pad = " " * indent
        return "".join(f"{pad}set -- '{escape_single(a)}' \"$@\"\n" for a in reversed(args))

    cmd_only = ""
    if cmd:
        cmd_only = "        if [ $# -eq 0 ]; then\n" + prepend(cmd, 12) + "        fi\n"
    if entrypoint:
        both = ("    if [ $# -gt 0 ]; then\n" + prepend(entrypoint, 8) + "    else\n"
                + prepend(cmd, 8) + prepend(entrypoint, 8) + "    fi\n")  # fmt: skip
    elif cmd:
        both = "    if [ $# -eq 0 ]; then\n" + prepend(cmd, 8) + "    fi\n"
    else:
        both = ""
    body = _RUNSCRIPT_BODY.format(prepend_ep_8=prepend(entrypoint, 8).rstrip("\n"),
                                  cmd_only=cmd_only, both=both)  # fmt: skip
    return head + body


def build_date(epoch: int) -> str:
    """Apptainer's build-date label format, e.g. `Monday_23_November_2026_16:0:5_UTC`."""
    t = time.gmtime(epoch)
    return time.strftime(f"%A_{t.tm_mday}_%B_%Y_{t.tm_hour}:{t.tm_min}:{t.tm_sec}_UTC", t)


def labels(config: dict, *, arch: str, source: str, epoch: int, version: str) -> dict[str, str]:
    """labels.json: the image's labels plus the build labels Apptainer adds on pull."""
    inner = _inner(config)
    out: dict[str, str] = {}
    found = inner.get("Labels")
    for k, v in sorted(found.items() if isinstance(found, dict) else ()):
        out[_text(k)] = _text(v)
    bootstrap, _, ref = source.partition(":")
    if bootstrap == "docker":
        ref = ref.removeprefix("//")
    out.update({
        "org.label-schema.build-arch": _text(arch),
        "org.label-schema.build-date": build_date(epoch),
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.usage.singularity.deffile.bootstrap": bootstrap,
        "org.label-schema.usage.singularity.deffile.from": ref,
        "org.label-schema.usage.singularity.version": version,
    })  # fmt: skip
    return out


def deffile(source: str) -> str:
    """The definition an Apptainer pull records: `bootstrap:` and `from:` of the source."""
    bootstrap, _, ref = source.partition(":")
    return f"bootstrap: {bootstrap}\nfrom: {ref.removeprefix('//')}\n"


def notes(config: dict) -> list[str]:
    """What the image asks for that the runtime does not apply (said once on pull)."""
    inner = _inner(config)
    out = []
    user = inner.get("User")
    if user and str(user) not in ("0", "root", "0:0", "root:root"):
        out.append(f"the image sets USER `{user}`; containers run as the calling user")
    workdir = inner.get("WorkingDir")
    if workdir and workdir != "/":
        out.append(f"the image sets WORKDIR `{workdir}`; use `--pwd {workdir}` to start there")
    return out


def _info(name: str, type_: bytes, mode: int, mtime: int, linkname: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = type_
    t.mode = mode
    t.mtime = mtime
    t.linkname = linkname
    return t


def entries(config: dict, *, arch: str, source: str, epoch: int, version: str) -> list[Extra]:
    """Every generated entry, to merge on top of the image's layers."""
    inner = _inner(config)
    files: list[tuple[str, str, int]] = [
        ("etc/hosts", "", 0o644),
        ("etc/resolv.conf", "", 0o644),
        (".singularity.d/actions/exec", ACTION_EXEC, 0o755),
        (".singularity.d/actions/run", ACTION_RUN, 0o755),
        (".singularity.d/actions/shell", ACTION_SHELL, 0o755),
        (".singularity.d/actions/start", ACTION_START, 0o755),
        (".singularity.d/actions/test", ACTION_TEST, 0o755),
        (".singularity.d/env/01-base.sh", ENV_01_BASE, 0o755),
        (".singularity.d/env/10-docker2singularity.sh", env_script(_strings(inner.get("Env"))), 0o755),
        (".singularity.d/env/90-environment.sh", ENV_90_ENVIRONMENT, 0o755),
        (".singularity.d/env/95-apps.sh", ENV_95_APPS, 0o755),
        (".singularity.d/env/99-base.sh", ENV_99_BASE, 0o755),
        (".singularity.d/env/99-runtimevars.sh", ENV_99_RUNTIMEVARS, 0o755),
        (".singularity.d/runscript",
         runscript(_strings(inner.get("Entrypoint")), _strings(inner.get("Cmd"))), 0o755),
        (".singularity.d/startscript", STARTSCRIPT, 0o755),
        (".singularity.d/Singularity", deffile(source), 0o644),
        (".singularity.d/labels.json",
         json.dumps(labels(config, arch=arch, source=source, epoch=epoch, version=version),
                    indent="\t", ensure_ascii=False), 0o644),
    ]  # fmt: skip
    out = []
    for d in BASE_DIRS:
        mode = 0o1777 if d in ("tmp", "var/tmp") else 0o755
        out.append(Extra(_info(d, tarfile.DIRTYPE, mode, epoch), if_absent=True))
    for name, text, mode in files:
        data = text.encode("utf-8")
        info = _info(name, tarfile.REGTYPE, mode, epoch)
        info.size = len(data)
        out.append(Extra(info, data))
    for name, target in ROOT_SYMLINKS:
        out.append(Extra(_info(name, tarfile.SYMTYPE, 0o777, epoch, target), if_absent=True))
    return out
