//! The one home of `unsafe`: thin wrappers over the raw calls that nix does
//! not cover the way this server needs, each with the C call it makes and why
//! it is sound. Everything else in the crate is `#![deny(unsafe_code)]`.
//!
//! Raw descriptor numbers enter the safe world only here: [`adopt`] turns a
//! number handed over at exec (systemd's sockets, `--ready-fd`, inetd's
//! descriptor 0) into an owned descriptor, and the few calls that must work on
//! a number that may be closed ([`fd_check`], [`write_raw`], [`close_raw`])
//! take the number itself, where a closed descriptor is just `EBADF`.

#![allow(unsafe_code)]

use core::sync::atomic::AtomicU32;
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use nix::unistd::ForkResult;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `fcntl(fd, F_GETFD)`: `Ok` when `fd` is open. Only reads the flags, so any
/// number is fine to ask about.
pub fn fd_check(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: F_GETFD reads the descriptor flags and touches no memory.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map(drop)
}

/// Takes ownership of a descriptor this process was handed at exec (systemd's
/// listening sockets, `--ready-fd`, inetd's descriptor 0), after checking
/// that it is open.
///
/// The caller promises that nothing else in the process owns `fd`: these
/// numbers are taken once, at start-up, before anything of ours could have
/// been given the same number (an open descriptor is never handed out again).
pub fn adopt(fd: RawFd) -> Result<OwnedFd, Errno> {
    fd_check(fd)?;
    // SAFETY: open (checked above) and, per the caller, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `close(2)` by number, for descriptors whose owner never runs its drop (a
/// forked child leaves with `_exit`) or that are kept as a plain number (the
/// syslog socket, shared with signal-free code through an atomic).
pub fn close_raw(fd: RawFd) {
    // SAFETY: closes a descriptor the caller owns by number; closing one that
    // is already closed is EBADF, ignored.
    unsafe { libc::close(fd) };
}

/// `close_range(first, last, 0)` (raw syscall: musl has no wrapper). Used in
/// a child right after fork, whose OwnedFds are never dropped (it ends with
/// `_exit`), so nothing closes these numbers a second time.
pub fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: closes descriptors only; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    Errno::result(r).map(drop)
}

/// `write(2)` on a descriptor number that may be closed (the log on fd 2):
/// `EBADF` then, nothing worse.
pub fn write_raw(fd: RawFd, bytes: &[u8]) -> Result<usize, Errno> {
    // SAFETY: the pointer and length describe a live slice.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    Errno::result(n).map(|n| n as usize)
}

// The raw fstat64 in `file_id` writes the kernel's 104-byte struct stat64.
#[cfg(target_arch = "arm")]
const _: () = assert!(core::mem::size_of::<libc::stat>() >= 104);

/// `fstat(2)` by number: (device, inode, mode) of the open file, for
/// descriptors that are always open (`main` fills closed 0-2 with /dev/null)
/// but owned by no Rust object.
pub fn file_id(fd: RawFd) -> Option<(u64, u64, u32)> {
    // SAFETY: all-zero bytes are a valid `struct stat`; fstat writes one.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // On 32-bit ARM the raw fstat64 call: musl's fstat goes through
    // fstatat's statx path and time64 conversion (1 KB on armv7) for the
    // three fields read here, which sit where the kernel's struct stat64
    // puts them (st_dev at 0, st_mode at 16, st_ino at 96) in every layout
    // of musl's struct stat, one that is at least as large.
    #[cfg(target_arch = "arm")]
    // SAFETY: the pointer refers to a live local at least as large as the
    // kernel's struct stat64, which is all the call writes.
    let ok = unsafe { libc::syscall(libc::SYS_fstat64, fd, &mut st as *mut libc::stat) } == 0;
    #[cfg(not(target_arch = "arm"))]
    // SAFETY: the pointer refers to a live local of the right type.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    ok.then_some((st.st_dev as u64, st.st_ino as u64, st.st_mode as u32))
}

/// `listen(2)` called directly: nix's `Backlog::new` refuses values above
/// the C library's `SOMAXCONN` constant, which musl fixes at 128, although the
/// kernel takes any value and caps it at `net.core.somaxconn` itself.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a live descriptor; no memory is passed.
    Errno::result(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// `accept4(2)` with `SOCK_CLOEXEC | SOCK_NONBLOCK`, returning the peer's
/// address too: nix's `accept4` discards it, and asking later would cost a
/// `getpeername(2)` per connection.
pub fn accept4(fd: BorrowedFd<'_>) -> Result<(OwnedFd, Option<SockaddrStorage>), Errno> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage ("no family").
    let mut storage: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointers refer to live locals of the right types; the
    // kernel writes at most `len` bytes.
    let raw = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
    let conn = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the kernel filled `len` bytes of a sockaddr_storage.
    let peer = unsafe {
        SockaddrStorage::from_raw(
            (&storage as *const libc::sockaddr_storage).cast(),
            Some(len),
        )
    };
    Ok((conn, peer))
}

/// `fork(2)`, through `_Fork` (POSIX 2024; musl 1.2.2+, glibc 2.34+) rather
/// than the C library's `fork`.
///
/// `fork` brackets the call with work this process does not need: it blocks
/// and restores the application signals (two more `rt_sigprocmask` in the
/// parent and one in the child per connection), runs `pthread_atfork`
/// handlers, and takes the C library's internal locks when threads exist.
/// `_Fork` still blocks every signal across the call and resets the
/// library's thread state (the cached thread id, the thread list) in the
/// child, so `raise`/`abort` there address the child itself.
///
/// Sound here because the server is single-threaded and registers no
/// `pthread_atfork` handler (nor does anything it links): no lock can be
/// held by another thread, and there is no handler to skip. The child starts
/// with a consistent heap and only uses memory prepared before fork and its
/// stack anyway (it never allocates: `tests/alloc.rs`).
pub fn fork() -> Result<ForkResult, Errno> {
    extern "C" {
        fn _Fork() -> libc::pid_t;
    }
    // SAFETY: see above; callers are the single-threaded parent only.
    let pid = Errno::result(unsafe { _Fork() })?;
    Ok(match pid {
        0 => ForkResult::Child,
        pid => ForkResult::Parent {
            child: nix::unistd::Pid::from_raw(pid),
        },
    })
}

/// `_exit(2)`: leaves without running atexit handlers or flushing stdio
/// buffers copied from the parent.
pub fn exit(status: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(status) }
}

/// `strerror(3)`: the C library's text for an error. musl has its table
/// linked in anyway, so nix's own copy would be 3 KB twice over.
pub fn strerror(e: Errno) -> &'static str {
    // SAFETY: strerror returns a pointer to a static, NUL-terminated string,
    // never freed. musl's table is immutable; glibc may use a per-thread
    // buffer only for unknown numbers, and this program formats errors on one
    // thread.
    let text = unsafe { core::ffi::CStr::from_ptr(libc::strerror(e as i32)) };
    text.to_str().unwrap_or("unknown error")
}

/// `sigaction(2)` installing `handler` with `flags` and an empty mask.
pub fn set_handler(sig: Signal, handler: extern "C" fn(i32), flags: SaFlags) -> Result<(), Errno> {
    let act = SigAction::new(SigHandler::Handler(handler), flags, SigSet::empty());
    // SAFETY: every handler this crate installs only sets atomics: no call,
    // no lock, errno untouched.
    unsafe { signal::sigaction(sig, &act) }.map(drop)
}

/// `sigaction(2)` to `SIG_DFL` or `SIG_IGN`: no code of ours runs.
pub fn set_disposition(sig: Signal, ignore: bool) -> Result<(), Errno> {
    let how = if ignore {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    let act = SigAction::new(how, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL and SIG_IGN run no code of ours.
    unsafe { signal::sigaction(sig, &act) }.map(drop)
}

/// Gives back the stack pages below the caller's frame: the deep start-up
/// calls (argument parsing, binding, the privilege drop) left them
/// populated, and `fork` copies the page-table entry of every populated
/// private page and write-protects it, on every connection (about 1 us per
/// page, fork and exit together, measured on x86_64). The loop re-touches
/// only the few it uses.
///
/// The range is the 256 KiB below the caller's page and the one under it:
/// only the stack itself and its guard gap (the kernel keeps other mappings
/// at least 1 MiB below a stack). Errors are ignored (`ENOMEM` for the
/// unmapped part of the range): the pages are then merely kept.
#[inline(never)]
pub fn release_stack_below_caller() {
    let here = 0u8;
    // From the aux vector, not sysconf: musl's sysconf brings a 1 KB table.
    // SAFETY: getauxval reads the process's aux vector, set up before main.
    let page = match unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize {
        p if p.is_power_of_two() => p,
        _ => 4096,
    };
    let top = (core::ptr::addr_of!(here) as usize & !(page - 1)).saturating_sub(page);
    let len = (256 * 1024usize).next_multiple_of(page);
    let Some(start) = top.checked_sub(len) else {
        return;
    };
    // SAFETY: everything below the stack pointer is dead (this function is
    // not a leaf, so no red zone of its own lives there, and no signal
    // handler runs during the call: the handled signals are blocked outside
    // `ppoll`); MADV_DONTNEED on private anonymous memory reads back as
    // zeros, and nothing in the range is read before it is written again.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
}

/// A fresh anonymous mapping of `len` bytes (at least one page): readable,
/// writable, zero-filled, no page of it populated until written; `shared`
/// with the children forked later, or private (copy-on-write).
fn map_anon(len: usize, shared: bool) -> Result<core::ptr::NonNull<u8>, Errno> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let share = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    // SAFETY: a fresh anonymous mapping at an address the kernel picks
    // aliases nothing of ours.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len.max(1),
            prot,
            share | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // Never null: without MAP_FIXED the kernel does not map page 0.
    core::ptr::NonNull::new(p.cast::<u8>()).ok_or(Errno::ENOMEM)
}

/// `mmap(MAP_SHARED | MAP_ANONYMOUS)` of `words` zeroed 32-bit atomics,
/// never unmapped: memory the parent and every child it forks afterwards
/// see alike (the children's last activity, the dropped-log count).
pub fn map_shared(words: usize) -> Result<&'static [AtomicU32], Errno> {
    let ptr = map_anon(words.max(1) * core::mem::size_of::<AtomicU32>(), true)?;
    // SAFETY: the mapping is page-aligned (so aligned for AtomicU32), `len`
    // bytes long, zero-filled (a valid AtomicU32 is any bit pattern), lives
    // for the rest of the process (never unmapped), and is only ever
    // accessed through atomics, by this process and its forks.
    Ok(unsafe { core::slice::from_raw_parts(ptr.as_ptr().cast::<AtomicU32>(), words) })
}

/// `len` zero bytes that no page backs until written: a private anonymous
/// mapping, never unmapped (the heap where it cannot be made).
///
/// For the echo and UDP buffers: a populated page of the parent's is a
/// page-table entry `fork` copies on every connection, for a buffer the
/// parent never uses and a short session never touches. [`Arena`] maps
/// blocks of a page or more the same way, but this holds for every size
/// `--buffer-size` and `--udp-buffer` allow (from 512 bytes), where the arena
/// would cut a small one from its static pages and zero them. A child that
/// does copy gets zero pages on first write.
pub fn zeroed_pages(len: usize) -> &'static mut [u8] {
    let Ok(p) = map_anon(len, false) else {
        return vec![0u8; len].leak();
    };
    // SAFETY: `len` writable bytes, zero-filled by the kernel (so
    // initialised u8s), never unmapped, and this is their only reference.
    unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) }
}

/// A `T` of the parent's in its own anonymous mapping that no child gets:
/// private, marked `MADV_DONTFORK` (shared where the kernel refuses the
/// mark; on the heap where no mapping can be made).
///
/// Why: after a fork every page of the parent is shared copy-on-write with
/// the child, so each page the parent writes afterwards costs the parent a
/// fault and leaves the old copy private to *every* live child. State the
/// parent writes on every connection (the child table, the counters, the
/// rate windows) lives here instead: `fork` skips the mapping, so it copies
/// no page-table entry of it, write-protects nothing, and those writes cost
/// no fault and no child's memory. A child does not even see it: the
/// addresses of every other client the parent serves are not in a
/// session's memory (and one mapping fewer is one less for each fork to
/// copy and each exit to tear down).
///
/// The contract that makes this sound: only the process that made it ever
/// touches the value. Children never read or write it (the child's side of
/// the fork names only the supervisor's other fields; with the mapping
/// gone, an access would fault) and never drop it (they leave with
/// `_exit`).
pub struct ParentBox<T> {
    ptr: core::ptr::NonNull<T>,
    mapped: bool,
}

/// A private anonymous mapping of `len` bytes marked `MADV_DONTFORK`, or,
/// where the kernel refuses the mark, a shared one (children map that one,
/// but a shared page is never copied on write either).
fn map_unforked(len: usize) -> Option<core::ptr::NonNull<u8>> {
    let p = map_anon(len, false).ok()?;
    // SAFETY: `p` is the start of a fresh mapping of `len` bytes that
    // nothing else refers to yet; the advice changes only what a fork does.
    let marked = unsafe { libc::madvise(p.as_ptr().cast(), len.max(1), libc::MADV_DONTFORK) };
    if marked == 0 {
        return Some(p);
    }
    // SAFETY: as above; unmapped before anything referred to it.
    unsafe { libc::munmap(p.as_ptr().cast(), len.max(1)) };
    map_anon(len, true).ok()
}

impl<T> ParentBox<T> {
    pub fn new(value: T) -> ParentBox<T> {
        let len = core::mem::size_of::<T>();
        let mapped = match core::mem::align_of::<T>() <= 4096 {
            true => map_unforked(len),
            false => None,
        };
        let Some(p) = mapped else {
            return ParentBox {
                ptr: core::ptr::NonNull::from(Box::leak(Box::new(value))),
                mapped: false,
            };
        };
        let ptr = p.cast::<T>();
        // SAFETY: page-aligned (so aligned for T, checked above), writable,
        // `size_of::<T>()` bytes, not yet initialised: written once here.
        unsafe { ptr.as_ptr().write(value) };
        ParentBox { ptr, mapped: true }
    }
}

impl<T> core::ops::Deref for ParentBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: initialised in `new`, freed only in `drop`; no other
        // process touches it (see the type's contract).
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> core::ops::DerefMut for ParentBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes the access unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for ParentBox<T> {
    fn drop(&mut self) {
        let ptr = self.ptr.as_ptr();
        // SAFETY: made by `new` as `mapped` records, dropped exactly once.
        unsafe {
            if self.mapped {
                core::ptr::drop_in_place(ptr);
                libc::munmap(ptr.cast(), core::mem::size_of::<T>().max(1));
            } else {
                drop(Box::from_raw(ptr));
            }
        }
    }
}

/// `sigpending(2)`: is any of `set` pending? The child keeps its stop
/// signals blocked outside `ppoll` and asks this between chunks of a stream
/// that never waits.
pub fn pending(set: &SigSet) -> bool {
    // SAFETY: all-zero bytes are a valid (empty) sigset_t.
    let mut raw: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: the pointer refers to a live local; sigpending writes it.
    if unsafe { libc::sigpending(&mut raw) } != 0 {
        return false;
    }
    // SAFETY: sigpending initialised `raw`.
    let pending = unsafe { SigSet::from_sigset_t_unchecked(raw) };
    set.iter().any(|sig| pending.contains(sig))
}

/// `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)`: installs a
/// seccomp-BPF program on this process, for good (a filter can never be
/// removed). Needs `PR_SET_NO_NEW_PRIVS` or CAP_SYS_ADMIN. prctl rather than
/// seccomp(2): it works since Linux 3.5, and musl has no seccomp wrapper.
pub fn seccomp_filter(prog: &'static [libc::sock_filter]) -> Result<(), Errno> {
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` is a live local describing `len` instructions of a
    // static array; the kernel only reads (copies) them, never writes.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    Errno::result(r).map(drop)
}

/// The test-only counting allocator (`--features alloc-count`).
#[cfg(feature = "alloc-count")]
pub struct CountingAlloc;

// SAFETY: every call is forwarded to the release allocator unchanged; the
// count is a relaxed atomic add.
#[cfg(feature = "alloc-count")]
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        crate::alloc_count::bump();
        Arena.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        crate::alloc_count::bump();
        Arena.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        crate::alloc_count::bump();
        Arena.realloc(ptr, layout, size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        Arena.dealloc(ptr, layout)
    }
}

/// The source of a UDP reply, as the `IP_PKTINFO`/`IPV6_PKTINFO` control
/// message of `sendmsg(2)` gives it.
pub enum ReplyFrom {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

/// `sendmsg(2)` of one datagram to `to`, leaving from the address in
/// `from`, non-blocking. Raw because nix's `sendmsg` allocates the control
/// buffer on every call; here it lives on the stack.
pub fn send_from(
    fd: BorrowedFd<'_>,
    data: &[u8],
    to: &SockaddrStorage,
    from: &ReplyFrom,
) -> Result<usize, Errno> {
    // Room for one control message of either kind, aligned as a cmsghdr.
    #[repr(C)]
    union Space {
        _hdr: libc::cmsghdr,
        _bytes: [u8; 64],
    }
    let (level, kind, info, len) = match from {
        ReplyFrom::V4(i) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            (i as *const libc::in_pktinfo).cast::<u8>(),
            core::mem::size_of::<libc::in_pktinfo>(),
        ),
        ReplyFrom::V6(i) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            (i as *const libc::in6_pktinfo).cast::<u8>(),
            core::mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    let mut space = Space { _bytes: [0; 64] };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero
    // lengths); musl's has padding fields that a literal could not name.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_name = to.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = to.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut space as *mut Space).cast();
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(len as u32) } as _;
    // SAFETY: msg_control points at `space`, zeroed, aligned for a cmsghdr
    // and larger than CMSG_SPACE of either pktinfo (at most 40 bytes), so
    // CMSG_FIRSTHDR is non-null and the header and `len` data bytes written
    // through it stay inside `space`; `info` points at `len` live bytes.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(len as u32) as _;
        core::ptr::copy_nonoverlapping(info, libc::CMSG_DATA(cmsg), len);
    }
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: `msg` points at the live locals above (address, one iovec
    // over `data`, the control message) for the duration of the call, which
    // only reads them.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    Errno::result(n).map(|n| n as usize)
}

/// One datagram received by [`recv_pktinfo`].
pub struct Datagram {
    pub len: usize,
    /// Longer than the buffer: the kernel dropped the rest (`MSG_TRUNC`).
    pub truncated: bool,
    pub src: Option<SockaddrStorage>,
    /// The `IP_PKTINFO` and `IPV6_PKTINFO` messages that came with it.
    pub v4: Option<libc::in_pktinfo>,
    pub v6: Option<libc::in6_pktinfo>,
}

/// `recvmsg(2)` of one datagram into `buf`, non-blocking, with its source
/// and its pktinfo messages. Raw, with the control buffer on the stack:
/// nix's control-message decoding knows every kind there is and costs
/// kilobytes of code on a board, for the two this server asks for.
pub fn recv_pktinfo(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Datagram, Errno> {
    // Room for both messages (an IPv4 datagram on a dual-stack socket
    // brings both), aligned as a cmsghdr.
    #[repr(C)]
    union Space {
        _hdr: libc::cmsghdr,
        _bytes: [u8; 128],
    }
    let mut space = Space { _bytes: [0; 128] };
    // SAFETY: all-zero bytes are a valid sockaddr_storage ("no family").
    let mut storage: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero bytes are a valid msghdr, as in `send_from`.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut space as *mut Space).cast();
    msg.msg_controllen = core::mem::size_of::<Space>() as _;
    // On 32-bit ARM the raw call: musl's recvmsg also rewrites time64
    // timestamp messages (asked for nowhere here), 400 bytes on armv7.
    #[cfg(target_arch = "arm")]
    // SAFETY: every pointer in `msg` refers to a live local or to `buf`, with
    // its true length; the kernel writes within those lengths only. musl's
    // msghdr on 32-bit ARM has the kernel's layout.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvmsg,
            fd.as_raw_fd(),
            &mut msg as *mut libc::msghdr,
            libc::MSG_DONTWAIT,
        )
    };
    #[cfg(not(target_arch = "arm"))]
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    let len = Errno::result(n)? as usize;
    // SAFETY: the kernel filled `msg_namelen` bytes of a sockaddr_storage.
    let src = unsafe {
        SockaddrStorage::from_raw(
            (&storage as *const libc::sockaddr_storage).cast(),
            Some(msg.msg_namelen),
        )
    };
    let mut d = Datagram {
        len,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        src,
        v4: None,
        v6: None,
    };
    // A cut control buffer cannot be walked safely: no pktinfo then.
    if msg.msg_flags & libc::MSG_CTRUNC == 0 {
        read_pktinfo(&msg, &mut d);
    }
    Ok(d)
}

/// Walks the control messages `recvmsg` left in `msg`, keeping the pktinfo.
fn read_pktinfo(msg: &libc::msghdr, d: &mut Datagram) {
    let v4_len = core::mem::size_of::<libc::in_pktinfo>();
    let v6_len = core::mem::size_of::<libc::in6_pktinfo>();
    // SAFETY: `msg` is the header recvmsg just filled, its control buffer
    // live and not truncated; CMSG_FIRSTHDR/CMSG_NXTHDR return headers inside
    // `msg_controllen` or null. A payload is read (unaligned: CMSG_DATA need
    // not be aligned for it) only when `cmsg_len` says it is all there.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let have = (*c).cmsg_len as usize;
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO)
                    if have >= libc::CMSG_LEN(v4_len as u32) as usize =>
                {
                    d.v4 = Some(core::ptr::read_unaligned(data.cast()));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                    if have >= libc::CMSG_LEN(v6_len as u32) as usize =>
                {
                    d.v6 = Some(core::ptr::read_unaligned(data.cast()));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

/// Stand in for the C library's `fprintf`, `fflush` and `stderr` on 32-bit
/// ARM, so that musl's printf engine and stdio (10 KB on armv7) are not
/// linked. Their one user is libunwind's fatal-error path, which ARM's
/// unwind tables keep alive through the personality routine; nothing here
/// ever unwinds (release builds abort on panic at once), so that path only
/// runs on a corrupt unwind table, and then aborts anyway, without its
/// message.
#[cfg(all(target_arch = "arm", not(test)))]
#[no_mangle]
pub extern "C" fn fprintf() -> libc::c_int {
    0
}

#[cfg(all(target_arch = "arm", not(test)))]
#[no_mangle]
pub extern "C" fn fflush() -> libc::c_int {
    0
}

#[cfg(all(target_arch = "arm", not(test)))]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static stderr: usize = 0;

/// Stand-ins for the ARM EHABI unwinder on 32-bit ARM, in the size builds
/// (`-Cpanic=immediate-abort`, std built from source the same way): the
/// personality routines the C objects' unwind tables name (`.ARM.exidx`)
/// and what std's own personality routine calls. Defined here, they keep
/// libunwind out of the link (about 1.8 KB on armv7 with its tables).
/// Nothing unwinds in such a build, and C code does not throw; were one ever
/// called, `_URC_FAILURE` (9) makes an unwinder give up and abort. Builds
/// that can unwind (test builds, a prebuilt std) link the real libunwind.
macro_rules! no_unwinder {
    ($($name:ident),*) => {$(
        #[cfg(all(target_arch = "arm", panic = "immediate-abort", not(test)))]
        #[no_mangle]
        pub extern "C" fn $name() -> libc::c_int {
            9
        }
    )*};
}

no_unwinder!(
    __aeabi_unwind_cpp_pr0,
    __aeabi_unwind_cpp_pr1,
    __aeabi_unwind_cpp_pr2,
    __gnu_unwind_frame,
    _Unwind_VRS_Get,
    _Unwind_VRS_Set,
    _Unwind_GetLanguageSpecificData,
    _Unwind_GetRegionStart,
    _Unwind_GetDataRelBase,
    _Unwind_GetTextRelBase
);

/// The heap of the release binary, in place of the C library's `malloc`
/// (zig's, 4 KB of code on armv7 for a thread-caching allocator a
/// single-threaded server does not need). forkecho allocates at start-up
/// only (the `alloc-count` tests hold it to that), so small blocks are cut
/// from a static arena by moving a mark and are given back only when they
/// are the last one cut; a block of [`Arena::BIG`] bytes or more (the echo
/// buffer, a file read whole) is a mapping of its own, unmapped when freed,
/// so its pages stay untouched until used.
pub struct Arena;

/// The arena's bytes; untouched pages cost no memory.
#[repr(C, align(16))]
struct Space(core::cell::UnsafeCell<[u8; Arena::SIZE]>);

// SAFETY: the bytes are handed out in disjoint blocks, each reserved by a
// compare-exchange on `TOP` before anyone touches it.
unsafe impl Sync for Space {}

static SPACE: Space = Space(core::cell::UnsafeCell::new([0; Arena::SIZE]));
/// The arena's first free offset.
static TOP: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

impl Arena {
    const SIZE: usize = 16 * 1024;
    const BIG: usize = 4096;

    fn base() -> usize {
        SPACE.0.get() as usize
    }

    /// The arena offset of `ptr`, if the arena holds it.
    fn offset(ptr: *mut u8) -> Option<usize> {
        (ptr as usize)
            .checked_sub(Self::base())
            .filter(|&o| o < Self::SIZE)
    }

    /// A block cut from the arena, or null when it does not fit.
    fn cut(layout: std::alloc::Layout) -> *mut u8 {
        use core::sync::atomic::Ordering::Relaxed;
        let mut top = TOP.load(Relaxed);
        loop {
            let start = (Self::base() + top).next_multiple_of(layout.align()) - Self::base();
            let end = start + layout.size();
            if layout.size() >= Self::BIG || end > Self::SIZE {
                return core::ptr::null_mut();
            }
            match TOP.compare_exchange_weak(top, end, Relaxed, Relaxed) {
                Ok(_) => return (Self::base() + start) as *mut u8,
                Err(now) => top = now,
            }
        }
    }

    /// A mapping of its own: page-aligned, zero-filled, untouched.
    fn map(size: usize) -> *mut u8 {
        map_anon(size, false).map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }
}

// SAFETY: blocks come either from the arena, reserved by compare-exchange
// on `TOP` so no two overlap, or from mmap; a block is given back through
// the path it came from, told apart by its address. Alignment: arena blocks
// are aligned by `cut`, mappings are page-aligned, and larger alignments
// (never asked for here) are refused with null.
unsafe impl std::alloc::GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = Self::cut(layout);
        match p.is_null() && layout.align() <= Self::BIG {
            true => Self::map(layout.size()),
            false => p,
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = Self::cut(layout);
        if p.is_null() {
            // Fresh mappings are zero-filled: not writing them keeps a
            // large buffer's pages untouched until used.
            return self.alloc(layout);
        }
        // SAFETY: `cut` reserved `layout.size()` bytes at `p` for us; the
        // arena may have used them before.
        unsafe { p.write_bytes(0, layout.size()) };
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        use core::sync::atomic::Ordering::Relaxed;
        match Self::offset(ptr) {
            // The last block cut goes back; others stay cut (start-up only).
            Some(start) => _ = TOP.compare_exchange(start + layout.size(), start, Relaxed, Relaxed),
            // SAFETY: a mapping of this size made by `map` or `realloc`.
            None => _ = unsafe { libc::munmap(ptr.cast(), layout.size()) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        use core::sync::atomic::Ordering::Relaxed;
        let Some(start) = Self::offset(ptr) else {
            // SAFETY: a mapping of `layout.size()` bytes made by `map` or an
            // earlier `realloc`; the kernel moves it if it must.
            let p = unsafe { libc::mremap(ptr.cast(), layout.size(), size, libc::MREMAP_MAYMOVE) };
            return if p == libc::MAP_FAILED {
                core::ptr::null_mut()
            } else {
                p.cast()
            };
        };
        // The last block cut grows or shrinks in place while it stays small.
        let end = start + layout.size();
        if size < Self::BIG
            && start + size <= Self::SIZE
            && TOP
                .compare_exchange(end, start + size, Relaxed, Relaxed)
                .is_ok()
        {
            return ptr;
        }
        if size <= layout.size() {
            return ptr;
        }
        // SAFETY: `layout` with the new size is valid (the caller's promise).
        let new = unsafe { std::alloc::Layout::from_size_align_unchecked(size, layout.align()) };
        // SAFETY: the new block is fresh, so the two do not overlap; the old
        // one holds `layout.size()` bytes, fewer than `size`.
        unsafe {
            let p = self.alloc(new);
            if !p.is_null() {
                p.copy_from_nonoverlapping(ptr, layout.size());
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}

/// The C entry point, in place of std's runtime (`#![no_main]` in main.rs):
/// its start-up (argument capture, stack-overflow handler, stdout flushing
/// at exit) cost 3 KB on armv7, and forkecho needs only the arguments and
/// the two steps `run` repeats. Exits through `exit(3)` as before.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    let args: Vec<&[u8]> = (1..argc.max(1) as usize)
        // SAFETY: exec passes `argc` pointers to NUL-terminated strings,
        // which live as long as the process.
        .map(|i| unsafe { core::ffi::CStr::from_ptr(*argv.add(i)) }.to_bytes())
        .collect();
    crate::run(&args).into()
}

/// `getenv(3)`, then `unsetenv(3)`: the value of `name`, taken out of the
/// environment so that nothing started later inherits it. Raw rather than
/// std::env, whose lock and OsString round trip cost 1 KB on armv7 for
/// three variables read once.
pub fn take_env(name: &core::ffi::CStr) -> Option<Vec<u8>> {
    // SAFETY: called at start-up, while the process has one thread, so
    // nothing changes the environment while the value is copied out of it;
    // the pointer is to a NUL-terminated string or null.
    let value = unsafe {
        let p = libc::getenv(name.as_ptr());
        (!p.is_null()).then(|| core::ffi::CStr::from_ptr(p).to_bytes().to_vec())
    };
    // SAFETY: as above: no other thread reads or writes the environment.
    unsafe { libc::unsetenv(name.as_ptr()) };
    value
}

/// `setgroups(2)` to the one group `gid`, then `setgid(2)` and `setuid(2)`,
/// as raw system calls, which change the calling thread only. That is the
/// whole process here: forkecho has one thread when it drops privileges.
/// musl's wrappers carry the change to every thread through a signal
/// rendezvous (`__synccall`, with its semaphores): 2 KB on armv7 for threads
/// forkecho never starts. `privs` checks the result with getresuid and
/// getresgid either way.
pub mod ids {
    use super::*;

    // 32-bit ARM and x86 keep the 16-bit id calls under the plain names.
    #[cfg(not(any(target_arch = "arm", target_arch = "x86")))]
    use libc::{SYS_setgid as SETGID, SYS_setgroups as SETGROUPS, SYS_setuid as SETUID};
    #[cfg(any(target_arch = "arm", target_arch = "x86"))]
    use libc::{SYS_setgid32 as SETGID, SYS_setgroups32 as SETGROUPS, SYS_setuid32 as SETUID};

    pub fn set_group(gid: u32) -> Result<(), Errno> {
        // SAFETY: setgroups reads one gid_t from the pointer, a live local;
        // setgid takes a number and touches no memory.
        unsafe {
            Errno::result(libc::syscall(SETGROUPS, 1, &gid as *const u32))?;
            Errno::result(libc::syscall(SETGID, gid)).map(drop)
        }
    }

    pub fn set_user(uid: u32) -> Result<(), Errno> {
        // SAFETY: takes a number and touches no memory.
        Errno::result(unsafe { libc::syscall(SETUID, uid) }).map(drop)
    }
}

/// A value set once at start-up and then only read: `OnceLock` without the
/// futex-based `Once` behind it (which waits for a racing initialiser; here
/// a second `set` simply fails), about 500 bytes less on 32-bit ARM.
pub struct SetOnce<T> {
    /// 0 empty, 1 being written, 2 set.
    state: core::sync::atomic::AtomicU8,
    value: core::cell::UnsafeCell<core::mem::MaybeUninit<T>>,
}

// SAFETY: the value is written once, by the one `set` that moved `state`
// from 0 to 1, and read (shared) only after `state` is 2 with Release /
// Acquire ordering between them, so no reader overlaps the write; T: Sync
// makes the shared reads from several threads sound, T: Send the move in.
unsafe impl<T: Send + Sync> Sync for SetOnce<T> {}

impl<T> SetOnce<T> {
    pub const fn new() -> SetOnce<T> {
        SetOnce {
            state: core::sync::atomic::AtomicU8::new(0),
            value: core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()),
        }
    }

    /// Stores `value` unless one was stored (or is being stored) already.
    pub fn set(&self, value: T) -> Result<(), T> {
        use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        if self.state.compare_exchange(0, 1, Acquire, Relaxed).is_err() {
            return Err(value);
        }
        // SAFETY: state 1 is held by this call alone (the exchange above),
        // and no `get` reads before state 2.
        unsafe { (*self.value.get()).write(value) };
        self.state.store(2, Release);
        Ok(())
    }

    pub fn get(&self) -> Option<&T> {
        if self.state.load(core::sync::atomic::Ordering::Acquire) != 2 {
            return None;
        }
        // SAFETY: state 2 means `set` finished writing (Acquire pairs with
        // its Release) and nothing writes the value again.
        Some(unsafe { (*self.value.get()).assume_init_ref() })
    }
}

#[cfg(test)]
mod tests {
    use super::SetOnce;

    #[test]
    fn set_once_keeps_the_first_value() {
        let cell = SetOnce::new();
        assert_eq!(cell.get(), None);
        assert_eq!(cell.set(1), Ok(()));
        assert_eq!(cell.set(2), Err(2));
        assert_eq!(cell.get(), Some(&1));
    }
}
