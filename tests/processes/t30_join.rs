//! A failed `--join` leaves the data dir as it found it (an expired ticket, a read-only ticket,
//! no member reachable), says so and what to do next; a retry with a good ticket then succeeds
//! in the same data dir. A node removed from the cluster exits with status 0.

use std::path::Path;

use iroh_raft::{Ticket, TicketRole};

use crate::support::{
    Cluster, cli, listing, run_until_exit, sigterm, spawn, ticket_from, wait_exit,
};

/// `iroh-raft node --join TICKET` in `dir`, which must fail; returns its stderr.
fn failed_join(dir: &Path, ticket: &str) -> String {
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--preset",
        "testing",
        "--join",
        ticket,
    ];
    let (code, stderr) = run_until_exit(&args, dir);
    assert_ne!(code, 0, "joined with a bad ticket: {stderr}");
    assert!(stderr.contains("was left as it was"), "{stderr}");
    stderr
}

#[test]
fn failed_joins_leave_the_data_dir_as_found_and_a_retry_succeeds() {
    let mut c = Cluster::start(1);
    let (keys, admin) = (c.keys.path().to_owned(), c.admin.clone());
    let first = c.dirs[0].path().to_owned();
    let like: Ticket = admin.parse().unwrap();
    // The operator's data dir exists and holds a file of theirs.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("node");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes"), "mine").unwrap();

    let expired = ticket_from(&first, &like, like.members.clone(), TicketRole::Join, -60);
    let err = failed_join(&dir, &expired);
    assert!(err.contains("Expired"), "{err}");
    assert_eq!(listing(&dir), ["notes"]);
    // A data dir that did not exist is not left behind either.
    let fresh = parent.path().join("a").join("b");
    failed_join(&fresh, &expired);
    assert!(!parent.path().join("a").exists());

    let ticket = |role: &str| {
        let args = ["ctl", "--cluster", &admin, "ticket", "--role", role];
        let (code, out, err) = cli(&keys, &args);
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let err = failed_join(&dir, &ticket("read-only"));
    assert!(err.contains("WrongRole"), "{err}");
    assert_eq!(listing(&dir), ["notes"]);

    // No member reachable: the only one is down.
    let good = ticket("join");
    sigterm(&mut c.procs[0]);
    let err = failed_join(&dir, &good);
    assert!(err.contains("could be reached"), "{err}");
    assert_eq!(listing(&dir), ["notes"]);

    // It comes back (same address, from its data dir); the same ticket now works, in the same
    // data dir.
    c.procs[0] = spawn(&first, &[]);
    let mut joined = spawn(&dir, &["--bind", "127.0.0.1:0", "--join", &good]);
    assert_eq!(joined.id, 2);
    let files = listing(&dir);
    assert!(files.contains(&"raft.redb".to_owned()), "{files:?}");
    assert!(
        !files.contains(&iroh_raft::JOIN_PENDING_FILE.to_owned()),
        "{files:?}"
    );

    // Removed from the cluster, it exits with status 0.
    let (code, _, err) = cli(&keys, &["ctl", "--cluster", &admin, "remove-member", "2"]);
    assert_eq!(code, 0, "{err}");
    wait_exit(&mut joined);
}
