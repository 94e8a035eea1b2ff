"""Fuzz target: ecl.toml (`sifbox.security.ecl.parse`).

    python fuzz/fuzz_ecl.py -max_total_time=60

One input is the bytes of an ecl.toml, decoded and parsed as `ecl.load()` does, then each
execgroup is explained. An `EclError` is a clean rejection; any other exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__, ("tomllib",)):
    import tomllib  # noqa: F401 - imported by ecl.parse when called

    from sifbox.security import ecl
    from sifbox.security.ecl import EclError


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # `ecl.load` says "not UTF-8 text"
    try:
        cfg = ecl.parse(text, "ecl.toml")
    except EclError:
        return
    for group in cfg.groups:
        ecl.Decision(
            False, "fuzz", group, set(group.keyfp[:1]), set(group.keyfp[1:2]), cfg
        ).explain()


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="toml")
