"""Definition files (Apptainer syntax): parse text into stages (pure).

A definition file is one or more stages. Each stage starts with a header of
`Keyword: value` lines (`Bootstrap:` first) followed by `%section` blocks::

    Bootstrap: busybox
    MirrorURL: /usr/bin/busybox

    %arguments
        GREETING=hello
    %post -c /bin/sh
        echo {{ GREETING }} > /greeting
    %apprun hello
        cat /greeting

`{{ NAME }}` is replaced by a build argument: `--build-arg NAME=V`, then a
`--build-arg-file`, then the `%arguments` defaults. Values are taken as written
(`X="a b"` gives `"a b"`, quotes included), as Apptainer takes them. Errors carry
`file:line`. The text of the definition is kept exactly as given
(`Definition.text`), which is what images store.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable, Mapping

from sifbox.util.errors import SifboxError

#: Header keywords, lower-cased, as Apptainer accepts them.
HEADER_KEYWORDS = frozenset(
    k.lower()
    for k in (
        "Bootstrap",
        "From",
        "Stage",
        "Fingerprints",
        "IncludeCmd",
        "MirrorURL",
        "UpdateURL",
        "OSVersion",
        "Include",
        "Library",
        "Registry",
        "Namespace",
        "Product",
        "User",
        "Regcode",
        "ProductPGP",
        "RegisterURL",
        "Modules",
        "ConfURL",
        "SetOpt",
        "Target",
        "Frontend",
        "Filename",
        "BuildArgs",
    )
)
_OTHER_URL = re.compile(r"otherurl\d+\Z")

#: Sections of the image itself, in the order Apptainer lists them.
SECTIONS = ("arguments", "help", "setup", "files", "labels", "environment", "post", "runscript",
            "startscript", "test", "pre")  # fmt: skip
#: SCIF app sections; each takes the app name as argument.
APP_SECTIONS = (
    "appinstall",
    "appfiles",
    "appenv",
    "apprun",
    "appstart",
    "apptest",
    "applabels",
    "apphelp",
)
#: Sections that are scripts and accept `-c SHELL`.
SCRIPT_SECTIONS = frozenset({"setup", "post", "runscript", "startscript", "test", "pre"})

BOOTSTRAP_AGENTS = frozenset(
    {"localimage", "scratch", "busybox", "debootstrap", "docker", "docker-daemon", "docker-archive",
     "oci", "oci-archive", "library", "oras", "shub", "yum", "dnf", "zypper", "arch", "buildkit"}
)  # fmt: skip

#: Agents that build from the header's other keywords, not from `From:`.
_NO_FROM = frozenset(
    {"scratch", "busybox", "buildkit", "debootstrap", "yum", "dnf", "zypper", "arch"}
)
_SECTION_LINE = re.compile(r"%([A-Za-z]+)\b(.*)\Z")
_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")


class DeffileError(SifboxError):
    """The definition file is wrong; the message carries file:line."""

    reference = "deffile-syntax"
    exit_status = 255


@dataclasses.dataclass
class FilesSection:
    """One `%files [from STAGE]` block: (source, destination) pairs."""

    stage: str | None
    pairs: list[tuple[str, str]]
    line: int


@dataclasses.dataclass
class Script:
    """A script section: its text and the `-c` shell, if any."""

    text: str
    shell: str | None
    line: int

    def argv(self, default: tuple[str, ...] = ("/bin/sh", "-e")) -> list[str]:
        """How to run it: `-c SHELL` as given, else the default."""
        return shlex.split(self.shell) if self.shell else list(default)


@dataclasses.dataclass
class App:
    """A SCIF app: /scif/apps/NAME."""

    name: str
    install: Script | None = None
    run: Script | None = None
    start: Script | None = None
    test: Script | None = None
    env: str = ""
    help: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    files: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Stage:
    """One stage: header and sections."""

    header: dict[str, str]  # lower-case keyword -> value
    header_names: dict[str, str]  # lower-case keyword -> the spelling used
    text: str  # the stage's own lines, as written
    line: int
    setup: Script | None = None
    post: Script | None = None
    runscript: Script | None = None
    startscript: Script | None = None
    test: Script | None = None
    environment: str = ""
    help: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    files: list[FilesSection] = dataclasses.field(default_factory=list)
    apps: dict[str, App] = dataclasses.field(default_factory=dict)
    sections: list[str] = dataclasses.field(default_factory=list)  # in the order found

    @property
    def bootstrap(self) -> str:
        return self.header.get("bootstrap", "").lower()

    @property
    def name(self) -> str | None:
        return self.header.get("stage") or None

    def get(self, keyword: str, default: str = "") -> str:
        return self.header.get(keyword.lower(), default)


@dataclasses.dataclass
class Definition:
    text: str  # the file as given (what images store)
    filename: str
    stages: list[Stage]
    arguments: dict[str, str]  # the values used for {{ NAME }}
    unused_args: list[str]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)


# -- build arguments -------------------------------------------------------------------
def parse_build_args(items: list[str], where: str = "--build-arg") -> dict[str, str]:
    """`K=V` items (from --build-arg) into a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _ARG_NAME.match(key):
            raise DeffileError(f"can't use {where} `{item}`: expected NAME=VALUE")
        out[key] = value
    return out


def parse_build_arg_file(
    text: str, filename: str, warn: Callable[[str], None] | None = None
) -> dict[str, str]:
    """`NAME=VALUE` lines, as Apptainer reads a --build-arg-file: split at the first `=`, name
    and value trimmed, and the value otherwise taken as written (quotes are part of it, as
    in a shell script the value lands in). A line that is not `NAME=VALUE`, or has an empty
    value, is skipped with a warning (`warn`); blank lines and `#` comments silently."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        reason = ("not NAME=VALUE" if not sep else "not a build argument name" if not _ARG_NAME.match(key)
                  else "the value is empty" if not value else "")  # fmt: skip
        if reason:
            if warn is not None:
                warn(f"skipping `{line}` in build-arg file `{filename}:{n}`: {reason}")
            continue
        out[key] = value
    return out


# -- parsing ----------------------------------------------------------------------------
def parse_deffile(
    text: str,
    filename: str = "<definition>",
    build_args: Mapping[str, str] | None = None,
) -> Definition:
    """Parse a definition file. `build_args` (--build-arg and --build-arg-file,
    merged by the caller) override the `%arguments` defaults."""
    if "\0" in text:
        raise DeffileError(
            f"can't parse `{filename}`: it contains NUL bytes, not a definition file"
        )
    bad = _SURROGATE.search(text)  # bytes that were not UTF-8 (read with surrogateescape)
    if bad:
        n = text.count("\n", 0, bad.start()) + 1
        raise DeffileError(f"can't parse `{filename}:{n}`: not UTF-8 text")
    lines = text.split("\n")
    chunks = _split_stages(lines, filename)
    if not chunks:
        raise DeffileError(f"can't parse `{filename}`: the definition file is empty",
                           hint="a definition file starts with `Bootstrap: AGENT`")  # fmt: skip
    given = dict(build_args or {})
    defaults: dict[str, str] = {}
    for start, chunk in chunks:
        defaults.update(_arguments(chunk, start, filename))
    values = {**defaults, **given}
    used: set[str] = set()
    stages = []
    for start, chunk in chunks:
        raw = "\n".join(chunk)
        subst = [
            _substitute(line, values, used, filename, start + i) for i, line in enumerate(chunk)
        ]
        stages.append(_parse_stage(subst, raw, start, filename))
    _check_stages(stages, filename)
    unused = sorted(k for k in given if k not in used)
    return Definition(text, filename, stages, values, unused)


def _split_stages(lines: list[str], filename: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each stage: a `Bootstrap:` line after
    the first section starts a new stage."""
    chunks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 1
    seen_section = False
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.lower().startswith("bootstrap:") and not line[:1].isspace() and seen_section:
            chunks.append((start, current))
            current, start, seen_section = [], n, False
        if _section_of(line):
            seen_section = True
        current.append(line)
    if any(x.strip() and not x.strip().startswith("#") for x in current):
        chunks.append((start, current))
    return chunks


def _section_of(line: str) -> tuple[str, str] | None:
    """(name, argument text) when the line starts a known section."""
    m = _SECTION_LINE.match(line.rstrip())
    if not m:
        return None
    name = m.group(1).lower()
    if name in SECTIONS or name in APP_SECTIONS:
        return name, m.group(2).strip()
    return None


def _arguments(chunk: list[str], start: int, filename: str) -> dict[str, str]:
    """The `%arguments` defaults of a stage."""
    out: dict[str, str] = {}
    inside = False
    for i, line in enumerate(chunk):
        sec = _section_of(line)
        if sec:
            inside = sec[0] == "arguments"
            continue
        if not inside:
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not _ARG_NAME.match(key):
            raise DeffileError(
                f"can't parse `{filename}:{start + i}`: expected NAME=VALUE in %arguments"
            )
        out[key] = value.strip()  # as written: quotes belong to the script it lands in
    return out


def _substitute(line: str, values: Mapping[str, str], used: set[str], filename: str, n: int) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise DeffileError(
                f"can't parse `{filename}:{n}`: build argument `{name}` is not defined",
                hint=f"define it with --build-arg {name}=VALUE, --build-arg-file or in %arguments",
            )
        used.add(name)
        return values[name]

    if "{{" not in line:
        return line
    return _TEMPLATE.sub(repl, line)


def _parse_stage(lines: list[str], raw: str, start: int, filename: str) -> Stage:
    header: dict[str, str] = {}
    names: dict[str, str] = {}
    stage = Stage(header, names, raw, start)
    i = 0
    # Header: until the first section.
    while i < len(lines) and not _section_of(lines[i]):
        n = start + i
        stripped = lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("%"):
            word = stripped.split()[0]
            raise DeffileError(f"can't parse `{filename}:{n}`: unknown section `{word}`",
                               hint="sections: " + ", ".join("%" + s for s in SECTIONS + APP_SECTIONS))  # fmt: skip
        key, sep, value = stripped.partition(":")
        key_l = key.strip().lower()
        if not sep or not key.strip() or " " in key.strip():
            raise DeffileError(f"can't parse `{filename}:{n}`: expected `Keyword: value` in the header, "
                               f"found `{stripped}`")  # fmt: skip
        if key_l not in HEADER_KEYWORDS and not _OTHER_URL.match(key_l):
            raise DeffileError(f"can't parse `{filename}:{n}`: unknown header keyword `{key.strip()}`",
                               hint="keywords: Bootstrap, From, Stage, MirrorURL, OSVersion, Include, ...")  # fmt: skip
        if key_l in header:
            raise DeffileError(
                f"can't parse `{filename}:{n}`: header keyword `{key.strip()}` given twice"
            )
        header[key_l] = value.strip()
        names[key_l] = key.strip()
    # Sections.
    while i < len(lines):
        sec = _section_of(lines[i])
        if sec is None:  # only possible for an unknown %word at the start of a line
            m = _SECTION_LINE.match(lines[i].rstrip())
            word = "%" + (m.group(1) if m else lines[i].strip())
            raise DeffileError(f"can't parse `{filename}:{start + i}`: unknown section `{word}`",
                               hint="sections: " + ", ".join("%" + s for s in SECTIONS + APP_SECTIONS))  # fmt: skip
        name, arg = sec
        line_no = start + i
        i += 1
        body: list[str] = []
        while i < len(lines) and not _is_boundary(lines[i]):
            body.append(lines[i])
            i += 1
        _add_section(stage, name, arg, body, line_no, filename)
    if not header:
        raise DeffileError(f"can't parse `{filename}:{start}`: the stage has no header",
                           hint="a definition file starts with `Bootstrap: AGENT`")  # fmt: skip
    return stage


def _is_boundary(line: str) -> bool:
    """A line that ends a section: `%word` at the start of a line (an
    unknown word is reported as an unknown section, as Apptainer does)."""
    return _SECTION_LINE.match(line.rstrip()) is not None


def _body_text(body: list[str]) -> str:
    """The section's text: trailing blank lines dropped, ending in a newline."""
    start, end = 0, len(body)
    while end > start and not body[end - 1].strip():
        end -= 1
    while start < end and not body[start].strip():
        start += 1
    return "\n".join(body[start:end]) + "\n" if end > start else ""


def _script(arg: str, body: list[str], line: int, filename: str, name: str) -> Script:
    shell = None
    if arg:
        try:
            words = shlex.split(arg)
        except ValueError as err:
            raise DeffileError(f"can't parse `{filename}:{line}`: %{name} {arg}: {err}") from None
        if words[0] != "-c" or len(words) < 2:
            raise DeffileError(
                f"can't parse `{filename}:{line}`: %{name} takes only `-c SHELL`, found `{arg}`"
            )
        shell = " ".join(words[1:])
    return Script(_body_text(body), shell, line)


def _labels(body: list[str], line: int, filename: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, raw in enumerate(body, 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(None, 1)
        key = parts[0]
        value = parts[1] if len(parts) > 1 else ""
        if "=" in key and len(parts) == 1:
            key, _, value = key.partition("=")
        out[key] = value.strip()
    return out


def _file_pairs(body: list[str], line: int, filename: str) -> list[tuple[str, str]]:
    pairs = []
    for k, raw in enumerate(body, 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            words = shlex.split(stripped, comments=True)
        except ValueError as err:
            raise DeffileError(f"can't parse `{filename}:{line + k}`: {err}") from None
        if not words:
            continue
        if len(words) > 2:
            raise DeffileError(f"can't parse `{filename}:{line + k}`: a %files line is `SOURCE [DESTINATION]`",
                               hint="quote paths with spaces")  # fmt: skip
        pairs.append((words[0], words[1] if len(words) == 2 else words[0]))
    return pairs


def _add_section(
    stage: Stage, name: str, arg: str, body: list[str], line: int, filename: str
) -> None:
    stage.sections.append(name)
    if name in APP_SECTIONS:
        words = arg.split()
        if len(words) != 1 or "/" in words[0] or words[0] in (".", ".."):
            raise DeffileError(
                f"can't parse `{filename}:{line}`: %{name} needs one app name, found `{arg}`"
            )
        app = stage.apps.setdefault(words[0], App(words[0]))
        kind = name[3:]
        if kind in ("install", "run", "start", "test"):
            setattr(app, kind, _merge(getattr(app, kind), _script("", body, line, filename, name)))
        elif kind == "env":
            app.env += _body_text(body)
        elif kind == "help":
            app.help += _body_text(body)
        elif kind == "labels":
            app.labels.update(_labels(body, line, filename))
        elif kind == "files":
            app.files += _file_pairs(body, line, filename)
        return
    if name == "arguments":
        return  # read before substitution
    if name == "files":
        stage_name = None
        if arg:
            words = arg.split()
            if len(words) != 2 or words[0] != "from":
                raise DeffileError(
                    f"can't parse `{filename}:{line}`: expected `%files from STAGE`, found `%files {arg}`"
                )
            stage_name = words[1]
        stage.files.append(FilesSection(stage_name, _file_pairs(body, line, filename), line))
        return
    if name in SCRIPT_SECTIONS:
        attr = "setup" if name == "pre" else name
        setattr(stage, attr, _merge(getattr(stage, attr), _script(arg, body, line, filename, name)))
        return
    if arg:
        raise DeffileError(
            f"can't parse `{filename}:{line}`: %{name} takes no argument, found `{arg}`"
        )
    if name == "environment":
        stage.environment += _body_text(body)
    elif name == "help":
        stage.help += _body_text(body)
    elif name == "labels":
        stage.labels.update(_labels(body, line, filename))


def _merge(old: Script | None, new: Script) -> Script:
    """A section given twice: its scripts run one after the other."""
    if old is None:
        return new
    return Script(old.text + new.text, old.shell or new.shell, old.line)


def _check_stages(stages: list[Stage], filename: str) -> None:
    names: set[str] = set()
    for stage in stages:
        where = f"{filename}:{stage.line}"
        if "bootstrap" not in stage.header:
            raise DeffileError(f"can't parse `{where}`: the header has no `Bootstrap:` keyword",
                               hint="start each stage with `Bootstrap: AGENT` (busybox, debootstrap, localimage, ...)")  # fmt: skip
        agent = stage.bootstrap
        if agent not in BOOTSTRAP_AGENTS:
            raise DeffileError(f"can't parse `{where}`: unknown bootstrap agent `{stage.header['bootstrap']}`",
                               hint="agents: " + ", ".join(sorted(BOOTSTRAP_AGENTS)))  # fmt: skip
        if agent not in _NO_FROM and not stage.get("from"):
            raise DeffileError(
                f"can't parse `{where}`: bootstrap agent `{agent}` needs a `From:` keyword"
            )
        if stage.name and stage.name in names:
            raise DeffileError(f"can't parse `{where}`: stage `{stage.name}` is defined twice")
        for files in stage.files:
            if files.stage is not None and files.stage not in names:
                raise DeffileError(
                    f"can't parse `{filename}:{files.line}`: `%files from {files.stage}`: no earlier stage "
                    f"named `{files.stage}`",
                    hint="name a stage with `Stage: NAME` in its header",
                )
        if stage.name:
            names.add(stage.name)
