"""Fuzz target: remote.yaml (`sifbox.formats.remoteconf.parse`).

    python fuzz/fuzz_remoteconf.py -max_total_time=60

One input is the bytes of a remote.yaml, parsed; what parses is written back and must parse
to the same configuration. A `RemoteConfError` is a clean rejection; any other exception
(or a round trip that changes the configuration) is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__, ("yaml",)):
    from sifbox.formats import remoteconf


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    try:
        conf = remoteconf.parse(data)
    except remoteconf.RemoteConfError:
        return
    assert remoteconf.parse(remoteconf.dump(conf)) == conf


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
