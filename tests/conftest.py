"""Fixtures shared by every test directory.

Integration and e2e tests run things twice, as root and as the unprivileged test user that
``scripts/create-test-user.sh`` creates (``sifbox-test``)::

    @pytest.mark.integration
    def test_list(run_as, as_who, sifbox_cli, shared_tmp):
        proc = run_as(as_who, [sifbox_cli, "sif", "list", str(shared_tmp / "x.sif")])
        assert proc.returncode == 0, proc.stderr

A checkout may lie where the test user cannot read it (a clone in root's 0700 home), so a
repository file handed to a command run as that user goes through ``stage_for_user``, which
copies it to a directory under /tmp that every user can read::

    @pytest.mark.integration
    def test_build(run_as, as_who, sifbox_cli, shared_tmp, stage_for_user):
        deffile = stage_for_user(REPO / "examples" / "demo.def")
        proc = run_as(as_who, [sifbox_cli, "build", str(shared_tmp / "d.sif"), str(deffile)])

The SIF corpus (``sif_corpus``) comes staged already. Unit tests read ``tests/data`` in place
(``tests/unit/sifcorpus.py``).

Hypothesis properties run under one of three profiles, chosen by ``SIFBOX_HYPOTHESIS_PROFILE``
(or pytest's ``--hypothesis-profile``): ``dev`` for a plain ``pytest`` (random examples, failures
kept in ``.hypothesis/`` and replayed first), ``ci`` for ``scripts/test.sh`` and any run with
``CI`` set (derandomized: the same examples on every run, no example database), and ``long``
for the fuzzing job (random, and every property runs ``LONG_FACTOR`` times its examples).
Properties set ``max_examples`` and health checks if they must, never ``derandomize`` or
``database``: the profile decides those.

Nothing here runs at import time apart from choosing that profile, and every fixture is opt-in,
so ``tests/unit`` needs neither root nor the test user. Unit tests may not use the fixtures
that run programs (see ``_refuse_system_fixtures_in_unit_tests``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, is_hypothesis_test, settings

REPO = Path(__file__).resolve().parents[1]
TEST_USER = os.environ.get("SIFBOX_TEST_USER", "sifbox-test")
DATA = REPO / "tests" / "data"
CORPUS = DATA / "sif-corpus"
INSTALLED_CLI = Path(os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox"))
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# No test reaches the internet: keyserver lookups (`key pull`, `verify` of a signer the keyrings
# lack) go to a closed loopback port unless a test names its keyserver (tests/integration/
# test_keyserver.py starts sks, and drops this for the tests of the default endpoint).
os.environ.setdefault("SIFBOX_URL", "http://127.0.0.1:9")

#: How many times its own examples a property runs under the `long` profile.
LONG_FACTOR = 20
# No deadline and no too-slow health check anywhere: timings on a loaded machine are noise.
_common = settings(settings.get_profile("default"), deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
settings.register_profile("dev", _common)
settings.register_profile("ci", _common, derandomize=True, database=None, print_blob=True)
settings.register_profile("long", _common, max_examples=100 * LONG_FACTOR, print_blob=True)
# Hypothesis itself loads its own `ci` profile when it detects a CI service.
settings.load_profile(
    os.environ.get("SIFBOX_HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI") or settings.get_current_profile_name() == "ci" else "dev")
)

# Fixtures that run programs, switch users or touch the machine: not for tests/unit.
SYSTEM_FIXTURES = frozenset({"test_user", "run_as", "as_who", "shared_tmp", "sifbox_cli"})


@dataclass(frozen=True)
class User:
    """Who a command runs as: root, or the unprivileged test user."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def __str__(self) -> str:
        return self.name


def _user(name: str) -> User:
    pw = pwd.getpwnam(name)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


RunAs = Callable[..., "subprocess.CompletedProcess[str]"]


def _user_env(user: User) -> dict[str, str]:
    """The caller's environment as `user` sees it: own HOME, no PATH entries under /root."""
    env = dict(os.environ)
    path = env.get("PATH", SAFE_PATH).split(os.pathsep)
    path = [p for p in path if p and not p.startswith("/root")]
    env.update(
        PATH=os.pathsep.join(path) or SAFE_PATH,
        HOME=user.home,
        USER=user.name,
        LOGNAME=user.name,
    )
    for var in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        env.pop(var, None)
    return env


def _run_as(
    user: User | str | None, argv: Sequence[str | os.PathLike[str]], **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root (`None`, `"root"` or a root `User`) or as another user via runuser.

    Output is captured as text and the exit status is not checked, unless `kw` says otherwise
    (any `subprocess.run` keyword). For another user, `env` defaults to the caller's environment
    with that user's HOME/USER/LOGNAME and without PATH entries under /root.
    """
    if isinstance(user, str):
        user = _user(user)
    args = [os.fspath(a) for a in argv]
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("check", False)
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("timeout", 300)
    if user is not None and not user.is_root:
        if os.geteuid() != 0:
            pytest.skip(f"running a command as `{user}` needs root (runuser)")
        kw.setdefault("env", _user_env(user))
        args = ["runuser", "-u", user.name, "--", *args]
    return subprocess.run(args, **kw)  # type: ignore[call-overload, no-any-return]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under the `long` profile, a property that sets its own `max_examples` runs LONG_FACTOR
    times that many (one that does not already gets the profile's larger default)."""
    if not settings.get_current_profile_name().startswith("long"):
        return
    default = settings.get_profile("long").max_examples
    seen: set[int] = set()
    for item in items:
        fn = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
        if fn is None or id(fn) in seen or not is_hypothesis_test(fn):
            continue
        seen.add(id(fn))
        own = getattr(fn, "_hypothesis_internal_use_settings", None)  # what @settings gave it
        if isinstance(own, settings) and own.max_examples != default:
            fn._hypothesis_internal_use_settings = settings(
                own, max_examples=own.max_examples * LONG_FACTOR
            )


@pytest.fixture(autouse=True)
def _refuse_system_fixtures_in_unit_tests(request: pytest.FixtureRequest) -> None:
    path = Path(str(request.node.path)).resolve()
    if (REPO / "tests" / "unit") in path.parents:
        used = SYSTEM_FIXTURES.intersection(request.fixturenames)
        if used:
            pytest.fail(
                f"unit tests must not use {sorted(used)}: they need root, the test user or the "
                "installed CLI; move the test to tests/integration or tests/e2e",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def test_user() -> User:
    """The unprivileged test user (name, uid, gid, home); skips if it does not exist."""
    try:
        user = _user(TEST_USER)
    except KeyError:
        pytest.skip(f"test user `{TEST_USER}` does not exist: run scripts/create-test-user.sh")
    if user.uid == 0:
        pytest.fail(f"test user `{TEST_USER}` has uid 0; it must be unprivileged")
    return user


@pytest.fixture(scope="session")
def run_as() -> RunAs:
    """`run_as(user_or_None, argv, **subprocess_run_kw) -> CompletedProcess[str]`."""
    return _run_as


@pytest.fixture(params=["root", "user"])
def as_who(request: pytest.FixtureRequest) -> User:
    """Run a test twice: as root, and as the unprivileged test user. Pass it to `run_as`."""
    if os.geteuid() != 0:
        pytest.skip("running as root and as the test user needs the tests to run as root")
    if request.param == "root":
        return _user("root")
    user: User = request.getfixturevalue("test_user")
    return user


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A fresh directory under /tmp that root and the test user can both read and write (0777).

    Files root copies in stay root's: chown them for a test where the user must write them.
    Removed afterwards; a mount left inside it fails the test (something leaked a mount).
    """
    base = Path(tempfile.mkdtemp(prefix="sifbox-test-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        leaked = _mounts_under(base)
        for mnt in reversed(leaked):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
        if leaked:
            pytest.fail(f"mounts left behind under {base}: {leaked}", pytrace=False)


def _mounts_under(base: Path) -> list[str]:
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                mnt = line.split()[4].replace("\\040", " ")
                if mnt == str(base) or mnt.startswith(f"{base}/"):
                    found.append(mnt)
    except OSError:
        pass
    return found


@pytest.fixture(scope="session")
def sifbox_cli() -> str:
    """Path of the installed CLI (/usr/local/bin/sifbox, or $SIFBOX_CLI); skips if missing."""
    if not (INSTALLED_CLI.exists() and os.access(INSTALLED_CLI, os.X_OK)):
        pytest.skip(f"{INSTALLED_CLI} is not installed: run `bash scripts/install.sh`")
    return str(INSTALLED_CLI)


Stage = Callable[[str | os.PathLike[str]], Path]


def _readable_by_all(path: Path) -> None:
    """Directories 0755, files 0644 (0755 if executable by their owner), symlinks untouched."""
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(0o755)
        else:
            p.chmod(0o755 if p.stat().st_mode & 0o100 else 0o644)


@pytest.fixture(scope="session")
def stage_for_user() -> Iterator[Stage]:
    """`stage_for_user(path) -> Path`: a copy of a repository file or directory that the test user
    can read, for every repository path a test hands to a command run as that user.

    The checkout itself may be unreadable to the user (a clone in root's 0700 home). The copy
    keeps the path relative to the repository (`<stage>/examples/demo.def`), is root's and
    read-only for others (copy it into `shared_tmp` to change it), is made once per session
    under /tmp and removed at the end of it. Symlinks inside a directory stay links.
    """
    base = Path(tempfile.mkdtemp(prefix="sifbox-stage-", dir="/tmp"))
    base.chmod(0o755)
    whole: set[Path] = set()  # what was copied in full, relative to the repository

    def stage(path: str | os.PathLike[str]) -> Path:
        src = Path(os.path.abspath(path))
        try:
            rel = src.relative_to(REPO)
        except ValueError:
            raise ValueError(f"stage_for_user: {src} is not inside the repository {REPO}") from None
        dst = base / rel
        if whole.intersection((rel, *rel.parents)):
            return dst
        for parent in reversed(rel.parents[:-1]):  # the directories between base and dst
            (base / parent).mkdir(exist_ok=True)
            (base / parent).chmod(0o755)
        if src.is_dir():  # may hold files staged before, one by one
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, dst)
            shutil.copymode(src, dst)
        _readable_by_all(dst)
        whole.add(rel)
        return dst

    try:
        yield stage
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sif_corpus(stage_for_user: Stage) -> Path:
    """tests/data/sif-corpus (reference SIF images, keys, inputs and siftool golden outputs),
    staged where the test user can read it."""
    return stage_for_user(CORPUS)


@pytest.fixture
def work() -> Iterator[Path]:
    """A fresh directory under /tmp that root and the test user can both write (0777),
    removed afterwards (build tests; test_build.py has its own, which also unmounts)."""
    base = Path(tempfile.mkdtemp(prefix="sifbox-bt-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def prune_holders(cli: str) -> None:
    """Stop every shared image mount holder on the node that no container uses (what `sifbox mounts
    prune --all` does, as root): a leak guard calls it once a test is over, so that only what the
    test leaked besides them is a leak (a holder a leaked container still uses, too). Those of
    other test sessions' running containers stay. The holders are reaped by their parent, a
    test session's process.

    It runs sifbox.runtime.nodemount's prune in this process (the code the command runs, from
    the tree under test): a CLI start after each of thousands of tests costs minutes. The
    command itself is covered by tests/integration/test_shared_mounts.py; any error here and
    the command runs instead."""
    if os.geteuid() != 0:
        return
    try:
        from sifbox.runtime import nodemount

        # `sifbox mounts prune --all`'s users: those of the holders (looked for only if a process
        # has a holder's name), root, and those of the /tmp/sifbox-UID state directories.
        named = _named(nodemount.PROCESS_NAME)
        holders = set(nodemount.holder_pids(None).values()) if named else set()
        uids = holders | {0}
        tmp = os.listdir("/tmp")
        uids |= {int(e[7:]) for e in tmp if e.startswith("sifbox-") and e[7:].isdigit()}
        for uid in sorted(uids):
            xdg = os.environ.get("XDG_RUNTIME_DIR") if uid == os.getuid() else None
            if uid in holders or any(_holds_state(d) for d in nodemount.state_dirs(uid, xdg)):
                nodemount.prune(uid)  # (with neither, it would find nothing to do)
    except Exception:  # noqa: BLE001 - the command is the fallback, and reports for itself
        subprocess.run([cli, "mounts", "prune", "--all"], capture_output=True, check=False, timeout=120,
                       stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})  # fmt: skip


def _named(name: str) -> bool:
    """Whether a process is named `name` (one read of /proc/PID/comm a process)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", "rb") as f:
                    if f.read().strip() == name.encode():
                        return True
            except OSError:
                continue
    return False


def _holds_state(path: str) -> bool:
    """Whether a holder state directory has any holder's files (what `prune` would look at)."""
    try:
        return any(not n.startswith(".") and "." in n for n in os.listdir(path))
    except OSError:
        return False
