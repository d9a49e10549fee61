//! The server's process tree and descriptors, through /proc.

use std::time::{Duration, Instant};

/// (state, ppid, CPU ticks used) from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f[0].chars().next()?;
    let ppid = f[1].parse().ok()?;
    // utime + stime, fields 14 and 15 of the whole line (11, 12 here).
    let cpu = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    Some((state, ppid, cpu))
}

/// Waits until `pid` is gone from /proc (exited *and* reaped).
pub fn wait_reaped(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while proc_stat(pid).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

pub fn children_of(pid: i32) -> (Vec<i32>, Vec<i32>) {
    let mut live = vec![];
    let mut zombies = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, ppid, _)) = proc_stat(p) {
            if ppid == pid {
                if state == 'Z' {
                    zombies.push(p)
                } else {
                    live.push(p)
                }
            }
        }
    }
    (live, zombies)
}

/// (fd number, link target) for each open descriptor of `pid`.
pub fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let (Ok(n), Ok(t)) = (
                e.file_name().to_string_lossy().parse(),
                std::fs::read_link(e.path()),
            ) {
                v.push((n, t.to_string_lossy().into_owned()));
            }
        }
    }
    v.sort();
    v
}

/// CPU time (ticks) used by `pid` so far.
pub fn cpu_ticks(pid: i32) -> u64 {
    proc_stat(pid).map(|s| s.2).unwrap_or(0)
}

/// One field of /proc/PID/status ("Uid", "NoNewPrivs", ...), whitespace
/// normalised.
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The port of a TCP socket `pid` holds in the listening state, found by
/// the socket's inode in /proc/net/tcp{,6}: for a server started on port 0
/// whose "listening on" line goes elsewhere (syslog, -q). Unlike a port
/// probed free beforehand, nobody else can hold it.
pub fn listening_port(pid: i32) -> Option<u16> {
    let inodes: Vec<String> = fds(pid)
        .into_iter()
        .filter_map(|(_, t)| Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .collect();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                return u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok();
            }
        }
    }
    None
}
