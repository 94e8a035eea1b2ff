"""conftest's `stage_for_user`: repository files the test user can read wherever the checkout
lies (a clone in root's 0700 home is unreadable to it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.unit.sifcorpus import CORPUS, REPO

pytestmark = pytest.mark.integration


def test_a_staged_file_is_a_readable_copy(  # type: ignore[no-untyped-def]
    run_as, test_user, stage_for_user
) -> None:
    src = REPO / "examples" / "demo.def"
    staged = stage_for_user(src)
    assert staged.parts[:2] == ("/", "tmp") and staged.parts[-2:] == ("examples", "demo.def")
    assert stage_for_user(src) == staged  # copied once per session
    proc = run_as(test_user, ["cat", str(staged)])
    assert (proc.returncode, proc.stdout) == (0, src.read_text()), proc.stderr
    assert run_as(test_user, ["test", "-w", str(staged)]).returncode != 0  # read-only for it


def test_a_staged_directory_is_readable_throughout(  # type: ignore[no-untyped-def]
    run_as, test_user, sif_corpus
) -> None:
    assert sif_corpus != CORPUS and sif_corpus.name == "sif-corpus"
    files = sorted(p.relative_to(CORPUS) for p in CORPUS.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(sif_corpus) for p in sif_corpus.rglob("*") if p.is_file())
    proc = run_as(test_user, ["sh", "-c", 'cd "$1" && find . -type f -exec sha256sum {} +', "sh",
                              str(sif_corpus)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sums = {line[66:] for line in proc.stdout.splitlines()}
    assert sums == {f"./{f}" for f in files}
    one = files[0]
    line = next(ln for ln in proc.stdout.splitlines() if ln.endswith(f"./{one}"))
    assert line[:64] == hashlib.sha256((CORPUS / one).read_bytes()).hexdigest()


def test_only_repository_paths_are_staged(stage_for_user) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="not inside the repository"):
        stage_for_user(Path("/etc/hostname"))


def test_a_directory_staged_after_one_of_its_files_is_whole(  # type: ignore[no-untyped-def]
    stage_for_user,
) -> None:
    here = Path(__file__).parent
    one = stage_for_user(here / "images.py")
    staged = stage_for_user(here)
    assert one.parent == staged
    assert {p.name for p in staged.glob("*.py")} == {p.name for p in here.glob("*.py")}
