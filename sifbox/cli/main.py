"""The sifbox command line: global flags, the command tree, THE error boundary.

Everything a command raises is rendered here, once:
`sifbox: error: can't <verb> <object>: <reason>` plus an optional `hint:`
line, no traceback unless `--debug`, and a documented exit status
(`sifbox.util.errors.ExitStatus`).
"""

from __future__ import annotations

import gc
import os
import _signal as signal  # the C module: `signal` itself imports enum, ~5 ms of every launch
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

from sifbox import __version__
from sifbox.cli.commands import BY_NAME, Command
from sifbox.util.errors import ExitStatus, NotAvailableError, SifboxError, UsageError

PROG = "sifbox"
#: sysconf.DEFAULT_PATH and messages.ENV_VAR, without importing them on every run.
_DEFAULT_CONFIG = "/etc/sifbox/sifbox.conf"
_FORMAT_VAR = "SIFBOX_MESSAGE_FORMAT"
#: Global options that take a value (needed to find the command word).
_VALUED_GLOBALS = {"-c", "--config", "--tmpdir"}
#: Global options without a value, by flag: their attribute.
_BOOL_GLOBALS = {"-d": "debug", "--debug": "debug", "-v": "verbose", "--verbose": "verbose", "-q": "quiet",
                 "--quiet": "quiet", "-s": "silent", "--silent": "silent", "--nocolor": "nocolor"}  # fmt: skip


class Interrupted(SifboxError):
    reference = "interrupted"
    exit_status = ExitStatus.INTERRUPTED


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise Interrupted(f"can't finish: terminated by signal {signum}", exit_status=128 + signum)


def leading_globals(argv: Sequence[str]) -> list[str]:
    """The global options (and their values) before the command word: the only place
    they are global, as in Apptainer (`sifbox exec img ls -d /` is not --debug)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            out.append(arg)
            continue
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        out.append(arg)
        skip = arg in _VALUED_GLOBALS
    return out


def _wants_debug(lead: Sequence[str]) -> bool:
    for arg in lead:
        if arg == "--debug":
            return True
        short = arg.startswith("-") and not arg.startswith("--")
        if short and "d" in arg and set(arg[1:]) <= set("dvqs"):
            return True  # -d, or -d among other short flags (-vd)
    return False


def _config_option(lead: Sequence[str]) -> str | None:
    """The value of -c/--config among the leading global options."""
    for i, arg in enumerate(lead):
        if arg in ("-c", "--config") and i + 1 < len(lead):
            return lead[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def message_format(lead: Sequence[str]) -> str:
    """The message format: `SIFBOX_MESSAGE_FORMAT`, else `message format` in sifbox.conf
    (published in the environment for what sifbox runs), else sifbox's own.

    Only this directive is looked for, without the parser (sifbox.config.sysconf) and its
    schema: every run, a container launch too, comes here."""
    value = os.environ.get(_FORMAT_VAR, "")
    if value.strip():  # set and not empty
        from sifbox.util import messages

        fmt = messages.parse(value)
        if fmt is None:
            raise UsageError(f"can't use {messages.ENV_VAR} `{value}`: not one of "
                             + ", ".join(f"`{f}`" for f in messages.FORMATS))  # fmt: skip
        return fmt
    path = _config_option(lead) or os.environ.get("SIFBOX_CONFIG_FILE") or _DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return "sifbox"
    # sysconf's rules, for this one directive: `#` starts a comment line, names are
    # case-insensitive with any inner blanks, the first line wins, an empty value sets nothing.
    low = data.lower()
    at = low.find(b"message")
    while at >= 0:
        start, end = low.rfind(b"\n", 0, at) + 1, low.find(b"\n", at)
        line = data[start : end if end >= 0 else len(data)].decode("utf-8", "replace")
        name, eq, value = line.strip().partition("=")
        if eq and not name.startswith("#") and " ".join(name.lower().split()) == "message format":
            from sifbox.util import messages

            if value.strip():
                # `sifbox config check` reports a value that is not one of them
                fmt = messages.parse(value) or messages.SIFBOX
                if fmt != messages.SIFBOX:
                    os.environ[messages.ENV_VAR] = fmt
                return fmt
        at = low.find(b"message", end) if end >= 0 else -1
    return "sifbox"


def command_word(argv: Sequence[str]) -> str | None:
    """The first word of argv that is not a global option (or its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--":
            return None
        if arg.startswith("-"):
            skip = arg in _VALUED_GLOBALS
            continue
        return arg
    return None


def load_command(cmd: Command):  # type: ignore[no-untyped-def]
    # __import__, not importlib.import_module: importlib's package imports warnings.
    name = f"sifbox.cli.commands.{cmd.module}"
    __import__(name)
    return sys.modules[name]


class Args:
    """Parsed options, as argparse's Namespace holds them."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


def fast_args(argv: Sequence[str], cmd: Command):  # type: ignore[no-untyped-def]
    """The common command line of an action (`sifbox [-v] exec [options]
    IMAGE CMD ...`) parsed without argparse, whose import and parser cost
    ~10 ms of every launch (once per MPI rank); None when it needs argparse."""
    values: dict[str, object] = dict.fromkeys(set(_BOOL_GLOBALS.values()), False)
    values.update(config=None, tmpdir=None)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _BOOL_GLOBALS and not eq:
            values[_BOOL_GLOBALS[name]] = True
            i += 1
        elif name in _VALUED_GLOBALS:
            if not eq and i + 1 >= len(argv):
                return None
            values["tmpdir" if name == "--tmpdir" else "config"] = inline if eq else argv[i + 1]
            i += 1 if eq else 2
        else:
            return None
    if i >= len(argv) or argv[i] != cmd.name:
        return None
    if cmd.module == "oci":
        found = load_command(cmd).fast_parse(list(argv[i + 1 :]))
        if found is None:
            return None
        values.update(found)
        return Args(command=cmd.name, _command=cmd, **values)
    from sifbox.cli.commands import action

    found = action.fast_parse(cmd.name, list(argv[i + 1 :]))
    if found is None:
        return None
    values.update(found)
    return Args(command=cmd.name, _command=cmd, **values)


def _setup_logging(args) -> None:  # type: ignore[no-untyped-def]
    """Publish the message level; `sifbox.util.log` configures itself from it
    when a command first logs (so commands that never log don't import logging)."""
    level = 20  # INFO
    if args.debug:
        level = 10
    elif args.verbose:
        level = 15
    elif args.silent:
        level = 40
    elif args.quiet:
        level = 30
    os.environ["SIFBOX_MESSAGELEVEL"] = str(level)
    if args.nocolor or "NO_COLOR" in os.environ or not sys.stderr.isatty():
        os.environ["SIFBOX_NOCOLOR"] = "1"


def render_error(err: SifboxError, debug: bool, fmt: str | None = None) -> int:
    from sifbox.util import messages

    if debug:
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    env = os.environ
    color = sys.stderr.isatty() and "SIFBOX_NOCOLOR" not in env and "NO_COLOR" not in env
    sys.stderr.write(messages.error_text(err.message, err.hint, fmt=fmt, color=color))
    return int(err.exit_status)


def _os_error(err: OSError, argv: Sequence[str]) -> SifboxError:
    """An OSError no command turned into a message (a race, a full disk, a permission a
    check could not foresee): one line that says what failed, not an internal error."""
    from sifbox.util.errors import os_fault

    word = command_word(argv)
    return os_fault(err, f"run `{PROG} {word}`" if word else f"run `{PROG}`")


def run(argv: Sequence[str]) -> int:
    word = command_word(argv)
    cmd = BY_NAME.get(word) if word else None
    if cmd is not None and cmd.module in ("action", "oci"):
        args = fast_args(argv, cmd)
        if args is not None:
            # A launch is short and makes little cyclic garbage: without the cyclic
            # collector it saves ~1.5 ms of collections, and its forked children do not
            # touch (copy) every object of the parent's heap when one runs. A launch
            # that pulls an image first turns it back on (runtime.launcher).
            gc.disable()
            _setup_logging(args)
            if args.tmpdir:
                os.environ["SIFBOX_TMPDIR"] = args.tmpdir
            return int(load_command(cmd).main(args))
    from sifbox.cli.parser import build_parser

    parser = build_parser(full=cmd.name if cmd else False)
    args = parser.parse_args(argv)
    _setup_logging(args)
    if args.tmpdir:
        os.environ["SIFBOX_TMPDIR"] = args.tmpdir
    if args.command is None:
        parser.print_help()
        return ExitStatus.OK
    cmd = args._command
    if cmd.module is None:
        raise NotAvailableError(
            f"can't run `{PROG} {cmd.name}`: this command is not available in sifbox {__version__} yet",
            hint=f"`{PROG} help` lists the commands; `{PROG} sif` works with SIF images today",
        )
    args._parser = parser
    return int(load_command(cmd).main(args))


def _exit_now(status: int) -> NoReturn:
    """End the process with `status` at once: the container has ended and everything of
    the launch is closed, so the interpreter's own finalization (a few ms of every launch,
    freeing every module) is skipped. Output still buffered is written first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def main(argv: Sequence[str] | None = None, *, entry: bool | None = None) -> int:
    # the process's own command line (the launcher script's call): it ends with the command
    entry = argv is None if entry is None else entry
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = leading_globals(argv)
    debug = _wants_debug(lead)
    signal.signal(signal.SIGTERM, _on_sigterm)
    fmt = None
    try:
        fmt = message_format(lead)
        status = run(argv)
        word = command_word(argv)
        if entry and word in BY_NAME and BY_NAME[word].module in ("action", "oci"):
            _exit_now(status)
        return status
    except SifboxError as err:
        return render_error(err, debug, fmt)
    except KeyboardInterrupt:
        return render_error(Interrupted("interrupted"), False, fmt)
    except BrokenPipeError:
        # The reader of our output went away (`sifbox sif dump ... | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as err:
        if debug:
            import traceback

            traceback.print_exc()
        return render_error(_os_error(err, argv), False, fmt)
    except Exception as err:  # a bug: say so plainly, keep the traceback for --debug
        wrapped = SifboxError(
            f"can't complete the command: internal error: {type(err).__name__}: {err}",
            hint="run again with --debug to see where it failed, and report it",
        )
        if debug:
            import traceback

            traceback.print_exc()
        return render_error(wrapped, False, fmt)


def runc_main() -> int:
    """`sifbox-runc ARGS`: `sifbox oci ARGS`, for what runs a runc binary by its
    command line (containerd's runc shim with BinaryName, Slurm's oci.conf)."""
    return main(["oci", *sys.argv[1:]], entry=True)


if __name__ == "__main__":
    sys.exit(main())
