#!/usr/bin/env bash
# Write VENV/bin/sifbox (and VENV/bin/sifbox-runc, which is `sifbox oci`): start the venv's Python isolated and without `site`, with the venv's
# site-packages put on sys.path by the launcher itself, and sifbox's modules served from one
# bundle file (sifbox/_boot.py) written here too.   Usage: write-launcher.sh VENV
set -euo pipefail
venv=$1
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bundle="$venv/sifbox-modules.bundle"
"$venv/bin/python" -I -m sifbox._boot build "$site/sifbox" "$bundle" >/dev/null
# write_launcher NAME MAIN: VENV/bin/NAME runs sifbox.cli.main.MAIN(), written atomically.
write_launcher() {
    local tmp
    tmp=$(mktemp "$venv/bin/.$1.XXXXXX")
    cat >"$tmp" <<LAUNCHER
#!$venv/bin/python3 -IS
import sys
sys.path.append("$site")
import sifbox._boot
sifbox._boot.install("$bundle", "$site/sifbox")
from sifbox.cli.main import $2
sys.exit($2())
LAUNCHER
    chmod 0755 "$tmp"
    mv -f "$tmp" "$venv/bin/$1"
}
write_launcher sifbox main
# sifbox-runc: runc's command line (`sifbox oci ARGS`), for containerd's runc shim (BinaryName).
write_launcher sifbox-runc runc_main
