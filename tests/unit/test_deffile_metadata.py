"""apt source lists and mksquashfs options (pure); the /.singularity.d writer is
tested in test_singularityd.py."""

from __future__ import annotations

from sifbox.build.assemble import SquashOptions
from sifbox.formats.aptsources import first_mirror, mirrors


def test_apt_sources_both_formats() -> None:
    deb822 = """Types: deb
# a comment
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
"""
    assert mirrors("x.sources", deb822) == [
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
    ]
    one_line = "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n# deb http://x y z\n"
    assert mirrors("sources.list", one_line) == ["http://mirror.example/debian"]
    assert (
        first_mirror(
            [
                (
                    "a.list",
                    "deb http://security.debian.org/debian-security bookworm-security main\n",
                ),
                ("b.sources", deb822),
            ]
        )
        == "http://deb.debian.org/debian"
    )
    assert first_mirror([("a.list", "")]) is None
    disabled = "Types: deb\nURIs: http://off/\nEnabled: no\n"
    assert mirrors("c.sources", disabled) == []


def test_mksquashfs_options() -> None:
    argv = SquashOptions("mksquashfs").argv("/r", "/o")
    assert argv[:3] == ["mksquashfs", "/r", "/o"]
    assert argv[argv.index("-comp") + 1] == "zstd"
    assert argv[argv.index("-Xcompression-level") + 1] == "3"
    assert "-no-progress" in argv
    argv = SquashOptions(
        "m", procs=2, mem="1G", compression="xz", epoch=5, extra_args=("-b", "1M")
    ).argv("r", "o")
    assert argv[argv.index("-processors") + 1] == "2" and argv[argv.index("-mem") + 1] == "1G"
    assert "-Xcompression-level" not in argv
    assert argv[argv.index("-mkfs-time") + 1] == "5" and argv[argv.index("-all-time") + 1] == "5"
    assert argv[-2:] == ["-b", "1M"]
    assert "-no-progress" not in SquashOptions("m", progress=True).argv("r", "o")
