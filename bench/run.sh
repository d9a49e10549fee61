#!/usr/bin/env bash
# forkecho against its baselines, on loopback, on this machine.
#
#   bench/run.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds of 3 s per test)
#
# Servers (all on 127.0.0.1, each started once, interleaved within a round;
# the order rotates from round to round so no server always runs first):
#   textbook        bench/textbook.c, the textbook fork-per-connection server
#                   (musl-gcc -static -Os): the baseline the ratios are to
#   textbook-sandbox  the same with -DSANDBOX: each child installs a seccomp
#                   filter after fork, as forkecho's do (issue 10)
#   reference       examples/bench.rs serve: no fork, 64 threads blocking in
#                   accept (what the client and the kernel's TCP can do)
#   forkecho        as shipped: static musl, release size options, defaults
#   forkecho-cargo  what `cargo run --release` builds (the host target)
#   forkecho-splice, forkecho-copy   the shipped binary, --echo splice / copy
#   socat           socat TCP-LISTEN:P,fork PIPE
#   tcpserver       ucspi-tcp tcpserver ... cat
#
# Environment:
#   BENCH_SERVERS="textbook forkecho ..."   run only these (default: all)
#   BENCH_EXTRA="name=path ..."   more forkecho binaries, run like the shipped
#                                 one (defaults), e.g. a patched build
#   BENCH_STREAM_MIB=128          stream size; 0 skips the stream test
#   BENCH_IDLE=60                 connections held for the memory figure
#   BENCH_BASE=textbook           the server the ratios are to
#   BENCH_RAW=DIR                 keep the raw results there
#
# Figures per server: conn/s with 1 and 32 clients (connect, 64 B, echo,
# close), latency p50 at c=1 and p99 at c=32, the server's CPU time and
# minor page faults per connection at c=1 (parent and reaped children, from
# /proc/PID/stat), stream MiB/s; then private memory per live idle child
# (smaps_rollup Private_*) with where it sits (smaps per mapping), the
# executable's size, and syscalls per connection (strace -f -c) for the
# fork servers. Each cell: median over rounds, (ratio to textbook: median of
# the per-round ratios), ±spread = (max-min)/2 as % of the median. Shared
# machines are noisy: compare ratios from one run, never absolute numbers
# across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/toolchain.sh
. bench/lib.sh

ROUNDS="${1:-5}"
SECS="${2:-3}"
STREAM_MIB="${BENCH_STREAM_MIB:-128}"
IDLE="${BENCH_IDLE:-60}"
ALL=(textbook textbook-sandbox reference forkecho forkecho-cargo forkecho-splice forkecho-copy socat tcpserver)
read -r -a SERVERS <<<"${BENCH_SERVERS:-${ALL[*]}}"
declare -A BIN
for x in ${BENCH_EXTRA:-}; do
    BIN[${x%%=*}]="$(realpath "${x#*=}")"
    SERVERS+=("${x%%=*}")
done
want() { [[ " ${SERVERS[*]} " == *" $1 "* ]]; }

ensure_host
missing=()
command -v musl-gcc >/dev/null || missing+=(musl-tools)
want socat && ! command -v socat >/dev/null && missing+=(socat)
want tcpserver && ! command -v tcpserver >/dev/null && missing+=(ucspi-tcp)
command -v strace >/dev/null || missing+=(strace)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# The server as shipped (timings under QEMU mean nothing, so this machine's
# architecture).
FE=$(shipped_binary)
# What the README's run command builds, and the load generator (wherever
# the Cargo configuration puts them, e.g. with build.target set).
built() { # cargo build arguments: prints the path of the executable built
    cargo build --release --quiet "$@" --message-format=json-render-diagnostics |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable"):
        print(m["executable"])'
}
CARGO_FE=$(built --bin forkecho)
B=$(built --example bench)
mkdir -p target/bench
musl-gcc -static -Os -o target/bench/textbook bench/textbook.c
musl-gcc -static -Os -DSANDBOX -o target/bench/textbook-sandbox bench/textbook.c
BIN[textbook]=target/bench/textbook
BIN[textbook-sandbox]=target/bench/textbook-sandbox
BIN[reference]=$B
BIN[forkecho]=$FE
BIN[forkecho-cargo]=$CARGO_FE
BIN[forkecho-splice]=$FE
BIN[forkecho-copy]=$FE
BIN[socat]=$(command -v socat || true)
BIN[tcpserver]=$(command -v tcpserver || true)

bench_scratch
bench_cleanup_hook() {
    if [ -n "${BENCH_RAW:-}" ]; then mkdir -p "$BENCH_RAW" && cp -r "$out"/. "$BENCH_RAW"/; fi
}
# The command that serves as NAME; PORT stands for the port.
command_for() {
    case "$1" in
        textbook | textbook-sandbox) echo "${BIN[$1]} 127.0.0.1 PORT" ;;
        reference) echo "$B serve 127.0.0.1:PORT 64" ;;
        forkecho-splice) echo "$FE --echo splice --listen 127.0.0.1:PORT" ;;
        forkecho-copy) echo "$FE --echo copy --listen 127.0.0.1:PORT" ;;
        socat) echo "socat TCP-LISTEN:PORT,bind=127.0.0.1,fork,reuseaddr,backlog=1024 PIPE" ;;
        tcpserver) echo "tcpserver -c 1000 -b 128 -H -R -l0 127.0.0.1 PORT cat" ;;
        # forkecho, forkecho-cargo, extras: the defaults but the address.
        *) echo "${BIN[$1]} --listen 127.0.0.1:PORT" ;;
    esac
}
for s in "${SERVERS[@]}"; do
    read -r -a cmd <<<"$(command_for "$s")"
    start "$s" "${cmd[@]}"
done

# utime+stime+cutime+cstime (ticks) and minflt+cminflt of a server process.
cpu_flt() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13+$14+$15, $8+$9}'; }
TICK=$(getconf CLK_TCK)

n=${#SERVERS[@]}
echo "== ${SERVERS[*]}: $ROUNDS rounds, ${SECS}s per connection test, ${STREAM_MIB} MiB stream" >&2
for r in $(seq 0 $((ROUNDS - 1))); do
    for i in $(seq 0 $((n - 1))); do
        s=${SERVERS[$(((i + r) % n))]}
        a="127.0.0.1:${PORT[$s]}"
        for c in 1 32; do
            read -r t0 f0 <<<"$(cpu_flt "${PID[$s]}")"
            line=$(timeout $((SECS + 30)) "$B" connrate "$a" "$c" "$SECS") ||
                line="conns=0 conn_per_s=0 errors=1 p50_us=0 p99_us=0 stalled=1"
            sleep 0.2 # the last children exit and are reaped
            read -r t1 f1 <<<"$(cpu_flt "${PID[$s]}")"
            echo "$r $s connrate$c $line cpu_ticks=$((t1 - t0)) faults=$((f1 - f0)) tick=$TICK" >>"$out/results"
        done
        if [ "$STREAM_MIB" -gt 0 ]; then
            # A server may stall a concurrent stream (socat's PIPE can):
            # record it as 0 MiB/s and a stall instead of hanging.
            line=$(timeout 60 "$B" stream "$a" "$STREAM_MIB") ||
                line="bytes=0 mib_per_s=0 verified=false stalled=1"
            echo "$r $s stream $line" >>"$out/results"
        fi
    done
    echo "   round $((r + 1)) done" >&2
done

# Private memory per live idle child while IDLE connections are held open,
# and where it sits: per mapping, summed over the children.
mem() { # name
    local name="$1" pid="${PID[$1]}"
    exec {hold}> >("$B" idle "127.0.0.1:${PORT[$name]}" "$IDLE" >"$out/idle.$name")
    for _ in $(seq 200); do grep -q holding "$out/idle.$name" 2>/dev/null && break; sleep 0.05; done
    python3 - "$pid" "$name" >>"$out/mem" <<'EOF'
import os, sys, json
pid, name = int(sys.argv[1]), sys.argv[2]
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
def private(path):
    kib = 0
    for line in open(path):
        if line.startswith("Private_"):
            kib += int(line.split()[1])
    return kib
def by_mapping(c):
    # Name each mapping: its path, [stack], [heap], else anon / data (the
    # anonymous mapping right after the executable's file mappings: .bss).
    res, cur, prev_file = {}, None, None
    for line in open(f"/proc/{c}/smaps"):
        f = line.split()
        if "-" in f[0] and len(f) >= 5 and not f[0].endswith(":"):
            path = f[5] if len(f) > 5 else ""
            if not path:
                label = "anon (.bss/heap)" if prev_file == "exe" else "anon"
            elif path == os.readlink(f"/proc/{c}/exe"):
                label = "exe data"
            else:
                label = os.path.basename(path) if path.startswith("/") else path
            prev_file = "exe" if label == "exe data" else ("" if path else None)
            cur = label
        elif f[0].startswith("Private_") and cur:
            res[cur] = res.get(cur, 0) + int(f[1])
    return res
children = kids(pid)
# tcpserver's children exec cat: count the process that holds the socket.
priv = sum(private(f"/proc/{c}/smaps_rollup") for c in children)
where = {}
for c in children:
    for k, v in by_mapping(c).items():
        where[k] = where.get(k, 0) + v
rss = 0
for line in open(f"/proc/{pid}/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1])
n = max(len(children), 1)
print(json.dumps({"name": name, "children": len(children), "kib": priv / n, "rss": rss,
                  "where": {k: v / n for k, v in sorted(where.items(), key=lambda x: -x[1]) if v}}))
EOF
    exec {hold}>&-
    sleep 0.5
}
for s in "${SERVERS[@]}"; do
    [ "$s" = reference ] || mem "$s"
done

# Syscalls per connection, parent and children together, at c=1.
sysc() { # name
    local name="$1" port
    port=$(freeport tcp)
    read -r -a cmd <<<"$(command_for "$name")"
    strace -c -f -o "$out/strace.$name" "${cmd[@]//PORT/$port}" >/dev/null 2>&1 &
    local spid=$!
    pids+=($spid)
    _ready tcp "$port"
    local sline
    sline=$("$B" connrate "127.0.0.1:$port" 1 2)
    sleep 0.2
    # strace runs the server as its child: stop that, then strace ends.
    # (SIGTERM: a background job of a script starts with SIGINT ignored.)
    pkill -TERM -P "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    echo "$name $sline" >>"$out/strace.conns"
}
for s in "${SERVERS[@]}"; do
    case "$s" in reference | socat | tcpserver) ;; *) sysc "$s" ;; esac
done

for s in "${SERVERS[@]}"; do
    echo "$s $(stat -L -c %s "${BIN[$s]}") $(file -L -b "${BIN[$s]}" | grep -o 'statically linked\|static-pie linked\|dynamically linked' || echo '?')" >>"$out/sizes"
done

python3 - "$out" "${BENCH_BASE:-textbook}" "${SERVERS[@]}" <<'EOF'
import json, statistics as st, sys
out, base, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
base = base if base in servers else servers[0]
runs = {}  # (server, figure) -> {round: value}
for line in open(f"{out}/results"):
    r, name, test, *kv = line.split()
    d = dict(x.split("=") for x in kv)
    def put(fig, v):
        runs.setdefault((name, fig), {})[int(r)] = v
    if test.startswith("connrate"):
        c = test[8:]
        put(f"conn/s c={c}", float(d["conn_per_s"]))
        put(f"p50 µs c={c}", float(d["p50_us"]))
        put(f"p99 µs c={c}", float(d["p99_us"]))
        put(f"errors c={c}", float(d["errors"]) + float(d.get("stalled", 0)))
        conns = max(float(d["conns"]), 1)
        put(f"CPU µs/conn c={c}", float(d["cpu_ticks"]) / float(d["tick"]) * 1e6 / conns)
        put(f"faults/conn c={c}", float(d["faults"]) / conns)
    else:
        put("stream MiB/s", float(d["mib_per_s"]))

def round_ratios(name, other, fig):
    """name's figure over other's, round by round (the rounds both have)."""
    v, o = runs.get((name, fig), {}), runs.get((other, fig), {})
    return [v[k] / o[k] for k in v if k in o and o[k]]

def cell(name, fig, fmt="{:,.0f}"):
    v = runs.get((name, fig))
    if not v:
        return "—"
    vals = list(v.values())
    m = st.median(vals)
    s = fmt.format(m)
    if name != base and m:
        ratios = round_ratios(name, base, fig)
        if ratios:
            s += f" ({st.median(ratios):.2f}×)"
    if m:
        s += f" ±{(max(vals) - min(vals)) / 2 / m * 100:.0f}%"
    return s

def table(cols, fmts=None):
    print("| server | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for n in servers:
        print(f"| {n} | " + " | ".join(cell(n, c, (fmts or {}).get(c, "{:,.0f}")) for c in cols) + " |")
    print()

print(f"Cells: median of the rounds (median of the per-round ratios to {base}) ±half the min–max spread, % of the median.\n")
table(["conn/s c=1", "conn/s c=32", "p50 µs c=1", "p99 µs c=32", "stream MiB/s"])
table(["CPU µs/conn c=1", "faults/conn c=1", "p99 µs c=1", "p50 µs c=32", "errors c=1", "errors c=32"],
      {"faults/conn c=1": "{:.1f}", "errors c=1": "{:.0f}", "errors c=32": "{:.0f}"})
def forkecho_against(other, figs):
    """One line per forkecho build and (figure, label): its per-round ratios
    to other's."""
    for fig, label in figs:
        for n in servers:
            rs = round_ratios(n, other, fig) if n.startswith("forkecho") else []
            if rs:
                print(f"- {n} {label}: {st.median(rs):.2f}× (per-round {min(rs):.2f}–{max(rs):.2f})")
    print()

if "reference" in servers:
    forkecho_against("reference", [("conn/s c=32", "c=32 / reference c=32")])
if "textbook-sandbox" in servers:
    # The same work as the textbook server plus the per-child filter that
    # issue 10 requires: what forkecho's own overhead is measured against.
    forkecho_against("textbook-sandbox", [(c, f"{c} / textbook-sandbox") for c in ("conn/s c=1", "conn/s c=32")])

sizes = {l.split()[0]: l.split()[1:] for l in open(f"{out}/sizes")}
mem = {}
try:
    for line in open(f"{out}/mem"):
        d = json.loads(line)
        mem[d["name"]] = d
except FileNotFoundError:
    pass
print("| server | private KiB per idle child | where (KiB per child) | parent RSS KiB | executable bytes |")
print("| --- | ---: | --- | ---: | ---: |")
for n in servers:
    d = mem.get(n)
    priv = f"{d['kib']:.1f} ({d['children']} children)" if d else "—"
    where = ", ".join(f"{k} {v:.1f}" for k, v in d["where"].items()) if d else "—"
    rss = str(d["rss"]) if d else "—"
    size, link = sizes.get(n, ["?", "?"])[0], " ".join(sizes.get(n, ["", ""])[1:])
    print(f"| {n} | {priv} | {where} | {rss} | {int(size):,} ({link}) |")
print()

conns = {}
try:
    for line in open(f"{out}/strace.conns"):
        name, *kv = line.split()
        conns[name] = int(dict(x.split("=") for x in kv)["conns"])
except FileNotFoundError:
    pass
for name in servers:
    if name not in conns:
        continue
    lines = open(f"{out}/strace.{name}").read().splitlines()
    head = next(l.split() for l in lines if "calls" in l.split())
    total = next(l.split() for l in lines if l.split() and l.split()[-1] == "total")
    calls = int(total[len(total) - (len(head) - head.index("calls"))])
    k = max(conns[name], 1)
    per = []
    for l in lines:
        f = l.split()
        if len(f) >= 5 and f[-1] not in ("total", "syscall") and f[3].isdigit():
            per.append((int(f[3]) / k, f[-1]))
    print(f"- syscalls per connection, {name} (strace -f -c, {k} connections at c=1): **{calls / k:.1f}**: "
          + ", ".join(f"{nm} {x:.1f}" for x, nm in sorted(per, reverse=True) if x >= 0.05))
EOF
echo
echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -m), Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; $ROUNDS rounds of ${SECS}s, loopback."
