"""A writer for cpio archives in the `newc` format (what the Linux kernel
unpacks as an initramfs), without root: owners, modes and device nodes are
written into the archive, never created on the host.

    with open("initrd.cpio", "wb") as f:
        w = Newc(f)
        w.dir("dev")
        w.node("dev/console", 0o600, 5, 1)
        w.file("bin/busybox", data, 0o755)
        w.symlink("bin/sh", "busybox")
        w.trailer()

Archives written one after the other in a file are unpacked in order by the
kernel (a later file replaces an earlier one), so a cached base archive and
a small per-run one can simply be concatenated.
"""

import stat

_MTIME = 0  # reproducible archives


class Newc:
    def __init__(self, out):
        self.out = out
        self.ino = 1000
        self.dirs = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name = name.strip("/")
        nameb = name.encode() + b"\0"
        self.ino += 1
        fields = [
            self.ino,  # c_ino
            mode,  # c_mode (type and permissions)
            0,  # c_uid: root
            0,  # c_gid
            nlink,  # c_nlink
            _MTIME,  # c_mtime
            len(data),  # c_filesize
            0,  # c_devmajor
            0,  # c_devminor
            rdev[0],  # c_rdevmajor
            rdev[1],  # c_rdevminor
            len(nameb),  # c_namesize, with the NUL
            0,  # c_check
        ]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.out.write(hdr + nameb)
        self._pad(len(hdr) + len(nameb))
        self.out.write(data)
        self._pad(len(data))

    def _pad(self, n):
        if n % 4:
            self.out.write(b"\0" * (4 - n % 4))

    def _parents(self, name):
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, name, perm=0o755):
        name = name.strip("/")
        if not name or name in self.dirs:
            return
        self._parents(name)
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._parents(name)
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def node(self, name, perm, major, minor, kind=stat.S_IFCHR):
        self._parents(name)
        self._entry(name, kind | perm, rdev=(major, minor))

    def trailer(self):
        self._entry("TRAILER!!!", 0, nlink=1)
        # Keep the next concatenated archive 512-byte aligned, as cpio(1) does.
        pos = self.out.tell()
        if pos % 512:
            self.out.write(b"\0" * (512 - pos % 512))
