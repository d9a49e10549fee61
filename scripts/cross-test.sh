#!/usr/bin/env bash
# The users' own build command, run for real: `cross build --release` and
# `cross test` for the Raspberry Pi targets, with Podman and an image built
# here from Debian's archive and PyPI (no container registry needed), then
# the proof that the binary cross built behaves like the zig build:
# `file` (static ARM), `--version` under QEMU (names the target), and the
# host-built integration tests driving it under QEMU.
#
#   scripts/cross-test.sh
#   FORKECHO_CROSS_TARGETS="armv7-unknown-linux-musleabihf aarch64-unknown-linux-musl" scripts/cross-test.sh
#
# From a bare Debian 12 machine (root, rustup, no container engine running)
# it installs Podman, debootstrap and QEMU (apt-get) and cross 0.2.5
# (cargo install, into .cache/cross/tools), builds the images once (tagged
# with a hash of their inputs; debootstrap's tarball is kept under
# .cache/cross/), then builds and tests. Besides the command users type it
# builds once more with the size options of scripts/toolchain.sh passed
# through cross, and reports both sizes. Cross.toml is used as users have
# it: the image is chosen with CROSS_TARGET_<TRIPLE>_IMAGE.
#
# Settings (environment):
#   FORKECHO_CROSS_TARGETS   triples to build and test (default: armv7 only)
#   FORKECHO_CROSS_BUDGET    seconds for the whole run (default 5400)
#   FORKECHO_CROSS_SIZE      0 skips the build with the size options
#
# cross 0.2.5 would run `rustup toolchain add` for a toolchain rustup lists
# as "(active, default)" and so update the machine's Rust: the toolchain is
# always named (`cross +<version>`) and rustup is kept offline.
set -euo pipefail

# Whole run bounded in time. timeout signals its whole process group, the
# trap below removes the containers this run started.
if [ -z "${_FORKECHO_CROSS_INNER:-}" ]; then
    self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
    exec env _FORKECHO_CROSS_INNER=1 timeout -k 60 "${FORKECHO_CROSS_BUDGET:-5400}" "$self" "$@"
fi
cd "$(dirname "$0")/.."

ROOT=$PWD
. scripts/toolchain.sh

TARGETS="${FORKECHO_CROSS_TARGETS-armv7-unknown-linux-musleabihf}"
CACHE="$ROOT/.cache/cross"
CROSS_VERSION=0.2.5
RUN_ID="forkecho-cross-$$"
mkdir -p "$CACHE/logs"

# --- output helpers ----------------------------------------------------------
T0=$(date +%s)
TIMINGS=()
SUMMARY=()
now() { date +%s; }
say() { echo "cross-test: $*"; }
# step NAME CMD...: runs CMD, prints and records how long it took. A failure
# ends the script (set -e); the exit trap names the step.
CURRENT=""
STEP_T=0
step() {
    CURRENT="$1"
    shift
    echo
    echo "== $CURRENT"
    STEP_T=$(now)
    "$@"
    TIMINGS+=("$(printf '%5ss  %s' "$(($(now) - STEP_T))" "$CURRENT")")
    CURRENT=""
}
# run CMD...: prints the command, then runs it.
run() {
    echo "+ $*"
    "$@"
}

cleanup() {
    local rc=$?
    if [ -n "$CURRENT" ]; then
        TIMINGS+=("$(printf '%5ss  %s (FAILED)' "$(($(now) - STEP_T))" "$CURRENT")")
        echo "cross-test: FAILED: $CURRENT (status $rc)" >&2
    fi
    if command -v podman >/dev/null 2>&1; then
        local ids
        ids=$(podman ps -aq --filter "label=$RUN_ID" 2>/dev/null || true)
        if [ -n "$ids" ]; then
            say "removing containers of this run: $ids"
            # shellcheck disable=SC2086
            podman rm -f $ids >/dev/null 2>&1 || true
        fi
    fi
    [ -z "${ROOTFS_TMP:-}" ] || rm -rf "$ROOTFS_TMP"
    if [ -n "${RUSTC_BEFORE:-}" ]; then
        local after
        after=$(rustc --version 2>/dev/null || true)
        if [ "$after" != "$RUSTC_BEFORE" ]; then
            echo "cross-test: the machine's rustc changed: $RUSTC_BEFORE -> $after" >&2
            rc=1
        fi
    fi
    echo
    echo "== timings"
    printf '%s\n' "${TIMINGS[@]}"
    printf '%5ss  total\n' "$(($(now) - T0))"
    if [ ${#SUMMARY[@]} -gt 0 ]; then
        echo "== results"
        printf '%s\n' "${SUMMARY[@]}"
    fi
    [ "$rc" = 0 ] && echo "== cross-test passed" || echo "== cross-test FAILED (status $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# --- host ---------------------------------------------------------------------
# rustup may download nothing, whatever cross asks of it.
export RUSTUP_DIST_SERVER=http://127.0.0.1:9 RUSTUP_UPDATE_ROOT=http://127.0.0.1:9 RUSTUP_AUTO_INSTALL=0
# No `rustup target add` / `component add rust-src` either: std comes from
# source in the image.
export CROSS_CUSTOM_TOOLCHAIN=1
export CROSS_CONTAINER_ENGINE=podman # not a docker CLI that may be installed
RUSTC_BEFORE=$(rustc --version)
HOST=$(rustc -vV | sed -n 's/^host: //p')
# The toolchain by its version number: rustup lists it without an
# "(active, default)" label, which cross 0.2.5 would misread.
TC=$(echo "$RUSTC_BEFORE" | awk '{print $2}')

# toolchain.sh's apt_install, but an `apt-get update` that reports errors
# (a mirror syncing, a foreign architecture's index) does not stop the run:
# the packages needed may well be in the lists it has.
apt_install() {
    if [ -z "$_apt_updated" ]; then
        apt-get update -qq || say "warning: apt-get update reported errors; using the package lists there are"
        _apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

host_setup() {
    if ! rustup toolchain list | grep -q "^$TC-$HOST"; then
        echo "cross-test: rustup has no toolchain named $TC-$HOST (the default is $RUSTC_BEFORE);" >&2
        echo "cross-test: cross must be given a version-named toolchain: rustup toolchain install $TC" >&2
        return 1
    fi
    say "host: $RUSTC_BEFORE, toolchain +$TC"
    ensure_host # cargo, util-linux, file, systemd (for the host-side tests)
    local pkgs=()
    for p in podman runc debootstrap newuidmap:uidmap slirp4netns fuse-overlayfs qemu-arm:qemu-user; do
        command -v "${p%%:*}" >/dev/null 2>&1 || pkgs+=("${p##*:}")
    done
    [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
    say "$(podman --version), $(runc --version | head -1), $(qemu-arm --version | head -1)"
}

cross_install() {
    local bin="$CACHE/tools/bin/cross"
    if [ -x "$bin" ] && "$bin" "+$TC" --version 2>/dev/null | grep -q "^cross $CROSS_VERSION"; then
        say "cross $CROSS_VERSION already in .cache/cross/tools"
    else
        run cargo "+$TC" install --locked --quiet --root "$CACHE/tools" cross --version "$CROSS_VERSION"
    fi
    export PATH="$CACHE/tools/bin:$PATH"
    cross "+$TC" --version | head -1
}

# --- images -------------------------------------------------------------------
export CONTAINERS_CONF="$ROOT/scripts/cross/containers.conf"
hash_of() { sha256sum | cut -c1-16; }

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
BASE_IMAGE="localhost/forkecho-cross-base:$(echo "$SUITE minbase $MIRROR" | hash_of)"
base_image() {
    if podman image exists "$BASE_IMAGE"; then
        say "base image $BASE_IMAGE exists"
        return
    fi
    local tarball="$CACHE/$SUITE-minbase.tar"
    if [ ! -s "$tarball" ]; then
        ROOTFS_TMP="$CACHE/rootfs.tmp"
        rm -rf "$ROOTFS_TMP"
        run debootstrap --variant=minbase "$SUITE" "$ROOTFS_TMP" "$MIRROR" >"$CACHE/logs/debootstrap.log" 2>&1 ||
            { tail -20 "$CACHE/logs/debootstrap.log"; return 1; }
        tar -C "$ROOTFS_TMP" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$ROOTFS_TMP"
        ROOTFS_TMP=""
    else
        say "debootstrap tarball cached: .cache/cross/$(basename "$tarball")"
    fi
    run podman import --quiet "$tarball" "$BASE_IMAGE"
}

toolchain_image() {
    local ctx="$CACHE/context"
    rm -rf "$ctx"
    mkdir -p "$ctx/ca"
    cp scripts/cross/Containerfile scripts/cross/zigcc "$ctx/"
    # The build machine's extra CA certificates (pip needs them behind a
    # TLS-intercepting proxy); usually none.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/"
    fi
    local key
    key=$( (echo "$BASE_IMAGE" && cd "$ctx" && find . -type f | LC_ALL=C sort | xargs sha256sum) | hash_of)
    IMAGE="localhost/forkecho-cross:$key"
    if podman image exists "$IMAGE"; then
        say "toolchain image $IMAGE exists (hash of its inputs)"
        return
    fi
    run podman build --network=host --build-arg "BASE=$BASE_IMAGE" --tag "$IMAGE" \
        --file "$ctx/Containerfile" "$ctx"
}

# --- cross --------------------------------------------------------------------
cross_env() {
    # A test reads /proc/PID/root of a process that dropped privileges; the
    # label lets the exit trap find this run's containers.
    export CROSS_CONTAINER_OPTS="--cap-add=SYS_PTRACE --label=$RUN_ID --network=host"
    # Cross.toml's pre-build runs in `podman build`.
    export CROSS_BUILD_OPTS="--network=host"
    # cross runs `cargo metadata` on the host; -Z flags need this there too.
    export RUSTC_BOOTSTRAP=1
    local t var
    for t in $TARGETS; do
        var="CROSS_TARGET_$(echo "$t" | tr 'a-z-' 'A-Z_')_IMAGE"
        export "$var=$IMAGE"
        say "$var=$IMAGE"
    done
}

# Integration tests of this package (tests/*.rs, as cargo metadata lists
# them), less those that need a feature a release binary does not have.
integration_tests() {
    cargo "+$TC" metadata --no-deps --format-version 1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(" ".join(sorted("--test " + t["name"] for p in m["packages"] for t in p["targets"]
                      if "test" in t["kind"] and not t.get("required-features"))))'
}

# counts "test result:" lines of a log: passed failed ignored
count_tests() {
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
         END { printf "%d passed, %d failed, %d ignored", p, f, g }' "$1"
}

# prove BIN TARGET LABEL: file, --version under QEMU, integration tests.
prove() {
    local bin="$1" target="$2" label="$3" runner out log
    runner=$(runner_for "$target")
    check_binary "$target" "$bin"
    # A copy anyone can run: the tests start it as nobody too (a privileged
    # port), and the cache may sit in a home directory only root can enter.
    local shared
    shared=$(mktemp -d /tmp/forkecho-cross.XXXXXX)
    chmod 755 "$shared"
    install -m 755 "$bin" "$shared/forkecho"
    bin="$shared/forkecho"
    out=$($runner "$bin" --version)
    echo "$runner $bin --version: $out"
    case "$out" in
        *"($target)"*) ;;
        *) echo "check failed: --version does not name $target" >&2; return 1 ;;
    esac
    log="$CACHE/logs/host-tests-$label-$target.log"
    # shellcheck disable=SC2046
    run env -u RUSTC_BOOTSTRAP -u RUSTFLAGS -u CARGO_TARGET_DIR \
        FORKECHO_BIN="$bin" FORKECHO_RUNNER="$runner" FORKECHO_EXPECT_TARGET="$target" \
        cargo "+$TC" test $(integration_tests) 2>&1 | tee "$log"
    SUMMARY+=("$target $label: host-built integration tests under $runner: $(count_tests "$log")")
    rm -rf "$shared"
}

size_of() { stat -c %s "$1"; }

# The target's rustflags of .cargo/config.toml (RUSTFLAGS replaces them).
target_rustflags() {
    config_value "$1" rustflags
}

cross_test() {
    local dir="$1" t="$2" log="$3" var opts
    # The test binaries run under QEMU in the container through
    # scripts/qemu-watchdog (as in scripts/test-all.sh): a binary the
    # emulator leaves stuck is reported and run once more, not waited for
    # until the budget runs out. The path is relative to the package, which
    # is cargo's working directory in the container.
    var="CARGO_TARGET_$(echo "$t" | tr 'a-z-' 'A-Z_')_RUNNER"
    opts="$CROSS_CONTAINER_OPTS '--env=$var=scripts/qemu-watchdog $(runner_for "$t")'"
    [ -z "${FORKECHO_QEMU_LIMIT:-}" ] || opts="$opts --env=FORKECHO_QEMU_LIMIT=$FORKECHO_QEMU_LIMIT"
    run env -u RUSTFLAGS CARGO_TARGET_DIR="$dir" CROSS_CONTAINER_OPTS="$opts" \
        cross "+$TC" test --target "$t" 2>&1 | tee "$log"
}

cross_target() {
    local t="$1" bin log
    local dir="$ROOT/target/cross"
    bin="$dir/$t/release/forkecho"

    # What a user types. Its own target folder, so the zig build in
    # target/$t (scripts/test-all.sh) is left alone.
    step "$t: cross build --release (the users' command)" \
        run env -u RUSTFLAGS CARGO_TARGET_DIR="$dir" cross "+$TC" build --release --target "$t"
    SUMMARY+=("$t cross build --release: $(size_of "$bin") bytes")
    step "$t: prove the cross-built binary" prove "$bin" "$t" cross

    log="$CACHE/logs/cross-test-$t.log"
    step "$t: cross test" cross_test "$dir" "$t" "$log"
    SUMMARY+=("$t cross test (built for $t, under $(runner_for "$t") in the image): $(count_tests "$log")")

    if [ "${FORKECHO_CROSS_SIZE:-1}" != 0 ]; then
        # The size options of scripts/toolchain.sh, through cross: RUSTFLAGS
        # is passed into the container (and replaces the target rustflags,
        # so they are repeated), the -Z arguments go to cargo.
        local sdir="$ROOT/target/cross-size" sbin flags="-C link-self-contained=no"
        sbin="$sdir/$t/release/forkecho"
        flags="$flags $(target_rustflags "$t")"
        step "$t: cross build --release with the size options" \
            run env RUSTFLAGS="$flags $SIZE_RUSTFLAGS" CARGO_TARGET_DIR="$sdir" \
            cross "+$TC" build --release --target "$t" \
            -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size
        SUMMARY+=("$t cross build --release + size options: $(size_of "$sbin") bytes")
        step "$t: prove the size-optimised cross-built binary" prove "$sbin" "$t" cross-size
        local zbin="$ROOT/target/$t/release/forkecho"
        if [ -f "$zbin" ]; then
            if cmp -s "$zbin" "$sbin"; then
                SUMMARY+=("$t zig build (target/$t/release): $(size_of "$zbin") bytes, identical to the cross build with the size options")
            else
                SUMMARY+=("$t zig build (target/$t/release): $(size_of "$zbin") bytes (differs from the cross build; it may be older)")
            fi
        fi
    fi
}

step "host: packages and toolchain" host_setup
step "cross $CROSS_VERSION" cross_install
step "podman" bash -c 'podman info --format "storage {{.Store.GraphDriverName}}, runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupManager}}"'
step "base image (debootstrap $SUITE)" base_image
step "toolchain image" toolchain_image
cross_env
step "crates (cargo fetch on the host)" run cargo "+$TC" fetch --locked
for target in $TARGETS; do
    cross_target "$target"
done
