//! The child's sandbox (`--sandbox`): a seccomp-BPF filter that lets a
//! session make only the system calls an echo needs and kills the whole
//! process (`SECCOMP_RET_KILL_PROCESS`, SIGSYS) on any other.
//!
//! Why: a child holds nothing but its connection, yet a bug in it would
//! still run with everything the server's user may do — open sockets to the
//! network, read files, exec. With the filter such a child dies on the first
//! call it was never meant to make, and the parent counts it
//! (`killed_sandbox`).
//!
//! The program is a `static` built at compile time for the target's
//! architecture: nothing is allocated, and every child installs the same
//! bytes. A child installs it after its descriptor cleanup and signal reset
//! (so those calls need not be allowed) and before it touches the
//! connection; `--inetd` just before the session. Whether the kernel takes a
//! filter is probed once at start-up by a throwaway child: QEMU user mode,
//! for one, refuses every filter (it would apply to the emulator itself).

use crate::error::{Error, Reason, Result};
use crate::log::Level;
use crate::session::End;
use core::mem::offset_of;
use nix::errno::Errno;
use nix::libc::{self, c_long, seccomp_data, sock_filter};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use std::net::SocketAddr;

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Filter the children where the kernel takes a filter; where it does
    /// not, say so once and serve without. The default.
    Auto,
    /// Filter the children or refuse to start.
    On,
    /// Never install a filter.
    Off,
}

impl core::str::FromStr for Mode {
    type Err = ();

    fn from_str(s: &str) -> core::result::Result<Mode, ()> {
        match s {
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            _ => Err(()),
        }
    }
}

/// The calls allowed on every architecture (each number the target's), and
/// who makes each.
const COMMON: [c_long; 20] = [
    libc::SYS_read,            // copy mode
    libc::SYS_write,           // copy mode; log lines on stderr; the handler
    libc::SYS_close,           // the splice pipe at the end; a syslog reconnect
    libc::SYS_splice,          // splice and auto modes
    libc::SYS_pipe2,           // the splice pipe
    libc::SYS_ppoll,           // every session wait (with the stop signals unblocked)
    libc::SYS_clock_gettime,   // Instant::now where the vDSO falls back
    libc::SYS_shutdown,        // the half-close of a session the server ends
    libc::SYS_recvfrom,        // draining the peer's input after FIN (recv, MSG_TRUNC)
    libc::SYS_getpid,          // every log line names its process
    libc::SYS_sendto,          // log lines to syslog (musl's send is sendto)
    libc::SYS_connect,         // reconnecting to a restarted syslogd
    libc::SYS_fcntl,           // debug builds check an fd before closing it
    libc::SYS_rt_sigreturn,    // back from the handler (SIGUSR1 to the group)
    libc::SYS_restart_syscall, // a timed wait resumed after SIGSTOP/SIGCONT
    libc::SYS_exit_group,      // _exit
    libc::SYS_exit,            // musl's _exit, should exit_group return
    libc::SYS_rt_sigprocmask,  // ppoll's mask swap where the C library emulates it
    libc::SYS_rt_sigpending,   // a stop signal pending during a stream (sigpending)
    libc::SYS_rt_sigaction,    // kept for the C library's own signal set-up
];

/// Per architecture: the numbers seccomp reports (`AUDIT_ARCH_*`, from
/// `<linux/audit.h>`) and the calls that differ.
#[cfg(target_arch = "x86_64")]
mod arch {
    use nix::libc::{self, c_long};
    pub const AUDIT: u32 = 0xc000_003e; // EM_X86_64 | 64-bit | little-endian
    /// x32 calls come through the x86_64 entry with this bit set: refused.
    pub const X32_BIT: Option<u32> = Some(0x4000_0000);
    pub const EXTRA: [c_long; 1] = [libc::SYS_poll];
}

#[cfg(target_arch = "arm")]
mod arch {
    use nix::libc::{self, c_long};
    pub const AUDIT: u32 = 0x4000_0028; // EM_ARM | little-endian (EABI)
    pub const X32_BIT: Option<u32> = None;
    /// The 64-bit-time calls of every 32-bit architecture (musl 1.2 tries
    /// them first for times that do not fit 32 bits; the vDSO falls back to
    /// clock_gettime64); the libc crate lacks their names for arm.
    const CLOCK_GETTIME64: c_long = 403;
    const PPOLL_TIME64: c_long = 414;
    pub const EXTRA: [c_long; 5] = [
        libc::SYS_poll,      // musl's poll on arm
        PPOLL_TIME64,        // musl's ppoll on 32-bit: time64 first
        CLOCK_GETTIME64,     // Instant::now where the vDSO falls back
        libc::SYS_fcntl64,   // musl's fcntl on 32-bit architectures
        libc::SYS_sigreturn, // musl's restorer for handlers without SA_SIGINFO
    ];
}

#[cfg(target_arch = "aarch64")]
mod arch {
    use nix::libc::c_long;
    pub const AUDIT: u32 = 0xc000_00b7; // EM_AARCH64 | 64-bit | little-endian
    pub const X32_BIT: Option<u32> = None;
    pub const EXTRA: [c_long; 0] = [];
}

/// Elsewhere no filter is built: installing one fails with ENOSYS, so
/// `auto` serves without and `on` refuses to start.
#[cfg(not(any(target_arch = "x86_64", target_arch = "arm", target_arch = "aarch64")))]
mod arch {
    use nix::libc::c_long;
    pub const AUDIT: u32 = 0;
    pub const X32_BIT: Option<u32> = None;
    pub const EXTRA: [c_long; 0] = [];
}

/// `socket(2)` is allowed only as the syslog reconnect makes it: a Unix
/// datagram socket, close-on-exec. A child can never open a network socket.
const SOCKET_DOMAIN: u32 = libc::AF_UNIX as u32;
const SOCKET_TYPE: u32 = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u32;

const NR: u32 = offset_of!(seccomp_data, nr) as u32;
const ARCH: u32 = offset_of!(seccomp_data, arch) as u32;
/// The low 32 bits of `args[0]` and `args[1]` (all three targets are
/// little-endian; the kernel reads both as `int`).
const ARG0: u32 = offset_of!(seccomp_data, args) as u32;
const ARG1: u32 = ARG0 + 8;

const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;

/// Every call the program lets through, `socket` included (its arguments
/// are checked after the search), ascending: the search's keys.
const CALLS: [u32; COMMON.len() + arch::EXTRA.len() + 1] = sorted_calls();

/// Calls tested one by one at a leaf of the search.
const LEAF: usize = 3;

/// The cache-builder stop (1), arch check (3), load nr (1), the x32 check,
/// the search, the socket arguments (4), kill and allow.
const LEN: usize = 5 + arch::X32_BIT.is_some() as usize + search_len(CALLS.len()) + 4 + 2;

/// The program every sandboxed child installs.
static FILTER: [sock_filter; LEN] = build();

const fn op(code: u16, k: u32, jt: usize, jf: usize) -> sock_filter {
    // A jump longer than 255 fails the build here, never at run time.
    assert!(jt < 256 && jf < 256);
    sock_filter {
        code,
        jt: jt as u8,
        jf: jf as u8,
        k,
    }
}

const fn sorted_calls() -> [u32; COMMON.len() + arch::EXTRA.len() + 1] {
    let mut v = [libc::SYS_socket as u32; COMMON.len() + arch::EXTRA.len() + 1];
    let mut n = 0;
    while n < COMMON.len() + arch::EXTRA.len() {
        v[n] = match n < COMMON.len() {
            true => COMMON[n] as u32,
            false => arch::EXTRA[n - COMMON.len()] as u32,
        };
        let mut i = n;
        while i > 0 && v[i - 1] > v[i] {
            (v[i - 1], v[i]) = (v[i], v[i - 1]);
            i -= 1;
        }
        n += 1;
    }
    // socket, placed last, sinks to its place the same way.
    let mut i = v.len() - 1;
    while i > 0 && v[i - 1] > v[i] {
        (v[i - 1], v[i]) = (v[i], v[i - 1]);
        i -= 1;
    }
    v
}

/// Instructions of the search over `n` calls: a leaf tests each and jumps
/// to kill; above it, one `JGE` splits the range in halves.
const fn search_len(n: usize) -> usize {
    match n <= LEAF {
        true => n + 1,
        false => 1 + search_len(n / 2) + search_len(n - n / 2),
    }
}

/// Writes the search over `CALLS[lo..hi]` at `at`; `socket` is where the
/// socket arguments are checked. Returns the index after it.
const fn search(
    f: &mut [sock_filter; LEN],
    at: usize,
    lo: usize,
    hi: usize,
    socket: usize,
) -> usize {
    let (kill, allow) = (LEN - 2, LEN - 1);
    if hi - lo <= LEAF {
        let mut i = at;
        let mut n = lo;
        while n < hi {
            let to = if CALLS[n] == libc::SYS_socket as u32 {
                socket
            } else {
                allow
            };
            f[i] = op(JEQ, CALLS[n], to - i - 1, 0);
            (i, n) = (i + 1, n + 1);
        }
        f[i] = op(JA, (kill - i - 1) as u32, 0, 0);
        return i + 1;
    }
    let mid = lo + (hi - lo) / 2;
    let right = search(f, at + 1, lo, mid, socket);
    f[at] = op(JGE, CALLS[mid], right - at - 1, 0);
    search(f, right, mid, hi, socket)
}

/// Shaped for what installing costs, since every child installs it. The
/// kernel (x86_64 since Linux 5.11) runs a new filter through an emulator
/// once for every system call number of both ABIs, to cache the calls it
/// always allows; our children make a dozen calls, so the cache buys them
/// nothing. The first instruction loads an argument, which the emulator
/// cannot evaluate, so it gives up at once for each number: the install
/// cost per child, measured on x86_64 with a C probe, is about 17 µs, against
/// 26 µs without that load and 48 µs with a list of 25 calls instead of the
/// binary search below (which the kernel then runs, JIT-compiled, on each
/// call: at most 15 instructions).
const fn build() -> [sock_filter; LEN] {
    let (kill, allow) = (LEN - 2, LEN - 1);
    let socket = LEN - 6;
    let mut f = [op(RET, libc::SECCOMP_RET_KILL_PROCESS, 0, 0); LEN];
    // Not a constant: the cache builder stops here (see above).
    f[0] = op(LD, ARG0, 0, 0);
    // Another architecture's numbers mean other calls: kill.
    f[1] = op(LD, ARCH, 0, 0);
    f[2] = op(JEQ, arch::AUDIT, 1, 0);
    f[4] = op(LD, NR, 0, 0);
    let mut i = 5;
    if let Some(bit) = arch::X32_BIT {
        f[i] = op(JGE, bit, kill - i - 1, 0);
        i += 1;
    }
    let end = search(&mut f, i, 0, CALLS.len(), socket);
    assert!(end == socket);
    f[socket] = op(LD, ARG0, 0, 0);
    f[socket + 1] = op(JEQ, SOCKET_DOMAIN, 0, kill - socket - 2);
    f[socket + 2] = op(LD, ARG1, 0, 0);
    f[socket + 3] = op(JEQ, SOCKET_TYPE, allow - socket - 4, kill - socket - 4);
    f[allow] = op(RET, libc::SECCOMP_RET_ALLOW, 0, 0);
    f
}

/// Installs [`FILTER`] on this process, for good.
fn install() -> core::result::Result<(), Errno> {
    if arch::AUDIT == 0 {
        return Err(Errno::ENOSYS);
    }
    crate::sys::seccomp_filter(&FILTER)
}

/// What a child does about the sandbox, decided once at start-up.
#[derive(Clone, Copy, Default)]
pub struct Sandbox {
    on: bool,
    /// Test hook (`FORKECHO_TEST_SANDBOX_VIOLATE=ADDR`): a child serving
    /// ADDR makes a forbidden call right after installing the filter.
    #[cfg(feature = "sandbox-test")]
    violate: Option<std::net::IpAddr>,
}

impl Sandbox {
    /// The server's start-up: `off` installs nothing; `auto` and `on` probe
    /// the kernel with a throwaway child, and where it refuses `auto` says
    /// so in one line and `on` stops with one.
    pub fn prepare(mode: Mode) -> Result<Sandbox> {
        let on = match mode {
            Mode::Off => false,
            Mode::Auto | Mode::On => match probe() {
                Ok(()) => true,
                Err(why) => refused(mode, &why)?,
            },
        };
        Ok(Sandbox {
            on,
            #[cfg(feature = "sandbox-test")]
            violate: std::env::var("FORKECHO_TEST_SANDBOX_VIOLATE")
                .ok()
                .and_then(|a| a.parse().ok()),
        })
    }

    /// In the child, before the connection is touched. A child that cannot
    /// install the filter it should have never serves: it logs and exits
    /// with the error status.
    pub fn enter(&self, peer: Option<SocketAddr>) {
        if !self.on {
            return;
        }
        if let Err(e) = install() {
            crate::log!(
                Level::Error,
                "sandbox: cannot install the filter: {}",
                Reason(e)
            );
            crate::sys::exit(End::Error(e).status());
        }
        #[cfg(feature = "sandbox-test")]
        if peer.is_some_and(|p| Some(crate::admission::unmap(p.ip())) == self.violate) {
            use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
            let _ = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            );
        }
        #[cfg(not(feature = "sandbox-test"))]
        let _ = peer;
    }
}

/// `--inetd`: the one process installs the filter itself, just before the
/// session; where that fails `auto` says so and `on` stops.
pub fn enter_inetd(mode: Mode) -> Result<()> {
    match mode {
        Mode::Off => Ok(()),
        Mode::Auto | Mode::On => match install() {
            Ok(()) => Ok(()),
            Err(e) => refused(mode, &Reason(e).to_string()).map(drop),
        },
    }
}

/// The kernel refused the filter: one line, and serve without (`auto`) or
/// stop (`on`).
fn refused(mode: Mode, why: &str) -> Result<bool> {
    if mode == Mode::On {
        return Err(Error::Start(format!(
            "--sandbox on: the kernel refused the seccomp filter: {why}"
        )));
    }
    crate::log!(
        Level::Info,
        "sandbox: the kernel refused the seccomp filter ({why}); serving without it"
    );
    Ok(false)
}

/// Forks a child that sets `PR_SET_NO_NEW_PRIVS` (as the server will) and
/// installs the filter, then exits: 0, or the errno of the call that failed.
/// Exiting also proves that the filter lets `_exit` through.
fn probe() -> core::result::Result<(), String> {
    let child = match crate::sys::fork() {
        Ok(ForkResult::Child) => {
            let r = nix::sys::prctl::set_no_new_privs().and_then(|()| install());
            crate::sys::exit(r.map_or_else(|e| e as i32, |()| 0))
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("cannot fork the probe: {}", Reason(e))),
    };
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
            Ok(WaitStatus::Exited(_, code)) => {
                return Err(Reason(Errno::from_raw(code)).to_string())
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Err(format!("the probe died of {}", sig.as_str()))
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Reason(e).to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program as the kernel would on (arch, nr, args[0], args[1]):
    /// the loads and jumps it uses, nothing else.
    fn run(arch: u32, nr: c_long, a0: u32, a1: u32) -> u32 {
        steps(arch, nr, a0, a1).0
    }

    /// The verdict and how many instructions gave it.
    fn steps(arch: u32, nr: c_long, a0: u32, a1: u32) -> (u32, usize) {
        let mut pc = 0;
        let mut acc = 0u32;
        for n in 1.. {
            let f = FILTER[pc];
            let next = |taken: bool| pc + 1 + if taken { f.jt } else { f.jf } as usize;
            pc = match f.code {
                LD => {
                    acc = match f.k {
                        NR => nr as u32,
                        ARCH => arch,
                        ARG0 => a0,
                        ARG1 => a1,
                        k => panic!("load of offset {k}"),
                    };
                    pc + 1
                }
                JEQ => next(acc == f.k),
                JGE => next(acc >= f.k),
                JA => pc + 1 + f.k as usize,
                RET => return (f.k, n),
                c => panic!("opcode {c:#x}"),
            };
        }
        unreachable!()
    }

    #[test]
    fn the_program_allows_the_list_and_kills_the_rest() {
        let (allow, kill) = (libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_KILL_PROCESS);
        for &nr in COMMON.iter().chain(arch::EXTRA.iter()) {
            assert_eq!(run(arch::AUDIT, nr, 0, 0), allow, "call {nr}");
            assert_eq!(
                run(arch::AUDIT ^ 1, nr, 0, 0),
                kill,
                "call {nr}, other arch"
            );
        }
        for nr in [
            libc::SYS_getppid,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_kill,
        ] {
            assert_eq!(run(arch::AUDIT, nr, 0, 0), kill, "call {nr}");
        }
        let socket = |domain, ty| run(arch::AUDIT, libc::SYS_socket, domain, ty);
        assert_eq!(socket(SOCKET_DOMAIN, SOCKET_TYPE), allow);
        assert_eq!(socket(libc::AF_INET as u32, SOCKET_TYPE), kill);
        assert_eq!(socket(SOCKET_DOMAIN, libc::SOCK_STREAM as u32), kill);
        if let Some(bit) = arch::X32_BIT {
            assert_eq!(run(arch::AUDIT, libc::SYS_read | bit as c_long, 0, 0), kill);
        }
    }

    /// The first instruction must load something the kernel's cache builder
    /// cannot evaluate (see `build`).
    #[test]
    fn the_program_starts_with_a_load_the_cache_builder_gives_up_on() {
        assert_eq!((FILTER[0].code, FILTER[0].k), (LD, ARG0));
    }

    /// Every number up to well past the last call: exactly the list (and
    /// socket, by its arguments) passes.
    #[test]
    fn the_search_kills_every_number_not_listed() {
        let listed: Vec<c_long> = COMMON.iter().chain(arch::EXTRA.iter()).copied().collect();
        for nr in 0..1024 {
            let want = match listed.contains(&nr) {
                true => libc::SECCOMP_RET_ALLOW,
                false => libc::SECCOMP_RET_KILL_PROCESS,
            };
            if nr != libc::SYS_socket {
                let (got, n) = steps(arch::AUDIT, nr, 0, 0);
                assert_eq!(got, want, "call {nr}");
                // A search, not a list: 5 to reach it, 5 levels, a leaf of 3
                // and its jump, the return.
                assert!(n <= 15, "call {nr} took {n} instructions");
            }
        }
    }

    #[test]
    fn no_call_is_listed_twice() {
        let mut all: Vec<c_long> = COMMON.iter().chain(arch::EXTRA.iter()).copied().collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "{all:?}");
        assert!(!all.contains(&libc::SYS_socket), "socket has its own check");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse(), Ok(Mode::Auto));
        assert_eq!("on".parse(), Ok(Mode::On));
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert_eq!("yes".parse::<Mode>(), Err(()));
    }
}
