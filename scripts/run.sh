#!/usr/bin/env bash
# The README's run command: builds forkecho exactly as it ships (static musl,
# the release size options, the same build as scripts/dist.sh) for this
# machine's architecture, then runs it with the given options.
#
#   scripts/run.sh [OPTION...]      e.g. scripts/run.sh --listen 127.0.0.1:7007 -v
#
# The first run installs the toolchain (Debian's rustc + std source, zig),
# like scripts/test-all.sh; build messages go to stderr, then the server
# replaces this script (signals and the exit status are its own).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh
case "$(uname -m)" in
    x86_64) target=x86_64-unknown-linux-musl ;;
    aarch64) target=aarch64-unknown-linux-musl ;;
    armv7l | armv8l) target=armv7-unknown-linux-musleabihf ;;
    armv6l) target=arm-unknown-linux-musleabihf ;;
    *)
        echo "scripts/run.sh: no shipped build for $(uname -m); use cargo run --release" >&2
        exit 1
        ;;
esac
bin="target/$target/release/forkecho"
(
    ensure_cross "$target"
    zb zigbuild --release --quiet --target "$target"
) >&2
exec "$bin" "$@"
