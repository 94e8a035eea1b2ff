"""What every fuzz target under fuzz/ shares: the libFuzzer command line, the corpus
directories, and a small deterministic mutator for the unit tests' smoke runs.

A target is a script `fuzz/fuzz_<name>.py` that imports the code under test inside
`with fuzzlib.instrumented(__name__):`, defines `TestOneInput(data: bytes)` and ends with
`fuzzlib.main(__file__, TestOneInput)`. `TestOneInput` feeds the bytes to the
real parser the way sifbox calls it; the parser's documented error is a clean rejection
and returns, anything else propagates and is a crash. atheris is imported only in
`main`, so the unit tests run the targets without it.

Directories, relative to the repository:

    fuzz/corpus/<name>/      seeds, kept in git (real inputs of the project)
    fuzz/work/<name>/        what the fuzzer adds (ignored by git)
    fuzz/artifacts/<name>/   crash-*, timeout-*, oom-* inputs (ignored by git)

`python fuzz/fuzz_<name>.py [libFuzzer options] [DIR...]` fuzzes with those directories
unless DIRs are given, with `-rss_limit_mb=2048 -timeout=10` unless given; a FILE
argument replays that one input.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import the work tree's sifbox
    sys.path.insert(0, str(REPO))

#: Splits one input into several documents (layers, blobs, ...) for the targets that need more
#: than one; seeds use it, mutations may move or break it, which is fine.
SEP = b"\n--8<--\n"

DEFAULT_OPTIONS = ("-rss_limit_mb=2048", "-timeout=10")


@contextlib.contextmanager
def instrumented(module_name: str, extra: tuple[str, ...] = ()) -> Iterator[None]:
    """Imports in this block get coverage instrumentation when the target runs as a script
    (sifbox's modules, and the standard ones named in `extra` that are not loaded yet):
    instrumenting every loaded function instead costs about 15 s per start."""
    if module_name != "__main__":
        yield
        return
    import atheris

    with atheris.instrument_imports(include=["sifbox", *extra]):
        yield


def name_of(script: str) -> str:
    return Path(script).stem.removeprefix("fuzz_")


def seeds_dir(name: str) -> Path:
    return FUZZ / "corpus" / name


def seeds(name: str) -> list[bytes]:
    d = seeds_dir(name)
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


def main(
    script: str,
    test_one_input: Callable[[bytes], None],
    argv: list[str] | None = None,
    *,
    dictionary: str | None = None,
) -> None:
    """Run libFuzzer (atheris) on `test_one_input` with this repository's directories and,
    unless `-dict=` is given, the token list fuzz/dicts/<dictionary>.dict."""
    import logging

    import atheris  # only here: the targets themselves run without atheris

    logging.disable(logging.CRITICAL)  # sifbox's progress lines would flood the output

    name = name_of(script)
    args = list(sys.argv if argv is None else argv)
    opts = [a for a in args[1:] if a.startswith("-")]
    paths = [a for a in args[1:] if not a.startswith("-")]
    for default in DEFAULT_OPTIONS:
        if not any(o.startswith(default.split("=")[0] + "=") for o in opts):
            opts.append(default)
    if not any(o.startswith("-artifact_prefix=") for o in opts):
        artifacts = FUZZ / "artifacts" / name
        artifacts.mkdir(parents=True, exist_ok=True)
        opts.append(f"-artifact_prefix={artifacts}/")
    if dictionary and not any(o.startswith("-dict=") for o in opts):
        opts.append(f"-dict={FUZZ / 'dicts' / (dictionary + '.dict')}")
    if not paths:
        work = FUZZ / "work" / name
        work.mkdir(parents=True, exist_ok=True)
        paths = [str(work), str(seeds_dir(name))]
    atheris.Setup([args[0], *opts, *paths], test_one_input)
    atheris.Fuzz()


# -- the smoke runs of the unit tests --------------------------------------------------------
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1, 2**31]
_TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b"null",
    b"1e999",
    b"-1",
    b"\0",
    b"\n",
    b"{{",
    b"}}",
    b"%",
    b"=",
    b"/",
    b"..",
    b".wh.",
    b"\xff",
    b"[" * 64,
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of `data`: flips, overwrites with boundary values, token
    insertions, deletions, duplications, truncation."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
            buf[pos : pos + width] = value.to_bytes(width, rng.choice(("little", "big")))
        elif op == 2:
            buf[pos:pos] = rng.choice(_TOKENS)
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start : start + rng.randint(1, 256)]
            buf[pos:pos] = chunk
        elif op == 5:
            del buf[pos:]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


def smoke_inputs(name: str, count: int, seed: int = 0) -> list[bytes]:
    """The seeds of target `name`, then `count` mutations of them (deterministic)."""
    base = seeds(name) or [b""]
    rng = random.Random(f"{name}:{seed}")
    return base + [mutate(rng.choice(base), rng) for _ in range(count)]


def memfd(data: bytes, name: str = "fuzz") -> int:
    """An anonymous file holding `data` (its path: /proc/self/fd/N); the caller closes it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
