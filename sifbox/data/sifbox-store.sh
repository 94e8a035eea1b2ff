# sifbox: SIFBOX_ALLOWED_DIR names the user's own directory of the admission store
# (`store path` in /etc/sifbox/sifbox.conf, one directory per user), where
# `sifbox store cp IMAGE` puts admitted images. Installed in /etc/profile.d/.
_sifbox_store=$(sed -n 's/^[[:space:]]*store[[:space:]][[:space:]]*path[[:space:]]*=[[:space:]]*//p' \
    /etc/sifbox/sifbox.conf 2>/dev/null | head -n 1)
SIFBOX_ALLOWED_DIR=${_sifbox_store:-/var/lib/sifbox/store}/$(id -un)
export SIFBOX_ALLOWED_DIR
unset _sifbox_store
