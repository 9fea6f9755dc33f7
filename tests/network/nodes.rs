//! `iroh-raft node` processes on the lab's hosts, each in its host's namespace, and the CLI run
//! from a host. Every wait is on a condition with a deadline.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use iroh::EndpointAddr;
use iroh_raft::{Ticket, TicketRole};

use crate::lab::Host;

pub const BIN: &str = env!("CARGO_BIN_EXE_iroh-raft");

/// How long a node may take to start, or the cluster to reach a state asked for.
pub const WAIT: Duration = Duration::from_secs(60);

/// The port every node binds on its host.
pub const PORT: u16 = 7000;

/// A node process on a host; killed when dropped.
pub struct NetNode {
    pub host: Host,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub id: u64,
    pub log: PathBuf,
}

impl Drop for NetNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl NetNode {
    /// The address peers dial: its key and its bind address.
    pub fn addr(&self) -> EndpointAddr {
        let key = iroh_raft::net::load_or_create_secret_key(self.dir.path()).unwrap();
        EndpointAddr::new(key.public()).with_ip_addr(SocketAddr::new(self.host.ip.into(), PORT))
    }

    /// Its log so far (for a failing test's message).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Starts `iroh-raft node --data-dir DIR ARGS` in `host`'s namespace, logging to `log`, and
/// waits for its `ready node=N` line.
pub fn start_node(host: &Host, dir: &Path, args: &[String], log: &Path) -> (Child, u64) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = host
        .command(BIN)
        .arg("node")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("NODE_LOG").unwrap_or("warn,iroh_raft_actors=info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .expect("spawn iroh-raft node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ready node=") {
                let id: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = tx.send(id);
            }
        }
    });
    match rx.recv_timeout(WAIT) {
        Ok(id) => (child, id),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "node on {} did not become ready; its log:\n{text}",
                host.name
            );
        }
    }
}

/// Nodes on `hosts`, one each: the first bootstraps, the others join with its ticket. `args`
/// go to every node (a preset, relays).
pub struct NetCluster {
    pub nodes: Vec<NetNode>,
    /// An admin ticket naming every member.
    pub admin: Ticket,
    pub logs: tempfile::TempDir,
}

impl NetCluster {
    pub fn start(hosts: &[Host], args: &[String]) -> Self {
        let logs = tempfile::tempdir().unwrap();
        let mut nodes: Vec<NetNode> = Vec::new();
        let mut join: Option<String> = None;
        for (i, host) in hosts.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let log = logs.path().join(format!("{}.log", host.name));
            let mut node_args = vec!["--bind".to_string(), format!("{}:{PORT}", host.ip)];
            match &join {
                None => node_args.push("--bootstrap".into()),
                Some(ticket) => node_args.extend(["--join".into(), ticket.clone()]),
            }
            node_args.extend(args.iter().cloned());
            let (child, id) = start_node(host, dir.path(), &node_args, &log);
            if i == 0 {
                join = Some(read_line(&dir.path().join("ticket")));
            }
            nodes.push(NetNode {
                host: host.clone(),
                dir,
                child: Some(child),
                id,
                log,
            });
        }
        let first: Ticket = read_line(&nodes[0].dir.path().join("admin-ticket"))
            .parse()
            .unwrap();
        let key = iroh_raft::net::load_or_create_secret_key(nodes[0].dir.path()).unwrap();
        let admin = Ticket::issue_with_relays(
            &key,
            first.cluster_id,
            nodes.iter().map(NetNode::addr).collect(),
            first.relays.clone(),
            TicketRole::Admin,
            std::time::SystemTime::now() + Duration::from_secs(3600),
        );
        Self { nodes, admin, logs }
    }

    pub fn node(&self, id: u64) -> &NetNode {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    /// Every node's log tail, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ({})\n{}", n.id, n.host.name, n.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The first line of a file a node wrote (a ticket).
pub fn read_line(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `iroh-raft ARGS` in `host`'s namespace, with the CLI's key in `key_dir`.
pub fn cli(host: &Host, key_dir: &Path, args: &[&str]) -> Out {
    let out = host
        .command(BIN)
        .args(args)
        .arg("--key-dir")
        .arg(key_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run iroh-raft");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the CLI until `done` holds for its output; panics with `what` and the last output after
/// [`WAIT`].
pub fn cli_until(
    host: &Host,
    key_dir: &Path,
    args: &[&str],
    what: &str,
    done: impl Fn(&Out) -> bool,
) -> Out {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = cli(host, key_dir, args);
        if done(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last output: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` to completion on a fresh tokio runtime inside `host`'s namespace.
pub fn block_on_in<F, T>(host: &Host, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    host.run_in(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

/// The status member `addr` reports, asked of it alone from `host`; `None` when it does not
/// answer within `timeout`.
pub fn status_of(
    host: &Host,
    ticket: &Ticket,
    addr: EndpointAddr,
    timeout: Duration,
) -> Option<iroh_raft::actors::wire::MgmtStatus> {
    let ticket = ticket.clone();
    block_on_in(host, move || async move {
        let options = iroh_raft::mgmt::ClientOptions::default()
            .pinned()
            .timeout(timeout);
        let client =
            iroh_raft::mgmt::IrohRaftManagementClient::new(vec![addr], Some(&ticket), options)
                .await
                .ok()?;
        let status = client.status().await.ok();
        client.close().await;
        status
    })
}
