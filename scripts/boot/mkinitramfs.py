#!/usr/bin/env python3
"""Writes the guest's initramfs (cpio newc), without root.

  mkinitramfs.py base --kit DIR --busybox FILE --modules "a b" --out FILE
      The cached part: BusyBox (its applet links are made at boot by
      `busybox --install -s`), /dev/console, users, and the kernel modules
      named (plus what they depend on, from each module's .modinfo
      `depends=`; modules built into the kernel, per modules.builtin, are
      skipped), listed in load order in /etc/boot-modules.

  mkinitramfs.py run --base FILE --out FILE SRC=DEST[:MODE] ...
      The base archive, then a second archive with the files of this run
      (forkecho, the init script, the guest's scripts). The kernel unpacks
      both, in order.
"""

import argparse
import glob
import os
import shutil
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from newc import Newc  # noqa: E402


def norm(name):
    return name.replace("-", "_")


def modinfo_depends(path):
    with open(path, "rb") as f:
        data = f.read()
    i = data.find(b"\0depends=")
    if i < 0:
        return []
    j = data.index(b"\0", i + 1)
    value = data[i + 9 : j].decode()
    return [norm(d) for d in value.split(",") if d]


def resolve(kit, wanted):
    """Module files (relative to lib/modules/VER) in load order."""
    moddirs = glob.glob(os.path.join(kit, "lib/modules/*"))
    if len(moddirs) != 1:
        sys.exit(f"mkinitramfs: expected one lib/modules/VERSION in {kit}, found {moddirs}")
    moddir = moddirs[0]
    builtin = set()
    with open(os.path.join(moddir, "modules.builtin")) as f:
        for line in f:
            builtin.add(norm(os.path.basename(line.strip())[: -len(".ko")]))
    files = {}
    for root, _, names in os.walk(os.path.join(moddir, "kernel")):
        for n in names:
            if n.endswith(".ko"):
                files[norm(n[:-3])] = os.path.relpath(os.path.join(root, n), moddir)
    order = []
    seen = set()

    def visit(m, chain):
        if m in seen or m in builtin:
            return
        if m in chain:
            sys.exit(f"mkinitramfs: dependency cycle {chain + [m]}")
        if m not in files:
            sys.exit(f"mkinitramfs: module {m} is neither built in nor in {moddir}/kernel")
        for d in modinfo_depends(os.path.join(moddir, files[m])):
            visit(d, chain + [m])
        seen.add(m)
        order.append(files[m])

    for m in wanted:
        visit(norm(m), [])
    return moddir, order


PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def base(args):
    moddir, order = resolve(args.kit, args.modules.split())
    version = os.path.basename(moddir)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as out:
        w = Newc(out)
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin",
                  "etc/init.d", "etc/default", "proc", "sys", "dev", "run",
                  "var/log", "root"):
            w.dir(d)
        w.dir("tmp", 0o1777)
        w.symlink("var/run", "../run")
        w.node("dev/console", 0o600, 5, 1)
        w.node("dev/null", 0o666, 1, 3)
        with open(args.busybox, "rb") as f:
            w.file("bin/busybox", f.read(), 0o755)
        # Enough to run rcS, which installs the other applet links.
        w.symlink("init", "bin/busybox")
        w.symlink("bin/sh", "busybox")
        w.file("etc/passwd", PASSWD.encode())
        w.file("etc/group", GROUP.encode())
        listing = []
        for rel in order:
            with open(os.path.join(moddir, rel), "rb") as f:
                w.file(f"lib/modules/{version}/{rel}", f.read())
            listing.append(f"/lib/modules/{version}/{rel}\n")
        w.file("etc/boot-modules", "".join(listing).encode())
        w.trailer()
    os.replace(tmp, args.out)
    print(f"mkinitramfs: {args.out}: busybox, modules {' '.join(os.path.basename(m)[:-3] for m in order) or '(none)'}")


def run(args):
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as out:
        with open(args.base, "rb") as b:
            shutil.copyfileobj(b, out)
        w = Newc(out)
        for spec in args.files:
            src, _, dest = spec.partition("=")
            dest, _, mode = dest.partition(":")
            with open(src, "rb") as f:
                w.file(dest, f.read(), int(mode or "644", 8))
        w.trailer()
    os.replace(tmp, args.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base")
    b.add_argument("--kit", required=True)
    b.add_argument("--busybox", required=True)
    b.add_argument("--modules", default="")
    b.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--base", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("files", nargs="*")
    args = p.parse_args()
    (base if args.cmd == "base" else run)(args)


if __name__ == "__main__":
    main()
