//! A real Prometheus (Debian's package, installed by `.ci/deps`) scrapes a three-node cluster:
//! through its query API every node has a leader, exactly one leads, and after the leader is
//! stopped the survivors' `leader_changes_seen_total` has risen. The shipped alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`).
//!
//! These tests fail, never skip, when `prometheus` or `promtool` is missing: run
//! `bash .ci/deps` (the README's test command does).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::support::{TestCluster, try_exchange, wait_for, wait_for_some};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is installed (run `bash .ci/deps`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = docs().join("alerts.yml");
    let text = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(text.contains("SUCCESS"), "{text}");
    let tests = docs().join("alerts_test.yml");
    let text = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// A Prometheus server in a temp dir on a loopback port, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second and waits until it is ready. The free
    /// port it is given may be taken by another test meanwhile: then it exits, and is started
    /// again on another port.
    async fn start(targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: iroh-raft\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let path = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
        for _attempt in 0..3 {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let log = std::fs::File::create(path("prometheus.log")).unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", path("prometheus.yml")))
                .arg(format!("--storage.tsdb.path={}", path("data")))
                .arg(format!("--web.listen-address={addr}"))
                .arg(format!("--web.console.templates={}", path("none")))
                .arg(format!("--web.console.libraries={}", path("none")))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus is installed (run `bash .ci/deps`)");
            let ready = wait_for_some("Prometheus to be ready or to exit", || {
                let exited = child.try_wait().ok().flatten().is_some();
                async move {
                    if exited {
                        return Some(false);
                    }
                    let answer = try_exchange(addr, b"GET /-/ready HTTP/1.0\r\n\r\n").await?;
                    String::from_utf8_lossy(&answer)
                        .starts_with("HTTP/1.0 200")
                        .then_some(true)
                }
            })
            .await;
            if ready {
                return Self {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            let log = std::fs::read_to_string(path("prometheus.log")).unwrap_or_default();
            eprintln!("prometheus exited at start, trying another port:\n{log}");
        }
        panic!("prometheus did not start three times in a row (see the logs above)");
    }

    /// The instant vector `query` evaluates to: (instance label, value) pairs.
    async fn query(&self, query: &str) -> Vec<(String, f64)> {
        let encoded: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
        // HTTP/1.0: a plain body, never chunked.
        let request = format!("GET /api/v1/query?query={encoded} HTTP/1.0\r\n\r\n");
        // Nothing listens until Prometheus has started: no answer yet.
        let Some(raw) = try_exchange(self.addr, request.as_bytes()).await else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&raw);
        let Some((_, body)) = text.split_once("\r\n\r\n") else {
            return Vec::new();
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
            return Vec::new();
        };
        let results = json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        results
            .iter()
            .filter_map(|r| {
                let instance = r["metric"]["instance"].as_str().unwrap_or("").to_owned();
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((instance, value))
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_one_leader_and_counts_a_leader_change() {
    let mut cluster =
        TestCluster::start_configured(3, 3, |b| b.metrics_addr("127.0.0.1:0".parse().unwrap()))
            .await;
    let leader = cluster.wait_for_leader().await;
    let targets: Vec<SocketAddr> = cluster
        .running()
        .map(|n| n.metrics_addr().unwrap())
        .collect();
    let prometheus = Prometheus::start(&targets).await;

    wait_for("Prometheus to scrape all three nodes", || async {
        prometheus.query("up{job=\"iroh-raft\"} == 1").await.len() == 3
    })
    .await;
    wait_for("every node to report a leader, and one to lead", || async {
        let has = prometheus.query("iroh_raft_has_leader").await;
        let leads = prometheus.query("sum(iroh_raft_is_leader)").await;
        has.len() == 3 && has.iter().all(|(_, v)| *v == 1.0) && leads == [(String::new(), 1.0)]
    })
    .await;
    let before = prometheus
        .query("iroh_raft_leader_changes_seen_total")
        .await;
    let leader_target = cluster.node(leader).metrics_addr().unwrap().to_string();

    cluster.stop(leader).await;
    let new_leader = wait_for_some("a new leader", || async {
        let l = cluster.running().next()?.status().await.ok()?.leader?;
        (l != leader).then_some(l)
    })
    .await;
    assert_ne!(new_leader, leader);
    wait_for(
        "the survivors' leader changes to rise in Prometheus",
        || async {
            let now = prometheus
                .query("iroh_raft_leader_changes_seen_total")
                .await;
            let survivors: Vec<&(String, f64)> =
                now.iter().filter(|(i, _)| *i != leader_target).collect();
            survivors.len() == 2
                && survivors.iter().all(|(instance, value)| {
                    let old = before.iter().find(|(i, _)| i == instance).map(|(_, v)| *v);
                    old.is_some_and(|old| *value > old)
                })
        },
    )
    .await;
    drop(prometheus);
    cluster.shutdown().await;
}
