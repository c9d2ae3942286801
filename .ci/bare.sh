#!/usr/bin/env bash
# The README's two commands on a machine where none of the real parts is
# installed: a minimal Debian bookworm (.ci/rootfs.sh bare: only gcc,
# libssl-dev and pkg-config, which building needs), run with
# systemd-nspawn as a plain container (no systemd inside), as root.
#
# - the host's Rust toolchain: ~/.rustup bind-mounted read-only, its bin dir
#   on PATH; ~/.cargo (the crate cache, so no download) through a
#   throw-away overlay, so cargo may write its locks without touching the
#   host's;
# - the repo bind-mounted read-only at /src;
# - CARGO_TARGET_DIR=/target inside, backed by a cache dir outside the clone
#   (the first run builds everything; later ones only what changed).
#
# CERTSYNC_REQUIRE_REAL is not set inside: a test whose real part is missing
# must print `SKIP <test>: <part> …` and pass. Prints the same closing line
# as .ci/run; exits non-zero if any test or the demo fails.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${CERTSYNC_CI_CACHE:-/var/cache/certsync-ci}

base=$(.ci/rootfs.sh bare)
work=$(mktemp -d /var/tmp/certsync-bare.XXXXXX)
cleanup() {
    umount "$work/root" 2>/dev/null || umount -l "$work/root" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/upper" "$work/work" "$work/root" "$work/cargo-upper"
mount -t overlay overlay \
    -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/work" "$work/root"
mkdir -p "$cache/bare-target"

toolchain_bin=$(dirname "$(rustup which cargo)")
case "$toolchain_bin" in
"$HOME"/.rustup/*) ;;
*)
    echo "bare.sh: cargo is not from ~/.rustup ($toolchain_bin)" >&2
    exit 2
    ;;
esac
inside_bin=/root/.rustup/${toolchain_bin#"$HOME"/.rustup/}

log="$work/test.log"
status=0
systemd-nspawn --quiet --register=no --keep-unit --console=pipe --directory="$work/root" \
    --machine="certsync-bare-$$" \
    --bind-ro="$HOME/.rustup:/root/.rustup" \
    --overlay="$HOME/.cargo:$work/cargo-upper:/root/.cargo" \
    --bind-ro="$PWD:/src" \
    --bind="$cache/bare-target:/target" \
    --setenv=HOME=/root \
    --setenv=PATH="$inside_bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --setenv=CARGO_HOME=/root/.cargo \
    --setenv=CARGO_TARGET_DIR=/target \
    --setenv=CARGO_TERM_COLOR=never \
    --setenv=CARGO_TERM_PROGRESS_WHEN=never \
    --chdir=/src \
    /bin/sh -c 'set -e
        echo "== what this machine lacks:"
        for p in sshd dockerd nginx postfix dovecot busybox ip systemd-analyze systemd-nspawn openssl ssh-keygen; do
            command -v "$p" >/dev/null 2>&1 || echo "   no $p"
        done
        cargo run -p certsync-tests --example demo
        cargo test --workspace' 2>&1 | tee "$log" || status=$?
rm -rf "/run/systemd/nspawn/propagate/certsync-bare-$$" 2>/dev/null || true
.ci/summary.sh "$log"
exit "$status"
