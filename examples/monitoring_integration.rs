//! Monitoring a cluster: three nodes in one process, each with its own HTTP listener for
//! Prometheus (`/metrics`) and probes (`/livez`, `/readyz`, `/health`). Prints the URLs, writes
//! a little, scrapes itself over HTTP and shows a few values and the health report.
//!
//! ```text
//! cargo run --example monitoring_integration            # ports picked by the OS
//! cargo run --example monitoring_integration -- 9101    # listeners on 9101, 9102, 9103
//! cargo run --features otel --example monitoring_integration -- --otlp http://127.0.0.1:4318
//! ```
//!
//! With `--otlp URL` (needs the `otel` feature) every proposal is also exported as one trace
//! across the three nodes to that OTLP/HTTP collector (Jaeger, Tempo, the OpenTelemetry
//! Collector).
//!
//! Point Prometheus at the printed addresses (see `docs/monitoring/` for alert rules and a
//! Grafana dashboard), or `curl` them while the example waits for Ctrl-C with `--wait`.

use std::{net::SocketAddr, time::Duration};

use iroh_raft::{KeyValueStore, KvCommand, Preset, RaftCluster, start_local_cluster};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first_port: u16 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(0);
    let wait = args.iter().any(|a| a == "--wait");
    let otlp = args
        .iter()
        .position(|a| a == "--otlp")
        .and_then(|i| args.get(i + 1).cloned());
    #[cfg(not(feature = "otel"))]
    if otlp.is_some() {
        anyhow::bail!(
            "--otlp needs the otel feature: cargo run --features otel --example monitoring_integration"
        );
    }

    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let nodes: Vec<RaftCluster<KeyValueStore>> = start_local_cluster(&dirs, |id, b| {
        let port = if first_port == 0 {
            0
        } else {
            first_port + id as u16 - 1
        };
        let b = b
            .state_machine_factory(KeyValueStore::new)
            .preset(Preset::Development)
            .metrics_addr(SocketAddr::from(([127, 0, 0, 1], port)));
        #[cfg(feature = "otel")]
        let b = match &otlp {
            Some(url) => b.otlp_endpoint(url.clone()),
            None => b,
        };
        b
    })
    .await?;

    println!("node  metrics                          probes");
    for node in &nodes {
        let addr = node.metrics_addr().expect("every node has a listener");
        println!(
            "{:<5} http://{addr}/metrics   http://{addr}/readyz?verbose  /livez  /health",
            node.node_id()
        );
    }

    // Wait for a leader, then write through a follower and the leader.
    let leader = loop {
        if let Some(l) = nodes[0].leader().await {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..10 {
            let key = format!("node{i}-key{j}");
            node.propose(KvCommand::Set {
                key,
                value: "v".into(),
            })
            .await?;
        }
    }

    println!("\nleader: node {leader}; 30 writes made\n");
    println!(
        "{:<5} {:>10} {:>9} {:>5} {:>9} {:>9} {:>14}",
        "node", "has_leader", "is_leader", "term", "committed", "applied", "commit p50 ms"
    );
    for node in &nodes {
        let addr = node.metrics_addr().expect("listener");
        let page = get(addr, "/metrics").await?;
        let value = |name: &str| {
            page.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let p50 = node
            .metrics()
            .storage
            .disk_commit_duration_seconds
            .percentile(0.5)
            * 1000.0;
        println!(
            "{:<5} {:>10} {:>9} {:>5} {:>9} {:>9} {:>14.2}",
            node.node_id(),
            value("iroh_raft_has_leader"),
            value("iroh_raft_is_leader"),
            value("iroh_raft_term"),
            value("iroh_raft_proposals_committed"),
            value("iroh_raft_proposals_applied"),
            p50,
        );
    }

    let addr = nodes[1].metrics_addr().expect("listener");
    println!(
        "\nGET http://{addr}/readyz?verbose\n{}",
        get(addr, "/readyz?verbose").await?
    );
    println!(
        "GET http://{addr}/health\n{}\n",
        get(addr, "/health").await?
    );

    if let Some(url) = &otlp {
        println!("traces of the 30 writes exported to {url}");
    }
    if wait {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    for node in &nodes {
        node.shutdown().await?;
    }
    Ok(())
}

/// A bare HTTP/1.1 GET (the example needs nothing more); returns the body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    Ok(text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim_end()
        .to_owned())
}
