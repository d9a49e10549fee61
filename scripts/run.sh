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
target=$(shipped_target) || {
    echo "scripts/run.sh: use cargo run --release on this machine" >&2
    exit 1
}
bin="target/$target/release/forkecho"
(
    ensure_cross "$target"
    zb zigbuild --release --quiet --target "$target"
) >&2
exec "$bin" "$@"
