//! Privilege drop after binding (`--user`, `--group`, `--chroot`) and
//! `PR_SET_NO_NEW_PRIVS`, read back from /proc. Dropping needs root: as
//! another user these tests say so and check nothing (CI runs as root).
//! Under QEMU user mode the guest's set*id calls change the emulator's main
//! thread, which is what /proc/PID/status reports.

mod common;
use common::*;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("not root: privilege tests skipped");
    false
}

fn ids(pid: i32) -> (String, String, String) {
    (
        proc_status(pid, "Uid").unwrap(),
        proc_status(pid, "Gid").unwrap(),
        proc_status(pid, "Groups").unwrap_or_default(),
    )
}

#[test]
fn drops_to_a_named_user_and_its_group() {
    if !root() {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (u, g) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let srv = Server::start(&["--user", "nobody"]);
    let (_s, child) = open_session(&srv, b"who");
    for pid in [srv.pid, child] {
        assert_eq!(
            ids(pid),
            (
                format!("{u} {u} {u} {u}"),
                format!("{g} {g} {g} {g}"),
                format!("{g}")
            ),
            "pid {pid}"
        );
        assert_eq!(proc_status(pid, "NoNewPrivs").as_deref(), Some("1"));
    }
}

#[test]
fn drops_to_numeric_ids_without_passwd_entries() {
    if !root() {
        return;
    }
    let srv = Server::start(&["--user", "4242", "--group", "4343"]);
    round_trip(&srv, b"numeric");
    assert_eq!(
        ids(srv.pid),
        (
            "4242 4242 4242 4242".into(),
            "4343 4343 4343 4343".into(),
            "4343".into()
        )
    );
}

#[test]
fn binds_a_privileged_port_then_drops() {
    if !root() {
        return;
    }
    // A free port below 1024, found by binding it (as root) a moment before.
    let port = (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free privileged port");
    let listen = format!("127.0.0.1:{port}");
    let srv = Server::start(&["--listen", &listen, "--user", "nobody"]);
    assert_eq!(srv.addr.port(), port);
    round_trip(&srv, b"port below 1024");
    assert!(proc_status(srv.pid, "Uid").unwrap().starts_with("65534 "));
}

#[test]
fn chroots_before_dropping() {
    if !root() {
        return;
    }
    let dir = temp_dir("chroot");
    let srv = Server::start(&[
        "--chroot",
        dir.to_str().unwrap(),
        "--user",
        "4242",
        "--group",
        "4242",
    ]);
    round_trip(&srv, b"jailed");
    let root = std::fs::read_link(format!("/proc/{}/root", srv.pid)).unwrap();
    assert_eq!(root, *dir);
    drop(srv);
}

#[test]
fn a_failed_drop_stops_the_server_before_it_serves() {
    assert_one_line_error(
        &[
            "--listen",
            "127.0.0.1:0",
            "--chroot",
            "/nonexistent-forkecho",
        ],
        1,
        &["--chroot /nonexistent-forkecho: No such file or directory (ENOENT)"],
    );
    assert_one_line_error(
        &["--user", "no-such-user-forkecho"],
        2,
        &["--user no-such-user-forkecho: no such user"],
    );
    assert_one_line_error(&["--user", "4242"], 2, &["add --group"]);
}

#[test]
fn children_cannot_gain_privileges_without_a_drop_too() {
    let srv = Server::start(&[]);
    let (_s, child) = open_session(&srv, b"nnp");
    assert_eq!(proc_status(child, "NoNewPrivs").as_deref(), Some("1"));
}
