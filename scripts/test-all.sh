#!/usr/bin/env bash
# The one test command: host tests, then for each ARM target the static
# release build and the whole suite under QEMU user mode.
#
#   scripts/test-all.sh                   # host + armv7
#   FORKECHO_TARGETS="armv7-unknown-linux-musleabihf" scripts/test-all.sh
#   FORKECHO_TARGETS="" scripts/test-all.sh   # host only
#
# Installs what is missing on Debian (see scripts/toolchain.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh

TARGETS="${FORKECHO_TARGETS-armv7-unknown-linux-musleabihf}"

ensure_host
echo "== host: cargo test (with the allocation counter)"
cargo test --features alloc-count

for target in $TARGETS; do
    # Each target in a subshell: the build-std environment must not leak
    # into the next target or the host.
    (
        ensure_cross "$target"
        bin="target/$target/release/forkecho"
        echo "== $target: release build"
        zb zigbuild --release --target "$target"
        check_binary "$target" "$bin"
        echo "size: $(stat -c %s "$bin") bytes"

        echo "== $target: unit and integration tests, built for $target, under $(runner_for "$target")"
        zb test --profile qemu-test --features alloc-count --target "$target"

        echo "== $target: integration tests against the release binary under $(runner_for "$target")"
        # The host-built harness drives the exact binary that ships.
        env -u RUSTC -u CARGO -u RUSTC_BOOTSTRAP -u RUSTFLAGS \
            FORKECHO_BIN="$PWD/$bin" FORKECHO_RUNNER="$(runner_for "$target")" \
            FORKECHO_EXPECT_TARGET="$target" \
            cargo test --test echo --test process --test cli
    )
done
echo "== all tests passed (host${TARGETS:+ and $TARGETS})"
