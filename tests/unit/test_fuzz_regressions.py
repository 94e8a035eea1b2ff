"""Inputs that once crashed a fuzz target (fuzz/fuzz_<target>.py) now get a clean answer.

Each file under tests/data/fuzz-regressions/<target>/ is one input, replayed through the
target's `TestOneInput`: it raises only when the parser answers with something other than
its documented error. A smoke run then feeds each target its seeds and a few hundred
deterministic mutations of them (fixed seed), so that no target rots between fuzzing runs.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "fuzz"
REGRESSIONS = REPO / "tests" / "data" / "fuzz-regressions"
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
#: Mutations per target in the smoke run; the slow targets get fewer.
SMOKE = {"sif": 20, "oci_layers": 60, "oci_archive": 60, "store": 60, "sif_open": 80}
SMOKE_DEFAULT = 150


def load(target: str) -> ModuleType:
    name = f"fuzz_{target}"
    if name in sys.modules:
        return sys.modules[name]
    if str(FUZZ) not in sys.path:
        sys.path.append(str(FUZZ))  # the targets import their shared `fuzzlib`
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def regression_inputs() -> list[Path]:
    return sorted(p for p in REGRESSIONS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", regression_inputs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regression(path: Path) -> None:
    target = path.parent.name
    assert target in TARGETS, f"no fuzz target fuzz/fuzz_{target}.py for {path}"
    load(target).TestOneInput(path.read_bytes())


def test_every_target_has_seeds_and_imports_atheris_lazily() -> None:
    had = "atheris" in sys.modules
    for target in TARGETS:
        module = load(target)
        assert callable(module.TestOneInput)
        assert (FUZZ / "corpus" / target).is_dir(), f"no seeds for {target}"
        assert f"fuzz/fuzz_{target}.py" in (module.__doc__ or ""), f"{target}: no run command"
    assert had or "atheris" not in sys.modules


@pytest.mark.parametrize("target", TARGETS)
def test_smoke(target: str) -> None:
    module = load(target)
    fuzzlib = sys.modules["fuzzlib"]
    start = time.monotonic()
    for data in fuzzlib.smoke_inputs(target, SMOKE.get(target, SMOKE_DEFAULT)):
        module.TestOneInput(data)
    assert time.monotonic() - start < 5, "the smoke run of one target should take well under 5 s"


# -- inputs that once took seconds to minutes (made here: they are large) ----------------------
def _tar(entries: list[tuple[str, ...]]) -> bytes:
    """A PAX tar of empty files (`("f", name)`), symbolic links (`("l", name, target)`) and
    files whose PAX header declares a size they do not have (`("s", name, size)`)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in entries:
            kind, name, *arg = entry
            info = tarfile.TarInfo(name)
            if kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, arg[0]
            elif kind == "s":
                info.pax_headers = {"size": arg[0]}
            tf.addfile(info)
    return buf.getvalue()


SEP = b"\n--8<--\n"
SLOW = {
    # a section's leading blank lines were dropped one list copy at a time
    "deffile-leading-blank-lines": (
        "deffile",
        lambda: b"Bootstrap: busybox\n%post\n" + b"\n" * 50_000 + b" x\n",
    ),
    # every [[execgroup]] looked for its own line from the top of the file
    "ecl-5000-execgroups": (
        "ecl",
        lambda: b"".join(
            b'[[execgroup]]\nmode="blacklist"\ndirpath="/d%d"\n' % i for i in range(5000)
        ),
    ),
    # difflib suggested a directive for every unknown line
    "sysconf-10000-unknown-directives": ("sysconf", lambda: b"unknown directive x = 1\n" * 10_000),
    # a dpkg field of many continuation lines was rebuilt on each line
    "sbom-200000-continuation-lines": (
        "sbom",
        lambda: SEP.join([b"", b"Package: a\nVersion: 1\nDescription: x\n" + b" more\n" * 200_000]),
    ),
    # each entry under a symbolic link of 50,000 components walked all of them
    "oci-layers-long-symlink-target": (
        "oci_layers",
        lambda: _tar(
            [("l", "l", "/".join(["a"] * 50_000))] + [("f", f"l/x{i}") for i in range(100)]
        ),
    ),
    # a member declaring 10^11 bytes in a short layer: the tar stream skipped them 16 KiB of
    # nothing at a time (10^20: forever)
    "oci-layers-size-past-the-end": ("oci_layers", lambda: _tar([("s", "f", str(10**11))])),
}


@pytest.mark.parametrize("case", sorted(SLOW))
def test_hostile_input_is_fast(case: str) -> None:
    target, make = SLOW[case]
    data = make()
    start = time.monotonic()
    load(target).TestOneInput(data)
    assert time.monotonic() - start < 2, (
        f"{case}: {len(data)} bytes took {time.monotonic() - start:.1f} s"
    )


def test_labels_nested_too_deeply() -> None:
    """A labels.json nested deeper than the recursion limit is the usual warning, both for
    `inspect` and for a build over the image (it raised RecursionError)."""
    from sifbox.formats import inspectmeta
    from sifbox.formats import singularityd as sd

    files = {sd.LABELS_JSON: b"[" * 5000}
    warnings: list[str] = []
    meta = inspectmeta.collect(files, [], None, warnings)
    assert meta["data"]["attributes"]["labels"] == {}
    assert warnings == ["Unable to parse labels of the image: not JSON (nested too deeply)"]
    entries, warnings = sd.finish(sd.ImageMeta(), sd.Existing(files), sd.BuildInfo("amd64", 0, "1"))
    assert warnings == [
        f"Ignoring the labels of the base image: {sd.LABELS_JSON} is not JSON (nested too deeply)"
    ]
    assert sd.LABELS_JSON in sd.files_of(entries)


def test_lone_surrogates_of_an_image_config_become_u_fffd() -> None:
    """`"\\ud800"` is valid JSON, not valid Unicode: Go's decoder makes it U+FFFD, and so does
    a pull (it raised UnicodeEncodeError writing the runscript, env script and labels)."""
    import json

    from sifbox.formats import singularityd as sd
    from sifbox.oci import imageconfig

    config = json.loads(
        r'{"architecture": "amd\ud800", "config": {"Cmd": ["a\ud800"], "Env": ["X=\udfff"],'
        r' "Labels": {"k\udc00": "v\ud800"}}}'
    )
    files = sd.files_of(imageconfig.tree(config, arch=config["architecture"],
                                         source="docker://x", epoch=0, version="1"))  # fmt: skip
    labels = json.loads(files[sd.LABELS_JSON])
    assert labels["k\ufffd"] == "v\ufffd"
    assert labels["org.label-schema.build-arch"] == "amd\ufffd"
    assert "'a\ufffd'".encode() in files[sd.RUNSCRIPT]
    assert 'X="${X:-"\ufffd"}"'.encode() in files[sd.ENV_DOCKER]


def test_build_arg_file_not_utf8(tmp_path: Path) -> None:
    """A --build-arg-file that is not UTF-8 is a usage error (it was a UnicodeDecodeError)."""
    from sifbox.cli.commands.build import request
    from sifbox.cli.parser import build_parser
    from sifbox.util.errors import UsageError

    args_file = tmp_path / "args"
    args_file.write_bytes(b"A=caf\xe9\n")
    args = build_parser("build").parse_args(
        ["build", "--build-arg-file", str(args_file), "o.sif", "x.def"]
    )
    with pytest.raises(UsageError, match="not UTF-8 text"):
        request(args)


def test_sif_with_2_to_the_22_descriptors_in_a_sparse_file(tmp_path: Path) -> None:
    """A sparse file costs nothing to make: a header declaring millions of descriptors made
    the reader read and parse gigabytes; it is refused from the header."""
    from sifbox.formats.sif import SifError, SifImage
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.layout import _HEADER

    total = 1 << 22
    table = total * c.DESCRIPTOR_SIZE
    header = _HEADER.pack(b"", c.MAGIC, c.VERSION, c.ARCH_UNKNOWN, bytes(16), 0, 0, total, total,
                          4096, table, 4096 + table, 0)  # fmt: skip
    path = tmp_path / "sparse.sif"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(4096 + table)
    start = time.monotonic()
    with open(path, "rb") as f, pytest.raises(SifError, match="descriptors, sifbox reads at most"):
        SifImage.load(f)
    assert time.monotonic() - start < 1
