"""Fuzz target: pass 1's fast tar header reader (`sifbox.oci.tarhead`) against `tarfile`.

    python fuzz/fuzz_tarhead.py -max_total_time=60

One input is an uncompressed layer tar stream. It is read twice, as `layers.open_tar` and
`layers.iter_members` read a layer: with tarfile's own `TarInfo`, and with `FastTarInfo`.
Both reads must give the same entries (name, type, size, mode, owner, times, link, device,
PAX records, header and data offsets) and end the same way (the end of the archive, or the
same error). Any difference is a crash; so is any exception other than the clean `LayerError`.
"""

from __future__ import annotations

import io

import fuzzlib

with fuzzlib.instrumented(__name__, ("tarfile",)):
    import tarfile

    from sifbox.oci import layers, tarhead
    from sifbox.util.errors import SifboxError

FIELDS = ("name", "type", "size", "mode", "uid", "gid", "mtime", "linkname", "uname", "gname", "devmajor",
          "devminor", "offset", "offset_data", "pax_headers", "chksum", "sparse")  # fmt: skip
MAX_ENTRIES = 10_000


def read(data: bytes, cls: type[tarfile.TarInfo]) -> str:
    out: list[object] = []
    stream = layers._EndsOnce(io.BufferedReader(io.BytesIO(data)), "t")  # type: ignore[arg-type]
    try:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=cls)  # type: ignore[call-overload]  # noqa: SIM115
        except (tarfile.TarError, ValueError) as err:
            raise layers.LayerError(f"not a tar archive ({err})") from None
        while len(out) < MAX_ENTRIES:
            try:
                m = tf.next()
            except (tarfile.TarError, ValueError) as err:
                raise layers.LayerError(f"corrupt tar data ({err})") from None
            if m is None:
                break
            tf.members = []
            out.append(tuple(getattr(m, f) for f in FIELDS))
    except SifboxError as err:
        out.append(("error", str(err)))
    return repr(out)  # (a NaN mtime equals itself as text)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    fast, slow = read(data, tarhead.FastTarInfo), read(data, tarfile.TarInfo)
    if fast != slow:
        raise AssertionError(f"fast header reader differs from tarfile:\n{fast}\n{slow}")


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="tar")
