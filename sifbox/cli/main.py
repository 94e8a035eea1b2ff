"""The sifbox command line: global flags, the command tree, THE error boundary.

Everything a command raises is rendered here, once:
`sifbox: error: can't <verb> <object>: <reason>` plus an optional `hint:`
line, no traceback unless `--debug`, and a documented exit status
(`sifbox.util.errors.ExitStatus`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

from sifbox import __version__
from sifbox.cli.commands import BY_NAME, COMMANDS, Command
from sifbox.util.errors import ExitStatus, NotAvailableError, SifboxError, UsageError

# argparse looks up a translation catalogue for every string it formats, on
# disk, each time: 10-15 ms per run for a tree of our size. sifbox's messages
# are English only, so skip the look-up.
argparse._ = lambda message: message  # type: ignore[attr-defined]

PROG = "sifbox"
#: Global options that take a value (needed to find the command word).
_VALUED_GLOBALS = {"-c", "--config", "--tmpdir"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(
            f"can't run `{self.prog}`: {message}", hint=f"see `{self.prog} --help`"
        )


class Interrupted(SifboxError):
    reference = "interrupted"
    exit_status = ExitStatus.INTERRUPTED


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise Interrupted(f"can't finish: terminated by signal {signum}", exit_status=128 + signum)


def add_global_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("global options")
    g.add_argument("-d", "--debug", action="store_true", help="print debugging information (highest verbosity)")
    g.add_argument("-v", "--verbose", action="store_true", help="print additional information")
    g.add_argument("-q", "--quiet", action="store_true", help="suppress normal output")
    g.add_argument("-s", "--silent", action="store_true", help="only print errors")
    g.add_argument("--nocolor", action="store_true", help="print without color output")
    g.add_argument("-c", "--config", metavar="FILE", help="specify a configuration file (for root or unprivileged installation only)")
    g.add_argument("--tmpdir", metavar="DIR", help=argparse.SUPPRESS)
    g.add_argument("--version", action="version", version=f"{PROG} version {__version__}")


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
    import importlib

    return importlib.import_module(f"sifbox.cli.commands.{cmd.module}")


def build_parser(full: str | bool = False) -> ArgumentParser:
    """The parser. With `full` a command name, only that command is set up
    (with its arguments); with False, every command without arguments (for
    the command list); with True, every command with its arguments."""
    parser = ArgumentParser(
        prog=PROG,
        description="sifbox: run and manage containers on HPC systems (Apptainer compatible).",
        epilog=f"Run `{PROG} help COMMAND` for the help of a command.",
    )
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    only = BY_NAME.get(full) if isinstance(full, str) else None
    for cmd in (only,) if only else COMMANDS:
        p = sub.add_parser(cmd.name, aliases=list(cmd.aliases), help=cmd.help, description=cmd.help)
        p.set_defaults(_command=cmd)
        if cmd.module is None:
            p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        elif full is True or only is not None:
            load_command(cmd).add_arguments(p)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
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


def render_error(err: SifboxError, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    sys.stderr.write(f"{PROG}: error: {err.message}\n")
    if err.hint:
        sys.stderr.write(f"hint: {err.hint}\n")
    return int(err.exit_status)


def run(argv: Sequence[str]) -> int:
    word = command_word(argv)
    cmd = BY_NAME.get(word) if word else None
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = any(a in ("-d", "--debug") for a in argv[: argv.index("--") if "--" in argv else None])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(argv)
    except SifboxError as err:
        return render_error(err, debug)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: error: interrupted\n")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`sifbox sif dump ... | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as err:  # a bug: say so plainly, keep the traceback for --debug
        wrapped = SifboxError(
            f"can't complete the command: internal error: {type(err).__name__}: {err}",
            hint="run again with --debug to see where it failed, and report it",
        )
        if debug:
            import traceback

            traceback.print_exc()
        return render_error(wrapped, False)


if __name__ == "__main__":
    sys.exit(main())
