//! Damaged and stale data dirs, as an operator would meet them with real processes: a changed
//! byte in a stopped node's `raft.redb`, and a node restarted from an older copy of its own
//! data dir. Either way the node process exits non-zero with the reason and what to do, the
//! data dir is never served from again, and the other members keep serving.

use crate::support::{Cluster, cli, run_until_exit, sigterm, spawn_with};

/// Writes `count` keys through the cluster.
fn put(cluster: &Cluster, from: usize, count: usize) {
    for i in from..from + count {
        let (code, _, err) = cli(
            cluster.keys.path(),
            &[
                "kv",
                "--cluster",
                &cluster.admin,
                "put",
                &format!("key-{i:04}"),
                &format!("value-{i:04}"),
            ],
        );
        assert_eq!(code, 0, "put {i}: {err}");
    }
}

/// Position of a follower among the processes.
fn a_follower(cluster: &Cluster) -> usize {
    let leader = cluster.leader();
    cluster.procs.iter().position(|p| p.id != leader).unwrap()
}

#[test]
fn a_changed_byte_in_raft_redb_stops_the_node_with_the_reason() {
    let mut cluster = Cluster::start_with(3, "production");
    put(&cluster, 0, 20);
    let i = a_follower(&cluster);
    sigterm(&mut cluster.procs[i]);
    let db = cluster.dirs[i].path().join("raft.redb");
    let mut file = std::fs::read(&db).unwrap();
    let needle = b"value-0011";
    let mut hits = 0;
    for at in 0..file.len() - needle.len() {
        if &file[at..at + needle.len()] == needle {
            file[at + 6] ^= 0x01;
            hits += 1;
        }
    }
    assert!(hits > 0, "the value is in the file");
    std::fs::write(&db, &file).unwrap();

    let (code, stderr) = run_until_exit(&["--preset", "production"], cluster.dirs[i].path());
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("data corruption"), "{stderr}");
    assert!(stderr.contains("remove this member"), "{stderr}");
    // The file was left as it was, and the other two keep serving.
    assert_eq!(std::fs::read(&db).unwrap(), file);
    put(&cluster, 100, 3);
}

#[test]
fn a_node_restarted_from_an_old_copy_of_its_data_dir_exits_and_stays_out() {
    let mut cluster = Cluster::start_with(3, "production");
    put(&cluster, 0, 5);
    let i = a_follower(&cluster);
    let dir = cluster.dirs[i].path().to_owned();
    sigterm(&mut cluster.procs[i]);
    let old_copy = std::fs::read(dir.join("raft.redb")).unwrap();
    // Two more starts, and writes it acknowledged, after the copy was taken.
    for round in 0..2 {
        cluster.procs[i] = spawn_with(&dir, &[], "production");
        put(&cluster, 100 * (round + 1), 10);
        sigterm(&mut cluster.procs[i]);
    }
    std::fs::write(dir.join("raft.redb"), &old_copy).unwrap();

    // Before: raft-rs panicked ("to_commit .. is out of range"), every restart of the actor
    // failed, and the process stayed up for minutes listed as a healthy voter.
    let (code, stderr) = run_until_exit(&["--preset", "production"], &dir);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("stale data dir"), "{stderr}");
    // It never serves from that data dir again.
    let (code, stderr) = run_until_exit(&["--preset", "production"], &dir);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("fenced"), "{stderr}");
    put(&cluster, 1000, 3);
}
