"""`sifbox config global`: change one directive of sifbox.conf, keeping everything else.

    new_text, changed = edit(text, SET, "enable fusemount", ["no"])
    value = get(text, "bind path")          # "/etc/localtime,/etc/hosts", or "" when unset

Apptainer's operations (`config global --set|--unset|--get|--reset`), on the text of the file:
comments, blank lines, the other directives and their order stay as they are; only the lines
of the directive change. A list directive (`bind path`) gains or loses values (a value given
twice, or already there, counts once); any other directive is replaced by its new value (its
later, ignored repetitions go too), and unset or reset go back to the default. A new line goes
after the directive's last line, else after its commented template line (`#directive =`), else
at the end. Every value is checked as the parser checks it, and the result must parse.

Pure (the file is read and written by `write_file`, atomically).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sifbox.config import schema, sysconf
from sifbox.util.errors import SifboxError, UsageError

SET, UNSET, GET, RESET = "set", "unset", "get", "reset"


def directive(name: str) -> schema.Directive:
    """The directive called `name` (any case, any inner blanks), or a usage error."""
    key = " ".join(name.lower().split())
    if any(ch in name for ch in "\n\r\0="):
        raise UsageError("can't change a directive whose name holds a newline, NUL or `=`")
    found = schema.BY_NAME.get(key)
    if found is not None:
        return found
    if key in schema.APPTAINER_ONLY:
        raise UsageError(f"can't change `{name}`: an Apptainer directive that sifbox does not implement")
    import difflib

    close = difflib.get_close_matches(key, schema.BY_NAME, n=1, cutoff=0.7)
    raise UsageError(f"can't change `{name}`: not a sifbox.conf directive",
                     hint=f"did you mean `{close[0]}`?" if close else "`sifbox config check` lists them all")  # fmt: skip


def _name_of(line: str, commented: bool = False) -> str | None:
    text = line.strip()
    if commented:
        if not text.startswith("#"):
            return None
        text = text.lstrip("#").strip()
    elif text.startswith("#"):
        return None
    key, sep, _ = text.partition("=")
    return " ".join(key.lower().split()) if sep else None


def _values(line: str) -> list[str]:
    return [v.strip() for v in line.partition("=")[2].split(",") if v.strip()]


def _split(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if item and item not in out:
                out.append(item)
    return out


def get(text: str, name: str) -> str:
    """The value of directive `name` in force in `text`, as Apptainer prints it (a list
    comma-joined); empty when unset."""
    d = directive(name)
    return ",".join(d.format(sysconf.parse(text).get(d.name)))


def edit(text: str, op: str, name: str, values: list[str]) -> str:
    """`text` with directive `name` changed by `op` (SET, UNSET or RESET) with `values`."""
    d = directive(name)
    for value in values:
        if any(ch in value for ch in "\n\r\0"):
            raise UsageError(f"can't {op} `{d.name}`: a value can't hold a newline or NUL character")
    values = _split(values)
    lines = text.split("\n")
    ends = bool(lines) and lines[-1] == ""
    if ends:
        lines.pop()
    active = [i for i, ln in enumerate(lines) if _name_of(ln) == d.name]
    if op == SET:
        if not values:
            raise UsageError(f"can't set `{d.name}`: no value given", hint=f"`sifbox config global --set "
                             f"\"{d.name}\" VALUE` ({d.syntax})")  # fmt: skip
        if d.kind != schema.LIST and len(values) > 1:
            raise UsageError(f"can't set `{d.name}`: it takes one value, not {len(values)}")
        for v in values:
            _check(d, v)
        if d.kind == schema.LIST:
            present = [v for i in active for v in _values(lines[i])]
            new = [v for v in values if v not in present]
            if new:
                _insert(lines, active, d, f"{d.name} = {', '.join(new)}")
        else:
            line = f"{d.name} = {d.format(d.parse(values[0]))[0]}"
            if active:
                lines[active[0]] = line
                for i in reversed(active[1:]):
                    del lines[i]
            else:
                _insert(lines, active, d, line)
    elif op == UNSET:
        if not active:
            raise SifboxError(f"can't unset `{d.name}`: the file does not set it")
        if not values:
            for i in reversed(active):
                del lines[i]
        elif d.kind == schema.LIST:
            found = False
            for i in reversed(active):
                kept = [v for v in _values(lines[i]) if v not in values]
                found = found or len(kept) < len(_values(lines[i]))
                if not kept:
                    del lines[i]
                elif len(kept) < len(_values(lines[i])):
                    lines[i] = f"{d.name} = {', '.join(kept)}"
            if not found:
                raise SifboxError(f"can't unset `{d.name}`: value `{','.join(values)}` not found")
        else:
            current = d.parse(_values(lines[active[0]])[0]) if _values(lines[active[0]]) else None
            if len(values) != 1 or current != _parsed(d, values[0]):
                raise SifboxError(f"can't unset `{d.name}`: value `{','.join(values)}` not found",
                                  hint=f"its value is `{','.join(d.format(current))}`")  # fmt: skip
            for i in reversed(active):
                del lines[i]
    elif op == RESET:
        default = [f"{d.name} = {v}" for v in d.format(d.default)]
        if d.kind != schema.LIST and len(default) > 1:
            default = default[:1]
        at = active[0] if active else None
        for i in reversed(active):
            del lines[i]
        if at is not None:
            lines[at:at] = default
        else:
            for line in reversed(default):
                _insert(lines, [], d, line)
    else:
        raise ValueError(op)
    new_text = "\n".join(lines) + ("\n" if ends or lines else "")
    sysconf.parse(new_text, "the result")  # raises on a value the parser refuses
    return new_text


def _parsed(d: schema.Directive, value: str) -> schema.Value:
    try:
        return d.parse(value)
    except ValueError:
        return None


def _check(d: schema.Directive, value: str) -> None:
    try:
        d.parse(value)
    except ValueError as err:
        raise UsageError(f"can't set `{d.name}`: {err}", hint=f"it takes {d.syntax}") from None


def _insert(lines: list[str], active: list[int], d: schema.Directive, line: str) -> None:
    if active:
        lines.insert(active[-1] + 1, line)
        return
    template = [i for i, ln in enumerate(lines) if _name_of(ln, commented=True) == d.name]
    if template:
        lines.insert(template[-1] + 1, line)
    else:
        lines.append(line)


def read_file(path: str) -> str:
    """The text of the configuration file `path`, read as sifbox reads it (a regular file;
    as root, one that root trusts)."""
    from sifbox.util.errors import describe_os_error

    try:
        data = sysconf._read(path)
    except FileNotFoundError:
        raise SifboxError(f"can't edit `{path}`: no such file",
                          hint="the file of -c/--config, else SIFBOX_CONFIG_FILE, else /etc/sifbox/sifbox.conf") from None
    except OSError as err:
        raise sysconf.ConfigError(path, describe_os_error(err)) from None
    return sysconf._decode(data, path)


def write_file(path: str, text: str) -> None:
    """Replace `path` with `text` atomically, keeping its mode (root's file)."""
    from sifbox.util.atomic import write_file as atomic_write

    try:
        mode = os.stat(path).st_mode & 0o777
        atomic_write(path, text.encode(), mode)
    except OSError as err:
        raise SifboxError(f"can't write `{path}`: {err.strerror}") from None


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """An exclusive lock on the directory of `path` while it is held: one edit at a time."""
    import fcntl

    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise SifboxError(f"can't edit `{path}`: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
