"""`sifbox help [COMMAND [SUBCOMMAND...]]`: help about any command."""

from __future__ import annotations

import argparse

from sifbox.util.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", nargs="*", metavar="COMMAND", help="command to show the help of")


def main(args: argparse.Namespace) -> int:
    from sifbox.cli.parser import build_parser

    parser: argparse.ArgumentParser = build_parser(full=args.topic[0] if args.topic else False)
    for word in args.topic:
        choices = _subcommands(parser)
        if word not in choices:
            raise UsageError(
                f"can't show help for `{' '.join(args.topic)}`: unknown command `{word}`",
                hint="`sifbox help` lists the commands",
            )
        parser = choices[word]
    parser.print_help()
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
