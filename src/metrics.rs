//! `--metrics-file`: the parent's counters in the Prometheus text exposition
//! format, for node_exporter's textfile collector. A file rather than a port:
//! boards are scraped through node_exporter already, and a second listener
//! would be one more thing to firewall.
//!
//! Atomic: the text goes to `.NAME.tmp` beside the file, then `rename(2)`
//! puts it in place, so a reader sees the old text or the new, never half of
//! one. Both names are used relative to the directory opened at start-up,
//! before `--chroot` and the privilege drop, so the path means what it meant
//! on the command line; the writes themselves run as the dropped user.
//!
//! Never in the loop's way: formatted into fixed storage, opened
//! non-blocking, written with one call. A failure is counted (and exported
//! by the next write that works), logged at most once per `LOG_INTERVAL`,
//! and the loop goes on. A directory that cannot be opened (missing at
//! start-up: a board's textfile directory may be on a partition mounted
//! later; or removed since) is looked up by path again at each write — then
//! relative to the root the server has by then, inside any `--chroot`.

use crate::error::Reason;
use crate::limits::{METRICS_NAME_MAX, METRICS_TEXT_MAX};
use crate::log::{Level, LogLimit};
use crate::stats::Status;
use core::fmt::{self, Write};
use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// What `--metrics-file` and `--metrics-interval` ask for.
#[derive(Debug)]
pub struct Spec {
    /// The path as given, for log lines.
    pub path: String,
    // C strings made once: nix passes them to the kernel as they are,
    // without a copy per call.
    dir: CString,
    name: CString,
    tmp: CString,
    pub interval: Duration,
}

impl Spec {
    /// Splits `path` into directory and file name; `None` when it names no
    /// file, has a NUL, or a name too long for the temporary name.
    pub fn parse(path: &str, interval: Duration) -> Option<Spec> {
        // Bytes, not `rsplit_once` and `CString::new(&str)`: each of those
        // costs hundreds of bytes on a board.
        let (dir, name) = match path.bytes().rposition(|b| b == b'/') {
            Some(0) => ("/", &path[1..]),
            Some(cut) => (&path[..cut], &path[cut + 1..]),
            None => (".", path),
        };
        let bad = name.is_empty() || name == "." || name == "..";
        if bad || name.len() > METRICS_NAME_MAX || path.bytes().any(|b| b == 0) {
            return None;
        }
        Some(Spec {
            path: path.into(),
            dir: c_string(&[dir]),
            name: c_string(&[name]),
            tmp: c_string(&[".", name, ".tmp"]),
            interval,
        })
    }
}

/// The parts, joined, as a C string; the caller has ruled out NULs.
fn c_string(parts: &[&str]) -> CString {
    CString::from_vec_with_nul([parts.concat().as_bytes(), b"\0"].concat()).unwrap_or_default()
}

/// The exporter; inert without `--metrics-file`.
pub struct Metrics(Option<Exporter>);

struct Exporter {
    spec: Spec,
    /// The directory, opened with `O_PATH`: enough for `openat`/`renameat`.
    dir: Option<OwnedFd>,
    /// The next periodic write.
    next: Instant,
    started: u64,
    /// Writes that failed, exported as `forkecho_metrics_write_failed_total`.
    failed: u64,
    log: LogLimit,
}

/// Why a write failed: the step and the reason.
struct Failure(&'static str, Reason);

impl Metrics {
    pub fn off() -> Metrics {
        Metrics(None)
    }

    /// Opens the directory now, before any chroot; if that fails, the first
    /// write says so and later writes try again.
    pub fn open(spec: Spec, now: Instant) -> Metrics {
        // nix's clock_gettime rather than SystemTime, whose error path costs
        // 400 bytes on a board.
        let clock = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME);
        let started = clock.map_or(0, |t| t.tv_sec() as u64);
        Metrics(Some(Exporter {
            dir: open_dir(&spec.dir).ok(),
            next: now,
            started,
            failed: 0,
            log: LogLimit::default(),
            spec,
        }))
    }

    /// When the loop must wake for the next periodic write.
    pub fn next_due(&self) -> Option<Instant> {
        self.0.as_ref().map(|e| e.next)
    }

    pub fn due(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|t| t <= now)
    }

    /// Writes the file; on failure counts and (rate-limited) logs.
    pub fn write(&mut self, status: &Status<'_>, now: Instant) {
        let Some(e) = &mut self.0 else { return };
        e.next = now + e.spec.interval;
        let mut text = heapless::String::<METRICS_TEXT_MAX>::new();
        let done = match render(&mut text, status, e.started, e.failed) {
            Ok(()) => e.replace(text.as_bytes()),
            // Cannot happen within the capacity tested below; never write
            // a cut text.
            Err(fmt::Error) => Err(Failure("format", Reason(Errno::E2BIG))),
        };
        if let Err(Failure(step, why)) = done {
            e.failed += 1;
            if let Some(held) = e.log.allow(now) {
                crate::log!(
                    Level::Error,
                    "--metrics-file {}: cannot {step}: {why} ({held} similar messages suppressed)",
                    e.spec.path
                );
            }
        }
    }

    /// In a child, where `close_range` is missing: the directory's number.
    pub fn close_in_child(&self) {
        if let Some(fd) = self.0.as_ref().and_then(|e| e.dir.as_ref()) {
            crate::sys::close_raw(fd.as_raw_fd());
        }
    }
}

fn open_dir(dir: &CString) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    fcntl::open(dir.as_c_str(), flags, Mode::empty())
}

impl Exporter {
    /// The temporary file, one write, close, rename over the file. A
    /// temporary file left by a failed step is removed: on a full disk it
    /// holds the space the next try needs.
    fn replace(&mut self, text: &[u8]) -> Result<(), Failure> {
        let dir: &OwnedFd = match &mut self.dir {
            Some(dir) => dir,
            slot => {
                let fd = open_dir(&self.spec.dir);
                slot.insert(fd.map_err(|e| Failure("open its directory", Reason(e)))?)
            }
        };
        let tmp = self.spec.tmp.as_c_str();
        // O_NONBLOCK: a FIFO planted under the name must not hang the loop;
        // O_NOFOLLOW: nor a symlink redirect the write.
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC
            | OFlag::O_NOFOLLOW;
        let mode = Mode::from_bits_truncate(0o644);
        let file = match fcntl::openat(dir, tmp, flags, mode) {
            Ok(f) => f,
            Err(e) => {
                // A directory removed since it was opened: look it up again.
                if e == Errno::ENOENT {
                    self.dir = None;
                }
                return Err(Failure("create the temporary file", Reason(e)));
            }
        };
        let written = fill(file, text).and_then(|()| {
            fcntl::renameat(dir, tmp, dir, self.spec.name.as_c_str())
                .map_err(|e| Failure("rename the temporary file", Reason(e)))
        });
        if written.is_err() {
            let _ = nix::unistd::unlinkat(dir, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        written
    }
}

/// Mode 0644 whatever the umask (a unit's `UMask=0077` would hide the file
/// from node_exporter, which runs as another user), one write, a checked
/// close (where a network file system reports a full disk).
fn fill(file: OwnedFd, text: &[u8]) -> Result<(), Failure> {
    nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(0o644))
        .map_err(|e| Failure("set the mode of the temporary file", Reason(e)))?;
    match nix::unistd::write(&file, text) {
        Ok(n) if n == text.len() => {}
        // A short write is a full disk that has not said so yet.
        Ok(_) => return Err(Failure("write", Reason(Errno::ENOSPC))),
        Err(e) => return Err(Failure("write", Reason(e))),
    }
    nix::unistd::close(file).map_err(|e| Failure("close the temporary file", Reason(e)))
}

/// Every family in the file, in its order: name, type, help.
const FAMILIES: [(&str, &str, &str); 15] = [
    ("info", "gauge", "The running build."),
    (
        "start_time_seconds",
        "gauge",
        "Start of the server in seconds since the Unix epoch.",
    ),
    (
        "sessions_active",
        "gauge",
        "Children serving a connection now.",
    ),
    (
        "accepted_total",
        "counter",
        "Connections accepted and handed to a child.",
    ),
    (
        "sessions_ended_total",
        "counter",
        "Children reaped, by how the session ended.",
    ),
    (
        "refused_total",
        "counter",
        "Connections refused without a fork, by reason.",
    ),
    (
        "fork_failed_total",
        "counter",
        "Failed forks (the connection was closed).",
    ),
    (
        "dropped_no_fd_total",
        "counter",
        "Connections closed at once for lack of descriptors.",
    ),
    (
        "accept_retried_total",
        "counter",
        "Accept errors retried at once.",
    ),
    (
        "accept_paused_total",
        "counter",
        "Accept errors that paused the listeners.",
    ),
    (
        "cap_reached_total",
        "counter",
        "Times the loop reached --max-children.",
    ),
    (
        "evicted_total",
        "counter",
        "Idle sessions ended to make room at --max-children.",
    ),
    (
        "sandbox_killed_total",
        "counter",
        "Children killed by the seccomp filter (also in killed).",
    ),
    (
        "log_dropped_total",
        "counter",
        "Log lines no process could write.",
    ),
    (
        "metrics_write_failed_total",
        "counter",
        "Writes of this file that failed.",
    ),
];

/// The text: a family per counter of the status line, refusals and session
/// ends as labelled series, the build as `forkecho_info`. The write-failure
/// counter comes last, so a reader can tell a whole file. A table and two
/// `write!`s: on a board every formatting call site costs bytes.
fn render(w: &mut impl Write, s: &Status<'_>, started: u64, failed: u64) -> fmt::Result {
    let t = s.stats;
    let info = concat!(
        "version=\"",
        env!("CARGO_PKG_VERSION"),
        "\",target=\"",
        env!("FORKECHO_TARGET"),
        "\""
    );
    let series: [(&str, &str, u64); 23] = [
        ("info", info, 1),
        ("start_time_seconds", "", started),
        ("sessions_active", "", s.active as u64),
        ("accepted_total", "", t.accepted),
        ("sessions_ended_total", "cause=\"ok\"", t.exited_ok),
        ("sessions_ended_total", "cause=\"error\"", t.exited_error),
        (
            "sessions_ended_total",
            "cause=\"idle_timeout\"",
            t.idle_timeout,
        ),
        (
            "sessions_ended_total",
            "cause=\"max_session\"",
            t.lifetime_end,
        ),
        ("sessions_ended_total", "cause=\"killed\"", t.killed),
        ("sessions_ended_total", "cause=\"stopped\"", t.stopped),
        ("refused_total", "reason=\"deny\"", t.refused_deny),
        (
            "refused_total",
            "reason=\"global_rate\"",
            t.refused_global_rate,
        ),
        ("refused_total", "reason=\"rate\"", t.refused_rate),
        ("refused_total", "reason=\"per_ip\"", t.refused_per_ip),
        ("fork_failed_total", "", t.fork_failed),
        ("dropped_no_fd_total", "", t.dropped_no_fd),
        ("accept_retried_total", "", t.accept_retried),
        ("accept_paused_total", "", t.accept_paused),
        ("cap_reached_total", "", t.cap_reached),
        ("evicted_total", "", t.evicted),
        ("sandbox_killed_total", "", t.killed_sandbox),
        ("log_dropped_total", "", s.log_dropped.into()),
        ("metrics_write_failed_total", "", failed),
    ];
    let mut families = FAMILIES.iter();
    let mut family = "";
    for (name, labels, v) in series {
        if name != family {
            // The series follow the families' order; a slip fails the write
            // (and the unit test) instead of mislabelling.
            let next = families.next().filter(|f| f.0 == name);
            let (_, kind, help) = next.ok_or(fmt::Error)?;
            family = name;
            write!(
                w,
                "# HELP forkecho_{name} {help}\n# TYPE forkecho_{name} {kind}\n"
            )?;
        }
        let (open, close) = if labels.is_empty() {
            ("", "")
        } else {
            ("{", "}")
        };
        writeln!(w, "forkecho_{name}{open}{labels}{close} {v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn paths_split_into_directory_and_name() {
        fn s(p: &str) -> Option<(String, String, String)> {
            let s = Spec::parse(p, Duration::from_secs(1))?;
            let text = |c: CString| c.into_string().unwrap();
            Some((text(s.dir), text(s.name), text(s.tmp)))
        }
        let t = |d: &str, n: &str, m: &str| Some((d.into(), n.into(), m.into()));
        assert_eq!(s("/var/lib/x.prom"), t("/var/lib", "x.prom", ".x.prom.tmp"));
        assert_eq!(s("/x.prom"), t("/", "x.prom", ".x.prom.tmp"));
        assert_eq!(s("x.prom"), t(".", "x.prom", ".x.prom.tmp"));
        for bad in ["", "/", "dir/", "dir/..", "."] {
            assert!(s(bad).is_none(), "{bad:?}");
        }
        assert!(s(&"n".repeat(METRICS_NAME_MAX)).is_some());
        assert!(s(&"n".repeat(METRICS_NAME_MAX + 1)).is_none());
        assert!(s("/d/x\0y").is_none());
    }

    #[test]
    fn every_counter_at_its_maximum_fits_the_buffer() {
        let m = u64::MAX;
        let stats = Stats {
            accepted: m,
            exited_ok: m,
            exited_error: m,
            idle_timeout: m,
            lifetime_end: m,
            killed: m,
            cap_reached: m,
            refused_deny: m,
            refused_global_rate: m,
            refused_rate: m,
            refused_per_ip: m,
            fork_failed: m,
            dropped_no_fd: m,
            accept_retried: m,
            accept_paused: m,
            stopped: m,
            evicted: m,
            killed_sandbox: m,
            udp: Default::default(),
        };
        let status = Status {
            active: usize::MAX,
            stats: &stats,
            log_dropped: u32::MAX,
        };
        let mut text = heapless::String::<METRICS_TEXT_MAX>::new();
        render(&mut text, &status, m, m).unwrap();
        // Room for the longest target triple too (this one may be short).
        assert!(text.len() + 64 < METRICS_TEXT_MAX, "{}", text.len());
        assert!(text.ends_with("forkecho_metrics_write_failed_total 18446744073709551615\n"));
    }
}
