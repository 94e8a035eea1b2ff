"""`sifbox.util.paths`: resolving container paths inside an untrusted root.

The root is a tree under tmp_path that plays an image's root file system,
with the symlinks a hostile image may hold (`/home -> /etc`,
`/tmp -> ../../..`, loops). Whatever the path, the answer stays inside the
root, and `create=` never makes anything outside it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sifbox.util.paths import MAX_LINKS, chase, chase_existing

#: A name no host has in /etc: if a symlink were followed on the host,
#: create= would make it there.
UNIQUE = f"sifbox-test-paths-{os.getpid()}"


def _tree(base: Path) -> tuple[str, Path]:
    """An image-like root beside a sentinel `outside` directory."""
    root = base / "root"
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host\n")
    for d in ("etc", "usr/lib", "usr/bin", "var", "data/sub"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "data/file").write_text("x")
    (root / "etc_abs").symlink_to("/etc")  # absolute: means ROOT/etc
    (root / "home").symlink_to("/etc")  # the classic /home -> /etc
    (root / "usr/lib64").symlink_to("lib")  # relative, same directory
    (root / "usr/bin/up").symlink_to("../lib")  # relative with ..
    (root / "tmp").symlink_to("../../..")  # escapes the root if followed naively
    (root / "deep_escape").symlink_to("/../../../../etc")
    (root / "outside_abs").symlink_to(str(outside))  # absolute host path of a real dir
    (root / "dangling").symlink_to(f"/nonexistent/{UNIQUE}")
    (root / "dangling_up").symlink_to(f"../../../{UNIQUE}-up")
    (root / "to_etc_unique").symlink_to(f"/etc/{UNIQUE}")
    (root / "chain1").symlink_to("chain2")
    (root / "chain2").symlink_to("/etc_abs")
    (root / "loop_a").symlink_to("loop_b")
    (root / "loop_b").symlink_to("loop_a")
    (root / "self").symlink_to("self")
    (root / "file_link").symlink_to("data/file")
    return str(root), outside


def _snapshot(top: Path, skip: Path) -> set[str]:
    """Every path under `top` except those under `skip`."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            out.add(os.path.join(dirpath, name))
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[str]:
    root, _ = _tree(tmp_path)
    before = _snapshot(tmp_path, Path(root))
    yield root
    # Nothing a test did may have created anything outside the root.
    assert _snapshot(tmp_path, Path(root)) == before
    assert not os.path.lexists(f"/etc/{UNIQUE}")
    assert not os.path.lexists(f"/nonexistent/{UNIQUE}")
    assert not os.path.lexists(f"/{UNIQUE}-up")


def j(root: str, *parts: str) -> str:
    return os.path.join(root, *parts)


# -- chase: plain paths ---------------------------------------------------------------
@pytest.mark.parametrize(
    "path,expected",
    [
        ("/etc/passwd", "etc/passwd"),
        ("etc/passwd", "etc/passwd"),  # relative means relative to the root
        ("//etc///passwd", "etc/passwd"),
        ("/./etc/./passwd", "etc/passwd"),
        ("/usr/lib/../bin", "usr/bin"),
        ("/data/sub/../../etc", "etc"),
    ],
)
def test_chase_plain_paths(tree: str, path: str, expected: str) -> None:
    assert chase(tree, path) == j(tree, expected)


@pytest.mark.parametrize("path", ["", "/", ".", "..", "/..", "/../../..", "/etc/../..", "//"])
def test_chase_root_itself(tree: str, path: str) -> None:
    assert chase(tree, path) == tree


def test_chase_dotdot_is_clamped_at_the_root(tree: str) -> None:
    assert chase(tree, "/../../../etc/passwd") == j(tree, "etc/passwd")
    assert chase(tree, "../etc") == j(tree, "etc")


def test_chase_trailing_slash_on_root_argument(tree: str) -> None:
    assert chase(tree + "/", "/etc") == j(tree, "etc")


# -- chase: symlinks -------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,expected",
    [
        ("/etc_abs", "etc"),
        ("/etc_abs/passwd", "etc/passwd"),
        ("/home", "etc"),  # /home -> /etc resolves to ROOT/etc, never the host's
        ("/home/passwd", "etc/passwd"),
        ("/usr/lib64", "usr/lib"),
        ("/usr/bin/up", "usr/lib"),
        ("/tmp", ""),  # ../../.. clamped at the root
        ("/tmp/etc/passwd", "etc/passwd"),
        ("/tmp/tmp/tmp/etc", "etc"),
        ("/deep_escape", "etc"),
        ("/chain1/passwd", "etc/passwd"),
        ("/file_link", "data/file"),
        ("/usr/lib64/../bin", "usr/bin"),  # `..` after a symlink: relative to its target
        ("/home/../usr", "usr"),
    ],
)
def test_chase_resolves_symlinks_inside_the_root(tree: str, path: str, expected: str) -> None:
    got = chase(tree, path)
    assert got == (j(tree, expected) if expected else tree)
    assert got == tree or got.startswith(tree + "/")


def test_chase_absolute_host_path_symlink_is_taken_inside_the_root(tree: str) -> None:
    # ROOT/outside_abs -> <tmp>/outside: that path does not exist inside the root.
    with pytest.raises(FileNotFoundError):
        chase(tree, "/outside_abs/secret")


def test_chase_does_not_follow_to_the_host_etc(tree: str) -> None:
    got = chase(tree, "/home/passwd")
    assert got != "/etc/passwd"
    assert Path(got).read_text() == "root:x:0:0::/root:/bin/sh\n"


@pytest.mark.parametrize("path", ["/loop_a", "/loop_b/x", "/self", "/usr/../self"])
def test_chase_symlink_loop_is_eloop(tree: str, path: str) -> None:
    with pytest.raises(OSError) as exc:
        chase(tree, path)
    assert exc.value.errno == errno.ELOOP
    with pytest.raises(OSError) as exc:
        chase(tree, path, create="dir")
    assert exc.value.errno == errno.ELOOP


def test_chase_link_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "target").mkdir()
    (root / f"l{MAX_LINKS}").symlink_to("target")
    for i in range(MAX_LINKS - 1, 0, -1):
        (root / f"l{i}").symlink_to(f"l{i + 1}")
    assert chase(str(root), "/l1") == str(root / "target")  # exactly MAX_LINKS links
    (root / "l0").symlink_to("l1")
    with pytest.raises(OSError) as exc:
        chase(str(root), "/l0")
    assert exc.value.errno == errno.ELOOP


# -- chase: errors ---------------------------------------------------------------------
def test_chase_missing_raises_file_not_found(tree: str) -> None:
    with pytest.raises(FileNotFoundError):
        chase(tree, "/no/such/path")
    with pytest.raises(FileNotFoundError):
        chase(tree, "/dangling")


@pytest.mark.parametrize("path", ["/data/file/x", "/etc/passwd/..", "/file_link/x"])
def test_chase_file_in_the_middle_is_enotdir(tree: str, path: str) -> None:
    with pytest.raises(OSError) as exc:
        chase(tree, path)
    assert exc.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as exc:
        chase(tree, path, create="dir")
    assert exc.value.errno == errno.ENOTDIR


# -- chase: create= ---------------------------------------------------------------------
def test_chase_create_dir_makes_every_missing_component(tree: str) -> None:
    got = chase(tree, "/new/a/b", create="dir")
    assert got == j(tree, "new/a/b")
    assert os.path.isdir(got)
    assert oct(os.stat(got).st_mode & 0o777) == oct(0o755 & ~_umask())


def test_chase_create_file_makes_parents_as_dirs_and_the_last_as_a_file(tree: str) -> None:
    got = chase(tree, "/etc/new.d/conf", create="file")
    assert got == j(tree, "etc/new.d/conf")
    assert os.path.isdir(j(tree, "etc/new.d"))
    assert os.path.isfile(got) and os.path.getsize(got) == 0


def test_chase_create_keeps_what_exists(tree: str) -> None:
    assert chase(tree, "/etc/passwd", create="file") == j(tree, "etc/passwd")
    assert Path(tree, "etc/passwd").read_text().startswith("root:")
    assert chase(tree, "/etc", create="dir") == j(tree, "etc")
    # create="file" on an existing directory returns it (the caller decides).
    assert chase(tree, "/usr", create="file") == j(tree, "usr")


@pytest.mark.parametrize(
    "path,kind,expected",
    [
        ("/home/new", "dir", "etc/new"),
        ("/to_etc_unique", "file", f"etc/{UNIQUE}"),  # dangling -> /etc/UNIQUE: made in ROOT/etc
        ("/dangling", "dir", f"nonexistent/{UNIQUE}"),
        ("/dangling_up", "file", f"{UNIQUE}-up"),  # ../../.. clamped
        ("/tmp/made", "dir", "made"),
        ("/outside_abs/secret", "file", None),  # the host path, recreated inside the root
        ("/../../x/y", "dir", "x/y"),
    ],
)
def test_chase_create_stays_inside_the_root(
    tree: str, path: str, kind: str, expected: str | None
) -> None:
    got = chase(tree, path, create=kind)
    if expected is None:
        # <tmp>/outside/secret inside the root (where ROOT/tmp -> ../../.. is the root itself)
        assert got.startswith(tree + "/") and got.endswith("/outside/secret")
    else:
        assert got == j(tree, expected)
    assert (os.path.isdir if kind == "dir" else os.path.isfile)(got)
    # the fixture checks that nothing appeared outside the root


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# -- chase_existing ------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,prefix,missing",
    [
        ("/etc/passwd", "etc/passwd", []),
        ("/", "", []),
        ("/etc/a/b", "etc", ["a", "b"]),
        ("/new", "", ["new"]),
        ("/home/new/x", "etc", ["new", "x"]),  # through /home -> /etc
        ("/tmp/tmp/etc/z", "etc", ["z"]),  # through ../../.., clamped
        ("/../../etc/z", "etc", ["z"]),
        ("/dangling", "", ["nonexistent", UNIQUE]),  # the symlink's target, inside the root
        ("/dangling/more", "", ["nonexistent", UNIQUE, "more"]),
        ("/to_etc_unique", "etc", [UNIQUE]),
        ("/usr/lib64/x", "usr/lib", ["x"]),
    ],
)
def test_chase_existing(tree: str, path: str, prefix: str, missing: list[str]) -> None:
    found, rest = chase_existing(tree, path)
    assert found == (j(tree, prefix) if prefix else tree)
    assert rest == missing


def test_chase_existing_never_returns_dotdot(tree: str) -> None:
    _, rest = chase_existing(tree, "/new/../../x")
    assert ".." not in rest


def test_chase_existing_errors(tree: str) -> None:
    with pytest.raises(OSError) as exc:
        chase_existing(tree, "/loop_a/x")
    assert exc.value.errno == errno.ELOOP
    with pytest.raises(OSError) as exc:
        chase_existing(tree, "/data/file/x")
    assert exc.value.errno == errno.ENOTDIR


def test_chase_existing_agrees_with_chase_on_existing_paths(tree: str) -> None:
    for path in ("/etc/passwd", "/home", "/usr/bin/up", "/tmp/etc", "/chain1", "/file_link"):
        assert chase_existing(tree, path) == (chase(tree, path), [])


# -- property: any path stays inside the root -----------------------------------------
@pytest.fixture(scope="module")
def shared_tree(tmp_path_factory: pytest.TempPathFactory) -> str:
    root, _ = _tree(tmp_path_factory.mktemp("chase"))
    return root


COMPONENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "etc",
        "usr",
        "lib64",
        "bin",
        "up",
        "home",
        "tmp",
        "deep_escape",
        "etc_abs",
        "chain1",
        "file_link",
        "data",
        "sub",
        "outside_abs",
        "dangling",
        "nope",
        "self",
    ]
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(parts=st.lists(COMPONENTS, max_size=8), absolute=st.booleans())
def test_property_results_stay_inside_the_root(
    shared_tree: str, parts: list[str], absolute: bool
) -> None:
    path = ("/" if absolute else "") + "/".join(parts)
    for fn in (chase, lambda r, p: chase_existing(r, p)[0]):
        try:
            got = fn(shared_tree, path)
        except OSError as err:
            assert err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
            continue
        assert got == shared_tree or got.startswith(shared_tree + "/"), (path, got)
        assert os.path.lexists(got)
    try:
        _, rest = chase_existing(shared_tree, path)
    except OSError:
        return
    assert all(p and p not in (".", "..") and "/" not in p for p in rest)


def test_which(tmp_path) -> None:
    import shutil

    from sifbox.util.paths import which

    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "data").write_text("")
    assert which("tool", str(tmp_path)) == str(tool)
    assert which("data", str(tmp_path)) is None
    assert which("sh") == shutil.which("sh")
    assert which("no-such-tool-here") is None


# -- modes: what a caller that resolves many paths of one tree has looked at -----------------
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(COMPONENTS, max_size=6), min_size=1, max_size=6))
def test_property_modes_change_no_answer(shared_tree: str, paths: list[list[str]]) -> None:
    """Resolving through what was looked at before (the hostile links too) answers as
    resolving afresh: the same path, or the same error."""
    modes: dict[str, int] = {}

    def answer(fn, path):  # type: ignore[no-untyped-def]
        try:
            return fn(path)
        except OSError as err:
            return err.errno

    for parts in paths + paths:
        path = "/" + "/".join(parts)
        assert answer(lambda p: chase(shared_tree, p, modes=modes), path) == answer(lambda p: chase(shared_tree, p), path)
        assert answer(lambda p: chase_existing(shared_tree, p, modes), path) == answer(
            lambda p: chase_existing(shared_tree, p), path)  # fmt: skip
    assert all(k.startswith(shared_tree + "/") for k in modes)


def _counting_lstat(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.lstat

    def lstat(path, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append(os.fspath(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    return seen


def test_each_component_is_looked_at_once_with_modes(tree: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _counting_lstat(monkeypatch)
    modes: dict[str, int] = {}
    for path in ("/usr/bin/up", "/usr/lib64", "/usr/bin", "/home/passwd", "/etc/passwd"):
        chase(tree, path, modes=modes)
    assert sorted(seen) == sorted(set(seen)), seen
    assert j(tree, "usr") in seen and j(tree, "etc/passwd") in seen
    seen.clear()
    assert chase(tree, "/usr/bin/up", modes=modes) == j(tree, "usr/lib")
    assert seen == []  # all known: only the link is read again


def test_what_create_makes_is_known_after(tree: str, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: dict[str, int] = {}
    made = chase(tree, "/data/new/dir/file", create="file", modes=modes)
    assert os.path.isfile(made)
    seen = _counting_lstat(monkeypatch)
    assert chase(tree, "/data/new/dir", modes=modes) == j(tree, "data/new/dir")
    for resolve in (lambda: chase(tree, "/data/new/dir/file/x", modes=modes),
                    lambda: chase_existing(tree, "/data/new/dir/file/x", modes)):  # fmt: skip
        with pytest.raises(OSError) as exc:  # a file in the middle, known as a file
            resolve()
        assert exc.value.errno == errno.ENOTDIR
    assert seen == []
