# Sourced by bench/run.sh and bench/udp.sh (after scripts/toolchain.sh):
# the shipped build, a scratch folder cleaned up on exit, and servers
# started on free ports and stopped by PID.
#
#   shipped_binary          builds forkecho as it ships for this machine
#                           (static musl, release size options); prints its path
#   bench_scratch           sets $out (a scratch folder); on exit stops every
#                           server started, runs bench_cleanup_hook if defined
#   freeport tcp|udp        a free port on 127.0.0.1
#   start NAME CMD...       runs CMD (PORT in it replaced by a free port, of
#                           $BENCH_PROTO, default tcp) and waits until it serves
#   stop NAME               ends NAME's server

shipped_binary() {
    local target
    target=$(shipped_target)
    (
        ensure_cross "$target"
        zb zigbuild --release --quiet --target "$target"
        check_binary "$target" "target/$target/release/forkecho"
    ) >&2
    echo "target/$target/release/forkecho"
}

declare -A PORT PID
pids=()
bench_scratch() {
    out=$(mktemp -d)
    trap _bench_cleanup EXIT
}
_bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook; fi
    rm -rf "$out"
}

freeport() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

# A TCP server serves once a connection succeeds; a UDP one cannot be asked
# without a reply protocol, so it gets a moment to bind.
_ready() { # proto port
    if [ "$1" = udp ]; then
        sleep 0.3
        return
    fi
    python3 - "$2" <<'PY'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("server on port %s did not come up" % sys.argv[1])
PY
}

start() {
    local name="$1" proto="${BENCH_PROTO:-tcp}" port
    shift
    port=$(freeport "$proto")
    local cmd=("${@//PORT/$port}")
    "${cmd[@]}" >/dev/null 2>"$out/$name.err" &
    PID[$name]=$!
    pids+=($!)
    PORT[$name]=$port
    _ready "$proto" "$port"
}

stop() {
    kill "${PID[$1]}" 2>/dev/null || true
    wait "${PID[$1]}" 2>/dev/null || true
}
