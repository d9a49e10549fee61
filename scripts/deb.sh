#!/usr/bin/env bash
# Debian packages from the static release binaries, with cargo-deb
# (metadata: [package.metadata.deb] in Cargo.toml; files: deploy/).
#
#   scripts/deb.sh                 # armhf arm64 amd64
#   scripts/deb.sh arm64 ...       # some of them
#
# Nothing is compiled here: each package takes the binary already built at
# $FORKECHO_TARGET_DIR/<triple>/release/forkecho (scripts/dist.sh, or
# `zb zigbuild --release --target <triple>`), where FORKECHO_TARGET_DIR
# defaults to target:
#   armhf  arm-unknown-linux-musleabihf  (ARMv6: Raspberry Pi OS 32-bit)
#   arm64  aarch64-unknown-linux-musl
#   amd64  x86_64-unknown-linux-musl
# Environment:
#   FORKECHO_TARGET_DIR   where the binaries are (default: target)
#   FORKECHO_DEB_OUT      where the .deb files go (default: dist)
#   FORKECHO_DEB_VERSION  full Debian version, e.g. 0.1.1-1 (default: the
#                         Cargo version with revision 1)
#   FORKECHO_LINTIAN=0    skip lintian (default: run it when installed and
#                         fail on any error)
# Installs cargo-deb (cargo install --locked) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${FORKECHO_TARGET_DIR:-target}"
out="${FORKECHO_DEB_OUT:-dist}"
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(armhf arm64 amd64)

triple_for() {
    case "$1" in
        armhf) echo arm-unknown-linux-musleabihf ;;
        arm64) echo aarch64-unknown-linux-musl ;;
        amd64) echo x86_64-unknown-linux-musl ;;
        *)
            echo "deb: unknown architecture $1 (armhf, arm64, amd64)" >&2
            return 1
            ;;
    esac
}

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "deb: cargo install cargo-deb --locked" >&2
    cargo install -q cargo-deb --locked
fi
for tool in dpkg-deb file; do
    command -v "$tool" >/dev/null 2>&1 || { echo "deb: $tool not found (apt-get install dpkg file)" >&2; exit 1; }
done

mkdir -p "$out"
out="$(cd "$out" && pwd)"
# cargo-deb finds the binary under its target directory as
# <dir>/<triple>/release/forkecho: give it a private one holding a copy, so
# it neither builds nor writes into target/.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

version_args=()
[ -z "${FORKECHO_DEB_VERSION:-}" ] || version_args=(--deb-version "$FORKECHO_DEB_VERSION")

debs=()
for arch in "${arches[@]}"; do
    triple=$(triple_for "$arch")
    bin="$target_dir/$triple/release/forkecho"
    [ -x "$bin" ] || {
        echo "deb: $bin missing: build it first (scripts/dist.sh, or zb zigbuild --release --target $triple)" >&2
        exit 1
    }
    desc=$(file -b "$bin")
    case "$desc" in
        *"statically linked"*) ;;
        *)
            echo "check failed: $bin is \"$desc\", not statically linked" >&2
            exit 1
            ;;
    esac
    mkdir -p "$stage/$triple/release"
    cp "$bin" "$stage/$triple/release/forkecho"
    # --no-strip: the release profile strips already (and the host's strip
    # does not know ARM). cargo-deb maps the triple to the Debian arch.
    deb=$(CARGO_TARGET_DIR="$stage" cargo deb --no-build --no-strip --target "$triple" \
        --output "$out/" "${version_args[@]}" 2>"$stage/cargo-deb.log" | tail -n 1) || {
        cat "$stage/cargo-deb.log" >&2
        exit 1
    }
    got=$(dpkg-deb -f "$deb" Architecture)
    [ "$got" = "$arch" ] || { echo "check failed: $deb is for $got, not $arch" >&2; exit 1; }
    echo "deb: $deb ($(stat -c %s "$deb") bytes)"
    debs+=("$deb")
done

if [ "${FORKECHO_LINTIAN:-1}" != 0 ]; then
    if ! command -v lintian >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "deb: apt-get install lintian" >&2
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >/dev/null
    fi
    if command -v lintian >/dev/null 2>&1; then
        # Errors fail the build; warnings are printed (each one kept is
        # explained in deploy/lintian-overrides or the README).
        lintian --fail-on error --tag-display-limit 0 "${debs[@]}"
        echo "deb: lintian: no errors"
    else
        echo "deb: lintian not installed, packages not checked (apt-get install lintian)" >&2
    fi
fi
