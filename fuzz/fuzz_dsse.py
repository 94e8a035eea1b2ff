"""Fuzz target: DSSE envelopes and the signed metadata they carry (`sifbox.security.dsse`,
`sifbox.security.integrity.parse_metadata`).

    python fuzz/fuzz_dsse.py -max_total_time=60

One input is the bytes of a signature object (or of signed metadata alone). `parse_envelope`
answers None (not an envelope) or an Envelope, never an exception; `verify_envelope` with
the public keys under fuzz/keys/ answers the keys or a `DsseError`; the payload is then
parsed as SIF signature metadata (an `IntegrityError` is a clean rejection). Any other
exception is a crash.
"""

from __future__ import annotations

from pathlib import Path

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.security import dsse, integrity
    from sifbox.security.integrity import IntegrityError

KEYS = [
    dsse.load_public_key(p.read_bytes())
    for p in sorted((Path(__file__).parent / "keys").glob("*.pem"))
]


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    env = dsse.parse_envelope(data)
    if env is None:
        try:  # the payload of an envelope, as a seed without its envelope
            integrity.parse_metadata(data)
        except IntegrityError:
            pass
        return
    try:
        dsse.verify_envelope(env, KEYS)
    except dsse.DsseError:
        pass
    try:
        integrity.parse_metadata(env.payload)
    except IntegrityError:
        pass


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
