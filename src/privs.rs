//! Privileges: after binding, give up root for good (`--user`, `--group`,
//! `--chroot`), and set `PR_SET_NO_NEW_PRIVS`.
//!
//! Names are looked up at start-up, before any chroot hides /etc/passwd.
//! The drop runs chroot, setgroups, setgid, setuid — in that order, since
//! each later step removes the right to do the earlier ones — and is then
//! verified: every id must be the target, and `setuid(0)` must fail. Any
//! failure ends the process (exit 1) before a single connection is served:
//! a server asked to drop root never keeps running as root with its
//! (possibly privileged) port open.

use crate::error::{Error, Reason, Result};
use nix::unistd::{Gid, Uid};

/// What to become. `None` fields are left alone.
#[derive(Debug, Default)]
pub struct Target {
    uid: Option<Uid>,
    gid: Option<Gid>,
    /// Text, not a `PathBuf`: it came from the command line as UTF-8, and
    /// printing a path (`Path::display`) costs 0.5 KB on armv7.
    chroot: Option<String>,
}

/// The first line of a passwd or group file whose `:`-separated fields
/// satisfy `pick`: its numeric fields 2 and 3 (uid and gid in passwd; gid
/// and 0 in group, whose field 3 is the member list).
///
/// Read directly rather than through `getpwnam(3)`: musl's version brings
/// stdio, `getline` and an nscd client, ~8 KB of a board's binary, for
/// files that on a board are always local. (No NSS/LDAP users: give
/// numbers then.)
fn entry(path: &str, pick: impl Fn(&[&str]) -> bool) -> Option<(u32, u32)> {
    let bytes = read_file(path)?;
    let text = core::str::from_utf8(&bytes).ok()?;
    text.lines().find_map(|line| {
        let f: heapless::Vec<&str, 8> = line.splitn(8, ':').collect();
        if f.len() < 3 || line.starts_with('#') || !pick(&f) {
            return None;
        }
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok());
        Some((num(2)?, num(3).unwrap_or(0)))
    })
}

/// The whole file at `path`. open/read rather than `std::fs`, whose
/// generic path handling and size hints cost 2 KB on armv7 for two small
/// files read once.
fn read_file(path: &str) -> Option<Vec<u8>> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).ok()?;
    let (mut text, mut chunk) = (Vec::new(), [0u8; 512]);
    loop {
        match nix::unistd::read(&fd, &mut chunk) {
            Ok(0) => return Some(text),
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Resolves `--user` (name or number; its primary group unless `--group`
/// says otherwise), `--group` (name or number) and `--chroot`.
pub fn resolve(user: Option<&str>, group: Option<&str>, chroot: Option<&str>) -> Result<Target> {
    let mut t = Target {
        chroot: chroot.map(Into::into),
        ..Target::default()
    };
    if let Some(u) = user {
        let (uid, gid) = match u.parse::<u32>() {
            // A number need not have a passwd entry; if it has, its group
            // is the default.
            Ok(n) => (n, entry("/etc/passwd", |f| f[2] == u).map(|e| e.1)),
            Err(_) => {
                let (uid, gid) = entry("/etc/passwd", |f| f[0] == u)
                    .ok_or_else(|| Error::Usage(format!("--user {u}: no such user")))?;
                (uid, Some(gid))
            }
        };
        t.uid = Some(Uid::from_raw(uid));
        t.gid = gid.map(Gid::from_raw);
    }
    if let Some(g) = group {
        let gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                entry("/etc/group", |f| f[0] == g)
                    .ok_or_else(|| Error::Usage(format!("--group {g}: no such group")))?
                    .0
            }
        };
        t.gid = Some(Gid::from_raw(gid));
    }
    if t.uid.is_some() && t.gid.is_none() {
        return Err(Error::Usage(format!(
            "--user {}: no passwd entry to take a group from; add --group",
            user.unwrap_or_default()
        )));
    }
    Ok(t)
}

impl Target {
    /// `chroot(2)` + `chdir("/")`, `setgroups(2)` to just the target group,
    /// `setgid(2)`, `setuid(2)`; then the checks described in the module
    /// doc.
    pub fn apply(&self) -> Result<()> {
        if let Some(dir) = &self.chroot {
            nix::unistd::chroot(dir.as_str())
                .and_then(|()| nix::unistd::chdir("/"))
                .map_err(|e| Error::Start(format!("--chroot {dir}: {}", Reason(e))))?;
        }
        if let Some(gid) = self.gid {
            crate::sys::ids::set_group(gid.as_raw()).map_err(|e| {
                Error::Start(format!("cannot switch to group {gid}: {}", Reason(e)))
            })?;
        }
        if let Some(uid) = self.uid {
            crate::sys::ids::set_user(uid.as_raw())
                .map_err(|e| Error::Start(format!("cannot switch to user {uid}: {}", Reason(e))))?;
        }
        self.verify()
    }

    fn verify(&self) -> Result<()> {
        let ids = nix::unistd::getresuid().ok();
        let gids = nix::unistd::getresgid().ok();
        if let Some(uid) = self.uid {
            if ids.is_none_or(|r| r.real != uid || r.effective != uid || r.saved != uid) {
                return Err(Error::Start(format!(
                    "user ids are not all {uid} after setuid"
                )));
            }
            if !uid.is_root() && crate::sys::ids::set_user(0).is_ok() {
                return Err(Error::Start("setuid(0) still works after the drop".into()));
            }
        }
        if let Some(gid) = self.gid {
            if gids.is_none_or(|r| r.real != gid || r.effective != gid || r.saved != gid) {
                return Err(Error::Start(format!(
                    "group ids are not all {gid} after setgid"
                )));
            }
        }
        Ok(())
    }
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: no exec from this process or its
/// children can gain privileges (setuid binaries, file capabilities). Set
/// once in the parent after the drop: every child inherits it through
/// fork, at no cost per connection.
pub fn no_new_privs() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| Error::sys("cannot set PR_SET_NO_NEW_PRIVS", e))
}
