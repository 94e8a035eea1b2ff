"""The /.singularity.d writers, apt source lists and mksquashfs options (pure)."""

from __future__ import annotations

import json

from sifbox.build.assemble import SquashOptions
from sifbox.formats import imagemeta
from sifbox.formats.aptsources import first_mirror, mirrors
from sifbox.formats.deffile import parse_deffile

DEF = """Bootstrap: busybox
MirrorURL: /bin/busybox

%environment
    export A=1
%runscript
    echo run
%startscript
    echo start
%test
    true
%help
    Help text.
%labels
    Owner me
%apprun tool
    echo tool
%appenv tool
    export T=1
"""


def test_base_files_layout() -> None:
    files = imagemeta.base_files()
    for name in ("exec", "run", "shell", "start", "test"):
        data, mode = files[f"/.singularity.d/actions/{name}"]
        assert data.startswith(b"#!/bin/sh") and mode == 0o755
    for name in (
        "01-base.sh",
        "90-environment.sh",
        "95-apps.sh",
        "99-base.sh",
        "99-runtimevars.sh",
    ):
        assert f"/.singularity.d/env/{name}" in files


def test_stage_files() -> None:
    d = parse_deffile(DEF, "demo.def")
    labels = imagemeta.default_labels(d.final, arch="amd64", epoch=0, version="0.1.0")
    labels.update(d.final.labels)
    files = imagemeta.stage_files(d.final, d.text, labels)
    assert files["/.singularity.d/Singularity"][0] == DEF.encode()
    assert files["/.singularity.d/runscript"] == (b"#!/bin/sh\n\n    echo run\n", 0o755)
    assert files["/.singularity.d/startscript"][0].endswith(b"echo start\n")
    assert b"export A=1" in files["/.singularity.d/env/90-environment.sh"][0]
    assert files["/.singularity.d/runscript.help"][0] == b"    Help text.\n"
    got = json.loads(files["/.singularity.d/labels.json"][0])
    assert got["Owner"] == "me"
    assert got["org.label-schema.build-arch"] == "amd64"
    assert got["org.label-schema.build-date"] == "Thursday_01_January_1970_00:00:00_UTC"
    assert got["org.label-schema.schema-version"] == "1.0"
    assert got["org.label-schema.usage.singularity.deffile.bootstrap"] == "busybox"
    assert list(got) == sorted(got)
    assert b"SCIF_APPROOT_tool=/scif/apps/tool" in files["/.singularity.d/env/94-appsbase.sh"][0]


def test_app_files() -> None:
    d = parse_deffile(DEF)
    files = imagemeta.app_files(d.final.apps["tool"])
    assert files["/scif/apps/tool/scif/runscript"][0] == b"#!/bin/sh\n\n    echo tool\n"
    assert b"export T=1" in files["/scif/apps/tool/scif/env/90-environment.sh"][0]
    assert json.loads(files["/scif/apps/tool/scif/labels.json"][0]) == {"SCIF_APP_NAME": "tool"}
    assert "/scif/data/tool/input" in imagemeta.app_dirs("tool")


def test_inspect_metadata() -> None:
    meta = json.loads(
        imagemeta.inspect_metadata(
            {"a": "b"}, {"/.singularity.d/runscript": (b"#!/bin/sh\n", 0)}, "X"
        )
    )
    assert meta["type"] == "container"
    assert meta["data"]["attributes"]["labels"] == {"a": "b"}
    assert meta["data"]["attributes"]["runscript"] == "#!/bin/sh\n"
    assert meta["data"]["attributes"]["deffile"] == "X"


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
