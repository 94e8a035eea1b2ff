#!/usr/bin/env bash
# Install this work tree into a private venv, for trying a branch without touching the system install:
# no Debian packages, no /usr/local/bin link, no /etc. Run `bash scripts/install.sh` once first.
#
#   bash scripts/dev-install.sh PREFIX     e.g. /opt/sifbox-dev; then
#   SIFBOX_CLI=PREFIX/venv/bin/sifbox PREFIX/venv/bin/python -m pytest tests/integration/...
set -euo pipefail

[ $# -eq 1 ] || { sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }
prefix=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$prefix/venv

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    mkdir -p "$prefix"
    /usr/bin/python3 -m venv "$venv"
fi
tmp=$(mktemp -d /tmp/sifbox-dev-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/sifbox" "$tmp/"
find "$tmp" -name __pycache__ -type d -prune -exec rm -rf {} +
"$venv/bin/pip" install --quiet --force-reinstall "$tmp[test]"
bash "$repo/scripts/write-launcher.sh" "$venv"
"$venv/bin/python" -m compileall -q "$venv" >/dev/null || true
chmod -R a+rX "$prefix"
echo "==> installed $venv/bin/sifbox ($("$venv/bin/sifbox" version))"
