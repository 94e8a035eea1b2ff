"""`sifbox build` options -> BuildRequest, and what a build source is (no tools run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sifbox.build.pipeline import BuildRequest, load_definition, output_format
from sifbox.cli.parser import build_parser
from sifbox.util.errors import UsageError


def _request(argv: list[str]):  # type: ignore[no-untyped-def]
    from sifbox.cli.commands.build import request

    args = build_parser("build").parse_args(["build", *argv])
    return request(args)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SOURCE_DATE_EPOCH", "SIFBOX_SANDBOX", "APPTAINER_NOTEST", "SIFBOX_MESSAGELEVEL"):
        monkeypatch.delenv(var, raising=False)


def test_output_format() -> None:
    assert output_format("a.sif", False) == "sif"
    assert output_format("a.sqfs", False) == output_format("a.squashfs", False) == "squashfs"
    assert output_format("a.sif", True) == "sandbox"


def test_request_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args_file = tmp_path / "args"
    args_file.write_text("A=from-file\nB=file\n")
    req = _request(["--build-arg-file", str(args_file), "--build-arg", "A=cli", "--section", "post,files",
                    "--notest", "-B", "/data", "out.sif", "x.def"])  # fmt: skip
    assert req.build_args == {"A": "cli", "B": "file"}
    assert req.sections == frozenset({"post", "files"})
    assert req.notest and req.binds == ("/data",) and req.fmt == "sif" and req.epoch is None
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "42")
    monkeypatch.setenv("APPTAINER_NOTEST", "1")
    req = _request(["-s", "box/", "x.def"])
    assert (req.epoch, req.fmt, req.output, req.notest) == (42, "sandbox", "box", True)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert _request(["--reproducible", "o.sif", "x.def"]).epoch == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--section", "postt", "o.sif", "x.def"], "can't use --section `postt`: unknown section"),
        (
            ["--build-arg", "nope", "o.sif", "x.def"],
            "can't use --build-arg `nope`: expected NAME=VALUE",
        ),
        (["--build-arg-file", "/nonexistent/args", "o.sif", "x.def"], "can't read build-arg file"),
    ],
)
def test_request_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        _request(argv)


def test_bad_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH `yesterday`"):
        _request(["o.sif", "x.def"])


def test_sources(tmp_path: Path) -> None:
    d, converted = load_definition(BuildRequest("o.sif", "docker://alpine:3"))
    assert converted and d.final.bootstrap == "docker" and d.final.get("from") == "alpine:3"
    d, converted = load_definition(BuildRequest("o.sif", "oci-archive:/x.tar"))
    assert converted and d.final.bootstrap == "oci-archive" and d.final.get("from") == "/x.tar"
    d, converted = load_definition(BuildRequest("o.sif", str(tmp_path)))
    assert converted and d.final.bootstrap == "localimage"
    deffile = tmp_path / "a.def"
    deffile.write_text("Bootstrap: scratch\n%post\n  echo {{ X }}\n")
    d, converted = load_definition(BuildRequest("o.sif", str(deffile), build_args={"X": "1"}))
    assert not converted and d.final.post is not None and d.final.post.text == "  echo 1\n"
    with pytest.raises(UsageError, match="no such file"):
        load_definition(BuildRequest("o.sif", str(tmp_path / "missing.def")))
