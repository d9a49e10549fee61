#!/usr/bin/env bash
# Full-system boot tests: each target boots a real Debian ARM kernel with
# BusyBox init in qemu-system, starts forkecho with the unmodified
# deploy/forkecho.init, and is checked from the host through QEMU's user
# network (127.0.0.1 only, a free port found at run time).
#
#   scripts/boot-test.sh                        # every target below
#   FORKECHO_BOOT_TARGETS="armv7/virt armv6/raspi0" scripts/boot-test.sh
#   FORKECHO_BOOT_TARGET_DIR=/other/target scripts/boot-test.sh
#       # binaries from DIR/<triple>/release/forkecho (default: ./target)
#   FORKECHO_BOOT_TRIPLES="armv7-unknown-linux-musleabihf" scripts/boot-test.sh
#       # only the boards that run these builds
#   FORKECHO_SKIP_BOOT=1 scripts/boot-test.sh   # prints that it skipped
#
# Installs qemu-system-arm with apt-get if missing; kernels and BusyBox come
# from Debian's archive (dpkg --add-architecture armhf arm64 armel,
# apt-get download, dpkg-deb -x), cached with the built initramfs under
# .cache/boot/ (delete it to fetch newer kernels). Prints one line per check
# (`ok - ...` / `not ok - ...`), the wall time per target, and last
# `N passed, M failed`; exits non-zero on any failure.
set -euo pipefail

if [ "${FORKECHO_SKIP_BOOT:-}" = 1 ]; then
    echo "boot-test: skipped (FORKECHO_SKIP_BOOT=1)"
    exit 0
fi

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
BOOT="$HERE/boot"
CACHE="$ROOT/.cache/boot"
BINS="${FORKECHO_BOOT_TARGET_DIR:-$ROOT/target}"
mkdir -p "$CACHE/debs" "$CACHE/kit" "$CACHE/initramfs" "$CACHE/run"

# name | rust target | kernel flavour:arch | busybox arch | qemu | machine options |
# dtb (in the kernel package) | extra kernel arguments | console | NIC | modules | echo MiB
# - virt: Cortex-A7 / A53 (Pi 2 / Pi 3 cores) with virtio networking.
# - raspi0: the real ARM1176 (ARMv6): the ARMv6 build, the rpi kernel, armel
#   BusyBox; QEMU 7.2 lacks the PM block the rpi kernel probes, hence the
#   initcall_blacklist. -icount: the ARM1176 has no generic timer, so Linux
#   ticks on the BCM2835 system timer, whose QEMU model arms a compare value
#   already passed ~71 minutes late (a 32-bit wrap); on a loaded host the
#   vCPU is descheduled between the kernel's counter read and its compare
#   write often enough to lose the tick and hang the guest (seen 3 times in
#   ~15 runs at load 10+). With icount the clock only moves with executed
#   instructions, so that window is a few nanoseconds. It costs speed.
# - raspi2b / raspi3b: the boards' SoC models; USB networking (dwc2 +
#   usb-net) is slow, ~100 KiB/s, hence 1 MiB. raspi3b's device tree gives
#   the PL011 to Bluetooth: the console is the mini UART (second serial).
TARGET_TABLE='
armv7/virt|armv7-unknown-linux-musleabihf|armmp:armhf|armhf|qemu-system-arm|-M virt -cpu cortex-a7 -m 256||console=ttyAMA0|-serial stdio|virtio-net-device|virtio_mmio virtio_net|4
aarch64/virt|aarch64-unknown-linux-musl|arm64:arm64|arm64|qemu-system-aarch64|-M virt -cpu cortex-a53 -m 256||console=ttyAMA0|-serial stdio|virtio-net-device|virtio_mmio virtio_net|4
armv6/raspi0|arm-unknown-linux-musleabihf|rpi:armel|armel|qemu-system-arm|-M raspi0 -icount shift=4|bcm2835-rpi-zero.dtb|console=ttyAMA0 initcall_blacklist=bcm2835_power_driver_init|-serial stdio|usb-net|usbnet cdc_ether|1
armv7/raspi2b|armv7-unknown-linux-musleabihf|armmp:armhf|armhf|qemu-system-arm|-M raspi2b|bcm2836-rpi-2-b.dtb|console=ttyAMA0|-serial stdio|usb-net|phy_generic dwc2 usbnet cdc_ether|1
aarch64/raspi3b|aarch64-unknown-linux-musl|arm64:arm64|arm64|qemu-system-aarch64|-M raspi3b|broadcom/bcm2837-rpi-3-b.dtb|console=ttyS1,115200|-serial null -serial stdio|usb-net|phy_generic dwc2 usbnet cdc_ether|1
'
ALL_TARGETS=$(echo "$TARGET_TABLE" | sed -n 's/|.*//p' | tr '\n' ' ')
# FORKECHO_BOOT_TRIPLES (set by scripts/test-all.sh to the targets it built):
# only the boards whose build is in that list.
if [ -n "${FORKECHO_BOOT_TRIPLES+x}" ]; then
    ALL_TARGETS=$(echo "$TARGET_TABLE" | while IFS='|' read -r name triple _; do
        case " $FORKECHO_BOOT_TRIPLES " in *" $triple "*) printf '%s ' "$name" ;; esac
    done)
fi
TARGETS="${FORKECHO_BOOT_TARGETS-$ALL_TARGETS}"

RESULTS="$CACHE/run/results.$$"
: >"$RESULTS"
say() { echo "$1" | tee -a "$RESULTS"; }

# ---- cleanup: the guest is killed by its PID whatever happens --------------
checker_pid=""
qemu_pidfile="$CACHE/run/qemu.$$.pid"
kill_guest() {
    if [ -n "$checker_pid" ] && kill -0 "$checker_pid" 2>/dev/null; then
        kill -TERM "$checker_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$checker_pid" 2>/dev/null || true
    fi
    checker_pid=""
    if [ -f "$qemu_pidfile" ]; then
        local pid
        pid=$(cat "$qemu_pidfile" 2>/dev/null || true)
        # Only if that PID is still one of our QEMUs (not a reused PID).
        if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^qemu-system-.*hostfwd=tcp:127.0.0.1:"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$qemu_pidfile"
    fi
}
trap 'kill_guest; rm -f "$RESULTS"' EXIT
trap 'exit 130' INT TERM

# ---- host packages -----------------------------------------------------------
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
APT=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        # A list of one architecture failing to sync (e.g. a security
        # suite) is not fatal: the kernels are in main.
        $SUDO apt-get "${APT[@]}" update -qq >/dev/null 2>&1 ||
            echo "# boot-test: apt-get update reported errors (continuing)" >&2
        apt_updated=1
    fi
}
need=()
command -v qemu-system-arm >/dev/null 2>&1 && command -v qemu-system-aarch64 >/dev/null 2>&1 || need+=(qemu-system-arm)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
    echo "# boot-test: apt-get install ${need[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT[@]}" install -y -qq "${need[@]}" >/dev/null
fi

# ---- downloads (cached) ---------------------------------------------------
foreign_ready=""
ensure_foreign() {
    [ -z "$foreign_ready" ] || return 0
    local a added=""
    for a in armhf arm64 armel; do
        if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
            $SUDO dpkg --add-architecture "$a"
            added=1
        fi
    done
    [ -z "$added" ] || apt_updated=""
    apt_update
    foreign_ready=1
}
cached_deb() { # cached_deb GLOB: the newest cached .deb matching, or status 1
    local f
    # shellcheck disable=SC2012,SC2086 # $1 is a glob; Debian file names are plain
    f=$(ls -1 "$CACHE/debs/"$1 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$f" ] && echo "$f"
}
kernel_glob() { echo "linux-image-[0-9]*-${1%%:*}_*_${1##*:}.deb"; }
busybox_glob() { echo "busybox-static_*_$1.deb"; }
# fetch GLOB PACKAGE:ARCH: downloads the package unless a .deb matching GLOB
# is cached; a kernel metapackage is resolved to the package it depends on.
# Runs in the main shell (apt-get update once); a failure only says so: the
# target that needs the file reports it.
fetch() {
    local glob="$1" spec="$2" pkg
    cached_deb "$glob" >/dev/null && return 0
    ensure_foreign
    pkg="${spec%%:*}"
    case "$pkg" in
        linux-image-[a-z]*)
            pkg=$(apt-cache depends "$spec" 2>/dev/null |
                sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -1)
            [ -n "$pkg" ] || { echo "# boot-test: cannot resolve $spec" >&2; return 0; }
            ;;
    esac
    echo "# boot-test: apt-get download $pkg:${spec##*:}"
    (cd "$CACHE/debs" && apt-get "${APT[@]}" download -qq "$pkg:${spec##*:}" >/dev/null 2>&1) ||
        echo "# boot-test: apt-get download $pkg:${spec##*:} failed" >&2
}
# kit DEB -> directory with what the guests need of that package: the kernel,
# the dtbs, modules.builtin and the network/USB/virtio modules.
kit() {
    local deb="$1" dir
    dir="$CACHE/kit/$(basename "$deb" .deb)"
    if [ ! -f "$dir/.done" ]; then
        rm -rf "$dir"
        mkdir -p "$dir" || return 1
        case "$(basename "$deb")" in
            busybox-*) dpkg-deb -x "$deb" "$dir" || return 1 ;;
            *)
                dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards \
                    './boot/vmlinuz-*' './usr/lib/linux-image-*/*bcm283*' \
                    './lib/modules/*/modules.builtin' './lib/modules/*/kernel/drivers/net/*' \
                    './lib/modules/*/kernel/net/core/*' './lib/modules/*/kernel/drivers/usb/*' \
                    './lib/modules/*/kernel/drivers/virtio/*' || return 1
                ;;
        esac
        touch "$dir/.done" || return 1
    fi
    echo "$dir"
}

# ---- one target ------------------------------------------------------------
run_target() {
    local name="$1" line triple kflav bbarch qemu machine dtb append serial nic modules mib
    line=$(echo "$TARGET_TABLE" | grep "^$name|" || true)
    if [ -z "$line" ]; then
        say "not ok - $name: no such target (known: $ALL_TARGETS)"
        return
    fi
    IFS='|' read -r _ triple kflav bbarch qemu machine dtb append serial nic modules mib <<<"$line"
    local bin="$BINS/$triple/release/forkecho"
    if [ ! -x "$bin" ]; then
        say "not ok - $name: no forkecho binary at $bin (build it, or set FORKECHO_BOOT_TARGET_DIR)"
        return
    fi
    local kdeb bdeb kkit bkit kernel dtbpath="" version safe base key
    if ! kdeb=$(cached_deb "$(kernel_glob "$kflav")") || ! bdeb=$(cached_deb "$(busybox_glob "$bbarch")"); then
        say "not ok - $name: could not download the kernel or BusyBox from Debian's archive"
        return
    fi
    if ! kkit=$(kit "$kdeb") || ! bkit=$(kit "$bdeb"); then
        say "not ok - $name: could not unpack $(basename "$kdeb") or $(basename "$bdeb")"
        return
    fi
    kernel=$(echo "$kkit"/boot/vmlinuz-*)
    [ -f "$kernel" ] || { say "not ok - $name: no kernel in $(basename "$kdeb")"; return; }
    version=$(basename "$kernel" | sed 's/^vmlinuz-//')
    if [ -n "$dtb" ]; then
        dtbpath="$kkit/usr/lib/linux-image-$version/$dtb"
        [ -f "$dtbpath" ] || { say "not ok - $name: no $dtb in $(basename "$kdeb")"; return; }
    fi
    # The base initramfs (BusyBox + modules) is cached; this run's files are
    # appended to a copy of it as a second archive.
    safe=${name//\//-}
    base="$CACHE/initramfs/base-$safe.cpio"
    key="$(basename "$kdeb") $(basename "$bdeb") $modules $(cat "$BOOT/mkinitramfs.py" "$BOOT/newc.py" | sha256sum | cut -c1-16)"
    if [ ! -f "$base" ] || [ "$(cat "$base.key" 2>/dev/null)" != "$key" ]; then
        if ! python3 -B "$BOOT/mkinitramfs.py" base --kit "$kkit" --busybox "$bkit/bin/busybox" \
            --modules "$modules" --out "$base" >/dev/null; then
            say "not ok - $name: building the initramfs failed"
            return
        fi
        echo "$key" >"$base.key"
    fi
    if ! python3 -B "$BOOT/mkinitramfs.py" run --base "$base" --out "$CACHE/initramfs/run-$safe.cpio" \
        "$bin=usr/local/bin/forkecho:755" \
        "$ROOT/deploy/forkecho.init=etc/init.d/forkecho:755" \
        "$BOOT/rcS=etc/init.d/rcS:755" \
        "$BOOT/inittab=etc/inittab:644" \
        "$BOOT/fe=usr/local/sbin/fe:755"; then
        say "not ok - $name: building the initramfs failed"
        return
    fi
    echo "# $name: $qemu $machine, kernel $version, $(basename "$bdeb" .deb), $(basename "$bin") $(stat -c %s "$bin") bytes"
    local rc=0
    timeout -k 5 600 python3 -B "$BOOT/check.py" --name "$name" --triple "$triple" \
        --qemu "$qemu" --machine "$machine" --kernel "$kernel" --dtb "$dtbpath" \
        --initrd "$CACHE/initramfs/run-$safe.cpio" \
        --append "$append rdinit=/init panic=-1" --serial "$serial" --nic "$nic" \
        --echo-mib "$mib" --log "$CACHE/run/$safe.console.log" --pidfile "$qemu_pidfile" \
        --results "$RESULTS" &
    checker_pid=$!
    wait "$checker_pid" || rc=$?
    checker_pid=""
    kill_guest
    if [ "$rc" != 0 ] && ! grep -q "^not ok - $name:" "$RESULTS"; then
        say "not ok - $name: the checker failed with status $rc (console log: .cache/boot/run/$safe.console.log)"
    fi
}

echo "# boot-test: $(qemu-system-arm --version | head -1); targets: $TARGETS"
t_all=$(date +%s)
for t in $TARGETS; do
    line=$(echo "$TARGET_TABLE" | grep "^$t|" || true)
    [ -n "$line" ] || continue
    IFS='|' read -r _ _ kflav bbarch _ <<<"$line"
    fetch "$(kernel_glob "$kflav")" "linux-image-${kflav%%:*}:${kflav##*:}"
    fetch "$(busybox_glob "$bbarch")" "busybox-static:$bbarch"
done
echo "# boot-test: kernels and BusyBox ready in $(($(date +%s) - t_all)) s"
for t in $TARGETS; do
    t0=$(date +%s)
    run_target "$t" || say "not ok - $t: setup failed (status $?)"
    echo "# $t: wall time $(($(date +%s) - t0)) s"
done
passed=$(grep -c '^ok - ' "$RESULTS" || true)
failed=$(grep -c '^not ok - ' "$RESULTS" || true)
echo "# boot-test: total wall time $(($(date +%s) - t_all)) s; console logs in .cache/boot/run/"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
