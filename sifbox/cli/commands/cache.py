"""`sifbox cache`: show and clean the image cache (Apptainer's commands and output).

    sifbox cache list [-v] [-T TYPE[,TYPE...]]
    sifbox cache clean [-f] [-T TYPE[,TYPE...]] [-D DAYS] [-n]

Types: blob (OCI blobs), oci (SIF images converted from OCI images), library, oras, shub,
net, all. The cache is $SIFBOX_CACHEDIR (else $APPTAINER_CACHEDIR, else ~/.cache/sifbox).
"""

from __future__ import annotations

import argparse
import sys
import time

from sifbox.util.errors import UsageError

TYPES_HELP = "a list of cache types: library, oci, shub, blob, net, oras, all (default: all)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", metavar="COMMAND", title="commands")
    sub.required = True
    listing = sub.add_parser(
        "list", help="List your local sifbox cache", description="List your local sifbox cache"
    )
    listing.add_argument("-T", "--type", default="all", help=TYPES_HELP)
    listing.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        dest="list_verbose",
        help="include cache entries in the output",
    )

    clean = sub.add_parser(
        "clean", help="Clean your local sifbox cache", description="Clean your local sifbox cache"
    )
    clean.add_argument("-T", "--type", default="all", help=TYPES_HELP)
    clean.add_argument(
        "-D",
        "--days",
        type=int,
        default=0,
        metavar="N",
        help="remove all cache entries older than N days",
    )
    clean.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="show what would be removed without removing it",
    )
    clean.add_argument(
        "-f", "--force", action="store_true", help="suppress any prompts and clean the cache"
    )


def parse_types(text: str) -> tuple[str, ...]:
    from sifbox.oci.cache import ALL_TYPES

    wanted: list[str] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        if word == "all":
            return ALL_TYPES
        if word not in ALL_TYPES:
            raise UsageError(
                f"can't use cache type `{word}`: not one of {', '.join(ALL_TYPES)}, all"
            )
        wanted.append(word)
    return tuple(dict.fromkeys(wanted)) or ALL_TYPES


def human_size(size: int) -> str:
    """Apptainer's sizes: KiB below 1 MiB, then MiB, GiB, TiB, two decimals."""
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def _cache():  # type: ignore[no-untyped-def]
    from sifbox.oci.cache import Cache, default_cache_dir

    root = default_cache_dir()
    return Cache(root) if root.exists() else None


def _list(args: argparse.Namespace) -> int:
    types = parse_types(args.type)
    cache = _cache()
    entries = cache.entries(types) if cache else []
    out = sys.stdout
    if args.list_verbose:
        out.write(f"{'NAME':<24} {'DATE CREATED':<22} {'SIZE':<16} TYPE\n")
        for e in entries:
            date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.mtime))
            out.write(f"{e.name[:22]:<24} {date:<22} {human_size(e.size):<16} {e.type}\n")
        out.write("\n")
    blobs = [e for e in entries if e.type == "blob"]
    containers = [e for e in entries if e.type != "blob"]
    c_size, b_size = sum(e.size for e in containers), sum(e.size for e in blobs)
    out.write(
        f"There are {len(containers)} container file(s) using {human_size(c_size)} and "
        f"{len(blobs)} oci blob file(s) using {human_size(b_size)} of space\n"
    )
    out.write(f"Total space used: {human_size(c_size + b_size)}\n")
    return 0


def _confirm(types: tuple[str, ...]) -> bool:
    from sifbox.oci.cache import ALL_TYPES

    if set(types) == set(ALL_TYPES):
        what = "everything in your cache (containers from all sources and OCI blobs)"
    else:
        what = f"your {', '.join(types)} cache entries"
    sys.stdout.write(
        f"This will delete {what}. \n"
        "Hint: You can see exactly what would be deleted by canceling and using the --dry-run option.\n"
        "Do you want to continue? [N/y] "
    )
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _clean(args: argparse.Namespace) -> int:
    from sifbox.util.log import log

    types = parse_types(args.type)
    if args.days < 0:
        raise UsageError(f"can't clean the cache: --days must be 0 or more, not {args.days}")
    if not (args.force or args.dry_run) and not _confirm(types):
        log.info("Handle cleanup canceled")
        return 0
    cache = _cache()
    if cache is None:
        return 0
    cutoff = time.time() - args.days * 86400 if args.days else None
    for entry in cache.entries(types):
        if cutoff is not None and entry.mtime >= cutoff:
            continue
        if args.dry_run:
            sys.stdout.write(f"Would remove {entry.type} cache entry: {entry.path}\n")
            continue
        log.info("Removing %s cache entry: %s", entry.type, entry.name)
        if not cache.remove(entry):
            log.warning("Skipping %s cache entry %s: a pull is using it", entry.type, entry.name)
    if not args.dry_run:
        cache.prune(layouts="blob" in types)
    return 0


def main(args: argparse.Namespace) -> int:
    return {"list": _list, "clean": _clean}[args.cache_command](args)
