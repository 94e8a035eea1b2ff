#!/usr/bin/env bash
# Write VENV/bin/sifbox (and VENV/bin/sifbox-runc, which is `sifbox oci`): start the venv's Python isolated and without `site`, with the venv's
# site-packages put on sys.path by the launcher itself, and sifbox's modules served from one
# bundle file (sifbox/_boot.py) written here too.   Usage: write-launcher.sh VENV
set -euo pipefail
venv=$1
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bundle="$venv/sifbox-modules.bundle"
"$venv/bin/python" -I -m sifbox._boot build "$site/sifbox" "$bundle" >/dev/null
tmp=$(mktemp "$venv/bin/.sifbox.XXXXXX")
cat >"$tmp" <<LAUNCHER
#!$venv/bin/python3 -IS
import sys
sys.path.append("$site")
import sifbox._boot
sifbox._boot.install("$bundle", "$site/sifbox")
from sifbox.cli.main import main
sys.exit(main())
LAUNCHER
chmod 0755 "$tmp"
mv -f "$tmp" "$venv/bin/sifbox"
# sifbox-runc: runc's command line (`sifbox oci ARGS`), for containerd's runc shim (BinaryName).
tmp=$(mktemp "$venv/bin/.sifbox-runc.XXXXXX")
cat >"$tmp" <<LAUNCHER
#!$venv/bin/python3 -IS
import sys
sys.path.append("$site")
import sifbox._boot
sifbox._boot.install("$bundle", "$site/sifbox")
from sifbox.cli.main import runc_main
sys.exit(runc_main())
LAUNCHER
chmod 0755 "$tmp"
mv -f "$tmp" "$venv/bin/sifbox-runc"
