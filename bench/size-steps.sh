#!/usr/bin/env bash
# Measures what each size option buys for one target (default armv7), each
# step adding to the previous one, in separate target dirs so nothing leaks.
# Prints a Markdown table. Takes a few minutes: std is rebuilt per step.
#
#   bench/size-steps.sh [TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh
target="${1:-armv7-unknown-linux-musleabihf}"
ensure_host
ensure_cross "$target"
if [ "$BUILD_MODE" != build-std ]; then
    echo "size-steps needs the build-std path (Debian rustc-web + rust-web-src)" >&2
    exit 1
fi
base_flags="$RUSTFLAGS"
steps=(
    "profile only (opt-level=z, lto, codegen-units=1, panic=abort, strip)||"
    "+ build-std-features=optimize_for_size||-Zbuild-std-features=optimize_for_size"
    "+ -Zlocation-detail=none|-Zlocation-detail=none|-Zbuild-std-features=optimize_for_size"
    "+ -Zfmt-debug=none|-Zlocation-detail=none -Zfmt-debug=none|-Zbuild-std-features=optimize_for_size"
    "+ -Cpanic=immediate-abort|-Zlocation-detail=none -Zfmt-debug=none -Zunstable-options -Cpanic=immediate-abort|-Zbuild-std-features=optimize_for_size"
    "+ -Cforce-unwind-tables=no|-Zlocation-detail=none -Zfmt-debug=none -Zunstable-options -Cpanic=immediate-abort -Cforce-unwind-tables=no|-Zbuild-std-features=optimize_for_size"
    "same, opt-level=s|-Zlocation-detail=none -Zfmt-debug=none -Zunstable-options -Cpanic=immediate-abort -Cforce-unwind-tables=no|-Zbuild-std-features=optimize_for_size|s"
)
printf '| step (%s) | bytes |\n| --- | ---: |\n' "$target"
i=0
for step in "${steps[@]}"; do
    IFS='|' read -r name flags cargo_z opt <<<"$step"
    dir="target/size-steps/$i"
    extra=()
    [ -z "$opt" ] || extra+=(--config "profile.release.opt-level=\"$opt\"")
    RUSTFLAGS="$base_flags $flags" cargo-zigbuild zigbuild --release --target "$target" \
        -Zbuild-std=std,panic_abort $cargo_z --target-dir "$dir" "${extra[@]}" >"$dir.log" 2>&1 ||
        { echo "step '$name' failed, see $dir.log" >&2; exit 1; }
    printf '| %s | %s |\n' "$name" "$(stat -c %s "$dir/$target/release/forkecho")"
    i=$((i + 1))
done
