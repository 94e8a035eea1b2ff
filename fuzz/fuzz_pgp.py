"""Fuzz target: OpenPGP framing and packets (`sifbox.security.pgp`, `keys.parse_colons`).

    python fuzz/fuzz_pgp.py -max_total_time=60

One input is the bytes of a signature object or of a key file. It is decoded as a
clear-signed message (None when it is not one) and its signature packet's hash algorithm
read; as a legacy `SIFHASH:` plaintext; as an armored or binary keyring split into packets
and keys (a `PgpError` is a clean rejection); and as `gpg --with-colons` output, the text
that `sifbox key list` reads back from gpg about the keys a user imports. Any other
exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.security import integrity, keys, pgp
    from sifbox.security.integrity import IntegrityError


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    clear = pgp.decode_clearsign(data)
    if clear is not None:
        pgp.signature_hash_algo(clear.signature)
        for hash_type in (1, 2, 3, 9):
            try:
                integrity.legacy_digest(clear.plaintext, hash_type)
            except IntegrityError:
                pass
    pgp.signature_hash_algo(data)
    pgp.canonical_text(data)
    try:
        pgp.split_keys(pgp.dearmor(data))
    except pgp.PgpError:
        pass
    for k in keys.parse_colons(data.decode("utf-8", "replace")):
        keys.format_key(1, k)
        k.as_dict()


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="pgp")
