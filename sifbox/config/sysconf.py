"""sifbox.conf: read the site configuration, in apptainer.conf syntax.

::

    cfg = load(args.config)      # else $SIFBOX_CONFIG_FILE, else /etc/sifbox/sifbox.conf
    for message in cfg.warnings:
        log.warning(message)
    if cfg["mount home"]: ...    # or cfg.mount_home, cfg.get_bool("mount home")

The rules, as Apptainer's parser (`pkg/util/apptainerconf/parser.go`) has them:

- one `directive = value` per line; the value is everything after the first
  `=`, trimmed. Lines starting with `#` are comments; there are no comments at
  the end of a line (`#` is part of a value). A directive with an empty value
  sets nothing.
- a directive that is not a list keeps its FIRST value: Apptainer reads
  `value[0]`. sifbox also warns about the repeated line.
- list directives may be repeated and take comma-separated values; their
  values add up in file order. A list directive that a file does not mention
  is EMPTY: its default (`bind path = /etc/localtime, /etc/hosts`) applies only
  when no file is read at all, so that deleting the shipped `bind path` lines
  removes those binds.

sifbox is stricter or more lenient in these places: `yes`/`no`, enum values
and directive names are case-insensitive and a name's inner blanks may vary;
every value of a repeated directive is checked, not only the first; an invalid
value is an error naming the line; an unknown directive, or a line without
`=`, is a warning rather than being silently skipped.

Nothing here makes a system call except opening, `fstat`-ing and reading the
file (at most `MAX_SIZE` bytes).
"""

from __future__ import annotations

import os
import stat
from sifbox.util.records import record as namedtuple

from sifbox.config import schema
from sifbox.util.errors import ExitStatus, SifboxError, describe_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import NamedTuple

    from sifbox.config.schema import Value

#: The site configuration file, when neither `load(path)` nor the environment names one.
DEFAULT_PATH = "/etc/sifbox/sifbox.conf"
#: Environment variable naming the configuration file.
ENV_VAR = "SIFBOX_CONFIG_FILE"
#: Largest configuration file read: a bigger one is refused, not read into memory.
MAX_SIZE = 1024 * 1024

#: Origins of a value in `Config.items()` and `Config.setting()`.
FROM_FILE = "file"  # set by a line of the file (`Setting.line` is its first line)
FROM_DEFAULT = "default"  # the schema default: the file does not set it, or no file was read
ABSENT = "absent"  # a list directive not mentioned by a file that was read: empty

_BOM = b"\xef\xbb\xbf"
#: Unknown directives that get a "did you mean" suggestion (difflib is slow: a file of
#: thousands of unknown lines would take seconds).
_SUGGESTIONS = 20

BY_NAME = schema.BY_NAME
SCHEMA = schema.SCHEMA


class ConfigError(SifboxError):
    """The configuration file cannot be read, or a value in it is invalid.

    `path` is the file (None for text given to `parse` without a source) and
    `line` the 1-based line at fault, if any.
    """

    reference = "config-error"
    exit_status = ExitStatus.USAGE

    def __init__(
        self,
        path: str | None,
        reason: str,
        *,
        line: int | None = None,
        hint: str | None = None,
    ):
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"can't read configuration `{_name(path)}`: {where}{reason}", hint=hint)
        self.path = path
        self.line = line


if TYPE_CHECKING:

    class _SettingFields(NamedTuple):
        name: str
        value: Value
        origin: str
        line: int | None


# A plain namedtuple at run time, as in sifbox.formats.sif.layout.
_SettingFields = namedtuple("_SettingFields", "name value origin line")  # type: ignore[no-redef]


class Setting(_SettingFields):
    """A directive in force: its value, where it comes from (`FROM_FILE`,
    `FROM_DEFAULT` or `ABSENT`) and the first line of the file that set it."""

    __slots__ = ()


class Config:
    """The configuration in force (immutable).

    Every directive of `schema.SCHEMA` has a value. Read one by name,
    `cfg["mount home"]` or `cfg.get("mount home")`, or as an attribute,
    `cfg.mount_home`; the typed getters `get_bool`, `get_int`, `get_str` and
    `get_list` also check the directive's type. An unknown name is a KeyError
    (AttributeError for attributes): a misspelt directive in code fails loudly.
    """

    __slots__ = ("_settings", "_warnings", "source")

    _settings: dict[str, Setting]
    _warnings: tuple[str, ...]
    #: The file read, or None when no file was read (all defaults).
    source: str | None

    def __init__(
        self,
        settings: Mapping[str, Setting],
        warnings: tuple[str, ...] = (),
        source: str | None = None,
    ):
        missing = BY_NAME.keys() - settings.keys()
        if missing:
            raise ValueError(f"no value for {sorted(missing)}")
        ordered = {d.name: settings[d.name] for d in SCHEMA}
        object.__setattr__(self, "_settings", ordered)
        object.__setattr__(self, "_warnings", tuple(warnings))
        object.__setattr__(self, "source", source)

    def __setattr__(self, attr: str, value: object) -> None:
        raise AttributeError(f"a Config is immutable (can't set `{attr}`)")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"a Config is immutable (can't delete `{attr}`)")

    def __getitem__(self, name: str) -> Value:
        return self.setting(name).value

    def __getattr__(self, attr: str) -> Value:
        # Called only for names that are not slots or methods.
        name = schema.BY_ATTR.get(attr)
        if name is None or attr.startswith("_"):
            raise AttributeError(f"no directive `{attr}` in sifbox.conf (attribute of Config)")
        return self._settings[name].value

    def __contains__(self, name: object) -> bool:
        return name in self._settings

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    def __eq__(self, other: object) -> bool:
        """Equal when every directive has the same value (origins and source aside)."""
        if not isinstance(other, Config):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        from_file = sum(1 for s in self._settings.values() if s.origin == FROM_FILE)
        return f"<Config {_name(self.source)}: {from_file} directives set by the file>"

    def get(self, name: str) -> Value:
        """The value of directive `name` (KeyError if sifbox has no such directive)."""
        return self.setting(name).value

    def setting(self, name: str) -> Setting:
        """Value, origin and line of directive `name` (KeyError if unknown)."""
        try:
            return self._settings[name]
        except KeyError:
            raise KeyError(f"no directive `{name}` in sifbox.conf") from None

    def get_bool(self, name: str) -> bool:
        value = self._typed(name, (schema.BOOL,))
        assert isinstance(value, bool)
        return value

    def get_int(self, name: str) -> int:
        value = self._typed(name, (schema.INT,))
        assert isinstance(value, int)
        return value

    def get_str(self, name: str) -> str | None:
        """A string directive (None when unset) or an enum one (never None)."""
        value = self._typed(name, (schema.STRING, schema.ENUM))
        assert value is None or isinstance(value, str)
        return value

    def get_list(self, name: str) -> tuple[str, ...]:
        value = self._typed(name, (schema.LIST,))
        assert isinstance(value, tuple)
        return value

    def _typed(self, name: str, kinds: tuple[str, ...]) -> Value:
        value = self.setting(name).value
        kind = BY_NAME[name].kind
        if kind not in kinds:
            raise TypeError(f"`{name}` is a {kind} directive, not {' or '.join(kinds)}")
        return value

    @property
    def warnings(self) -> list[str]:
        """What the caller should log as warnings (a new list on each access)."""
        return list(self._warnings)

    def items(self) -> list[Setting]:
        """Every directive in force, in schema order, with its origin (for `config check`)."""
        return list(self._settings.values())

    def as_dict(self) -> dict[str, Value]:
        """Directive name -> value, e.g. to hand the runtime plan a JSON-able copy."""
        return {name: s.value for name, s in self._settings.items()}


def defaults() -> Config:
    """The configuration when no file is read: every directive at its default."""
    return Config({d.name: Setting(d.name, d.default, FROM_DEFAULT, None) for d in SCHEMA})


def load(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Read the configuration.

    The file is `path` if given, else `$SIFBOX_CONFIG_FILE` if set and not
    empty (from `env`, default `os.environ`), else `DEFAULT_PATH`. A missing
    `DEFAULT_PATH` gives `defaults()`; a missing file that was named, an
    unreadable one, one that is not a regular file or is over `MAX_SIZE`
    bytes, and an invalid value all raise ConfigError.
    """
    if path is None:
        path = (os.environ if env is None else env).get(ENV_VAR) or None
    named = path is not None
    path = DEFAULT_PATH if path is None else os.fspath(path)
    try:
        data = _read(path)
    except FileNotFoundError as err:
        if not named:
            return defaults()
        raise ConfigError(
            path,
            describe_os_error(err),
            hint=f"check the file given with --config or in {ENV_VAR}",
        ) from err
    except OSError as err:
        raise ConfigError(path, describe_os_error(err)) from err
    return parse(data, path)


def _read(path: str) -> bytes:
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(
                path, "is a directory" if stat.S_ISDIR(mode) else "not a regular file"
            )
        from sifbox.util import trusted

        reason = trusted.untrusted_reason(fd)
        if reason is not None:
            raise ConfigError(path, reason, hint=trusted.HINT)
        data = f.read(MAX_SIZE + 1)
    if len(data) > MAX_SIZE:
        raise ConfigError(path, f"larger than {MAX_SIZE // 1024 // 1024} MiB ({MAX_SIZE} bytes)")
    return data


def parse(data: bytes | str, source: str | None = None) -> Config:
    """Parse the text of a configuration file; `source` names it in messages.

    Raises ConfigError for text that is not UTF-8 and for invalid values;
    collects warnings in `Config.warnings`.
    """
    text = _decode(data, source) if isinstance(data, bytes) else data
    scalars: dict[str, Setting] = {}
    lists: dict[str, tuple[list[str], int]] = {}
    warnings: list[str] = []
    unknown = 0

    def warn(lineno: int, message: str) -> None:
        warnings.append(f"configuration `{_name(source)}`: line {lineno}: {message}")

    # split("\n"), not splitlines(): that also splits on \v, \f, \x1c, U+2028...
    # and line numbers would no longer match an editor's.
    for lineno, raw_line in enumerate(text.split("\n"), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if "\0" in line:
            raise ConfigError(source, "contains a NUL character", line=lineno)
        key, sep, raw = line.partition("=")
        name = " ".join(key.lower().split())
        if not sep or not name:
            warn(lineno, f"not a `directive = value` line, ignored: `{schema.clip(line)}`")
            continue
        directive = BY_NAME.get(name)
        if directive is None:
            unknown += 1
            warn(lineno, _unknown(name, suggest=unknown <= _SUGGESTIONS))
            continue
        raw = raw.strip()
        if not raw:
            continue  # as Apptainer: an empty value sets nothing
        try:
            value = directive.parse(raw)
        except ValueError as err:
            hint = None
            if " #" in raw:
                hint = "comments must be on lines of their own: `#` inside a value is part of it"
            raise ConfigError(source, str(err), line=lineno, hint=hint) from None
        if directive.kind == schema.LIST:
            assert isinstance(value, tuple)
            lists.setdefault(name, ([], lineno))[0].extend(value)
            continue
        first = scalars.get(name)
        if first is not None:
            warn(
                lineno,
                f"`{name}` is already set on line {first.line}; "
                "the first value is used, as in Apptainer",
            )
            continue
        if name == "allow setuid" and value:
            warn(
                lineno,
                "`allow setuid = yes` is not supported: sifbox has no setuid mode; treated as `no`",
            )
            value = False
        scalars[name] = Setting(name, value, FROM_FILE, lineno)

    settings: dict[str, Setting] = {}
    for d in SCHEMA:
        if d.name in scalars:
            settings[d.name] = scalars[d.name]
        elif d.name in lists:
            items, lineno = lists[d.name]
            settings[d.name] = Setting(d.name, tuple(items), FROM_FILE, lineno)
        elif d.kind == schema.LIST:
            settings[d.name] = Setting(d.name, (), ABSENT, None)
        else:
            settings[d.name] = Setting(d.name, d.default, FROM_DEFAULT, None)
    return Config(settings, tuple(warnings), source)


def _decode(data: bytes, source: str | None) -> str:
    data = data.removeprefix(_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(
            source,
            f"not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column})",
            line=lineno,
        ) from None


def _unknown(name: str, suggest: bool = True) -> str:
    if name in schema.APPTAINER_ONLY:
        return f"`{name}` is an Apptainer directive that sifbox does not implement, ignored"
    message = f"unknown directive `{schema.clip(name)}`, ignored"
    if not suggest:
        return message
    import difflib  # only on this path: it is not needed otherwise

    close = difflib.get_close_matches(name, BY_NAME, n=1, cutoff=0.8)
    return f"{message} (did you mean `{close[0]}`?)" if close else message


def _name(path: str | None) -> str:
    return "<text>" if path is None else path


_HEADER = """\
# sifbox.conf: the site configuration of sifbox.
#
# sifbox reads /etc/sifbox/sifbox.conf, or the file named by `sifbox --config FILE`
# or by the environment variable SIFBOX_CONFIG_FILE. The syntax and the directive
# names are those of apptainer.conf:
#
#   directive = value     one per line; a line starting with `#` is a comment
#                         (there are no comments at the end of a line)
#   yes, no               boolean values; case does not matter
#   a, b, c               list directives take comma-separated values and may be
#                         repeated: the values of all their lines add up
#
# A directive other than a list that appears twice keeps its first value, as in
# Apptainer. A list directive that this file does not mention is empty: the
# defaults shown below for lists apply only when there is no file at all.
#
# Each directive below is at its default value. Its comment says what it does,
# and which values it takes.
"""


def render_default() -> str:
    """The text of a complete default sifbox.conf; `parse` gives back `defaults()`."""
    out = [_HEADER]
    for d in SCHEMA:
        lines = d.format(d.default)
        shown = ", ".join(lines) if lines else ("empty" if d.kind == schema.LIST else "unset")
        out.append(f"\n# {d.help}\n# {d.syntax}; default: {shown}\n")
        if not lines:
            out.append(f"#{d.name} =\n")
        for value in lines:
            out.append(f"{d.name} = {value}\n")
    return "".join(out)
