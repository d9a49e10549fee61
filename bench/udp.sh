#!/usr/bin/env bash
# The UDP echo against real peers, on loopback, on this machine:
#   forkecho --udp (in the parent, no fork), socat UDP-RECVFROM,fork PIPE
#   (a fork per datagram), socat UDP-LISTEN PIPE (one process, serves the
#   first peer only), xinetd's internal echo-dgram. busybox inetd is not in
#   Debian's busybox build (no inetd applet), so it is left out.
#
#   bench/udp.sh [SECONDS]          (default: 3 s per test and server)
#
# One interleaved run: for each test the servers take turns, so a change in
# the machine's load hits them all alike. Tests (examples/udpbench.rs, one
# client): "ping-pong" (64-byte datagrams, one in flight: round trips/s),
# "window 16" (64 bytes, 16 in flight: datagrams/s) and "bulk" (16 KiB, 4 in
# flight: MiB/s of echoed payload). Every reply is checked byte for byte;
# "bad" counts replies that were not exactly one request. Ratios are to
# forkecho. Shared machines are noisy: compare ratios from one run.
#
# FORKECHO_BIN=path uses that binary instead of building the static musl
# release build for this machine (as bench/run.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh
. bench/lib.sh
BENCH_PROTO=udp

SECS="${1:-3}"

ensure_host
command -v socat >/dev/null || apt_install socat
# xinetd from its Debian package, unpacked (not installed: its maintainer
# scripts would start a system-wide daemon).
pkgs=$(mktemp -d)
XINETD=$(command -v xinetd || true)
if [ -z "$XINETD" ]; then
    (cd "$pkgs" && apt-get download xinetd >/dev/null 2>&1 && dpkg-deb -x xinetd_*.deb root) || true
    [ -x "$pkgs/root/usr/sbin/xinetd" ] && XINETD="$pkgs/root/usr/sbin/xinetd"
fi

if [ -n "${FORKECHO_BIN:-}" ]; then
    FE="$FORKECHO_BIN"
else
    FE=$(shipped_binary)
fi
cargo build --release --quiet --example udpbench
B=target/release/examples/udpbench

bench_scratch
bench_cleanup_hook() { rm -rf "$pkgs"; }
xinetd_conf() { # port -> config file
    cat >"$out/xinetd.conf" <<EOF
defaults
{
    instances = UNLIMITED
    cps = 100000 1
}
service echo
{
    type        = INTERNAL UNLISTED
    id          = echo-dgram
    socket_type = dgram
    protocol    = udp
    wait        = yes
    user        = root
    bind        = 127.0.0.1
    port        = $1
}
EOF
    echo "$out/xinetd.conf"
}

start_all() {
    start forkecho "$FE" --listen 127.0.0.1:0 --udp 127.0.0.1:PORT -q
    # -b 65536: socat reads 8 KiB at a time by default and would cut the
    # bulk test's datagrams.
    start socat-fork socat -b 65536 UDP-RECVFROM:PORT,bind=127.0.0.1,fork PIPE
    # UDP-LISTEN serves the first peer only: started afresh for each test.
    start socat-listen socat -b 65536 UDP-LISTEN:PORT,bind=127.0.0.1 PIPE
    if [ -n "$XINETD" ]; then
        local port
        port=$(freeport udp)
        "$XINETD" -dontfork -stayalive -pidfile "$out/xinetd.pid" -f "$(xinetd_conf "$port")" \
            >/dev/null 2>"$out/xinetd.err" &
        PID[xinetd]=$!
        pids+=($!)
        PORT[xinetd]=$port
        sleep 0.5
    fi
}

SERVERS=(forkecho socat-fork socat-listen)
[ -n "$XINETD" ] && SERVERS+=(xinetd)
TESTS=("ping-pong 64 1" "window16 64 16" "bulk 16384 4")
declare -A R
start_all
for t in "${TESTS[@]}"; do
    read -r tname size window <<<"$t"
    for s in "${SERVERS[@]}"; do
        if [ "$s" = socat-listen ]; then
            stop socat-listen
            start socat-listen socat -b 65536 UDP-LISTEN:PORT,bind=127.0.0.1 PIPE
        fi
        R[$s,$tname]=$("$B" "127.0.0.1:${PORT[$s]}" "$size" "$SECS" "$window")
        echo "$s $tname: ${R[$s,$tname]}" >&2
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf " (%.2f×)", a / b }'; }
echo
echo "$(date -u +%F) $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $SECS s per test"
echo
echo "| server | round trips/s (64 B, 1 in flight) | datagrams/s (64 B, 16 in flight) | MiB/s (16 KiB, 4 in flight) | lost | bad |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for s in "${SERVERS[@]}"; do
    row="| $s |"
    lost=0
    bad=0
    for t in "${TESTS[@]}"; do
        read -r tname _ _ <<<"$t"
        read -r rps mib l b <<<"${R[$s,$tname]}"
        read -r frps fmib _ _ <<<"${R[forkecho,$tname]}"
        if [ "$tname" = bulk ]; then
            row+=" $mib$([ "$s" = forkecho ] || ratio "$mib" "$fmib") |"
        else
            row+=" $rps$([ "$s" = forkecho ] || ratio "$rps" "$frps") |"
        fi
        lost=$((lost + l))
        bad=$((bad + b))
    done
    echo "$row $lost | $bad |"
done
