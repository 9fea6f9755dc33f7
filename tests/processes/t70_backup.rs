//! Backups through the binary: 50,000 keys written to a 3-node cluster, `ctl snapshot save`
//! while writes go on, `snapshot status`, `restore` into a new cluster (one restored node, two
//! fresh ones joined by its ticket) holding every key acknowledged before the save; then the
//! old cluster loses two of its three nodes and their disks for good, and `node
//! --force-new-cluster` makes the survivor a new cluster that two fresh nodes join, holding
//! every write the survivor had applied. Bad files and dirs are refused without touching
//! anything.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use iroh_raft::{KvCommand, Ticket, mgmt::IrohRaftManagementClient};

use crate::support::{
    Cluster, WAIT, cli, client_of, listing, read_line, run_until_exit, sigterm, spawn,
    spawn_logging,
};

const KEYS: u64 = 50_000;
const CONCURRENCY: u64 = 64;

fn set(i: u64) -> KvCommand {
    KvCommand::Set {
        key: format!("k{i}"),
        value: format!("v{i}"),
    }
}

/// Writes keys `from..to`, `CONCURRENCY` at a time, each retried until acknowledged (a `Set`
/// is idempotent).
async fn write_all(client: &IrohRaftManagementClient, from: u64, to: u64) {
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return;
                }
                write_one(&client, i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn write_one(client: &IrohRaftManagementClient, i: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.propose::<_, iroh_raft::KvResponse>(&set(i)).await {
            Ok(_) => return,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "write {i} kept failing: {e}"
            ),
        }
    }
}

/// Every key in `0..to` reads back (linearizably) with its value.
async fn check_all(client: &IrohRaftManagementClient, to: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return;
                }
                let key = format!("k{i}");
                let deadline = tokio::time::Instant::now() + WAIT;
                let value = loop {
                    match client.read::<_, Option<String>>(&key).await {
                        Ok(v) => break v,
                        Err(e) => assert!(
                            tokio::time::Instant::now() < deadline,
                            "read {key} kept failing: {e}"
                        ),
                    }
                };
                assert_eq!(value, Some(format!("v{i}")), "key {key}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs `iroh-raft ARGS` (a command that takes no CLI key) to its end.
fn bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(crate::support::BIN)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A new cluster: the node in `first` (restored or recovered) started with `args` (its stderr
/// in `log` when given), the nodes in `fresh` joined by its ticket. Returns the processes and
/// an admin client of it.
fn grow(
    rt: &tokio::runtime::Runtime,
    (first, args, log): (&Path, &[&str], Option<&Path>),
    fresh: &[tempfile::TempDir],
) -> (Vec<crate::support::Proc>, IrohRaftManagementClient) {
    let mut procs = vec![spawn_logging(first, args, "testing", log)];
    let join = read_line(&first.join("ticket"));
    for dir in fresh {
        procs.push(spawn(
            dir.path(),
            &["--bind", "127.0.0.1:0", "--join", &join],
        ));
    }
    let admin: Ticket = read_line(&first.join("admin-ticket")).parse().unwrap();
    let client = rt.block_on(client_of(admin.members.clone(), &admin));
    (procs, client)
}

#[test]
fn save_under_load_restore_into_a_new_cluster_and_recover_a_lost_quorum() {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>6.2?}] {what}", started.elapsed());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = Cluster::start(3);
    let (keys, admin) = (c.keys.path().to_owned(), c.admin.clone());
    let ticket: Ticket = admin.parse().unwrap();
    let client = rt.block_on(client_of(ticket.members.clone(), &ticket));
    rt.block_on(write_all(&client, 0, KEYS));
    step("50,000 keys written");

    // Save while another client keeps writing.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        rt.spawn(async move {
            let mut i = KEYS;
            while !stop.load(Ordering::Relaxed) {
                write_one(&client, i).await;
                i += 1;
            }
            i
        })
    };
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("cluster.irbk");
    let file_s = file.to_str().unwrap();
    let args = [
        "ctl",
        "--cluster",
        &admin,
        "--json",
        "snapshot",
        "save",
        file_s,
    ];
    let (code, out, err) = cli(&keys, &args);
    assert_eq!(code, 0, "{err}");
    stop.store(true, Ordering::Relaxed);
    let written = rt.block_on(writer).unwrap();
    let saved = json(&out);
    assert_eq!(saved["verified"], true);
    assert_eq!(
        listing(files.path()),
        ["cluster.irbk"],
        "no .part left behind"
    );
    step(&format!(
        "saved at index {} ({} writes ran meanwhile)",
        saved["index"],
        written - KEYS
    ));

    // A read-only client may not take a backup (exit 3, nothing written).
    let (code, read_only, err) = cli(
        &keys,
        &["ctl", "--cluster", &admin, "ticket", "--role", "read-only"],
    );
    assert_eq!(code, 0, "{err}");
    let denied = files.path().join("denied.irbk");
    let (code, _, err) = cli(
        &keys,
        &[
            "ctl",
            "--cluster",
            read_only.trim(),
            "snapshot",
            "save",
            denied.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(!denied.exists() && !files.path().join("denied.irbk.part").exists());

    let (code, out, err) = bin(&["snapshot", "status", file_s, "--json"]);
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    assert_eq!(status["index"], saved["index"]);
    assert_eq!(status["voters"].as_array().unwrap().len(), 3);

    // Bad inputs touch nothing.
    let nonempty = tempfile::tempdir().unwrap();
    std::fs::write(nonempty.path().join("mine"), "x").unwrap();
    let (code, _, err) = bin(&[
        "restore",
        file_s,
        "--data-dir",
        nonempty.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(listing(nonempty.path()), ["mine"]);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let damaged = files.path().join("damaged.irbk");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = files.path().join("never");
    let (code, _, err) = bin(&[
        "restore",
        damaged.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("damaged"), "{err}");
    assert!(!target.exists(), "a damaged backup created the data dir");

    // Restore alone: a one-member cluster (others would join it by ticket).
    let restored = tempfile::tempdir().unwrap();
    let single = restored.path().join("single");
    let (code, out, err) = bin(&[
        "restore",
        file_s,
        "--data-dir",
        single.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    assert_eq!(report["index"], saved["index"]);
    assert_ne!(report["cluster_id"], status["cluster_id"]);
    {
        let (procs, client) = grow(&rt, (&single, &[], None), &[]);
        rt.block_on(check_all(&client, 100));
        drop(procs);
    }

    // Restore every founding member of a new 3-node cluster, like etcd's --initial-cluster:
    // keys first, then the same member list on each.
    let dirs: Vec<_> = (1..=3)
        .map(|i| restored.path().join(format!("m{i}")))
        .collect();
    let mut members = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (code, out, err) = bin(&["keygen", "--data-dir", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        members.push(format!("{}={}@127.0.0.1:{port}", i + 1, out.trim()));
    }
    let mut ids = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = (i + 1).to_string();
        let mut args = vec![
            "restore",
            file_s,
            "--data-dir",
            dir.to_str().unwrap(),
            "--node-id",
            &id,
            "--json",
        ];
        for m in &members {
            args.extend(["--member", m.as_str()]);
        }
        let (code, out, err) = bin(&args);
        assert_eq!(code, 0, "{err}");
        ids.push(json(&out)["cluster_id"].clone());
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "the members disagree on the cluster: {ids:?}"
    );
    let new_procs: Vec<_> = dirs.iter().map(|d| spawn(d, &[])).collect();
    let new_admin: Ticket = read_line(&dirs[0].join("admin-ticket")).parse().unwrap();
    let new_client = rt.block_on(client_of(new_admin.members.clone(), &new_admin));
    rt.block_on(check_all(&new_client, KEYS));
    step("the restored 3-member cluster holds every key acknowledged before the save");
    drop(new_procs);

    // Disaster: nodes 2 and 3 and their disks are gone for good. The survivor has applied
    // every write (a linearizable read through it proves it), then it is recovered alone.
    let survivor_dir = c.dirs[0].path().to_owned();
    // Issued by the survivor, whose key and address the recovered cluster keeps.
    let old_admin = read_line(&survivor_dir.join("admin-ticket"));
    let survivor = c.procs[0].id;
    let last = format!("k{}", written - 1);
    let survivor_key = c.proc_endpoint(survivor);
    let survivor_addr = ticket
        .members
        .iter()
        .find(|m| m.id == survivor_key)
        .cloned()
        .unwrap();
    let options = iroh_raft::mgmt::ClientOptions::default().pinned();
    let pinned = rt
        .block_on(IrohRaftManagementClient::new(
            vec![survivor_addr],
            Some(&ticket),
            options,
        ))
        .unwrap();
    let value = rt
        .block_on(pinned.read::<_, Option<String>>(&last))
        .unwrap();
    assert_eq!(value, Some(format!("v{}", written - 1)));
    for mut p in c.procs.drain(1..) {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    for d in c.dirs.drain(1..) {
        drop(d);
    }
    sigterm(&mut c.procs[0]);
    let recovery_log = files.path().join("recovery.log");
    let fresh: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (procs, client) = grow(
        &rt,
        (&survivor_dir, &["--force-new-cluster"], Some(&recovery_log)),
        &fresh,
    );
    let log = std::fs::read_to_string(&recovery_log).unwrap();
    assert!(
        log.contains(&format!(
            "force-new-cluster: node {survivor} keeps its state"
        )),
        "{log}"
    );
    rt.block_on(check_all(&client, written));
    step("the recovered cluster holds every write the survivor had applied");
    // The old cluster's ticket, signed by a key the new cluster still has, names the old
    // cluster: refused.
    let (code, _, err) = cli(
        &keys,
        &["ctl", "--cluster", &old_admin, "--timeout", "5s", "status"],
    );
    assert_eq!(code, 3, "the old cluster's ticket was honoured: {err}");
    assert!(err.contains("is for cluster"), "{err}");
    // Once done, the flag is refused on that dir: a restart that kept it founds nothing new.
    let mut procs = procs;
    sigterm(&mut procs[0]);
    let (code, err) = run_until_exit(
        &["--force-new-cluster", "--preset", "testing"],
        &survivor_dir,
    );
    assert_ne!(code, 0);
    assert!(err.contains("already turned into a new cluster"), "{err}");
    drop(procs);
}
