#!/usr/bin/env bash
# The one test command: host tests, then for each Raspberry Pi target the
# static release build and the whole suite under QEMU user mode.
#
#   scripts/test-all.sh                   # host + armv7, armv6, aarch64
#   FORKECHO_TARGETS="armv7-unknown-linux-musleabihf" scripts/test-all.sh
#   FORKECHO_TARGETS="" scripts/test-all.sh   # host only
#   FORKECHO_SKIP_BOOT=1 scripts/test-all.sh  # without the full-system boots
#
# Installs what is missing on Debian (see scripts/toolchain.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh

# All of .cargo/config.toml's targets by default, in its order: armv7 comes
# first there because the armv6 step uses its binary as a negative control.
TARGETS="${FORKECHO_TARGETS-$(all_targets | tr '\n' ' ')}"

# Every integration test file (--tests: a new one cannot be left out; the
# allocation test needs the counting build and is skipped by cargo), built
# for this machine without the build-std environment, against the binary
# BIN of TARGET, run under RUNNER (none: natively).
host_tests_against() {
    local bin="$1" target="$2" runner="${3-}"
    env -u RUSTC -u CARGO -u RUSTC_BOOTSTRAP -u RUSTFLAGS \
        FORKECHO_BIN="$PWD/$bin" FORKECHO_RUNNER="$runner" FORKECHO_EXPECT_TARGET="$target" \
        cargo test --tests
}

ensure_host
echo "== host: cargo test (with the allocation counter)"
cargo test --features alloc-count,sandbox-test
# The shipped build of this machine (the amd64 package's binary, what
# scripts/run.sh runs): every integration test against it, natively.
(
    host=$(shipped_target)
    ensure_cross "$host"
    echo "== host: integration tests against the shipped $host binary"
    zb zigbuild --release --target "$host"
    check_binary "$host" "target/$host/release/forkecho"
    host_tests_against "target/$host/release/forkecho" "$host"
)
echo "== host: deploy/ units (systemd-analyze verify) and init script"
scripts/verify-deploy.sh

for target in $TARGETS; do
    # Each target in a subshell: the build-std environment must not leak
    # into the next target or the host.
    (
        ensure_cross "$target"
        bin="target/$target/release/forkecho"
        echo "== $target: release build"
        zb zigbuild --release --target "$target"
        check_binary "$target" "$bin"
        check_size "$target" "$bin"
        if [ "$target" = arm-unknown-linux-musleabihf ]; then
            # The proof that the ARMv6 build has no ARMv7-only instruction is
            # that everything below runs on the Pi 1 core (-cpu arm1176); the
            # proof that this CPU model would notice is the ARMv7 build dying
            # on it with SIGILL.
            v7=target/armv7-unknown-linux-musleabihf/release/forkecho
            if [ -x "$v7" ]; then
                rc=0
                $(runner_for "$target") "$v7" --version >/dev/null 2>&1 || rc=$?
                if [ "$rc" != 132 ]; then
                    echo "check failed: armv7 binary under -cpu arm1176 gave status $rc, expected 132 (SIGILL)" >&2
                    exit 1
                fi
                echo "arm1176 rejects the armv7 build (SIGILL), as it must"
            fi
        fi

        echo "== $target: unit and integration tests, built for $target, under $(runner_for "$target")"
        # Through scripts/qemu-watchdog: a test binary the emulator leaves
        # stuck is reported and run once more instead of hanging CI.
        runner_var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUNNER"
        export "$runner_var=$PWD/scripts/qemu-watchdog $(runner_for "$target")"
        zb test --profile qemu-test --features alloc-count,sandbox-test --target "$target"
        unset "$runner_var"

        echo "== $target: integration tests against the release binary under $(runner_for "$target")"
        # The host-built harness drives the exact binary that ships.
        host_tests_against "$bin" "$target" "$(runner_for "$target")"
    )
done
# The release binaries on real ARM kernels with BusyBox init (qemu-system):
# deploy/forkecho.init, privileges, limits, shutdown, on five board models.
# FORKECHO_SKIP_BOOT=1 skips it for a quick run; CI never does.
if [ -n "$TARGETS" ]; then
    echo "== full-system boots (scripts/boot-test.sh)"
    FORKECHO_BOOT_TRIPLES="$TARGETS" scripts/boot-test.sh
fi
# The .deb under systemd as PID 1 (Debian arm64 guest): install, the three
# unit pairs, stop, upgrade, purge. Needs the AArch64 build.
case " $TARGETS " in
*" aarch64-unknown-linux-musl "*)
    echo "== the arm64 package in a systemd guest (scripts/systemd-guest-test.sh)"
    scripts/systemd-guest-test.sh
    ;;
esac
echo "== all tests passed (host${TARGETS:+ and $TARGETS})"
