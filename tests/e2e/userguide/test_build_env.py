"""build_env.rst: the cache (its folder, APPTAINER_CACHEDIR, `cache list`, `cache clean`),
temporary folders (APPTAINER_TMPDIR) and how environment variables and command-line options
combine.

The cache is the user's own in @ws@ (HOME=@ws@/home), filled by a pull and a build from the
local registry (docker://alpine there), and the cases run in order: list it, clean it bit by
bit, then entirely. /tmp/user/temporary-cache of the example is @ws@/temporary-cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import C, Case, contains, exact, lacks, params, regex
from tests.e2e.userguide import guide
from tests.e2e.userguide.guide import files

pytestmark = pytest.mark.integration

BE = "build_env.rst"
HOME = {"HOME": "@ws@/home"}
SUMMARY = (
    regex(r"(?m)^There are (\d+) container file\(s\) using [\d.]+ \w+ and (\d+) oci blob file\(s\) using "
          r"[\d.]+ \w+ of space$"),
    regex(r"(?m)^Total space used: [\d.]+ \w+$"),
)  # fmt: skip
NOT_EMPTY = regex(
    r"There are (\d*[1-9]\d*) container file\(s\) using [\d.]+ \w+ and (\d*[1-9]\d*) oci blob"
)
ASK = "This will delete everything in your cache (containers from all sources and OCI blobs)."
HINT = (
    "Hint: You can see exactly what would be deleted by canceling and using the --dry-run option."
)
OWN_PATH = (
    "sifbox's cache is ~/.cache/sifbox (README: Registries), where the guide's Apptainer has "
    "~/.apptainer/cache"
)

ROWS = [
    # Cache Folders: a build from docker:// with APPTAINER_CACHEDIR caches there (as the user,
    # with --fakeroot; the guide's `sudo -E` build is root's run of the same case).
    C(f"{BE}:Cache Folders[APPTAINER_CACHEDIR]", "build", "--fakeroot", "myimage.sif", "mydef.def", cwd="@ws@",
      env={**HOME, "APPTAINER_CACHEDIR": "@ws@/temporary-cache"}),
    C(f"{BE}:Cache Folders", "pull", "docker://@registry@/library/alpine", cwd="@ws@", env=HOME,
      host_paths=(("dir", "@ws@/home/.cache/sifbox"),), diverges=OWN_PATH),
    # Listing Cache
    C(f"{BE}:Listing Cache", "cache", "list", env=HOME, out=(*SUMMARY, NOT_EMPTY)),
    C(f"{BE}:Listing Cache[-v]", "cache", "list", "-v", env=HOME,
      out=(regex(r"(?m)^NAME\s+DATE CREATED\s+SIZE\s+TYPE$"), regex(r"(?m)^\w+\s+[\d-]+ [\d:]+\s+[\d.]+ \w+\s+blob$"),
           *SUMMARY)),
    C(f"{BE}:Listing Cache[--type]", "cache", "list", "-v", "--type", "blob", env=HOME,
      out=(regex(r"(?m)\s+blob$"), lacks(" oci\n"))),
    # Cleaning the Cache: asks first (here: no), --dry-run, --days, --type, --force
    C(f"{BE}:Cleaning the Cache", "cache", "clean", env=HOME, stdin="n\n", out=(contains(ASK), contains(HINT))),
    C(f"{BE}:Cleaning the Cache[prompt]", "cache", "clean", env=HOME, stdin="n\n",
      out=contains("Do you want to continue? [N/y]")),
    C(f"{BE}:Cleaning the Cache[kept]", "cache", "list", env=HOME, out=NOT_EMPTY),
    C(f"{BE}:Cleaning the Cache[--dry-run]", "cache", "clean", "--dry-run", env=HOME, out=contains("@ws@/home/.cache")),
    C(f"{BE}:Cleaning the Cache[--days 30]", "cache", "clean", "--days", "30", env=HOME, stdin="y\n"),
    C(f"{BE}:Cleaning the Cache[--days 30][kept]", "cache", "list", env=HOME, out=NOT_EMPTY),
    C(f"{BE}:Cleaning the Cache[--type library]", "cache", "clean", "--type", "library", env=HOME, stdin="y\n"),
    C(f"{BE}:Cleaning the Cache[--type library][kept]", "cache", "list", env=HOME, out=NOT_EMPTY),
    C(f"{BE}:Cleaning the Cache[--force]", "cache", "clean", "--force", env=HOME),
    C(f"{BE}:Cleaning the Cache[--force][empty]", "cache", "list", env=HOME,
      out=regex(r"There are 0 container file\(s\) using [\d.]+ \w+ and 0 oci blob file\(s\)")),
]  # fmt: skip
SETUP = {
    f"{BE}:Cache Folders[APPTAINER_CACHEDIR]": files(
        {"@ws@/mydef.def": "Bootstrap: docker\nFrom: @registry@/library/alpine\n"}
    ),
}


@pytest.mark.parametrize("case", params(ROWS))
def test_cache(request, sb, reg, ws, case: Case) -> None:
    guide.run(request, sb, case, SETUP.get(case.name))
    if case.name == f"{BE}:Cache Folders[APPTAINER_CACHEDIR]":
        cache = Path(sb.subst("@ws@/temporary-cache"))
        assert any(p.is_file() for p in cache.rglob("*")), f"nothing was cached in {cache}"


OTHERS = [
    # Temporary Folders: APPTAINER_TMPDIR wins over TMPDIR.
    C(f"{BE}:Temporary Folders", "build", "env.sif", "env.def", env={"TMPDIR": "/nonexistent",
                                                                   "APPTAINER_TMPDIR": "@work@/tmpdir"}),
    # Environment Variables: the option wins over the variable, except APPTAINER_BIND, which
    # adds to --bind.
    C(f"{BE}:Environment Variables[option first]", "exec", "--hostname", "from-the-option", "@env@", "hostname",
      env={"APPTAINER_HOSTNAME": "from-the-variable"}, out=exact("from-the-option")),
    C(f"{BE}:Environment Variables[APPTAINER_BIND]", "exec", "--bind", "@work@/data:/mnt", "@env@", "ls", "/mnt",
      "/opt", env={"APPTAINER_BIND": "@work@/opt:/opt"}, out=(contains("bar"), contains("optfile"))),
]  # fmt: skip
OTHERS_SETUP = {
    f"{BE}:Temporary Folders": guide.chain(guide.staged("env.def"), guide.dirs("@work@/tmpdir")),
    f"{BE}:Environment Variables[APPTAINER_BIND]": files(
        {"@work@/data/bar": "", "@work@/opt/optfile": ""}
    ),
}


@pytest.mark.parametrize("case", params(OTHERS))
def test_environment(request, sb, case: Case) -> None:
    guide.run(request, sb, case, OTHERS_SETUP.get(case.name))
