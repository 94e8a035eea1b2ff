"""Fuzz target: the package databases an SBOM is made from, and stored SBOMs
(`sifbox.security.sbom`).

    python fuzz/fuzz_sbom.py -max_total_time=60

One input is up to seven files of an image, separated by `fuzzlib.SEP`: /etc/os-release,
/var/lib/dpkg/status, /lib/apk/db/installed, a Python METADATA, a conda-meta JSON, one RPM
header blob (a row of rpmdb.sqlite's Packages table), and an SBOM document (CycloneDX or SPDX
JSON, as stored in a SIF). The files go through `components_from_files` and the SPDX renderer,
the header through `parse_rpm_header` (its caller skips a row on ValueError or struct.error),
the document through `purls_of_document`. A `SifboxError` is a clean rejection; any other
exception is a crash.
"""

from __future__ import annotations

import struct

import fuzzlib

with fuzzlib.instrumented(__name__):
    import email.parser  # noqa: F401 - imported by parse_python_metadata when called

    import packageurl  # noqa: F401 - imported by sbom._purl when called

    from sifbox.security import sbom
    from sifbox.util.errors import SifboxError

PATHS = (
    "/etc/os-release",
    sbom.DPKG_STATUS,
    sbom.APK_INSTALLED,
    "/usr/lib/python3/dist-packages/fuzz-1.0.dist-info/METADATA",
    "/opt/conda/conda-meta/fuzz-1.0-0.json",
)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    parts = data.split(fuzzlib.SEP, 6)
    files = {path: part for path, part in zip(PATHS, parts)}
    try:
        sbom.spdx_json(sbom.components_from_files(files), "fuzz.sif")
    except SifboxError:
        pass
    if len(parts) > 5:
        try:
            sbom.parse_rpm_header(parts[5])
        except (ValueError, struct.error):
            pass
    if len(parts) > 6:
        try:
            sbom.purls_of_document(parts[6])
        except SifboxError:
            pass


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
