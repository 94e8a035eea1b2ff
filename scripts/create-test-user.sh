#!/usr/bin/env bash
# Create the unprivileged test user (default `sifbox-test`) with subordinate uid/gid ranges for
# --fakeroot. Run as root; safe to run again (adds only what is missing).
#
#   bash scripts/create-test-user.sh [USER]
set -euo pipefail

user=${1:-sifbox-test}
count=65536
floor=200000

die() { printf 'create-test-user.sh: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run me as root"

if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
    echo "==> created user $user (uid $(id -u "$user"))"
fi

# Append "$user:START:65536" to /etc/subuid or /etc/subgid unless the user has a range there,
# starting after every existing range (and at 200000 at least) so ranges never overlap.
add_range() {
    local file=$1 start
    touch "$file"
    chmod 0644 "$file"
    if grep -q "^$user:" "$file"; then
        return 0
    fi
    start=$(awk -F: -v floor="$floor" '
        NF >= 3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ { end = $2 + $3; if (end > max) max = end }
        END { print (max > floor ? max : floor) }' "$file")
    echo "$user:$start:$count" >>"$file"
    echo "==> $file: $user:$start:$count"
}
add_range /etc/subuid
add_range /etc/subgid
