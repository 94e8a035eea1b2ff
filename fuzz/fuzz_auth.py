"""Fuzz target: registry credentials files and challenges (`sifbox.oci.auth`).

    python fuzz/fuzz_auth.py -max_total_time=60

One input is a Docker/containers auth file (`~/.docker/config.json`, `auth.json`, the file
`sifbox registry login` writes), optionally followed by `fuzzlib.SEP` and the value of a
registry's `WWW-Authenticate` header. The file is read from an anonymous memory file, searched
for `registry.fuzz/team/app` (a credential helper it names is looked for on PATH and, where
none is installed, not run) and its logins listed; the header is parsed.
An `AuthError` is a clean rejection; any other exception is a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.oci import auth
    from sifbox.oci.auth import AuthError


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    doc, _, challenge = data.partition(fuzzlib.SEP)
    auth.parse_challenge(challenge.decode("latin-1"))  # http.client decodes headers so
    fd = fuzzlib.memfd(doc, "auth.json")
    path = Path(f"/proc/self/fd/{fd}")
    try:
        try:
            auth.lookup_file(path, "registry.fuzz", "team/app")
            list(auth.list_logins(path))
        except AuthError:
            pass
    finally:
        os.close(fd)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
