#!/bin/sh
# sifbox: after the mount service stopped (ExecStopPost of sifbox-mount.service), detach
# whatever it left mounted under its directory (the directory of `mount service socket` in
# /etc/sifbox/sifbox.conf) had it been killed: containers that still use an image keep it,
# and its loop device goes with their last mount. It never fails.
conf=${SIFBOX_CONFIG_FILE:-/etc/sifbox/sifbox.conf}
sock=$(sed -n 's/^[[:space:]]*mount[[:space:]][[:space:]]*service[[:space:]][[:space:]]*socket[[:space:]]*=[[:space:]]*//p' \
    "$conf" 2>/dev/null | head -n 1)
dir=$(dirname "${sock:-/run/sifbox-mount/mount.sock}")
case $dir in
/?*) ;;
*) exit 0 ;;
esac
# Deepest first (the binds, the images, then the directory's own bind); mountinfo escapes
# blanks as \040, and the service's names have none.
awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print length($5), $5 }' /proc/self/mountinfo |
    sort -rn | while read -r _ point; do
        umount -l "$point" 2>/dev/null
    done
rm -f "$dir/mount.sock" "$dir/.bound" 2>/dev/null
exit 0
