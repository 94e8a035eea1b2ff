"""The argparse command tree: global options and every command's parser.

Imported only when a command line needs it (`--help`, any command but the
actions' common case, which `sifbox.cli.main` parses without argparse).
"""

from __future__ import annotations

import argparse
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

from sifbox import __version__
from sifbox.cli.commands import BY_NAME, COMMANDS
from sifbox.util.errors import UsageError

PROG = "sifbox"

# argparse looks up a translation catalogue for every string it formats, on
# disk, each time: 10-15 ms per run for a tree of our size. sifbox's messages
# are English only, so skip the look-up.
argparse._ = lambda message: message  # type: ignore[attr-defined]


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with the width found without importing shutil
    (argparse's own way, which also imports bz2 and lzma)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        if width is None:
            try:
                width = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    width = os.get_terminal_size(2).columns
                except OSError:
                    width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


#: Global options, which go before the command word (as in Apptainer).
GLOBAL_FLAGS = frozenset({"-d", "--debug", "-v", "--verbose", "-q", "--quiet", "-s", "--silent",
                          "--nocolor", "-c", "--config", "--tmpdir"})  # fmt: skip


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing and exiting 2, and refuses
    what it does not know in the (sub)command that does not know it."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(
            f"can't run `{self.prog}`: {message}", hint=f"see `{self.prog} --help`"
        )

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        # A subcommand's parser is run by its parent's with what follows the command word;
        # refusing leftovers here names `sifbox cache clean`, not `sifbox`.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            raise unknown_arguments(self.prog, extras)
        return namespace, extras


def unknown_arguments(prog: str, extras: list[str]) -> UsageError:
    """`can't run `sifbox exec`: unknown flag `--foo``, with a hint."""
    flags = [a.partition("=")[0] for a in extras if a.startswith("-") and a != "-"]
    items = flags or extras
    kind = ("unknown flag" if flags else "unexpected argument") + ("s" if len(items) > 1 else "")
    what = f"{kind} " + ", ".join(f"`{a}`" for a in items)
    hint = f"see `{prog} --help`"
    misplaced = [f for f in flags if f in GLOBAL_FLAGS]
    if misplaced and " " in prog:
        hint = (f"`{misplaced[0]}` is a global option: put it before the command "
                f"(`{PROG} {misplaced[0]} {prog.split(' ', 1)[1]} ...`); " + hint)  # fmt: skip
    return UsageError(f"can't run `{prog}`: {what}", hint=hint)


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
        p = sub.add_parser(cmd.name, aliases=list(cmd.aliases), help=cmd.help, description=cmd.help,
                           formatter_class=HelpFormatter)  # fmt: skip
        p.set_defaults(_command=cmd)
        if cmd.module is None:
            p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        elif full is True or only is not None:
            from sifbox.cli.main import load_command

            load_command(cmd).add_arguments(p)
    return parser
