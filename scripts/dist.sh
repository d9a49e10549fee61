#!/usr/bin/env bash
# Release artifacts: builds the static binary for every Raspberry Pi target
# into dist/ as forkecho-<version>-<target>, with SHA256SUMS and a size table.
#
#   scripts/dist.sh            # all three targets
#   scripts/dist.sh TARGET...  # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(all_targets)

ensure_host
rm -rf dist
mkdir -p dist
for target in "${targets[@]}"; do
    (
        ensure_cross "$target"
        zb zigbuild --release --target "$target"
        bin="target/$target/release/forkecho"
        check_binary "$target" "$bin"
        check_size "$target" "$bin"
        # The binary must say what it is: a user on a board checks this.
        got=$($(runner_for "$target") "$bin" --version)
        [ "$got" = "forkecho $version ($target)" ] || {
            echo "check failed: $bin --version says \"$got\"" >&2
            exit 1
        }
        cp "$bin" "dist/forkecho-$version-$target"
    )
done
# Debian packages: armhf is the ARMv6 build, arm64 the AArch64 one, amd64 a
# static x86_64 musl build made here for the package only.
if [ ${#@} -eq 0 ]; then
    (
        ensure_cross x86_64-unknown-linux-musl
        zb zigbuild --release --target x86_64-unknown-linux-musl
        check_binary x86_64-unknown-linux-musl target/x86_64-unknown-linux-musl/release/forkecho
    )
    FORKECHO_DEB_OUT=dist scripts/deb.sh armhf arm64 amd64
fi
cd dist
sha256sum forkecho-* forkecho_*.deb 2>/dev/null > SHA256SUMS || sha256sum forkecho-* > SHA256SUMS
{
    printf '| file | bytes |\n| --- | ---: |\n'
    for f in forkecho-* forkecho_*.deb; do
        [ -e "$f" ] && printf '| %s | %s |\n' "$f" "$(stat -c %s "$f")"
    done
} > SIZES.md
cat SIZES.md
echo "dist/: $(ls | tr '\n' ' ')"
