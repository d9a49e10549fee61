#!/usr/bin/env bash
# The Debian package in a real systemd system: boots Debian bookworm arm64
# (systemd as PID 1, Debian's kernel) in qemu-system-aarch64 -M virt
# -cpu cortex-a53, installs forkecho from the arm64 .deb and checks the
# standalone service (Type=notify, DynamicUser, hardening), an echo through
# QEMU user networking, the drain on stop, the socket-activated and inetd
# pairs, the journal, an upgrade to a rebuilt package and the purge.
#
#   scripts/systemd-guest-test.sh
#
# Environment:
#   FORKECHO_SKIP_BOOT=1   print "skipped" and exit 0
#   FORKECHO_TARGET_DIR    where the release binaries are (default: target);
#                          the .deb is made from
#                          $FORKECHO_TARGET_DIR/aarch64-unknown-linux-musl/release/forkecho
#   FORKECHO_GUEST_SMP     guest CPUs (default 2)
# The image (root filesystem, kernel, initramfs) is cached in
# .cache/systemd-guest/<hash of the image recipe>/, the Debian packages it
# was made from in .cache/systemd-guest/debs/, the guest console of the last
# run in .cache/systemd-guest/last-console.log. Needs root (mmdebstrap, binfmt_misc);
# installs what is missing with apt-get. Guest traffic: QEMU user net only,
# forwarded from 127.0.0.1; the guest itself reaches nothing (restrict=on).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${FORKECHO_SKIP_BOOT:-}" = 1 ]; then
    echo "systemd guest: skipped (FORKECHO_SKIP_BOOT=1)"
    exit 0
fi

started=$(date +%s)
target_dir="${FORKECHO_TARGET_DIR:-target}"
cache=.cache/systemd-guest
mkdir -p "$cache"
work=$(mktemp -d)
qemu_pid_file="$work/qemu.pid"
cleanup() {
    # The driver kills QEMU itself; this catches an interrupted driver.
    if [ -s "$qemu_pid_file" ]; then
        pid=$(cat "$qemu_pid_file")
        if kill -0 "$pid" 2>/dev/null && grep -q qemu-system "/proc/$pid/cmdline" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # The guest's console of the last run, for a look after a failure.
    [ ! -f "$work/console.log" ] || cp "$work/console.log" "$cache/last-console.log"
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail_early() {
    echo "FAIL: $1" >&2
    echo "0 passed, 1 failed"
    exit 1
}

[ "$(id -u)" = 0 ] || fail_early "needs root (mmdebstrap, binfmt_misc, mke2fs -d)"

# Host tools.
pkgs=()
command -v mmdebstrap >/dev/null 2>&1 || pkgs+=(mmdebstrap)
[ -x /usr/bin/qemu-aarch64-static ] || pkgs+=(qemu-user-static)
command -v qemu-system-aarch64 >/dev/null 2>&1 || pkgs+=(qemu-system-arm)
command -v mke2fs >/dev/null 2>&1 || pkgs+=(e2fsprogs)
command -v arch-test >/dev/null 2>&1 || pkgs+=(arch-test)
command -v dpkg-deb >/dev/null 2>&1 || pkgs+=(dpkg)
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "systemd guest: apt-get install ${pkgs[*]}" >&2
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

# The packages under test: the release binary, and the same rebuilt with a
# higher version for the upgrade.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
mkdir -p "$work/payload"
FORKECHO_TARGET_DIR="$target_dir" FORKECHO_DEB_OUT="$work/payload" FORKECHO_LINTIAN=0 \
    scripts/deb.sh arm64 >"$work/deb.log" 2>&1 || { cat "$work/deb.log" >&2; fail_early "scripts/deb.sh arm64"; }
FORKECHO_TARGET_DIR="$target_dir" FORKECHO_DEB_OUT="$work/payload" FORKECHO_LINTIAN=0 \
    FORKECHO_DEB_VERSION="$version-2" \
    scripts/deb.sh arm64 >>"$work/deb.log" 2>&1 || { cat "$work/deb.log" >&2; fail_early "scripts/deb.sh arm64 (upgrade)"; }
deb="forkecho_${version}-1_arm64.deb"
deb_new="forkecho_${version}-2_arm64.deb"
if [ ! -f "$work/payload/$deb" ] || [ ! -f "$work/payload/$deb_new" ]; then
    fail_early "packages not found: $(ls "$work/payload")"
fi
echo "systemd guest: packages $deb, $deb_new"
# A second small disk carries them into the guest.
truncate -s 16M "$work/payload.img"
mke2fs -q -t ext4 -L fepayload -d "$work/payload" "$work/payload.img"

# The guest image, rebuilt only when its recipe changes.
key=$(cat scripts/systemd-guest/build-image.sh scripts/systemd-guest/fe-agent \
    scripts/systemd-guest/fe-agent.service scripts/systemd-guest/10-guest.network |
    sha256sum | cut -c1-16)
image_dir="$cache/$key"
if [ ! -f "$image_dir/rootfs.img" ]; then
    echo "systemd guest: building the image ($image_dir; takes a few minutes)"
    t=$(date +%s)
    FORKECHO_GUEST_DEBS="$cache/debs" scripts/systemd-guest/build-image.sh "$image_dir" ||
        fail_early "image build"
    echo "systemd guest: image built in $(($(date +%s) - t)) s"
    # Older images of this test are of no further use (the downloaded
    # packages in $cache/debs are: apt checks them against the archive).
    for old in "$cache"/*/; do
        case "$old" in
            "$image_dir/" | "$cache/debs/") ;;
            *) rm -rf --one-file-system "$old" ;;
        esac
    done
else
    echo "systemd guest: cached image $image_dir"
fi

# The driver prints one line per check and the final count; the trap
# above removes the work directory (and QEMU, should the driver die).
rc=0
python3 scripts/systemd-guest/driver.py \
    --image "$image_dir/rootfs.img" --kernel "$image_dir/vmlinuz" --initrd "$image_dir/initrd.img" \
    --payload "$work/payload.img" --deb "$deb" --deb-new "$deb_new" --workdir "$work" \
    --smp "${FORKECHO_GUEST_SMP:-2}" --started "$started" || rc=$?
exit $rc
