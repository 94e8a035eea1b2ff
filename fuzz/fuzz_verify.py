"""Fuzz target: SIF signature verification (`sifbox.security.verify`), DSSE path.

    python fuzz/fuzz_verify.py -max_total_time=60

One input is one SIF image, verified as `sifbox verify --key KEY` verifies it with the
public keys under fuzz/keys/ (public test keys of the SIF conformance corpus), and without a
PGP keyring (gpgv is a separate process, too slow to fuzz through): signature objects are
found, DSSE envelopes decoded and checked, their signed metadata parsed and compared with
the image, legacy signatures recognised; `signed_by` reads the signers from the descriptors
alone. A `SifError` (the image) or an `IntegrityError` (the signatures) is a clean
rejection; any other exception is a crash.
"""

from __future__ import annotations

import io
from pathlib import Path

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.formats.sif import SifError, SifImage
    from sifbox.security import dsse, integrity, pgp  # noqa: F401 - imported by verify
    from sifbox.security import verify as v
    from sifbox.security.integrity import IntegrityError

KEYS = [
    dsse.load_public_key(p.read_bytes())
    for p in sorted((Path(__file__).parent / "keys").glob("*.pem"))
]


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    try:
        img = SifImage.load(io.BytesIO(data))
    except SifError:
        return
    legacy = bool(data) and data[-1] & 1 == 1
    for run in (
        lambda: v.verify_image(
            img, v.KeyMaterial(None, KEYS), legacy=legacy, callback=lambda r: True
        ),
        lambda: v.signed_by(img, legacy=legacy),
    ):
        try:
            run()
        except (IntegrityError, SifError):
            pass


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput)
