#!/usr/bin/env bash
# Checks the files in deploy/ against the real tools, with the binary at
#   $1 (default: target/debug/forkecho, built if missing):
# - systemd-analyze verify accepts every unit, without a single warning
#   (it only warns, exit 0, on unknown keys: any output fails here), with
#   the man page they name (deploy/forkecho.8);
# - the init script starts the server (start-stop-daemon), which echoes,
#   reports its status, and stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/forkecho}"
[ -x "$bin" ] || cargo build -q
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir "$tmp/units"
    cp deploy/*.service deploy/*.socket "$tmp/units/"
    # The units name the installed path; point them at this build.
    sed -i "s|/usr/bin/forkecho|$bin|" "$tmp/units/"*
    # Documentation=man:forkecho(8) is checked too: the page from deploy/.
    mkdir -p "$tmp/man/man8"
    cp deploy/forkecho.8 "$tmp/man/man8/"
    out=$(MANPATH="$tmp/man:" systemd-analyze verify "$tmp/units/"*.socket "$tmp/units/"*.service 2>&1) || {
        echo "check failed: systemd-analyze verify: $out" >&2
        exit 1
    }
    if [ -n "$out" ]; then
        echo "check failed: systemd-analyze verify warned: $out" >&2
        exit 1
    fi
    echo "deploy: systemd-analyze verify accepts $(ls "$tmp/units" | wc -l) units"
else
    echo "deploy: systemd-analyze not installed, units not verified" >&2
    exit 1
fi

if command -v start-stop-daemon >/dev/null 2>&1; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    export DAEMON="$bin" PIDFILE="$tmp/forkecho.pid" FORKECHO_ARGS="--listen 127.0.0.1:$port -q"
    sh deploy/forkecho.init start
    reply=$(python3 - "$port" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(100):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
s.sendall(b"init script\n"); s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(100)
    if not chunk:
        break
    data += chunk
print(data.decode().strip())
PY
)
    [ "$reply" = "init script" ] || { echo "check failed: init script server echoed '$reply'" >&2; exit 1; }
    sh deploy/forkecho.init status
    sh deploy/forkecho.init stop
    if sh deploy/forkecho.init status; then
        echo "check failed: still running after stop" >&2
        exit 1
    fi
    echo "deploy: init script starts, serves, stops"
fi
