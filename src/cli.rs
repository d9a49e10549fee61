//! Command line: parsing with `argh`, then validation into a [`Config`].
//!
//! Every value is checked here, before anything is bound or forked, so a bad
//! command line costs one clear line on stderr and exit status 2.

use crate::error::{Error, Result};
use argh::FromArgs;
use std::net::SocketAddr;
use std::time::Duration;

/// Most listening addresses served by one process.
pub const MAX_LISTENERS: usize = 16;
/// Size of the child table, fixed at compile time; `--max-children` may not
/// exceed it. 1024 live processes is far past what a small board can hold.
pub const MAX_CHILDREN: usize = 1024;
pub const DEFAULT_PORT: u16 = 7007;
const BUFFER_MIN: usize = 512;
const BUFFER_MAX: usize = 1 << 20;

/// forkecho: a fork-per-connection TCP echo server (RFC 862).
#[derive(FromArgs, Debug)]
struct Args {
    /// address to listen on, ADDR:PORT (IPv4 or [IPv6]; port 0 picks a free
    /// one); repeatable. Default: [::]:7007 dual-stack, or 0.0.0.0:7007
    /// without IPv6
    #[argh(option)]
    listen: Vec<String>,

    /// most connections served at once, 1..=1024 (default 64); beyond it new
    /// clients wait in the kernel backlog
    #[argh(option, default = "64")]
    max_children: u32,

    /// listen(2) backlog, 1..=65535 (default 128)
    #[argh(option, default = "128")]
    backlog: u32,

    /// echo buffer per connection in bytes, 512..=1048576 (default 65536);
    /// touched only by copying, so an idle child does not pay for it
    #[argh(option, default = "65536")]
    buffer_size: u32,

    /// how a child echoes: auto (splice until the session has echoed 64 KiB,
    /// then copy), splice (zero-copy through a pipe throughout),
    /// copy (read/write through the buffer). splice falls back to copy where
    /// the kernel refuses it. Default: auto
    #[argh(option, default = "String::from(\"auto\")")]
    echo: String,

    /// allow clients in CIDR (10.0.0.0/8, 2001:db8::/32, 192.0.2.7);
    /// repeatable. --allow and --deny rules are checked in the order given,
    /// the first match decides; if none matches the client is allowed,
    /// unless some --allow was given
    #[argh(option)]
    allow: Vec<String>,

    /// refuse clients in CIDR, closed without a fork; repeatable (see
    /// --allow)
    #[argh(option)]
    deny: Vec<String>,

    /// most concurrent connections from one address (an IPv4 address, or
    /// an IPv6 /64, see --ipv6-prefix), 0 for no limit (default 0)
    #[argh(option, default = "0")]
    max_per_ip: u32,

    /// IPv6 prefix length that counts as one address for --max-per-ip and
    /// --rate, 1..=128 (default 64)
    #[argh(option, default = "64")]
    ipv6_prefix: u8,

    /// at most N new connections per SECS seconds from one address, as
    /// N/SECS (e.g. 20/60); over it a client is refused until its window
    /// passes. Default: no limit
    #[argh(option)]
    rate: Option<String>,

    /// at most N new connections per SECS seconds in all, as N/SECS.
    /// Default: no limit
    #[argh(option)]
    global_rate: Option<String>,

    /// text sent (followed by CRLF) to a client refused by --max-per-ip,
    /// --rate or --global-rate before closing, up to 200 bytes. Default:
    /// close without a word
    #[argh(option)]
    reject_message: Option<String>,

    /// end a session after this many seconds without a byte received or
    /// sent, 0..=86400, 0 for never (default 60)
    #[argh(option, default = "60")]
    idle_timeout: u32,

    /// end a session this many seconds after it began, 0..=86400, 0 for
    /// never (default 900)
    #[argh(option, default = "900")]
    max_session: u32,

    /// seconds to wait for children after SIGTERM/SIGINT before SIGKILL,
    /// 0..=3600 (default 5)
    #[argh(option, default = "5")]
    shutdown_timeout: u32,

    /// serve the one connection on descriptor 0 and exit, without forking
    /// or listening (inetd, xinetd, systemd Accept=yes)
    #[argh(switch)]
    inetd: bool,

    /// when ready, write the bound port and a newline to descriptor N and
    /// close it (s6 notification-fd)
    #[argh(option)]
    ready_fd: Option<i32>,

    /// after binding, switch to this user (name or uid); its group unless
    /// --group is given
    #[argh(option)]
    user: Option<String>,

    /// after binding, switch to this group (name or gid)
    #[argh(option)]
    group: Option<String>,

    /// after binding, chroot to DIR (an empty directory will do)
    #[argh(option)]
    chroot: Option<String>,

    /// log to the local syslog socket (facility daemon) instead of stderr
    #[argh(switch)]
    syslog: bool,

    /// the syslog socket for --syslog (default /dev/log)
    #[argh(option, default = "String::from(\"/dev/log\")")]
    syslog_socket: String,

    /// log every connection
    #[argh(switch, short = 'v')]
    verbose: bool,

    /// log errors only
    #[argh(switch, short = 'q')]
    quiet: bool,

    /// print the version and target, then exit
    #[argh(switch)]
    version: bool,
}

/// What to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    /// `IPV6_V6ONLY` for an IPv6 socket: off for the dual-stack default and
    /// for a lone `[::]:P`; on when an IPv4 address shares the port, so both
    /// can bind.
    pub v6only: bool,
}

#[derive(Debug)]
pub struct Config {
    /// Empty means the default (dual-stack on port 7007, IPv4 fallback).
    pub listen: heapless::Vec<ListenSpec, MAX_LISTENERS>,
    pub max_children: usize,
    pub backlog: i32,
    pub buffer_size: usize,
    pub shutdown_timeout_secs: u32,
    pub echo_mode: crate::session::Mode,
    pub limits: crate::session::Limits,
    pub policy: crate::admission::Policy,
    /// The refusal text with its CRLF; empty for none.
    pub reject_message: Vec<u8>,
    pub inetd: bool,
    pub ready_fd: Option<i32>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub chroot: Option<String>,
    /// The syslog socket path with `--syslog`.
    pub syslog: Option<String>,
    pub level: crate::log::Level,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    /// `--help` or `--version`: print this on stdout, exit 0.
    Print(String),
}

pub fn version_line() -> String {
    format!(
        "forkecho {} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("FORKECHO_TARGET")
    )
}

/// Parses `argv` (without the program name).
pub fn parse(args_in: &[&str]) -> Result<Command> {
    let args = match Args::from_args(&["forkecho"], args_in) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => Ok(Command::Print(early.output)),
                // argh's message is the first line; the rest is a hint.
                Err(()) => Err(usage(
                    early.output.lines().next().unwrap_or("bad arguments"),
                )),
            };
        }
    };
    if args.version {
        return Ok(Command::Print(version_line() + "\n"));
    }
    if args.verbose && args.quiet {
        return Err(usage("--verbose and --quiet exclude each other"));
    }
    let max_children = ranged("--max-children", args.max_children, 1, MAX_CHILDREN as u32)?;
    let backlog = ranged("--backlog", args.backlog, 1, 65535)?;
    let buffer_size = ranged(
        "--buffer-size",
        args.buffer_size,
        BUFFER_MIN as u32,
        BUFFER_MAX as u32,
    )?;
    let shutdown_timeout = ranged("--shutdown-timeout", args.shutdown_timeout, 0, 3600)?;
    let secs = |name, v| -> Result<Option<Duration>> {
        let v = ranged(name, v, 0, 86400)?;
        Ok((v > 0).then(|| Duration::from_secs(v.into())))
    };
    let limits = crate::session::Limits {
        idle: secs("--idle-timeout", args.idle_timeout)?,
        lifetime: secs("--max-session", args.max_session)?,
    };

    let echo_mode = match args.echo.as_str() {
        "auto" => crate::session::Mode::Auto,
        "splice" => crate::session::Mode::Splice,
        "copy" => crate::session::Mode::Copy,
        other => {
            return Err(usage(&format!(
                "--echo {other}: must be auto, splice or copy"
            )))
        }
    };

    let mut listen = heapless::Vec::new();
    for text in &args.listen {
        let addr = parse_addr(text)?;
        if listen.iter().any(|l: &ListenSpec| l.addr == addr) {
            return Err(usage(&format!("--listen {text}: given twice")));
        }
        listen
            .push(ListenSpec {
                addr,
                v6only: false,
            })
            .map_err(|_| usage(&format!("--listen: at most {MAX_LISTENERS} addresses")))?;
    }
    // An IPv6 wildcard shares its port with IPv4 unless told not to; when the
    // user also names an IPv4 address on that port, make the IPv6 socket
    // v6-only so both binds succeed.
    let v4_ports: heapless::Vec<u16, MAX_LISTENERS> = listen
        .iter()
        .filter(|l| l.addr.is_ipv4())
        .map(|l| l.addr.port())
        .collect();
    for l in listen.iter_mut() {
        l.v6only = l.addr.is_ipv6() && l.addr.port() != 0 && v4_ports.contains(&l.addr.port());
    }

    let mut policy = crate::admission::Policy {
        max_per_ip: args.max_per_ip,
        ipv6_prefix: args.ipv6_prefix,
        ..Default::default()
    };
    if !(1..=128).contains(&args.ipv6_prefix) {
        return Err(usage(&format!(
            "--ipv6-prefix {}: must be in 1..=128",
            args.ipv6_prefix
        )));
    }
    let rules = rules_in_order(args_in);
    // argh's own lists are the reference: the scan must have found them all.
    if rules.len() != args.allow.len() + args.deny.len() {
        return Err(usage("--allow/--deny: cannot tell the order of the rules"));
    }
    for (allow, text) in rules {
        let name = if allow { "--allow" } else { "--deny" };
        let cidr = crate::admission::Cidr::parse(text).ok_or_else(|| {
            usage(&format!(
                "{name} {text}: expected ADDR or ADDR/LEN with no host bits set"
            ))
        })?;
        policy
            .rules
            .push(crate::admission::Rule { allow, cidr })
            .map_err(|_| {
                usage(&format!(
                    "--allow/--deny: at most {} rules",
                    crate::admission::MAX_RULES
                ))
            })?;
    }
    for (name, text, slot) in [
        ("--rate", &args.rate, &mut policy.rate),
        ("--global-rate", &args.global_rate, &mut policy.global_rate),
    ] {
        if let Some(text) = text {
            *slot = Some(crate::admission::Rate::parse(text).ok_or_else(|| {
                usage(&format!(
                    "{name} {text}: expected N/SECS with N in 1..=1000000, SECS in 1..=86400"
                ))
            })?);
        }
    }
    let reject_message = match &args.reject_message {
        None => Vec::new(),
        Some(m) if m.is_empty() || m.len() > 200 || m.contains(['\r', '\n']) => {
            return Err(usage(
                "--reject-message: 1 to 200 bytes on one line (CRLF is added)",
            ))
        }
        Some(m) => [m.as_bytes(), b"\r\n"].concat(),
    };

    if args.inetd {
        let stateful = [
            ("--listen", !args.listen.is_empty()),
            ("--max-per-ip", args.max_per_ip > 0),
            ("--rate", args.rate.is_some()),
            ("--global-rate", args.global_rate.is_some()),
            ("--ready-fd", args.ready_fd.is_some()),
        ];
        if let Some((name, _)) = stateful.iter().find(|o| o.1) {
            return Err(usage(&format!(
                "--inetd serves one connection: {name} needs the listening server"
            )));
        }
    }
    if let Some(fd) = args.ready_fd {
        if !(1..=65535).contains(&fd) || fd == 2 {
            return Err(usage(&format!(
                "--ready-fd {fd}: must be an open descriptor other than 0 and 2"
            )));
        }
    }

    let level = if args.verbose {
        crate::log::Level::Debug
    } else if args.quiet {
        crate::log::Level::Error
    } else {
        crate::log::Level::Info
    };
    Ok(Command::Run(Box::new(Config {
        listen,
        max_children: max_children as usize,
        backlog: backlog as i32,
        buffer_size: buffer_size as usize,
        shutdown_timeout_secs: shutdown_timeout,
        echo_mode,
        limits,
        policy,
        reject_message,
        inetd: args.inetd,
        ready_fd: args.ready_fd,
        user: args.user,
        group: args.group,
        chroot: args.chroot,
        syslog: args.syslog.then_some(args.syslog_socket),
        level,
    })))
}

/// Options that take no value. Every other option takes one, which is how
/// the order of the rules is recovered without reading a value (say,
/// `--reject-message --deny`) as an option. A unit test checks this list
/// against `--help`.
const SWITCHES: [&str; 8] = [
    "--verbose",
    "-v",
    "--quiet",
    "-q",
    "--version",
    "--help",
    "--inetd",
    "--syslog",
];

/// `--allow` and `--deny` in command-line order (argh keeps one list per
/// option, which loses the order between them). Runs after argh accepted
/// the arguments, so every valued option has its value.
fn rules_in_order<'a>(args: &[&'a str]) -> Vec<(bool, &'a str)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == "--" {
            break;
        }
        if a.starts_with('-') && !SWITCHES.contains(&a) {
            if a == "--allow" || a == "--deny" {
                if let Some(v) = args.get(i + 1) {
                    out.push((a == "--allow", *v));
                }
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

fn usage(msg: &str) -> Error {
    Error::Usage(format!("{msg} (see --help)"))
}

fn ranged(name: &str, v: u32, lo: u32, hi: u32) -> Result<u32> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(usage(&format!("{name} {v}: must be in {lo}..={hi}")))
    }
}

/// `ADDR:PORT` with a numeric address: `127.0.0.1:7`, `[::1]:7`, `[::]:0`.
/// Names are refused on purpose: resolving them needs a resolver that may not
/// be configured on a board at boot, and binding to a name is ambiguous.
fn parse_addr(text: &str) -> Result<SocketAddr> {
    text.parse::<SocketAddr>().map_err(|_| {
        usage(&format!(
            "--listen {text}: expected ADDR:PORT with a numeric IPv4 or [IPv6] address"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Command::Run(c)) => *c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[]);
        assert!(c.listen.is_empty());
        assert_eq!(c.max_children, 64);
        assert_eq!(c.backlog, 128);
        assert_eq!(c.buffer_size, 65536);
        assert_eq!(c.shutdown_timeout_secs, 5);
        assert_eq!(c.echo_mode, crate::session::Mode::Auto);
        assert_eq!(
            run(&["--echo", "splice"]).echo_mode,
            crate::session::Mode::Splice
        );
        assert_eq!(
            run(&["--echo", "copy"]).echo_mode,
            crate::session::Mode::Copy
        );
        assert_eq!(c.level, crate::log::Level::Info);
        assert_eq!(c.limits.idle, Some(Duration::from_secs(60)));
        assert_eq!(c.limits.lifetime, Some(Duration::from_secs(900)));
        let c = run(&["--idle-timeout", "0", "--max-session", "86400"]);
        assert_eq!(c.limits.idle, None);
        assert_eq!(c.limits.lifetime, Some(Duration::from_secs(86400)));
        assert!(err(&["--idle-timeout", "86401"]).contains("--idle-timeout 86401"));
    }

    #[test]
    fn repeated_listen_and_v6only_pairing() {
        let c = run(&[
            "--listen",
            "0.0.0.0:7",
            "--listen",
            "[::]:7",
            "--listen",
            "[::1]:9",
        ]);
        assert_eq!(c.listen.len(), 3);
        assert!(!c.listen[0].v6only);
        assert!(c.listen[1].v6only, "[::]:7 shares port 7 with IPv4");
        assert!(!c.listen[2].v6only);
    }

    #[test]
    fn range_edges() {
        assert_eq!(run(&["--max-children", "1"]).max_children, 1);
        assert_eq!(run(&["--max-children", "1024"]).max_children, 1024);
        assert!(err(&["--max-children", "0"]).contains("--max-children 0: must be in 1..=1024"));
        assert!(err(&["--max-children", "1025"]).contains("1..=1024"));
        assert_eq!(run(&["--buffer-size", "512"]).buffer_size, 512);
        assert!(err(&["--buffer-size", "511"]).contains("--buffer-size"));
        assert!(err(&["--buffer-size", "1048577"]).contains("--buffer-size"));
        assert!(err(&["--backlog", "0"]).contains("--backlog"));
        assert!(err(&["--shutdown-timeout", "3601"]).contains("--shutdown-timeout"));
    }

    #[test]
    fn bad_values_are_one_line() {
        for bad in [
            &["--max-children", "abc"][..],
            &["--listen", "localhost:7"],
            &["--listen", "1.2.3.4"],
            &["--listen", "1.2.3.4:7", "--listen", "1.2.3.4:7"],
            &["--bogus"],
            &["-v", "-q"],
            &["--echo", "zerocopy"],
        ] {
            let e = err(bad);
            assert!(!e.contains('\n'), "{bad:?} gave a multi-line error: {e}");
            assert!(!e.is_empty());
        }
    }

    #[test]
    fn rules_keep_their_order_across_options() {
        let c = run(&[
            "--deny",
            "10.1.0.0/16",
            "--reject-message",
            "--allow",
            "--allow",
            "10.0.0.0/8",
            "--deny",
            "::/0",
        ]);
        let r = &c.policy.rules;
        assert_eq!(r.len(), 3);
        assert!(!r[0].allow && r[1].allow && !r[2].allow);
        assert_eq!(c.reject_message, b"--allow\r\n");
        assert!(!c.policy.allows("10.1.0.1".parse().unwrap()));
        assert!(c.policy.allows("10.9.0.1".parse().unwrap()));
        assert!(err(&["--allow", "10.1.0.0/8"]).contains("--allow 10.1.0.0/8"));
        assert!(err(&["--rate", "5"]).contains("--rate 5: expected N/SECS"));
        assert!(err(&["--ipv6-prefix", "0"]).contains("--ipv6-prefix"));
        assert!(err(&["--reject-message", ""]).contains("--reject-message"));
        let c = run(&[
            "--rate",
            "3/60",
            "--global-rate",
            "100/1",
            "--max-per-ip",
            "2",
        ]);
        assert_eq!(c.policy.rate.unwrap().n, 3);
        assert_eq!(c.policy.global_rate.unwrap().n, 100);
        assert_eq!(c.policy.max_per_ip, 2);
    }

    #[test]
    fn switch_list_matches_help() {
        let Ok(Command::Print(help)) = parse(&["--help"]) else {
            panic!()
        };
        // The usage line: `[--name <name>]` takes a value, `[--name]` not.
        let usage = help.lines().next().unwrap();
        let mut seen = 0;
        for part in usage.split('[').skip(1) {
            let opt = part.split([' ', ']']).next().unwrap();
            let valued = part.starts_with(&format!("{opt} <"));
            assert_eq!(!valued, SWITCHES.contains(&opt), "{opt}");
            seen += 1;
        }
        assert!(seen > 10, "{usage}");
    }

    #[test]
    fn version_and_help_print() {
        match parse(&["--version"]) {
            Ok(Command::Print(s)) => assert!(s.starts_with("forkecho 0.")),
            other => panic!("{other:?}"),
        }
        match parse(&["--help"]) {
            Ok(Command::Print(s)) => assert!(s.contains("--max-children")),
            other => panic!("{other:?}"),
        }
    }
}
