//! Command line: a small scan of the words into [`Args`], then validation
//! into a [`Config`].
//!
//! Every value is checked here, before anything is bound or forked, so a bad
//! command line costs one clear line on stderr and exit status 2. This module
//! is a leaf: it builds the domain's types (`ListenSpec`, `Policy`, `Mode`,
//! `Limits`) from text, and no domain module imports it. The ranges it checks
//! come from `limits`, and so do the numbers its messages quote.
//!
//! Hand-written rather than derived (argh): the interface is fixed and flat,
//! and the derived parser with its generated help cost several KB of a
//! board's binary for what one loop over a name table does.

use crate::admission::{Cidr, Policy, Rate, Rule};
use crate::error::{Error, Result};
use crate::limits::{self, MAX_LISTENERS, MAX_RULES, REJECT_MESSAGE_MAX};
use crate::listener::{ListenSpec, Specs};
use crate::session::{Limits, Mode};
use core::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

/// `--help`, as argh printed it, with each run of spaces that ends at the
/// description column written as one tab ([`help`] puts the spaces back):
/// 1.1 KB less of a board's binary. Static text: the unit test
/// `help_quotes_the_ranges_and_defaults_in_limits` keeps its ranges and
/// defaults equal to `limits`.
const HELP: &str = "\
Usage: forkecho [--listen <listen...>] [--max-children <max-children>] [--backlog <backlog>] [--buffer-size <buffer-size>] [--echo <echo>] [--allow <allow...>] [--deny <deny...>] [--max-per-ip <max-per-ip>] [--ipv6-prefix <ipv6-prefix>] [--rate <rate>] [--global-rate <global-rate>] [--reject-message <reject-message>] [--idle-timeout <idle-timeout>] [--max-session <max-session>] [--evict-after <evict-after>] [--shutdown-timeout <shutdown-timeout>] [--sandbox <sandbox>] [--udp <udp...>] [--udp-refuse-ports <udp-refuse-ports>] [--udp-buffer <udp-buffer>] [--inetd] [--ready-fd <ready-fd>] [--user <user>] [--group <group>] [--chroot <chroot>] [--syslog] [--syslog-socket <syslog-socket>] [--metrics-file <metrics-file>] [--metrics-interval <metrics-interval>] [-v] [-q] [--version]

forkecho: a fork-per-connection TCP echo server (RFC 862).

Options:
  --listen\taddress to listen on, ADDR:PORT (IPv4 or [IPv6]; port 0
\tpicks a free one); repeatable. Default: [::]:7007
\tdual-stack, or 0.0.0.0:7007 without IPv6
  --max-children\tmost connections served at once, 1..=1024 (default 64);
\tbeyond it new clients wait in the kernel backlog
  --backlog\tlisten(2) backlog, 1..=65535 (default 128)
  --buffer-size\techo buffer per connection in bytes, 512..=1048576 (default
\t65536); touched only by copying, so an idle child does not
\tpay for it
  --echo\thow a child echoes: auto (splice until the session has
\techoed 64 KiB, then copy), splice (zero-copy through a pipe
\tthroughout), copy (read/write through the buffer). splice
\tfalls back to copy where the kernel refuses it. Default:
\tauto
  --allow\tallow clients in CIDR (10.0.0.0/8, 2001:db8::/32,
\t192.0.2.7); repeatable. --allow and --deny rules are checked
\tin the order given, the first match decides; if none matches
\tthe client is allowed, unless some --allow was given
  --deny\trefuse clients in CIDR, closed without a fork; repeatable
\t(see --allow)
  --max-per-ip\tmost concurrent connections from one address (an IPv4
\taddress, or an IPv6 /64, see --ipv6-prefix), 0 for no limit
\t(default 0)
  --ipv6-prefix\tIPv6 prefix length that counts as one address for
\t--max-per-ip and --rate, 1..=128 (default 64)
  --rate\tat most N new connections per SECS seconds from one address,
\tas N/SECS (e.g. 20/60); over it a client is refused until
\tits window passes. Default: no limit
  --global-rate\tat most N new connections per SECS seconds in all, as
\tN/SECS. Default: no limit
  --reject-message\ttext sent (followed by CRLF) to a client refused by
\t--max-per-ip, --rate or --global-rate before closing, up to
\t200 bytes. Default: close without a word
  --idle-timeout\tend a session after this many seconds without a byte
\treceived or sent, 0..=86400, 0 for never (default 60)
  --max-session\tend a session this many seconds after it began, 0..=86400, 0
\tfor never (default 900)
  --evict-after\tat --max-children, end the session idle longest, if idle
\tthis many seconds or more, to serve a new client (it ends
\tcleanly: FIN after its echo), 0..=86400, 0 for never
\t(default 1)
  --shutdown-timeout
\tseconds to wait for children after SIGTERM/SIGINT before
\tSIGKILL, 0..=3600 (default 5)
  --sandbox\tconfine each child with a seccomp filter that allows only
\tthe calls an echo makes: auto (where the kernel takes one),
\ton (or refuse to start), off. Default: auto
  --udp\talso echo UDP datagrams on ADDR:PORT, in the parent without
\ta fork (same syntax and IPv6 pairing as --listen);
\trepeatable. Default: off
  --udp-refuse-ports
\tUDP source ports never answered, comma-separated, or none
\t(default 7,9,13,17,19,37: the small services, which would
\tanswer back and loop). Source port 0, broadcast/multicast
\tsources and destinations are never answered either
  --udp-buffer\tlongest UDP datagram echoed, 512..=65536 (default 65536,
\twhich holds any IPv4 or IPv6 datagram); longer ones are
\tdropped and counted
  --inetd\tserve the one connection on descriptor 0 and exit, without
\tforking or listening (inetd, xinetd, systemd Accept=yes)
  --ready-fd\twhen ready, write the bound port and a newline to descriptor
\tN and close it (s6 notification-fd)
  --user\tafter binding, switch to this user (name or uid); its group
\tunless --group is given
  --group\tafter binding, switch to this group (name or gid)
  --chroot\tafter binding, chroot to DIR (an empty directory will do)
  --syslog\tlog to the local syslog socket (facility daemon) instead of
\tstderr
  --syslog-socket\tthe syslog socket for --syslog (default /dev/log)
  --metrics-file\twrite the counters to PATH in the Prometheus text format
\t(for node_exporter's textfile collector), atomically through
\t.PATH.tmp: at start, every --metrics-interval, on SIGUSR1
\tand at shutdown
  --metrics-interval
\tseconds between two writes of --metrics-file, 1..=3600
\t(default 15)
  -v, --verbose\tlog every connection
  -q, --quiet\tlog errors only
  --version\tprint the version and target, then exit
  --help\tdisplay usage information
";

/// Where argh's help starts the descriptions.
const HELP_COLUMN: usize = 20;

/// [`HELP`] with its tabs expanded to spaces up to [`HELP_COLUMN`].
fn help() -> String {
    let mut text = String::with_capacity(HELP.len() + 1200);
    let mut col = 0;
    for c in HELP.chars() {
        match c {
            '\t' => {
                text.extend(core::iter::repeat_n(' ', HELP_COLUMN - col));
                col = HELP_COLUMN;
            }
            '\n' => col = 0,
            _ => col += 1,
        }
        if c != '\t' {
            text.push(c);
        }
    }
    text
}

/// The options that take one value and may be given once; `Opt as usize`
/// indexes [`VALUED`] and `Args::values`.
#[derive(Clone, Copy)]
enum Opt {
    MaxChildren,
    Backlog,
    BufferSize,
    Echo,
    MaxPerIp,
    Ipv6Prefix,
    Rate,
    GlobalRate,
    RejectMessage,
    IdleTimeout,
    MaxSession,
    EvictAfter,
    ShutdownTimeout,
    Sandbox,
    UdpRefusePorts,
    UdpBuffer,
    ReadyFd,
    User,
    Group,
    Chroot,
    SyslogSocket,
    MetricsFile,
    MetricsInterval,
}

/// The names of [`Opt`], in its order.
const VALUED: [&str; 23] = [
    "--max-children",
    "--backlog",
    "--buffer-size",
    "--echo",
    "--max-per-ip",
    "--ipv6-prefix",
    "--rate",
    "--global-rate",
    "--reject-message",
    "--idle-timeout",
    "--max-session",
    "--evict-after",
    "--shutdown-timeout",
    "--sandbox",
    "--udp-refuse-ports",
    "--udp-buffer",
    "--ready-fd",
    "--user",
    "--group",
    "--chroot",
    "--syslog-socket",
    "--metrics-file",
    "--metrics-interval",
];

impl Opt {
    fn name(self) -> &'static str {
        VALUED[self as usize]
    }
}

/// The options that take a value and may be repeated.
const REPEATED: [&str; 4] = ["--listen", "--udp", "--allow", "--deny"];

/// The words of the command line sorted by option, not yet judged: the
/// steps of [`parse`] check the values.
#[derive(Default)]
struct Args<'a> {
    /// The values of [`VALUED`], by [`Opt`].
    values: [Option<&'a str>; VALUED.len()],
    listen: Vec<&'a str>,
    udp: Vec<&'a str>,
    /// `--allow` (true) and `--deny` (false) values, in command-line order:
    /// the first matching rule decides.
    rules: Vec<(bool, &'a str)>,
    inetd: bool,
    syslog: bool,
    verbose: bool,
    quiet: bool,
    version: bool,
    help: bool,
}

impl<'a> Args<'a> {
    fn get(&self, opt: Opt) -> Option<&'a str> {
        self.values[opt as usize]
    }

    /// The flag a switch (an option without a value) sets.
    fn switch(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "--inetd" => Some(&mut self.inetd),
            "--syslog" => Some(&mut self.syslog),
            "-v" | "--verbose" => Some(&mut self.verbose),
            "-q" | "--quiet" => Some(&mut self.quiet),
            "--version" => Some(&mut self.version),
            "--help" => Some(&mut self.help),
            _ => None,
        }
    }

    /// Keeps a value of one of [`REPEATED`].
    fn repeated(&mut self, name: &str, value: &'a str) {
        match name {
            "--listen" => self.listen.push(value),
            "--udp" => self.udp.push(value),
            _ => self.rules.push((name == "--allow", value)),
        }
    }
}

/// Sorts the words into [`Args`]. A value is the next word whatever it
/// looks like (`--reject-message --allow` sends "--allow"), as with argh.
/// After `--` no option is recognised, and forkecho takes nothing else.
fn scan<'a>(words: &[&'a str]) -> Result<Args<'a>> {
    let mut args = Args::default();
    let mut words = words.iter().copied();
    while let Some(name) = words.next() {
        if name == "--" {
            return match words.next() {
                Some(word) => Err(unrecognized(word)),
                None => Ok(args),
            };
        }
        if let Some(on) = args.switch(name) {
            *on = true;
            continue;
        }
        let one = VALUED.iter().position(|v| *v == name);
        if one.is_none() && !REPEATED.contains(&name) {
            return Err(unrecognized(name));
        }
        let value = words
            .next()
            .ok_or_else(|| usage(&format!("no value provided for option {name}")))?;
        match one {
            Some(i) if args.values[i].replace(value).is_some() => {
                return Err(usage(&format!("duplicate value for option {name}")));
            }
            Some(_) => {}
            None => args.repeated(name, value),
        }
    }
    Ok(args)
}

/// A word that is no option of forkecho (it takes no other arguments).
fn unrecognized(word: &str) -> Error {
    usage(&format!("unrecognized argument: {word}"))
}

#[derive(Debug)]
pub struct Config {
    /// Empty means the default (dual-stack on port 7007, IPv4 fallback).
    pub listen: Specs,
    pub max_children: usize,
    pub backlog: i32,
    pub buffer_size: usize,
    pub shutdown_timeout_secs: u32,
    /// `--evict-after`; `None`: never evict.
    pub evict_after: Option<Duration>,
    pub echo_mode: Mode,
    pub limits: Limits,
    pub policy: Policy,
    /// The refusal text with its CRLF; empty for none.
    pub reject_message: Vec<u8>,
    /// `--udp`: empty for no UDP echo.
    pub udp: Specs,
    pub udp_refuse_ports: crate::udp::Ports,
    pub udp_buffer: usize,
    pub inetd: bool,
    pub sandbox: crate::sandbox::Mode,
    pub ready_fd: Option<i32>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub chroot: Option<String>,
    /// The syslog socket path with `--syslog`.
    pub syslog: Option<String>,
    pub level: crate::log::Level,
    pub metrics: Option<crate::metrics::Spec>,
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

/// Parses `argv` (without the program name): the scan, then one named step
/// per concern.
pub fn parse(words: &[&str]) -> Result<Command> {
    let args = scan(words)?;
    if args.help {
        return Ok(Command::Print(help()));
    }
    if args.version {
        return Ok(Command::Print(version_line() + "\n"));
    }
    let max_per_ip = number(&args, Opt::MaxPerIp, 0..=u32::MAX, 0)?;
    check_inetd(&args, max_per_ip)?;
    let level = level(&args)?;
    let syslog = syslog(&args)?;
    let ready_fd = ready_fd(args.get(Opt::ReadyFd))?;
    let metrics = metrics(&args)?;
    Ok(Command::Run(Box::new(Config {
        listen: listen_specs("--listen", &args.listen)?,
        udp: listen_specs("--udp", &args.udp)?,
        udp_refuse_ports: refuse_ports(args.get(Opt::UdpRefusePorts))?,
        udp_buffer: number(
            &args,
            Opt::UdpBuffer,
            limits::UDP_BUFFER,
            limits::DEFAULT_UDP_BUFFER,
        )? as usize,
        max_children: number(
            &args,
            Opt::MaxChildren,
            limits::CHILDREN,
            limits::DEFAULT_CHILDREN,
        )? as usize,
        backlog: number(
            &args,
            Opt::Backlog,
            limits::BACKLOG,
            limits::DEFAULT_BACKLOG,
        )? as i32,
        buffer_size: number(
            &args,
            Opt::BufferSize,
            limits::BUFFER,
            limits::DEFAULT_BUFFER,
        )? as usize,
        shutdown_timeout_secs: number(
            &args,
            Opt::ShutdownTimeout,
            limits::SHUTDOWN_SECS,
            limits::DEFAULT_SHUTDOWN_SECS,
        )?,
        evict_after: secs(
            &args,
            Opt::EvictAfter,
            limits::EVICT_SECS,
            limits::DEFAULT_EVICT_SECS,
        )?,
        echo_mode: choice(&args, Opt::Echo, "auto, splice or copy")?,
        limits: session_limits(&args)?,
        policy: policy(&args, max_per_ip)?,
        reject_message: reject_message(args.get(Opt::RejectMessage))?,
        inetd: args.inetd,
        sandbox: choice(&args, Opt::Sandbox, "auto, on or off")?,
        ready_fd,
        user: args.get(Opt::User).map(Into::into),
        group: args.get(Opt::Group).map(Into::into),
        chroot: args.get(Opt::Chroot).map(Into::into),
        syslog,
        level,
        metrics,
    })))
}

fn level(args: &Args) -> Result<crate::log::Level> {
    use crate::log::Level;
    match (args.verbose, args.quiet) {
        (true, true) => Err(usage("--verbose and --quiet exclude each other")),
        (true, false) => Ok(Level::Debug),
        (false, true) => Ok(Level::Error),
        (false, false) => Ok(Level::Info),
    }
}

/// `--syslog` with its socket; `--syslog-socket` alone is a mistake.
fn syslog(args: &Args) -> Result<Option<String>> {
    match (args.syslog, args.get(Opt::SyslogSocket)) {
        (true, path) => Ok(Some(path.unwrap_or("/dev/log").into())),
        (false, Some(_)) => Err(usage("--syslog-socket needs --syslog")),
        (false, None) => Ok(None),
    }
}

/// `--echo` or `--sandbox`: one of a few words, "auto" when absent.
fn choice<T: core::str::FromStr<Err = ()>>(args: &Args, opt: Opt, words: &str) -> Result<T> {
    let text = args.get(opt).unwrap_or("auto");
    text.parse()
        .map_err(|()| usage(&format!("{} {text}: must be {words}", opt.name())))
}

/// `--metrics-file` with its interval; `--metrics-interval` alone is a
/// mistake.
fn metrics(args: &Args) -> Result<Option<crate::metrics::Spec>> {
    let secs = number(
        args,
        Opt::MetricsInterval,
        limits::METRICS_SECS,
        limits::DEFAULT_METRICS_SECS,
    )?;
    let Some(path) = args.get(Opt::MetricsFile) else {
        return match args.get(Opt::MetricsInterval) {
            Some(_) => Err(usage("--metrics-interval needs --metrics-file")),
            None => Ok(None),
        };
    };
    let spec = crate::metrics::Spec::parse(path, Duration::from_secs(secs.into()));
    spec.map(Some).ok_or_else(|| {
        usage(&format!(
            "--metrics-file {path}: must name a file, up to {} bytes, without NUL",
            limits::METRICS_NAME_MAX
        ))
    })
}

fn session_limits(args: &Args) -> Result<Limits> {
    Ok(Limits {
        idle: secs(
            args,
            Opt::IdleTimeout,
            limits::SESSION_SECS,
            limits::DEFAULT_IDLE_SECS,
        )?,
        lifetime: secs(
            args,
            Opt::MaxSession,
            limits::SESSION_SECS,
            limits::DEFAULT_SESSION_SECS,
        )?,
    })
}

/// Seconds in `range`, 0 meaning "never".
fn secs(
    args: &Args,
    opt: Opt,
    range: RangeInclusive<u32>,
    default: u32,
) -> Result<Option<Duration>> {
    let v = number(args, opt, range, default)?;
    Ok((v > 0).then(|| Duration::from_secs(v.into())))
}

/// The `--listen` (or `--udp`) addresses, each once, with the v6-only
/// pairing applied.
fn listen_specs(name: &str, texts: &[&str]) -> Result<Specs> {
    let mut listen = Specs::new();
    for text in texts {
        let addr = parse_addr(name, text)?;
        if listen.iter().any(|l| l.addr == addr) {
            return Err(usage(&format!("{name} {text}: given twice")));
        }
        listen
            .push(ListenSpec {
                addr,
                v6only: false,
            })
            .map_err(|_| usage(&format!("{name}: at most {MAX_LISTENERS} addresses")))?;
    }
    crate::listener::pair_v6only(&mut listen);
    Ok(listen)
}

/// The admission policy: rules in command-line order, rates, per-address
/// limits.
fn policy(args: &Args, max_per_ip: u32) -> Result<Policy> {
    let mut policy = Policy {
        max_per_ip,
        ipv6_prefix: number(
            args,
            Opt::Ipv6Prefix,
            limits::IPV6_PREFIX,
            limits::DEFAULT_IPV6_PREFIX.into(),
        )? as u8,
        ..Default::default()
    };
    for &(allow, text) in &args.rules {
        let name = if allow { "--allow" } else { "--deny" };
        let cidr = Cidr::parse(text).ok_or_else(|| {
            usage(&format!(
                "{name} {text}: expected ADDR or ADDR/LEN with no host bits set"
            ))
        })?;
        policy
            .rules
            .push(Rule { allow, cidr })
            .map_err(|_| usage(&format!("--allow/--deny: at most {MAX_RULES} rules")))?;
    }
    for (opt, slot) in [
        (Opt::Rate, &mut policy.rate),
        (Opt::GlobalRate, &mut policy.global_rate),
    ] {
        if let Some(text) = args.get(opt) {
            let (n, secs) = (limits::RATE_N, limits::RATE_SECS);
            *slot = Some(Rate::parse(text).ok_or_else(|| {
                usage(&format!(
                    "{} {text}: expected N/SECS with N in {}, SECS in {}",
                    opt.name(),
                    Range(&n),
                    Range(&secs)
                ))
            })?);
        }
    }
    Ok(policy)
}

/// The refusal text with its CRLF; empty for none.
fn reject_message(text: Option<&str>) -> Result<Vec<u8>> {
    match text {
        None => Ok(Vec::new()),
        Some(m) if !m.is_empty() && m.len() <= REJECT_MESSAGE_MAX && !m.contains(['\r', '\n']) => {
            Ok([m.as_bytes(), b"\r\n"].concat())
        }
        Some(_) => Err(usage(&format!(
            "--reject-message: 1 to {REJECT_MESSAGE_MAX} bytes on one line (CRLF is added)"
        ))),
    }
}

/// `--udp-refuse-ports`: `7,9,13`, or `none`; the default list without it.
fn refuse_ports(text: Option<&str>) -> Result<crate::udp::Ports> {
    let mut ports = crate::udp::Ports::new();
    let text = match text {
        None => {
            let _ = ports.extend_from_slice(&limits::DEFAULT_REFUSE_PORTS);
            return Ok(ports);
        }
        Some("none") => return Ok(ports),
        Some(t) => t,
    };
    for p in text.split(',') {
        let port = p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| {
            usage(&format!(
                "--udp-refuse-ports {text}: expected none or ports 1..=65535 separated by commas"
            ))
        })?;
        ports.push(port).map_err(|_| {
            usage(&format!(
                "--udp-refuse-ports: at most {} ports",
                limits::MAX_REFUSE_PORTS
            ))
        })?;
    }
    Ok(ports)
}

/// `--inetd` serves one connection: the options that need a listening
/// server, or memory across connections, make no sense with it.
fn check_inetd(args: &Args, max_per_ip: u32) -> Result<()> {
    if !args.inetd {
        return Ok(());
    }
    let stateful = [
        ("--listen", !args.listen.is_empty()),
        ("--udp", !args.udp.is_empty()),
        ("--max-per-ip", max_per_ip > 0),
        ("--rate", args.get(Opt::Rate).is_some()),
        ("--global-rate", args.get(Opt::GlobalRate).is_some()),
        ("--ready-fd", args.get(Opt::ReadyFd).is_some()),
        ("--metrics-file", args.get(Opt::MetricsFile).is_some()),
    ];
    match stateful.iter().find(|o| o.1) {
        Some((name, _)) => Err(usage(&format!(
            "--inetd serves one connection: {name} needs the listening server"
        ))),
        None => Ok(()),
    }
}

fn ready_fd(text: Option<&str>) -> Result<Option<i32>> {
    let Some(text) = text else {
        return Ok(None);
    };
    // Through u32: one number parser in the binary instead of two.
    match text.parse::<u32>().map(i32::try_from) {
        Ok(Ok(fd)) if limits::READY_FD.contains(&fd) && fd != 2 => Ok(Some(fd)),
        _ => Err(usage(&format!(
            "--ready-fd {text}: must be an open descriptor other than 0 and 2"
        ))),
    }
}

fn usage(msg: &str) -> Error {
    Error::Usage(format!("{msg} (see --help)"))
}

/// `1..=1024`, as the error messages print a range.
struct Range<'a>(&'a RangeInclusive<u32>);

impl Display for Range<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}..={}", self.0.start(), self.0.end())
    }
}

/// The number given for `opt`, which must be in `range`; `default` when the
/// option is absent. Text that is no number gets the same message as one
/// out of range.
fn number(args: &Args, opt: Opt, range: RangeInclusive<u32>, default: u32) -> Result<u32> {
    let Some(text) = args.get(opt) else {
        return Ok(default);
    };
    match text.parse() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(usage(&format!(
            "{} {text}: must be in {}",
            opt.name(),
            Range(&range)
        ))),
    }
}

/// `ADDR:PORT` with a numeric address: `127.0.0.1:7`, `[::1]:7`, `[::]:0`.
/// Names are refused on purpose: resolving them needs a resolver that may not
/// be configured on a board at boot, and binding to a name is ambiguous.
fn parse_addr(name: &str, text: &str) -> Result<SocketAddr> {
    text.parse::<SocketAddr>().map_err(|_| {
        usage(&format!(
            "{name} {text}: expected ADDR:PORT with a numeric IPv4 or [IPv6] address"
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
    fn help_quotes_the_ranges_and_defaults_in_limits() {
        let Ok(Command::Print(help)) = parse(&["--help"]) else {
            panic!()
        };
        let s = |v: u32| v.to_string();
        for (name, range, default) in [
            (
                "max-children",
                Range(&limits::CHILDREN).to_string(),
                s(limits::DEFAULT_CHILDREN),
            ),
            (
                "backlog",
                Range(&limits::BACKLOG).to_string(),
                s(limits::DEFAULT_BACKLOG),
            ),
            (
                "buffer-size",
                Range(&limits::BUFFER).to_string(),
                s(limits::DEFAULT_BUFFER),
            ),
            (
                "idle-timeout",
                Range(&limits::SESSION_SECS).to_string(),
                s(limits::DEFAULT_IDLE_SECS),
            ),
            (
                "max-session",
                Range(&limits::SESSION_SECS).to_string(),
                s(limits::DEFAULT_SESSION_SECS),
            ),
            (
                "shutdown-timeout",
                Range(&limits::SHUTDOWN_SECS).to_string(),
                s(limits::DEFAULT_SHUTDOWN_SECS),
            ),
            (
                "ipv6-prefix",
                Range(&limits::IPV6_PREFIX).to_string(),
                limits::DEFAULT_IPV6_PREFIX.to_string(),
            ),
            (
                "metrics-interval",
                Range(&limits::METRICS_SECS).to_string(),
                s(limits::DEFAULT_METRICS_SECS),
            ),
        ] {
            // An option's entry runs from its name to the next entry.
            let text = help
                .split("\n  --")
                .find(|p| {
                    p.strip_prefix(name)
                        .is_some_and(|r| r.starts_with(char::is_whitespace))
                })
                .unwrap_or_else(|| panic!("no --{name} in {help}"));
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(text.contains(&range), "--{name}: {text} lacks {range}");
            assert!(
                text.contains(&format!("(default {default})")),
                "--{name}: {text}"
            );
        }
    }

    #[test]
    fn metrics_options() {
        assert!(run(&[]).metrics.is_none());
        let m = run(&["--metrics-file", "/d/f.prom"]).metrics.unwrap();
        assert_eq!((m.path.as_str(), m.interval.as_secs()), ("/d/f.prom", 15));
        let m = run(&["--metrics-file", "f", "--metrics-interval", "3600"]);
        assert_eq!(m.metrics.unwrap().interval.as_secs(), 3600);
        for (args, needle) in [
            (&["--metrics-interval", "5"][..], "needs --metrics-file"),
            (
                &["--metrics-file", "f", "--metrics-interval", "0"],
                "1..=3600",
            ),
            (
                &["--metrics-file", "/d/"],
                "--metrics-file /d/: must name a file",
            ),
            (
                &["--inetd", "--metrics-file", "f"],
                "--metrics-file needs the",
            ),
        ] {
            assert!(err(args).contains(needle), "{args:?}: {}", err(args));
        }
    }

    #[test]
    fn help_is_only_an_option() {
        assert!(err(&["help"]).contains("help"));
        assert!(err(&["--syslog-socket", "/x"]).contains("--syslog-socket needs --syslog"));
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
