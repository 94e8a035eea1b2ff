#!/usr/bin/env bash
# Run the whole test suite as CI does: install sifbox (with the demo), add the test tools to its venv,
# create the unprivileged test user, then run pytest from the repo root. Run as root.
#
#   bash scripts/test.sh [PYTEST ARGS...]      e.g. bash scripts/test.sh tests/unit -x
#   SIFBOX_HYPOTHESIS_PROFILE=long bash scripts/test.sh tests/unit      the long property run
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=/opt/sifbox/venv
cd "$repo"

# The full install, demo included: the tests check the demo image too.
bash scripts/install.sh

# The test tools, pinned in pyproject's `test` extra. Installed by name (not `.[test]`), so the
# non-editable sifbox install stays as install.sh left it.
mapfile -t deps < <("$venv/bin/python" -c '
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["test"]))
')
[ ${#deps[@]} -gt 0 ] || { echo "test.sh: error: no test dependencies in pyproject.toml" >&2; exit 1; }
echo "==> installing test tools: ${deps[*]}"
"$venv/bin/pip" install --quiet "${deps[@]}"
chmod -R a+rX /opt/sifbox

bash scripts/create-test-user.sh

# Tests import sifbox from this source tree (pytest's pythonpath = ["."]); CLI tests run the
# installed /usr/local/bin/sifbox. Hypothesis properties run derandomized (the `ci` profile of
# tests/conftest.py: the same examples every run) unless SIFBOX_HYPOTHESIS_PROFILE says otherwise
# (`long` for the fuzzing job). Without arguments the whole suite runs (a plain `pytest` runs
# tests/unit only). pytest's exit status is ours (5 = no tests collected).
export SIFBOX_HYPOTHESIS_PROFILE="${SIFBOX_HYPOTHESIS_PROFILE:-ci}"
[ $# -gt 0 ] || set -- tests
exec "$venv/bin/python" -m pytest "$@"
