"""Fuzz target: a keyserver's machine-readable index (`sifbox.formats.hkp`).

    python fuzz/fuzz_hkp.py -max_total_time=60

One input is the bytes an HKP server answers to `op=index&options=mr`, decoded as `key
search` decodes them, parsed and shown in both of Apptainer's layouts. An `HkpError` is a
clean rejection; any other exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__, ()):
    from sifbox.formats import hkp


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    try:
        index = hkp.parse_index(data.decode("utf-8", "replace"))
        hkp.format_index(index, False, str)
        hkp.format_index(index, True, str)
    except hkp.HkpError:
        return


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
