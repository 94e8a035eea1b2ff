"""The `/.singularity.d` tree of an image, as Apptainer writes and reads it (pure).

Every producer of images (definition builds, OCI pulls and OCI bootstraps) gets its
metadata from here, so a built and a pulled image of the same content carry the same
files. Functions return `Entry` lists (path inside the image, kind, mode, bytes); the
caller writes them into a directory or a tar stream::

    /.singularity.d/actions/{exec,run,shell,start,test}
    /.singularity.d/env/01-base.sh 10-docker2singularity.sh 90-environment.sh
                        91-environment.sh (written by %post) 94-appsbase.sh 95-apps.sh
                        99-base.sh 99-runtimevars.sh
    /.singularity.d/labels.json libs/ runscript runscript.help startscript test Singularity
    /.singularity.d/bootstrap_history/ApptainerN  (the definitions of earlier builds)
    /scif/apps/NAME/{bin,lib,scif/{env/01-base.sh,env/90-environment.sh,runscript,...}}
    /scif/data/NAME/{input,output}

The steps follow Apptainer's build: `base_tree` (a new root), `oci_tree` (an OCI image
config), then `finish` (the definition's help, labels, deffile, environment, scripts and
SCIF apps, with the build labels). `pull_tree` is the three in one, for a pull.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
from collections.abc import Iterable, Mapping, Sequence

from sifbox.formats.appenv import APPS, APPS_ENV_SH, DATA, RUN_SH, START_SH, TEST_SH
from sifbox.formats.metajson import go_json, labels_json, parse_label_lines, parse_labels

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats import deffile
    from sifbox.formats.deffile import Stage

SD = "/.singularity.d"
ENV_DIR = f"{SD}/env"
ENVIRONMENT_SCRIPT = f"{ENV_DIR}/91-environment.sh"  # $SINGULARITY_ENVIRONMENT in %post
LABELS_JSON = f"{SD}/labels.json"
RUNSCRIPT = f"{SD}/runscript"
STARTSCRIPT = f"{SD}/startscript"
TEST = f"{SD}/test"
HELP = f"{SD}/runscript.help"
DEFFILE = f"{SD}/Singularity"
HISTORY = f"{SD}/bootstrap_history"
ENV_90 = f"{ENV_DIR}/90-environment.sh"
ENV_94 = f"{ENV_DIR}/94-appsbase.sh"
ENV_DOCKER = f"{ENV_DIR}/10-docker2singularity.sh"
#: Where the caller finds the files `finish` needs to know (Existing.files keys).
EXISTING = (LABELS_JSON, HELP, ENV_90, ENV_94, DEFFILE)

#: Header keywords that are credentials: never copied into labels.
_SECRET_HEADERS = frozenset({"regcode"})
_SHELL_SAFE = re.compile(r"[A-Za-z0-9@%+=:,./_-]+\Z")


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One path of the tree. `keep_existing`: written only where nothing exists yet."""

    path: str  # absolute, inside the image
    kind: Kind
    mode: int
    data: bytes = b""
    target: str = ""  # symlinks
    keep_existing: bool = False


def _file(path: str, text: str | bytes, mode: int = 0o755, keep: bool = False) -> Entry:
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return Entry(path, Kind.FILE, mode, data, keep_existing=keep)


def _dir(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, Kind.DIR, mode, keep_existing=True)


def merge(*trees: Iterable[Entry]) -> list[Entry]:
    """Later trees win at the same path (unless the later entry keeps what exists);
    the first position of a path is kept, so parents stay before children."""
    out: dict[str, Entry] = {}
    for tree in trees:
        for e in tree:
            if e.keep_existing and e.path in out:
                continue
            out[e.path] = e
    return list(out.values())


# -- shell text ----------------------------------------------------------------------------
_SOURCE_ENV = """for __env in /.singularity.d/env/*.sh; do
    if [ -f "$__env" ]; then
        . "$__env"
    fi
done
unset __env
"""
DEFAULT_RUNSCRIPT_MESSAGE = "There is no runscript defined for this container"

ACTIONS: dict[str, str] = {
    "exec": f"#!/bin/sh\n# Run a command in the image's environment.\n\n{_SOURCE_ENV}\nexec \"$@\"\n",
    "run": "#!/bin/sh\n# Run the runscript (of the app given with --app) in the image's environment.\n\n"
    + _SOURCE_ENV + "\n" + RUN_SH,
    "shell": "#!/bin/sh\n# An interactive shell in the image's environment.\n\n"
    + _SOURCE_ENV
    + """
__shell=${APPTAINER_SHELL:-${SINGULARITY_SHELL:-}}
if [ -n "$__shell" ] && [ -x "$__shell" ]; then
    exec "$__shell" "$@"
fi
if [ -x /bin/bash ]; then
    SHELL=/bin/bash
    export SHELL
    exec /bin/bash --norc "$@"
fi
if [ -x /bin/sh ]; then
    SHELL=/bin/sh
    export SHELL
    exec /bin/sh "$@"
fi
echo "/bin/sh does not exist in container" >&2
exit 1
""",
    "start": "#!/bin/sh\n# An instance's startscript. The instance's first process waits for SIGCONT.\n"
    "kill -CONT 1\n\n" + _SOURCE_ENV + "\n" + START_SH,
    "test": "#!/bin/sh\n# Run the test script (of the app given with --app) in the image's environment.\n\n"
    + _SOURCE_ENV + "\n" + TEST_SH,
}

ENV_01_BASE = "#!/bin/sh\n# The image's base environment: sourced first; sets nothing.\n"
#: The start of 90-environment.sh; %environment is appended (Apptainer's e2e tests show it).
ENV_90_HEADER = "#!/bin/sh\n# Custom environment shell code should follow\n\n"
ENV_95_APPS = "#!/bin/sh\n" + APPS_ENV_SH
ENV_99_BASE = f"""#!/bin/sh
# The directory GPU libraries are bound into, and a prompt when there is none.
case ":${{LD_LIBRARY_PATH:-}}:" in
*:{SD}/libs:*) ;;
::) LD_LIBRARY_PATH={SD}/libs ;;
*) LD_LIBRARY_PATH="$LD_LIBRARY_PATH:{SD}/libs" ;;
esac
if [ -z "${{PS1:-}}" ]; then
    PS1="Sifbox> "
fi
export LD_LIBRARY_PATH PS1
"""
ENV_99_RUNTIMEVARS = """#!/bin/sh
# PATH as asked for at run time (APPTAINERENV_PREPEND_PATH, ..._APPEND_PATH, ..._PATH arrive
# as SING_USER_DEFINED_*): applied after every other script of the image.
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
DEFAULT_RUNSCRIPT = f'#!/bin/sh\n\necho "{DEFAULT_RUNSCRIPT_MESSAGE}"\n'
DEFAULT_STARTSCRIPT = "#!/bin/sh\n"

#: Directories of a new root (mode; created only where missing), as Apptainer's base env.
BASE_DIRS: tuple[tuple[str, int], ...] = (
    (SD, 0o755), (f"{SD}/libs", 0o755), (f"{SD}/actions", 0o755), (ENV_DIR, 0o755),
    ("/dev", 0o755), ("/proc", 0o755), ("/root", 0o755), ("/var", 0o755), ("/var/tmp", 0o1777),
    ("/tmp", 0o1777), ("/etc", 0o755), ("/sys", 0o755), ("/home", 0o755),
)  # fmt: skip
#: Links at the root (created only where nothing exists).
ROOT_SYMLINKS = (
    ("/singularity", ".singularity.d/runscript"),
    ("/.run", ".singularity.d/actions/run"),
    ("/.exec", ".singularity.d/actions/exec"),
    ("/.test", ".singularity.d/actions/test"),
    ("/.shell", ".singularity.d/actions/shell"),
    ("/environment", ".singularity.d/env/90-environment.sh"),
)


def base_tree() -> list[Entry]:
    """What a new root gets before its definition adds to it. Every file keeps what an
    earlier image (a `localimage` base) holds; an OCI image's layers are overridden by
    the caller (`keep_existing` applies to the tree it is merged into)."""
    out = [_dir(path, mode) for path, mode in BASE_DIRS]
    out += [Entry(path, Kind.SYMLINK, 0o777, target=t, keep_existing=True) for path, t in ROOT_SYMLINKS]
    # Empty, so that the host's can be bound over them.
    out += [_file("/etc/hosts", "", 0o644, keep=True), _file("/etc/resolv.conf", "", 0o644, keep=True)]
    out += [_file(f"{SD}/actions/{name}", text, keep=True) for name, text in ACTIONS.items()]
    out += [
        _file(f"{ENV_DIR}/01-base.sh", ENV_01_BASE, keep=True),
        _file(ENV_90, ENV_90_HEADER, keep=True),
        _file(f"{ENV_DIR}/95-apps.sh", ENV_95_APPS, keep=True),
        _file(f"{ENV_DIR}/99-base.sh", ENV_99_BASE, keep=True),
        _file(f"{ENV_DIR}/99-runtimevars.sh", ENV_99_RUNTIMEVARS, keep=True),
        _file(RUNSCRIPT, DEFAULT_RUNSCRIPT, keep=True),
        _file(STARTSCRIPT, DEFAULT_STARTSCRIPT, keep=True),
    ]
    return out


def replacing(tree: Iterable[Entry]) -> list[Entry]:
    """The same entries, files replacing what exists (directories and links still don't):
    how an OCI image's layers are covered, as Apptainer does for OCI sources."""
    return [dataclasses.replace(e, keep_existing=False) if e.kind is Kind.FILE else e for e in tree]


# -- scripts of a definition ---------------------------------------------------------------
def script_file(text: str, shell: str | None = None) -> str:
    """%runscript, %startscript or %test as a file: its own `#!` line when the section
    starts with one, else `#!SHELL` of `-c SHELL`, else `#!/bin/sh`; then a blank line,
    the body and a newline (Apptainer's layout, so `inspect` shows the same text)."""
    interpreter = f"#!{shell}" if shell else "#!/bin/sh"
    body = text
    if text.strip().startswith("#!"):
        first, _, body = text.lstrip("\n").partition("\n")
        interpreter = first.strip()
    return f"{interpreter}\n\n{body}\n"


# -- OCI image config ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OciConfig:
    """What the `/.singularity.d` tree takes from an OCI image config."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> OciConfig:
        """From an image config document (untrusted: wrong types count as absent)."""
        inner = config.get("config")
        if not isinstance(inner, dict):
            inner = {}
        labels = inner.get("Labels")
        return cls(
            _strings(inner.get("Entrypoint")), _strings(inner.get("Cmd")), _strings(inner.get("Env")),
            {_text(k): _text(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: object) -> str:
    """A value of an image config as text that can be written out: a lone surrogate
    (`"\\ud800"` is valid JSON, not valid Unicode) becomes U+FFFD, as Go's JSON decoder
    makes it."""
    return _SURROGATE.sub("\ufffd", str(value))


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(_text(v) for v in value)
    if isinstance(value, str):
        return (_text(value),)
    return ()


def escape_double(s: str) -> str:
    """For use inside double quotes: backslash, `"`, backquote and `$` escaped."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")


def escape_single(s: str) -> str:
    """For use inside single quotes."""
    return s.replace("'", "'\"'\"'")


def _is_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))


def docker_env_script(env: Sequence[str]) -> str:
    """10-docker2singularity.sh: the config's Env, as Apptainer writes it (`${NAME:-value}`;
    PATH set outright). At run time the image's scripts don't see the host's variables
    (runtime.env), so these values win over the host's. Bad names are skipped."""
    lines = ["#!/bin/sh"]
    for item in env:
        name, sep, value = item.partition("=")
        if not _is_name(name):
            continue
        if not sep:
            lines.append(f'export {name}="${{{name}:-}}"')
        elif name == "PATH":
            lines.append(f'export PATH="{escape_double(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{escape_double(value)}"}}"')
    return "\n".join(lines) + "\n"


def _words(args: Sequence[str]) -> str:
    return " ".join(f"'{escape_single(a)}'" for a in args)


def oci_runscript(entrypoint: Sequence[str], cmd: Sequence[str]) -> str:
    """The runscript of an OCI image: ENTRYPOINT then CMD; arguments replace CMD.

    OCI_ENTRYPOINT/OCI_CMD hold the words double-quoted and escaped (Apptainer's
    variables). By default the command line goes through the shell once, as in Apptainer:
    the image's words stay as they are, the caller's arguments are evaluated (`$HOME` is
    expanded). With APPTAINER_NO_EVAL/SINGULARITY_NO_EVAL (`--no-eval`) nothing is
    evaluated, as an OCI runtime runs it."""
    quoted_ep = " ".join(f'"{escape_double(a)}"' for a in entrypoint)
    quoted_cmd = " ".join(f'"{escape_double(a)}"' for a in cmd)
    set_cmd = f"        set -- {_words(cmd)}\n" if cmd else "        :\n"
    set_ep = f'    set -- {_words(entrypoint)} "$@"\n' if entrypoint else ""
    return f"""#!/bin/sh
OCI_ENTRYPOINT='{escape_single(quoted_ep)}'
OCI_CMD='{escape_single(quoted_cmd)}'
# The image's ENTRYPOINT and CMD; arguments given to `run` replace CMD.
if [ -n "${{APPTAINER_NO_EVAL:-}}${{SINGULARITY_NO_EVAL:-}}" ]; then
    # The words as they are, as an OCI runtime runs them.
    if [ $# -eq 0 ]; then
{set_cmd}    fi
{set_ep}    exec "$@"
fi
# Otherwise through the shell once, as Apptainer does: the arguments are evaluated.
OCI_ARGS=""
for __arg in "$@"; do
    OCI_ARGS="$OCI_ARGS \\"$__arg\\""
done
if [ $# -gt 0 ]; then
    OCI_RUN="$OCI_ENTRYPOINT $OCI_ARGS"
else
    OCI_RUN="$OCI_ENTRYPOINT $OCI_CMD"
fi
unset __arg OCI_ARGS
eval "set -- $OCI_RUN"
exec "$@"
"""


def oci_tree(oci: OciConfig) -> list[Entry]:
    """What an OCI image config adds: its runscript, environment and labels (the image's
    own labels only; `finish` adds the build labels)."""
    return [
        _file(RUNSCRIPT, oci_runscript(oci.entrypoint, oci.cmd)),
        _file(ENV_DOCKER, docker_env_script(oci.env)),
        _file(LABELS_JSON, labels_json(oci.labels), 0o644),
    ]


# -- labels --------------------------------------------------------------------------------
def build_date(epoch: int) -> str:
    """Apptainer's org.label-schema.build-date, in UTC: `Thursday_1_January_1970_0:0:0_UTC`
    (numbers not zero-padded, as Go's strconv.Itoa writes them)."""
    t = time.gmtime(epoch)
    return time.strftime(f"%A_{t.tm_mday}_%B_%Y_{t.tm_hour}:{t.tm_min}:{t.tm_sec}_UTC", t)


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    """Facts about the build itself."""

    arch: str  # Go architecture name: amd64, arm64, ...
    epoch: int  # build time (SOURCE_DATE_EPOCH for reproducible builds)
    version: str  # sifbox's version


def build_labels(header: Mapping[str, str], build: BuildInfo, *, has_help: bool) -> dict[str, str]:
    """The labels every build sets (over the base image's), as Apptainer's addBuildLabels."""
    labels = {
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.build-date": build_date(build.epoch),
        "org.label-schema.usage.sifbox.version": build.version,
    }
    if has_help:
        labels["org.label-schema.usage"] = HELP
        labels["org.label-schema.usage.apptainer.runscript.help"] = HELP
    for key, value in header.items():
        if key.lower() not in _SECRET_HEADERS:
            labels[f"org.label-schema.usage.singularity.deffile.{key.lower()}"] = value
    labels["org.label-schema.build-arch"] = build.arch
    return labels


def merge_labels(existing: Mapping[str, str], post: Mapping[str, str], build: Mapping[str, str],
                 defined: Mapping[str, str], *, force: bool) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """The labels of a built image, in Apptainer's order: the base image's, those %post
    appended to $SINGULARITY_LABELS, the build labels, then %labels, which add new keys
    only (a key already there keeps its value and is warned about) unless --force."""
    labels = {**existing, **post, **build}
    warnings = []
    for key, value in defined.items():
        if key in labels and labels[key] != value and not force:
            warnings.append(f"Label: {key} already exists and force option is false, not overwriting")
            continue
        labels[key] = value
    return labels, warnings


# -- a definition's metadata ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Section:
    """A script section: its text and the shell of `-c SHELL`, if any."""

    text: str
    shell: str | None = None


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """What a definition's final stage says about the image (sections not run are empty)."""

    header: Mapping[str, str] = dataclasses.field(default_factory=dict)  # lower-case keywords
    deffile: str | None = None  # the whole definition, as given
    runscript: Section | None = None
    startscript: Section | None = None
    test: Section | None = None
    help: str = ""
    environment: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    apps: tuple[App, ...] = ()

    @classmethod
    def from_stage(cls, stage: Stage, deffile: str,
                   sections: frozenset[str] = frozenset({"all"})) -> ImageMeta:  # fmt: skip
        """The metadata of `stage` (a parsed definition's final stage); `sections` as
        `build --section` (`all`, `none`, or names) says which of them are written."""

        def wanted(name: str) -> bool:
            return "none" not in sections and ("all" in sections or name in sections)

        def section(name: str) -> Section | None:
            script = getattr(stage, name)
            if script is None or not script.text or not wanted(name):
                return None
            return Section(script.text, script.shell)

        return cls(
            header=dict(stage.header),
            deffile=deffile,
            runscript=section("runscript"),
            startscript=section("startscript"),
            test=section("test"),
            help=stage.help if wanted("help") else "",
            environment=stage.environment if wanted("environment") else "",
            labels=dict(stage.labels) if wanted("labels") else {},
            apps=tuple(App.from_deffile(a) for a in stage.apps.values()),
        )

    @classmethod
    def for_uri(cls, uri: str) -> ImageMeta:
        """The definition Apptainer makes up for `build`/`pull` of a URI (`docker://x`)."""
        scheme, _, ref = uri.partition(":")
        ref = ref.removeprefix("//") if "://" in uri else ref
        header = {"bootstrap": scheme, "from": ref}
        return cls(header=header, deffile=uri_deffile(uri))


def uri_deffile(uri: str) -> str:
    """`bootstrap: SCHEME\\nfrom: REF\\n`: the definition an image made from a URI records."""
    scheme, _, ref = uri.partition(":")
    ref = ref.removeprefix("//") if "://" in uri else ref
    return f"bootstrap: {scheme}\nfrom: {ref}\n"


@dataclasses.dataclass(frozen=True)
class Existing:
    """What the root holds before `finish`: the files named in EXISTING that exist,
    the labels %post appended, and how many definitions bootstrap_history keeps."""

    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    post_labels: str = ""
    history: int = 0


def finish(meta: ImageMeta, existing: Existing, build: BuildInfo, *,
           force: bool = False) -> tuple[list[Entry], list[str]]:  # fmt: skip
    """The files a definition writes after %post, in Apptainer's order: help, labels,
    definition, environment, startscript, runscript, test; the SCIF apps and
    94-appsbase.sh. Returns (entries, warnings)."""
    out: list[Entry] = []
    warnings: list[str] = []
    if meta.help:
        if HELP in existing.files and not force:
            warnings.append("Help message already exists and force option is false, not overwriting")
        else:
            out.append(_file(HELP, meta.help, 0o644))
    base, problem = parse_labels(existing.files.get(LABELS_JSON))
    if problem:
        warnings.append(f"Ignoring the labels of the base image: {LABELS_JSON} is {problem}")
    labels, more = merge_labels(
        base, parse_label_lines(existing.post_labels),
        build_labels(meta.header, build, has_help=bool(meta.help)), meta.labels, force=force,
    )  # fmt: skip
    warnings += more
    out.append(_file(LABELS_JSON, labels_json(labels), 0o644))
    if meta.deffile is not None:
        old = existing.files.get(DEFFILE)
        if old is not None:
            out += [_dir(HISTORY), _file(f"{HISTORY}/Apptainer{existing.history}", old, 0o644)]
        out.append(_file(DEFFILE, meta.deffile, 0o644))
    if meta.environment:
        env = existing.files.get(ENV_90)
        if env is None:
            text = f"#!/bin/sh\n\n{meta.environment}\n".encode("utf-8", "surrogateescape")
        else:
            text = env + f"\n{meta.environment}\n".encode("utf-8", "surrogateescape")
        out.append(_file(ENV_90, text))
    for path, section in ((STARTSCRIPT, meta.startscript), (RUNSCRIPT, meta.runscript), (TEST, meta.test)):
        if section is not None:
            out.append(_file(path, script_file(section.text, section.shell)))
    for app in meta.apps:
        out += app_tree(app)
    if meta.apps or ENV_94 not in existing.files:
        out.append(_file(ENV_94, apps_base(meta.apps)))
    return out, warnings


def pull_tree(oci: OciConfig, uri: str, build: BuildInfo) -> list[Entry]:
    """The whole generated tree of a pulled OCI image: what `build` writes for a
    definition `Bootstrap: SCHEME / From: REF` with nothing else."""
    first = replacing(merge(base_tree(), oci_tree(oci)))
    files = {e.path: e.data for e in first if e.kind is Kind.FILE and e.path in EXISTING}
    rest, _ = finish(ImageMeta.for_uri(uri), Existing(files), build)
    return merge(first, rest)


def files_of(tree: Iterable[Entry]) -> dict[str, bytes]:
    """{path: bytes} of the regular files of a tree."""
    return {e.path: e.data for e in tree if e.kind is Kind.FILE}


def shell_word(value: str) -> str:
    """`value` as one shell word (quoted only when needed)."""
    return value if _SHELL_SAFE.match(value) else "'" + escape_single(value) + "'"


# -- SCIF apps ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class App:
    """What a definition says about one app (script sections as text, or None)."""

    name: str
    run: str | None = None
    start: str | None = None
    test: str | None = None
    help: str = ""
    env: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_deffile(cls, app: deffile.App) -> App:
        def text(script: deffile.Script | None) -> str | None:
            return script.text if script is not None and script.text else None

        return cls(app.name, text(app.run), text(app.start), text(app.test), app.help, app.env,
                   dict(app.labels))  # fmt: skip


def app_root(name: str) -> str:
    return f"{APPS}/{name}"


def app_meta(name: str) -> str:
    return f"{APPS}/{name}/scif"


def var_suffix(name: str) -> str:
    """The app name as it ends variable names (SCIF_APPROOT_my_app)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def app_dirs(name: str) -> tuple[str, ...]:
    r, d = app_root(name), f"{DATA}/{name}"
    return ("/scif", APPS, r, f"{r}/bin", f"{r}/lib", f"{r}/scif", f"{r}/scif/env", DATA, d,
            f"{d}/input", f"{d}/output")  # fmt: skip


def _q(value: str) -> str:
    return shell_word(value)


def base_env(name: str) -> str:
    """The app's env/01-base.sh: its SCIF variables (sourced by 95-apps.sh and before
    %appinstall runs)."""
    r, d = app_root(name), f"{DATA}/{name}"
    values = {"SCIF_APPNAME": name, "SCIF_APPROOT": r, "SCIF_APPMETA": f"{r}/scif", "SCIF_DATA": DATA,
              "SCIF_APPDATA": d, "SCIF_APPINPUT": f"{d}/input", "SCIF_APPOUTPUT": f"{d}/output"}  # fmt: skip
    lines = ["#!/bin/sh", ""] + [f"{k}={_q(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\nexport " + " ".join(values) + "\n"


def skeleton(name: str) -> list[Entry]:
    """The directories of an app and its env/01-base.sh: made before %appinstall."""
    out = [Entry(d, Kind.DIR, 0o755, keep_existing=True) for d in app_dirs(name)]
    out.append(_file(f"{app_meta(name)}/env/01-base.sh", base_env(name)))
    return out


def _script(text: str) -> str:
    """App scripts always run with /bin/sh, as Apptainer writes them."""
    return f"#!/bin/sh\n\n{text}\n"


def app_files(app: App) -> dict[str, tuple[str, int]]:
    """{path: (text, mode)} of the metadata files of `app`."""
    m = app_meta(app.name)
    files: dict[str, tuple[str, int]] = {f"{m}/env/01-base.sh": (base_env(app.name), 0o755)}
    if app.env:
        files[f"{m}/env/90-environment.sh"] = (app.env, 0o755)
    for name, text in (("runscript", app.run), ("startscript", app.start), ("test", app.test)):
        if text is not None:
            files[f"{m}/{name}"] = (_script(text), 0o755)
    if app.help:
        files[f"{m}/runscript.help"] = (app.help, 0o644)
    files[f"{m}/labels.json"] = (go_json({"SCIF_APP_NAME": app.name, **app.labels}), 0o644)
    return files


def app_tree(app: App) -> list[Entry]:
    out = skeleton(app.name)
    for path, (text, mode) in app_files(app).items():
        out.append(Entry(path, Kind.FILE, mode, text.encode("utf-8", "surrogateescape")))
    return out


def apps_base(apps: Iterable[App]) -> str:
    """94-appsbase.sh: where every app lives, as SCIF_APP*_NAME variables (empty without apps)."""
    out = []
    for app in apps:
        v, r, m = var_suffix(app.name), app_root(app.name), app_meta(app.name)
        values = {"SCIF_APPDATA": f"{DATA}/{app.name}", "SCIF_APPMETA": m, "SCIF_APPROOT": r,
                  "SCIF_APPBIN": f"{r}/bin", "SCIF_APPLIB": f"{r}/lib"}  # fmt: skip
        lines = [f"# The SCIF app {app.name}", ""] + [f"{k}_{v}={_q(p)}" for k, p in values.items()]
        lines += ["", "export " + " ".join(f"{k}_{v}" for k in values)]
        optional = {"SCIF_APPENV": ("90-environment.sh" if app.env else None, "env/90-environment.sh"),
                    "SCIF_APPLABELS": (True, "labels.json"), "SCIF_APPRUN": (app.run, "runscript"),
                    "SCIF_APPSTART": (app.start, "startscript")}  # fmt: skip
        for k, (present, rel) in optional.items():
            if present:
                lines.append(f"export {k}_{v}={_q(f'{m}/{rel}')}")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)
