"""sifbox._boot: the installed launcher's one-file module bundle."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sifbox import _boot


def _package(root: Path) -> Path:
    pkg = root / "bpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 'top'\n")
    (pkg / "one.py").write_text("from __future__ import annotations\nfrom bpkg.sub import two\nX = two.Y + 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "two.py").write_text("Y = 41\n")
    (pkg / "sub" / "boom.py").write_text("def fail():\n    raise RuntimeError('from the bundle')\n")
    (pkg / "data").mkdir()
    (pkg / "data" / "note.txt").write_text("data file\n")
    return pkg


def _run(root: Path, bundle: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh, isolated Python with the bundle installed for bpkg."""
    boot = Path(_boot.__file__).parent.parent
    script = textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(boot)!r})
        from sifbox import _boot
        sys.path.append({str(root)!r})
        used = _boot.install({str(bundle)!r}, {str(root / "bpkg")!r})
        """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, check=False)


def _words(root: Path, bundle: Path, body: str) -> list[str]:
    proc = _run(root, bundle, body)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    """The test package and its freshly built bundle."""
    pkg = _package(tmp_path)
    bundle = tmp_path / "b.bundle"
    _boot.build(str(pkg), str(bundle))
    return pkg, bundle


def test_build_indexes_every_module(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    bundle = tmp_path / "b.bundle"
    assert _boot.build(str(pkg), str(bundle)) == 5
    finder = _boot.load(str(bundle), str(pkg))
    assert finder is not None
    assert sorted(finder.index) == ["bpkg", "bpkg.one", "bpkg.sub", "bpkg.sub.boom", "bpkg.sub.two"]
    assert oct(bundle.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_modules_come_from_the_bundle_with_their_real_paths(built: tuple[Path, Path]) -> None:
    pkg, bundle = built
    # Served from the bundle, the imports leave no __pycache__ next to the sources (checked below).
    proc = _run(pkg.parent, bundle, """\
        import os, bpkg.one, bpkg.sub.two
        assert used
        assert bpkg.one.X == 42
        assert bpkg.one.__file__ == os.path.join(sys.path[-1], "bpkg", "one.py"), bpkg.one.__file__
        assert bpkg.__path__ == [os.path.join(sys.path[-1], "bpkg")]
        assert type(bpkg.one.__loader__).__name__ == "BundleFinder"
        assert open(os.path.join(os.path.dirname(bpkg.__file__), "data", "note.txt")).read() == "data file\\n"
        print("ok")
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert not list(pkg.rglob("__pycache__")), "the bundle, not the source files, served the imports"


def test_tracebacks_show_the_source_lines(built: tuple[Path, Path]) -> None:
    pkg, bundle = built
    proc = _run(pkg.parent, bundle, "import bpkg.sub.boom\nbpkg.sub.boom.fail()\n")
    assert proc.returncode == 1
    assert "boom.py\", line 2, in fail" in proc.stderr
    assert "raise RuntimeError('from the bundle')" in proc.stderr


def test_a_module_added_after_the_build_is_imported_from_its_file(built: tuple[Path, Path]) -> None:
    pkg, bundle = built
    (pkg / "sub" / "late.py").write_text("Z = 7\n")
    body = "import bpkg.sub.late\nprint(bpkg.sub.late.Z, type(bpkg.sub.late.__loader__).__name__)\n"
    assert _words(pkg.parent, bundle, body) == ["7", "SourceFileLoader"]


def test_a_reinstalled_package_makes_the_bundle_stale(built: tuple[Path, Path]) -> None:
    pkg, bundle = built
    (pkg / "__init__.py").write_text("VALUE = 'reinstalled'\n")
    assert _words(pkg.parent, bundle, "import bpkg\nprint(used, bpkg.VALUE)\n") == ["False", "reinstalled"]


@pytest.mark.parametrize("content", [b"", b"\x05\x00\x00\x00junk", b"\xff\xff\xff\xff"])
def test_a_damaged_or_missing_bundle_is_ignored(tmp_path: Path, content: bytes) -> None:
    pkg = _package(tmp_path)
    bundle = tmp_path / "b.bundle"
    bundle.write_bytes(content)
    assert _boot.load(str(bundle), str(pkg)) is None
    assert _boot.load(str(tmp_path / "absent"), str(pkg)) is None


def test_a_truncated_bundle_is_ignored(built: tuple[Path, Path]) -> None:
    pkg, bundle = built
    bundle.write_bytes(bundle.read_bytes()[:-10])
    assert _boot.load(str(bundle), str(pkg)) is None
    assert _words(pkg.parent, bundle, "import bpkg.one\nprint(used, bpkg.one.X)\n") == ["False", "42"]


def test_the_finder_leaks_no_descriptor_when_it_refuses(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    bundle = tmp_path / "b.bundle"
    bundle.write_bytes(b"\x05\x00\x00\x00junk")
    before = sorted(os.listdir("/proc/self/fd"))
    assert _boot.load(str(bundle), str(pkg)) is None
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_bundle_of_another_python_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(tmp_path)
    bundle = tmp_path / "b.bundle"
    monkeypatch.setattr(_boot, "MAGIC_NUMBER", b"\x00\x00\r\n")
    _boot.build(str(pkg), str(bundle))
    monkeypatch.undo()
    assert _boot.load(str(bundle), str(pkg)) is None


def test_the_command_line_builds_a_bundle(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    bundle = tmp_path / "cli.bundle"
    env = {**os.environ, "PYTHONPATH": str(Path(_boot.__file__).parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "sifbox._boot", "build", str(pkg), str(bundle)],
                          capture_output=True, text=True, env=env, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{bundle}: 5 modules"
    bad = subprocess.run([sys.executable, "-m", "sifbox._boot"], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_postponed_annotations_without_importing_future(tmp_path: Path) -> None:
    """`from __future__ import annotations` keeps its meaning (annotations are not evaluated)
    without an import of the __future__ module from sys.path when the module runs."""
    pkg = _package(tmp_path)
    (pkg / "lazy.py").write_text('"""Doc."""\n\nfrom __future__ import annotations\n\n\n'
                                 "def f(x: Undefined) -> None:\n    return None\n")  # fmt: skip
    bundle = tmp_path / "b.bundle"
    _boot.build(str(pkg), str(bundle))
    words = _words(tmp_path, bundle, """
        sys.modules.pop("__future__", None)  # (imported by _boot itself, from its source file)
        import bpkg.lazy, bpkg.one
        print(bpkg.lazy.f.__annotations__ == {"x": "Undefined", "return": "None"}, bpkg.lazy.__doc__, bpkg.one.X,
              "__future__" in sys.modules)
        """)
    assert words == ["True", "Doc.", "42", "False"]
