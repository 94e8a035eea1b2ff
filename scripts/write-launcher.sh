#!/usr/bin/env bash
# Write VENV/bin/sifbox: start the venv's Python isolated and without `site`, with the venv's
# site-packages put on sys.path by the launcher itself.   Usage: write-launcher.sh VENV
set -euo pipefail
venv=$1
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tmp=$(mktemp "$venv/bin/.sifbox.XXXXXX")
cat >"$tmp" <<LAUNCHER
#!$venv/bin/python3 -IS
import sys
sys.path.append("$site")
from sifbox.cli.main import main
sys.exit(main())
LAUNCHER
chmod 0755 "$tmp"
mv -f "$tmp" "$venv/bin/sifbox"
