# Sourced by the other scripts: finds or installs what a cross build and a
# QEMU test run need, and picks how to build each target's standard library.
#
#   ensure_host             cargo (rustup), util-linux tools, file, systemd,
#                           prometheus-client (PyPI)
#   ensure_cross TARGET     zig linker, qemu-user, and either the rustup std
#                           for TARGET or Debian's rustc + std source (build-std)
#   zb ARGS...              cargo-zigbuild with the chosen mode's flags
#   runner_for TARGET       the QEMU command for TARGET (from .cargo/config.toml)
#   shipped_target          the static musl target of this machine
#   all_targets             the Raspberry Pi targets (.cargo/config.toml's
#                           [target.*] sections, in order: armv7 first)
#
# Installs only on Debian/Ubuntu (apt-get) and PyPI (pip); elsewhere it says
# what is missing and stops.

_apt_updated=""
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "toolchain: missing packages: $* (install them; no apt-get here)" >&2
        return 1
    fi
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ -z "$_apt_updated" ]; then
        $sudo apt-get update -qq
        _apt_updated=1
    fi
    echo "toolchain: apt-get install $*" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

ensure_host() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "toolchain: cargo not found; install Rust with rustup first" >&2
        return 1
    fi
    local pkgs=()
    command -v prlimit >/dev/null 2>&1 || pkgs+=(util-linux)
    command -v setpriv >/dev/null 2>&1 || pkgs+=(util-linux)
    command -v file >/dev/null 2>&1 || pkgs+=(file)
    # The real activator for the socket-activation and inetd tests, and the
    # unit checker for deploy/.
    command -v systemd-socket-activate >/dev/null 2>&1 || pkgs+=(systemd)
    [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
    # The Prometheus text-format parser that tests/metrics.rs reads the
    # --metrics-file with.
    python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus-client
}

# .cargo/config.toml is the one place that names the targets, their QEMU
# runners and their rustflags; everything here is read from it.
_config="$(dirname "${BASH_SOURCE[0]}")/../.cargo/config.toml"

# config_value TARGET KEY: the value of KEY in [target.TARGET], as one line
# of words (quotes, brackets and commas of TOML strings and arrays removed).
config_value() {
    awk -v sec="[target.$1]" -v key="$2" '
        /^\[/ { on = ($0 == sec); next }
        on && $1 == key { sub(/^[^=]*=[ ]*/, ""); gsub(/", *"/, " "); gsub(/[]["]/, ""); print; exit }
    ' "$_config"
}

all_targets() {
    sed -n 's/^\[target\.\([^]]*\)\]$/\1/p' "$_config"
}

runner_for() {
    config_value "$1" runner
}

# The shipped target for this machine (what scripts/run.sh and the
# benchmarks build): the static musl build of its architecture.
shipped_target() {
    case "$(uname -m)" in
        x86_64) echo x86_64-unknown-linux-musl ;;
        aarch64) echo aarch64-unknown-linux-musl ;;
        armv7l | armv8l) echo armv7-unknown-linux-musleabihf ;;
        armv6l) echo arm-unknown-linux-musleabihf ;;
        *)
            echo "toolchain: no shipped build for $(uname -m)" >&2
            return 1
            ;;
    esac
}

# Which std to use for a target: "rustup" when `rustup target add` has
# installed it, else "build-std" (Debian's rustc-web + rust-web-src compile
# std from source; see README, "Building for ARM").
BUILD_MODE=""
ensure_cross() {
    local target="$1"
    local pkgs=()
    local qemu
    qemu=$(runner_for "$target" | cut -d' ' -f1)
    [ -z "$qemu" ] || command -v "$qemu" >/dev/null 2>&1 || pkgs+=(qemu-user)
    if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        BUILD_MODE=rustup
    else
        BUILD_MODE=build-std
        [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || pkgs+=(rustc-web)
        [ -d /usr/lib/rustlib/src/rust/library ] || pkgs+=(rust-web-src)
    fi
    [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
    if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
        echo "toolchain: pip install ziglang cargo-zigbuild" >&2
        python3 -m pip install -q ziglang cargo-zigbuild
        hash -r
    fi
    if [ "$BUILD_MODE" = build-std ]; then
        # Debian's compiler matches the std source it ships; RUSTC_BOOTSTRAP
        # enables -Zbuild-std on a stable compiler; zig supplies crt1.o and
        # libc.a, so rustc must not add its own (absent) musl objects.
        export RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo RUSTC_BOOTSTRAP=1
        export RUSTFLAGS="${RUSTFLAGS:-} -C link-self-contained=no"
        # RUSTFLAGS replaces .cargo/config.toml's rustflags: repeat them.
        RUSTFLAGS="$RUSTFLAGS $(config_value "$target" rustflags)"
    fi
    echo "toolchain: $target with $BUILD_MODE std ($(${RUSTC:-rustc} --version))" >&2
}

# Size options for release builds on the build-std path (what each buys:
# bench/size-steps.sh): std compiled for size, no file/line strings in
# panics, Debug formatting compiled out (nothing of ours prints with it), and
# panics that abort at once without formatting a message. Not for test
# builds: the harness needs unwinding and Debug. No unwind tables either:
# nothing unwinds, and on ARM they cost 1.6 KB. No RELRO segment: only a
# dynamic loader makes it read-only, and a static musl binary has none (it
# stayed writable), while as a segment of its own it was one more mapping
# for every fork to copy and every exit to tear down.
SIZE_RUSTFLAGS="-Cforce-unwind-tables=no -Clink-arg=-Wl,-z,norelro -Zlocation-detail=none -Zfmt-debug=none -Zunstable-options -Cpanic=immediate-abort"

# cargo-zigbuild SUBCOMMAND ARGS, plus -Zbuild-std where needed. Release
# builds (`zigbuild`) get the size options and the panic_abort runtime.
zb() {
    local sub="$1"
    shift
    if [ "$BUILD_MODE" = build-std ]; then
        if [ "$sub" = zigbuild ]; then
            RUSTFLAGS="$RUSTFLAGS $SIZE_RUSTFLAGS" cargo-zigbuild "$sub" "$@" \
                -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size
        else
            cargo-zigbuild "$sub" "$@" -Zbuild-std
        fi
    else
        cargo-zigbuild "$sub" "$@"
    fi
}

# The armv7 size budget (bytes): the measured size plus 2%. The hostile-load
# work (clean shutdown, eviction at the cap, urgent data, non-blocking log,
# the signal table) took the binary from 119,192 to 126,824 bytes; the
# sandbox, the metrics file and UDP echo to 152,800; reading passwd without
# std::fs and plainer argument handling brought it to 148,416. Issue 11's
# work brought it to 109,916 (ARM code, its goal was 110,000): no musl
# printf/stdio behind libunwind's error path (-11.1 KB), a hand-written
# parser instead of argh (-4.6 KB), no std runtime (-4.5 KB), a start-up
# arena instead of zig's malloc (-3.8 KB), raw set*id and fstat64 calls
# (-3.5 KB), no libunwind in size builds (-1.8 KB), no OnceLock or sysconf
# (-1.7 KB) and smaller pieces (git log for each); no RELRO segment took
# it to 109,880. Thumb-2 code would be about 88 KB (not switched yet, see
# .cargo/config.toml).
# Size is deterministic for a given toolchain: a gate, not a timing.
SIZE_BUDGET_ARMV7=112080

# Fails when the armv7 release binary outgrows its budget. Only on the
# build-std path: the rustup path cannot use the size options above.
check_size() {
    local target="$1" bin="$2" size
    size=$(stat -c %s "$bin")
    echo "size: $size bytes ($target, $BUILD_MODE std)"
    if [ "$target" = armv7-unknown-linux-musleabihf ] && [ "$BUILD_MODE" = build-std ] &&
        [ "$size" -gt "$SIZE_BUDGET_ARMV7" ]; then
        echo "check failed: $bin is $size bytes, over the budget of $SIZE_BUDGET_ARMV7" >&2
        return 1
    fi
}

# Checks that `file` calls the binary static and of the right architecture.
check_binary() {
    local target="$1" bin="$2" want
    case "$target" in
        arm*-*) want="ELF 32-bit LSB executable, ARM" ;;
        aarch64-*) want="ELF 64-bit LSB executable, ARM aarch64" ;;
        x86_64-*) want="ELF 64-bit LSB executable, x86-64" ;;
        *) want="ELF" ;;
    esac
    local desc
    desc=$(file -b "$bin")
    case "$desc" in
        "$want"*"statically linked"*) echo "file: $desc" ;;
        *)
            echo "check failed: $bin is \"$desc\", expected \"$want ... statically linked\"" >&2
            return 1
            ;;
    esac
}
