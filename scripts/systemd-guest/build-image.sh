#!/usr/bin/env bash
# Builds the systemd test guest of scripts/systemd-guest-test.sh into DIR:
#   DIR/rootfs.img   ext4 (label feroot): Debian bookworm arm64, systemd as
#                    PID 1, systemd-networkd (static 10.0.2.15, QEMU user
#                    net), the control agent (fe-agent.service)
#   DIR/vmlinuz, DIR/initrd.img   Debian's arm64 kernel and its initramfs,
#                    taken from the image
# Everything comes from the Debian archive through mmdebstrap, with the
# arm64 maintainer scripts run by qemu-user-static through binfmt_misc
# (registered here if needed, and unregistered again). Needs root.
#
#   scripts/systemd-guest/build-image.sh DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"
mirror="${FORKECHO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
packages=systemd,systemd-sysv,libnss-systemd,udev,dbus,kmod,linux-image-arm64,initramfs-tools,init-system-helpers,iproute2,procps

mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
registered=""
cleanup() {
    [ -z "$registered" ] || echo -1 >/proc/sys/fs/binfmt_misc/qemu-aarch64 || true
    # mmdebstrap unmounts what it mounted in the root (proc, sys, dev), even
    # on failure; should a mount remain, never delete through it.
    if grep -q " $work/" /proc/self/mountinfo; then
        echo "build-image: mounts left under $work, not removed" >&2
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT

# Foreign maintainer scripts: qemu-aarch64-static through binfmt_misc.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    # Debian's own registration line (for systemd-binfmt), written by hand.
    cat /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register
    registered=1
fi

# The initramfs only needs to find the virtio disk: a short module list,
# made before initramfs-tools is installed so its first run uses it.
setup_hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"
printf "MODULES=list\nCOMPRESS=gzip\n" >"$1/etc/initramfs-tools/conf.d/fe-guest.conf"
printf "virtio_mmio\nvirtio_blk\nvirtio_net\nvirtio_console\next4\ncrc32c_generic\n" >"$1/usr/share/initramfs-tools/modules.d/fe-guest"'

customize_hook='set -e
printf "LABEL=feroot / ext4 defaults 0 1\n" >"$1/etc/fstab"
echo fe-guest >"$1/etc/hostname"
install -m 644 "'"$here"'/10-guest.network" "$1/etc/systemd/network/10-guest.network"
install -m 755 "'"$here"'/fe-agent" "$1/usr/local/sbin/fe-agent"
install -m 644 "'"$here"'/fe-agent.service" "$1/etc/systemd/system/fe-agent.service"
chroot "$1" systemctl enable systemd-networkd.service fe-agent.service
# Emulated, every process start costs: no waiting for the network, none of
# the periodic jobs, no logins (the agent is the only way in), and only the
# fstab and SysV generators (the SysV one is what a package with an init
# script meets on a real board) on each daemon-reload.
chroot "$1" systemctl mask systemd-networkd-wait-online.service systemd-logind.service \
    e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
    fstrim.timer dpkg-db-backup.timer getty.target
mkdir -p "$1/etc/systemd/system-generators"
for g in "$1"/usr/lib/systemd/system-generators/*; do
    case "${g##*/}" in
        systemd-fstab-generator | systemd-sysv-generator) ;;
        *) ln -s /dev/null "$1/etc/systemd/system-generators/${g##*/}" ;;
    esac
done
# Nothing may reach the Debian archive from the guest; no apt in the test.
rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*'

# Downloaded packages are kept in $FORKECHO_GUEST_DEBS when set, for the
# next build (the recipe in mmdebstrap(1), "EXAMPLES").
cache_args=()
if [ -n "${FORKECHO_GUEST_DEBS:-}" ]; then
    mkdir -p "$FORKECHO_GUEST_DEBS"
    debs="$(cd "$FORKECHO_GUEST_DEBS" && pwd)"
    cache_args=(--skip=essential/unlink
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
        --setup-hook="sync-in $debs /var/cache/apt/archives/"
        --customize-hook="sync-out /var/cache/apt/archives $debs")
fi

mmdebstrap --quiet --arch=arm64 --variant=minbase --include="$packages" \
    "${cache_args[@]}" --setup-hook="$setup_hook" --customize-hook="$customize_hook" \
    "$suite" "$work/root" "$mirror"

cp "$(ls "$work"/root/boot/vmlinuz-* | tail -n 1)" "$work/vmlinuz"
cp "$(ls "$work"/root/boot/initrd.img-* | tail -n 1)" "$work/initrd.img"
# Room for the tests (a few MB) on top of what is there.
size_mb=$(($(du -sm "$work/root" | cut -f1) + 256))
truncate -s "${size_mb}M" "$work/rootfs.img"
mke2fs -q -t ext4 -L feroot -d "$work/root" "$work/rootfs.img"
mv "$work/rootfs.img" "$work/vmlinuz" "$work/initrd.img" "$out/"
echo "systemd guest: image built in $out ($(du -sh --apparent-size "$out/rootfs.img" | cut -f1))"
