//! Deployments: `ClusterManager` over local `iroh-raft node` processes, and `iroh-raft
//! cluster` on the command line. Rolling updates of 3 and of 5 processes and scaling 3 → 5 → 3
//! under a continuous write load lose no acknowledged write, and the longest time without an
//! acknowledged write stays within twice the election timeout (Testing preset: 300 ms); a
//! rollout to a binary that exits at start stops at its first node and puts the old binary
//! back; a broken file is refused, naming the field, before any process starts.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use iroh_raft::{
    KvCommand, KvResponse, Ticket,
    deployment::{ClusterManager, DeploymentConfig, DeploymentError, NodeConfig},
    mgmt::{ClientOptions, IrohRaftManagementClient},
};

use crate::support::{BIN, WAIT};

/// Runs `iroh-raft ARGS`; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Twice the Testing preset's election timeout.
const MAX_UNAVAILABLE: Duration = Duration::from_millis(600);
const WRITERS: u64 = 4;

/// A port nothing listens on (UDP for a node, TCP for its metrics; both free).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn node_toml(id: u64, dir: &Path) -> String {
    format!(
        "[[nodes]]\nid = {id}\nbind = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nmetrics_addr = \
         \"127.0.0.1:{}\"\n\n",
        free_port(),
        dir.join(format!("node-{id}")).display(),
        free_port()
    )
}

/// A deployment file of nodes `1..=n` in `dir`, Testing preset.
fn write_config(dir: &Path, n: u64) -> PathBuf {
    let mut text = format!(
        "cluster_name = \"t80\"\nenvironment = \"testing\"\nbinary = \"{BIN}\"\n\n[rollout]\n\
         node_timeout = \"60s\"\nmax_lag = 50\n\n"
    );
    for id in 1..=n {
        text += &node_toml(id, dir);
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A closed-loop write load: `WRITERS` clients, each writing a new key at a time. Records
/// which keys were acknowledged and when.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Instant, u64)>>>,
    unknown: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: IrohRaftManagementClient,
}

impl Load {
    async fn start(ticket: &Ticket) -> Self {
        let options = ClientOptions::default().timeout(Duration::from_secs(3));
        let client = IrohRaftManagementClient::new(ticket.members.clone(), Some(ticket), options)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let unknown = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let tasks = (0..WRITERS)
            .map(|_| {
                let (client, stop, acked, unknown, next) = (
                    client.clone(),
                    stop.clone(),
                    acked.clone(),
                    unknown.clone(),
                    next.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let cmd = KvCommand::Set {
                            key: format!("k{i}"),
                            value: format!("v{i}"),
                        };
                        match client.propose::<_, KvResponse>(&cmd).await {
                            Ok(_) => acked.lock().unwrap().push((Instant::now(), i)),
                            // Not acknowledged: it may or may not be applied; never counted.
                            Err(_) => {
                                unknown.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            unknown,
            tasks,
            client,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more writes than now were acknowledged.
    async fn more(&self, n: usize) {
        let target = self.acked() + n;
        let deadline = Instant::now() + WAIT;
        while self.acked() < target {
            assert!(Instant::now() < deadline, "the write load stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers; returns the longest time without an acknowledged write, and checks
    /// that every acknowledged key reads back (linearizable reads).
    async fn finish(self, what: &str) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let mut acked = self.acked.lock().unwrap().clone();
        acked.sort_by_key(|(at, _)| *at);
        let longest = acked
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();

        let keys: Vec<u64> = acked.iter().map(|(_, i)| *i).collect();
        for chunk in keys.chunks(64) {
            let reads = chunk.iter().map(|i| {
                let client = self.client.clone();
                async move {
                    let value: Option<String> = client.read(&format!("k{i}")).await.unwrap();
                    (*i, value)
                }
            });
            for (i, value) in futures::future::join_all(reads).await {
                assert_eq!(
                    value,
                    Some(format!("v{i}")),
                    "{what}: acknowledged k{i} lost"
                );
            }
        }
        eprintln!(
            "{what}: {} writes acknowledged (all read back), {} not acknowledged, longest \
             time without an acknowledged write {longest:.0?}",
            keys.len(),
            self.unknown.load(Ordering::Relaxed)
        );
        self.client.close().await;
        longest
    }
}

/// Kills the node processes a deployment's launcher started (its pid files) however the test
/// ends: they outlive the manager by design.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid")
                && let Ok(pid) = std::fs::read_to_string(entry.path())
            {
                signal(pid.trim(), "KILL");
            }
        }
    }
}

/// Sends `sig` to `pid`; whether it was delivered.
fn signal(pid: &str, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), pid])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pid the local launcher recorded for node `id` of the deployment in `dir`.
fn node_pid(dir: &Path, id: u64) -> String {
    let path = dir.join(format!(".t80.cluster/node-{id}.pid"));
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

fn reaper(dir: &Path) -> Reaper {
    Reaper(dir.join(".t80.cluster"))
}

/// What the manager reported, in order: (node, message).
type Steps = Arc<Mutex<Vec<(u64, String)>>>;

async fn manager(config: &Path) -> (ClusterManager, Steps) {
    let config = DeploymentConfig::load(config).unwrap();
    let steps = Steps::default();
    let seen = steps.clone();
    let m = ClusterManager::new(config)
        .await
        .unwrap()
        .on_progress(move |p| {
            eprintln!("manager: node {:?}: {}", p.node, p.message);
            seen.lock().unwrap().push((p.node.unwrap_or(0), p.message));
        });
    (m, steps)
}

/// Checks the order of a rollout from the manager's steps since `from`: every node stopped
/// once, in the reported order; only the last one handed leadership over, before it stopped.
fn check_rollout_order(steps: &Steps, from: usize, order: &[u64]) {
    let steps = steps.lock().unwrap()[from..].to_vec();
    let stops: Vec<u64> = steps
        .iter()
        .filter(|(_, m)| m == "stopping")
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(stops, order, "{steps:?}");
    for (i, (node, _)) in steps
        .iter()
        .enumerate()
        .filter(|(_, (_, m))| m.starts_with("handed leadership"))
    {
        assert_eq!(
            Some(node),
            order.last(),
            "only the leader, last, hands over: {steps:?}"
        );
        let stop = steps.iter().position(|(n, m)| n == node && m == "stopping");
        assert!(stop > Some(i), "handed over after it stopped: {steps:?}");
    }
}

/// Every node runs, is a member and ready, with no problem reported, on `binary` as the
/// manager recorded it.
async fn healthy_on(m: &mut ClusterManager, binary: &Path) {
    let status = m.status().await.unwrap();
    assert!(status.healthy(), "{status:?}");
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.binary.as_deref() == Some(binary)),
        "{status:?}"
    );
}

/// `path` runs the real binary under another name: the "new" binary of a rollout.
fn other_name(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::os::unix::fs::symlink(BIN, &path).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_of_three_under_load_and_a_broken_binary_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 3);
    let _reaper = reaper(dir.path());
    let (mut m, steps) = manager(&config).await;
    m.bootstrap().await.unwrap();
    assert!(m.status().await.unwrap().healthy());
    let load = Load::start(&m.admin_ticket().unwrap()).await;
    load.more(100).await;

    let next = other_name(dir.path(), "iroh-raft-next");
    let from = steps.lock().unwrap().len();
    let report = m.rolling_update(&next).await.unwrap();
    assert_eq!(report.order.len(), 3);
    check_rollout_order(&steps, from, &report.order);
    load.more(100).await;
    healthy_on(&mut m, &next).await;

    // A binary that exits at start: the rollout stops at its first node, which gets the
    // binary it ran before back; the cluster serves throughout.
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let from = steps.lock().unwrap().len();
    match m.rolling_update(&broken).await {
        Err(DeploymentError::RolloutFailed {
            node,
            reason,
            restored,
            updated,
        }) => {
            assert!(updated.is_empty());
            // The first node touched, a follower (nobody handed leadership over).
            let steps = steps.lock().unwrap()[from..].to_vec();
            let stopped = steps.iter().find(|(_, m)| m == "stopping").map(|s| s.0);
            assert_eq!(stopped, Some(node));
            assert!(
                !steps
                    .iter()
                    .any(|(_, m)| m.starts_with("handed leadership"))
            );
            assert!(reason.contains("exited before it was ready"), "{reason}");
            assert!(reason.contains("cannot start"), "{reason}");
            assert!(restored.contains("caught up and ready"), "{restored}");
            eprintln!("rollout to a broken binary stopped at node {node}: {reason}; {restored}");
        }
        other => panic!("expected the rollout to stop, got {other:?}"),
    }
    healthy_on(&mut m, &next).await;
    load.more(100).await;

    // A rollout interrupted (the manager's future dropped, as a crash or Ctrl-C would end it)
    // once it began stopping its first node: status says so for that node, and `up` brings
    // the node back on the binary it had.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let (from, seen) = (steps.lock().unwrap().len(), stopping.clone());
    let watch = tokio::spawn({
        let steps = steps.clone();
        async move {
            loop {
                let at = steps.lock().unwrap()[from..]
                    .iter()
                    .find(|(_, m)| m == "stopping")
                    .map(|(n, _)| *n);
                if let Some(node) = at {
                    seen.notify_one();
                    return node;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    tokio::select! {
        outcome = m.rolling_update(&broken) => panic!("the rollout was not interrupted: {outcome:?}"),
        _ = stopping.notified() => {}
    }
    let node = watch.await.unwrap();
    let status = m.status().await.unwrap();
    let it = status.nodes.iter().find(|n| n.id == node).unwrap();
    assert!(
        it.problems
            .iter()
            .any(|p| p.contains("was interrupted at this node")),
        "{status:?}"
    );
    assert!(!status.healthy());
    let deadline = Instant::now() + WAIT;
    while m
        .status()
        .await
        .unwrap()
        .nodes
        .iter()
        .any(|n| n.id == node && n.running)
    {
        assert!(Instant::now() < deadline, "node {node} did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.bootstrap().await.unwrap();
    healthy_on(&mut m, &next).await;
    load.more(100).await;

    let longest = load.finish("3-node rolling update").await;
    assert!(
        longest <= MAX_UNAVAILABLE,
        "writes were unavailable for {longest:?} (at most {MAX_UNAVAILABLE:?})"
    );
    m.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_to_five_roll_five_and_back_to_three_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 3);
    let _reaper = reaper(dir.path());
    let (mut m, steps) = manager(&config).await;
    m.bootstrap().await.unwrap();
    let load = Load::start(&m.admin_ticket().unwrap()).await;
    load.more(100).await;

    for id in [4, 5] {
        let port = free_port();
        let node = NodeConfig::new(
            id,
            format!("127.0.0.1:{port}").parse().unwrap(),
            dir.path().join(format!("node-{id}")),
        );
        m.add_node(node).await.unwrap();
        load.more(50).await;
    }
    let status = m.status().await.unwrap();
    assert_eq!(status.nodes.len(), 5);
    assert!(status.healthy(), "{status:?}");
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.member.as_deref() == Some("voter"))
    );

    let next = other_name(dir.path(), "iroh-raft-next");
    let from = steps.lock().unwrap().len();
    let report = m.rolling_update(&next).await.unwrap();
    assert_eq!(report.order.len(), 5);
    check_rollout_order(&steps, from, &report.order);
    load.more(100).await;

    // Back to three: the leader among the removed is handed over first.
    for id in [4, 5] {
        m.remove_node(id).await.unwrap();
        load.more(50).await;
    }
    let status = m.status().await.unwrap();
    assert_eq!(
        status.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(status.healthy(), "{status:?}");

    let longest = load.finish("scale 3 → 5, roll 5, back to 3").await;
    assert!(
        longest <= MAX_UNAVAILABLE,
        "writes were unavailable for {longest:?} (at most {MAX_UNAVAILABLE:?})"
    );
    m.stop().await.unwrap();
}

/// `iroh-raft cluster` end to end, and files refused before anything starts.
#[test]
fn the_cluster_command_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 3);
    // Node 3 runs with limits (the last [[nodes]] table).
    let limited = std::fs::read_to_string(&config).unwrap()
        + "resources = { max_open_files = 4096, max_memory_mb = 8192 }\n";
    std::fs::write(&config, limited).unwrap();
    let _reaper = reaper(dir.path());
    let file = config.to_str().unwrap();

    let (code, out, err) = cli(&["cluster", "-f", file, "up"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("leader 1"), "{out}");
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", node_pid(dir.path(), 3))).unwrap();
    let limit = |name: &str| {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(limit("Max open files"), "4096 4096", "{limits}");
    assert_eq!(limit("Max data size"), "8589934592 8589934592", "{limits}");
    let (code, out, err) = cli(&["cluster", "-f", file, "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    let (code, out, err) = cli(&["cluster", "-f", file, "down"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("every node stopped"));
    // Down means down: every process gone.
    let (code, out, _) = cli(&["cluster", "-f", file, "status", "--json"]);
    assert_ne!(code, 0);
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["running"] == false), "{out}");
    // Up again: every node restarts from its data dir.
    let (code, out, err) = cli(&["cluster", "-f", file, "up"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches(" running ").count(), 3, "{out}");
    assert!(err.contains("restarting from its data dir"), "{err}");
    // A leader told to stop (SIGTERM, as systemd and Kubernetes stop it) hands over first.
    let (_, out, err) = cli(&["cluster", "-f", file, "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect(&err);
    let leader = status["leader"].as_u64().unwrap();
    let pid = node_pid(dir.path(), leader);
    assert!(signal(&pid, "TERM"));
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    {
        assert!(Instant::now() < deadline, "node {leader} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.path().join(format!(".t80.cluster/node-{leader}.log")))
        .unwrap();
    assert!(
        log.contains(&format!("node {leader} handed leadership to node")),
        "{log}"
    );
    let (code, _, err) = cli(&["cluster", "-f", file, "down"]);
    assert_eq!(code, 0, "{err}");

    // Refused before any process starts: nothing is created.
    let text = std::fs::read_to_string(&config).unwrap();
    let node_2_port = text
        .lines()
        .filter(|l| l.starts_with("bind"))
        .nth(1)
        .unwrap();
    for (name, broken, field) in [
        (
            "typo",
            text.replacen("data_dir", "data_dri", 1),
            "unknown field `data_dri`",
        ),
        (
            "preset",
            text.replace("\"testing\"", "\"prod\""),
            "environment: unknown preset 'prod'",
        ),
        (
            "id",
            text.replacen("id = 2", "id = 1", 1),
            "nodes[1].id: id 1 is also nodes[0]'s",
        ),
        (
            "port",
            text.replacen(
                node_2_port,
                text.lines().find(|l| l.starts_with("bind")).unwrap(),
                1,
            ),
            "nodes[1].bind:",
        ),
    ] {
        let fresh = dir.path().join(format!("bad-{name}"));
        std::fs::create_dir(&fresh).unwrap();
        let broken = broken.replace(dir.path().to_str().unwrap(), fresh.to_str().unwrap());
        let path = fresh.join("cluster.toml");
        std::fs::write(&path, broken).unwrap();
        let (code, _, err) = cli(&["cluster", "-f", path.to_str().unwrap(), "up"]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(field), "{name}: {err}");
        assert_eq!(
            std::fs::read_dir(&fresh).unwrap().count(),
            1,
            "{name}: something was created"
        );
    }
}

/// A binary that cannot read a data dir (another format version) refuses to start, saying
/// which versions, and leaves every byte of it as it was: a rollback to an older binary after
/// a format change fails loudly instead of rewriting the node's data.
#[test]
fn a_data_dir_of_another_format_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = crate::support::spawn(dir.path(), &["--bootstrap"]);
    crate::support::sigterm(&mut node);
    let db_path = dir.path().join(iroh_raft::DB_FILE);
    {
        let db = redb::Database::open(&db_path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, &[u8]> =
                redb::TableDefinition::new("iroh_raft_meta_v1");
            let mut table = tx.open_table(meta).unwrap();
            table
                .insert("format_version", 99u32.to_le_bytes().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let before = std::fs::read(&db_path).unwrap();
    let (code, stderr) = crate::support::run_until_exit(&[], dir.path());
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("data dir format version 99 is not supported (this build reads 3)"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&db_path).unwrap() == before,
        "the data dir was rewritten"
    );
}

/// Quorum is never knowingly given up: with one of three voters down, removing another is
/// refused, naming the one the leader cannot hear, and nothing changes. Meanwhile a second
/// manager of the same deployment is refused while the first one runs, and a file that moves
/// a node's data dir is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_is_kept_one_manager_at_a_time_and_nodes_stay_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), 3);
    let _reaper = reaper(dir.path());
    let mut config = DeploymentConfig::load(&path).unwrap();
    config.rollout.node_timeout = Duration::from_secs(5);
    let mut m = ClusterManager::new(config.clone()).await.unwrap();
    m.bootstrap().await.unwrap();

    match ClusterManager::new(config.clone()).await {
        Err(DeploymentError::Busy(lock)) => assert!(lock.ends_with("lock")),
        other => panic!("a second manager ran beside the first: {other:?}"),
    }

    // Node 3 dies (not through the manager).
    assert!(signal(&node_pid(dir.path(), 3), "KILL"));
    // Once the leader knows (it has not heard from node 3 for an election timeout).
    let deadline = Instant::now() + WAIT;
    loop {
        let status = m.status().await.unwrap();
        if status.nodes.iter().any(|n| n.id == 3 && !n.fresh) {
            break;
        }
        assert!(Instant::now() < deadline, "the leader still hears node 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match m.remove_node(2).await {
        Err(DeploymentError::WouldLoseQuorum {
            node, unreachable, ..
        }) => {
            assert_eq!(node, 2);
            assert_eq!(unreachable, vec![3]);
        }
        other => panic!("removing a second voter of three was not refused: {other:?}"),
    }
    let status = m.status().await.unwrap();
    let two = status.nodes.iter().find(|n| n.id == 2).unwrap();
    assert!(
        two.running && two.member.as_deref() == Some("voter"),
        "{status:?}"
    );
    // (Node 3 is not brought back: with the Testing preset's fsync off, a SIGKILL loses what
    // it had acknowledged, and its leader refuses it as stale.)
    // Quorum lost (node 2 dies too): status still answers, with what each node says.
    assert!(signal(&node_pid(dir.path(), 2), "KILL"));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = m.status().await.unwrap();
        if status.leader.is_none() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a leader without a quorum: {status:?}"
        );
    };
    let one = status.nodes.iter().find(|n| n.id == 1).unwrap();
    assert!(one.running && one.ready == Some(false), "{status:?}");
    assert!(
        one.problems.iter().any(|p| p.contains("leader")),
        "{status:?}"
    );
    assert!(!status.nodes.iter().find(|n| n.id == 2).unwrap().running);
    m.stop().await.unwrap();
    drop(m);

    // Node 2's data dir moved in the file: refused, naming the field, nothing started.
    let moved = std::fs::read_to_string(&path)
        .unwrap()
        .replace("node-2", "node-2-elsewhere");
    std::fs::write(&path, moved).unwrap();
    let config = DeploymentConfig::load(&path).unwrap();
    match ClusterManager::new(config).await {
        Err(DeploymentError::Config(e)) => {
            assert_eq!(e.field, "nodes[1].data_dir", "{e}");
            assert!(e.message.contains("node-2-elsewhere"), "{e}");
        }
        other => panic!("a moved data dir was accepted: {other:?}"),
    }
    assert!(!dir.path().join("node-2-elsewhere").exists());
}
