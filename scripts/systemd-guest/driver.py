#!/usr/bin/env python3
"""Boots the systemd arm64 guest and runs the package checks of
scripts/systemd-guest-test.sh (which builds what this needs and calls it).

    driver.py --image rootfs.img --kernel vmlinuz --initrd initrd.img \
              --payload payload.img --deb NAME --deb-new NAME --workdir DIR

The guest is controlled through a virtio serial port (fe-agent in the
guest: one base64 request a line, one base64 answer a line); clients reach
it through QEMU user networking, forwarded from free ports on 127.0.0.1
only. One line per check, then "N passed, M failed"; exit 1 on a failure.
Every wait is bounded; QEMU is killed by its pid on the way out.
"""
import argparse
import base64
import os
import signal
import socket
import subprocess
import sys
import time

passed = 0
failed = 0
last_check = time.time()


def check(ok, name, detail=""):
    """One line per check, with the seconds since the previous one."""
    global passed, failed, last_check
    took = f" [{time.time() - last_check:.0f} s]"
    last_check = time.time()
    if ok:
        passed += 1
        print(f"PASS: {name}{took}", flush=True)
    else:
        failed += 1
        detail = " ".join(str(detail).split())[:400]
        print(f"FAIL: {name}" + (f" ({detail})" if detail else "") + took, flush=True)
    return ok


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Guest:
    def __init__(self, args):
        self.args = args
        self.port7 = free_port()
        self.port7007 = free_port()
        while self.port7007 == self.port7:
            self.port7007 = free_port()
        self.ctl_path = os.path.join(args.workdir, "ctl.sock")
        self.console = os.path.join(args.workdir, "console.log")
        self.proc = None
        self.sock = None
        self.buf = b""
        self.seq = 0

    def start(self):
        a = self.args
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53",
            "-smp", str(a.smp), "-m", "768",
            "-kernel", a.kernel, "-initrd", a.initrd,
            "-append", "root=LABEL=feroot rw console=ttyAMA0 panic=-1 quiet loglevel=4",
            # The cached image stays untouched: writes go to a temporary file.
            "-drive", f"if=none,id=root,file={a.image},format=raw,snapshot=on",
            "-device", "virtio-blk-device,drive=root",
            "-drive", f"if=none,id=payload,file={a.payload},format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=payload",
            # restrict=on: the guest reaches nothing; only these forwards in.
            "-netdev", "user,id=net0,restrict=on,"
            f"hostfwd=tcp:127.0.0.1:{self.port7}-:7,"
            f"hostfwd=tcp:127.0.0.1:{self.port7007}-:7007",
            "-device", "virtio-net-device,netdev=net0",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=ctl,path={self.ctl_path},server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=fe.ctl",
            "-serial", f"file:{self.console}",
            "-display", "none", "-monitor", "none", "-no-reboot",
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        with open(os.path.join(a.workdir, "qemu.pid"), "w") as f:
            f.write(f"{self.proc.pid}\n")
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {self.proc.returncode}")
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(self.ctl_path)
                return
            except OSError:
                self.sock.close()
                time.sleep(0.2)
        raise RuntimeError("QEMU control socket never appeared")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def _send(self, cmd):
        self.seq += 1
        ident = str(self.seq)
        line = ident + "\t" + base64.b64encode(cmd.encode()).decode() + "\n"
        self.sock.sendall(line.encode())
        return ident

    def _answer(self, ident, deadline):
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                parts = line.decode(errors="replace").split(" ", 3)
                if len(parts) >= 3 and parts[0] == "@@R" and parts[1] == ident:
                    out = base64.b64decode(parts[3]) if len(parts) == 4 else b""
                    return int(parts[2]), out.decode(errors="replace")
            left = deadline - time.time()
            if left <= 0:
                return None
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {self.proc.returncode}")
            self.sock.settimeout(min(left, 1.0))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise RuntimeError("control channel closed")
            self.buf += data

    def run(self, cmd, timeout=300):
        """Runs cmd (bash) in the guest; returns (status, output)."""
        ident = self._send(cmd)
        got = self._answer(ident, time.time() + timeout)
        if got is None:
            return 124, f"no answer within {timeout}s"
        return got

    def query(self, cmd, timeout=300):
        """A read-only command, asked again once if systemctl's bus call
        timed out (an emulated PID 1 on a loaded host can be that slow)."""
        rc, out = self.run(cmd, timeout)
        if "Connection timed out" in out:
            time.sleep(5)
            rc, out = self.run(cmd, timeout)
        return rc, out

    def wait_agent(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ident = self._send("echo agent-up")
            got = self._answer(ident, min(deadline, time.time() + 5))
            if got and got[1].strip() == "agent-up":
                return True
        return False


def connect(port, timeout=60):
    """Connects to the forwarded port, retrying while the guest side is not
    ready (slirp accepts, then closes at once when nothing listens)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise OSError(f"cannot connect to 127.0.0.1:{port}: {last}")


def recv_exact(s, n, timeout=20):
    s.settimeout(timeout)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def echo_once(port, payload, timeout=60):
    """One client: send, half-close, read to EOF. Retries a connection the
    guest closed before answering (service still starting)."""
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        try:
            s = connect(port, max(1, deadline - time.time()))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(20)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            s.close()
            if got == payload:
                return True, ""
            last = f"got {len(got)} bytes, sent {len(payload)}"
            if got:
                return False, last
        except OSError as e:
            last = str(e)
        time.sleep(1)
    return False, last


def main():
    p = argparse.ArgumentParser()
    for name in ("image", "kernel", "initrd", "payload", "deb", "deb_new", "workdir"):
        p.add_argument("--" + name.replace("_", "-"), required=True)
    p.add_argument("--smp", type=int, default=2)
    p.add_argument("--boot-timeout", type=int, default=300)
    p.add_argument("--started", type=float, default=time.time())
    a = p.parse_args()

    g = Guest(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.time()
    try:
        g.start()
        up = g.wait_agent(a.boot_timeout)
        if not check(up, "guest boots, control channel answers",
                     "see " + g.console):
            return
        rc, out = g.query("systemctl is-system-running --wait; readlink /proc/1/exe")
        lines = out.split()
        check(len(lines) == 2 and lines[0] in ("running", "degraded")
              and lines[1].endswith("/systemd"),
              f"systemd is PID 1, boot finished ({' '.join(lines)})",
              g.run("systemctl --failed --no-legend")[1] if lines[:1] != ["running"] else "")
        g.run("mkdir -p /mnt/payload && mount -o ro LABEL=fepayload /mnt/payload")

        # --- install ---------------------------------------------------------
        rc, out = g.run(f"dpkg -i /mnt/payload/{a.deb}", 900)
        check(rc == 0, f"dpkg -i {a.deb}", out)
        rc, out = g.query("systemctl is-enabled forkecho.service; systemctl is-active forkecho.service;"
                        " systemctl status --no-pager forkecho.service | sed -n 3p")
        check(out.split()[:2] == ["enabled", "active"] and "active (running)" in out,
              "forkecho.service enabled and active (running) after install", out)
        rc, out = g.query("systemctl show -p Type -p DynamicUser -p NoNewPrivileges -p ProtectSystem"
                        " -p AmbientCapabilities forkecho.service")
        props = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
        check(props.get("Type") == "notify" and props.get("DynamicUser") == "yes"
              and props.get("NoNewPrivileges") == "yes" and props.get("ProtectSystem") == "strict"
              and props.get("AmbientCapabilities") == "cap_net_bind_service",
              "unit: Type=notify, DynamicUser, NoNewPrivileges, ProtectSystem=strict,"
              " only CAP_NET_BIND_SERVICE", out)
        rc, out = g.query("pid=$(systemctl show -p MainPID --value forkecho.service);"
                        " ps -o user=,uid= -p $pid;"
                        " grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/$pid/status")
        f = out.split()
        st = dict(zip(f[2::2], f[3::2]))
        check(len(f) >= 2 and f[0] == "forkecho" and int(f[1]) >= 61184
              and st.get("CapEff:") == "0000000000000400" and st.get("NoNewPrivs:") == "1"
              and st.get("Seccomp:") == "2",
              "process: dynamic user forkecho, CapEff=cap_net_bind_service only,"
              " no_new_privs, seccomp filter", out)
        rc, out = g.query("getent passwd forkecho")
        check(out.startswith("forkecho:"), "the dynamic user resolves while the service runs"
              " (nss-systemd)", out)
        rc, out = g.query("ss -ltnH 'sport = :7'")
        check(rc == 0 and ":7 " in out + " ", "listening on port 7 in the guest", out)

        ok, why = echo_once(g.port7, b"hello through QEMU user net\n")
        check(ok, f"client echoed through 127.0.0.1:{g.port7} -> guest:7", why)
        big = os.urandom(256 * 1024)
        ok, why = echo_once(g.port7, big)
        check(ok, "256 KiB of random bytes echoed intact", why)

        # --- stop drains -----------------------------------------------------
        live = None
        try:
            live = connect(g.port7)
            live.sendall(b"live session\n")
            first = recv_exact(live, 13)
        except OSError as e:
            first = str(e).encode()
        check(first == b"live session\n", "live client echoed before stop", first)
        rc, out = g.run("time -p systemctl stop forkecho.service 2>&1; systemctl is-active forkecho.service;"
                        " systemctl show -p Result --value forkecho.service")
        check("inactive" in out.split() and "success" in out.split(),
              "systemctl stop: inactive, Result=success", out)
        eof = "no client"
        if live:
            try:
                live.settimeout(15)
                rest = live.recv(100)
                eof = "clean EOF" if rest == b"" else f"data {rest!r}"
            except ConnectionResetError:
                eof = "connection reset"
            except socket.timeout:
                eof = "still open after 15 s"
            live.close()
        check(eof == "clean EOF", "live client gets a clean EOF on stop", eof)
        rc, out = g.query("journalctl -u forkecho.service -o cat --no-pager")
        check("listening on [::]:7" in out
              and "stopped by SIGTERM: 1 sessions ended, 0 killed" in out,
              "journalctl -u forkecho: listening, then one line: stopped by SIGTERM, the live session"
              " ended cleanly", out[-600:])

        # --- socket activation (Accept=no) -------------------------------
        rc, out = g.run("systemctl enable --now forkecho-activated.socket 2>&1;"
                        " systemctl is-active forkecho-activated.socket forkecho-activated.service")
        check(out.split()[-2:] == ["active", "inactive"],
              "forkecho-activated.socket enabled, listening; service not started yet", out)
        ok, why = echo_once(g.port7, b"socket activated\n")
        check(ok, "socket-activated pair serves a client", why)
        rc, out = g.query("systemctl is-active forkecho-activated.service;"
                        " journalctl -u forkecho-activated.service -o cat --no-pager | grep -c 'listening on'")
        check(out.split()[:1] == ["active"], "forkecho-activated.service started by the first client", out)
        g.run("systemctl disable --now forkecho-activated.socket forkecho-activated.service")

        # --- inetd style (Accept=yes) ------------------------------------
        rc, out = g.run("systemctl enable --now forkecho-inetd.socket 2>&1;"
                        " systemctl is-active forkecho-inetd.socket")
        check(out.split()[-1:] == ["active"], "forkecho-inetd.socket enabled, listening on 7007", out)
        ok, why = echo_once(g.port7007, b"one service per connection\n")
        check(ok, f"inetd pair serves a client (127.0.0.1:{g.port7007} -> guest:7007)", why)
        rc, out = g.query("systemctl show -p NAccepted --value forkecho-inetd.socket")
        check(out.strip() not in ("", "0"), "forkecho-inetd.socket accepted the connection", out)
        g.run("systemctl disable --now forkecho-inetd.socket")

        # --- upgrade ---------------------------------------------------------
        rc, out = g.run("systemctl start forkecho.service && systemctl is-active forkecho.service")
        check(rc == 0, "forkecho.service started again", out)
        # A local change to the conffile: kept by the upgrade, read by the unit.
        g.run(r"sed -i 's/^FORKECHO_OPTS=\"\(.*\)\"/FORKECHO_OPTS=\"\1 -v\"/' /etc/default/forkecho")
        old_pid = g.run("systemctl show -p MainPID --value forkecho.service")[1].strip()
        rc, out = g.run(f"dpkg -i /mnt/payload/{a.deb_new}", 900)
        check(rc == 0, f"upgrade: dpkg -i {a.deb_new}", out)
        rc, out = g.query("dpkg-query -W -f '${Version}' forkecho; echo;"
                        " systemctl is-active forkecho.service;"
                        " systemctl show -p MainPID --value forkecho.service")
        f = out.split()
        new_version = a.deb_new.split("_")[1]
        check(len(f) == 3 and f[0] == new_version and f[1] == "active" and f[2] != old_pid,
              f"after upgrade: version {new_version}, service active, restarted", out)
        ok, why = echo_once(g.port7, b"after upgrade\n")
        check(ok, "client echoed after the upgrade", why)
        rc, out = g.query("grep -c -- ' -v\"$' /etc/default/forkecho;"
                        " journalctl -u forkecho.service -o cat --no-pager | grep -c 'ended (eof)'")
        check(out.split()[:1] == ["1"] and out.split()[1:2] != ["0"],
              "/etc/default/forkecho kept its local change (-v) and the service reads it", out)

        # --- purge -----------------------------------------------------------
        rc, out = g.run("dpkg --purge forkecho", 900)
        check(rc == 0, "dpkg --purge forkecho", out)
        rc, out = g.query(
            "dpkg-query -W forkecho 2>/dev/null;"
            " ls -d /usr/bin/forkecho /usr/lib/systemd/system/forkecho* /lib/systemd/system/forkecho*"
            " /etc/default/forkecho /etc/init.d/forkecho /etc/rc?.d/*forkecho*"
            " /etc/systemd/system/*/forkecho* /var/lib/systemd/deb-systemd-helper-*/*forkecho*"
            " /var/lib/dpkg/info/forkecho.* 2>/dev/null;"
            " find / -xdev \\( -path /proc -o -path /sys -o -path /run -o -path /mnt \\) -prune"
            " -o -name '*forkecho*' -print")
        check(out.strip() == "", "purge: no package, binary, unit, conffile, link or state file left", out)
        rc, out = g.query("getent passwd forkecho; getent group forkecho; pgrep -a forkecho;"
                        " ss -ltnH 'sport = :7'; systemctl list-unit-files --no-legend 'forkecho*'")
        check(out.strip() == "", "purge: no user, group, process, listener or unit file", out)
    except Exception as e:  # a dead guest or channel fails the run, visibly
        check(False, "guest run", repr(e))
    finally:
        g.stop()
        if failed and os.path.exists(g.console):
            with open(g.console, errors="replace") as f:
                tail = f.readlines()[-30:]
            print("systemd guest: last lines of the guest console:", file=sys.stderr)
            sys.stderr.write("".join(tail))
            sys.stderr.flush()
    print(f"systemd guest: {time.time() - t0:.0f} s with QEMU, {time.time() - a.started:.0f} s in all",
          flush=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)
