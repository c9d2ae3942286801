#!/usr/bin/env bash
# Build (once) a Debian bookworm rootfs with debootstrap from Debian's
# mirror, and print its path. Cached outside the clone, keyed by a hash of
# the suite and package list, so CI rebuilds it only when the list changes.
#
#   .ci/rootfs.sh systemd   booted with systemd as PID 1 by the systemd
#                           tests (tests/src/machine.rs): the packages'
#                           runtime dependencies, sshd, and nothing else
#   .ci/rootfs.sh mail      the systemd machine plus Debian's postfix and
#                           dovecot-imapd, as an admin installs them, for
#                           the Debian mail host (tests/tests/debian_host.rs)
#   .ci/rootfs.sh bare      the README's commands on a machine without any
#                           of the real parts: only what building needs
#                           (gcc, libssl-dev, pkg-config)
set -euo pipefail

kind=${1:?usage: rootfs.sh systemd|mail|bare}
cache=${CERTSYNC_CI_CACHE:-/var/cache/certsync-ci}
suite=bookworm
mirror=http://deb.debian.org/debian

# openssl pulls libssl3 (the binaries' only library besides libc);
# adduser and passwd: certsync-receive's postinst.
systemd_packages="systemd,systemd-sysv,dbus,openssh-server,openssh-client,openssl,ca-certificates,adduser,passwd"

case "$kind" in
systemd)
    packages="$systemd_packages"
    ;;
mail)
    # A separate flavour, so that every other machine test does not boot
    # two mail daemons it never uses.
    packages="$systemd_packages,postfix,dovecot-imapd"
    ;;
bare)
    packages="gcc,libc6-dev,libssl-dev,pkg-config,ca-certificates"
    ;;
*)
    echo "rootfs.sh: unknown kind $kind" >&2
    exit 2
    ;;
esac

key=$(printf '%s %s %s\n' "$suite" "$kind" "$packages" | sha256sum | cut -c1-12)
dir="$cache/$suite-$kind-$key"
mkdir -p "$cache"
if [ ! -e "$dir/.certsync-complete" ]; then
    rm -rf "$dir.tmp"
    debootstrap --variant=minbase --include="$packages" "$suite" "$dir.tmp" "$mirror" >&2
    # Each boot gets its own machine-id (systemd writes one at first boot
    # when the file is empty) and its own sshd host keys are regenerated
    # by the tests that need them.
    : > "$dir.tmp/etc/machine-id"
    touch "$dir.tmp/.certsync-complete"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
fi
# A stable name for the tests (tests/src/machine.rs reads it).
ln -sfn "$dir" "$cache/$suite-$kind"
echo "$dir"
