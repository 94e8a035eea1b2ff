#!/usr/bin/env bash
# Install sifbox system-wide on Debian 12, as root. Safe to run again: a re-run picks up source changes.
#
#   bash scripts/install.sh             install, then build a small demo image and show it
#   bash scripts/install.sh --no-demo   install only
#
# What it does: Debian packages (squashfs-tools, squashfuse, fuse3, uidmap, ...), a venv built on
# Debian's /usr/bin/python3 at /opt/sifbox/venv with sifbox installed into it (not editable),
# /usr/local/bin/sifbox (and run-singularity, for ./image.sif), /dev/fuse usable by every user,
# bash completion, /etc/sifbox/.
set -euo pipefail

PY=/usr/bin/python3
PREFIX=/opt/sifbox
VENV=$PREFIX/venv
BIN_LINK=/usr/local/bin/sifbox
RUN_SINGULARITY=/usr/local/bin/run-singularity
DEMO_DIR=$PREFIX/demo
UDEV_RULE=/etc/udev/rules.d/99-sifbox-fuse.rules
COMPLETION=/usr/share/bash-completion/completions/sifbox
PACKAGES=(
    python3 python3-venv squashfs-tools squashfuse fuse3 busybox-static uidmap siftool debootstrap
    squashfs-tools-ng bash-completion fuse-overlayfs gnupg gpgv sqv fuse2fs zstd isal skopeo umoci
    docker-registry apache2-utils openssl charliecloud-runtime bubblewrap gocryptfs sks
    slurm-wlm munge openmpi-bin libopenmpi-dev mpich libmpich-dev gcc
    runc containerd python3-seccomp containernetworking-plugins nftables python3-pyfuse3
)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=1

say() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --no-demo) demo=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; printf 'install.sh: error: unknown argument `%s`\n' "$1" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" -eq 0 ] || die "run me as root (I install Debian packages and write /opt, /usr/local, /etc)"
[ -r /etc/debian_version ] || warn "this does not look like Debian; carrying on anyway"

tmp=$(mktemp -d /tmp/sifbox-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# --- 1. Debian packages -------------------------------------------------------------------------
installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: all ${#PACKAGES[@]} already installed"
else
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get update"
    apt-get update -q
    wanted=()
    for p in "${missing[@]}"; do
        cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
            warn "Debian package \`$p\` is not available here; skipping it"
        else
            wanted+=("$p")
        fi
    done
    if [ ${#wanted[@]} -gt 0 ]; then
        say "apt-get install ${wanted[*]}"
        apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${wanted[@]}"
    fi
fi

[ -x "$PY" ] || die "$PY is missing (Debian package python3)"

# --- 2. venv with sifbox --------------------------------------------------------------------------
# Rebuild the venv when it is missing or does not run (e.g. after a Python upgrade).
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 || [ ! -x "$VENV/bin/pip" ]; then
    say "creating venv $VENV with $PY"
    rm -rf "$VENV"
    mkdir -p "$PREFIX"
    "$PY" -m venv "$VENV"
fi

# Build from a copy of the sources, so the build leaves no build/ or *.egg-info in the work tree.
say "installing sifbox from $repo into $VENV"
src=$tmp/src
mkdir -p "$src"
cp -r "$repo/pyproject.toml" "$repo/sifbox" "$src/"
for f in README.md LICENSE LICENSE.txt COPYING; do
    if [ -e "$repo/$f" ]; then cp "$repo/$f" "$src/"; fi
done
find "$src" -name __pycache__ -type d -prune -exec rm -rf {} +
# One wheel, built once (each install from the source directory would build it again, in a
# fresh build environment), then installed over whatever version was there.
"$VENV/bin/pip" wheel --quiet --no-deps --wheel-dir "$tmp/wheel" "$src"
wheel=("$tmp"/wheel/sifbox-*.whl)
"$VENV/bin/pip" install --quiet --no-deps --force-reinstall "${wheel[0]}"
# Then the runtime dependencies pinned in pyproject.toml (only what is missing is fetched).
"$VENV/bin/pip" install --quiet "${wheel[0]}"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# setuptools is only needed to build, and its distutils-precedence.pth is imported by every start
# of the venv's Python: drop it. pip stays (scripts/test.sh installs the test tools with it) and
# adds no .pth file.
if [ -d "$site/setuptools" ]; then
    "$VENV/bin/pip" uninstall --quiet --yes setuptools
fi
# The launcher: pip's console script imports `re` and runs `site` (with Debian's sitecustomize)
# on every start. Ours starts Python isolated (-I: no PYTHON* variables, no user site) without
# `site` (-S) and puts the venv's packages on the path itself: a few ms less per launch, which
# counts once per MPI rank.
bash "$repo/scripts/write-launcher.sh" "$VENV"
# Precompile, so users who cannot write to /opt do not re-compile on every start.
"$VENV/bin/python" -m compileall -q "$site/sifbox" >/dev/null

ln -sfn "$VENV/bin/sifbox" "$BIN_LINK"
# runc's command line for containerd's runc shim (BinaryName = "/usr/local/bin/sifbox-runc").
ln -sfn "$VENV/bin/sifbox-runc" /usr/local/bin/sifbox-runc
chmod -R a+rX "$PREFIX"
# `./app.sif ARGS`: a SIF's launch script is `#!/usr/bin/env run-singularity`. Apptainer's own
# run-singularity, if one is installed here, is left as it is.
if [ -e "$RUN_SINGULARITY" ] && ! grep -qs 'exec sifbox run' "$RUN_SINGULARITY"; then
    warn "$RUN_SINGULARITY exists and is not sifbox's: left as it is (./image.sif runs with it)"
else
    install -m 0755 "$repo/scripts/run-singularity" "$RUN_SINGULARITY"
fi

"$BIN_LINK" version >/dev/null || die "the installed \`$BIN_LINK version\` does not run"
say "installed $BIN_LINK ($("$BIN_LINK" version))"

# --- 3. FUSE for every user (squashfuse mounts images for unprivileged users) -------------------
if [ -e /dev/fuse ]; then
    chmod 0666 /dev/fuse || warn "can't chmod /dev/fuse to 0666; unprivileged image mounts will fail"
else
    warn "/dev/fuse does not exist; unprivileged image mounts will fail (modprobe fuse?)"
fi
mkdir -p "$(dirname "$UDEV_RULE")"
printf '%s\n' '# sifbox: let every user mount images with squashfuse' 'KERNEL=="fuse", MODE="0666"' \
    >"$UDEV_RULE"

# --- 4. bash completion, config directory -------------------------------------------------------
mkdir -p "$(dirname "$COMPLETION")"
if "$BIN_LINK" completion bash >"$tmp/completion" 2>"$tmp/completion.err"; then
    install -m 0644 "$tmp/completion" "$COMPLETION"
else
    warn "\`sifbox completion bash\` failed, so no bash completion: $(head -n 3 "$tmp/completion.err")"
fi
mkdir -p /etc/sifbox
chmod 0755 /etc/sifbox
# The site configuration: installed once, never overwritten once an admin edited it. A file
# that is exactly one that an earlier sifbox shipped is replaced by the current one (earlier
# versions shipped `root default capabilities = full`: root's containers were not contained).
SHIPPED_CONF_SHA256=(
    08bbd4681025e6f121aec6f65ddb041c55ad8783ea48d1bcd673624c6296512a
    65c0858dd9b116b7586ad9051434d60f6f91d7d1ab1f591a0f71e9c52a089c0d
    700cb54b8b36f96173b4c8972dd7fd5f54f8ab2f56924fdb1b342a38a0c9b2bd
    b55a990ce36d7f8bf00b041ce382125b229666e9fa0754a24f7199d7d5477651
    c80ec00fff5e47fea7901aa22f54d911d7455a3883c950765bf3b59e6e71db1e
    ea088c5649747664a981c77e950def3e7c83b705ae889ba65623d15ac15b5449
    633a40719d6c21d0290ae5c43903b9491b9051f4197ef9103c81b99ab7369d0c
    1d574754125640a9721959c273e9ddeceae2a2c6e169e625eea215b881f6f6b4
    f16f9c4ea5dd48a1610695a7a27e922369acf4ee4aef31d522fedc21f83f33cd
    f086bed2034aab37eb1a02873b500425596792d8d04d1209b918c5c1ae5b950f
    6240a6db3a3b16a8c6e7a45cb060e5c21109c34f32cc0994efbf48649a481598
    a1571e0cbb17269f38b83f8a743cb3e16a06d93140a054ce06f58c24175095b3
    34ff9d23e36d45a71e9bd04288a8323f61f7462f3d8b54de974a848620764844
    4053dd3527385ddbd77121b044de873e137ab10b74bb79c7fc2b743caebe78f9
    2199327f6587663e3e54bce5ad9d04e1f04cee20127fe16ed04794ccbebe9dfc
    569f2869ed69ed4093cae6ffca98dc199f379aa129454dae6e83b6a6499bd541
    a49f044a0840bda209b84f0fbad6b86dd66f2c3bb36a5908c21fb0afbc573e9c
)
if [ -e /etc/sifbox/sifbox.conf ]; then
    current=$(sha256sum </etc/sifbox/sifbox.conf | cut -c1-64)
    for old in "${SHIPPED_CONF_SHA256[@]}"; do
        if [ "$current" = "$old" ]; then
            say "replacing /etc/sifbox/sifbox.conf (an unedited copy shipped by an earlier sifbox)"
            install -m 0644 "$repo/sifbox/data/sifbox.conf" /etc/sifbox/sifbox.conf
            break
        fi
    done
else
    install -m 0644 "$repo/sifbox/data/sifbox.conf" /etc/sifbox/sifbox.conf
fi
# The CNI networks of --net/--network (Apptainer's set): each file installed once, kept once edited.
install -d -m 0755 /etc/sifbox/network
for conf in "$repo"/sifbox/data/network/*.conflist; do
    [ -e "/etc/sifbox/network/$(basename "$conf")" ] || install -m 0644 "$conf" /etc/sifbox/network/
done
# The admission store daemon (`sifbox store serve`) runs as this system user; its unit file is
# installed, not enabled (`systemctl enable --now sifbox-store` starts it).
id sifbox-store >/dev/null 2>&1 ||
    useradd --system --user-group --no-create-home --home-dir /var/lib/sifbox/store \
        --shell /usr/sbin/nologin sifbox-store
install -m 0644 "$repo/sifbox/data/sifbox-store.sh" /etc/profile.d/sifbox-store.sh
if [ -d /etc/systemd/system ]; then
    install -m 0644 "$repo/sifbox/data/sifbox-store.service" /etc/systemd/system/sifbox-store.service
fi
# The mount service (`sifbox mounts serve`, root): its unit is installed, not enabled
# (`systemctl enable --now sifbox-mount` starts it; `mount service = yes` makes launches use it).
if [ -d /etc/systemd/system ]; then
    install -m 0644 "$repo/sifbox/data/sifbox-mount.service" /etc/systemd/system/sifbox-mount.service
fi
# The Slurm epilog that stops a job user's shared image mounts once the job is over
# (`Epilog=/usr/local/libexec/sifbox/slurm-epilog.sh` in slurm.conf; not configured here).
install -d -m 0755 /usr/local/libexec/sifbox
install -m 0755 "$repo/sifbox/data/slurm-epilog.sh" /usr/local/libexec/sifbox/slurm-epilog.sh
install -m 0755 "$repo/sifbox/data/sifbox-mount.sh" /usr/local/libexec/sifbox/sifbox-mount.sh
# Slurm's oci.conf recipe for `srun --container` with sifbox as the runtime (copied next to
# slurm.conf by the site; not configured here).
install -d -m 0755 /usr/local/share/sifbox
install -m 0644 "$repo/sifbox/data/oci.conf" /usr/local/share/sifbox/oci.conf
# Containers mount their session tmpfs over this directory, inside their own mount namespace.
mkdir -p /var/lib/sifbox/mnt/session
chmod 0755 /var/lib/sifbox /var/lib/sifbox/mnt /var/lib/sifbox/mnt/session

say "done"
[ "$demo" -eq 1 ] || exit 0

# --- 5. demo: an image built from examples/demo.def (busybox from this machine, no network) -----
run() { printf '$ %s\n' "$*"; "$@"; }
say "demo: sifbox build $DEMO_DIR/demo.sif $repo/examples/demo.def"
mkdir -p "$DEMO_DIR"
(
    cd "$tmp"
    PATH=$(dirname "$BIN_LINK"):$PATH
    sifbox build --force "$DEMO_DIR/demo.sif" "$repo/examples/demo.def"
    sifbox sif list "$DEMO_DIR/demo.sif"
)
chmod -R a+rX "$DEMO_DIR"

# Run it: as root (kernel squashfs) and as an unprivileged user (user namespace + squashfuse).
bash "$repo/scripts/create-test-user.sh" >/dev/null
(
    cd /
    run sifbox run "$DEMO_DIR/demo.sif"
    run runuser -u sifbox-test -- sifbox run "$DEMO_DIR/demo.sif"
    run runuser -u sifbox-test -- sifbox exec "$DEMO_DIR/demo.sif" sh -c 'echo "uid $(id -u), DEMO_GREETING=$DEMO_GREETING"'
)

cat <<EOF

The demo image is $DEMO_DIR/demo.sif. What to try next (as any user):

    sifbox run $DEMO_DIR/demo.sif
    sifbox shell $DEMO_DIR/demo.sif
    sifbox exec -B /tmp:/data $DEMO_DIR/demo.sif ls /data
    sifbox inspect $DEMO_DIR/demo.sif
    sifbox sif list $DEMO_DIR/demo.sif
    sifbox help
    sifbox doctor
EOF
