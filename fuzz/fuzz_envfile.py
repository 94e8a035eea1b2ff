"""Fuzz target: `--env-file` files (`sifbox.runtime.env.parse_env_file`).

    python fuzz/fuzz_envfile.py -max_total_time=60

One input is the bytes of an env file, decoded as UTF-8 and parsed, then turned into the
overrides script the container sources. A `UsageError` is a clean rejection; any other
exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__, ("shlex",)):
    from sifbox.runtime import env
    from sifbox.util.errors import UsageError


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    text = data.decode("utf-8", "surrogateescape")
    try:
        values = env.parse_env_file(text, "fuzz.env")
    except UsageError:
        return
    env.overrides_script(values)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
