//! Real crashes. A child process (this test binary, re-run in child mode) runs a durable
//! single-node cluster that writes and prints every acknowledged write; the parent kills it with
//! SIGKILL at a random point, restarts the node on the same data dir and checks that every
//! acknowledged write is there and the log recovers, 50 times over one data dir. Snapshots and
//! log compaction run during the writes, so kills land inside them too.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use iroh_raft::{KeyValueStore, KvCommand, Preset, RaftCluster};
use rand::{Rng, SeedableRng, rngs::StdRng};

const CHILD_DIR: &str = "IROH_RAFT_CRASH_CHILD_DIR";
const CHILD_START: &str = "IROH_RAFT_CRASH_CHILD_START";

fn builder(dir: &Path) -> iroh_raft::RaftClusterBuilder<KeyValueStore> {
    RaftCluster::builder()
        .node_id(1)
        .data_dir(dir)
        .state_machine(KeyValueStore::new())
        .preset(Preset::Testing)
        .heartbeat_interval(Duration::from_millis(10))
        .election_timeout(Duration::from_millis(40))
        .fsync(true)
        .max_log_entries(30)
        .snapshot_trailing_entries(5)
}

/// Child mode: write `v{n}` for n = start.. with a few in flight, printing `ack n` for each
/// acknowledged write, until killed. A no-op in a normal test run.
#[test]
fn crash_child() {
    let (Some(dir), Some(start)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_START).ok())
    else {
        return;
    };
    let start: u64 = start.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let node = builder(Path::new(&dir)).build().await.unwrap();
        while node.leader().await != Some(1) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("ready");
        let mut next = start;
        loop {
            let batch: Vec<u64> = (next..next + 4).collect();
            next += 4;
            let writes = batch.iter().map(|n| {
                node.propose(KvCommand::Set {
                    key: format!("v{n}"),
                    value: n.to_string(),
                })
            });
            for (n, r) in batch.iter().zip(futures::future::join_all(writes).await) {
                if r.is_ok() {
                    println!("ack {n}");
                }
            }
        }
    });
}

#[test]
fn sigkill_during_acknowledged_writes_loses_nothing() {
    if std::env::var_os(CHILD_DIR).is_some() {
        return;
    }
    let seed: u64 = std::env::var("IROH_RAFT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (replay with IROH_RAFT_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let mut next = 0u64;
    for round in 0..50 {
        let kill_after = rng.random_range(0..40usize);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_START, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen <= kill_after {
            let Some(Ok(line)) = lines.next() else {
                panic!("round {round}: child exited early");
            };
            if let Some(n) = line.strip_prefix("ack ") {
                acked.push(n.parse().unwrap());
                seen += 1;
            } else if line == "ready" && kill_after == 0 {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        // Acks the child printed before it died also count.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("ack ") {
                acked.push(n.parse().unwrap());
            }
        }
        child.wait().unwrap();
        next = acked.iter().max().map_or(next, |m| m + 1).max(next + 4);

        let missing = rt.block_on(async {
            let node = builder(dir.path())
                .build()
                .await
                .unwrap_or_else(|e| panic!("round {round}: restart failed: {e}"));
            let acked = acked.clone();
            let missing = node
                .linearizable_query(move |kv| {
                    acked
                        .iter()
                        .filter(|n| kv.get(&format!("v{n}")).is_none())
                        .copied()
                        .collect::<Vec<u64>>()
                })
                .await
                .unwrap();
            node.shutdown().await.unwrap();
            missing
        });
        assert!(
            missing.is_empty(),
            "round {round} (seed {seed}): acknowledged writes lost: {missing:?}"
        );
    }
    assert!(
        acked.len() > 200,
        "only {} writes were acknowledged",
        acked.len()
    );
}
