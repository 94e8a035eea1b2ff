#!/usr/bin/env bash
# Make DIR/bin/sifbox (and DIR/bin/python beside it) run sifbox from a source tree with the
# installed venv's dependencies, without the module bundle: for trying a work tree without
# installing it. DIR is a small venv whose python imports the tree first.
#
#   bash scripts/dev-launcher.sh DIR [TREE]         TREE defaults to this repository
#   SIFBOX_CLI=DIR/bin/sifbox /opt/sifbox/venv/bin/python -m pytest tests/integration/test_actions.py
#
# DIR and TREE must be readable by the test user for the tests that run as it.
set -euo pipefail
dir=${1:?usage: dev-launcher.sh DIR [TREE]}
tree=$(cd "${2:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
venv=/opt/sifbox/venv
[ -x "$venv/bin/python3" ] || { echo "dev-launcher.sh: error: $venv is missing: run scripts/install.sh" >&2; exit 1; }
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -x "$dir/bin/python3" ] || /usr/bin/python3 -m venv --without-pip "$dir"
own=$("$dir/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$tree" >"$own/00-sifbox-tree.pth"
printf '%s\n' "$site" >"$own/01-sifbox-deps.pth"
cat >"$dir/bin/sifbox" <<LAUNCHER
#!$dir/bin/python3 -IS
import sys
sys.path[:0] = ["$tree"]
sys.path.append("$site")
from sifbox.cli.main import main
sys.exit(main())
LAUNCHER
chmod 0755 "$dir/bin/sifbox"
chmod -R a+rX "$dir"
