#!/usr/bin/env bash
# forkecho against real peers, on loopback, on this machine:
#   forkecho (--echo auto, the default; splice; copy), socat TCP-LISTEN,fork PIPE, ucspi-tcp
#   tcpserver ... cat, and a non-forking echo server (examples/bench.rs serve,
#   a pool of threads blocking in accept: the client + kernel limit).
#
#   bench/run.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds of 3 s per test)
#
# Servers are interleaved A B C D E within each round; the table gives the
# median over rounds and the ratio to forkecho. Shared machines are noisy:
# compare ratios from one run, never absolute numbers across runs. Also
# measured: private memory per live child, parent RSS, syscalls per
# connection (strace -c -f), binary sizes (dist/ if built).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh

ROUNDS="${1:-5}"
SECS="${2:-3}"
STREAM_MIB=128
IDLE=100

ensure_host
missing=()
command -v socat >/dev/null || missing+=(socat)
command -v tcpserver >/dev/null || missing+=(ucspi-tcp)
command -v strace >/dev/null || missing+=(strace)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# The server as shipped: a static musl build with the release size options,
# for this machine's architecture (timings under QEMU mean nothing).
host_target="$(uname -m)-unknown-linux-musl"
(
    ensure_cross "$host_target"
    zb zigbuild --release --quiet --target "$host_target"
    check_binary "$host_target" "target/$host_target/release/forkecho"
) >&2
cargo build --release --quiet --example bench
FE="target/$host_target/release/forkecho"
B=target/release/examples/bench
out=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    python3 - "$1" <<'EOF'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("server on port %s did not come up" % sys.argv[1])
EOF
}

declare -A PORT PID
start() { # name, command...
    local name="$1"
    shift
    local port
    port=$(freeport)
    local cmd=("${@//PORT/$port}")
    "${cmd[@]}" >/dev/null 2>"$out/$name.err" &
    PID[$name]=$!
    pids+=($!)
    PORT[$name]=$port
    wait_port "$port"
}

SERVERS=(forkecho forkecho-splice forkecho-copy socat tcpserver reference)
start forkecho "$FE" --listen 127.0.0.1:PORT --max-children 512 --backlog 1024
start forkecho-splice "$FE" --echo splice --listen 127.0.0.1:PORT --max-children 512 --backlog 1024
start forkecho-copy "$FE" --echo copy --listen 127.0.0.1:PORT --max-children 512 --backlog 1024
start socat socat TCP-LISTEN:PORT,bind=127.0.0.1,fork,reuseaddr,backlog=1024 PIPE
start tcpserver tcpserver -c 1000 -b 128 -H -R -l0 127.0.0.1 PORT cat
start reference "$B" serve 127.0.0.1:PORT 64

echo "== $ROUNDS rounds, ${SECS}s per connection test, ${STREAM_MIB} MiB stream" >&2
for r in $(seq "$ROUNDS"); do
    for s in "${SERVERS[@]}"; do
        a="127.0.0.1:${PORT[$s]}"
        for c in 1 32; do
            line=$(timeout $((SECS + 30)) "$B" connrate "$a" "$c" "$SECS") ||
                line="conns=0 conn_per_s=0 errors=1 p50_us=0 p99_us=0 stalled=1"
            echo "$s connrate$c $line" >>"$out/results"
        done
        # A server may stall a concurrent stream (socat's PIPE can): record
        # it as 0 MiB/s and a stall instead of hanging the benchmark.
        line=$(timeout 60 "$B" stream "$a" "$STREAM_MIB") ||
            line="bytes=0 mib_per_s=0 verified=false stalled=1"
        echo "$s stream $line" >>"$out/results"
    done
    echo "   round $r done" >&2
done

# Private memory per live child while IDLE connections are held open.
mem() { # name
    local name="$1" pid="${PID[$1]}"
    exec {hold}> >("$B" idle "127.0.0.1:${PORT[$name]}" "$IDLE" >"$out/idle.$name")
    for _ in $(seq 200); do grep -q holding "$out/idle.$name" 2>/dev/null && break; sleep 0.05; done
    python3 - "$pid" "$IDLE" "$name" >>"$out/mem" <<'EOF'
import os, sys
pid, k, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def kids(p):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == p:
                out.append(int(d))
    return out
def field(path, key):
    for line in open(path):
        if line.startswith(key):
            return int(line.split()[1])
    return 0
children = kids(pid)
# tcpserver's children exec cat: count the process that holds the socket.
priv = sum(field(f"/proc/{c}/smaps_rollup", "Private_Dirty:") for c in children)
rss = field(f"/proc/{pid}/status", "VmRSS:")
print(f"{name} children={len(children)} private_kib_per_child={priv / max(len(children), 1):.1f} parent_rss_kib={rss}")
EOF
    exec {hold}>&-
    sleep 0.5
}
for s in forkecho forkecho-splice forkecho-copy socat tcpserver; do mem "$s"; done

# Syscalls per connection: all processes, parent and children.
sport=$(freeport)
strace -c -f -o "$out/strace" "$FE" --listen "127.0.0.1:$sport" --max-children 512 2>/dev/null &
spid=$!
pids+=($spid)
wait_port "$sport"
sline=$("$B" connrate "127.0.0.1:$sport" 1 2)
# strace runs forkecho as its child: stop forkecho, then strace ends.
pkill -INT -P "$spid" 2>/dev/null || true
wait "$spid" 2>/dev/null || true

python3 - "$out" <<'EOF'
import re, statistics, sys, os
out = sys.argv[1]
rows = {}
for line in open(f"{out}/results"):
    name, test, *kv = line.split()
    d = dict(x.split("=") for x in kv)
    key = {"connrate1": ("conn/s c=1", "conn_per_s"), "connrate32": ("conn/s c=32", "conn_per_s"),
           "stream": ("stream MiB/s", "mib_per_s")}[test]
    rows.setdefault(name, {}).setdefault(key[0], []).append(float(d[key[1]]))
    if d.get("stalled"):
        rows[name].setdefault("stalls", []).append(1)
    if test.startswith("connrate"):
        rows[name].setdefault(f"p99 µs c={test[8:]}", []).append(float(d["p99_us"]))
        rows[name].setdefault("errors", []).append(float(d["errors"]))
cols = ["conn/s c=1", "conn/s c=32", "p99 µs c=1", "p99 µs c=32", "stream MiB/s"]
med = {n: {c: statistics.median(v[c]) for c in cols} for n, v in rows.items()}
base = med["forkecho"]
print("| server | " + " | ".join(cols) + " | errors | stalled runs |")
print("| --- |" + " ---: |" * (len(cols) + 2))
for n in ["forkecho", "forkecho-splice", "forkecho-copy", "socat", "tcpserver", "reference"]:
    cells = []
    for c in cols:
        v = med[n][c]
        cells.append(f"{v:,.0f}" + ("" if n == "forkecho" else f" ({v / base[c]:.2f}×)"))
    print(f"| {n} | " + " | ".join(cells) + f" | {int(sum(rows[n]['errors']))} | {len(rows[n].get('stalls', []))} |")
print()
print("| server | private memory per live child | parent RSS |")
print("| --- | ---: | ---: |")
for line in open(f"{out}/mem"):
    d = dict(x.split("=") for x in line.split()[1:])
    print(f"| {line.split()[0]} | {d['private_kib_per_child']} KiB ({d['children']} children) | {d['parent_rss_kib']} KiB |")
print()
EOF
echo "strace: $sline" >&2
python3 - "$out/strace" "$sline" <<'EOF'
import sys
lines = open(sys.argv[1]).read().splitlines()
head = next(l.split() for l in lines if "calls" in l.split())
total = next(l.split() for l in lines if l.split() and l.split()[-1] == "total")
# The total line may lack the usecs/call column: count from the right.
calls = int(total[len(total) - (len(head) - head.index("calls"))])
conns = int(dict(x.split("=") for x in sys.argv[2].split())["conns"])
print(f"Syscalls per connection (forkecho, parent + child, strace -c -f over {conns} connections): {calls / max(conns, 1):.1f}")
# Rows: % time, seconds, usecs/call, calls, [errors], name.
per = []
for l in lines:
    f = l.split()
    if len(f) >= 5 and f[-1] not in ("total", "syscall") and f[3].isdigit():
        per.append((int(f[3]) / max(conns, 1), f[-1]))
print("  " + ", ".join(f"{name} {n:.1f}" for n, name in sorted(per, reverse=True) if n >= 0.05))
EOF
echo
echo "Binary sizes:"
if [ -f dist/SIZES.md ]; then cat dist/SIZES.md; else echo "(run scripts/dist.sh for the ARM binaries)"; fi
echo
echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -m), $(uname -r); $ROUNDS rounds, medians."
