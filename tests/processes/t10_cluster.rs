//! Real `iroh-raft node` processes on loopback: bootstrap one, join two more by ticket, then a
//! fourth; kill -9 the leader; the rest elect and keep serving; restart the killed one with only
//! `--data-dir` and check it catches up (it is needed for quorum afterwards); SIGTERM shuts every
//! node down cleanly. Writes come from an embedded node that joined as a learner with the same
//! ticket. Then `ctl` and `kv` against a running node.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use iroh_raft::{KeyValueStore, KvCommand, Preset, RaftCluster, Ticket};

use crate::support::{BIN, WAIT, cli, send_sigterm, sigterm, spawn, wait_exit};

fn set(i: usize) -> KvCommand {
    KvCommand::Set {
        key: format!("k{i}"),
        value: format!("v{i}"),
    }
}

/// Proposes `set(i)` through the client, retrying while the cluster elects (outcome-unknown
/// errors are retried too: the write is idempotent).
async fn write(client: &RaftCluster<KeyValueStore>, i: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.propose(set(i)).await {
            Ok(_) => return,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "write {i} kept failing: {e}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_join_by_ticket_survive_kill_9_and_restart() {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>6.2?}] {what}", started.elapsed());
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let bind = ["--bind", "127.0.0.1:0"];
    let mut procs = vec![spawn(
        dirs[0].path(),
        &[&bind[..], &["--bootstrap"]].concat(),
    )];
    let ticket_text = std::fs::read_to_string(dirs[0].path().join("ticket")).unwrap();
    let ticket_text = ticket_text.trim().to_owned();
    assert!(dirs[0].path().join("admin-ticket").exists());
    for dir in &dirs[1..3] {
        procs.push(spawn(
            dir.path(),
            &[&bind[..], &["--join", &ticket_text]].concat(),
        ));
    }

    // The test's client: an embedded node that joins as a learner with the same ticket.
    let ticket: Ticket = ticket_text.parse().unwrap();
    let client = RaftCluster::builder()
        .data_dir(dirs[4].path())
        .state_machine(KeyValueStore::new())
        .preset(Preset::Testing)
        .join_ticket(ticket)
        .join_as_learner()
        .build()
        .await
        .unwrap();
    for i in 0..50 {
        write(&client, i).await;
    }
    step("client joined, 50 writes");
    procs.push(spawn(
        dirs[3].path(),
        &[&bind[..], &["--join", &ticket_text]].concat(),
    ));
    // Ids are handed out in join order (the client joined before the fourth node).
    let ids: Vec<u64> = procs.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 5]);
    // The client applies the last promotion a moment after the node that asked for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let members = client.members().await.unwrap();
        if members.voters() == ids {
            assert_eq!(members.learners(), vec![client.node_id()]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "voters stayed {:?}",
            members.voters()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // kill -9 the leader; the other three elect and keep serving.
    step("fourth node joined");
    let leader = client.leader().await.expect("a leader");
    let victim = procs.iter().position(|p| p.id == leader).unwrap();
    procs[victim].child.kill().unwrap();
    procs[victim].child.wait().unwrap();
    for i in 50..100 {
        write(&client, i).await;
    }
    step("leader killed, 50 writes");
    let new_leader = client.leader().await.expect("a new leader");
    assert_ne!(new_leader, leader);

    // Restart it with only --data-dir; then stop another node, so that the restarted one is
    // needed for quorum (3 of 4): writes succeed only once it has caught up.
    let restarted = spawn(dirs[victim].path(), &[]);
    step("killed node restarted");
    assert_eq!(restarted.id, leader);
    procs[victim] = restarted;
    let other = procs
        .iter()
        .position(|p| p.id != leader && p.id != new_leader)
        .unwrap();
    sigterm(&mut procs[other]);
    for i in 100..150 {
        write(&client, i).await;
    }
    let all = client
        .linearizable_query(|kv| {
            (0..150).all(|i| kv.get(&format!("k{i}")) == Some(&format!("v{i}")))
        })
        .await
        .unwrap();
    assert!(all, "an acknowledged write is missing");
    step("another node stopped, 50 writes that need the restarted one, all read back");

    client.shutdown().await.unwrap();
    // Stop the rest together (closing an endpoint waits up to ~3 s for peers that are gone).
    for (i, p) in procs.iter().enumerate() {
        if i != other {
            send_sigterm(p);
        }
    }
    for (i, p) in procs.iter_mut().enumerate() {
        if i != other {
            wait_exit(p);
        }
    }
    step("all stopped");
}

#[test]
fn bad_flags_and_refused_tickets_exit_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["node", "--data-dir"])
        .arg(dir.path())
        .args(["--join", "irohraft1garbage"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ticket"));

    let out = Command::new(BIN)
        .args(["node", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bootstrap"));
}

#[test]
fn ctl_and_kv_against_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mut node = spawn(dir.path(), &["--bind", "127.0.0.1:0", "--bootstrap"]);
    let admin = std::fs::read_to_string(dir.path().join("admin-ticket")).unwrap();
    let admin = admin.trim();
    let join = std::fs::read_to_string(dir.path().join("ticket")).unwrap();
    let join = join.trim();

    let (code, _, err) = cli(
        keys.path(),
        &["kv", "--cluster", admin, "put", "hello", "world"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(keys.path(), &["kv", "--cluster", admin, "get", "hello"]);
    assert_eq!((code, out.trim()), (0, "world"), "{err}");
    let (code, _, _) = cli(keys.path(), &["kv", "--cluster", admin, "get", "missing"]);
    assert_eq!(code, 1);

    let (code, out, err) = cli(
        keys.path(),
        &["ctl", "--cluster", admin, "--json", "status"],
    );
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["leader"], 1);
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert_eq!(status["members"][0]["role"], "voter");

    // A read-only ticket minted through ctl: reads yes, writes refused (exit 3).
    let (code, out, err) = cli(
        keys.path(),
        &[
            "ctl",
            "--cluster",
            admin,
            "ticket",
            "--role",
            "read-only",
            "--expires",
            "1h",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let read_only = out.trim().to_owned();
    let (code, out, _) = cli(
        keys.path(),
        &["kv", "--cluster", &read_only, "get", "hello"],
    );
    assert_eq!((code, out.trim()), (0, "world"));
    let (code, _, err) = cli(
        keys.path(),
        &["kv", "--cluster", &read_only, "put", "a", "b"],
    );
    assert_eq!(code, 3, "{err}");
    // A join ticket grants no management access: refused (exit 3).
    let (code, _, err) = cli(keys.path(), &["ctl", "--cluster", join, "status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("refused"), "{err}");

    // members, snapshot, transfer-leader (a single voter has no one to hand over to: failed),
    // and watch, which prints the event of a write as it happens.
    let (code, out, err) = cli(keys.path(), &["ctl", "--cluster", admin, "members"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("voter"), "{out}");
    let (code, _, err) = cli(keys.path(), &["ctl", "--cluster", admin, "snapshot"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(keys.path(), &["ctl", "--cluster", admin, "transfer-leader"]);
    assert_eq!(code, 1, "{err}");
    let mut watch = Command::new(BIN)
        .args([
            "ctl",
            "--cluster",
            admin,
            "--json",
            "watch",
            "--applied",
            "--key-dir",
        ])
        .arg(keys.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Writes until the watcher reports an applied entry (it may subscribe after the first).
    let mut applied = false;
    for i in 0..100 {
        let (code, _, err) = cli(
            keys.path(),
            &["kv", "--cluster", admin, "put", "w", &i.to_string()],
        );
        assert_eq!(code, 0, "{err}");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(ev["seq"].as_u64().unwrap() >= 1, "{line}");
            applied = true;
            break;
        }
    }
    assert!(applied, "watch printed nothing");
    let _ = watch.kill();
    let _ = watch.wait();

    // The node stops: unreachable (exit 4: nothing was sent).
    sigterm(&mut node);
    let (code, _, err) = cli(
        keys.path(),
        &["ctl", "--cluster", admin, "--timeout", "2s", "health"],
    );
    assert_eq!(code, 4, "{err}");
}
