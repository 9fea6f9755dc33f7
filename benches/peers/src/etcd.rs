//! An etcd cluster run from Debian's `etcd-server` binary: three members on loopback on free
//! ports picked at start ([`EtcdCluster::start`]), or members started by commands given
//! ([`EtcdCluster::start_members`]: one per network namespace in the `network` binary); data
//! dirs in a temp dir, etcd's default durability (the WAL is fsynced
//! before a write is acknowledged; `--unsafe-no-fsync` is never passed).
//!
//! The members share one process group. [`EtcdCluster`] owns it: `stop` ends it gracefully, and
//! dropping the guard (an error or a panic unwinding past it) kills the group and reaps the
//! members, so no etcd outlives a run.

use std::{
    fs::File,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use etcd_client::{Client, ConnectOptions};
use rustix::process::{Pid, Signal, kill_process_group};
use tempfile::TempDir;

/// The etcd client crate and version (pinned in Cargo.toml), printed beside the figures.
pub const ETCD_CLIENT: &str = "etcd-client 0.21.1";

/// How long a fresh cluster may take to elect a leader and commit a first write.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the members get to exit after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a member's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;

struct Member {
    name: String,
    client_url: String,
    child: Child,
    log: PathBuf,
}

/// A running cluster; stops it when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// The members' process group: the first member's pid.
    group: Option<Pid>,
    _dir: TempDir,
}

/// One member for [`EtcdCluster::start_members`].
pub struct MemberSpec {
    pub name: String,
    /// `http://IP:PORT`, listened on and advertised.
    pub client_url: String,
    /// `http://IP:PORT`, listened on and advertised to the other members.
    pub peer_url: String,
    /// What runs the member; its arguments are added.
    pub command: Command,
}

/// What [`EtcdCluster::wait_healthy`] found.
pub struct Health {
    /// The client URL of the member every member names as leader.
    pub leader_url: String,
    /// The version the leader reports.
    pub server_version: String,
}

/// The first line of `etcd --version` (`etcd Version: 3.4.23`), as `3.4.23`.
pub fn binary_version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no version in `{} --version`: {text}", bin.display()))
}

impl EtcdCluster {
    /// Spawns three members of a new cluster on loopback; they are not serving yet
    /// (`wait_healthy`).
    pub fn start(bin: &Path) -> anyhow::Result<Self> {
        let ports = free_ports(6)?;
        let specs = (0..3)
            .map(|i| MemberSpec {
                name: format!("m{}", i + 1),
                client_url: format!("http://127.0.0.1:{}", ports[i]),
                peer_url: format!("http://127.0.0.1:{}", ports[3 + i]),
                command: Command::new(bin),
            })
            .collect();
        Self::start_members(specs)
    }

    /// Spawns one member of a new cluster per spec, each from its own command (the etcd binary,
    /// or a wrapper that execs it, such as `ip netns exec NS etcd`: the member's pid must be the
    /// command's). They are not serving yet (`wait_healthy`).
    pub fn start_members(specs: Vec<MemberSpec>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("etcd-bench").tempdir()?;
        let initial_cluster = specs
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("bench-{}", std::process::id());
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            group: None,
            _dir: dir,
        };
        for spec in specs {
            let MemberSpec {
                name,
                client_url,
                peer_url,
                command: mut cmd,
            } = spec;
            let log = cluster._dir.path().join(format!("{name}.log"));
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(cluster._dir.path().join(&name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log)?)
                // The first member leads a new group; the others join it.
                .process_group(cluster.group.map_or(0, |g| g.as_raw_nonzero().get()));
            // SAFETY: the closure only makes one async-signal-safe system call (prctl).
            // If this process is killed outright (no Drop), the kernel kills the member too.
            // (The signal follows the thread that spawned the member: spawn from a long-lived one.)
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                    Ok(())
                });
            }
            let program = cmd.get_program().to_owned();
            let child = cmd
                .spawn()
                .with_context(|| format!("spawning {} for member {name}", program.display()))?;
            if cluster.group.is_none() {
                cluster.group = Pid::from_raw(child.id() as i32);
            }
            cluster.members.push(Member {
                name,
                client_url,
                child,
                log,
            });
        }
        Ok(cluster)
    }

    /// The members' process ids.
    #[allow(dead_code)] // used by the `network` binary only
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.child.id()).collect()
    }

    /// Waits until every member names the same leader and a write through it commits.
    pub async fn wait_healthy(&mut self) -> anyhow::Result<Health> {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            self.check_running()?;
            match self.probe().await {
                Ok(Some(health)) => return Ok(health),
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => bail!("etcd: no agreed leader after {HEALTHY_TIMEOUT:?}"),
                Err(e) => {
                    return Err(e.context(format!("etcd not healthy after {HEALTHY_TIMEOUT:?}")));
                }
            }
        }
    }

    /// One look at the cluster: `Some` once all members agree on a leader that commits a put.
    async fn probe(&self) -> anyhow::Result<Option<Health>> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        let mut leaders = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let mut client = Client::connect([&m.client_url], Some(options.clone())).await?;
            let status = client.status().await?;
            let member_id = status.header().map(|h| h.member_id());
            if status.leader() != 0 && member_id == Some(status.leader()) {
                leader = Some((m.client_url.clone(), client, status.version().to_string()));
            }
            leaders.push(status.leader());
        }
        let agreed = leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]);
        let Some((leader_url, mut client, server_version)) = leader.filter(|_| agreed) else {
            return Ok(None);
        };
        client.put("bench-health", "ok", None).await?;
        Ok(Some(Health {
            leader_url,
            server_version,
        }))
    }

    /// Fails, with the end of its log, if a member has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            if let Some(status) = m.child.try_wait()? {
                bail!(
                    "etcd member {} exited ({status}); end of its log:\n{}",
                    m.name,
                    log_tail(&m.log)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to the group, then waits for every member (SIGKILL after `STOP_TIMEOUT`).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(group) = self.group {
            kill_process_group(group, Signal::TERM).context("SIGTERM to etcd")?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for m in &mut self.members {
            while m.child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    bail!(
                        "etcd member {} still running {STOP_TIMEOUT:?} after SIGTERM",
                        m.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // All reaped: Drop has nothing left to kill (the group id may be reused by now).
        self.group = None;
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            // ESRCH (all gone already) is fine; there is nothing else to do with an error here.
            let _ = kill_process_group(group, Signal::KILL);
        }
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

/// `n` distinct free loopback ports: all bound at once, then released for etcd to take.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
