#!/usr/bin/env bash
# Write a launcher that runs sifbox from a source tree with the installed venv's Python and
# dependencies, without the module bundle: for trying a work tree without installing it.
#
#   bash scripts/dev-launcher.sh OUT [TREE]         TREE defaults to this repository
#   SIFBOX_CLI=OUT /opt/sifbox/venv/bin/python -m pytest tests/integration/test_actions.py
#
# OUT and TREE must be readable by the test user for the tests that run as it.
set -euo pipefail
out=${1:?usage: dev-launcher.sh OUT [TREE]}
tree=$(cd "${2:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
venv=/opt/sifbox/venv
[ -x "$venv/bin/python3" ] || { echo "dev-launcher.sh: error: $venv is missing: run scripts/install.sh" >&2; exit 1; }
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tmp=$(mktemp "$out.XXXXXX")
cat >"$tmp" <<LAUNCHER
#!$venv/bin/python3 -IS
import sys
sys.path[:0] = ["$tree"]
sys.path.append("$site")
from sifbox.cli.main import main
sys.exit(main())
LAUNCHER
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
