//! Scheduled backups against a real S3-compatible server (moto's, on loopback; `.ci/deps`
//! installs it): a schedule that fires every second, retention keeps exactly N objects, each
//! one verifies. Misconfigured targets (nothing listening, no such bucket, credentials refused)
//! fail, are counted, and never disturb consensus.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::StreamExt;
use iroh_raft::{
    KeyValueStore, Preset, RaftCluster, backup,
    backups::{BackupConfig, BackupTarget, S3Options},
};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::support::{exchange, init_tracing, set, try_exchange, wait_for};

/// A moto S3 server on loopback, stopped when dropped.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `moto_server` on a free port (`auth`: it checks credentials, and knows none).
    async fn start(auth: bool) -> Moto {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut command = Command::new("moto_server");
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if auth {
                command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
            }
            let child = command
                .spawn()
                .expect("moto_server (pip install \"moto[server]\"; .ci/deps does)");
            let moto = Moto {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                if try_exchange(
                    moto.addr,
                    b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                )
                .await
                .is_some_and(|r| !r.is_empty())
                {
                    return moto;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The port was taken meanwhile: try another.
        }
        panic!("moto_server did not start");
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn create_bucket(&self, bucket: &str) {
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let reply =
            String::from_utf8_lossy(&exchange(self.addr, request.as_bytes()).await).into_owned();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}

fn s3(endpoint: String, bucket: &str) -> BackupTarget {
    BackupTarget::S3 {
        bucket: bucket.into(),
        prefix: "cluster/a".into(),
        options: S3Options {
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            access_key_id: Some("test-key".into()),
            secret_access_key: Some("test-secret".into()),
            allow_http: true,
            max_retries: Some(0),
        },
    }
}

/// A one-node cluster backing up every second to `target`, keeping `retention`.
async fn node(
    dir: &tempfile::TempDir,
    target: BackupTarget,
    retention: usize,
) -> RaftCluster<KeyValueStore> {
    RaftCluster::builder()
        .node_id(1)
        .data_dir(dir.path())
        .bind_address("127.0.0.1:0")
        .state_machine(KeyValueStore::new())
        .preset(Preset::Testing)
        .backups(BackupConfig {
            schedule: "* * * * * *".into(),
            retention,
            target,
        })
        .build()
        .await
        .unwrap()
}

/// The value of a counter or gauge in the node's metrics text.
fn metric(cluster: &RaftCluster<KeyValueStore>, name: &str) -> u64 {
    let text = cluster.export_metrics_prometheus();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_to_s3_keep_exactly_n_that_verify() {
    init_tracing();
    let moto = Moto::start(false).await;
    moto.create_bucket("backups").await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = node(&dir, s3(moto.endpoint(), "backups"), 2).await;
    for i in 0..50 {
        cluster
            .propose(set(format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
    }
    wait_for("four scheduled backups", || async {
        metric(&cluster, "iroh_raft_backup_successes_total") >= 4
    })
    .await;
    assert_eq!(metric(&cluster, "iroh_raft_backup_failures_total"), 0);
    assert!(metric(&cluster, "iroh_raft_backup_last_size_bytes") > 0);
    assert!(metric(&cluster, "iroh_raft_backup_last_success_unix_seconds") > 0);
    cluster.shutdown().await.unwrap();

    // Exactly two are kept, and each one verifies.
    let BackupTarget::S3 { options, .. } = s3(moto.endpoint(), "backups") else {
        unreachable!()
    };
    let store = iroh_raft::backups::s3_store("backups", &options).unwrap();
    let prefix = object_store::path::Path::from("cluster/a");
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .map(|m| m.unwrap().location)
        .collect()
        .await;
    assert_eq!(objects.len(), 2, "{objects:?}");
    for object in objects {
        let bytes = store.get(&object).await.unwrap().bytes().await.unwrap();
        let info = backup::verify(&bytes[..], |_, _| {}).unwrap();
        assert!(
            info.header.index >= 51,
            "{object}: index {}",
            info.header.index
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_targets_fail_are_counted_and_leave_consensus_alone() {
    init_tracing();
    let open = Moto::start(false).await;
    // Checks credentials and knows none (it refuses even to create a bucket without them).
    let strict = Moto::start(true).await;
    // Nothing listens on a port that was just free.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let targets = [
        ("unreachable", s3(format!("http://{closed}"), "backups")),
        ("no such bucket", s3(open.endpoint(), "missing")),
        ("credentials refused", s3(strict.endpoint(), "backups")),
    ];
    for (what, target) in targets {
        let dir = tempfile::tempdir().unwrap();
        let cluster = node(&dir, target, 2).await;
        wait_for(&format!("{what}: a failure counted"), || async {
            metric(&cluster, "iroh_raft_backup_failures_total") >= 2
        })
        .await;
        assert_eq!(
            metric(&cluster, "iroh_raft_backup_successes_total"),
            0,
            "{what}"
        );
        // Consensus goes on.
        cluster.propose(set("after", what)).await.unwrap();
        let got = cluster
            .linearizable_query(|kv| kv.get("after").cloned())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(what));
        cluster.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_to_a_directory_keep_exactly_n_that_verify() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let target = BackupTarget::Dir(backups.path().join("nightly"));
    let cluster = node(&dir, target, 1).await;
    cluster.propose(set("k", "v")).await.unwrap();
    wait_for("three scheduled backups", || async {
        metric(&cluster, "iroh_raft_backup_successes_total") >= 3
    })
    .await;
    cluster.shutdown().await.unwrap();
    let files: Vec<_> = std::fs::read_dir(backups.path().join("nightly"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let info = backup::verify_file(&files[0], |_, _| {}).unwrap();
    assert!(info.header.index >= 2);
}
